"""Checkers for notebook 10 (notebooks/10_tcav.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, _bool_answers


def _tcav_inputs():
    """Gradients of the mel logit at layer2 for 40 held-out melanomas (shortcut model), and a unit
    direction there whose TCAV score is between 0.25 and 0.75, with no sensitivity near zero
    (the first of a fixed sequence of random directions that qualifies)."""
    from ..concepts import class_images, layer_gradients
    from ..data import MEL
    from ..models import load_dermnet

    model = load_dermnet("shortcut")
    grads = layer_gradients(model, ["layer2"], class_images("mel", 40, seed=1), MEL)["layer2"][1]
    g = torch.Generator().manual_seed(0)
    for _ in range(1000):
        cav = torch.randn(grads.shape[1], generator=g)
        cav = cav / cav.norm()
        s = grads @ cav
        if 0.25 <= float((s > 0).float().mean()) <= 0.75 and float((s.abs() / grads.norm(dim=1)).min()) > 1e-4:
            return grads, cav
    raise RuntimeError("no suitable direction found")


def check_tcav_score(your_fn) -> CheckResult:
    """Notebook 10, exercise 1: ``your_fn(gradients [N, D], cav [D]) -> float``, the share of images
    whose directional derivative along the CAV is > 0."""
    grads, cav = _tcav_inputs()
    s = grads @ cav
    ours = float((s > 0).float().mean())
    try:
        yours = your_fn(grads.clone(), cav.clone())
    except Exception as err:  # the learner's code: report, do not crash the notebook
        return CheckResult(False, "tcav_score", f"your function raised {type(err).__name__}: {err}")
    if isinstance(yours, torch.Tensor):
        if yours.numel() != 1:
            return CheckResult(False, "tcav_score", f"expected one number, got a tensor of shape {tuple(yours.shape)}: "
                                                    "take the share over the images (a mean of the 0/1 indicators)")
        yours = float(yours)
    if isinstance(yours, bool) or not isinstance(yours, int | float):
        return CheckResult(False, "tcav_score", f"expected a float, got {type(yours).__name__}")
    yours = float(yours)
    if abs(yours - ours) < 1e-9:
        return CheckResult(True, "tcav_score", f"matches ours ({ours:.3f} of {len(s)} melanomas)", 0.0)
    slips = {
        "you returned whether the *mean* sensitivity is positive: count the images one by one, then take the "
        "share": float(s.mean() > 0),
        "you counted the negative sensitivities: the score is the share with S(x) > 0": float((s < 0).float().mean()),
        "you took the mean sensitivity itself (Captum's 'magnitude'): the score counts signs":
            float(s.mean()),
        "you returned a count, not a share: divide by the number of images": float((s > 0).sum()),
    }
    for hint, wrong in slips.items():
        if abs(yours - wrong) < 1e-6 * max(1.0, abs(wrong)):
            return CheckResult(False, "tcav_score", f"{hint} (yours {yours:.3f}, ours {ours:.3f})", abs(yours - ours))
    return CheckResult(False, "tcav_score", f"different: yours {yours:.3f}, ours {ours:.3f}", abs(yours - ours))


def check_ink_question(shortcut_uses_ink: bool, debiased_uses_ink: bool) -> CheckResult:
    """Notebook 10, exercise 2, answered from the data: is "ink" significant for mel at any of
    layer2-4 (TCAV against 20 random sets, Bonferroni over the notebook's 21 tests), for the
    shortcut model and for the debiased one? The checker re-runs the notebook's test on the same
    sets (``concept_images("ink", 50)``, ``random_images(50, seed=i)`` for i < 20, 100 melanomas)."""
    from ..concepts import LAYERS, class_images, concept_images, random_images, summary, tcav_experiment
    from ..data import MEL
    from ..models import load_dermnet

    early = _bool_answers("ink", {"shortcut_uses_ink": shortcut_uses_ink, "debiased_uses_ink": debiased_uses_ink})
    if early is not None:
        return early
    ink = {"ink": concept_images("ink", 50)}
    randoms = [random_images(50, seed=i) for i in range(20)]
    mel = class_images("mel", 100)
    truth, facts = [], []
    for name in ("shortcut", "debiased"):
        res = tcav_experiment(load_dermnet(name), LAYERS, ink, randoms, mel, MEL, n_tests=21)
        rows = {layer: summary(res[("ink", layer)]) for layer in LAYERS}
        truth.append(any(res[("ink", layer)]["significant"] for layer in LAYERS))
        facts.append(f"{name}: " + "; ".join(f"{layer} TCAV {r['TCAV']}, p {r['p (Bonferroni)']}"
                                            for layer, r in rows.items()))
    answer = (shortcut_uses_ink, debiased_uses_ink)
    detail = " | ".join(facts)
    if answer == tuple(truth):
        return CheckResult(True, "ink", f"right ({detail}). A significant score near 0 counts: the mel logit "
                                        "falls along the ink direction. Whether the *decision* uses ink is a question "
                                        "for an intervention")
    wrong = [n for n, a, t in zip(("shortcut_uses_ink", "debiased_uses_ink"), answer, truth) if a != t]
    return CheckResult(False, "ink", f"not quite ({', '.join(wrong)}): run the test yourself (ink against the 20 "
                                     "random sets at each layer, 21 tests for Bonferroni) and read its p-values")
