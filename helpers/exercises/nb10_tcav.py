"""Checkers for notebook 10 (notebooks/10_tcav.ipynb)."""

from __future__ import annotations

from functools import lru_cache

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


@lru_cache(maxsize=1)
def _ink_facts() -> tuple:
    """What check_ink_question measures, once per process: (truth, detail)."""
    from ..concepts import LAYERS, class_images, concept_images, random_images, summary, tcav_experiment
    from ..data import MEL
    from ..models import load_dermnet
    from ..train import TEST_SEEDS, artifact_intervention, intervention_pair

    model = load_dermnet("shortcut")
    res = tcav_experiment(model, LAYERS, {"ink": concept_images("ink", 50, seed=1)},
                          [random_images(50, seed=i) for i in range(20)], class_images("mel", 100, seed=1),
                          MEL, n_tests=21)
    rows = {layer: summary(res[("ink", layer)]) for layer in LAYERS}
    flips = artifact_intervention(model, "ink", MEL, pair=intervention_pair(500, seed=TEST_SEEDS["intervention"] + 31,
                                                                             artifact="ink"))
    truth = {"ink_significant": any(res[("ink", layer)]["significant"] for layer in LAYERS),
             "ink_changes_decision": flips["add"] > 0.05}
    detail = ("TCAV: " + "; ".join(f"{layer} {r['TCAV']}, p {r['p (Bonferroni)']}" for layer, r in rows.items())
              + f" | adding ink turns {flips['add']:.3f} of {flips['add_n']} correct non-melanomas into mel")
    return truth, detail


def check_ink_question(ink_significant, ink_changes_decision) -> CheckResult:
    """Notebook 10, exercise 2: does the shortcut model *use* ink? Two measurements, re-run here on
    images the notebook did not use:

    - ``ink_significant``: is ink TCAV-significant for mel at any of layer2-4 (20 CAVs against the
      notebook's 20 random sets, Bonferroni over the notebook's 21 tests)? Fresh concept and class
      images: ``concept_images("ink", 50, seed=1)``, ``class_images("mel", 100, seed=1)``.
    - ``ink_changes_decision``: does adding ink to 500 fresh clinic-B lesions turn more than 5% of
      the non-melanomas it classifies right into mel (notebook 15's bar for "uses")?"""
    answers = {"ink_significant": ink_significant, "ink_changes_decision": ink_changes_decision}
    early = _bool_answers("ink", answers)
    if early is not None:
        return early
    truth, detail = _ink_facts()
    wrong = [key for key in answers if answers[key] != truth[key]]
    if wrong:
        how = {"ink_significant": "run tcav_experiment for ink at layer2-4 and read the Bonferroni p-values",
               "ink_changes_decision": "run artifact_intervention(model, \"ink\", MEL, n=500) and read its add rate"}
        return CheckResult(False, "ink", f"not quite ({', '.join(wrong)}): " + "; ".join(how[k] for k in wrong))
    if truth["ink_significant"] and not truth["ink_changes_decision"]:
        lesson = ("significant, yet the decision does not move: TCAV says the logit's gradient has a component "
                  "along the ink direction, and only the intervention says whether the decision depends on ink")
    elif truth["ink_significant"] == truth["ink_changes_decision"]:
        lesson = "TCAV and the intervention agree here"
    else:
        lesson = "the intervention finds a use that TCAV missed"
    return CheckResult(True, "ink", f"right ({detail}): {lesson}")
