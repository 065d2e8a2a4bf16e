"""Perturbation methods: treat the model as a black box, change the input, watch the score.

    occlusion            slide a patch over the image; the score drop is the patch's importance
    superpixels          SLIC segments: the features that LIME and SHAP switch on and off
    lime                 a weighted linear surrogate fitted to random on/off perturbations
    kernel_shap          the same regression with the Shapley kernel: approximate Shapley values
    exact_shapley        Shapley values from their definition, every coalition (few features)
    paint                per-segment values back onto the pixels
    weighted_linear_fit  the weighted least squares that LIME and KernelSHAP both solve
    expected_gradients   GradientSHAP: gradients at random points between background images and x

"The score" is the model's output for the target class, as the model returns it (DermNet's logit).
To explain a probability, pass ``torch.nn.Sequential(model, torch.nn.Softmax(1))``.

Segment methods take ``segments``: integer labels ``[H, W]`` (shared by the batch) or ``[B, H, W]``
that use every label 0 .. K-1. A segment is "off" when its pixels are replaced by the baseline (or
``hide_color``). They return one value per segment, ``[B, K]`` (K the largest count in the batch;
an image with fewer segments has zeros after its last one). Every model evaluation runs under
``torch.no_grad()`` in batches of ``batch_size`` images ("auto": see ``helpers.batching``);
nothing about the model or ``x`` changes.

``channels_last=True`` (the default) hands the model its perturbed images in channels-last memory
layout: on CPU the convolutions run about 25% faster, and the scores move only by float32
round-off (about 1e-6 on DermNet's logits). ``channels_last=False`` keeps the layout the
libraries use, and so their arithmetic, bit for bit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .batching import run_batches, workload
from .contract import check_batch_size, check_count, check_input, check_model, check_outputs, check_target
from .gradients import _as_baseline, _gradient

MAX_EXACT_FEATURES = 16  # 2**16 = 65,536 forward passes per image: about half a minute on 2 CPU cores


class SegmentValues(NamedTuple):
    """One value per segment ``[B, K]`` and the same values painted on the pixels ``[B, 1, H, W]``."""

    values: torch.Tensor
    map: torch.Tensor


def _prepare(model, x, target):
    check_model(model)
    check_input(x, model=model)
    x = x.detach()
    t = check_target(target, x.shape[0], device=x.device)
    with torch.no_grad():
        out = model(x)
    check_outputs(out, t)
    return x, t, out.gather(1, t[:, None])[:, 0]


def _scores(model, images: torch.Tensor, t: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return model(images).gather(1, t[:, None])[:, 0]


# ------------------------------------------------------------------------------------------
# Occlusion
# ------------------------------------------------------------------------------------------

def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair (height, width) of them, got {value!r}")
    return pair


def occlusion_masks(size, window, stride) -> torch.Tensor:
    """The window positions as boolean masks ``[P, H, W]``, row by row.

    Windows start at multiples of the stride and the last one in each direction is cropped at the
    image's far edge (as Captum's ``Occlusion``), so every pixel is covered at least once."""
    (h, w), (wh, ww), (sh, sw) = size, window, stride
    rows = [k * sh for k in range(math.ceil((h - wh) / sh) + 1)]
    cols = [k * sw for k in range(math.ceil((w - ww) / sw) + 1)]
    masks = torch.zeros(len(rows) * len(cols), h, w, dtype=torch.bool)
    for p, (r, c) in enumerate((r, c) for r in rows for c in cols):
        masks[p, r:r + wh, c:c + ww] = True
    return masks


def occlusion(model: torch.nn.Module, x: torch.Tensor, target, window=8, stride=4, baseline=0.0,
              batch_size="auto", return_passes: bool = False, channels_last: bool = True):
    """Occlusion (Zeiler & Fergus 2014, arXiv:1311.2901).

        drop_p = S_c(x) - S_c(x with window p replaced by the baseline)
        attr(i, j) = mean of drop_p over the windows p that cover pixel (i, j)

    Positive: hiding the pixels lowers the score (they supported the class). The window covers all
    channels. Every position of every image is evaluated in batches of ``batch_size`` images.

    window, stride  int or (height, width); stride <= window, so no pixel is left out
    baseline        what a hidden pixel becomes: a number, a tensor like x, or a name ("black",
                    "mean", "blur", "noise"); 0.0 (black) by default, as Captum
    return_passes   also return the number of images the model evaluated: B * (positions + 1)
    channels_last   the images' memory layout for the model (see the module's docstring)

    Returns ``[B, 1, H, W]`` (or ``(attr, passes)``).
    """
    check_model(model)
    check_input(x, model=model)
    h, w = x.shape[-2:]
    window, stride = _pair(window, "window"), _pair(stride, "stride")
    if window[0] > h or window[1] > w:
        raise ValueError(f"window {window} is larger than the image ({h}, {w})")
    if stride[0] > window[0] or stride[1] > window[1]:
        raise ValueError(f"stride {stride} is larger than the window {window}: some pixels would never be "
                         "occluded")
    check_batch_size(batch_size)
    x, t = x.detach(), check_target(target, x.shape[0], device=x.device)
    with torch.no_grad():
        out = model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    check_outputs(out, t)
    full = out.gather(1, t[:, None])[:, 0]
    base = _as_baseline(baseline, x)
    masks = occlusion_masks((h, w), window, stride).to(x.device)
    n_img, n_pos = x.shape[0], masks.shape[0]
    drops = torch.empty(n_img, n_pos, dtype=full.dtype, device=x.device)

    def step(lo, hi):
        k = torch.arange(lo, hi, device=x.device)
        img, pos = k // n_pos, k % n_pos
        occluded = torch.where(masks[pos, None], base[img], x[img])
        drops[img, pos] = full[img] - _scores(model, occluded, t[img], channels_last)

    with torch.no_grad():
        run_batches(step, n_img * n_pos, batch_size, workload("forward", model, x), x.device)
    flat = masks.flatten(1).to(drops.dtype)
    attr = ((drops @ flat) / flat.sum(0)).view(n_img, 1, h, w)
    return (attr, n_img * (n_pos + 1)) if return_passes else attr


# ------------------------------------------------------------------------------------------
# Segments: the features of LIME and SHAP
# ------------------------------------------------------------------------------------------

def superpixels(image: torch.Tensor, n_segments: int = 16, compactness: float = 10.0,
                sigma: float = 1.0) -> torch.Tensor:
    """SLIC superpixels (Achanta et al. 2012) from scikit-image, labelled 0 .. K-1.

    image  [C, H, W] or [B, C, H, W] with values in [0, 1]
    Returns a LongTensor [H, W] or [B, H, W]. SLIC may return a few more or fewer segments than
    ``n_segments``; the labels are renumbered so that every label 0 .. K-1 is used.
    """
    from skimage.segmentation import slic

    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
        raise ValueError(f"image must be a tensor [C, H, W] or [B, C, H, W], got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if isinstance(n_segments, bool) or not isinstance(n_segments, int) or n_segments < 1:
        raise ValueError(f"n_segments must be a positive int, got {n_segments!r}")
    batch = image.detach().cpu().double()
    batch = batch[None] if batch.dim() == 3 else batch
    labels = []
    for img in batch:
        seg = slic(img.permute(1, 2, 0).numpy(), n_segments=n_segments, compactness=compactness, sigma=sigma,
                   start_label=0, channel_axis=-1)
        labels.append(np.unique(seg, return_inverse=True)[1].reshape(seg.shape))
    out = torch.as_tensor(np.stack(labels), dtype=torch.long, device=image.device)
    return out[0] if image.dim() == 3 else out


def _check_segments(segments, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """segments as a LongTensor [B, H, W] on x's device, and the number of segments of each image."""
    if not isinstance(segments, torch.Tensor):
        segments = torch.as_tensor(np.asarray(segments)) if isinstance(segments, np.ndarray) else segments
    if not isinstance(segments, torch.Tensor):
        raise TypeError(f"segments must be a tensor of integer labels, got {type(segments).__name__}")
    if segments.is_floating_point() or segments.dtype == torch.bool:
        raise TypeError(f"segments must hold integer labels, got dtype {segments.dtype}")
    b, (h, w) = x.shape[0], x.shape[-2:]
    seg = segments
    if seg.dim() == 4 and seg.shape[1] == 1:
        seg = seg[:, 0]
    if seg.dim() == 2:
        seg = seg[None]
    if seg.dim() != 3 or seg.shape[-2:] != (h, w) or seg.shape[0] not in (1, b):
        raise ValueError(f"segments of shape {tuple(segments.shape)} do not fit x of shape {tuple(x.shape)}: "
                         f"give labels [{h}, {w}] for every image or [{b}, {h}, {w}], one map per image")
    seg = seg.to(device=x.device, dtype=torch.long).expand(b, h, w)
    counts = []
    for s in seg:
        k = int(s.max()) + 1
        if int(s.min()) < 0 or torch.bincount(s.flatten(), minlength=k).eq(0).any():
            raise ValueError("segments must use every label 0 .. K-1 (superpixels() renumbers them; "
                             "np.unique(labels, return_inverse=True) does too)")
        counts.append(k)
    return seg, counts


