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

Two tools for models the course did not build:

    count_passes     how many forward and backward passes (and images) a method costs
    one_relu_per_use a copy of a torchvision ResNet whose ReLUs are each used once, not in place
    watch_activations the activations a forward pass ran that are not nn.ReLU modules (which the
                     ReLU rules of guided backprop and the deconvnet cannot reach)
"""

from __future__ import annotations

import copy
import difflib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


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


def layer_name(model: nn.Module, layer) -> str:
    """``layer`` in one line, for messages: the dotted name it was given, else its path in ``model``
    (``'layer4.1.relu'``), else its class (``a ReLU``). Never a module's repr, which runs to pages."""
    if isinstance(layer, str):
        return repr(layer)
    if isinstance(layer, nn.Module) and isinstance(model, nn.Module):
        for name, m in model.named_modules(remove_duplicate=False):
            if m is layer:
                return repr(name) if name else "(the model itself)"
    return f"(a {type(layer).__name__})"


def did_not_run(model: nn.Module, layer) -> ValueError:
    """The error for a layer that the forward pass never called (a module the model holds but does
    not use, such as torchvision's ``AuxLogits`` in eval mode, or a head replaced in ``forward``)."""
    return ValueError(f"layer {layer_name(model, layer)} did not run in the forward pass, so it has no output "
                      "to record: pick a module the forward pass calls (print(model) lists what the model "
                      "holds, not what it runs)")


def ran_more_than_once(model: nn.Module, layer, calls: int) -> ValueError:
    """The error for a layer called ``calls`` > 1 times in one forward pass (torchvision's
    ``BasicBlock`` calls its one ``relu`` twice)."""
    return ValueError(f"layer {layer_name(model, layer)} ran {calls} times in one forward pass (a module used "
                      "more than once, such as torchvision's shared ReLU in a residual block); one recording "
                      "holds one call: pick a module that runs once (a block, or its bn2), or use "
                      "helpers.hooks.one_relu_per_use on a torchvision ResNet")


class Recording:
    """What ``capture`` saw.

    activation  a detached clone of the layer's output (safe from later in-place changes)
    gradient    a detached clone of the gradient that flowed back into that output, if any
    output      the live output itself, part of the autograd graph: for ``torch.autograd.grad``
                with respect to the layer, inside the ``with`` block only (it is dropped on exit:
                kept, it would tie the recording to the graph in a cycle gc cannot see)
    calls       how many times the layer ran inside the block (0 or 1)

    Reading ``activation`` or ``output`` inside the block before the layer ran raises the "did not
    run" error.
    """

    def __init__(self, model=None, layer=None):
        self._activation: torch.Tensor | None = None
        self.gradient: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self.calls = 0
        self._model, self._layer, self._open = model, layer, False

    @property
    def activation(self) -> torch.Tensor | None:
        if self._open and self.calls == 0:
            raise did_not_run(self._model, self._layer)
        return self._activation

    @activation.setter
    def activation(self, value):
        self._activation = value

    @property
    def output(self) -> torch.Tensor | None:
        if self._open and self.calls == 0:
            raise did_not_run(self._model, self._layer)
        return self._output

    @output.setter
    def output(self, value):
        self._output = value


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
    A block that ends without the layer having run raises "layer ... did not run in the forward
    pass" (nothing was recorded).
    """
    module = resolve_layer(model, layer)
    rec = Recording(model, layer)
    handles = []

    def on_grad(grad):
        rec.gradient = grad.detach().clone()

    def on_forward(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"capture: layer {layer_name(model, layer)} returned "
                            f"{type(output).__name__}, not a tensor")
        rec.calls += 1
        if rec.calls > 1:
            raise ValueError(f"capture: layer {layer_name(model, layer)} ran {rec.calls} times inside one capture "
                             "block: a module used twice in the forward pass (such as torchvision's shared ReLU "
                             "in a residual block), or a second forward pass; a recording holds one call: pick "
                             "a module that runs once, or use one block per forward pass")
        rec.activation = output.detach().clone()
        rec.output = output
        if gradient and output.requires_grad:
            handles.append(output.register_hook(on_grad))
        return output.clone()  # what the rest of the model sees, and may modify in place

    rec._open = True
    try:
        handles.append(module.register_forward_hook(on_forward))
        yield rec
    finally:
        for h in handles:  # module hooks and tensor hooks alike
            h.remove()
        rec.output = None
        rec._open = False
    if rec.calls == 0:  # the block ended normally and the layer never ran: nothing was recorded
        raise did_not_run(model, layer)


def count_hooks(model: nn.Module) -> int:
    """How many forward, pre-forward and backward hooks are attached anywhere in ``model``."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total


