# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py//py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (interpretability course)
#     language: python
#     name: interp-course
# ---

# %% [markdown]
# # 02 · SmoothGrad: averaging away the noise
#
# **The question.** Saliency maps are grainy because the gradient jumps from pixel to pixel. Is
# there a steadier picture underneath?
#
# **After this notebook you will be able to**
# - compute SmoothGrad, SmoothGrad² and VarGrad with `helpers.gradients.smoothgrad`;
# - reproduce Captum's `NoiseTunnel` exactly, given the seed, and translate between the paper's
#   relative noise level and Captum's absolute `stdevs`;
# - choose the noise level and the number of samples from measurements, not taste;
# - check whether the smoothed map still finds DermNet's ruler.
#
# **Time to run:** about 30 s on 2 CPU cores.

# %%
import inspect
import warnings

import matplotlib.pyplot as plt
import torch
from captum.attr import NoiseTunnel, Saliency

from helpers import viz
from helpers.data import CLASSES, MEL
from helpers.gradients import saliency, smoothgrad
from helpers.metrics import mask_mass, mass_summary, rank_correlation
from helpers.models import load_dermnet
from helpers.report import agree, fmt, prediction_margin, table
from helpers.train import intervention_pair, logits, predict

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")  # Captum
torch.manual_seed(0)
shortcut, debiased = load_dermnet("shortcut"), load_dermnet("debiased")
off, on = intervention_pair(n=256)  # the same clinic-B lesions without and with a ruler


# the images and targets below are picked by predictions, argmaxes: check that none is a near-tie
# that another CPU's round-off could flip (as in notebook 01)
assert all(prediction_margin(logits(m, on.images)) > 1e-4 for m in (shortcut, debiased)), "a prediction is a near-tie"

# %% [markdown]
# ## 1. Intuition and maths
#
# Smilkov et al. (2017, [arXiv:1706.03825](https://arxiv.org/abs/1706.03825)): if the gradient
# fluctuates wildly at the scale of a pixel, average it over a small neighbourhood of the image.
# Draw $n$ noisy copies and average their gradients:
#
# $$\hat M_c(x) = \frac{1}{n} \sum_{k=1}^{n} \nabla_x S_c(x + \varepsilon_k), \qquad
# \varepsilon_k \sim \mathcal N(0, \sigma^2), \qquad \sigma = \text{noise level} \times (x_{\max} - x_{\min}).$$
#
# The paper states $\sigma$ relative to the image's range and recommends 10-20%. Two variants
# keep the second moment:
#
# - **SmoothGrad²**: $\frac1n \sum_k (\nabla_x S_c(x+\varepsilon_k))^2$, the mean of squares;
# - **VarGrad** (Adebayo et al. 2018): the variance, $\frac1n \sum_k g_k^2 - (\frac1n \sum_k g_k)^2$.

# %% [markdown]
# ## 2. From scratch
#
# Ten noisy copies of one image, ten gradients, one mean. We reuse the saliency helper from
# notebook 01 for each gradient:

# %%
x, t = on.images[:1], predict(shortcut, on.images[:1])
sigma = 0.15 * (x.max() - x.min())
g = torch.Generator().manual_seed(0)
noisy = [x + sigma * torch.randn(x.shape, generator=g) for _ in range(10)]
by_hand = torch.stack([saliency(shortcut, xn, t, abs=False) for xn in noisy]).mean(0)

ours = smoothgrad(shortcut, x, t, n_samples=10, noise_level=0.15, generator=torch.Generator().manual_seed(0))
_ = agree("by hand vs helper", by_hand, ours, atol=1e-6)  # prints the bound; returns the residual

# %% [markdown]
# The helper draws the noise in the same order, image by image, and processes the noisy copies
# `batch_size` at a time across image boundaries, so any number of samples fits in memory. The
# default, `"auto"`, takes as many per pass as a memory budget allows (1 GiB unless
# `helpers.set_memory_budget` says otherwise), and no more than run fastest on this machine; the
# policy is in `helpers.batching`, and `tests/test_batching.py` checks that the results do not
# depend on the batch:

