"""Checkers for notebook 13 (notebooks/13_evaluating_attributions.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, _close, compare, not_done, run_learner


def _deletion_inputs(n: int = 6):
    """Six clinic-B images with a ruler, the debiased model's predictions and its gradient x input
    maps (signed, and without plateaus of tied values)."""
    from ..data import make_dataset
    from ..gradients import gradient_x_input
    from ..models import load_dermnet
    from ..train import logits

    model = load_dermnet("debiased")
    x = make_dataset(n, clinic="B", seed=2024, ruler=True).images
    t = logits(model, x).argmax(1)
    return model, x, t, gradient_x_input(model, x, t)


def check_deletion_scores(your_fn, steps: int = 8) -> CheckResult:
    """Notebook 13, exercise 1: ``your_fn(model, x, target, attr, steps) -> [B, steps + 1]``, the
    deletion curve's scores (to black, most relevant first, softmax probability of the target)."""
    from ..evaluation import deletion

    name = "deletion_scores"
    model, x, t, attr = _deletion_inputs()
    yours, failed = run_learner(name, your_fn, model, x.clone(), t.clone(), attr.clone(), steps)
    if failed is not None:
        return failed
    ours = deletion(model, x, t, attr, steps=steps, channels_last=False).scores
    if isinstance(yours, torch.Tensor) and yours.shape == ours.shape:
        slips = {
            "you removed the least relevant pixels first (LeRF): sort in descending order":
                deletion(model, x, t, attr, steps=steps, order="lerf").scores,
            "your scores are logits: take the softmax probability of the target":
                deletion(model, x, t, attr, steps=steps, score="logit").scores,
            "you ranked pixels by the magnitude of the attribution: keep its sign (pixels for the class first)":
                deletion(model, x, t, attr, steps=steps, abs=True).scores,
        }
        for hint, wrong in slips.items():
            if _close(yours.detach().float(), wrong, 1e-4, 1e-4) and not _close(wrong, ours, 1e-4, 1e-4):
                return CheckResult(False, name, hint)
    if isinstance(yours, torch.Tensor) and yours.shape == (ours.shape[0], ours.shape[1] - 1):
        return CheckResult(False, name, f"shape {tuple(yours.shape)}: the curve has steps + 1 points, starting "
                                        "with the untouched image (k = 0)")
    return compare(yours, ours, name=name, atol=1e-4, rtol=1e-4)


def check_guided_backprop_randomization_question(guided_backprop_passes) -> CheckResult:
    """Notebook 13, exercise 2: does guided backprop's map change (mean rank correlation of the
    magnitudes below 0.5) when the shortcut model's layer4 and fc are re-initialized? Recomputed on
    16 fresh clinic-B images, next to Grad-CAM."""
    from ..cam import grad_cam, guided_backprop
    from ..data import make_dataset
    from ..metrics import rank_correlation
    from ..models import load_dermnet
    from ..sanity import randomized
    from ..train import logits

    name = "randomization question"
    if guided_backprop_passes is None:
        return not_done(name, "set guided_backprop_passes to True or False, then run this cell again")
    if not isinstance(guided_backprop_passes, bool):
        return CheckResult(False, name, f"answer True or False, got {guided_backprop_passes!r}")
    model = load_dermnet("shortcut")
    scrambled = randomized(model, "layer4", cascade=True)
    x = make_dataset(16, clinic="B", seed=77, ruler=True).images
    t = logits(model, x).argmax(1)
    sims = {k: rank_correlation(f(model, x, t).abs().sum(1), f(scrambled, x, t).abs().sum(1)).mean().item()
            for k, f in (("guided backprop", guided_backprop), ("Grad-CAM", grad_cam))}
    truth = sims["guided backprop"] < 0.5
    detail = (f"mean rank correlation with the randomized model's map: guided backprop {sims['guided backprop']:.2f}, "
              f"Grad-CAM {sims['Grad-CAM']:.2f}")
    if guided_backprop_passes == truth:
        return CheckResult(True, name, f"right ({detail}). Guided backprop's ReLU rule reconstructs the image "
                                       "(Nie et al. 2018), so its map barely depends on the top layers" if not truth
                           else f"right ({detail})")
    return CheckResult(False, name, f"not quite: {detail}")
