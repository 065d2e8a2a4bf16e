"""Capture what flows through one layer, and always clean up.

Every method that looks inside the model (CAM, Grad-CAM, TCAV, ...) needs a layer's forward output
and the gradient of the score with respect to it. PyTorch gives both through hooks, and a hook that
is not removed keeps firing (and keeping tensors alive) on every later call: the most common bug
report against CAM libraries. Here hooks live only inside a ``with`` block::

    with capture(model, "layer4") as rec:
        score = model(x)[:, target].sum()
        score.backward()
    rec.activation, rec.gradient   # [B, C, h, w] each; the hooks are already gone

The hooks are removed when the block ends, also when it raises.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


def resolve_layer(model: nn.Module, layer) -> nn.Module:
    """Return the module ``layer`` names: a module inside ``model`` or a dotted name like "layer4.0".

    Names are resolved by walking the attributes (``get_submodule``), so a module registered
    under two names is found under either. An unknown name gets the closest valid names.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(layer, str):
        try:
            if not layer:
                raise AttributeError
            return model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules(remove_duplicate=False) if n]
            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            top = ", ".join(n for n in names if "." not in n)
            hint = f"closest names: {', '.join(close)}" if close else f"top-level names: {top[:300]}"
            raise ValueError(f"layer {layer!r} is not a module of the model; {hint} "
                             "(all names: [n for n, _ in model.named_modules()])") from None
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"layer (a {type(layer).__name__}) is not a module of the model: pass one of "
                             "its modules, or a name from [n for n, _ in model.named_modules()]")
        return layer
    raise TypeError(f"layer must be an nn.Module or a dotted name, got {type(layer).__name__}")


@dataclass
class Recording:
    """What ``capture`` saw.

    activation  a detached clone of the layer's output (safe from later in-place changes)
    gradient    a detached clone of the gradient that flowed back into that output, if any
    output      the live output itself, part of the autograd graph: for ``torch.autograd.grad``
                with respect to the layer, inside the ``with`` block only (it is dropped on exit:
                kept, it would tie the recording to the graph in a cycle gc cannot see)
    """

    activation: torch.Tensor | None = None
    gradient: torch.Tensor | None = None
    output: torch.Tensor | None = None


@contextmanager
def capture(model: nn.Module, layer, *, gradient: bool = True):
    """Record ``layer``'s forward output and the gradient flowing back into that output.

    gradient  False: do not record the gradient (no tensor hook), for callers that take it with
              ``torch.autograd.grad(..., rec.output)`` themselves.

    The model carries on with a copy of the layer's output, so a later in-place operation (a
    ``ReLU(inplace=True)``, or ``out += identity`` in a residual block) changes the copy, never the
    recorded tensor: both ``rec.activation`` and the gradient with respect to ``rec.output`` are
    those of the layer's own output. A layer that runs more than once inside the block (a module
    used twice in one forward pass, or two forward passes) is refused: one recording holds one call.
    """
    module = resolve_layer(model, layer)
    rec = Recording()
    handles = []
    calls = [0]

    def on_grad(grad):
        rec.gradient = grad.detach().clone()

    def on_forward(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"capture: layer {type(module).__name__} returned "
                            f"{type(output).__name__}, not a tensor")
        calls[0] += 1
        if calls[0] > 1:
            raise ValueError(f"capture: layer {layer if isinstance(layer, str) else type(module).__name__!r} ran "
                             f"{calls[0]} times inside one capture block (a module used twice in the forward pass, "
                             "or a second forward pass); a recording holds one call: capture a module that runs "
                             "once, or use one block per forward pass")
        rec.activation = output.detach().clone()
        rec.output = output
        if gradient and output.requires_grad:
            handles.append(output.register_hook(on_grad))
        return output.clone()  # what the rest of the model sees, and may modify in place

    try:
        handles.append(module.register_forward_hook(on_forward))
        yield rec
    finally:
        for h in handles:  # module hooks and tensor hooks alike
            h.remove()
        rec.output = None


def count_hooks(model: nn.Module) -> int:
    """How many forward, pre-forward and backward hooks are attached anywhere in ``model``."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total
