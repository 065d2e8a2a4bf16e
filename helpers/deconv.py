"""Deconvnets: projecting what a unit responds to back to pixels (Zeiler & Fergus 2014).

    relu_backward     what a ReLU passes back under each rule: gradient, guided backprop, deconvnet
    relu_rule         a ``with`` block in which every nn.ReLU of a model passes back by one rule
    rule_backprop     the class score's input map under a rule (the method contract)
    deconvnet         rule_backprop with the deconvnet rule
    unit_projection   one unit's activation projected to the input by autograd under a rule
    zeiler_fergus     the same projection built by hand, layer by layer: unpooling with the forward
                      switches, rectification, transposed convolutions with the forward weights
    conv_transpose2d  transposed convolution by hand (each input pixel scatters a weighted kernel)

Saliency, guided backprop and the deconvnet are the same backward pass through the network; they
differ only in what a ReLU lets through on the way back (``relu_backward``). Every linear layer
(convolution, pooling's routing, BatchNorm in eval mode) is passed back through its transpose in
all three.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .contract import check_input, check_model, check_outputs, check_scores, check_target
from .hooks import OTHER_ACTIVATIONS, capture, layer_name, resolve_layer, watch_activations
from .models import BasicBlock, DermNet, Normalize

RULES = ("gradient", "guided", "deconvnet")


def relu_backward(rule: str, inp: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """What a ReLU passes back, given its forward input ``inp`` and the signal ``grad_out`` from above.

    gradient   the chain rule: the signal where the forward input was positive
    guided     Springenberg et al. 2015: that, and only the positive part of the signal
    deconvnet  Zeiler & Fergus 2014: the positive part of the signal, wherever the forward input was
               (the deconvnet does not look at the forward pass here)
    """
    if rule == "gradient":
        return grad_out * (inp > 0)
    if rule == "guided":
        return grad_out.clamp(min=0) * (inp > 0)
    if rule == "deconvnet":
        return grad_out.clamp(min=0)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


class _RuleReLU(torch.autograd.Function):
    """ReLU forward; backward by ``relu_backward(rule, ...)``."""

    @staticmethod
    def forward(ctx, inp, rule):
        ctx.rule = rule
        ctx.save_for_backward(inp)
        return inp.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_out):
        (inp,) = ctx.saved_tensors
        return relu_backward(ctx.rule, inp, grad_out), None


@contextmanager
def relu_rule(model: nn.Module, rule: str):
    """Inside the block, every ``nn.ReLU`` module of ``model`` passes back by ``rule``.

    Each ReLU module computes ``_RuleReLU`` instead of its own forward (an attribute of the
    instance, deleted when the block ends, also when it raises). An in-place ReLU then works out
    of place, as under Captum's hooks: a forward hook would come too late, after the ReLU has
    rectified its input and put its own backward (the forward mask) into the graph.

    Only modules can be overridden: an activation that is not an nn.ReLU module (a functional
    ``torch.relu`` in a ``forward``, mobilenet's nn.Hardswish, a GELU) keeps the plain gradient
    rule, as under Captum's GuidedBackprop and Deconvolution. For the guided and deconvnet rules
    a UserWarning names those the forward pass ran (``hooks.watch_activations``).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        others = sorted({type(m).__name__ for m in model.modules() if isinstance(m, OTHER_ACTIVATIONS)})
        held = (f"its activations are {', '.join(others)} modules, which the rule cannot reach" if others else
                "nor any other activation module: functional calls such as torch.relu cannot be overridden")
        raise ValueError(f"the {rule} rule overrides nn.ReLU modules, and this model has none ({held})")
    if any("forward" in vars(m) for m in relus):
        raise ValueError("an nn.ReLU module of this model has a forward of its own (is a relu_rule block already "
                         "open on this model?): relu_rule would replace it")
    try:
        for m in relus:
            m.forward = lambda inp: _RuleReLU.apply(inp, rule)
        with watch_activations(model) as seen:
            yield
    finally:
        for m in relus:
            vars(m).pop("forward", None)  # nn.ReLU.forward again
    message = seen.unreached(f"the {rule} rule") if rule != "gradient" else None
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)


