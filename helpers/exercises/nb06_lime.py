"""Checkers for notebook 06 (notebooks/06_lime.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, _bool_answers, _call, _verdict, compare, run_learner


def check_lime_kernel(your_fn, kernel_width: float = 0.25) -> CheckResult:
    """Notebook 06: ``your_fn(z, kernel_width) -> [n]``, LIME's sample weights for binary vectors
    z ``[n, K]``: exp(-d^2 / (2 w^2)) with d the cosine distance between z and the all-ones vector
    (the lime package's choice; an all-zero z is at distance 1)."""
    import math

    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 2, (200, 12), generator=g)
    z[0] = 1
    z[1] = 0
    yours = _call(your_fn, "lime_kernel", z.clone(), kernel_width)
    if isinstance(yours, CheckResult):
        return yours
    on = z.double().sum(1)
    d = 1 - on / (on.sqrt().clamp_min(1e-300) * math.sqrt(z.shape[1]))
    ours = torch.exp(-d ** 2 / (2 * kernel_width ** 2))
    if yours.shape == ours.shape and not torch.isfinite(yours).all():
        return CheckResult(False, "lime_kernel", "NaN or infinite weights: the all-zero sample has no direction; "
                                                 "give it distance 1 (cosine similarity 0)")
    if yours.shape == ours.shape:
        off = 1 - d
        slips = {
            "your kernel is exp(-d^2 / w^2): the lime package takes the square root of that, "
            "exp(-d^2 / (2 w^2))": torch.exp(-d ** 2 / kernel_width ** 2),
            "you used the cosine similarity where the distance (1 - similarity) belongs":
                torch.exp(-off ** 2 / (2 * kernel_width ** 2)),
            "you used the Euclidean distance to the all-ones vector: LIME for images uses the cosine distance":
                torch.exp(-(z.shape[1] - on) / (2 * kernel_width ** 2)),
            "you used the fraction of segments switched off as the distance: use the cosine distance":
                torch.exp(-(1 - on / z.shape[1]) ** 2 / (2 * kernel_width ** 2)),
        }
        for hint, wrong in slips.items():
            if torch.allclose(yours[2:], wrong[2:], atol=1e-9, rtol=1e-6) and not torch.allclose(yours, ours):
                return CheckResult(False, "lime_kernel", hint, float((yours - ours).abs().max()))
    return compare(yours, ours, name="lime_kernel", atol=1e-9, rtol=1e-6)


def check_lime_ruler_question(shortcut_mostly_ruler, debiased_mostly_ruler) -> CheckResult:
    """Notebook 06, exercise 2, answered from the data: on 10 fresh clinic-A melanomas with a ruler
    (``make_dataset(10, clinic="A", seed=606_001, ruler=True, labels="mel")``), 16 SLIC segments,
    LIME for melanoma with 100 samples and seed 0: is the top segment mostly ruler (more than half
    of its pixels) in more than half of the images, for each model?"""
    from ..data import MEL, make_dataset
    from ..models import load_dermnet
    from ..perturbation import lime, superpixels

    name = "LIME ruler question"
    answers = {"shortcut_mostly_ruler": shortcut_mostly_ruler, "debiased_mostly_ruler": debiased_mostly_ruler}
    early = _bool_answers(name, answers)
    if early is not None:
        return early
    ds = make_dataset(10, clinic="A", seed=606_001, ruler=True, labels="mel")
    segs = superpixels(ds.images, n_segments=16)
    k = int(segs.max()) + 1
    part = torch.stack([torch.bincount(s.flatten(), weights=r.flatten().float(), minlength=k)
                        / torch.bincount(s.flatten(), minlength=k).clamp_min(1)
                        for s, r in zip(segs, ds.masks["ruler"])])  # [10, K]: the ruler's share of each segment
    counts, truth = {}, {}
    for model_name in ("shortcut", "debiased"):
        values = lime(load_dermnet(model_name), ds.images, MEL, segs, n_samples=100, seed=0).values
        counts[model_name] = int((part.gather(1, values.argmax(1, keepdim=True))[:, 0] > 0.5).sum())
        truth[f"{model_name}_mostly_ruler"] = counts[model_name] > 5
    detail = (f"top segment mostly ruler in {counts['shortcut']} of 10 (shortcut) and {counts['debiased']} of 10 "
              "(debiased)")
    return _verdict(name, answers, truth, detail,
                    "LIME's single most important segment is enough to catch the shortcut model")


def check_effective_samples(your_fn) -> CheckResult:
    """Notebook 06, exercise 3: ``your_fn(weights) -> float``, the effective sample size of LIME's
    weighted regression, (sum pi)^2 / sum pi^2, for weights [n]; checked on the lime kernel's
    weights at several kernel widths."""
    import math

    name = "effective_samples"
    z = torch.randint(0, 2, (500, 16), generator=torch.Generator().manual_seed(0))
    z[0] = 1
    on = z.double().sum(1)
    d = 1 - on / (on.sqrt().clamp_min(1e-300) * 4.0)
    for width in (0.1, 0.25, 1.0):
        pi = torch.exp(-d ** 2 / (2 * width ** 2))
        yours, verdict = run_learner(name, your_fn, pi.clone())
        if verdict is not None:
            return verdict
        try:
            yours = float(yours)
        except (TypeError, ValueError):
            return CheckResult(False, name, f"return a number, got {type(yours).__name__}")
        ours = float(pi.sum() ** 2 / (pi ** 2).sum())
        slips = {"you returned sum pi^2 / (sum pi)^2: that is 1 / n_eff": 1 / ours,
                 "you returned the mean weight: n_eff is (sum pi)^2 / sum pi^2": float(pi.mean()),
                 "you returned sum pi: that counts weight, not samples; n_eff is (sum pi)^2 / sum pi^2":
                     float(pi.sum()),
                 "you squared the weights before summing on top: (sum pi)^2, not sum pi^2, goes above the line":
                     float((pi ** 2).sum() ** 2 / (pi ** 4).sum())}
        if not math.isclose(yours, ours, rel_tol=1e-6):
            for hint, wrong in slips.items():
                if math.isclose(yours, wrong, rel_tol=1e-6):
                    return CheckResult(False, name, f"kernel width {width}: {hint}")
            return CheckResult(False, name, f"kernel width {width}: yours is {yours:.4g}, ours {ours:.4g}")
    return CheckResult(True, name, "matches (sum pi)^2 / sum pi^2 at kernel widths 0.1, 0.25 and 1")
