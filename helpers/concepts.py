"""Concepts, not pixels: concept sets, concept activation vectors (CAVs) and TCAV with a test.

Testing with Concept Activation Vectors (Kim et al. 2018, "Interpretability Beyond Feature
Attribution", arXiv:1711.11279) asks whether a human concept matters to a class:

1. **Concept sets.** A few dozen images that show the concept, and random sets that do not.
2. **CAV.** A linear classifier separates the concept's activations at a layer, ``a_l(x)``
   flattened, from a random set's; the CAV ``v`` is the unit normal of its boundary, pointing
   towards the concept. Its held-out accuracy says whether the layer encodes the concept at all.
3. **Conceptual sensitivity.** For an image x of class k, the directional derivative of the class
   logit along the CAV at that layer: ``S(x) = grad_{a_l} h_k(a_l(x)) . v``.
4. **TCAV score.** The fraction of the class's images with ``S(x) > 0``.
5. **Significance.** The score of one CAV means little: a CAV trained on two *random* sets gets a
   score too, often far from 0.5, because the class images' gradients point the same way. So train
   one CAV per random set, and the null's CAVs between random sets, and compare the two lists of
   scores with a two-sided t-test, Bonferroni-corrected for the number of tests.

    concept_images, random_images, class_images   the sets, drawn from DermSynth by code
    layer_activations   a layer's output, flattened per image, [N, D]
    layer_gradients     activations and class-logit gradients at several layers, one pass
    train_cav           the CAV (unit vector) and its held-out accuracy
    tcav_score          the fraction of images with a positive directional derivative
    tcav_test           CAVs against every random set, the random-vs-random null, the t-test
    tcav_experiment     the same for many concepts and layers, each activation computed once
    relative_tcav       concept A against concept B instead of against random images
    summary, fmt_p, fmt_all, score_range   figures printed so that round-off cannot change them
    captum_reference    Captum's TCAV on the same sets (our CAVs injected, or its own), in a
                        temporary folder

Every hook lives inside a ``with`` block and is removed even when the model raises; the model's
mode, ``requires_grad`` and ``.grad`` are left as they were.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import warnings
from contextlib import ExitStack

import numpy as np
import torch
from torch import nn

from .batching import run_batches, workload
from .contract import (
    check_batch_size,
    check_finite,
    check_input,
    check_model,
    check_outputs,
    check_scores,
    check_target,
)
from .data import CLASSES, make_dataset
from .hooks import capture, layer_name, resolve_layer

# the concept sets; "veil" is the legitimate melanoma cue, the control that should matter
CONCEPTS = ("ruler", "ink", "hair", "corners", "veil", "dark_skin", "light_skin")
ARTIFACT_CONCEPTS = ("ruler", "ink", "hair", "corners")
LAYERS = ("layer2", "layer3", "layer4")
# DermSynth seeds reserved for concept work: disjoint from training (10,000+) and test (900,000+)
SEED_BASE = 600_000
# the share of clinic-B draws each set keeps (no artifact but its own: 0.8 x 0.7 x 0.7 = 0.39 with
# none), to size the batches drawn while collecting a set
_YIELD = {"random": 0.39, "ruler": 0.39, "ruler_mel": 0.39, "ink": 0.098, "hair": 0.17, "corners": 0.17,
          "veil": 0.09, "dark_skin": 0.1, "light_skin": 0.1}
# skin tone estimated from the pixels: light below LIGHT, dark above DARK; a visible veil covers
# more than VEIL of the lesion. Under COURSE_STRICT=1 a set is refused if one of its draws lies
# within round-off of a line (it could fall on the other side on another CPU)
LIGHT, DARK, VEIL = 0.28, 0.72, 0.025
_LIGHT_RGB = torch.tensor([0.96, 0.80, 0.70])
_DARK_RGB = torch.tensor([0.52, 0.36, 0.26])
# a sensitivity within ROUNDOFF * |gradient| of zero could change sign on another CPU (measured
# spread between PyTorch's kernels: 1e-7); ``summary`` checks that such flips move no printed figure
ROUNDOFF = 1e-5


# ---- concept sets ----

def skin_tone(ds) -> torch.Tensor:
    """Each image's skin tone, 0 (lightest) to 1 (darkest), read off its pixels: the mean colour of
    the skin (outside the lesion and every artifact mask) projected on DermSynth's light-dark axis."""
    skin = ~ds.masks["lesion"]
    for name in ARTIFACT_CONCEPTS:
        skin &= ~ds.masks[name]
    w = skin[:, None].float()
    mean = (ds.images * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1)
    light, axis = _LIGHT_RGB.to(mean), (_DARK_RGB - _LIGHT_RGB).to(mean)
    return ((mean - light) @ axis) / (axis @ axis)


