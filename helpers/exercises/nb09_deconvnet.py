"""Checkers for notebook 09 (notebooks/09_deconvnet.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, _bool_answers, compare


def check_conv_transpose(your_fn) -> CheckResult:
    """Notebook 09, exercise 1: ``your_fn(y, weight, stride, padding)`` -> the transposed
    convolution ``F.conv_transpose2d(y, weight, stride=stride, padding=padding)``, by hand.
    Checked on three settings (stride 1 and 2, with and without padding) with a non-symmetric
    kernel and different numbers of input and output channels."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 3, 5, 5, generator=g)
    weight = torch.randn(3, 4, 3, 3, generator=g)  # [C_in, C_out, k, k]
    for stride, padding in ((1, 0), (2, 0), (2, 1)):
        name = f"conv_transpose (stride {stride}, padding {padding})"
        try:
            yours = your_fn(y.clone(), weight.clone(), stride, padding)
        except Exception as err:  # the learner's code: report, do not crash the notebook
            return CheckResult(False, name, f"your function raised {type(err).__name__}: {err}")
        ours = F.conv_transpose2d(y, weight, stride=stride, padding=padding)
        if isinstance(yours, torch.Tensor) and yours.dim() == 4:
            h = yours.shape[-1]
            if h < y.shape[-1]:
                return CheckResult(False, name, f"{h}x{h} output from a {y.shape[-1]}x{y.shape[-1]} input: that "
                                                "shrinks like a convolution; a transposed convolution spreads each "
                                                "input pixel over a k x k patch of the output, and grows")
            if yours.shape[1] != ours.shape[1]:
                return CheckResult(False, name, f"{yours.shape[1]} output channels, expected {ours.shape[1]}: the "
                                                "weight of a transposed convolution is [C_in, C_out, k, k]")
            if h == ours.shape[-1] + 2 * padding and padding:
                return CheckResult(False, name, f"{h}x{h} output, expected {ours.shape[-1]}: cut `padding` rows "
                                                "and columns from each side of the full output")
            if h == (y.shape[-1] - 1) + 3 - 2 * padding and stride > 1:
                return CheckResult(False, name, "the output has the size of a stride-1 result: input pixel (i, j) "
                                                "places its kernel at (i * stride, j * stride)")
            if yours.shape == ours.shape and stride > 1:
                full = F.conv_transpose2d(y, weight)  # every kernel placed at (i, j), not (i * s, j * s)
                unstrided = torch.zeros(*ours.shape[:2], ours.shape[2] + 2 * padding, ours.shape[3] + 2 * padding)
                unstrided[:, :, :full.shape[2], :full.shape[3]] = full
                unstrided = unstrided[:, :, padding:unstrided.shape[2] - padding, padding:unstrided.shape[3] - padding]
                if torch.allclose(yours.double(), unstrided.double(), atol=1e-4):
                    return CheckResult(False, name, "input pixel (i, j) places its kernel at (i, j): with a stride it "
                                                    "belongs at (i * stride, j * stride)")
            if yours.shape == ours.shape:
                flipped = F.conv_transpose2d(y, weight.flip(2, 3), stride=stride, padding=padding)
                if torch.allclose(yours.double(), flipped.double(), atol=1e-4):
                    return CheckResult(False, name, "your kernel is flipped: weight[:, :, u, v] lands at offset "
                                                    "(u, v) from the input pixel's position, unflipped")
        result = compare(yours, ours, name=name, atol=1e-4, rtol=1e-4)
        if not result:
            return result
    return CheckResult(True, "conv_transpose", "matches F.conv_transpose2d at stride 1 and 2, with and without "
                                               "padding (to within atol=1e-4)")


def check_deconvnet_class_question(deconvnet_tells_the_class: bool) -> CheckResult:
    """Notebook 09, exercise 2, answered from the data: on 32 clinic-B images not used in the
    notebook, is the shortcut model's deconvnet map for mel as different from its maps for the other
    classes as Grad-CAM's is? Measured as the mean Spearman rank correlation between the mel map
    and each other class's map: a method tells the classes apart when it is well below 0.5."""
    from ..cam import grad_cam
    from ..data import MEL, make_dataset
    from ..deconv import deconvnet
    from ..metrics import rank_correlation
    from ..models import load_dermnet
    from ..report import fmt
    from ..train import TEST_SEEDS

    early = _bool_answers("deconvnet and the class", {"deconvnet_tells_the_class": deconvnet_tells_the_class})
    if early is not None:
        return early
    model = load_dermnet("shortcut")
    x = make_dataset(32, clinic="B", seed=TEST_SEEDS["B"] + 29).images
    others = [c for c in range(model.fc.out_features) if c != MEL]
    deconv = {c: deconvnet(model, x, c).abs().sum(1) for c in [MEL, *others]}
    cams = {c: grad_cam(model, x, c, relu=False)[:, 0] for c in [MEL, *others]}
    r_deconv = torch.stack([rank_correlation(deconv[MEL], deconv[c]) for c in others]).mean().item()
    r_cam = torch.stack([rank_correlation(cams[MEL], cams[c]) for c in others]).mean().item()
    truth = r_deconv < 0.5
    facts = (f"mel vs the other classes, mean rank correlation: deconvnet {fmt(r_deconv, 2, atol=1e-3)}, "
             f"Grad-CAM {fmt(r_cam, 2, atol=1e-3)}")
    if deconvnet_tells_the_class == truth:
        return CheckResult(True, "deconvnet and the class", f"right: {facts}" + (
            "" if truth else "; the deconvnet map is mostly the same picture whatever the class"))
    return CheckResult(False, "deconvnet and the class",
                       "not quite: measure it (the mean rank correlation between the mel map and each other class's "
                       "map, for the deconvnet and for Grad-CAM)")