@dataclass
class PassCount:
    """What ``count_passes`` saw: calls of the model and images through it, each way."""

    forward_calls: int = 0
    forward_images: int = 0
    backward_calls: int = 0
    backward_images: int = 0


@contextmanager
def count_passes(model: nn.Module):
    """Count the forward and backward passes through ``model`` inside the block::

        with count_passes(model) as c:
            method(model, x, target)
        c.forward_calls, c.forward_images, c.backward_calls, c.backward_images

    A forward call is one ``model(batch)``: it adds 1 to ``forward_calls`` and the batch size to
    ``forward_images``. A backward pass is a gradient flowing back into that call's output (by
    ``.backward()`` or ``torch.autograd.grad``): it adds 1 to ``backward_calls`` and the batch size
    to ``backward_images``. Cost on a given machine ~ forward_images * t_forward + backward_images *
    t_backward, per image. Only calls of ``model`` itself count (not of its submodules called
    directly). Nothing about the model changes; the hooks are removed when the block ends, also
    when it raises, and a backward pass after the block is not counted.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    counts, handles, active = PassCount(), [], [True]

    def on_grad(grad):
        if active[0]:
            counts.backward_calls += 1
            counts.backward_images += grad.shape[0] if grad.dim() else 1

    def on_forward(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"count_passes: the model returned {type(output).__name__}, not a tensor")
        counts.forward_calls += 1
        counts.forward_images += output.shape[0] if output.dim() else 1
        if output.requires_grad:
            handles.append(output.register_hook(on_grad))

    try:
        handles.append(model.register_forward_hook(on_forward))
        yield counts
    finally:
        active[0] = False
        for h in handles:
            h.remove()


class _BasicBlockOnce(nn.Module):
    """torchvision's BasicBlock with its two ReLU uses as two modules (same weights, same output)."""

    def __init__(self, block):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = block.downsample
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + identity)


class _BottleneckOnce(nn.Module):
    """torchvision's Bottleneck with its three ReLU uses as three modules."""

    def __init__(self, block):
        super().__init__()
        for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample"):
            setattr(self, name, getattr(block, name))
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.relu3(self.bn3(self.conv3(out)) + identity)


