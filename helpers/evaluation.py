"""Evaluating attribution maps (notebook 13): how faithfully does a map reflect what the model uses?

Faithfulness, by perturbing the input in the map's order
    deletion, insertion   Petsiuk et al. 2018 (RISE): remove (insert) pixels, most relevant first,
                          and follow the class probability; ``(fractions, scores, auc)`` per image
    road                  Rong et al. 2022 (ROAD): the same curve, but removed pixels are imputed
                          from their neighbours (noisy linear imputation), so the model does not
                          see the tell-tale shape of the removed set
    make_substitute       what a removed pixel becomes: "blur", "mean", "noise", "black"
Faithfulness, by random perturbations
    infidelity            Yeh et al. 2019, as ``captum.metrics.infidelity``
    faithfulness_correlation  Bhatt et al. 2020, as ``quantus.FaithfulnessCorrelation``
Robustness
    sensitivity_max       Yeh et al. 2019, as ``captum.metrics.sensitivity_max``
Localization against DermSynth's ground truth
    localization_auc      the map's pixels as a detector of a mask: average precision or ROC AUC
Comparing methods
    bootstrap_ci, kendall_tau, rank_methods

Every model evaluation runs under ``torch.no_grad()`` in batches; nothing about the model or the
caller's tensors changes; the random draws come from a seeded generator or a forked RNG, so the
caller's random state is untouched.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .batching import run_batches, workload
from .contract import check_batch_size, check_input, check_model, check_outputs, check_target
from .gradients import blur_baseline, mean_baseline, noise_baseline

SUBSTITUTES = ("blur", "mean", "noise", "black")


class Curve(NamedTuple):
    """A perturbation curve: ``fractions [S+1]`` of pixels changed, ``scores [B, S+1]`` and the
    area under each image's curve, ``auc [B]`` (trapezoid rule over the fractions)."""

    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor


# ------------------------------------------------------------------------------------------
# Checks shared by the metrics
# ------------------------------------------------------------------------------------------

def _prepare(model, x, target):
    check_model(model)
    check_input(x, model=model)
    x = x.detach()
    return x, check_target(target, x.shape[0], device=x.device)


def _check_attr(attr, x: torch.Tensor, name: str = "attr") -> torch.Tensor:
    """attr as a tensor [B, C, H, W] or [B, 1, H, W] (a map method's output) fitting x."""
    if not isinstance(attr, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(attr).__name__}")
    if attr.dim() == 3:
        attr = attr[:, None]
    if attr.dim() != 4 or attr.shape[0] != x.shape[0] or attr.shape[-2:] != x.shape[-2:] \
            or attr.shape[1] not in (1, x.shape[1]):
        raise ValueError(f"{name} of shape {tuple(attr.shape)} does not fit x of shape {tuple(x.shape)}: give "
                         f"[B, C, H, W] like x, or a map [B, 1, H, W]")
    if not attr.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {attr.dtype}")
    if not torch.isfinite(attr).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return attr.detach().to(x.dtype)


