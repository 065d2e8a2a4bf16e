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

from .contract import check_input
from .hooks import layer_name

# Parameters that a module holds itself (not through a submodule), which no ``reset_parameters``
# reaches: drawn as their constructors draw them (torchvision's ViT and ConvNeXt, timm's ViTs)
OWN_PARAMETERS = {
    "class_token": nn.init.zeros_,                                # torchvision VisionTransformer
    "pos_embedding": lambda p: nn.init.normal_(p, std=0.02),      # torchvision's ViT encoder
    "layer_scale": lambda p: nn.init.constant_(p, 1e-6),          # torchvision's ConvNeXt block (its default)
    "cls_token": lambda p: nn.init.normal_(p, std=1e-6),          # timm VisionTransformer
    "reg_token": lambda p: nn.init.normal_(p, std=1e-6),          # timm's register tokens
    "dist_token": lambda p: nn.init.trunc_normal_(p, std=0.02),   # timm's distilled DeiT
    "pos_embed": lambda p: nn.init.trunc_normal_(p, std=0.02),    # timm VisionTransformer
}


def _reinit(module: nn.Module) -> list[str]:
    """Re-initialize one module's own parameters as DermNet's (and torchvision ResNet's) constructor
    does: convolutions Kaiming-normal (fan_out, ReLU), everything else PyTorch's default
    ``reset_parameters`` (BatchNorm back to weight 1, bias 0, running mean 0 and variance 1;
    ``nn.MultiheadAttention``'s ``in_proj_weight`` Xavier-uniform), and the parameters a module holds
    itself by ``OWN_PARAMETERS``. Returns the names of the parameters it could not re-initialize."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.MultiheadAttention):
        module._reset_parameters()  # its in_proj_weight, in_proj_bias and out_proj.bias (PyTorch's own rule)
    elif hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        own = dict(module.named_parameters(recurse=False))
        for name, p in own.items():
            if name in OWN_PARAMETERS:
                OWN_PARAMETERS[name](p)
        return [name for name in own if name not in OWN_PARAMETERS]
    return []


def _module_names(model: nn.Module, layers) -> list[str]:
    """``layers`` (a module name or a module of ``model``, or a list of them) as module names."""
    items = list(layers) if isinstance(layers, list | tuple) else [layers]
    if not items:
        raise ValueError("layers must name at least one module")
    by_id = {id(m): name for name, m in model.named_modules()}
    names = [by_id.get(id(item)) if isinstance(item, nn.Module) else item for item in items]
    for item, name in zip(items, names, strict=True):
        if not isinstance(name, str) or not name or name not in by_id.values():
            raise ValueError(f"layers: {layer_name(model, item)} is not a module of the model "
                             f"(top-level modules: {[n for n, _ in model.named_children()]})")
    return names


def _with_parents(model: nn.Module, chosen: list[str]) -> list[str]:
    """``chosen`` and every module whose submodules with parameters are all chosen, in registration
    order: the parameters a module holds itself (a ViT's class token and position embedding, held
    by the model) go with the last of its layers that a cascade re-initializes."""
    modules, out = dict(model.named_modules()), set(chosen)
    for name in reversed(list(modules)):  # children before their parents
        kids = [f"{name}.{k}" if name else k for k, m in modules[name].named_children()
                if any(True for _ in m.parameters())]
        if kids and all(k in out for k in kids):
            out.add(name)
    return [name for name in modules if name in out]


def randomized(model: nn.Module, layers, cascade: bool = True, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with ``layers`` re-initialized; the original is never modified.

    layers   a module name (``"fc"``, ``"layer4"``, ``"layer3.0.conv2"``), a module of the model, or a
             list of them
    cascade  True: every module from the output down to the lowest layer named is re-initialized
             (Adebayo et al.'s cascading randomization: ``randomized(m, "layer3")`` re-initializes
             ``layer3``, ``layer4`` and ``fc``), and with them the parameters that a module holds
             itself once all its layers are (a ViT's class token and position embedding go with its
             patch embedding, the first layer). False: only the layers named (independent
             randomization)
    seed     each module's new weights are drawn from a seed made of ``seed`` and the module's
             position, inside a forked RNG: the caller's random state is untouched, and a layer gets
             the same weights at every step of a cascade and in an independent randomization

    Every parameter of a re-initialized module is re-initialized (``_reinit``); a ValueError names
    any that cannot be. The copy keeps the original's mode (``training``) and ``requires_grad`` flags.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    names = _module_names(model, layers)
    order = [name for name, _ in model.named_modules()]  # registration order
    if cascade:
        lowest = min(order.index(n) for n in names)
        chosen = _with_parents(model, order[lowest:])
    else:
        chosen = [n for name in names for n in order if n == name or n.startswith(name + ".")]
    out = copy.deepcopy(model)
    new, missed = dict(out.named_modules()), []
    cuda = list({p.device for p in model.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        for name in dict.fromkeys(chosen):  # each module once
            # seeded by its position: a layer gets the same weights whatever else is re-initialized
            torch.manual_seed(seed * 1_000_003 + order.index(name))
            missed += [f"{name}.{p}" if name else p for p in _reinit(new[name])]
    if missed:
        raise ValueError(f"randomized: cannot re-initialize {missed}: parameters that their modules hold "
                         "themselves, with no rule for them (reset_parameters, or helpers.sanity.OWN_PARAMETERS); "
                         "add one to OWN_PARAMETERS, or name layers that do not hold them")
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
                         for x, y in zip(_numpy(a), _numpy(b))], dtype=torch.float64, device=a.device)


def hog_similarity(a: torch.Tensor, b: torch.Tensor, pixels_per_cell: int = 8) -> torch.Tensor:
    """Pearson correlation per image of the HOG features (Dalal & Triggs 2005; scikit-image's ``hog``,
    9 orientations, ``pixels_per_cell`` square cells, 2x2 blocks) of two batches of maps ``[B, H, W]``,
    each scaled to [0, 1] first. NaN where a map is constant (no edges, no HOG)."""
    from skimage.feature import hog

    _check_pair(a, b)
    out = []
    for x, y in zip(_numpy(a), _numpy(b)):
        hx, hy = (hog(_unit_range(m), pixels_per_cell=(pixels_per_cell,) * 2, cells_per_block=(2, 2))
                  for m in (x, y))
        out.append(float(np.corrcoef(hx, hy)[0, 1]) if hx.std() > 0 and hy.std() > 0 else float("nan"))
    return torch.tensor(out, dtype=torch.float64, device=a.device)


def _numpy(maps: torch.Tensor) -> np.ndarray:
    return maps.detach().double().cpu().numpy()


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
    check_input(x, model=model)
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