def one_relu_per_use(model: nn.Module) -> nn.Module:
    """A copy of a torchvision ResNet (or any model holding its blocks) in which every ReLU is a
    module of its own, used once and not in place. The caller's model is not changed.

    torchvision's ``BasicBlock`` calls one ``nn.ReLU(inplace=True)`` twice (``Bottleneck``: three
    times). Rules that keep a per-module state between the forward and the backward pass, such as
    DeepLift's (Shrikumar et al. 2017, arXiv:1704.02685) reference activations, then see only one of
    the calls. The copy computes the same function with the same weights,

        block(x) = relu2( bn2(conv2( relu1(bn1(conv1(x))) )) + downsample(x) )

    and keeps every other module name (``layer4``, ``layer4.1.bn2``, ``fc``, ...); the ReLUs inside
    a block are named ``relu1``, ``relu2`` (, ``relu3``). Every other ``nn.ReLU`` is made not in
    place. Raises ValueError for a model without torchvision residual blocks.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(isinstance(m, BasicBlock | Bottleneck) for m in model.modules()):
        raise ValueError(f"model (a {type(model).__name__}) has no torchvision BasicBlock or Bottleneck: "
                         "one_relu_per_use rewrites torchvision ResNets; for another model, write its forward "
                         "with one nn.ReLU() module per use")
    new = copy.deepcopy(model)
    for parent in list(new.modules()):
        for name, child in parent.named_children():
            if isinstance(child, BasicBlock):
                setattr(parent, name, _BasicBlockOnce(child))
            elif isinstance(child, Bottleneck):
                setattr(parent, name, _BottleneckOnce(child))
            elif isinstance(child, nn.ReLU) and child.inplace:
                setattr(parent, name, nn.ReLU())
    return new.train(model.training)


# ---- activations a ReLU rule cannot reach ---------------------------------------------------------

# Rectifiers that are not nn.ReLU modules: a rule that overrides nn.ReLU modules (guided backprop,
# the deconvnet) cannot reach them, and they pass back the plain gradient (as under Captum's).
OTHER_ACTIVATIONS = (nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                     nn.Mish, nn.Hardswish, nn.Softplus)
FUNCTIONAL_ACTIVATIONS = {
    torch.relu: "relu", F.relu: "relu", torch.relu_: "relu", torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu",
    F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.elu: "elu", F.selu: "selu", F.celu: "celu", F.gelu: "gelu",
    F.silu: "silu", F.mish: "mish", F.hardswish: "hardswish", F.softplus: "softplus"}


class ActivationCalls(TorchFunctionMode):
    """What ``watch_activations`` saw: ``modules``, the OTHER_ACTIVATIONS modules that ran, and
    ``calls``, how often each functional activation was called outside them (a module's own
    F.gelu is not counted again)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls, self.inside, self.modules = model, Counter(), 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.inside == 0 and func in FUNCTIONAL_ACTIVATIONS:
            self.calls[FUNCTIONAL_ACTIVATIONS[func]] += 1
        return func(*args, **(kwargs or {}))

    def enter(self, module, inputs):
        self.inside += 1
        if module not in self.modules:
            self.modules.append(module)

    def leave(self, module, inputs, output):
        self.inside -= 1

    def unreached(self, what: str) -> str | None:
        """A warning naming what ``what`` (e.g. "the guided rule") did not reach, or None."""
        parts = []
        if self.modules:
            names = ", ".join(f"{layer_name(self.model, m)} ({type(m).__name__})" for m in self.modules[:4])
            more = f" and {len(self.modules) - 4} more" if len(self.modules) > 4 else ""
            parts.append(f"{len(self.modules)} module{'s' if len(self.modules) > 1 else ''}: {names}{more}")
        for f, n in self.calls.items():
            parts.append(f"functional {f} called {n} time{'s' if n > 1 else ''} outside an nn.ReLU module")
        if not parts:
            return None
        return (f"{what} reaches nn.ReLU modules only; these activations are not nn.ReLU modules and "
                f"passed back the plain gradient: {'; '.join(parts)}")


@contextmanager
def watch_activations(model: nn.Module):
    """Inside the block, record the activations that are not ``nn.ReLU`` modules: the modules of
    OTHER_ACTIVATIONS that run (by forward hooks) and functional calls such as ``torch.relu`` (by
    a TorchFunctionMode, which sees every torch function called in the block, also the caller's
    own). Yields an ``ActivationCalls``; the hooks and the mode are gone when the block ends."""
    seen, handles = ActivationCalls(model), []
    try:
        for m in model.modules():
            if isinstance(m, OTHER_ACTIVATIONS):
                handles += [m.register_forward_pre_hook(seen.enter), m.register_forward_hook(seen.leave)]
        with seen:
            yield seen
    finally:
        for h in handles:
            h.remove()