def veil_share(ds, offset: float = 0.0) -> torch.Tensor:
    """The share of each lesion's pixels that are bluer than they are red (by more than ``offset``):
    DermSynth's blue-white veil, the only blue a melanocytic lesion gets."""
    lesion = ds.masks["lesion"]
    blue = (ds.images[:, 2] > ds.images[:, 0] + offset) & lesion
    return blue.flatten(1).sum(1) / lesion.flatten(1).sum(1).clamp_min(1)


def _above(candidates: torch.Tensor, values: torch.Tensor, line: float, low=None, high=None) -> torch.Tensor:
    """``candidates & (values > line)``; under ``COURSE_STRICT=1``, refused if round-off could decide
    it for a candidate: a value within 1e-5 of the line (10x the spread of a mean over pixels), or
    bounds ``low``/``high`` (the value computed with round-off going either way) on both sides of it."""
    from .report import strict

    keep = candidates & (values > line)
    if strict():
        low = values - 1e-5 if low is None else low
        high = values + 1e-5 if high is None else high
        if (candidates & ((low > line) != (high > line))).any():
            raise RuntimeError(f"a drawn image lies within round-off of the line at {line}: the set could differ "
                               "on another CPU (change the seed)")
    return keep


def artifacts(ds) -> dict:
    """Which artifacts each image shows: ``{name: bool [N]}``, from the ground-truth masks."""
    return {name: ds.masks[name].flatten(1).any(1) for name in ARTIFACT_CONCEPTS}


def _clean(ds, keep=()) -> torch.Tensor:
    """Images that show no artifact except those in ``keep``."""
    ok = torch.ones(len(ds), dtype=torch.bool, device=ds.images.device)
    for name, present in artifacts(ds).items():
        if name not in keep:
            ok &= ~present
    return ok