def paint(values: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Per-segment values ``[B, K]`` (or ``[K]``) onto the pixels: ``[B, 1, H, W]``, each pixel
    taking its segment's value."""
    values = torch.as_tensor(values)
    seg = segments if segments.dim() == 3 else segments[None]
    values = values if values.dim() == 2 else values[None]
    if values.shape[0] not in (1, seg.shape[0]) and seg.shape[0] != 1:
        raise ValueError(f"values {tuple(values.shape)} and segments {tuple(segments.shape)} disagree on the batch")
    if int(seg.max()) >= values.shape[1]:
        raise ValueError(f"segments use label {int(seg.max())}, but there are only {values.shape[1]} values")
    b = max(values.shape[0], seg.shape[0])
    seg = seg.to(values.device).expand(b, *seg.shape[1:])
    return values.expand(b, -1).gather(1, seg.flatten(1)).view(b, 1, *seg.shape[1:])


def _segment_means(x1: torch.Tensor, seg1: torch.Tensor, k: int) -> torch.Tensor:
    """Each segment filled with its mean colour (the lime package's default ``hide_color=None``)."""
    c = x1.shape[0]
    flat = seg1.flatten()
    sums = torch.zeros(k, c, dtype=torch.float64, device=x1.device).index_add_(0, flat, x1.flatten(1).T.double())
    means = (sums / torch.bincount(flat, minlength=k)[:, None]).to(x1.dtype)
    return means[seg1].permute(2, 0, 1)


def _coalition_scores(model, x1, hide1, t1, seg1, z, batch_size, similarity=False, channels_last=True):
    """S_c of x1 with segment k kept where z[:, k] = 1 and replaced by hide1 where z[:, k] = 0.
    With ``similarity``, also the cosine similarity of each composed image to x1."""
    scores, sims = [], []

    def step(lo, hi):
        keep = z[lo:hi].bool()[:, seg1]  # [n, H, W]
        images = torch.where(keep[:, None], x1, hide1)
        scores.append(_scores(model, images, t1.expand(images.shape[0]), channels_last))
        if similarity:
            sims.append(torch.nn.functional.cosine_similarity(images.flatten(1), x1.flatten()[None], dim=1))

    with torch.no_grad():
        run_batches(step, z.shape[0], batch_size, workload("forward", model, x1[None]), x1.device)
    return torch.cat(scores), (torch.cat(sims) if similarity else None)


def weighted_linear_fit(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float = 0.0):
    """argmin_{b0, b}  sum_n w_n (y_n - b0 - z_n . b)^2 + alpha |b|^2, in float64 (intercept free).

    Centre with the weighted means, scale the rows by sqrt(w), then least squares; the ridge term
    enters as alpha * I stacked under the data."""
    z, y, w = z.double(), y.double(), w.double()
    zm, ym = (w[:, None] * z).sum(0) / w.sum(), (w * y).sum() / w.sum()
    a = (z - zm) * w.sqrt()[:, None]
    rhs = (y - ym) * w.sqrt()
    if alpha > 0:
        a = torch.cat([a, math.sqrt(alpha) * torch.eye(z.shape[1], dtype=a.dtype, device=a.device)])
        rhs = torch.cat([rhs, torch.zeros(z.shape[1], dtype=rhs.dtype, device=rhs.device)])
    coef = torch.linalg.lstsq(a.cpu(), rhs.cpu()[:, None], driver="gelsd").solution[:, 0].to(z.device)
    return coef, ym - zm @ coef


# ------------------------------------------------------------------------------------------
# LIME
# ------------------------------------------------------------------------------------------

def lime(model: torch.nn.Module, x: torch.Tensor, target, segments, n_samples: int = 1000,
         kernel_width: float = 0.25, hide_color=None, seed: int = 0, alpha: float | None = None,
         sampler: str = "lime", distance: str = "binary", surrogate: str = "ridge",
         batch_size="auto", channels_last: bool = True) -> SegmentValues:
    """LIME for images (Ribeiro, Singh & Guestrin 2016, arXiv:1602.04938).

    Draw binary vectors z (which segments stay on), score each composed image, weight it by its
    closeness to the original, and fit a linear model:

        g = argmin_g  sum_z  pi(z) (S_c(compose(z)) - g0 - z . g)^2  +  alpha |g|^2
        pi(z) = exp(-d(z)^2 / (2 kernel_width^2))

    The weights g are the explanation. Defaults follow the ``lime`` package's LimeImageExplainer:
    z uniform over {0, 1}^K from ``np.random.RandomState(seed)`` with the first row all ones,
    d = cosine distance between z and all-ones, kernel_width 0.25, ridge (alpha 1 unless given), hidden
    segments filled with their mean colour (``hide_color=None``; or a number, or a tensor like x).
    Captum's ``Lime`` makes five other choices; each is an option here:

        sampler="captum"    torch.bernoulli(0.5) per sample (torch RNG seeded with ``seed``)
        distance="input"    cosine distance between the composed image and x, in pixel space
        surrogate="lasso"   sklearn Lasso (alpha 0.01 unless given), fitted in float32 as Captum does
        kernel_width=1.0, hide_color=0.0

    Each image restarts its sampler from ``seed``. Returns ``SegmentValues(values [B, K], map)``.
    """
    if sampler not in ("lime", "captum"):
        raise ValueError(f"sampler must be 'lime' or 'captum', got {sampler!r}")
    if distance not in ("binary", "input"):
        raise ValueError(f"distance must be 'binary' or 'input', got {distance!r}")
    if surrogate not in ("ridge", "lasso"):
        raise ValueError(f"surrogate must be 'ridge' or 'lasso', got {surrogate!r}")
    if not kernel_width > 0:
        raise ValueError(f"kernel_width must be > 0, got {kernel_width!r}")
    check_count(n_samples, "n_samples")
    check_batch_size(batch_size)
    x, t, _ = _prepare(model, x, target)
    seg, counts = _check_segments(segments, x)
    hide = None if hide_color is None else _as_baseline(hide_color, x)
    values = torch.zeros(x.shape[0], max(counts), dtype=x.dtype, device=x.device)
    for i, k in enumerate(counts):
        if sampler == "lime":
            z = np.random.RandomState(seed).randint(0, 2, n_samples * k).reshape(n_samples, k)
            z[0, :] = 1
            z = torch.as_tensor(z, device=x.device)
        else:
            g = torch.Generator().manual_seed(seed)
            half = torch.full((1, k), 0.5)
            z = torch.cat([torch.bernoulli(half, generator=g) for _ in range(n_samples)]).long().to(x.device)
        hide_i = _segment_means(x[i], seg[i], k) if hide is None else hide[i]
        y, sim = _coalition_scores(model, x[i], hide_i, t[i], seg[i], z, batch_size, distance == "input",
                                   channels_last)
        if distance == "binary":  # 1 - cos(z, 1); an all-zero z is at distance 1
            on = z.double().sum(1)
            d = 1 - on / (on.sqrt().clamp_min(1e-300) * math.sqrt(k))
        else:
            d = 1 - sim.double()
        pi = torch.exp(-d ** 2 / (2 * kernel_width ** 2))
        if surrogate == "ridge":
            values[i, :k] = weighted_linear_fit(z, y, pi, 1.0 if alpha is None else alpha)[0].to(x.dtype)
        else:
            from sklearn.linear_model import Lasso

            fit = Lasso(alpha=0.01 if alpha is None else alpha).fit(
                z.float().cpu().numpy(), y.float().cpu().numpy(), sample_weight=pi.float().cpu().numpy())
            values[i, :k] = torch.as_tensor(fit.coef_, dtype=x.dtype, device=x.device)
    return SegmentValues(values, paint(values, seg))


# ------------------------------------------------------------------------------------------
# Shapley values
# ------------------------------------------------------------------------------------------

def shapley_kernel_sizes(k: int) -> torch.Tensor:
    """P(coalition size s) for KernelSHAP's sampler, s = 0 .. k-1: proportional to
    (k - 1) / (s (k - s)), zero for s = 0 (Captum's float32 arithmetic, normalised)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int of at least 2 players to sample coalition sizes, got {k!r} "
                         "(with one player the only Shapley value is v(all) - v(none))")
    s = torch.arange(k, dtype=torch.float)
    p = torch.tensor(k - 1) / (s * (k - s))
    p[0] = 0.0
    return p / p.sum()


def kernel_shap_coalitions(k: int, n_samples: int, seed: int = 0) -> torch.Tensor:
    """KernelSHAP's coalitions ``[n_samples, k]`` (1 = the player is in): all-ones, all-zeros, then
    a size s drawn from ``shapley_kernel_sizes(k)`` and the s players whose normal draws are
    largest, in Captum's draw order (a torch generator seeded with ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    sizes = shapley_kernel_sizes(k)[None]
    rows = [torch.ones(1, k, dtype=torch.long), torch.zeros(1, k, dtype=torch.long)]
    for _ in range(n_samples - 2):
        s = int(torch.multinomial(sizes, 1, True, generator=g))
        r = torch.randn(1, k, generator=g)
        rows.append((r > torch.kthvalue(r, k - s).values.item()).long())
    return torch.cat(rows)


def kernel_shap(model: torch.nn.Module, x: torch.Tensor, target, segments, n_samples: int = 500,
                baseline=0.0, seed: int = 0, endpoint_weight: float = 1e6, batch_size="auto",
                channels_last: bool = True) -> torch.Tensor:
    """KernelSHAP (Lundberg & Lee 2017, arXiv:1705.07874): Shapley values as a weighted regression.

    The Shapley values are the solution of a linear regression of S_c(compose(z)) on z in which a
    coalition of size s among K players has weight (K - 1) / (C(K, s) s (K - s)). Sample the
    coalitions with that probability instead and every sample gets weight 1: first a size s with
    P(s) proportional to (K - 1) / (s (K - s)), then s players uniformly (the top s of K normal
    draws). The empty and the full coalition pin the ends (weight ``endpoint_weight``, Captum's
    1e6), which makes the values sum to S_c(x) - S_c(baseline): efficiency.

    The draws follow Captum's ``KernelShap`` (first all-ones, then all-zeros, then sampled) from a
    torch generator seeded with ``seed``, restarted for each image. An image with one or two segments
    gets its exact Shapley values instead (its 2 or 4 coalitions are all there is). Returns ``[B, K]``.
    """
    check_count(n_samples, "n_samples")
    check_batch_size(batch_size)
    if not endpoint_weight > 0:
        raise ValueError(f"endpoint_weight must be > 0, got {endpoint_weight!r}")
    if n_samples < 3:
        raise ValueError(f"n_samples must be at least 3 (the two end coalitions and one more), got {n_samples}")
    x, t, _ = _prepare(model, x, target)
    seg, counts = _check_segments(segments, x)
    base = _as_baseline(baseline, x)
    values = torch.zeros(x.shape[0], max(counts), dtype=x.dtype, device=x.device)
    for i, k in enumerate(counts):
        if k <= 2:  # 2^k <= 4 coalitions: the exact values cost less than sampling (and K = 1 has no sizes to draw)
            values[i, :k] = _exact_values(model, x[i], base[i], t[i], seg[i], k, batch_size, channels_last)
            continue
        z = kernel_shap_coalitions(k, n_samples, seed).to(x.device)
        y, _ = _coalition_scores(model, x[i], base[i], t[i], seg[i], z, batch_size, channels_last=channels_last)
        w = torch.ones(n_samples, dtype=torch.float64, device=x.device)
        w[:2] = endpoint_weight
        values[i, :k] = weighted_linear_fit(z, y, w)[0].to(x.dtype)
    return values


def exact_shapley(model: torch.nn.Module, x: torch.Tensor, target, segments, baseline=0.0,
                  max_features: int = MAX_EXACT_FEATURES, batch_size="auto",
                  channels_last: bool = True) -> torch.Tensor:
    """Shapley values (Shapley 1953) by their definition, evaluating all 2^K coalitions:

        phi_i = sum over S not containing i of  |S|! (K - |S| - 1)! / K!  (v(S + i) - v(S))

    with v(S) = S_c(x with the segments outside S replaced by the baseline). The values sum to
    v(all) - v(none) exactly (efficiency). Refuses more than ``max_features`` segments: the cost
    doubles with every segment. Returns ``[B, K]``.
    """
    check_batch_size(batch_size)
    x, t, _ = _prepare(model, x, target)
    seg, counts = _check_segments(segments, x)
    if max(counts) > max_features:
        raise ValueError(f"segments: exact Shapley values for {max(counts)} segments need 2**{max(counts)} = "
                         f"{2 ** max(counts):,} forward passes per image; at most {max_features} segments "
                         f"(2**{max_features} = {2 ** max_features:,} passes) are allowed: use fewer segments, "
                         "or kernel_shap")
    base = _as_baseline(baseline, x)
    values = torch.zeros(x.shape[0], max(counts), dtype=x.dtype, device=x.device)
    for i, k in enumerate(counts):
        values[i, :k] = _exact_values(model, x[i], base[i], t[i], seg[i], k, batch_size, channels_last)
    return values


def _exact_values(model, x1, base1, t1, seg1, k, batch_size, channels_last) -> torch.Tensor:
    """One image's K Shapley values from all 2^K coalitions (float64 sums, returned in x's dtype)."""
    code = torch.arange(2 ** k, device=x1.device)
    z = (code[:, None] >> torch.arange(k, device=x1.device)) & 1  # row S: bit j = player j in S
    v, _ = _coalition_scores(model, x1, base1, t1, seg1, z, batch_size, channels_last=channels_last)
    v = v.double()
    size = z.sum(1)
    weight = torch.tensor([math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k) if s < k else 0.0
                           for s in range(k + 1)], dtype=torch.float64, device=x1.device)
    out = torch.empty(k, dtype=x1.dtype, device=x1.device)
    for j in range(k):
        without = code[(code >> j) & 1 == 0]
        out[j] = (weight[size[without]] * (v[without | (1 << j)] - v[without])).sum().to(x1.dtype)
    return out