# %%
print(inspect.getsource(smoothgrad))

# %% [markdown]
# ## 3. Check against Captum's NoiseTunnel
#
# Captum wraps any method in `NoiseTunnel`. Three differences of convention decide whether the two
# can agree:
#
# 1. Captum's `stdevs` is an **absolute** standard deviation (default 1.0, which on $[0, 1]$ images
#    is all noise); ours is relative to each image's range. For one image,
#    `stdevs = noise_level * (x.max() - x.min())`.
# 2. `Saliency` inside `NoiseTunnel` takes `abs=True` by default, so Captum's default "smoothgrad"
#    averages $|g_k|$. The paper averages signed gradients; ours does too, and `abs=True` gives
#    Captum's default.
# 3. The noise: Captum draws it in one `torch.normal` call over the inputs repeated image by image.
#    Ours draws the same numbers in the same order from the global generator, so after the same
#    `torch.manual_seed` the noisy images are identical.
#
# With those matched, the results agree to round-off (exact, given the same seed and the same
# draw order), for every variant and both `abs` settings:

# %%
nt_types = {"mean": "smoothgrad", "square": "smoothgrad_sq", "var": "vargrad"}
pairs = {}
for i in range(4):
    xi, ti = on.images[i:i + 1], on.labels[i:i + 1]
    stdev = 0.15 * (xi.max() - xi.min()).item()
    for variant, nt_type in nt_types.items():
        for use_abs in (False, True):
            torch.manual_seed(i)
            a = smoothgrad(shortcut, xi, ti, n_samples=20, noise_level=0.15, variant=variant, abs=use_abs)
            torch.manual_seed(i)
            b = NoiseTunnel(Saliency(shortcut)).attribute(xi, nt_type=nt_type, nt_samples=20, stdevs=stdev,
                                                          target=ti, abs=use_abs)
            pairs.setdefault((variant, use_abs), []).append((a, b))
for (variant, use_abs), ab in pairs.items():  # the 4 images together
    agree(f"{variant:<6} abs={use_abs!s:<5} ours vs Captum", torch.cat([a for a, _ in ab]),
          torch.cat([b for _, b in ab]), atol=1e-6)

# %% [markdown]
# ## 4. How much noise, how many samples?
#
# The noise level first. One lesion with a ruler, the shortcut model's predicted class, 50 samples
# per map, noise from 0% (the plain gradient) to 50% of the image range:

# %%
levels = [0.0, 0.05, 0.1, 0.15, 0.25, 0.5]
i = int(((on.labels == CLASSES.index("nv")) & (predict(shortcut, on.images) == MEL)).nonzero()[0])
xi = on.images[i:i + 1]
ti = predict(shortcut, xi)
sweep = torch.cat([smoothgrad(shortcut, xi, ti, n_samples=50, noise_level=lv,
                              generator=torch.Generator().manual_seed(0)) for lv in levels])
magnitude = sweep.abs().amax(1)
vmax = float(magnitude.flatten().quantile(0.99))  # one colour scale for all six panels
fig, axes = plt.subplots(1, len(levels), figsize=(2.3 * len(levels), 2.6))
for ax, lv, m in zip(axes, levels, magnitude):
    viz.overlay(xi[0], m, ax=ax, title=f"noise {lv:.0%}", signed=False, vmax=vmax, colorbar=lv == levels[-1])
fig.suptitle(f"|SmoothGrad| of '{CLASSES[ti[0]]}' for a nevus with a ruler, 50 samples, one shared scale", y=1.02)
plt.show()

