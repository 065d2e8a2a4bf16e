"""Sanity checks for attribution maps (notebook 12): does a map depend on the model at all?

Adebayo et al. 2018, "Sanity Checks for Saliency Maps", ask two questions of a method:

- **model-parameter randomization**: re-initialize the network's layers, from the output down
  (cascading) or one at a time (independent), and recompute the map. A map that explains the model
  must change as the model is destroyed;
- **data randomization**: train the same network on permuted labels. It can only memorize, so a map
  that explains what the model learned must differ from the real model's.

Similarity to the original map is measured as in the paper: Spearman rank correlation of the
absolute and of the signed map, SSIM and the similarity of HOG features.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def _reinit(module: nn.Module) -> None:
    """Re-initialize one module as DermNet's (and torchvision ResNet's) constructor does: convolutions
    Kaiming-normal (fan_out, ReLU), everything else PyTorch's default ``reset_parameters`` (BatchNorm
    back to weight 1, bias 0, running mean 0 and variance 1)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif hasattr(module, "reset_parameters"):
        module.reset_parameters()


def randomized(model: nn.Module, layers, cascade: bool = True, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with ``layers`` re-initialized; the original is never modified.

    layers   a module name (``"fc"``, ``"layer4"``, ``"layer3.0.conv2"``) or a list of them
    cascade  True: every module from the output down to the lowest layer named is re-initialized
             (Adebayo et al.'s cascading randomization: ``randomized(m, "layer3")`` re-initializes
             ``layer3``, ``layer4`` and ``fc``). False: only the layers named (independent
             randomization)
    seed     each module's new weights are drawn from a seed made of ``seed`` and the module's
             position, inside a forked RNG: the caller's random state is untouched, and a layer gets
             the same weights at every step of a cascade and in an independent randomization

    The copy keeps the original's mode (``training``) and ``requires_grad`` flags.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("layers must name at least one module")
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(name, str) or not name or name not in modules:
            raise ValueError(f"layers: {name!r} is not a module of the model "
                             f"(top-level modules: {[n for n, _ in model.named_children()]})")
    order = list(modules)  # registration order
    if cascade:
        lowest = min(order.index(n) for n in names)
        chosen = [n for n in order[lowest:] if n]
    else:
        chosen = [n for name in names for n in order if n == name or n.startswith(name + ".")]
    out = copy.deepcopy(model)
    new = dict(out.named_modules())
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for name in dict.fromkeys(chosen):  # each module once
            # seeded by its position: a layer gets the same weights whatever else is re-initialized
            torch.manual_seed(seed * 1_000_003 + order.index(name))
            _reinit(new[name])
    return out


def cascade_steps(model: nn.Module) -> list[str]:
    """The top-level modules with parameters, from the output down: the steps of a cascading
    randomization (``["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]`` for DermNet)."""
    return [name for name, m in reversed(list(model.named_children()))
            if any(True for _ in m.parameters())]


# --------------------------------------------------------------------------------------------
# How similar two maps are (Adebayo et al. 2018, section 3)
# --------------------------------------------------------------------------------------------

def as_map(attr: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """One value per pixel, ``[B, H, W]``: the sum over channels of ``attr`` [B, C, H, W] (signed) or
    of its absolute value (the magnitude map the paper compares)."""
    if not isinstance(attr, torch.Tensor) or attr.dim() != 4:
        raise ValueError(f"attr must be a [B, C, H, W] tensor, got "
                         f"{tuple(attr.shape) if isinstance(attr, torch.Tensor) else type(attr).__name__}")
    attr = attr.detach().float()
    return (attr if signed else attr.abs()).sum(1)


def _unit_range(m: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] (a constant map becomes all zeros)."""
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image between two batches of maps ``[B, H, W]``, each map scaled to
    [0, 1] first (scikit-image's ``structural_similarity`` with ``data_range=1``, its 7x7 window)."""
    from skimage.metrics import structural_similarity

    _check_pair(a, b)
    return torch.tensor([structural_similarity(_unit_range(x), _unit_range(y), data_range=1.0)
                         for x, y in zip(a.detach().double().numpy(), b.detach().double().numpy())],
                        dtype=torch.float64)


def hog_similarity(a: torch.Tensor, b: torch.Tensor, pixels_per_cell: int = 8) -> torch.Tensor:
    """Pearson correlation per image of the HOG features (Dalal & Triggs 2005; scikit-image's ``hog``,
    9 orientations, ``pixels_per_cell`` square cells, 2x2 blocks) of two batches of maps ``[B, H, W]``,
    each scaled to [0, 1] first. NaN where a map is constant (no edges, no HOG)."""
    from skimage.feature import hog

    _check_pair(a, b)
    out = []
    for x, y in zip(a.detach().double().numpy(), b.detach().double().numpy()):
        hx, hy = (hog(_unit_range(m), pixels_per_cell=(pixels_per_cell,) * 2, cells_per_block=(2, 2))
                  for m in (x, y))
        out.append(float(np.corrcoef(hx, hy)[0, 1]) if hx.std() > 0 and hy.std() > 0 else float("nan"))
    return torch.tensor(out, dtype=torch.float64)


def _check_pair(a, b) -> None:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape or a.dim() != 3:
        raise ValueError("a and b must be two [B, H, W] batches of maps of one shape, got "
                         f"{tuple(getattr(a, 'shape', ()))} and {tuple(getattr(b, 'shape', ()))}")


SIMILARITIES = ("Spearman (abs)", "Spearman (signed)", "SSIM", "HOG")


def similarities(original: torch.Tensor, other: torch.Tensor) -> dict:
    """The paper's four similarity measures per image between two attributions ``[B, C, H, W]``:
    Spearman rank correlation of the magnitude maps and of the signed maps (tied values share their
    mean rank, as ``scipy.stats.spearmanr``), SSIM and HOG similarity of the magnitude maps."""
    from .metrics import rank_correlation

    if original.shape != other.shape:
        raise ValueError(f"original and other must have one shape, got {tuple(original.shape)} "
                         f"and {tuple(other.shape)}")
    a, b = as_map(original), as_map(other)
    return {"Spearman (abs)": rank_correlation(a, b),
            "Spearman (signed)": rank_correlation(as_map(original, True), as_map(other, True)),
            "SSIM": ssim(a, b), "HOG": hog_similarity(a, b)}


def randomization_test(model: nn.Module, methods: dict, x: torch.Tensor, target, cascade: bool = True,
                       steps=None, seed: int = 0) -> dict:
    """Adebayo et al.'s model-parameter randomization test.

    methods  {name: fn(model, x, target) -> attribution [B, C, H, W]}
    steps    layer names, from the output down (default ``cascade_steps(model)``); with ``cascade``
             step k re-initializes steps[0..k] together, otherwise steps[k] alone
    Returns ``{"maps": {step: {method: attr}}, "similarity": {step: {method: {measure: [B]}}}}``,
    step ``"original"`` being the trained model. The model itself is never modified.
    """
    if not isinstance(methods, dict) or not methods:
        raise ValueError("methods must be a non-empty {name: fn(model, x, target)} dict")
    steps = cascade_steps(model) if steps is None else list(steps)
    maps = {"original": {name: fn(model, x, target).detach() for name, fn in methods.items()}}
    for step in steps:
        copy_ = randomized(model, step, cascade=cascade, seed=seed)
        maps[step] = {name: fn(copy_, x, target).detach() for name, fn in methods.items()}
    sims = {step: {name: similarities(maps["original"][name], m[name]) for name in methods}
            for step, m in maps.items() if step != "original"}
    return {"maps": maps, "similarity": sims}