def _positive_int(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _model_scores(model, images, t, score: str, channels_last: bool) -> torch.Tensor:
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    out = model(images)
    check_outputs(out, t)
    if score == "prob":
        out = out.softmax(1)
    return out.gather(1, t[:, None])[:, 0]


# ------------------------------------------------------------------------------------------
# Deletion and insertion (RISE), MoRF and LeRF
# ------------------------------------------------------------------------------------------

def make_substitute(x: torch.Tensor, kind="blur", seed: int = 0) -> torch.Tensor:
    """What a removed pixel becomes, an image like ``x``:

    "blur"   x under a Gaussian blur, sigma 5 px (RISE's insertion start: colours kept, shapes gone)
    "mean"   DermSynth's mean colour everywhere (a flat skin-like image)
    "noise"  uniform noise in [0, 1], seeded (no structure, and nothing like a real image)
    "black"  zeros (RISE's deletion end; Quantus's "black" is the image's minimum instead)
    a number or a tensor broadcastable to x: itself

    Each is out of distribution in its own way: a blurred disc, a flat patch, a speckle, a black
    hole. The model was never trained on any of them, so part of a score drop measures its
    surprise rather than the evidence removed (notebook 13 measures how much).
    """
    if isinstance(kind, torch.Tensor):
        try:
            return kind.detach().to(x.dtype).expand_as(x)
        except RuntimeError:
            raise ValueError(f"substitute of shape {tuple(kind.shape)} does not broadcast to x "
                             f"{tuple(x.shape)}") from None
    if isinstance(kind, int | float) and not isinstance(kind, bool):
        return torch.full_like(x, float(kind))
    if kind == "blur":
        return blur_baseline(x, 5.0)
    if kind == "mean":
        return mean_baseline(x)
    if kind == "noise":
        return noise_baseline(x, seed)
    if kind == "black":
        return torch.zeros_like(x)
    raise ValueError(f"substitute must be one of {SUBSTITUTES}, a number or a tensor, got {kind!r}")


def pixel_order(attr: torch.Tensor, order: str = "morf", abs: bool = False) -> torch.Tensor:
    """The rank of every pixel ``[B, H*W]``: 0 for the pixel removed first.

    A pixel's relevance is its attribution summed over channels (``abs=True``: summed in
    magnitude). "morf" ranks the most relevant first, "lerf" the least relevant first. Ties keep
    the pixels' reading order (a stable sort), so a flat map removes pixels row by row.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}")
    a = attr.abs() if abs else attr
    v = a.sum(1).flatten(1).double()
    idx = torch.sort(-v if order == "morf" else v, dim=1, stable=True).indices
    ranks = torch.empty_like(idx)
    return ranks.scatter_(1, idx, torch.arange(v.shape[1], device=v.device).expand_as(idx))


def _auc(fractions: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Trapezoid rule: sum_k (f_{k+1} - f_k) (s_k + s_{k+1}) / 2, per row of ``scores``."""
    df = (fractions[1:] - fractions[:-1]).to(scores.dtype)
    return ((scores[:, 1:] + scores[:, :-1]) / 2 * df).sum(1)


def _curve(model, x, t, ranks, start, end, steps, score, batch_size, channels_last, fill=None,
           last: int | None = None) -> Curve:
    """Scores of the images in which the first n_k pixels of ``ranks`` come from ``end`` and the
    rest from ``start``, for n_k = floor(k H W / steps), k = 0 .. steps (or .. ``last``); all
    (step, image) pairs evaluated in batches of ``batch_size`` images. ``fill(x_k, removed)``
    overrides the composition."""
    b, hw = x.shape[0], x.shape[-2] * x.shape[-1]
    n_points = steps + 1 if last is None else last + 1
    counts = torch.arange(n_points, device=x.device) * hw // steps
    n_total = n_points * b
    scores = torch.empty(n_total, dtype=x.dtype, device=x.device)
    if channels_last:  # compose the images in the layout the model will read: no copy per batch
        start, end = (v.contiguous(memory_format=torch.channels_last) for v in (start, end))

    def run(lo, hi):
        k = torch.arange(lo, hi, device=x.device)
        step, img = k // b, k % b
        changed = (ranks[img] < counts[step, None]).view(-1, 1, *x.shape[-2:])
        images = torch.where(changed, end[img], start[img]) if fill is None else fill(img, changed)
        scores[lo:hi] = _model_scores(model, images, t[img], score, channels_last)

    with torch.no_grad():
        run_batches(run, n_total, batch_size, workload("forward", model, x), x.device)
    scores = scores.view(n_points, b).T.contiguous()
    fractions = counts.double() / hw
    return Curve(fractions, scores, _auc(fractions, scores))


def _check_curve_options(steps, score, batch_size):
    _positive_int(steps, "steps")
    if score not in ("prob", "logit"):
        raise ValueError(f"score must be 'prob' (softmax probability, as RISE) or 'logit', got {score!r}")
    check_batch_size(batch_size)


def deletion(model, x: torch.Tensor, target, attr: torch.Tensor, steps: int = 32, substitute="black",
             order: str = "morf", score: str = "prob", abs: bool = False, batch_size="auto",
             channels_last: bool = True, seed: int = 0) -> Curve:
    """The deletion curve (Petsiuk, Das & Saenko 2018, RISE, arXiv:1806.07421).

        x_k = x with its n_k most relevant pixels replaced by the substitute,  n_k = floor(k HW / S)
        s_k = p(target | x_k)  for k = 0 .. S;   AUC = integral of s over the fraction removed

    A faithful map puts first the pixels the score depends on, so the score collapses early and the
    AUC is small (lower is better). order="lerf" removes the least relevant first (then the score
    should hold up, and a large AUC is better). ``substitute`` is "black" (RISE's choice for
    deletion), "blur", "mean", "noise", a number or a tensor (see ``make_substitute``). ``score="logit"``
    follows the logit instead of the probability; ``abs=True`` ranks pixels by magnitude. The
    (S + 1) B images are evaluated in batches of ``batch_size``, in channels-last layout
    (``channels_last=False``: the libraries' layout, bit for bit).

    Returns ``Curve(fractions [S+1], scores [B, S+1], auc [B])``.
    """
    x, t = _prepare(model, x, target)
    a = _check_attr(attr, x)
    _check_curve_options(steps, score, batch_size)
    end = make_substitute(x, substitute, seed)
    return _curve(model, x, t, pixel_order(a, order, abs), x, end, steps, score, batch_size, channels_last)


def insertion(model, x: torch.Tensor, target, attr: torch.Tensor, steps: int = 32, substitute="blur",
              order: str = "morf", score: str = "prob", abs: bool = False, batch_size="auto",
              channels_last: bool = True, seed: int = 0) -> Curve:
    """The insertion curve (Petsiuk, Das & Saenko 2018, RISE): the reverse of deletion.

        x_k = the substitute with the n_k most relevant pixels of x put back,  s_k = p(target | x_k)

    Starting from a blurred image (RISE's choice), a faithful map restores the evidence first, so
    the score rises early and the AUC is large (higher is better). Options as ``deletion``.
    Returns ``Curve(fractions [S+1], scores [B, S+1], auc [B])``.
    """
    x, t = _prepare(model, x, target)
    a = _check_attr(attr, x)
    _check_curve_options(steps, score, batch_size)
    start = make_substitute(x, substitute, seed)
    return _curve(model, x, t, pixel_order(a, order, abs), start, x, steps, score, batch_size, channels_last)


# ------------------------------------------------------------------------------------------
# ROAD: remove and debias, with noisy linear imputation
# ------------------------------------------------------------------------------------------

# ROAD's neighbourhood: direct neighbours weigh 1/6, diagonal ones 1/12 (they sum to 1)
NEIGHBOURS = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6,
              (0, 1): 1 / 6, (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12}


def linear_imputation(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Fill the ``removed`` pixels of ``x`` so that each one is the weighted mean of its neighbours
    (Rong et al. 2022, ROAD, arXiv:2202.00449), without noise:

        for every removed pixel i:  sum_{j in N(i)} w_ij (v_i - v_j) = 0,   w = 1/6 direct, 1/12 diagonal

    with the kept pixels fixed and the neighbours outside the image left out. One sparse linear
    system per image (an equation per removed pixel, a right-hand side per channel), solved
    directly with ``scipy.sparse.linalg.spsolve`` in float64, as the ROAD reference code does.
    x [B, C, H, W], removed bool [B, 1, H, W] or [B, H, W]. Returns a tensor like x.
    """
    import scipy.sparse
    from scipy.sparse.linalg import spsolve

    removed = removed[:, 0] if removed.dim() == 4 else removed
    if removed.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"removed of shape {tuple(removed.shape)} does not fit x of shape {tuple(x.shape)}")
    out = x.detach().double().cpu().numpy().copy()
    c, h, w = out.shape[1:]
    for img, r in zip(out, removed.cpu().numpy().reshape(len(out), -1)):
        flat, unknown = img.reshape(c, -1), np.flatnonzero(r)
        n = len(unknown)
        if n == 0:
            continue
        var = np.full(h * w, -1)
        var[unknown] = np.arange(n)  # unknown pixel -> its equation
        yy, xx = unknown // w, unknown % w
        rows, cols, vals = [np.arange(n)], [np.arange(n)], []
        degree, rhs = np.zeros(n), np.zeros((n, c))
        for (dy, dx), weight in NEIGHBOURS.items():
            ny, nx = yy + dy, xx + dx
            inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
            i, j = np.flatnonzero(inside), ny[inside] * w + nx[inside]
            degree[i] += weight
            unk = r[j]
            rows.append(i[unk]), cols.append(var[j[unk]]), vals.append(np.full(int(unk.sum()), -weight))
            rhs[i[~unk]] += weight * flat[:, j[~unk]].T  # known neighbours move to the right-hand side
        a = scipy.sparse.csc_matrix((np.concatenate([degree, *vals]), (np.concatenate(rows), np.concatenate(cols))),
                                    shape=(n, n))
        flat[:, unknown] = spsolve(a, rhs).reshape(n, c).T
    return torch.as_tensor(out, device=x.device).to(x.dtype)


def road(model, x: torch.Tensor, target, attr: torch.Tensor, steps: int = 10, order: str = "morf",
         noise: float = 0.01, score: str = "prob", abs: bool = False, seed: int = 0, batch_size="auto",
         channels_last: bool = True) -> Curve:
    """ROAD, RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci 2022, arXiv:2202.00449).

    Deletion's curve, with every removed pixel imputed from its neighbours (``linear_imputation``)
    plus Gaussian noise of standard deviation ``noise`` (seeded), instead of a fixed substitute. A
    fixed substitute leaves the *shape* of the removed set in the image, and the shape alone can
    leak the class (the removed set of a good map outlines the lesion); imputation hides it. No
    retraining (that was ROAR). MoRF: lower AUC is better; LeRF: higher is better. The curve stops
    one step short of removing every pixel (with nothing left to impute from, the imputation is
    undefined): fractions 0, 1/S, ..., (S-1)/S.
    Returns ``Curve(fractions [S], scores [B, S], auc [B])``.
    """
    x, t = _prepare(model, x, target)
    a = _check_attr(attr, x)
    _check_curve_options(steps, score, batch_size)
    if not (isinstance(noise, int | float) and noise >= 0):
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    g = torch.Generator(device=x.device).manual_seed(seed)

    def fill(img, changed):
        filled = linear_imputation(x[img], changed)
        eps = torch.randn(filled.shape, generator=g, dtype=x.dtype, device=x.device)
        return torch.where(changed, filled + noise * eps, x[img])

    _positive_int(steps, "steps", 2)
    return _curve(model, x, t, pixel_order(a, order, abs), x, x, steps, score, batch_size, channels_last, fill,
                  last=steps - 1)


# ------------------------------------------------------------------------------------------
# Infidelity and max-sensitivity (Yeh et al. 2019), as Captum
# ------------------------------------------------------------------------------------------

def noise_perturbation(sigma: float = 0.003):
    """A perturbation function for ``infidelity``: I ~ N(0, sigma^2) per value, drawn from the
    global RNG (which ``infidelity`` seeds inside a fork); returns ``(I, x - I)`` as Captum's
    ``perturb_func`` does (Captum's tutorial uses sigma = 0.003)."""
    if not (isinstance(sigma, int | float) and sigma > 0):
        raise ValueError(f"sigma must be a number > 0, got {sigma!r}")

    def perturb(inputs):
        noise = sigma * torch.randn(inputs.shape, dtype=inputs.dtype, device=inputs.device)
        return noise, inputs - noise

    return perturb


def _rounds(batch_size, b: int, n: int):
    """Captum's ``max_examples_per_batch``: that many perturbed images per pass, whole images, as
    a batch size in rounds (one perturbed copy of every image per round): None is all at once; an
    int, ``batch_size // b`` rounds (at least one); "auto" and memory sizes stay as they are."""
    if batch_size is None:
        return n
    check_batch_size(batch_size)
    return min(max(batch_size // b, 1), n) if isinstance(batch_size, int) else batch_size


def _perturbed_forward_diffs(model, x, t, perturb_fn, n_samples, batch_size, channels_last, use):
    """``use(k, I, f(x) - f(x - I))`` for the perturbations I, chunk by chunk of k rounds (Captum's order)."""

    def step(lo, hi):
        k_now = hi - lo
        out = perturb_fn(x.repeat_interleave(k_now, 0))
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise ValueError("perturb_fn must return (perturbations, perturbed inputs)")
        pert, xp = out
        if pert.shape != xp.shape or xp.shape[1:] != x.shape[1:]:
            raise ValueError(f"perturb_fn returned shapes {tuple(pert.shape)} and {tuple(xp.shape)}, expected "
                             f"two tensors like x repeated: {(x.shape[0] * k_now, *x.shape[1:])}")
        diffs = fx.repeat_interleave(k_now, 0) - _model_scores(model, xp, t.repeat_interleave(k_now, 0), "logit",
                                                               channels_last)
        use(k_now, pert, diffs)

    with torch.no_grad():
        fx = _model_scores(model, x, t, "logit", channels_last)
        run_batches(step, n_samples, _rounds(batch_size, x.shape[0], n_samples),
                    workload("rounds", model, x[None]), x.device)


def infidelity(model, x: torch.Tensor, target, attr, perturb_fn, n_samples: int = 10, seed: int = 0,
               normalize: bool = False, batch_size: int | str | None = None, channels_last: bool = True):
    """Explanation infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, arXiv:1901.09392):

        INFD(Phi, f, x) = E_I [ ( I . Phi(x) - (f(x) - f(x - I)) )^2 ]

    the mean squared error of the map as a linear predictor of how the target logit f changes
    when the input is perturbed by I. As ``captum.metrics.infidelity`` (same definition, defaults
    and order of operations; Captum's memory layout too with ``channels_last=False``, see below):
    ``perturb_fn(inputs) -> (I, inputs - I)`` is called on x repeated
    image by image (``repeat_interleave``), ``n_samples`` (10) perturbations per image, in chunks of
    ``batch_size`` perturbed images (None, the default: all at once, as Captum; an int or "auto",
    see ``helpers.batching``, splits them, and as in Captum the split decides which random draw
    perturbs which image: other draws, as valid, not the same numbers); ``normalize=True`` first rescales the map
    by the best beta = E[I.Phi (f(x) - f(x-I))] / E[(I.Phi)^2], which makes the score invariant to
    the map's scale (without it a map that is right up to a factor scores badly). The global RNG is
    seeded with ``seed`` inside a fork, so the same seed gives the same perturbations (Captum's
    after ``torch.manual_seed(seed)``) and the caller's random state is untouched.

    attr  a map like x (``[B, 1, H, W]`` maps are broadcast over the channels), or a dict
          ``{name: map}``: the perturbations do not depend on the map, so one set of forward
          passes serves every map, and a dict ``{name: scores [B]}`` comes back.
    channels_last  True (the default): the model reads x and the perturbed images in channels-last
          layout, which CPU convolutions run faster. They then add up their products in another
          order, so the logits differ from Captum's by round-off, and f(x) - f(x - I), a difference
          of two close logits, magnifies it (the more, the smaller the noise): measured per image,
          the infidelity is a relative 1e-5 to 7e-5 from Captum's on DermNet (DermSynth images,
          sigma 0.01 to 0.003) and 7e-5 to 1e-3 on a torchvision ResNet-18 with random weights
          (64-224 px); the perturbations are the same. False: Captum's layout, and its numbers bit
          for bit (tests/test_torchvision_models.py checks it on ResNet-18, DenseNet-121,
          ConvNeXt-T and a timm ViT).
    Returns the infidelity per image, ``[B]``.
    """
    x, t = _prepare(model, x, target)
    many = isinstance(attr, dict)
    attrs = {k: _check_attr(v, x, f"attr[{k!r}]").expand_as(x) for k, v in (attr if many else {"": attr}).items()}
    if not callable(perturb_fn):
        raise TypeError(f"perturb_fn must be a function inputs -> (perturbations, perturbed inputs), got "
                        f"{type(perturb_fn).__name__}")
    _positive_int(n_samples, "n_samples")
    _rounds(batch_size, x.shape[0], n_samples)
    b = x.shape[0]
    sums = {name: None for name in attrs}

    def use(k_now, pert, diffs):
        diffs = diffs.view(b, -1)
        for name, a in attrs.items():
            dots = (a.repeat_interleave(k_now, 0) * pert).view(b * k_now, -1).sum(1).view(b, -1)
            terms = ((dots.pow(2).sum(-1), (dots * diffs).sum(-1), diffs.pow(2).sum(-1)) if normalize
                     else ((dots - diffs).pow(2).sum(-1),))
            sums[name] = terms if sums[name] is None else tuple(s + u for s, u in zip(sums[name], terms))

    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        _perturbed_forward_diffs(model, x, t, perturb_fn, n_samples, batch_size, channels_last, use)
    out = {}
    for name, terms in sums.items():
        if normalize:
            beta = terms[1] / torch.where(terms[0] == 0, torch.ones_like(terms[0]), terms[0])  # Captum's safe_div
            value = beta * beta * terms[0] - 2 * beta * terms[1] + terms[2]
        else:
            value = terms[0].clone()
        out[name] = value / n_samples
    return out if many else out[""]


def sensitivity_max(method, model, x: torch.Tensor, target, radius: float = 0.02, n_samples: int = 10,
                    seed: int = 0, norm="fro", batch_size: int | str | None = None, **options) -> torch.Tensor:
    """Max-sensitivity (Yeh et al. 2019, arXiv:1901.09392), as ``captum.metrics.sensitivity_max``:

        SENS_max(Phi, x) = max_{|d|_inf <= r}  || Phi(x + d) - Phi(x) || / || Phi(x) ||

    estimated over ``n_samples`` (10) draws of d uniform in the L-infinity ball of radius ``radius``
    (0.02), with Frobenius norms over the whole map. Yeh et al.'s definition has no denominator;
    Captum (and so this function) divides by the norm of the original map (1 where it is 0), which
    makes the score a relative change, comparable between methods of different scales.

    ``method(model, inputs, target, **options)`` is called once on x, then on x repeated image by
    image with the noise added, ``batch_size`` perturbed images per call (None, the default: all at
    once, and ``method`` batches its own passes; an int or "auto" splits them, which changes the
    draws of a ``method`` that samples, as it draws from the same stream as the noise), in
    Captum's order; the global RNG is seeded with ``seed`` inside a fork (the noise is drawn as
    Captum's default ``perturb_func`` draws it, and a sampling method draws from the same stream).
    Returns ``[B]``.
    """
    if not callable(method):
        raise TypeError(f"method must be an attribution function method(model, x, target), got {type(method).__name__}")
    x, t = _prepare(model, x, target)
    if not (isinstance(radius, int | float) and radius >= 0):
        raise ValueError(f"radius must be a number >= 0, got {radius!r}")
    _positive_int(n_samples, "n_samples")
    b = x.shape[0]
    rounds = _rounds(batch_size, b, n_samples)
    best = []

    def step(lo, hi):
        k_now = hi - lo
        xe = x.repeat_interleave(k_now, 0)
        xp = xe + torch.empty(xe.shape, dtype=torch.float32).uniform_(-radius, radius).to(xe.device, xe.dtype)
        expl = method(model, xp, t.repeat_interleave(k_now, 0), **options).detach()
        diff = (base.repeat_interleave(k_now, 0) - expl).reshape(b * k_now, -1)
        sens = torch.norm(diff, p=norm, dim=1, keepdim=True) / base_norm.repeat_interleave(k_now, 0)
        chunk = sens.view(b, -1).max(1).values
        best[:] = [chunk if not best else torch.max(best[0], chunk)]

    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        base = method(model, x, t, **options).detach()
        base_norm = torch.norm(base.reshape(b, -1), p=norm, dim=1, keepdim=True)
        base_norm = torch.where(base_norm == 0, torch.ones_like(base_norm), base_norm)
        run_batches(step, n_samples, rounds, workload(f"sensitivity {id(method)}", model, x[None]), x.device)
    return best[0]


# ------------------------------------------------------------------------------------------
# Faithfulness correlation (Bhatt et al. 2020), as Quantus
# ------------------------------------------------------------------------------------------

def faithfulness_correlation(model, x: torch.Tensor, target, attr, n_runs: int = 100, subset_size: int = 224,
                             baseline: float = 0.0, seed: int = 0, batch_size="auto",
                             channels_last: bool = True):
    """Faithfulness correlation (Bhatt, Weller & Moura 2020, arXiv:2005.00631):

        mu_F(Phi, x) = corr_{S ~ random subsets of size |S|} ( sum_{i in S} Phi_i(x),  f(x) - f(x_[S = baseline]) )

    the Pearson correlation, over ``n_runs`` random subsets of ``subset_size`` input values, between
    the attribution a subset carries and the drop of the target logit when it is set to the
    baseline. As ``quantus.FaithfulnessCorrelation`` with its defaults (100 runs, 224 values, logits,
    no absolute value; its normalisation by the maximum cannot change a correlation): the features
    are the values of x, [C, H, W] flattened, and a map [B, 1, H, W] is broadcast over the channels;
    the subsets are drawn by ``np.random.RandomState(seed).choice(n, subset_size, replace=False)``
    run by run, image by image (Quantus's draws after ``np.random.seed(seed)``). The model reads
    the images in channels-last layout unless ``channels_last=False`` (Quantus's layout): round-off
    only, 4e-7 on DermNet's correlations.

    attr  a map, or a dict ``{name: map}``: the subsets do not depend on the map, so one set of
          forward passes serves every map, and a dict ``{name: correlations [B]}`` comes back.
    Returns the correlation per image, ``[B]`` (higher is better; NaN if a map is constant on x).
    """
    x, t = _prepare(model, x, target)
    many = isinstance(attr, dict)
    attrs = {k: _check_attr(v, x, f"attr[{k!r}]").expand_as(x) for k, v in (attr if many else {"": attr}).items()}
    _positive_int(n_runs, "n_runs", 2)
    b, n = x.shape[0], x[0].numel()
    _positive_int(subset_size, "subset_size")
    if subset_size > n:
        raise ValueError(f"subset_size {subset_size} is larger than the {n} values of an image")
    check_batch_size(batch_size)
    rs = np.random.RandomState(seed)
    subsets = torch.as_tensor(np.stack([rs.choice(n, subset_size, replace=False)
                                        for _ in range(n_runs) for _ in range(b)])).to(x.device)  # [R*B, |S|]
    img_of = torch.arange(n_runs * b, device=x.device) % b
    drops = torch.empty(n_runs * b, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        fx = _model_scores(model, x, t, "logit", channels_last)

        def step(lo, hi):
            idx = torch.arange(lo, hi, device=x.device)
            flat = x[img_of[idx]].flatten(1).clone()
            flat.scatter_(1, subsets[idx], baseline)
            drops[idx] = fx[img_of[idx]] - _model_scores(model, flat.view(-1, *x.shape[1:]), t[img_of[idx]], "logit",
                                                         channels_last)

        run_batches(step, n_runs * b, batch_size, workload("forward", model, x), x.device)
    drops = drops.view(n_runs, b).T.double()
    out = {}
    for name, a in attrs.items():
        sums = a.flatten(1)[img_of, :].gather(1, subsets).double().sum(1).view(n_runs, b).T
        out[name] = _pearson(sums, drops).to(x.dtype)
    return out if many else out[""]


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dimension (NaN where one side is constant)."""
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


# ------------------------------------------------------------------------------------------
# Localization against a ground-truth mask
# ------------------------------------------------------------------------------------------

def localization_auc(attr: torch.Tensor, mask: torch.Tensor, curve: str = "pr") -> torch.Tensor:
    """How well the map's pixels, read as a detector, find the mask, per image ``[B]``.

    Each pixel's score is its magnitude summed over channels (as ``helpers.metrics.mask_mass``);
    the mask gives the labels. Thresholding the map at every value traces a curve:

    "pr"   average precision, sum_n (R_n - R_{n-1}) P_n over the distinct thresholds (the area
           under the precision-recall curve as ``sklearn.metrics.average_precision_score``). A
           map that knows nothing scores the mask's share of the image
    "roc"  ROC AUC: the probability that a pixel in the mask outranks one outside, ties counted
           one half (``sklearn.metrics.roc_auc_score``); chance is 0.5

    Ties (an upsampled map's plateaus, a superpixel map's flat segments) are one threshold, so
    the score does not depend on the order of tied pixels. An image with an empty (or full) mask,
    or an all-zero map, gets NaN.
    """
    from .metrics import _as_maps, _average_ranks

    if curve not in ("pr", "roc"):
        raise ValueError(f"curve must be 'pr' (average precision) or 'roc', got {curve!r}")
    a, m = _as_maps(attr, mask)
    s, y = a.flatten(1).double(), m.flatten(1)
    pos = y.sum(1).double()
    neg = y.shape[1] - pos
    if curve == "roc":
        ranks = _average_ranks(s) + 1
        u = (ranks * y).sum(1) - pos * (pos + 1) / 2
        out = u / (pos * neg)
    else:
        order = torch.sort(-s, dim=1, stable=True).indices
        ss, yy = s.gather(1, order), y.gather(1, order).double()
        tp, fp = yy.cumsum(1), (1 - yy).cumsum(1)
        last = torch.ones_like(yy, dtype=torch.bool)
        last[:, :-1] = ss[:, 1:] != ss[:, :-1]  # the end of each group of tied scores: one threshold
        precision = tp / (tp + fp)
        recall = tp / pos.clamp_min(1)[:, None]
        # the recall reached at the previous threshold: the last group end strictly before each position
        at_ends = torch.where(last, recall, torch.zeros_like(recall)).cummax(1).values
        before = torch.cat([torch.zeros_like(recall[:, :1]), at_ends[:, :-1]], 1)
        out = torch.where(last, (recall - before) * precision, torch.zeros_like(recall)).sum(1)
    bad = (pos == 0) | (neg == 0) | (s.amax(1) <= 0)
    return torch.where(bad, torch.full_like(out, float("nan")), out).float()


# ------------------------------------------------------------------------------------------
# Comparing methods: bootstrap intervals, rankings and their agreement
# ------------------------------------------------------------------------------------------

def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """The mean over images and a percentile bootstrap confidence interval (Efron 1979).

    values  [N] per-image scores, or [M, N] for M methods on the same N images: the images are
            resampled once for all rows (a paired bootstrap), so the intervals of two methods
            describe the same resamples
    Returns ``(mean, low, high)``, each a float64 tensor of shape [] or [M]. NaNs are left out of
    each resample's mean.
    """
    v = torch.as_tensor(values).detach().double()
    one = v.dim() == 1
    v = v[None] if one else v
    if v.dim() != 2 or v.shape[1] < 2:
        raise ValueError(f"values must be [N] or [M, N] with N >= 2 images, got shape {tuple(v.shape)}")
    _positive_int(n_boot, "n_boot", 100)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same resamples on every device
    idx = torch.randint(0, v.shape[1], (n_boot, v.shape[1]), generator=g).to(v.device)
    means = v[:, idx].nanmean(2)  # [M, n_boot]
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64, device=v.device)
    low, high = torch.quantile(means, q, dim=1)
    mean = v.nanmean(1)
    return (mean[0], low[0], high[0]) if one else (mean, low, high)


def kendall_tau(a, b) -> float:
    """Kendall's tau-b between two score vectors (as ``scipy.stats.kendalltau``):

        tau_b = (concordant - discordant) / sqrt((n0 - n1)(n0 - n2))

    over all pairs, n0 = n(n-1)/2, n1 and n2 the pairs tied in a and in b. 1: the same order,
    -1: reversed, 0: unrelated.
    """
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"a and b must hold the same number (>= 2) of scores, got {a.numel()} and {b.numel()}")
    i, j = torch.triu_indices(a.numel(), a.numel(), 1, device=a.device)
    da, db = torch.sign(a[i] - a[j]), torch.sign(b[i] - b[j])
    n0 = i.numel()
    n1, n2 = int((da == 0).sum()), int((db == 0).sum())
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    return float((da * db).sum()) / denom if denom > 0 else float("nan")


def rank_methods(means: dict, higher_is_better: bool = True, margin: float | None = None) -> dict:
    """Ranks 1, 2, ... of methods from their mean scores ``{method: value}`` (1 is best).

    With ``margin``, two methods closer than ``margin`` share the better rank of the two (so that
    a near-tie cannot flip between machines) and a ``ValueError`` is raised if two means lie
    within round-off (1e-6 relative) of that margin.
    """
    names = list(means)
    vals = torch.tensor([float(means[k]) for k in names], dtype=torch.float64)
    vals = vals if higher_is_better else -vals
    order = torch.argsort(-vals, stable=True).tolist()
    ranks, rank = {}, 0
    for pos, i in enumerate(order):
        if pos == 0 or margin is None or float(vals[order[pos - 1]] - vals[i]) >= margin:
            rank = pos + 1
        if margin is not None and pos > 0:
            gap = float(vals[order[pos - 1]] - vals[i])
            if abs(gap - margin) < 1e-6 * max(1.0, abs(float(vals[i]))):
                raise ValueError(f"rank_methods: {names[i]} is within round-off of the tie margin {margin:g}")
        ranks[names[i]] = rank
    return {k: ranks[k] for k in names}