# %% [markdown]
# At 0% the map is the grainy gradient, split between the lesion and the ruler. At 5-10% the grain
# is gone and the ruler's tick marks stand out. From 15% on, a regular texture spreads over the
# whole frame. The paper's 10-20% was found on ImageNet models; a sweep like this one is how to
# choose for yours. Four numbers per noise level, over 16 images:
#
# - **robustness**: what SmoothGrad is for. Notebook 01 found that 1% of noise on the input
#   reorders much of a saliency map. Here: the rank correlation between the map of $x$ and the map
#   of $x$ plus 1% noise (12 samples each, the same draws);
# - **run to run**: the rank correlation between two maps of $x$ from different draws (12 samples
#   each), the Monte Carlo noise of the estimate itself;
# - **ruler mass**, and the **background mass**: the share of the map on neither the ruler nor
#   the lesion (a map spread evenly over the frame scores the background's share of the image);
# - **cell grid**: see below.
#
# Rank correlations are printed to two decimals and checked against a margin of 2e-4: between CPUs
# they move by up to 4e-5, as units within round-off of zero switch.

# %%
xb, mb = on.images[:16], {k: v[:16] for k, v in on.masks.items()}
tb = predict(shortcut, xb)
background = ~(mb["lesion"] | mb["ruler"])


def cell_grid(maps):
    """How strongly the mean |map| repeats DermNet's 8-pixel cells: the spread (std / mean) of its
    64 averages by position modulo 8 (0 for a map with no trace of the grid)."""
    mean_map = maps.abs().amax(1).mean(0)
    phases = torch.stack([mean_map[a::8, b::8].mean() for a in range(8) for b in range(8)])
    return (phases.std() / phases.mean()).item()


nudged = xb + 0.01 * torch.randn(xb.shape, generator=torch.Generator().manual_seed(5))  # 1% of the [0, 1] range
rows = {}
for lv in levels:
    a = smoothgrad(shortcut, xb, tb, n_samples=12, noise_level=lv, generator=torch.Generator().manual_seed(1))
    b = smoothgrad(shortcut, xb, tb, n_samples=12, noise_level=lv, generator=torch.Generator().manual_seed(2))
    m0 = smoothgrad(shortcut, nudged, tb, n_samples=12, noise_level=lv, generator=torch.Generator().manual_seed(1))
    rows[f"{lv:.0%}"] = {"robustness": rank_correlation(a.abs().amax(1), m0.abs().amax(1)).mean().item(),
                         "run to run": rank_correlation(a.abs().amax(1), b.abs().amax(1)).median().item(),
                         "ruler mass": mass_summary(a, mb)["ruler mass"],
                         "background mass": mask_mass(a, background).mean().item(),
                         "cell grid": cell_grid(a)}
print(table(rows, {"robustness": 2, "run to run": 2, "ruler mass": 3, "background mass": 3, "cell grid": 2},
            atol={"robustness": 2e-4, "run to run": 2e-4}, index="noise level"))
print(f"background share of the image: {fmt(background.float().mean(), 2)}")
col = {k: [row[k] for row in rows.values()] for k in next(iter(rows.values()))}
assert col["robustness"][0] < 0.8 and all(r > 0.9 for r in col["robustness"][1:])  # 1% noise: gradient vs any noise
assert abs(col["run to run"][0] - 1) < 1e-6  # the same plain gradient twice
assert all(x > y + 0.01 for x, y in zip(col["run to run"][1:4], col["run to run"][2:5]))  # less, up to 25%
assert col["ruler mass"][1] == max(col["ruler mass"]) and col["ruler mass"][5] < 0.6 * col["ruler mass"][1]
assert abs(col["background mass"][1] - col["background mass"][0]) < 0.02  # 5%: as localized as the gradient
assert col["background mass"][5] > col["background mass"][0] + 0.1  # 50%: spread over the frame
assert abs(col["background mass"][5] - float(background.float().mean())) < 0.02
assert col["cell grid"][5] > 1.5 * col["cell grid"][1]  # the grid shows more at 50% than at 5%
level = next(lv for lv, r in zip(levels, col["robustness"]) if r > 0.9)  # the least noise that does the job
print(f"chosen noise level: {level:.0%} (the smallest whose map is robust to 1% input noise, rank corr. > 0.9)")

