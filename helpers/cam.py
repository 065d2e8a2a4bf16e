"""Class activation maps and guided backpropagation: explanations read off a convolutional layer.

    cam              CAM: the last feature maps weighted by the final linear layer's weights
    grad_cam         Grad-CAM: feature maps weighted by their spatially averaged gradients
    grad_cam_pp      Grad-CAM++: per-location weights from higher-order terms
    score_cam        Score-CAM: gradient-free, weights from masking the input with each map
    guided_backprop  the input gradient with negative gradients stopped at every ReLU
    guided_grad_cam  guided backprop times the upsampled Grad-CAM map

Map methods return ``[B, 1, H, W]`` resized to the input (``upsample=False`` keeps the layer's
grid ``[B, 1, h, w]``). ``layer`` is a module of the model or its dotted name (``"layer4"``,
``"layer4.0"``). Every hook lives inside a ``with`` block and is removed even when the model
raises; nothing else about the model or the input changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batching import run_batches, workload
from .contract import check_batch_size, check_input, check_model, check_outputs, check_target
from .deconv import rule_backprop
from .hooks import capture, layer_name, resolve_layer


def _prepare(model, x, target):
    check_model(model)
    check_input(x, model=model)
    return x.detach(), check_target(target, x.shape[0], device=x.device)


def _check_feature_map(act: torch.Tensor, model, layer) -> None:
    if act.dim() != 4:
        hint = ("; for a transformer's tokens [B, T, C], grad_cam, grad_cam_pp and score_cam take "
                "reshape=helpers.attention.tokens_to_grid") if act.dim() == 3 else ""
        raise ValueError(f"layer {layer_name(model, layer)} must output a 4-D feature map [B, C, h, w], "
                         f"got shape {tuple(act.shape)}{hint}")


def _reshaper(reshape):
    if reshape is not None and not callable(reshape):
        raise TypeError(f"reshape must be a function (tokens -> [B, C, h, w]) or None, got {type(reshape).__name__}")
    return reshape if reshape is not None else (lambda a: a)


def _resize(maps: torch.Tensor, x: torch.Tensor, upsample: bool, mode: str) -> torch.Tensor:
    if not upsample:
        return maps
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps, size=x.shape[-2:], mode=mode, **kwargs)


def layer_activation_and_gradient(model, x, t, layer, reshape=None):
    """The layer's output A [B, K, h, w] and d score_t / d A, from one forward and one backward
    pass that stops at the layer (nothing below it, and no parameter, gets a gradient).

    ``reshape``: a function applied to both the output and its gradient, to turn a layer that
    does not give a feature map into one (a ViT's tokens [B, T, C]: ``helpers.attention.tokens_to_grid``).
    """
    shaped = _reshaper(reshape)
    for input_grad in (False, True):  # the input needs grad only if nothing below the layer does
        with capture(model, layer, gradient=False) as rec, torch.enable_grad():
            out = model(x.detach().requires_grad_(input_grad))
            check_outputs(out, t)
            act = shaped(rec.activation)
            _check_feature_map(act, model, layer)
            if rec.output.requires_grad:
                (grad,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), rec.output)
                return act, shaped(grad)
    raise ValueError(f"layer {layer_name(model, layer)}: its output does not depend on the input")


def cam(model: nn.Module, x: torch.Tensor, target, layer="layer4", fc="fc", upsample: bool = True,
        mode: str = "bilinear") -> torch.Tensor:
    """Class Activation Mapping (Zhou et al. 2016, arXiv:1512.04150).

        CAM_c(i, j) = sum_k  W_fc[c, k] * A_k(i, j)

    For a network that ends in global average pooling and one linear layer, the class score is the
    spatial mean of this map plus the bias: the map *is* the score, location by location. No ReLU
    and no normalisation are applied (negative values argue against the class). That identity is
    checked on every call: a layer/fc pair without this structure gets a ValueError.
    """
    x, t = _prepare(model, x, target)
    linear = resolve_layer(model, fc)
    fc_name, name = layer_name(model, fc), layer_name(model, layer)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"fc={fc_name} must name the final nn.Linear layer, got {type(linear).__name__}")
    with capture(model, layer) as rec, torch.no_grad():
        out = model(x)
    check_outputs(out, t)
    act = rec.activation
    _check_feature_map(act, model, layer)
    if act.shape[1] != linear.in_features:
        raise ValueError(f"CAM needs the layer's {act.shape[1]} channels to feed {fc_name} directly through global "
                         f"average pooling, but {fc_name} takes {linear.in_features} features: this model does not "
                         "have the structure CAM needs (use grad_cam)")
    if linear.out_features != out.shape[1]:
        raise ValueError(f"fc={fc_name} has {linear.out_features} outputs but the model returns {out.shape[1]} "
                         "scores: CAM needs the layer that produces the class scores (use grad_cam for other heads)")
    weights = linear.weight.detach()[t]  # [B, K]
    maps = torch.einsum("bk,bkhw->bhw", weights, act)[:, None]
    # The identity that makes CAM the score: mean over the grid + bias = the logit. It fails when
    # something other than global average pooling sits between the layer and fc.
    bias = linear.bias.detach()[t] if linear.bias is not None else 0.0
    logit = out.gather(1, t[:, None])[:, 0]
    rebuilt = maps.mean((1, 2, 3)) + bias
    if not torch.allclose(rebuilt, logit, rtol=1e-4, atol=1e-4 * (1 + float(logit.abs().max()))):
        raise ValueError(f"CAM needs {name} to feed {fc_name} through global average pooling alone, but here the "
                         f"mean of the map plus the bias is not the logit (largest gap "
                         f"{float((rebuilt - logit).abs().max()):.3g}): this model does not have the structure CAM "
                         "needs (use grad_cam)")
    return _resize(maps, x, upsample, mode)


def grad_cam(model: nn.Module, x: torch.Tensor, target, layer="layer4", relu: bool = True,
             upsample: bool = True, mode: str = "bilinear", reshape=None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391).

        alpha_k = mean_ij  d S_c / d A_k(i, j)          (one weight per channel)
        map     = ReLU( sum_k alpha_k A_k )

    ``relu=False`` keeps the negative evidence (Captum's LayerGradCam default). ``reshape`` turns
    a layer's output that is not a feature map into one, e.g. a ViT's tokens with
    ``helpers.attention.tokens_to_grid`` (pytorch-grad-cam's ``reshape_transform``).
    """
    x, t = _prepare(model, x, target)
    act, grad = layer_activation_and_gradient(model, x, t, layer, reshape)
    weights = grad.mean((2, 3), keepdim=True)
    maps = (weights * act).sum(1, keepdim=True)
    if relu:
        maps = F.relu(maps)
    return _resize(maps, x, upsample, mode)


def grad_cam_pp(model: nn.Module, x: torch.Tensor, target, layer="layer4", upsample: bool = True,
                mode: str = "bilinear", reshape=None) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, arXiv:1710.11063).

    With g = d S_c / d A_k(i, j) and the score taken as exp(S_c), the higher derivatives become
    powers of g, and

        a_k(i, j) = g^2 / (2 g^2 + sum_ab A_k(a, b) g^3)
        w_k       = sum_ij a_k(i, j) ReLU(g)
        map       = ReLU( sum_k w_k A_k )

    Each location gets its own weight, so several instances of a class are not averaged away.
    ``reshape`` as in ``grad_cam``.
    """
    x, t = _prepare(model, x, target)
    act, grad = layer_activation_and_gradient(model, x, t, layer, reshape)
    g2, g3 = grad.pow(2), grad.pow(3)
    denom = 2 * g2 + act.sum((2, 3), keepdim=True) * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        torch.zeros_like(denom))
    weights = (alpha * F.relu(grad)).sum((2, 3), keepdim=True)
    maps = F.relu((weights * act).sum(1, keepdim=True))
    return _resize(maps, x, upsample, mode)


def score_cam(model: nn.Module, x: torch.Tensor, target, layer="layer4", batch_size="auto",
              upsample: bool = True, mode: str = "bilinear", subtract_baseline: bool = True,
              align_corners: bool = False, score: str = "probability", return_weights: bool = False,
              reshape=None):
    """Score-CAM (Wang et al. 2020, arXiv:1910.01279): no gradients.

        H_k   = normalise( upsample(A_k) ) to [0, 1]          (one mask per channel)
        w_k   = p_c(x * H_k) - p_c(0)                          (softmax score increase over black)
        map   = ReLU( sum_k w_k A_k )

    A channel whose map A_k is constant over the layer's grid says nothing about where, and gets a
    zero mask H_k = 0 (so w_k = 0 with the baseline subtracted): upsampled, such a map varies only by
    rounding, which normalising would stretch into a mask of noise. Every channel of a 1x1 layer
    (resnet18's layer4 at 32 px) is constant, so there the map is 0 with the baseline subtracted
    (a constant without it): pick a layer with a grid.
    pytorch-grad-cam gets the same zero masks there (its upsampling of a 1x1 map is exact).

    ``subtract_baseline=False`` uses w_k = p_c(x * H_k), as the authors' released code does; with
    the subtraction (the paper's "increase of confidence"), a model that scores a black image high
    for class c gets negative weights everywhere and an empty map. The B * K masked inputs are
    scored ``batch_size`` at a time (masks made pass by pass; "auto": see ``helpers.batching``).
    ``return_weights`` also returns the weights [B, K].
    ``align_corners`` is how the activations are upsampled into masks: False as in ``F.interpolate``'s
    default (and Captum), True as pytorch-grad-cam's ``nn.UpsamplingBilinear2d``. ``score="logit"``
    scores a masked input by its class logit instead of its softmax probability: the number
    pytorch-grad-cam and torchcam compute before they take a softmax over the channels. ``reshape``
    as in ``grad_cam``.
    """
    x, t = _prepare(model, x, target)
    check_batch_size(batch_size)
    shaped = _reshaper(reshape)
    if score not in ("probability", "logit"):
        raise ValueError(f"score must be 'probability' or 'logit', got {score!r}")
    to_score = (lambda z: z.softmax(1)) if score == "probability" else (lambda z: z)
    with capture(model, layer) as rec, torch.no_grad():
        out = model(x)
    check_outputs(out, t)
    act = shaped(rec.activation)
    _check_feature_map(act, model, layer)
    b, k = act.shape[:2]
    varies = act.amax((2, 3)) > act.amin((2, 3))  # False: a constant map, a zero mask
    scores = torch.empty(b * k, device=x.device, dtype=x.dtype)

    def step(start, stop):  # the masks of channels start..stop-1 (counting over the batch), made here
        n = torch.arange(start, stop, device=x.device)
        i, c = n // k, n % k
        up = F.interpolate(act[i, c][:, None], size=x.shape[-2:], mode="bilinear", align_corners=align_corners)
        lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
        live = varies[i, c][:, None, None, None] & (hi > lo)
        masks = torch.where(live, (up - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(up))  # [n, 1, H, W]
        masked = (x[i] * masks).contiguous(memory_format=torch.channels_last)
        probs = to_score(model(masked))  # channels-last: ~1.8x faster on CPU, same values to ~1e-7
        scores[start:stop] = probs.gather(1, t[i][:, None])[:, 0] - base[t[i]]

    with torch.no_grad():
        black = to_score(model(torch.zeros_like(x[:1])))[0]  # the black image's score, per class
        base = black if subtract_baseline else torch.zeros_like(black)
        run_batches(step, b * k, batch_size, workload("forward", model, x), x.device)
    # a zero mask makes the black image: its weight is exactly black - base, not up to a batched pass's rounding
    weights = torch.where(varies, scores.view(b, k), (black - base)[t][:, None])
    maps = F.relu((weights[:, :, None, None] * act).sum(1, keepdim=True))
    maps = _resize(maps, x, upsample, mode)
    return (maps, weights) if return_weights else maps


def guided_backprop(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015, arXiv:1412.6806).

    The input gradient, except that at every ReLU the backward pass lets through only positive
    gradients, and only where the forward input was positive. Sharp and pretty, and little
    dependent on the model's weights or the class (notebooks 04 and 09 measure both).
    """
    return rule_backprop(model, x, target, "guided")  # helpers.deconv: the three ReLU rules


def guided_grad_cam(model: nn.Module, x: torch.Tensor, target, layer="layer4", mode: str = "nearest") -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop [B, C, H, W] times the Grad-CAM map
    upsampled to the input (nearest neighbour by default, as Captum's GuidedGradCam)."""
    return guided_backprop(model, x, target) * grad_cam(model, x, target, layer=layer, mode=mode)
