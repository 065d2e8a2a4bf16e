"""Checkers for notebook 15 (notebooks/15_debugging_playbook.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, not_done, run_learner


def _flip_pair(n: int = 400, seed: int = 915_001, artifact: str = "ink"):
    """Fresh clinic-B lesions drawn without and with ``artifact`` (seeds no notebook prints)."""
    from ..train import intervention_pair
    return intervention_pair(n, seed=seed, clinic="B", artifact=artifact)


def check_flip_rate(your_fn) -> CheckResult:
    """Notebook 15, exercise 1: ``your_fn(model, off_images, on_images, labels, target)`` returns the
    share of the images of other classes, classified correctly without the artifact, that the
    model calls ``target`` with it (``helpers.train.artifact_intervention``'s "add"). Checked on
    fresh lesions, once with their true labels and once with a fifth of the other classes' labels
    changed, so that "classified correctly without the artifact" matters."""
    from ..data import MEL, NV
    from ..models import load_dermnet
    from ..train import predict

    name = "flip_rate"
    model = load_dermnet("clinic_c")
    off, on = _flip_pair()
    p_off, p_on = predict(model, off.images), predict(model, on.images)
    relabelled = off.labels.clone()
    change = (relabelled != MEL) & (torch.arange(len(relabelled)) % 5 == 0)
    relabelled[change] = torch.where(relabelled[change] == NV, 0, NV)  # another class, never mel
    results = []
    for labels in (off.labels, relabelled):
        yours, verdict = run_learner(name, your_fn, model, off.images.clone(), on.images.clone(), labels.clone(), MEL)
        if verdict is not None:
            return verdict
        try:
            yours = float(yours)
        except (TypeError, ValueError):
            return CheckResult(False, name, f"expected a number (a share in [0, 1]), got {type(yours).__name__}")
        base = (labels != MEL) & (p_off == labels)
        ours = (p_on[base] == MEL).float().mean().item()
        others = labels != MEL
        slips = {
            "you counted every image of another class: count only those the model gets right without "
            "the artifact": (p_on[others] == MEL).float().mean().item(),
            "you counted any change of prediction: count only the changes to the target class":
                (p_on[base] != p_off[base]).float().mean().item(),
            "you included the target class itself: its images cannot flip to it":
                (p_on[p_off == labels] == MEL).float().mean().item(),
        }
        results.append((yours, ours, slips))
    diff = max(abs(y - o) for y, o, _ in results)
    if diff < 1e-9:
        return CheckResult(True, name, f"right: adding ink turns {results[0][1]:.2f} of the correct non-melanomas "
                                       "into melanoma", diff)
    for yours, ours, slips in results:
        for hint, value in slips.items():
            if abs(yours - value) < 1e-9 and abs(value - ours) > 1e-9:
                return CheckResult(False, name, hint, diff)
    yours, ours, _ = max(results, key=lambda r: abs(r[0] - r[1]))
    return CheckResult(False, name, f"got {yours:.4f}, expected {ours:.4f}", diff)


def check_shortcut_question(artifact, stands_for) -> CheckResult:
    """Notebook 15, exercise 2, answered from the data: which artifact does clinic C's model use as a
    shortcut, and for which class? Measured on fresh clinic-B lesions with the ruler and with the ink
    painted on: the artifact that flips the most correct predictions, and the class they flip to."""
    from ..data import ARTIFACTS, CLASSES
    from ..models import load_dermnet
    from ..train import predict

    name = "shortcut question"
    if artifact is None or stands_for is None:
        return not_done(name, "set artifact to one of " + ", ".join(map(repr, ARTIFACTS))
                        + " and stands_for to a class name, from your own measurement")
    if artifact not in ARTIFACTS:
        return CheckResult(False, name, f"artifact must be one of {ARTIFACTS}, got {artifact!r}")
    if stands_for not in CLASSES:
        return CheckResult(False, name, f"stands_for must be one of {CLASSES}, got {stands_for!r}")
    model = load_dermnet("clinic_c")
    facts, rates, goes_to = [], {}, {}
    for art in ("ruler", "ink"):
        off, on = _flip_pair(artifact=art)
        p_off, p_on = predict(model, off.images), predict(model, on.images)
        changed = (p_off == off.labels) & (p_on != p_off)
        rates[art] = changed.float().mean().item()
        goes_to[art] = CLASSES[int(torch.bincount(p_on[changed], minlength=len(CLASSES)).argmax())]
        facts.append(f"painting the {art} on changes {rates[art]:.2f} of the correct predictions"
                     + (f", mostly to {goes_to[art]}" if changed.any() else ""))
    truth = max(rates, key=rates.get)
    detail = "; ".join(facts)
    if artifact == truth and stands_for == goes_to[truth]:
        return CheckResult(True, name, f"right ({detail})")
    return CheckResult(False, name, f"not quite: {detail}")
