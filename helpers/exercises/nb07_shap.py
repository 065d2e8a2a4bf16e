"""Checkers for notebook 07 (notebooks/07_shap.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, _bool_answers, _call, _slip, _verdict, _with_artifact, compare, run_learner


def check_shapley(your_fn) -> CheckResult:
    """Notebook 07: ``your_fn(v, k) -> [k]``, exact Shapley values from a table of coalition values
    ``v`` [2**k] where coalition S has index sum of 2**j over its players j."""
    import math

    g = torch.Generator().manual_seed(0)
    k = 5
    v = torch.randn(2 ** k, generator=g, dtype=torch.float64) * 3
    yours = _call(your_fn, "shapley", v.clone(), k)
    if isinstance(yours, CheckResult):
        return yours
    code = torch.arange(2 ** k)
    size = torch.tensor([bin(c).count("1") for c in range(2 ** k)])

    def shapley(weight):
        out = torch.zeros(k, dtype=torch.float64)
        for j in range(k):
            without = code[(code >> j) & 1 == 0]
            out[j] = sum(weight(int(size[s])) * (v[s | (1 << j)] - v[s]) for s in without)
        return out

    ours = shapley(lambda s: math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k))
    if yours.shape == ours.shape:
        slips = {
            "you averaged the marginal contributions with equal weight: a coalition of size s gets weight "
            "s! (k - s - 1)! / k!": shapley(lambda s: 1 / 2 ** (k - 1)),
            "your weights are 1 / C(k-1, s): divide once more by k (all sizes together must weigh 1)":
                shapley(lambda s: 1 / math.comb(k - 1, s)),
            "your players are numbered from the other end: player j is bit j, (index >> j) & 1":
                ours.flip(0) if not torch.allclose(ours.flip(0), ours) else ours + 1,
        }
        for hint, wrong in slips.items():
            if torch.allclose(yours, wrong, atol=1e-9, rtol=1e-7):
                return CheckResult(False, "shapley", hint, float((yours - ours).abs().max()))
        if abs(float(yours.sum()) - float(v[-1] - v[0])) > 1e-6:
            result = compare(yours, ours, name="shapley", atol=1e-9, rtol=1e-7)
            result.message += f"; efficiency fails: your values sum to {float(yours.sum()):.4f}, " \
                              f"v(all) - v(none) = {float(v[-1] - v[0]):.4f}"
            return result
    return compare(yours, ours, name="shapley", atol=1e-9, rtol=1e-7)


def check_shap_ruler_question(shortcut_over_one_logit, debiased_over_one_logit) -> CheckResult:
    """Notebook 07, exercise 2, answered from the data: on clinic-B images with a ruler, 16 SLIC
    segments, KernelSHAP for melanoma (100 samples, mean-colour baseline): is the Shapley value of
    the segment that is most ruler worth more than one logit on average, for each model? (the first
    8 ruler images of ``make_dataset(96, clinic="B", seed=777_003)``)"""
    from ..data import MEL
    from ..models import load_dermnet
    from ..perturbation import kernel_shap, superpixels

    name = "SHAP ruler question"
    answers = {"shortcut_over_one_logit": shortcut_over_one_logit, "debiased_over_one_logit": debiased_over_one_logit}
    early = _bool_answers(name, answers)
    if early is not None:
        return early
    x, m = _with_artifact("ruler", 8, 777_003)
    segs = superpixels(x, n_segments=16)
    k = int(segs.max()) + 1
    part = torch.stack([torch.bincount(s.flatten(), weights=r.flatten().float(), minlength=k)
                        / torch.bincount(s.flatten(), minlength=k).clamp_min(1) for s, r in zip(segs, m)])
    ruler_seg = part.argmax(1, keepdim=True)
    value, truth = {}, {}
    for model_name in ("shortcut", "debiased"):
        phi = kernel_shap(load_dermnet(model_name), x, MEL, segs, n_samples=100, baseline="mean")
        value[model_name] = phi.gather(1, ruler_seg)[:, 0]
        truth[f"{model_name}_over_one_logit"] = float(value[model_name].mean()) > 1
    detail = ", ".join(f"{n}: mean {float(v.mean()):+.2f} logits (from {float(v.min()):+.2f} to {float(v.max()):+.2f})"
                       for n, v in value.items())
    return _verdict(name, answers, truth, f"the ruler segment's Shapley value, {detail}",
                    "The shortcut model's ruler segment is worth about two logits of melanoma in every image; "
                    "the debiased model's is worth nothing either way")


def check_coalition_sizes(your_fn) -> CheckResult:
    """Notebook 07, exercise 3: ``your_fn(k) -> [k]``, the probability KernelSHAP's sampler gives a
    coalition size s = 0 .. k-1: proportional to (k - 1) / (s (k - s)), 0 for s = 0 (the empty and
    the full coalition are added separately). Compared with ``shapley_kernel_sizes`` for several k."""
    import math

    from ..perturbation import shapley_kernel_sizes

    name = "coalition_sizes"
    for k in (3, 6, 14):
        yours, verdict = run_learner(name, your_fn, k)
        if verdict is not None:
            return verdict
        s = torch.arange(1, k, dtype=torch.float64)
        raw = torch.cat([torch.zeros(1, dtype=torch.float64), (k - 1) / (s * (k - s))])
        per_coalition = torch.cat([torch.zeros(1, dtype=torch.float64),
                                   (k - 1) / (torch.tensor([math.comb(k, int(i)) for i in s]) * s * (k - s))])
        slips = {
            "your probabilities do not sum to 1: divide by their sum": raw,
            "you used the Shapley kernel's weight of one coalition, (k - 1) / (C(k, s) s (k - s)): the sampler "
            "draws a size first, and all C(k, s) coalitions of that size share it, so drop the C(k, s)":
                per_coalition / per_coalition.sum(),
            "every size is equally likely in yours: the kernel favours small and large coalitions, "
            "(k - 1) / (s (k - s))": torch.cat([torch.zeros(1, dtype=torch.float64), torch.full((k - 1,), 1 / (k - 1),
                                                                                                dtype=torch.float64)]),
        }
        if isinstance(yours, torch.Tensor) and yours.shape == (k,) and not torch.isfinite(yours.double()).all():
            return CheckResult(False, name, f"NaN or infinite values for k = {k}: s = 0 divides by zero; its "
                                            "probability is 0 (the empty coalition is added separately)")
        result = _slip(name, yours, shapley_kernel_sizes(k).double(), slips, atol=1e-6, rtol=1e-5)
        if not result.passed:
            result.message = f"k = {k}: {result.message}"
            return result
    return CheckResult(True, name, "matches shapley_kernel_sizes for k = 3, 6, 14 (to within atol=1e-6)")
