"""Gradient-based attributions: saliency, gradient x input, SmoothGrad, Integrated Gradients.

All follow the course's method contract: ``attr = method(model, x, target, **options)`` with
``x`` a float batch ``[B, C, H, W]`` and ``target`` an int or one class index per image; the result
has the shape of ``x``. No method changes ``x``, the model's mode, its parameters' ``.grad`` or
``requires_grad``: gradients are taken with ``torch.autograd.grad`` with respect to a detached copy
of the input only, so the parameters' gradients are never even computed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .batching import run_batches, workload
from .contract import check_batch_size, check_input, check_model, check_outputs, check_target
from .models import PIXEL_MEAN


def input_gradient(model: torch.nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """d score_target / d x for every image: one batched forward and backward pass.

    The score is the model's output for the target class (a logit for DermNet, not a probability).
    """
    check_model(model)
    check_input(x, model=model)
    t = check_target(target, x.shape[0], device=x.device)
    return _gradient(model, x, t)


def _gradient(model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # Default (contiguous) layout on purpose: channels-last runs ~20% faster on CPU but changes the
    # convolutions' round-off, and a ReLU unit within round-off of zero then flips, changing the
    # gradient over its whole receptive field. Same layout as Captum: the same arithmetic, exact parity.
    xg = x.detach().requires_grad_(True)  # shares memory with x, which keeps requires_grad=False
    with torch.enable_grad():
        out = model(xg)
        check_outputs(out, t)
        (grad,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), xg)
    return grad


def saliency(model: torch.nn.Module, x: torch.Tensor, target, abs: bool = True) -> torch.Tensor:
    """Saliency map (Simonyan, Vedaldi & Zisserman 2014, arXiv:1312.6034).

        S(x) = | d S_c(x) / d x |

    How much the class score would change per unit change of each pixel, at this very image.
    ``abs=False`` keeps the sign (which direction raises the score).
    """
    grad = input_gradient(model, x, target)
    return grad.abs() if abs else grad


def gradient_x_input(model: torch.nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Gradient times input (Shrikumar et al. 2016, arXiv:1605.01713).

        A(x) = x * d S_c(x) / d x

    The first-order Taylor term of the score from an all-zero (black) input: for a linear model
    it sums exactly to S_c(x) - S_c(0).
    """
    return x.detach() * input_gradient(model, x, target)


