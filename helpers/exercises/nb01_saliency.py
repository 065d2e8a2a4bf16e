"""Checkers for notebook 01 (notebooks/01_saliency.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, _corner_images, _dermnet_batch, _gradient_of, _slip, check_method, not_done, run_learner


def check_saliency(your_fn) -> CheckResult:
    """Notebook 01: ``your_fn(model, x, target)`` should return |d score / d x|, shaped like x."""
    from ..gradients import saliency

    model, x, t = _dermnet_batch()
    result = check_method(your_fn, saliency, model, x, t, name="saliency")
    if not result.passed and "different values" in result.message:
        try:
            yours = your_fn(model, x, t).detach()
        except Exception:
            return result
        probs = _gradient_of(model, x, t, lambda out: out.softmax(1))
        if torch.allclose(yours, probs.abs(), atol=1e-6):
            return CheckResult(False, "saliency", "you took the gradient of the softmax probability: "
                                                  "use the raw score (logit) of the target class", result.max_abs_diff)
        summed = _gradient_of(model, x, None, lambda out: out)
        if torch.allclose(yours, summed.abs(), atol=1e-6):
            return CheckResult(False, "saliency", "you took the gradient of the sum of all class scores: "
                                                  "pick each image's target score first", result.max_abs_diff)
    return result


def check_corners_question(shortcut_above_share, debiased_above_share) -> CheckResult:
    """Notebook 01, exercise 2, answered from the data: on clinic-B images with dark dermoscope
    corners, does each model's saliency map put more than the corners' area share of its mass on
    them? (the first 32 such images of ``make_dataset(96, clinic="B", seed=777_001)``)"""
    from ..gradients import saliency
    from ..metrics import mask_mass, mask_share
    from ..models import load_dermnet
    from ..train import logits

    name = "corners question"
    answers = {"shortcut_above_share": shortcut_above_share, "debiased_above_share": debiased_above_share}
    if any(v is None for v in answers.values()):
        return not_done(name, "set both answers to True or False, from your own saliency maps")
    for key, value in answers.items():
        if not isinstance(value, bool):
            return CheckResult(False, name, f"{key} must be True or False, got {value!r}")
    x, m = _corner_images()
    share = float(mask_share(m).mean())
    facts, truth = [], {}
    for model_name in ("shortcut", "debiased"):
        model = load_dermnet(model_name)
        mass = float(mask_mass(saliency(model, x, logits(model, x).argmax(1)), m).mean())
        truth[f"{model_name}_above_share"] = mass > share
        facts.append(f"{model_name} {mass:.3f}")
    detail = f"saliency mass on the corners: {', '.join(facts)}; their area share {share:.3f}"
    if answers == truth:
        return CheckResult(True, name, f"right ({detail}). Dark, flat corners have little contrast, and the "
                                       "gradient of either model barely looks there: unlike the ruler")
    return CheckResult(False, name, f"not quite: {detail}")


def check_gradient_x_input(your_fn) -> CheckResult:
    """Notebook 01, exercise 3: ``your_fn(model, x, target)``, gradient x input x * dS/dx, signed,
    shaped like x; compared with ``helpers.gradients.gradient_x_input`` (and the method contract)."""
    from ..gradients import gradient_x_input, input_gradient

    model, x, t = _dermnet_batch(3, seed=6)
    result = check_method(your_fn, gradient_x_input, model, x, t, name="gradient_x_input", atol=1e-6, rtol=1e-4)
    if result.passed or not result.done:
        return result
    yours, verdict = run_learner("gradient_x_input", your_fn, model, x.clone(), t)
    if verdict is not None or not isinstance(yours, torch.Tensor) or yours.shape != x.shape:
        return result
    g = input_gradient(model, x, t)
    slips = {"you took an absolute value (of the gradient or of the product): gradient x input keeps the "
             "gradient's sign (take .abs() only to display it)": x * g.abs(),
             "you returned the gradient alone: multiply it by the input": g}
    return _slip("gradient_x_input", yours, gradient_x_input(model, x, t), slips, atol=1e-6, rtol=1e-4)
