"""Checkers for notebook 12 (notebooks/12_sanity_checks.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, run_learner


def check_randomized(your_fn) -> CheckResult:
    """Notebook 12, exercise 1: ``your_fn(model, layer)`` returns a copy of ``model`` whose ``layer``
    and every top-level layer after it are re-initialized; ``model`` itself is left as it was."""
    from ..models import load_dermnet

    name = "randomized"
    model = load_dermnet("shortcut")
    top = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for layer in ("layer3", "fc", "layer1"):
        out, verdict = run_learner(name, your_fn, model, layer)
        if verdict is not None:
            return verdict
        if not isinstance(out, torch.nn.Module):
            return CheckResult(False, name, f"expected a model (an nn.Module), got {type(out).__name__}")
        if out is model or any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
            return CheckResult(False, name, "your function changed the caller's model: re-initialize a copy "
                                            "(copy.deepcopy(model)) and return it")
        new = out.state_dict()
        changed = [n for n in top if any(not torch.equal(before[k], new[k]) for k in before
                                         if k.startswith(n + ".") and "num_batches" not in k)]
        want = top[top.index(layer):]
        if changed == want:
            continue
        if not changed:
            hint = ("nothing was re-initialized: call reset_parameters() on every module inside the layers "
                    "(layer.modules() reaches the convolutions inside the blocks; children() does not)")
        elif changed == [layer]:
            hint = f"only {layer} itself was re-initialized: a cascade also re-initializes every layer above it"
        elif changed == top[:top.index(layer) + 1]:
            hint = "you went the wrong way: the cascade starts at the output (fc) and goes down to the layer named"
        else:
            hint = f"re-initialized {changed}, expected {want}"
        return CheckResult(False, name, f"{hint} (layer={layer!r})")
    return CheckResult(True, name, "re-initializes the layer and everything above it, on a copy "
                                   "(checked for layer3, fc and layer1)")


def check_sanity_question(still_similar) -> CheckResult:
    """Notebook 12, exercise 2, answered from the data: with fc, layer4 and layer3 re-initialized,
    which of saliency, Grad-CAM and guided backprop keep a mean Spearman (abs) above 0.6 with the
    trained shortcut model's maps, on ten fresh clinic-B images with a ruler?"""
    from ..cam import grad_cam, guided_backprop
    from ..data import make_dataset
    from ..gradients import saliency
    from ..models import load_dermnet
    from ..sanity import randomization_test
    from ..train import TEST_SEEDS, logits

    name = "sanity question"
    choices = {"saliency", "Grad-CAM", "guided backprop"}
    if not isinstance(still_similar, set | frozenset | list | tuple) or not set(still_similar) <= choices:
        return CheckResult(False, name, f"answer with a set of names from {sorted(choices)}, got {still_similar!r}")
    model = load_dermnet("shortcut")
    x = make_dataset(10, clinic="B", seed=TEST_SEEDS["B"] + 1212, ruler=True).images
    t = logits(model, x).argmax(1)
    methods = {"saliency": lambda m, x, t: saliency(m, x, t, abs=False),
               "Grad-CAM": lambda m, x, t: grad_cam(m, x, t, "layer4"), "guided backprop": guided_backprop}
    sims = randomization_test(model, methods, x, t, steps=["layer3"])["similarity"]["layer3"]
    means = {n: float(s["Spearman (abs)"].nan_to_num(0.0).mean()) for n, s in sims.items()}  # all-zero map: 0
    truth = {n for n, v in means.items() if v > 0.6}
    detail = ", ".join(f"{n} {v:.2f}" for n, v in means.items())
    if set(still_similar) == truth:
        return CheckResult(True, name, f"right ({detail}): only guided backprop keeps its map with the top of the "
                                       "network random; it redraws the image's edges" if truth == {"guided backprop"}
                           else f"right ({detail})")
    return CheckResult(False, name, f"not quite: mean Spearman (abs) on ten fresh images: {detail}")