def _prepare(model, x, target):
    check_model(model)
    check_input(x, model=model)
    return x.detach(), check_target(target, x.shape[0], device=x.device)


def rule_backprop(model: nn.Module, x: torch.Tensor, target, rule: str = "deconvnet") -> torch.Tensor:
    """d score_target / d x with every ReLU passing back by ``rule`` (``relu_backward``).

    rule="gradient" is the plain input gradient, "guided" is guided backprop, "deconvnet" is
    Zeiler & Fergus's deconvnet started from the class score. Returns a tensor shaped like ``x``.
    """
    x, t = _prepare(model, x, target)
    xg = x.requires_grad_(True)
    with relu_rule(model, rule), torch.enable_grad():
        out = model(xg)
        check_outputs(out, t)
        (grad,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), xg)
    return grad


def deconvnet(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """The deconvnet map of the class score (Zeiler & Fergus 2014, arXiv:1311.2901): the backward
    pass of ``target``'s score to the input in which every ReLU passes back only the positive part
    of the signal, ``relu(signal)``, whatever its forward input was. Shaped like ``x``.

    With no forward mask at the ReLUs, the image enters the map only through the max-pooling
    switches (and, for a network without them, not at all): the map barely depends on the class
    (notebook 09 measures it).
    """
    return rule_backprop(model, x, target, "deconvnet")


def _unit_index(value, name: str, batch: int, device) -> torch.Tensor:
    if isinstance(value, bool) or not isinstance(value, int | torch.Tensor):
        raise TypeError(f"{name} must be an int or a LongTensor [B], got {type(value).__name__}")
    t = torch.as_tensor(value, device=device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"{name} has {t.numel()} entries for a batch of {batch} images")
    return t


def _check_unit(act: torch.Tensor, model, layer, channel, ys, xs) -> None:
    """The layer's output is a finite feature map [B, C, h, w] holding the unit: a NaN or inf in it
    (a model with a NaN weight or bias) would project to a NaN map, which is refused."""
    name = layer_name(model, layer)
    if act.dim() != 4:
        raise ValueError(f"layer {name} must output a feature map [B, C, h, w], got shape {tuple(act.shape)}")
    c, h, w = act.shape[1:]
    if not 0 <= channel < c:
        raise ValueError(f"channel {channel} is out of range for layer {name} with {c} channels")
    if (ys < 0).any() or (ys >= h).any() or (xs < 0).any() or (xs >= w).any():
        raise ValueError(f"a position (y, x) is outside layer {name}'s {h}x{w} grid")
    check_scores(act, f"layer {name}", "activations")


def unit_projection(model: nn.Module, images: torch.Tensor, layer, channel: int, y, x,
                    rule: str = "deconvnet") -> torch.Tensor:
    """Project one unit back to the input by autograd: channel ``channel`` of ``layer`` at (y, x)
    (ints, or one position per image as LongTensors [B]), every other unit of the layer set to 0.

    The backward pass starts from the unit's activation itself, as Zeiler & Fergus's does (a
    gradient starts from 1), and every ReLU passes back by ``rule``. A layer output holding NaN or
    inf is refused (its projection would be NaN). Returns ``[B, C, H, W]``.
    """
    check_model(model)
    check_input(images, "images", model=model)
    if isinstance(channel, bool) or not isinstance(channel, int):
        raise TypeError(f"channel must be an int, got {type(channel).__name__}")
    ys, xs = _unit_index(y, "y", len(images), images.device), _unit_index(x, "x", len(images), images.device)
    xg = images.detach().requires_grad_(True)
    with capture(model, layer, gradient=False) as rec, relu_rule(model, rule), torch.enable_grad():
        model(xg)
        act = rec.output  # the layer's own output (capture hands the rest of the model a copy)
        _check_unit(act, model, layer, channel, ys, xs)
        unit = act[torch.arange(len(images), device=act.device), channel, ys, xs]
        (grad,) = torch.autograd.grad(unit, xg, grad_outputs=unit.detach())
    return grad


# ---- the deconvnet by hand ------------------------------------------------------------------------

def conv_transpose2d(y: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0,
                     output_padding: int = 0) -> torch.Tensor:
    """Transposed convolution by hand, as ``F.conv_transpose2d`` computes it (no bias, groups 1).

    y [B, C_in, h, w]; weight [C_in, C_out, k, k] (a Conv2d's weight [C_out, C_in, k, k] is the
    transpose of the Conv2d that maps C_out -> C_in). Every input pixel (i, j) adds its kernel,
    weighted by its value, to the output at (i * stride, j * stride): one strided slice per kernel
    offset. Where kernels overlap unevenly (k not a multiple of the stride) some output pixels
    receive more terms than others, the checkerboard of Odena et al. 2016. Then ``padding`` rows
    and columns are cut from each side.
    """
    b, _, h, w = y.shape
    _, c_out, k, _ = weight.shape
    out = y.new_zeros(b, c_out, (h - 1) * stride + k + output_padding, (w - 1) * stride + k + output_padding)
    for u in range(k):
        for v in range(k):
            out[:, :, u:u + stride * h:stride, v:v + stride * w:stride] += torch.einsum(
                "bihw,io->bohw", y, weight[:, :, u, v])
    return out[:, :, padding:out.shape[2] - padding, padding:out.shape[3] - padding]


def _path(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules a forward pass runs, in order: DermNet's stem and stages, or a Sequential's children."""
    if isinstance(model, DermNet):
        names = ("normalize", "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return [(n, getattr(model, n)) for n in names]
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    raise TypeError(f"zeiler_fergus builds the deconvnet layer by layer for DermNet and nn.Sequential "
                    f"models, got {type(model).__name__}: use unit_projection, which lets autograd do it")


def _unpool(s: torch.Tensor, pool: nn.MaxPool2d, switches: torch.Tensor, size) -> torch.Tensor:
    """Put each pooled value back where its window's maximum was (the switch)."""
    k, st = pool.kernel_size, pool.stride
    k = k if isinstance(k, int) else k[0]
    st = st if isinstance(st, int) else st[0]
    if k <= st:  # windows do not overlap: every switch is a different pixel
        return F.max_unpool2d(s, switches, pool.kernel_size, pool.stride, pool.padding, output_size=size)
    # overlapping windows can choose the same pixel, which then receives both values:
    # max_unpool2d would write one of them, the transpose of pooling adds them
    out = s.new_zeros(*s.shape[:2], size[-2] * size[-1])
    return out.scatter_add_(2, switches.flatten(2), s.flatten(2)).view(*s.shape[:2], *size[-2:])


def _down(module: nn.Module, s: torch.Tensor, seen: dict) -> torch.Tensor:
    """Pass the signal ``s`` from ``module``'s output back to its input, the deconvnet way."""
    if isinstance(module, nn.Sequential):
        for child in reversed(module):
            s = _down(child, s, seen)
        return s
    if isinstance(module, BasicBlock):  # relu2(bn2(conv2(relu1(bn1(conv1(x))))) + skip(x))
        s = s.clamp(min=0)
        branch = s
        for m in (module.bn2, module.conv2, module.relu1, module.bn1, module.conv1):
            branch = _down(m, branch, seen)
        skip = s if module.downsample is None else _down(module.downsample, s, seen)
        return branch + skip
    if isinstance(module, nn.ReLU):
        return s.clamp(min=0)  # rectify the signal; the forward mask is not used
    if isinstance(module, nn.MaxPool2d):
        switches, size = seen[module]
        return _unpool(s, module, switches, size)
    if isinstance(module, nn.Conv2d):  # the transposed filters (the bias plays no part)
        size = seen[module]
        natural = [(s.shape[d] - 1) * module.stride[d - 2] - 2 * module.padding[d - 2]
                   + module.dilation[d - 2] * (module.kernel_size[d - 2] - 1) + 1 for d in (2, 3)]
        extra = tuple(size[d] - natural[d - 2] for d in (2, 3))  # rows a strided conv dropped
        return F.conv_transpose2d(s, module.weight, None, module.stride, module.padding, extra,
                                  module.groups, module.dilation)
    if isinstance(module, nn.BatchNorm2d):  # in eval mode, a per-channel scale (the shift drops out)
        return s * (module.weight / (module.running_var + module.eps).sqrt())[None, :, None, None]
    if isinstance(module, Normalize):
        return s / module.std
    raise TypeError(f"zeiler_fergus has no deconvnet step for {type(module).__name__} "
                    "(it knows Conv2d, BatchNorm2d, ReLU, MaxPool2d, DermNet's blocks and Normalize)")


@torch.no_grad()
def zeiler_fergus(model: nn.Module, images: torch.Tensor, layer, channel: int, y, x) -> torch.Tensor:
    """Zeiler & Fergus's projection of one unit, built by hand from the network's own layers.

    A forward pass records only the max-pooling switches (where each window's maximum was). Then
    the layer's feature map is zeroed except the unit, channel ``channel`` at (y, x) (ints or
    LongTensors [B]), which keeps its activation, and the signal goes down through the layers in
    reverse: unpool with the switches, rectify at every ReLU, filter with the transposed forward
    weights (BatchNorm in eval mode is a per-channel scale, the input normalization a division by
    the std; a residual block adds its two branches). ``layer`` is one of the modules the forward
    pass runs in order (DermNet: "conv1" ... "layer4"; an nn.Sequential: a child's name).

    It equals ``unit_projection(..., rule="deconvnet")``, autograd's version, when: the model is
    in eval mode; every ReLU is an nn.ReLU module used once; and unpooling adds where overlapping
    windows share a switch. A layer output holding NaN or inf is refused. Returns ``[B, C, H, W]``.
    """
    check_model(model)
    check_input(images, "images", model=model)
    if isinstance(channel, bool) or not isinstance(channel, int):
        raise TypeError(f"channel must be an int, got {type(channel).__name__}")
    path = _path(model)
    target = resolve_layer(model, layer)
    stop = next((i for i, (_, m) in enumerate(path) if m is target), None)
    if stop is None:
        raise ValueError(f"layer {layer_name(model, layer)} is not one of the modules zeiler_fergus walks: "
                         f"{[n for n, _ in path]}")
    ys, xs = _unit_index(y, "y", len(images), images.device), _unit_index(x, "x", len(images), images.device)
    seen = {}

    def record(module, inputs, output):
        inp = inputs[0]
        if isinstance(module, nn.MaxPool2d):
            _, switches = F.max_pool2d(inp, module.kernel_size, module.stride, module.padding,
                                       module.dilation, module.ceil_mode, return_indices=True)
            seen[module] = (switches, inp.shape)
        else:
            seen[module] = inp.shape

    handles = [m.register_forward_hook(record) for m in target.modules() if isinstance(m, nn.MaxPool2d | nn.Conv2d)]
    for _, m in path[:stop]:
        handles += [mm.register_forward_hook(record) for mm in m.modules() if isinstance(mm, nn.MaxPool2d | nn.Conv2d)]
    try:
        h = images
        for _, m in path[:stop + 1]:
            h = m(h)
    finally:
        for handle in handles:
            handle.remove()
    _check_unit(h, model, layer, channel, ys, xs)
    s = torch.zeros_like(h)
    b = torch.arange(len(images), device=h.device)
    s[b, channel, ys, xs] = h[b, channel, ys, xs]  # keep the unit's activation, zero the rest
    for _, m in reversed(path[:stop + 1]):
        s = _down(m, s, seen)
    return s
