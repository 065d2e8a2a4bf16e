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
    seed     the re-initialization is drawn from ``torch.manual_seed(seed)`` inside a forked RNG,
             so the caller's random state is untouched and the same seed gives the same weights

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
        torch.manual_seed(seed)
        for name in dict.fromkeys(chosen):  # each module once, in forward order
            _reinit(new[name])
    return out


def cascade_steps(model: nn.Module) -> list[str]:
    """The top-level modules with parameters, from the output down: the steps of a cascading
    randomization (``["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]`` for DermNet)."""
    return [name for name, m in reversed(list(model.named_children()))
            if any(True for _ in m.parameters())]