# ------------------------------------------------------------------------------------------
# Expected gradients (GradientSHAP)
# ------------------------------------------------------------------------------------------

def gradient_shap_draws(library: str, batch: int, n_samples: int, n_background: int, seed: int):
    """The background indices and interpolation points ``(index [B, n], alpha [B, n])`` that
    ``shap.GradientExplainer(...).shap_values(x, nsamples=n, rseed=seed)`` (library="shap") or
    Captum's ``GradientShap`` after ``np.random.seed(seed)`` (library="captum") draw, so that
    ``expected_gradients(..., draws=...)`` can be compared with them exactly."""
    rng = np.random.RandomState(seed)
    if library == "shap":  # image by image, sample by sample: an index, then a point
        pairs = [(rng.choice(n_background), rng.uniform()) for _ in range(batch * n_samples)]
        index, alpha = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    elif library == "captum":  # all indices, then all points
        index = rng.choice(n_background, n_samples * batch)
        alpha = rng.uniform(0.0, 1.0, n_samples * batch)
    else:
        raise ValueError(f"library must be 'shap' or 'captum', got {library!r}")
    # Captum turns the points into float32 and computes 1 - alpha in float32; shap keeps each point
    # a float64 number, so its 1 - alpha is rounded once, from float64: keep that precision
    dtype = torch.float32 if library == "captum" else torch.float64
    return (torch.as_tensor(index, dtype=torch.long).view(batch, n_samples),
            torch.as_tensor(alpha, dtype=dtype).view(batch, n_samples))