# %% [markdown]
# This is the whole trade-off, and it answers whether SmoothGrad helps on DermNet:
#
# - **It does what it is for.** The plain gradient's map changes a lot under 1% input noise
#   (robustness under 0.8); at any noise level SmoothGrad's hardly changes (over 0.9).
# - **More noise buys nothing more, and costs localization.** The ruler mass is highest at 5% and
#   falls as the noise grows; the background mass, the same as the gradient's at 5%, rises to the
#   background's own share of the image by 50%: the map then points nowhere in particular. With a
#   fixed 12 samples, two runs also agree less the more noise there is: a wider neighbourhood needs
#   more samples.
# - **Why the texture.** Averaged over a wide neighbourhood, the gradient shows less of the image
#   and more of the network: DermNet reads the image through strided layers (notebook 09 measures
#   their checkerboard) and `layer4` sees it as an 8×8 grid of 8-pixel cells. The **cell grid**
#   column measures how much the average map repeats that 8-pixel period: it grows with the noise.
#
# So the noise level is chosen from the sweep, as the least noise that makes the map robust: 5%,
# below the paper's 10-20%, which was found on ImageNet models with 224-pixel inputs. The rest of
# the notebook uses it. Now the sample count at that level: how close is a map from $n$ samples to a
# reference map from 100 (6 images)?

# %%
reference = smoothgrad(shortcut, xb[:6], tb[:6], n_samples=100, noise_level=level,
                       generator=torch.Generator().manual_seed(9))
rows, agree_n = {}, {}
for n in (1, 5, 10, 25, 50):
    m = smoothgrad(shortcut, xb[:6], tb[:6], n_samples=n, noise_level=level, generator=torch.Generator().manual_seed(3))
    agreement = rank_correlation(m.abs().amax(1), reference.abs().amax(1)).median().item()
    rows[n] = {"rank corr. with 100-sample map": fmt(agreement, 2, atol=2e-4)}
    agree_n[n] = agreement
print(table(rows, index="samples"))
assert all(a < b for a, b in zip(list(agree_n.values()), list(agree_n.values())[1:]))  # more samples, closer
assert agree_n[25] > 0.9 and agree_n[50] - agree_n[25] < 0.05  # most of it by 25 samples

# %% [markdown]
# Returns diminish quickly: most of the agreement is there by 25 samples. 50, the common default,
# costs 50 times a saliency map.

# %% [markdown]
# ## 5. SmoothGrad² and VarGrad
#
# The same noisy gradients, summarised three ways. SmoothGrad keeps the sign; the mean of squares
# and the variance are never negative, and they emphasise pixels whose gradient is *large*, or
# *changes a lot*, anywhere in the neighbourhood. Magnitudes at the chosen 5%, each column on one
# colour scale shared by its three images (the colour bar under it):

# %%
idx = [int(j) for j in ((on.labels == MEL) & (predict(shortcut, on.images) == MEL)).nonzero()[:2, 0]] + [i]
xs, ts = on.images[idx], predict(shortcut, on.images[idx])
maps = {v: smoothgrad(shortcut, xs, ts, n_samples=50, noise_level=level, variant=v,
                      generator=torch.Generator().manual_seed(0)) for v in ("mean", "square", "var")}
fig = viz.attribution_grid(xs, {"|gradient|": saliency(shortcut, xs, ts).amax(1, keepdim=True),
                                "|SmoothGrad|": maps["mean"].abs().amax(1, keepdim=True),
                                "SmoothGrad²": maps["square"].amax(1, keepdim=True),
                                "VarGrad": maps["var"].amax(1, keepdim=True)},
                           row_titles=[f"{CLASSES[on.labels[j]]} → {CLASSES[t]}" for j, t in zip(idx, ts)],
                           signed=False, shared_scale=True, colorbar=True)
plt.show()

# %% [markdown]
# ## 6. On DermNet: ruler mass, shortcut versus debiased
#
# 32 clinic-B lesions with a ruler, each model explaining its own prediction, 16 samples at the chosen 5%:

# %%
x32, masks32 = on.images[:32], {k: v[:32] for k, v in on.masks.items()}
summary = {}
for name, model in [("shortcut", shortcut), ("debiased", debiased)]:
    target = predict(model, x32)
    summary[name, "saliency"] = mass_summary(saliency(model, x32, target), masks32)
    for v in ("mean", "square", "var"):
        sg = smoothgrad(model, x32, target, n_samples=16, noise_level=level, variant=v,
                        generator=torch.Generator().manual_seed(0))
        summary[name, f"SmoothGrad ({v})"] = mass_summary(sg, masks32)
methods = ["saliency"] + [f"SmoothGrad ({v})" for v in ("mean", "square", "var")]
ratio = {m: summary["shortcut", m]["ruler mass"] / summary["debiased", m]["ruler mass"] for m in methods}
print("ruler mass, shortcut / debiased:", ", ".join(f"{k} {fmt(v, 1)}x" for k, v in ratio.items()))
# the ruler's mass and share to 3 decimals (the debiased model's ruler masses are small), the rest to 2
digits = {"ruler mass": 3, "ruler share": 3, "ruler pointing": 2, "lesion mass": 2, "lesion share": 2,
          "lesion pointing": 2}
print(table({f"{name}, {m}": row for (name, m), row in summary.items()}, digits))
share = summary["shortcut", "saliency"]["ruler share"]
assert abs(share - 0.11) < 0.01
mean_s, sal_s = summary["shortcut", "SmoothGrad (mean)"], summary["shortcut", "saliency"]
assert mean_s["ruler mass"] > share and mean_s["ruler pointing"] > 2 * sal_s["ruler pointing"]
assert all(ratio[m] > ratio["saliency"] + 0.5 for m in methods[1:])
assert all(summary["debiased", m]["ruler pointing"] == 0 for m in methods)

# %% [markdown]
# At the chosen 5%, SmoothGrad sharpens what saliency showed. The shortcut model's SmoothGrad map
# puts more than the ruler's share of the image (about 0.11) on the ruler and peaks there in about
# two images in five, where saliency's peaked there in one in six; the debiased model's maps never
# peak on the ruler. The contrast between the two models, the signal that matters, grows for every
# variant (the printed ratios), most for SmoothGrad², which squares the gradient and so favours the
# largest values. Absolute masses still differ from method to method, and with the noise level
# (section 4): compare models under one method and one setting.

# %% [markdown]
# **Explore it yourself.** The explorer below recomputes SmoothGrad for the image, model and setting
# you pick: a clinic, a class and one of its 20 images, the ruler on or off, the shortcut or the
# debiased model, and its noise level.
# The map explains the model's prediction; set "explain" to the image's class for the evidence for
# the class you picked instead. The image's title gives the prediction; the map's title, the class
# explained and the map's mass on the ruler and on the lesion; the colour bar, what the colours
# measure. Before the notebook runs, and on GitHub, the cell shows a picture of the explorer's first
# view: its controls need a running kernel. Every other method of the course is in its menu too.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers.viz import explorer  # noqa: E402

explorer("SmoothGrad")

# %% [markdown]
# ## 7. Pitfalls and limits
#
# - **Noise level is a free parameter** with a visible effect, as the sweep shows. Report it, and
#   report it relative to the input range (Captum's `stdevs` is absolute: 1.0 on $[0, 1]$ images is
#   pure noise).
# - **SmoothGrad explains a blurred model**: the average gradient around $x$, not the gradient at
#   $x$. A pretty map can come from the smoothing as much as from the model.
# - **$n$ times the cost** of a saliency map, for every image.
# - **Signed or absolute averaging gives different maps.** Captum's default (`abs=True` inside
#   `Saliency`) is not the paper's; state which you use.
# - Like saliency, it still says nothing about *how much* each pixel contributes to the score
#   (notebook 03).