def _check_n(n, name="n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return n


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 100:
        raise ValueError(f"seed must be an int in 0..99, got {seed!r}")
    return seed


_CACHE: dict = {}  # the sets drawn so far, by (function, arguments): drawing is most of TCAV's cost


def _cached(key, draw) -> torch.Tensor:
    """``draw()``, remembered for the 64 most recent keys; a copy is returned each time."""
    if key not in _CACHE:
        if len(_CACHE) >= 64:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = draw()
    return _CACHE[key].clone()


def _collect(select, n: int, seed: int, kind: str, *, ruler: bool, labels=None) -> torch.Tensor:
    """Draw DermSynth batches (clinic B) from seeds ``seed, seed + 1, ...`` and keep the images that
    ``select(ds) -> bool [N]`` accepts, in order, until there are ``n``."""
    kept, count = [], 0
    chunk = int(1.2 * n / _YIELD[kind]) + 16  # one batch is usually enough
    for k in range(100):
        ds = make_dataset(chunk, clinic="B", seed=seed + k, ruler=ruler, labels=labels)
        images = ds.images[select(ds)]
        kept.append(images)
        count += len(images)
        if count >= n:
            return torch.cat(kept)[:n].contiguous()
    raise RuntimeError(f"could not collect {n} images in {100 * chunk} draws")


def concept_images(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` DermSynth images ``[n, 3, 64, 64]`` that show concept ``name``.

    Every set is drawn by code from clinic B and shows no artifact but its own:

    ruler        a ruler forced on (``make_dataset(..., ruler=True)``); all classes, uniformly
    ink, hair, corners   images where that artifact was drawn (its mask is not empty); all classes
    veil         the legitimate melanoma cue: melanomas whose blue-white veil is visible (more than
                 2.5% of the lesion bluer than red, ``veil_share``). DermSynth draws a visible veil
                 on no other class, so this concept cannot be separated from melanoma itself.
    dark_skin, light_skin   skin tone (``skin_tone``) above 0.72 or below 0.28; all classes
    ruler_mel    a confounded set, for the pitfall: rulers on melanomas only

    ``random_images`` draws the random sets from the same distribution, without any artifact.
    Under ``COURSE_STRICT=1`` a set is refused if round-off could move one of its draws across a
    threshold (tone or veil share). ``seed`` (0..99) picks one of many disjoint sets. Sets are
    remembered (a copy is returned), so asking twice costs nothing.
    """
    if name not in CONCEPTS + ("ruler_mel",):
        raise ValueError(f"name must be one of {CONCEPTS + ('ruler_mel',)}, got {name!r}")
    _check_n(n)
    _check_seed(seed)
    return _cached(("concept", name, n, seed), lambda: _concept_images(name, n, seed))


def _concept_images(name: str, n: int, seed: int) -> torch.Tensor:
    base = SEED_BASE + 10_000 * (1 + (CONCEPTS + ("ruler_mel",)).index(name)) + 100 * seed
    if name in ("ruler", "ruler_mel"):
        return _collect(lambda ds: _clean(ds, keep=("ruler",)), n, base, name, ruler=True,
                        labels="mel" if name == "ruler_mel" else None)
    if name in ("ink", "hair", "corners"):
        return _collect(lambda ds: _clean(ds, keep=(name,)) & artifacts(ds)[name], n, base, name, ruler=False)
    if name == "veil":
        return _collect(lambda ds: _above(_clean(ds), veil_share(ds), VEIL, veil_share(ds, 1e-5),
                                          veil_share(ds, -1e-5)), n, base, name, ruler=False, labels="mel")
    if name == "dark_skin":
        return _collect(lambda ds: _above(_clean(ds), skin_tone(ds), DARK), n, base, name, ruler=False)
    return _collect(lambda ds: _above(_clean(ds), -skin_tone(ds), -LIGHT), n, base, name, ruler=False)


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random DermSynth images (clinic B, classes uniform, every skin tone) with no artifact:
    a random set to train a CAV against. ``seed`` (0..99) picks one of many disjoint sets."""
    _check_n(n)
    _check_seed(seed)
    return _cached(("random", n, seed), lambda: _collect(_clean, n, SEED_BASE + 100 * seed, "random", ruler=False))


def class_images(target, n: int, seed: int = 0, clinic: str = "B") -> torch.Tensor:
    """``n`` held-out images of class ``target`` (an index or a name) as ``clinic`` draws them,
    artifacts included: the images whose sensitivities TCAV counts."""
    _check_n(n)
    _check_seed(seed)
    label = CLASSES.index(target) if isinstance(target, str) else int(target)
    return _cached(("class", label, n, seed, clinic),
                   lambda: make_dataset(n, clinic=clinic, seed=SEED_BASE + 90_000 + seed, labels=label).images)


# ---- activations, gradients, CAVs ----

def _check_images(images, name: str, model=None) -> torch.Tensor:
    if isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[0] == 0:
        raise ValueError(f"{name} is empty: a concept or random set needs images")
    return check_input(images, name, model)


def layer_activations(model: nn.Module, layer, images: torch.Tensor, batch_size="auto") -> torch.Tensor:
    """The output of ``layer`` for each image, flattened: ``[N, D]`` (float32, no gradient). An output
    holding NaN or inf (a model with a NaN weight or bias) is refused, naming the images."""
    check_model(model)
    resolve_layer(model, layer)
    _check_images(images, "images", model)
    check_batch_size(batch_size)
    out = []

    def step(lo, hi):
        with capture(model, layer, gradient=False) as rec, torch.no_grad():
            model(images[lo:hi].contiguous(memory_format=torch.channels_last))
        out.append(rec.activation.flatten(1))

    run_batches(step, len(images), batch_size, workload("forward", model, images), images.device)
    return check_scores(torch.cat(out), f"layer {layer_name(model, layer)}", "activations")


def layer_gradients(model: nn.Module, layers, images: torch.Tensor, target, batch_size="auto") -> dict:
    """``{layer: (activations [N, D], gradients [N, D])}``: each layer's flattened output and the
    gradient of the ``target`` logit with respect to it, for every layer in one forward and one
    backward pass per batch (the backward stops at the lowest layer). A NaN or inf ``target`` logit
    is refused: its gradient would score as if it meant something."""
    check_model(model)
    layers = [layers] if isinstance(layers, str | nn.Module) else list(layers)
    if not layers:
        raise ValueError("layers is empty")
    for layer in layers:
        resolve_layer(model, layer)
    _check_images(images, "images", model)
    check_batch_size(batch_size)
    t = check_target(target, len(images))
    acts = {layer: [] for layer in layers}
    grads = {layer: [] for layer in layers}

    def step(lo, hi):
        with ExitStack() as stack, torch.enable_grad():
            recs = [stack.enter_context(capture(model, layer, gradient=False)) for layer in layers]
            # the input asks for a gradient too, so the graph exists even if the parameters do not
            x = images[lo:hi].detach().contiguous(memory_format=torch.channels_last)
            z = model(x.requires_grad_(True))
            tb = t[lo:hi].to(z.device)
            check_outputs(z, tb, finite=False)  # [B, K], the target below K
            score = z.gather(1, tb[:, None])
            scores.append(score.detach()[:, 0])
            gs = torch.autograd.grad(score.sum(), [r.output for r in recs])
        for layer, rec, g in zip(layers, recs, gs):
            acts[layer].append(rec.activation.flatten(1))
            grads[layer].append(g.detach().flatten(1))

    scores = []
    run_batches(step, len(images), batch_size, workload("layer gradient", model, images), images.device)
    check_scores(torch.cat(scores))  # every image's, not one pass's: the message names them all
    return {layer: (torch.cat(acts[layer]), torch.cat(grads[layer])) for layer in layers}


def _as_acts(acts, name: str) -> torch.Tensor:
    if not isinstance(acts, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, D], got {type(acts).__name__}")
    if acts.dim() != 2:
        raise ValueError(f"{name} must be [N, D] (activations flattened per image), got shape {tuple(acts.shape)}")
    if acts.shape[0] < 3:
        raise ValueError(f"{name} has {acts.shape[0]} rows: a CAV needs at least 3 examples per side "
                         "(two to train on, one held out)")
    return check_finite(acts, name)


def train_cav(concept_acts: torch.Tensor, random_acts: torch.Tensor, seed: int = 0, *, ridge: float = 0.01,
              test_fraction: float = 1 / 3, accuracy_range: bool = False):
    """The CAV for concept vs random activations ``[N, D]`` each: ``(cav [D], held-out accuracy)``.

    A third of each side (``test_fraction``, drawn with ``seed``) is held out. On the rest, a
    linear classifier is fitted by ridge regression to labels +1 (concept) and -1 (random), with an
    intercept: ``w = X^T (X X^T + lam I)^{-1} (y - mean y)`` on centred activations X, solved in
    the n x n form (n images, D features: n << D here), with ``lam = ridge * mean |x|^2`` so that one
    setting fits every layer. The CAV is ``w / |w|``, pointing towards the concept; the accuracy
    is that of ``sign(w . (x - mean) + mean y)`` on the held-out images. Deterministic given
    ``seed``; float64 except the n x n Gram matrix.

    accuracy_range  True: also return ``(low, high)``, the accuracy with every held-out image within
                    round-off of the boundary counted wrong, then right: ``(cav, accuracy, (low, high))``
    """
    c = _as_acts(concept_acts, "concept_acts").double()
    r = _as_acts(random_acts, "random_acts").double()
    if c.shape[1] != r.shape[1]:
        raise ValueError(f"concept_acts has {c.shape[1]} features, random_acts {r.shape[1]}: use the same layer")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    g = torch.Generator().manual_seed(int(seed))
    train, test = [], []
    for x, label in ((c, 1.0), (r, -1.0)):
        order = torch.randperm(len(x), generator=g)
        k = max(1, int(test_fraction * len(x)))
        test.append((x[order[:k]], torch.full((k,), label, dtype=torch.float64, device=x.device)))
        train.append((x[order[k:]], torch.full((len(x) - k,), label, dtype=torch.float64, device=x.device)))
    x_tr = torch.cat([a for a, _ in train])
    y_tr = torch.cat([b for _, b in train])
    mu, y_mean = x_tr.mean(0), y_tr.mean()
    xc = x_tr - mu
    xc32 = xc.float()
    gram = (xc32 @ xc32.T).double()  # the one large product, in float32 (4x faster; the inputs are float32)
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    coef = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype, device=gram.device), y_tr - y_mean)
    w = xc.T @ coef
    norm = w.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("the concept and random activations cannot be separated (identical sets?)")
    x_te = torch.cat([a for a, _ in test])
    y_te = torch.cat([b for _, b in test])
    decision = ((x_te - mu) @ w + y_mean) * y_te  # > 0: right
    accuracy = float((decision > 0).double().mean())
    if not accuracy_range:
        return (w / norm).float(), accuracy
    tol = ROUNDOFF * (x_te - mu).norm(dim=1) * norm
    return (w / norm).float(), accuracy, (float((decision > tol).double().mean()),
                                          float((decision > -tol).double().mean()))


def sensitivities(gradients: torch.Tensor, cavs: torch.Tensor) -> torch.Tensor:
    """Directional derivatives: each image's gradient ``[N, D]`` dotted with each CAV ``[K, D]``,
    giving ``[N, K]`` (or with one CAV ``[D]``, giving ``[N]``)."""
    if cavs.dim() == 1:
        return gradients @ cavs.to(gradients)
    return gradients @ cavs.to(gradients).T


def tcav_score(model: nn.Module, layer, cav, images: torch.Tensor, target) -> float:
    """The TCAV score: the fraction of ``images`` whose directional derivative of the ``target``
    logit along ``cav`` at ``layer`` is > 0. A model whose ``target`` logit is NaN or inf is refused."""
    if not isinstance(cav, torch.Tensor):
        raise TypeError(f"cav must be a torch.Tensor [D], got {type(cav).__name__}")
    if cav.dim() != 1:
        raise ValueError(f"cav must be a vector [D], got shape {tuple(cav.shape)}")
    _, grads = layer_gradients(model, [layer], images, target)[layer]
    if grads.shape[1] != cav.numel():
        raise ValueError(f"cav has {cav.numel()} entries; layer {layer_name(model, layer)} has {grads.shape[1]} "
                         "activations per image")
    return float((sensitivities(grads, cav.detach()) > 0).float().mean())


# ---- the statistical test ----

def significance(scores, null_scores, n_tests: int = 1, alpha: float = 0.05) -> dict:
    """A two-sided t-test (``scipy.stats.ttest_ind``, equal variances) of a concept's TCAV scores
    against the random-vs-random null's, Bonferroni-corrected for ``n_tests`` tests.

    Returns ``p_value`` (uncorrected), ``p_corrected = min(1, n_tests * p)`` and ``significant``
    (``p_corrected < alpha``). Two constant lists give p = 1 if equal, else 0.
    """
    from scipy.stats import ttest_ind

    s = np.asarray(scores, dtype=np.float64)
    z = np.asarray(null_scores, dtype=np.float64)
    if len(s) < 2 or len(z) < 2:
        raise ValueError("the t-test needs at least 2 scores on each side: use at least 2 random sets")
    if isinstance(n_tests, bool) or not isinstance(n_tests, int) or n_tests < 1:
        raise ValueError(f"n_tests must be a positive int, got {n_tests!r}")
    if s.std() == 0 and z.std() == 0:
        p = 1.0 if s[0] == z[0] else 0.0
    else:
        with warnings.catch_warnings():  # scores all equal on one side: scipy warns, the p-value is right
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(ttest_ind(s, z).pvalue)
    p_corrected = min(1.0, p * n_tests)
    return {"p_value": p, "p_corrected": p_corrected, "significant": bool(p_corrected < alpha)}


def _check_sets(concept_images, random_image_sets, model, name="concept_images"):
    _check_images(concept_images, name, model)
    if not isinstance(random_image_sets, list | tuple):
        raise TypeError(f"random_image_sets must be a list of image batches, got {type(random_image_sets).__name__}")
    if len(random_image_sets) < 2:
        raise ValueError(f"random_image_sets has {len(random_image_sets)} set(s): the t-test needs at least 2 "
                         "random sets (10 or more for a useful null)")
    for i, r in enumerate(random_image_sets):
        _check_images(r, f"random_image_sets[{i}]", model)


def _multi_activations(model, layers, images, batch_size):
    out = {layer: [] for layer in layers}

    def step(lo, hi):
        with ExitStack() as stack, torch.no_grad():
            recs = [stack.enter_context(capture(model, layer, gradient=False)) for layer in layers]
            # channels-last runs CPU convolutions about 1.8x faster (helpers.train.logits)
            model(images[lo:hi].contiguous(memory_format=torch.channels_last))
        for layer, rec in zip(layers, recs):
            out[layer].append(rec.activation.flatten(1))

    run_batches(step, len(images), batch_size, workload("forward", model, images), images.device)
    return {layer: torch.cat(v) for layer, v in out.items()}


def _counts(sens: torch.Tensor, scale: torch.Tensor) -> tuple:
    """TCAV scores per CAV (columns of ``sens`` [N, K]): as computed, and with every sensitivity
    within ``ROUNDOFF`` of zero (relative to the gradient's norm) counted negative, then positive."""
    tol = ROUNDOFF * scale[:, None]
    n = sens.shape[0]  # counts divided once: the same double on every machine that counts the same
    return tuple(c.sum(0).double() / n for c in (sens > 0, sens > tol, sens > -tol))


def _mean(values) -> float:
    """A correctly rounded mean (math.fsum): the same double whatever the summation order."""
    values = [float(v) for v in values]
    return math.fsum(values) / len(values)


def _std(values) -> float:
    """The sample standard deviation, computed exactly (statistics.stdev) then rounded once."""
    return statistics.stdev([float(v) for v in values])


def tcav_experiment(model: nn.Module, layers, concepts: dict, random_image_sets, images: torch.Tensor, target,
                    seed: int = 0, n_tests: int | None = None, alpha: float = 0.05, batch_size="auto") -> dict:
    """``tcav_test`` for many concepts ``{name: images}`` and layers at once, each activation computed once.

    For every layer: the class images' gradients (one forward and one backward pass for all layers),
    every set's activations (one forward pass each), then R CAVs per concept (concept vs random set
    i, held-out split ``seed + i``) and R null CAVs (random set i vs random set i + 1, cyclically).
    ``n_tests`` (the Bonferroni factor) defaults to ``len(concepts) * len(layers)``.
    Returns ``{(concept, layer): result}`` with the keys of ``tcav_test``.
    """
    check_model(model)
    layers = [layers] if isinstance(layers, str | nn.Module) else list(layers)
    if not layers:
        raise ValueError("layers is empty")
    for layer in layers:
        resolve_layer(model, layer)
    if not isinstance(concepts, dict) or not concepts:
        raise ValueError("concepts must be a non-empty dict {name: images}")
    for name, imgs in concepts.items():
        _check_sets(imgs, random_image_sets, model, f"concepts[{name!r}]")
    _check_images(images, "images", model)
    n_tests = len(concepts) * len(layers) if n_tests is None else n_tests
    grads = layer_gradients(model, layers, images, target, batch_size)
    # every set's activations in one batched pass, in float64 once (train_cav works in float64)
    all_sets = [*concepts.values(), *random_image_sets]
    acts = _multi_activations(model, layers, torch.cat(all_sets), batch_size)
    sizes = [len(x) for x in all_sets]
    split = [{layer: chunk.double() for layer, chunk in zip(layers, chunks)}
             for chunks in zip(*(acts[layer].split(sizes) for layer in layers))]
    concept_acts = dict(zip(concepts, split[:len(concepts)]))
    random_acts = split[len(concepts):]
    memo = {}

    def test(scores, null_scores):  # the variants often repeat the nominal scores: test each pair once
        key = (tuple(scores.tolist()), tuple(null_scores.tolist()))
        if key not in memo:
            memo[key] = significance(key[0], key[1], n_tests, alpha)
        return memo[key]

    r_count = len(random_image_sets)
    results = {}
    for layer in layers:
        g = grads[layer][1]
        scale = g.norm(dim=1)
        null = [train_cav(random_acts[i][layer], random_acts[(i + 1) % r_count][layer], seed=seed + i,
                          accuracy_range=True) for i in range(r_count)]
        null_cavs = torch.stack([c for c, _, _ in null])
        null_scores = _counts(sensitivities(g, null_cavs), scale)
        for name in concepts:
            fitted = [train_cav(concept_acts[name][layer], random_acts[i][layer], seed=seed + i, accuracy_range=True)
                      for i in range(r_count)]
            cavs = torch.stack([c for c, _, _ in fitted])
            sens = sensitivities(g, cavs)
            scores = _counts(sens, scale)
            tests = [test(s, z)
                     for s, z in ((scores[0], null_scores[0]), (scores[1], null_scores[1]),
                                  (scores[2], null_scores[2]), (scores[1], null_scores[2]),
                                  (scores[2], null_scores[1]))]
            results[(name, layer)] = {
                "score_mean": _mean(scores[0]), "score_std": _std(scores[0]),
                "random_mean": _mean(null_scores[0]), "random_std": _std(null_scores[0]),
                **tests[0],
                "scores": scores[0].float(), "random_scores": null_scores[0].float(),
                "accuracies": [a for _, a, _ in fitted], "random_accuracies": [a for _, a, _ in null],
                "accuracy_mean": _mean(a for _, a, _ in fitted),
                "accuracy_mean_range": tuple(_mean(rng[k] for _, _, rng in fitted) for k in (0, 1)),
                "random_accuracy_mean": _mean(a for _, a, _ in null),
                "random_accuracy_mean_range": tuple(_mean(rng[k] for _, _, rng in null) for k in (0, 1)),
                "cavs": cavs, "random_cavs": null_cavs, "n_tests": n_tests, "alpha": alpha,
                # the same figures with every sensitivity within round-off of zero flipped either way
                "variants": [{"score_mean": _mean(s), "score_std": _std(s),
                              "random_mean": _mean(z), "random_std": _std(z), **t}
                             for (s, z), t in zip(((scores[1], null_scores[1]), (scores[2], null_scores[2]),
                                                   (scores[1], null_scores[2]), (scores[2], null_scores[1])),
                                                  tests[1:])],
            }
    return results


def tcav_test(model: nn.Module, layer, concept_images: torch.Tensor, random_image_sets, images: torch.Tensor,
              target, seed: int = 0, n_tests: int | None = None, alpha: float = 0.05) -> dict:
    """Does the concept shown by ``concept_images`` matter to class ``target`` at ``layer``?

    One CAV of the concept against each of the R random sets, one null CAV between consecutive
    random sets, all scored on ``images`` (the class's images); then a two-sided t-test of the R
    concept scores against the R null scores. Returns a dict with

    score_mean, score_std    the concept's TCAV scores over its R CAVs
    random_mean, random_std  the null's (random-vs-random CAVs)
    p_value, p_corrected     the t-test's p, and ``min(1, n_tests * p)`` (Bonferroni)
    significant              ``p_corrected < alpha``; uncorrected when ``n_tests`` is not given
    scores, random_scores, accuracies, random_accuracies, cavs, random_cavs   per CAV
    variants                 the figures again with every sensitivity within round-off of zero
                             counted negative or positive (what another CPU might compute)
    """
    check_model(model)
    resolve_layer(model, layer)
    _check_sets(concept_images, random_image_sets, model)
    name = "concept"
    out = tcav_experiment(model, [layer], {name: concept_images}, random_image_sets, images, target, seed=seed,
                          n_tests=1 if n_tests is None else n_tests, alpha=alpha)
    return out[(name, layer)]


def relative_tcav(model: nn.Module, layer, a_images: torch.Tensor, b_images: torch.Tensor, images: torch.Tensor,
                  target, seeds=range(10)) -> dict:
    """Relative TCAV: CAVs of concept A against concept B (not against random images), one per
    held-out split in ``seeds``; a score is the fraction of ``images`` whose ``target`` logit grows
    along A rather than B. Returns the per-split ``scores``, ``score_mean``, ``score_std``, the
    held-out ``accuracies`` and their mean, and the means' round-off ranges (``*_range``)."""
    check_model(model)
    resolve_layer(model, layer)
    _check_images(a_images, "a_images", model)
    _check_images(b_images, "b_images", model)
    a = _multi_activations(model, [layer], a_images, 256)[layer]
    b = _multi_activations(model, [layer], b_images, 256)[layer]
    _, grads = layer_gradients(model, [layer], images, target)[layer]
    fitted = [train_cav(a, b, seed=s, accuracy_range=True) for s in seeds]
    if len(fitted) < 2:
        raise ValueError("seeds must hold at least 2 seeds")
    scores, low, high = _counts(sensitivities(grads, torch.stack([c for c, _, _ in fitted])), grads.norm(dim=1))
    return {"scores": scores.float(), "score_mean": _mean(scores), "score_std": _std(scores),
            "score_mean_range": (_mean(low), _mean(high)), "accuracies": [acc for _, acc, _ in fitted],
            "accuracy_mean": _mean(acc for _, acc, _ in fitted),
            "accuracy_mean_range": tuple(_mean(rng[k] for _, _, rng in fitted) for k in (0, 1))}


# ---- printing figures that round-off cannot move ----

def score_range(gradients: torch.Tensor, cavs: torch.Tensor) -> tuple:
    """``(score, low, high)``: the mean TCAV score of ``cavs`` ([K, D] or one [D]) on images with these
    ``gradients`` [N, D], and the same with every sensitivity within round-off of zero counted
    negative, then positive."""
    cavs = cavs[None] if cavs.dim() == 1 else cavs
    return tuple(_mean(c) for c in _counts(sensitivities(gradients, cavs), gradients.norm(dim=1)))


def fmt_all(values, digits: int = 2) -> str:
    """``fmt(values[0], digits)``; under ``COURSE_STRICT=1`` it refuses when another of ``values``
    (the same figure computed with round-off going the other way) would print differently."""
    from .report import fmt, strict

    values = list(values)  # discrete figures, computed exactly (``_mean``): no round-off margin needed
    text = fmt(values[0], digits, rtol=0, atol=0)
    if strict() and any(fmt(v, digits, rtol=0, atol=0) != text for v in values[1:]):
        raise ValueError(f"fmt_all: {values} do not all print as {text} at {digits} decimals: print fewer digits")
    return text


def fmt_p(p: float, coarse: bool = False) -> str:
    """A p-value as a course notebook prints it: ``<0.0001``, ``<0.001``, ``<0.01``, then two decimals
    below 0.1 and one above. ``coarse``: ``<0.05`` or ``>0.05`` in place of the decimals."""
    from .report import fmt

    for bound in (1e-4, 1e-3, 1e-2):
        if p < bound:
            return f"<{bound:.4f}".rstrip("0")
    if coarse:
        return "<0.05" if p < 0.05 else ">0.05"
    # from the same scores p is the same double up to ~1e-15: a tiny margin is enough
    return fmt(p, 2 if p < 0.1 else 1, rtol=1e-9, atol=0)


def summary(result: dict, digits: int = 2) -> dict:
    """One row of a results table: ``TCAV`` (mean ± std), ``null`` (mean ± std), ``p (Bonferroni)``
    and ``significant``.

    The row must read the same when the sensitivities within round-off of zero are counted the
    other way (``result["variants"]``): where only the p-value's decimals would change, it is
    printed coarsely (``<0.05`` / ``>0.05``); under ``COURSE_STRICT=1`` any other difference is
    refused (print fewer digits).
    """
    from .report import fmt, strict

    def f(value):  # means and stds of counts, computed exactly: round-off cannot move them, flips can
        return fmt(value, digits, rtol=0, atol=0)

    def row(r, coarse=False):
        return {"TCAV": f"{f(r['score_mean'])} ± {f(r['score_std'])}",
                "null": f"{f(r['random_mean'])} ± {f(r['random_std'])}",
                "p (Bonferroni)": fmt_p(r["p_corrected"], coarse),
                "significant": "yes" if r["significant"] else "no"}

    variants = result.get("variants", [])
    coarse = any(row(v)["p (Bonferroni)"] != row(result)["p (Bonferroni)"] for v in variants)
    text = row(result, coarse)
    if strict():
        for variant in variants:
            if row(variant, coarse) != text:
                raise ValueError(f"summary: {text} reads {row(variant, coarse)} when sensitivities within round-off "
                                 "of zero change sign: print fewer digits")
    return text


# ---- the reference: Captum's TCAV ----

def captum_reference(model: nn.Module, layer: str, concept_sets: dict, pairs, images: torch.Tensor, target,
                     cavs: dict | None = None, seed: int = 0, save_path: str | None = None) -> dict:
    """Captum's ``TCAV`` on the same sets: ``{(concept, random): {"sign_count", "magnitude", "cav",
    "accuracy"}}``, read from Captum's results by their keys (``concepts_to_str``), never by position.

    concept_sets  ``{name: images}``: every set the pairs use, concepts and random sets alike
    pairs         ``[(concept name, random name), ...]``: Captum's experimental sets
    cavs          ``{(concept, random): cav [D]}``: our CAVs, injected through Captum's
                  ``Classifier`` interface (so only the scoring is Captum's); None: Captum's
                  ``DefaultClassifier`` (sklearn's SGDClassifier, a 33% split by ``random.shuffle``)
                  trains its own, seeded through Python's ``random``, NumPy and torch with ``seed``
    save_path     where Captum caches activations and CAVs; None (the default): a temporary folder,
                  removed afterwards (Captum's own default, "./cav/", writes into the working tree
                  and silently reuses what it finds there)

    ``cav`` is the concept's row of Captum's CAV weights (not normalized: sklearn's coefficients);
    the caller's random states and the model's mode are restored.
    """
    from captum.concept import TCAV, Concept
    from captum.concept._utils.classifier import Classifier, DefaultClassifier
    from captum.concept._utils.common import concepts_to_str

    check_model(model)
    resolve_layer(model, layer)
    check_input(images, "images", model)
    names = list(concept_sets)
    concepts = {name: Concept(i, name, torch.utils.data.DataLoader(concept_sets[name], batch_size=256))
                for i, name in enumerate(names)}

    class Injected(Classifier):
        """Gives Captum our CAV for the pair it is training (known from the concept ids it sees)."""

        def __init__(self):
            self.pair = None

        def train_and_eval(self, dataloader, **kwargs):
            ids = set(torch.cat([y for _, y in dataloader]).unique().tolist())
            self.pair = next(p for p in cavs if {concepts[p[0]].id, concepts[p[1]].id} == ids)
            return None

        def weights(self):
            v = torch.as_tensor(cavs[self.pair]).detach().float()
            return torch.stack([v, -v])

        def classes(self):
            return [concepts[self.pair[0]].id, concepts[self.pair[1]].id]

    experimental_sets = [[concepts[a], concepts[b]] for a, b in pairs]
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    training = model.training
    try:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        with ExitStack() as stack, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DefaultClassifier warns that it keeps data in memory
            folder = save_path if save_path is not None else stack.enter_context(tempfile.TemporaryDirectory())
            classifier = Injected() if cavs is not None else DefaultClassifier()
            tcav = TCAV(model, [layer], model_id="dermnet", classifier=classifier, save_path=folder)
            scores = tcav.interpret(images, experimental_sets, target=target)
            out = {}
            for (a, b), exp in zip(pairs, experimental_sets):
                key = concepts_to_str(exp)
                stats = tcav.cavs[key][layer].stats
                row = [int(c) for c in stats["classes"]].index(concepts[a].id)
                out[(a, b)] = {"sign_count": float(scores[key][layer]["sign_count"][0]),
                               "magnitude": float(scores[key][layer]["magnitude"][0]),
                               "cav": torch.as_tensor(stats["weights"][row]).detach().float(),
                               "accuracy": float(stats["accs"]) if "accs" in stats else float("nan")}
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        model.train(training)
    return out