def expected_gradients(model: torch.nn.Module, x: torch.Tensor, target, background: torch.Tensor,
                       n_samples: int = 50, seed: int = 0, batch_size="auto", draws=None) -> torch.Tensor:
    """Expected gradients (Erion et al. 2021, arXiv:1906.10670), which shap and Captum call GradientSHAP
    (not one of Lundberg & Lee 2017's estimators: those are Kernel, Linear, Deep and Max SHAP).

        EG(x) = E_{b ~ background, a ~ U(0, 1)} [ (x - b) * dS_c/dx (b + a (x - b)) ]

    Integrated Gradients averaged over baselines drawn from a background set, with one random
    point per path: an unbiased estimate of the average IG, whose values sum on average to
    S_c(x) - E_b[S_c(b)]. ``draws=(index [B, n], alpha [B, n])`` replaces the sampler (seeded
    torch generator) with given draws: see ``gradient_shap_draws``; the point is computed as
    alpha * x + (1 - alpha) * b, with 1 - alpha taken in the precision of the draws (float32 as
    Captum, float64 as shap). Returns a tensor like x.
    """
    check_model(model)
    check_input(x, model=model)
    check_input(background, "background", model=model)
    if background.shape[1:] != x.shape[1:]:
        raise ValueError(f"background images {tuple(background.shape[1:])} differ in shape from x {tuple(x.shape[1:])}")
    check_batch_size(batch_size)
    t = check_target(target, x.shape[0], device=x.device)
    x, bg = x.detach(), background.detach().to(device=x.device, dtype=x.dtype)
    n_img = x.shape[0]
    if draws is None:
        check_count(n_samples, "n_samples")
        g = torch.Generator().manual_seed(seed)
        index = torch.randint(bg.shape[0], (n_img, n_samples), generator=g)
        alpha = torch.rand(n_img, n_samples, generator=g)
    else:
        index, alpha = (torch.as_tensor(d) for d in draws)
        if index.shape != alpha.shape or index.dim() != 2 or index.shape[0] != n_img:
            raise ValueError(f"draws must be (index [B, n], alpha [B, n]) for B = {n_img}, got shapes "
                             f"{tuple(index.shape)} and {tuple(alpha.shape)}")
        if int(index.min()) < 0 or int(index.max()) >= bg.shape[0]:
            raise ValueError(f"draws: background index out of range for {bg.shape[0]} background images")
    n = index.shape[1]
    index, alpha = index.to(x.device).flatten(), alpha.to(x.device).flatten()
    keep, rest = alpha.to(x.dtype), (1 - alpha).to(x.dtype)  # 1 - alpha in the draws' own precision
    img = torch.arange(n_img, device=x.device).repeat_interleave(n)
    total = torch.zeros_like(x)

    def step(lo, hi):
        i, b = img[lo:hi], bg[index[lo:hi]]
        grad = _gradient(model, keep[lo:hi].view(-1, 1, 1, 1) * x[i] + rest[lo:hi].view(-1, 1, 1, 1) * b, t[i])
        total.index_add_(0, i, grad * (x[i] - b))

    run_batches(step, n_img * n, batch_size, workload("gradient", model, x), x.device)
    return total / n
