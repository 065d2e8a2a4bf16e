"""Checkers for notebook 02 (notebooks/02_smoothgrad.ipynb)."""

from __future__ import annotations

import torch

from .core import (
    CheckResult,
    _bool_answers,
    _dermnet_batch,
    _gradient_of,
    _slip,
    _verdict,
    _with_artifact,
    compare,
    run_learner,
)


def check_smoothgrad(your_fn, n_samples: int = 8, noise_level: float = 0.15) -> CheckResult:
    """Notebook 02: ``your_fn(model, x, target, noise)`` with ``noise`` of shape [n, B, C, H, W] already
    scaled to sigma; return the mean gradient over the n noisy copies (SmoothGrad), shaped like x."""
    from ..gradients import smoothgrad

    model, x, t = _dermnet_batch(3, seed=1)
    seed = 11
    ours = smoothgrad(model, x, t, n_samples=n_samples, noise_level=noise_level, batch_size=10**6,
                      generator=torch.Generator().manual_seed(seed))
    # the same noise our helper drew: image by image, n_samples each
    raw = torch.randn((x.shape[0] * n_samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed))
    sigma = noise_level * (x.amax((1, 2, 3)) - x.amin((1, 2, 3)))
    noise = (raw.view(x.shape[0], n_samples, *x.shape[1:]) * sigma.view(-1, 1, 1, 1, 1)).transpose(0, 1)
    noise_before = noise.clone()
    try:
        yours = your_fn(model, x.clone(), t, noise)
    except Exception as err:
        return CheckResult(False, "smoothgrad", f"your function raised {type(err).__name__}: {err}")
    if not torch.equal(noise, noise_before):
        return CheckResult(False, "smoothgrad", "your function changed the noise tensor in place")
    if isinstance(yours, torch.Tensor) and yours.shape == x.shape:
        grads = torch.stack([_gradient_of(model, x + noise[k], t, lambda o: o) for k in range(n_samples)])
        if torch.allclose(yours.detach(), grads.abs().mean(0), atol=1e-6):
            return CheckResult(False, "smoothgrad", "you averaged |gradient|: SmoothGrad averages the signed "
                                                    "gradients (take abs only to display)")
        if torch.allclose(yours.detach(), grads.sum(0), atol=1e-5):
            return CheckResult(False, "smoothgrad", "you summed the gradients: divide by the number of samples")
    return compare(yours, ours, name="smoothgrad", atol=1e-6, rtol=1e-4)


def check_smoothgrad_ruler_question(shortcut_above_share, debiased_above_share) -> CheckResult:
    """Notebook 02, exercise 2, answered from the data: on clinic-B images with a ruler, does each
    model's SmoothGrad map (5% noise, 10 samples, for its own prediction) put more than the ruler's
    area share of its mass on the ruler? (the ruler images of ``make_dataset(64, clinic="B",
    seed=202_001)``, 11 of them; saliency's masses are given for comparison)"""
    from ..gradients import saliency, smoothgrad
    from ..metrics import mask_mass, mask_share
    from ..models import load_dermnet
    from ..train import logits

    name = "SmoothGrad ruler question"
    answers = {"shortcut_above_share": shortcut_above_share, "debiased_above_share": debiased_above_share}
    early = _bool_answers(name, answers)
    if early is not None:
        return early
    x, m = _with_artifact("ruler", 16, 202_001, count=64)
    share = float(mask_share(m).mean())
    facts, truth = [], {}
    for model_name in ("shortcut", "debiased"):
        model = load_dermnet(model_name)
        t = logits(model, x).argmax(1)
        smooth = float(mask_mass(smoothgrad(model, x, t, n_samples=10, noise_level=0.05,
                                            generator=torch.Generator().manual_seed(0)), m).mean())
        plain = float(mask_mass(saliency(model, x, t), m).mean())
        truth[f"{model_name}_above_share"] = smooth > share
        facts.append(f"{model_name} {smooth:.3f} (saliency {plain:.3f})")
    detail = f"SmoothGrad's ruler mass: {', '.join(facts)}; the ruler's area share {share:.3f}"
    return _verdict(name, answers, truth, detail,
                    "SmoothGrad keeps saliency's verdict on both models: it makes the map steadier, it does "
                    "not change what the gradient points at")


def check_vargrad(your_fn, n_samples: int = 8, noise_level: float = 0.05) -> CheckResult:
    """Notebook 02, exercise 3: ``your_fn(model, x, target, noise)``, VarGrad: the variance over the
    noisy copies of the gradient, (1/n) sum_k g_k^2 - ((1/n) sum_k g_k)^2, with ``noise``
    [n, B, C, H, W] as in exercise 1; compared with ``smoothgrad(..., variant="var")`` on the same draws."""
    from ..gradients import smoothgrad

    model, x, t = _dermnet_batch(2, seed=1)
    seed = 12
    raw = torch.randn((x.shape[0] * n_samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed))
    sigma = noise_level * (x.amax((1, 2, 3)) - x.amin((1, 2, 3)))
    noise = (raw.view(x.shape[0], n_samples, *x.shape[1:]) * sigma.view(-1, 1, 1, 1, 1)).transpose(0, 1)
    yours, verdict = run_learner("vargrad", your_fn, model, x.clone(), t, noise.clone())
    if verdict is not None:
        return verdict
    ours = smoothgrad(model, x, t, n_samples=n_samples, noise_level=noise_level, variant="var", batch_size=10**6,
                      generator=torch.Generator().manual_seed(seed))
    grads = torch.stack([_gradient_of(model, x + noise[k], t, lambda o: o) for k in range(n_samples)])
    slips = {"you returned the mean of the squared gradients (SmoothGrad^2): subtract the squared mean":
             (grads ** 2).mean(0),
             "you returned the standard deviation: VarGrad is the variance, no square root": grads.var(0, False).sqrt(),
             "you divided by n - 1 (torch.var's default): VarGrad is the plain mean over the n samples, "
             "unbiased=False": grads.var(0),
             "you took the variance of |gradient|: VarGrad uses the signed gradients": grads.abs().var(0, False)}
    return _slip("vargrad", yours, ours, slips, atol=1e-6, rtol=1e-3)
