"""Checkers for notebook 03 (notebooks/03_integrated_gradients.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, _corner_images, _dermnet_batch, _slip, check_method, not_done, run_learner


def check_integrated_gradients(your_fn, steps: int = 16) -> CheckResult:
    """Notebook 03: ``your_fn(model, x, target, steps)``: IG from a black baseline with the trapezoid
    rule (alphas linspace(0, 1, steps), weights 1/(steps-1), halved at both ends)."""
    from ..gradients import input_gradient, integrated_gradients

    model, x, t = _dermnet_batch(3, seed=2)
    result = check_method(your_fn, integrated_gradients, model, x, t, name="integrated_gradients",
                          atol=1e-5, rtol=1e-4, steps=steps)
    if result.passed:
        return result
    try:
        yours = your_fn(model, x, t, steps=steps)
    except Exception:
        return result
    if not isinstance(yours, torch.Tensor) or yours.shape != x.shape:
        return result
    yours = yours.detach()
    ours = integrated_gradients(model, x, t, steps=steps)
    n = steps
    # the gradients at the trapezoid points, then the usual slips in the weights
    grads = torch.stack([input_gradient(model, a * x, t) for a in torch.linspace(0, 1, n)])

    def weighted(w):
        return x * (torch.tensor(w).view(-1, 1, 1, 1, 1) * grads).sum(0)

    ends_halved = lambda w: [w / 2] + [w] * (n - 2) + [w / 2]  # noqa: E731
    slips = {
        "your weights are all 1/n: the points linspace(0, 1, n) are 1/(n-1) apart, and the trapezoid "
        "rule halves the two end weights": weighted([1 / n] * n),
        "your weights are all 1/(n-1): halve the first and the last weight": weighted([1 / (n - 1)] * n),
        "your weights sum to (n-1)/n, like Captum's riemann_trapezoid: the points linspace(0, 1, n) are "
        "1/(n-1) apart, so the weights are 1/(n-1), not 1/n": weighted(ends_halved(1 / n)),
        "you return the averaged gradients: multiply by (x - baseline) at the end":
            weighted(ends_halved(1 / (n - 1))) / x.clamp_min(1e-12) * (x > 0),
    }
    for rule, hint in (("left", "you used the left Riemann rule: include alpha = 1 and halve the end weights"),
                       ("right", "you used the right Riemann rule: include alpha = 0 and halve the end weights"),
                       ("middle", "you used midpoints: the trapezoid rule evaluates at linspace(0, 1, n)")):
        slips[hint] = integrated_gradients(model, x, t, steps=n, rule=rule)
    for hint, wrong in slips.items():
        if torch.allclose(yours, wrong, atol=1e-5, rtol=1e-4):
            return CheckResult(False, "integrated_gradients", hint, float((yours - ours).abs().max()))
    return result


def check_ig_corners_question(black_baseline_can_tell) -> CheckResult:
    """Notebook 03, exercise 2, answered from the data: IG from the black baseline puts almost no
    mass on the dark corners, for both models. Can it tell whether a model uses them?"""
    from ..gradients import blur_baseline, integrated_gradients
    from ..metrics import mask_mass
    from ..models import load_dermnet
    from ..train import logits

    name = "IG corners question"
    if black_baseline_can_tell is None:
        return not_done(name, "set your answer to True or False")
    if not isinstance(black_baseline_can_tell, bool):
        return CheckResult(False, name, f"answer True or False, got {black_baseline_can_tell!r}")
    x, m = _corner_images(16)
    model = load_dermnet("shortcut")
    t = logits(model, x).argmax(1)
    black = float(mask_mass(integrated_gradients(model, x, t, steps=16).abs(), m).mean())
    blur = float(mask_mass(integrated_gradients(model, x, t, baseline=blur_baseline(x), steps=16).abs(), m).mean())
    gap = float((x * m[:, None]).abs().sum() / (m.sum() * 3))  # mean |x - b| inside the corners, b = 0
    detail = (f"the mean |x - b| inside the corners is {gap:.3f} with the black baseline; the shortcut model's IG mass "
              f"there is {black:.3f} from black and {blur:.3f} from a blurred baseline")
    if not black_baseline_can_tell:
        return CheckResult(True, name, f"right: IG multiplies by x - b, which is about 0 where the image is as dark "
                                       f"as the baseline, whatever the model does ({detail})")
    return CheckResult(False, name, f"not quite: {detail}. What does the factor (x - b) do there?")


def check_completeness_gap(your_fn) -> CheckResult:
    """Notebook 03, exercise 3: ``your_fn(model, x, target, steps) -> [B]``, IG's quadrature error
    |sum_i IG_i(x) - (S(x) - S(b))| per image, from the black baseline with the trapezoid rule."""
    from ..gradients import integrated_gradients

    name = "completeness_gap"
    model, x, t = _dermnet_batch(3, seed=2)
    with torch.no_grad():
        sx, sb = model(x).gather(1, t[:, None])[:, 0], model(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    for steps in (4, 32):
        yours, verdict = run_learner(name, your_fn, model, x.clone(), t, steps)
        if verdict is not None:
            return verdict
        total = integrated_gradients(model, x, t, steps=steps).sum((1, 2, 3))
        ours = (total - (sx - sb)).abs()
        slips = {
            "you left out the baseline's score: completeness says sum IG = S(x) - S(b), and S(black) is far "
            "from 0 here": (total - sx).abs(),
            "yours keeps the sign: the gap is the absolute difference": total - (sx - sb),
            "you divided by |S(x) - S(b)|: return the absolute gap, in logits": ours / (sx - sb).abs(),
        }
        result = _slip(name, yours, ours, slips, atol=1e-4, rtol=1e-3)
        if not result.passed:
            result.message = f"steps = {steps}: {result.message}"
            return result
    return CheckResult(True, name, "matches ours at 4 and 32 steps (to within atol=1e-4, rtol=1e-3)")
