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

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


def resolve_layer(model: nn.Module, layer) -> nn.Module:
    """Return the module ``layer`` names: a module inside ``model`` or a dotted name like "layer4.0".

    Raises ValueError listing the valid names when the name is unknown or the module is not part
    of the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules or not layer:
            raise ValueError(f"layer {layer!r} is not a module of the model; valid names: "
                             f"{', '.join(names)}")
        return modules[layer]
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"layer ({type(layer).__name__}) is not a module of the model; "
                             f"pass one of its modules or a name: {', '.join(names)}")
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

    The output is cloned as it is recorded (``rec.activation``), so a later in-place operation in
    the model cannot change it; ``rec.output`` keeps the live tensor for differentiating with
    respect to the layer. If the layer runs more than once in the block, the last call is kept.
    """
    module = resolve_layer(model, layer)
    rec = Recording()
    handles = []

    def on_grad(grad):
        rec.gradient = grad.detach().clone()

    def on_forward(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"capture: layer {type(module).__name__} returned "
                            f"{type(output).__name__}, not a tensor")
        rec.activation = output.detach().clone()
        rec.output = output
        if gradient and output.requires_grad:
            handles.append(output.register_hook(on_grad))

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
