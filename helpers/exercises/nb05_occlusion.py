"""Checkers for notebook 05 (notebooks/05_occlusion.ipynb)."""

from __future__ import annotations

import torch

from .core import (
    CheckResult,
    _bool_answers,
    _dermnet_batch,
    _verdict,
    _with_artifact,
    check_method,
    not_a_tensor,
    run_learner,
)


def check_occlusion(your_fn, window: int = 16, stride: int = 8) -> CheckResult:
    """Notebook 05: ``your_fn(model, x, target, window, stride) -> [B, 1, H, W]``, occlusion with a
    black patch: the average score drop over the windows covering each pixel."""
    from ..perturbation import occlusion, occlusion_masks

    model, x, t = _dermnet_batch(2, seed=5)
    result = check_method(your_fn, occlusion, model, x, t, name="occlusion", atol=1e-4, rtol=1e-4,
                          window=window, stride=stride)
    if result.passed:
        return result
    try:
        yours = your_fn(model, x, t, window=window, stride=stride)
    except Exception:
        return result
    if not isinstance(yours, torch.Tensor) or yours.shape != (x.shape[0], 1, *x.shape[-2:]):
        return result
    yours = yours.detach()
    masks = occlusion_masks(x.shape[-2:], (window, window), (stride, stride)).float()
    with torch.no_grad():
        full = model(x).gather(1, t[:, None])[:, 0]
        occluded = torch.where(masks[None, :, None].bool(), torch.zeros(()), x[:, None])  # [B, P, C, H, W]
        logits = model(occluded.flatten(0, 1)).view(x.shape[0], masks.shape[0], -1)
    drops = full[:, None] - logits.gather(2, t[:, None, None].expand(-1, masks.shape[0], 1))[..., 0]
    flat = masks.flatten(1)
    paint = lambda d: (d @ flat).view(x.shape[0], 1, *x.shape[-2:])  # noqa: E731
    probs = torch.softmax(model(x), 1).gather(1, t[:, None])[:, 0].detach()
    with torch.no_grad():
        p_occ = torch.softmax(logits, 2).gather(2, t[:, None, None].expand(-1, masks.shape[0], 1))[..., 0]
    slips = {
        "you summed the drops of the windows covering each pixel: divide by how many windows cover it "
        "(pixels near the edges are covered by fewer)": paint(drops),
        "you used probabilities: occlusion here explains the logit, as the other methods of the course do":
            paint(probs[:, None] - p_occ) / flat.sum(0).view(1, 1, *x.shape[-2:]),
    }
    for hint, wrong in slips.items():
        if torch.allclose(yours, wrong, atol=1e-4, rtol=1e-4):
            diff = float((yours - occlusion(model, x, t, window, stride)).abs().max())
            return CheckResult(False, "occlusion", hint, diff)
    return result


def check_occlusion_ink_question(ruler_above_share, ink_above_share) -> CheckResult:
    """Notebook 05, exercise 2, answered from the data: explaining melanoma on clinic-B images with
    the shortcut model, occlusion (window 16, stride 8, mean-colour patch): does the map put more
    than the area share on the ruler? On the ink marking? (the first 8 images with each of
    ``make_dataset(96, clinic="B", seed=777_003)``)"""
    from ..data import MEL
    from ..metrics import mask_mass, mask_share
    from ..models import load_dermnet
    from ..perturbation import occlusion

    name = "occlusion ink question"
    answers = {"ruler_above_share": ruler_above_share, "ink_above_share": ink_above_share}
    early = _bool_answers(name, answers)
    if early is not None:
        return early
    model = load_dermnet("shortcut")
    ratio = {}
    for artifact in ("ruler", "ink"):
        x, m = _with_artifact(artifact, 8, 777_003)
        attr = occlusion(model, x, MEL, window=16, stride=8, baseline="mean")
        ratio[artifact] = float(mask_mass(attr, m).nanmean() / mask_share(m).mean())
    truth = {"ruler_above_share": ratio["ruler"] > 1, "ink_above_share": ratio["ink"] > 1}
    detail = f"occlusion mass / area share: ruler {ratio['ruler']:.2f}, ink {ratio['ink']:.2f}"
    return _verdict(name, answers, truth, detail,
                    "Hiding the ruler costs the melanoma logit far more than its size; hiding the ink costs "
                    "less than its size. (A 16-pixel window is wider than the ink line: the drop it measures "
                    "belongs to the skin and lesion under the window too)")


def check_occlusion_masks(your_fn) -> CheckResult:
    """Notebook 05, exercise 3: ``your_fn(size, window, stride) -> [P, size, size]`` bool, the window
    positions of occlusion on a square image, row by row, stride apart, the last window in each
    direction cropped at the far edge; compared with ``helpers.perturbation.occlusion_masks``."""
    from ..perturbation import occlusion_masks

    name = "occlusion_masks"
    for size, window, stride in ((64, 16, 8), (64, 12, 8), (10, 4, 3)):
        case = f"size {size}, window {window}, stride {stride}"
        yours, verdict = run_learner(name, your_fn, size, window, stride)
        if verdict is not None:
            return verdict
        ours = occlusion_masks((size, size), (window, window), (stride, stride))
        if not isinstance(yours, torch.Tensor):
            return not_a_tensor(name, yours, prefix=f"{case}: ")
        yours = yours.bool()
        if yours.dim() != 3 or yours.shape[1:] != ours.shape[1:]:
            return CheckResult(False, name, f"{case}: shape {tuple(yours.shape)}, expected [P, {size}, {size}]")
        if not yours.any(0).all():
            return CheckResult(False, name, f"{case}: some pixels are never covered (the far edge?): add one more "
                                            "window at the end, cropped at the image's edge")
        if yours.shape[0] != ours.shape[0]:
            return CheckResult(False, name, f"{case}: {yours.shape[0]} windows, expected {ours.shape[0]} "
                                            f"(ceil((size - window) / stride) + 1 per direction)")
        if torch.equal(yours, ours):
            continue
        if torch.equal(yours, ours.transpose(1, 2)):
            return CheckResult(False, name, f"{case}: your windows go column by column: number them row by row")
        if torch.equal(yours.sum((1, 2)).sort().values, ours.sum((1, 2)).sort().values):
            return CheckResult(False, name, f"{case}: the right windows, in another order: row by row, left to right")
        return CheckResult(False, name, f"{case}: different windows (the first differs at position "
                                        f"{int((yours != ours).flatten(1).any(1).nonzero()[0, 0])})")
    return CheckResult(True, name, "matches occlusion_masks for (64, 16, 8), (64, 12, 8) and (10, 4, 3)")