def smoothgrad(model: torch.nn.Module, x: torch.Tensor, target, n_samples: int = 50,
               noise_level: float = 0.15, variant: str = "mean", batch_size="auto",
               generator: torch.Generator | None = None, abs: bool = False) -> torch.Tensor:
    """SmoothGrad and its variants (Smilkov et al. 2017, arXiv:1706.03825; Adebayo et al. 2018).

        g_k = d S_c(x + eps_k) / d x,   eps_k ~ N(0, sigma^2),   sigma = noise_level * (max x - min x)

        "mean"    SmoothGrad   (1/n) sum_k g_k
        "square"  SmoothGrad^2 (1/n) sum_k g_k^2
        "var"     VarGrad      (1/n) sum_k g_k^2 - ((1/n) sum_k g_k)^2

    sigma is relative to each image's own range, as in the paper (0.10 to 0.20 works well).
    ``abs=True`` averages |g_k| instead of g_k (Captum's Saliency default inside NoiseTunnel).
    The noise is drawn image by image, n_samples each, from ``generator`` (or the global RNG),
    in the same order as Captum's NoiseTunnel: with the same seed and sigma the results agree.
    It is drawn on the generator's device (a CPU generator gives a GPU model the CPU's noise).
    Samples are processed ``batch_size`` at a time, across image boundaries ("auto": sized by
    memory and speed, see ``helpers.batching``). The noise is the same whatever the batch when an
    image's C*H*W is a multiple of 16 (PyTorch draws normal numbers in blocks of 16).
    """
    check_model(model)
    check_input(x, model=model)
    t = check_target(target, x.shape[0], device=x.device)
    if variant not in ("mean", "square", "var"):
        raise ValueError(f"variant must be 'mean', 'square' or 'var', got {variant!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not (isinstance(noise_level, (int, float)) and noise_level >= 0):
        raise ValueError(f"noise_level must be a number >= 0, got {noise_level!r}")
    check_batch_size(batch_size)

    x = x.detach()
    sigma = noise_level * (x.amax((1, 2, 3)) - x.amin((1, 2, 3)))  # [B]
    acc = accumulation_dtype(x)  # sums of many gradients, kept free of float32 round-off
    total, total_sq = torch.zeros_like(x, dtype=acc), torch.zeros_like(x, dtype=acc)

    def step(lo, hi):
        img = torch.arange(lo, hi, device=x.device) // n_samples
        noise = torch.randn((len(img), *x.shape[1:]), generator=generator, dtype=x.dtype,
                            device=x.device if generator is None else generator.device).to(x.device)
        grad = _gradient(model, x[img] + noise * sigma[img].view(-1, 1, 1, 1), t[img])
        if abs:
            grad = grad.abs()
        grad = grad.to(acc)
        total.index_add_(0, img, grad)
        if variant != "mean":
            total_sq.index_add_(0, img, grad * grad)

    run_batches(step, x.shape[0] * n_samples, batch_size, workload("gradient", model, x), x.device)
    mean, mean_sq = total / n_samples, total_sq / n_samples
    return {"mean": mean, "square": mean_sq, "var": mean_sq - mean * mean}[variant].to(x.dtype)


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype to add up many gradients in: float64 (float32 sums lose digits as the number of
    terms grows: 5,000 float32 additions one at a time drift by ~1e-5 relative), or float32 on a
    device without float64 (Apple's MPS)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


# ------------------------------------------------------------------------------------------
# Integrated Gradients
# ------------------------------------------------------------------------------------------

RULES = ("trapezoid", "left", "right", "middle", "gausslegendre", "captum_trapezoid")


def path_rule(steps: int, rule: str = "trapezoid") -> tuple[torch.Tensor, torch.Tensor]:
    """Points alpha_k in [0, 1] and weights w_k with  integral_0^1 f  ~  sum_k w_k f(alpha_k).

    trapezoid         alpha = 0, 1/(n-1), ..., 1; w = 1/(n-1), ends halved (weights sum to 1)
    left, right       n points, w = 1/n, left or right end of each of n intervals
    middle            midpoints of n intervals, w = 1/n
    gausslegendre     Gauss-Legendre nodes and weights on [0, 1] (Captum's default)
    captum_trapezoid  Captum's "riemann_trapezoid": trapezoid points, but w = 1/n with the ends
                      halved, so the weights sum to (n-1)/n: every attribution is (n-1)/n of the
                      trapezoid rule's. Here only to show the difference and to match Captum.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    n = steps
    if rule in ("trapezoid", "captum_trapezoid"):
        alphas = torch.linspace(0, 1, n).tolist()  # the same float32 points as Captum
        w = [1 / (n - 1) if rule == "trapezoid" else 1 / n] * n
        w[0] /= 2
        w[-1] /= 2
    elif rule == "left":
        alphas, w = torch.linspace(0, 1 - 1 / n, n).tolist(), [1 / n] * n
    elif rule == "right":
        alphas, w = torch.linspace(1 / n, 1, n).tolist(), [1 / n] * n
    elif rule == "middle":
        alphas, w = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n).tolist(), [1 / n] * n
    else:
        nodes, weights = np.polynomial.legendre.leggauss(n)
        alphas, w = (0.5 * (1 + nodes)).tolist(), (0.5 * weights).tolist()
    return torch.tensor(alphas, dtype=torch.float32), torch.tensor(w, dtype=torch.float32)


def _as_baseline(baseline, x: torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ValueError(f"baseline: unknown name {baseline!r}; named baselines: {sorted(BASELINES)}")
        return BASELINES[baseline](x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline must be a number, a tensor or a name, got {type(baseline).__name__}")
    b = baseline.detach().to(device=x.device, dtype=x.dtype)
    if b.dim() == 3:
        b = b[None]
    if b.dim() != 4 or b.shape[1:] != x.shape[1:] or b.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not fit x of shape {tuple(x.shape)}: "
                         "give one per image [B, C, H, W], or one shared [C, H, W] or [1, C, H, W]")
    return b.expand_as(x)


def integrated_gradients(model: torch.nn.Module, x: torch.Tensor, target, baseline=0.0, steps: int = 50,
                         rule: str = "trapezoid", batch_size="auto", return_delta: bool = False,
                         channels_last: bool = False):
    """Integrated Gradients (Sundararajan, Taly & Yan 2017, arXiv:1703.01365).

        IG_i(x) = (x_i - b_i) * integral_0^1  d S_c(b + a (x - b)) / d x_i  da
                ~ (x_i - b_i) * sum_k w_k  d S_c(b + alpha_k (x - b)) / d x_i

    Completeness: sum_i IG_i(x) = S_c(x) - S_c(b) when the integral is exact; ``return_delta``
    also returns the per-image error of that sum, ``sum(attr) - (S_c(x) - S_c(b))``.

    baseline    a number (every pixel), a tensor per image [B, C, H, W] or shared [C, H, W], or a
                name from BASELINES ("black", "mean", "blur", "noise")
    steps       points on the path (>= 2); ``rule`` picks them (see ``path_rule``); the weighted
                gradients are summed in float64, so many steps lose no accuracy to the sum
    batch_size  path points per forward/backward pass: memory is bounded by it, however many
                steps are asked for (the points are never all held at once); "auto" sizes it
                by memory and speed (``helpers.batching``)
    channels_last  True: pass the path points in channels-last memory layout, about 20% faster on
                CPU for ImageNet-size images; the same values up to float32 round-off, not bit for
                bit (False, the default, keeps Captum's arithmetic)
    """
    check_model(model)
    check_input(x, model=model)
    t = check_target(target, x.shape[0], device=x.device)
    check_batch_size(batch_size)
    alphas, weights = path_rule(steps, rule)
    x = x.detach()
    b = _as_baseline(baseline, x)
    diff = x - b
    n_img = x.shape[0]
    total = torch.zeros_like(x, dtype=accumulation_dtype(x))  # float64: exact however many steps

    def step(lo, hi):  # the samples are ordered step by step, the whole batch at each step (as Captum)
        k = torch.arange(lo, hi)
        point, img = k // n_img, (k % n_img).to(x.device)
        a = alphas[point].to(x).view(-1, 1, 1, 1)  # x's device and dtype (a float16 model stays float16)
        points = b[img] + a * diff[img]
        if channels_last:
            points = points.contiguous(memory_format=torch.channels_last)
        grad = _gradient(model, points, t[img])
        total.index_add_(0, img, (grad * weights[point].to(x.device).view(-1, 1, 1, 1)).to(total.dtype))

    run_batches(step, steps * n_img, batch_size, workload("gradient", model, x), x.device)
    attr = total.to(x.dtype) * diff  # the weighted sum rounded once, then Captum's product
    if not return_delta:
        return attr
    with torch.no_grad():
        scores = model(torch.cat([x, b])).gather(1, torch.cat([t, t])[:, None])[:, 0]
    delta = attr.sum((1, 2, 3)) - (scores[:n_img] - scores[n_img:])
    return attr, delta


# ------------------------------------------------------------------------------------------
# Baselines for Integrated Gradients: what "absence of signal" is taken to mean
# ------------------------------------------------------------------------------------------

DATASET_MEAN = PIXEL_MEAN  # the mean colour of DermSynth images, which DermNet normalises with


def black_baseline(x: torch.Tensor) -> torch.Tensor:
    """All zeros: black, the usual default. Not neutral where the image has real black (corners)."""
    return torch.zeros_like(x)


def mean_baseline(x: torch.Tensor, mean=DATASET_MEAN) -> torch.Tensor:
    """Every pixel the dataset's mean colour: a flat, skin-like image."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if m.shape[1] != x.shape[1]:
        raise ValueError(f"mean has {m.shape[1]} channels, x has {x.shape[1]}")
    return m.expand_as(x).clone()


def blur_baseline(x: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """The input under a strong Gaussian blur: keeps colours, removes edges and texture
    (Sturmfels, Lundberg & Lee 2020, "Visualizing the impact of feature attribution baselines")."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    out = x.detach()
    if radius >= min(x.shape[-2:]):
        raise ValueError(f"sigma {sigma} is too large for an image of size {tuple(x.shape[-2:])}")
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return out


def noise_baseline(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Uniform noise in [0, 1], seeded: no structure at all, but not "nothing" either."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    return torch.rand(x.shape, generator=g, dtype=x.dtype, device=x.device)


BASELINES = {"black": black_baseline, "mean": mean_baseline, "blur": blur_baseline, "noise": noise_baseline}