# %% [markdown]
# ## 8. Your turn
#
# Write `my_smoothgrad(model, x, target, noise)`: `noise` is a tensor `[n, B, C, H, W]`, already
# scaled to $\sigma$; return the mean over the $n$ noisy copies `x + noise[k]` of the gradient of the
# target logit, shaped like `x` (signed, as in the paper). The checker draws the same noise as
# `helpers.gradients.smoothgrad` so the results can agree exactly.

# %%
from helpers.exercises import check_smoothgrad


def my_smoothgrad(model, x, target, noise):
    """SmoothGrad (Smilkov et al. 2017): (1/n) sum_k d S_target(x + noise[k]) / d x, shaped like x.

    noise [n, B, C, H, W], already scaled to sigma; S_target is the target class's logit."""
    raise NotImplementedError


check_smoothgrad(my_smoothgrad)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_smoothgrad(model, x, target, noise):
#     grads = []
#     for eps in noise:
#         xn = (x + eps).requires_grad_(True)
#         (g,) = torch.autograd.grad(model(xn)[torch.arange(len(x)), target].sum(), xn)
#         grads.append(g)
#     return torch.stack(grads).mean(0)
# ```
# </details>

# %% [markdown]
# **Exercise 2, an audit.** Does SmoothGrad change the verdict of notebook 01? Take clinic-B images
# with a ruler (`make_dataset(64, clinic="B", seed=202_001)`, those whose ruler mask is not
# empty), compute SmoothGrad at the sweep's noise level (`level`, 5%) with 10 samples and
# `generator=torch.Generator().manual_seed(0)`, for each model's own prediction, and compare its
# ruler mass with the ruler's area share (`mask_share`); then do the same with `saliency`. Does
# each model's SmoothGrad put more than the ruler's share on the ruler? The checker measures it on
# the same images.

# %%
from helpers.exercises import check_smoothgrad_ruler_question  # noqa: E402

shortcut_above_share = None  # your answers: True or False
debiased_above_share = None
print(check_smoothgrad_ruler_question(shortcut_above_share, debiased_above_share))

# %% [markdown]
# **Exercise 3, harder (optional).** VarGrad. Write `my_vargrad(model, x, target, noise)`, with
# `noise` as in exercise 1: the variance of the gradient over the noisy copies. The checker draws
# its noise at 5% and compares with `smoothgrad(..., variant="var")` on the same draws.

# %%
from helpers.exercises import check_vargrad  # noqa: E402


def my_vargrad(model, x, target, noise):
    """VarGrad (Adebayo et al. 2018), shaped like x, with g_k = d S_target(x + noise[k]) / d x:

        (1/n) sum_k g_k^2  -  ((1/n) sum_k g_k)^2

    noise [n, B, C, H, W], already scaled to sigma."""
    raise NotImplementedError


check_vargrad(my_vargrad)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_vargrad(model, x, target, noise):
#     grads = []
#     for eps in noise:
#         xn = (x + eps).requires_grad_(True)
#         (g,) = torch.autograd.grad(model(xn)[torch.arange(len(x)), target].sum(), xn)
#         grads.append(g)
#     grads = torch.stack(grads)
#     return (grads ** 2).mean(0) - grads.mean(0) ** 2   # = grads.var(0, unbiased=False)
# ```
# </details>

# %% [markdown]
# ## Summary
#
# - SmoothGrad averages the gradient over noisy copies of the image; ours reproduces Captum's
#   `NoiseTunnel` exactly once the noise convention (relative vs absolute) and `abs` are matched.
# - On DermNet it does what it is for: the map no longer changes under 1% input noise. More noise
#   than that buys nothing and spreads the map over the frame, where DermNet's grid of cells shows
#   through; the sweep chose 5%, below the paper's 10-20%. About 25 samples are enough.
# - At 5% the shortcut model's SmoothGrad map points at the ruler more often than saliency's, and
#   the contrast with the debiased model grows for every variant.
#
# **Next: 03 · Integrated Gradients.** Instead of asking how sensitive the score is, ask how much
# each pixel *contributes*, by integrating the gradient along a path from a baseline to the image.
