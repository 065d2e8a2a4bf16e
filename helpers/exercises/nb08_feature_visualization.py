"""Checkers for notebook 08 (notebooks/08_feature_visualization.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, _bool_answers, compare


def check_fft_scale(your_fn, size: int = 16) -> CheckResult:
    """Notebook 08, exercise 1: ``your_fn(size) -> [size, size // 2 + 1]``, the 1/f weights of the
    rfft2 frequencies, the zero frequency capped at 1/size."""
    from ..featurevis import fft_scale

    try:
        yours = your_fn(size)
    except Exception as err:  # the learner's code: report, do not crash the notebook
        return CheckResult(False, "fft_scale", f"your function raised {type(err).__name__}: {err}")
    ours = fft_scale(size).double()
    if isinstance(yours, torch.Tensor) and yours.shape == ours.shape:
        yours = yours.detach().double()
        if not torch.isfinite(yours).all():
            return CheckResult(False, "fft_scale", "infinite weight at the zero frequency: cap the frequency at "
                                                   "1/size before dividing (.clamp_min(1 / size))")
        fx_wrong = torch.fft.fftfreq(size)[None, : size // 2 + 1].double()
        fy = torch.fft.fftfreq(size)[:, None].double()
        slips = {
            "your x frequencies come from fftfreq, whose last rfft2 entry is -1/2: use rfftfreq (the same "
            "magnitudes here, so check the sign convention if this fires)":
                1 / (fx_wrong ** 2 + fy ** 2).sqrt().clamp_min(1 / size),
            "you weighted by 1/f^2: the course (and lucid) use 1/f": 1 / (torch.fft.rfftfreq(size)[None].double() ** 2
                                                                     + fy ** 2).clamp_min(1 / size ** 2),
        }
        for hint, wrong in slips.items():
            if torch.allclose(yours, wrong) and not torch.allclose(wrong, ours):
                return CheckResult(False, "fft_scale", hint, float((yours - ours).abs().max()))
    return compare(yours, ours, name="fft_scale", atol=1e-6, rtol=1e-6)


def check_ruler_channels_question(answer: bool) -> CheckResult:
    """Notebook 08, exercise 2, answered from the data: on 1,000 clinic-B images not used in the
    notebook, do the top-9 images of the shortcut model's top melanoma channel (by fc weight x mean
    activation on clinic-A melanomas) mostly have a ruler (5 or more, where 3 would be the base
    rate), several of them (3 or more) in lesions that are not melanomas?"""
    from ..data import MEL, make_dataset
    from ..featurevis import top_activating
    from ..hooks import capture
    from ..models import load_dermnet
    from ..train import TEST_SEEDS

    early = _bool_answers("ruler channels", {"fires_on_rulers_in_other_classes": answer})
    if early is not None:
        return early
    model = load_dermnet("shortcut")
    test_a = make_dataset(1000, clinic="A", seed=TEST_SEEDS["A"])
    with capture(model, "layer4") as rec, torch.no_grad():
        model(test_a.images[test_a.labels == MEL])
    top = int((model.fc.weight[MEL].detach() * rec.activation.mean((0, 2, 3))).argmax())
    other = make_dataset(1000, clinic="B", seed=TEST_SEEDS["B"] + 17)
    idx = top_activating(model, "layer4", top, other.images, k=9)[0]
    rulers = int(other.has_ruler[idx].sum())
    n = int(((other.labels[idx] != MEL) & other.has_ruler[idx]).sum())
    truth = rulers >= 5 and n >= 3  # (about 30% of clinic-B images have a ruler, 1 in 7 is a melanoma)
    facts = f"channel {top}: {rulers} of its top 9 images have a ruler, {n} of them not melanomas"
    if answer == truth:
        return CheckResult(True, "ruler channels", f"right: {facts}" + (
            "; the channel answers the ruler, not the lesion" if truth else ""))
    return CheckResult(False, "ruler channels", "not quite: run the search yourself (top_activating on the channel, "
                                                "then count the top 9 images that have a ruler and are not melanomas)")
