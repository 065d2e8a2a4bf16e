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
# # 03 · Integrated Gradients: from a baseline to the image
#
# **The question.** The gradient says how *sensitive* the score is to each pixel. How much does each
# pixel *contribute* to the score, compared with an image in which it is absent?
#
# **After this notebook you will be able to**
# - compute Integrated Gradients with `helpers.gradients.integrated_gradients`, for any baseline,
#   number of steps and quadrature rule, in bounded memory;
# - check completeness numerically, and reproduce Captum's `IntegratedGradients` rule by rule,
#   including why its `riemann_trapezoid` differs from the textbook rule;
# - choose a baseline knowingly: black, mean colour, blurred, noise.
#
# **Time to run:** about 30 s on 2 CPU cores.

# %%
import inspect
import warnings

import matplotlib.pyplot as plt
import torch
from captum.attr import IntegratedGradients
from torch import nn

from helpers import viz
from helpers.data import CLASSES, MEL, make_dataset
from helpers.gradients import BASELINES, integrated_gradients, path_rule, saliency
from helpers.metrics import mask_mass, mask_share, mass_summary
from helpers.models import load_dermnet
from helpers.report import agree, fmt, prediction_margin, table
from helpers.train import intervention_pair, logits, predict

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")  # Captum
torch.manual_seed(0)
shortcut, debiased = load_dermnet("shortcut"), load_dermnet("debiased")
off, on = intervention_pair(n=256)  # the same clinic-B lesions without and with a ruler


# every prediction below wins by far more than round-off (~1e-6), so none flips on another CPU
assert all(prediction_margin(logits(m, on.images)) > 1e-4 for m in (shortcut, debiased))

# %% [markdown]
# ## 1. Intuition and maths
#
# Sundararajan, Taly & Yan (2017, [arXiv:1703.01365](https://arxiv.org/abs/1703.01365)) start from
# a **baseline** $b$, an input that stands for "no signal" (black, by default), and walk a straight
# path to the image, $b + \alpha (x - b)$ for $\alpha$ from 0 to 1, adding up the gradient along
# the way:
#
# $$\mathrm{IG}_i(x) = (x_i - b_i) \int_0^1 \frac{\partial S_c\big(b + \alpha (x - b)\big)}{\partial x_i}\, d\alpha .$$
#
# By the fundamental theorem of calculus for path integrals, the attributions add up to the change
# in score, the **completeness** axiom:
#
# $$\sum_i \mathrm{IG}_i(x) = S_c(x) - S_c(b).$$
#
# In practice the integral is a sum over $n$ points, $\sum_k w_k \nabla S_c(b + \alpha_k (x - b))$,
# and the error of that sum, $\delta = \sum_i \mathrm{IG}_i - (S_c(x) - S_c(b))$, tells us whether
# $n$ was large enough.
#
# Why not just the gradient at $x$? Because it describes only the end of the path, and the score
# can change most somewhere else along it (**saturation**: once a feature is clearly present, more
# of it changes little). Here is the path from black to one melanoma, with the score and the size
# of the gradient along it:

# %%
i0 = int(((on.labels == MEL) & (predict(shortcut, on.images) == MEL)).nonzero()[0])
x0, b0 = on.images[i0:i0 + 1], torch.zeros(1, 3, 64, 64)
alphas = torch.linspace(0, 1, 41)
path = b0 + alphas.view(-1, 1, 1, 1) * (x0 - b0)
with torch.no_grad():
    scores = shortcut(path)[:, MEL]
grads = saliency(shortcut, path, MEL, abs=False)
grad_norm = grads.flatten(1).norm(dim=1)
along = (grads * (x0 - b0)).flatten(1).sum(1)  # dS/dalpha: the gradient's component along the path, times |x - b|

fig, axes = plt.subplots(1, 4, figsize=(15, 3), gridspec_kw={"width_ratios": [2.2, 1, 1, 1]})
viz.show_image(torch.cat([p for p in path[::8]], 2), ax=axes[0], title="the path: alpha = 0, 0.2, ..., 1")
axes[1].plot(alphas, scores)
axes[1].set(xlabel="alpha", ylabel="mel logit", title="score along the path")
axes[2].plot(alphas, along)
axes[2].axhline(0, color="grey", lw=0.8)
axes[2].set(xlabel="alpha", ylabel="dS/dalpha", title="gradient along (x - b)")
axes[3].plot(alphas, grad_norm)
axes[3].set(xlabel="alpha", ylabel="|gradient|", title="gradient size")
plt.tight_layout()
plt.show()
last_quarter = (scores[-1] - scores[30]) / (scores[-1] - scores[0])  # alphas[30] = 0.75
print(f"the mel logit goes from {fmt(scores[0], 1)} (black) to {fmt(scores[-1], 1)} (the image); the last "
      f"quarter of the path, alpha 0.75 to 1, accounts for {fmt(100 * last_quarter, 1)}% of that change")
steepest = along.abs().max()
print(f"at the image (alpha = 1): the gradient along the path is {fmt(along[-1].abs() / steepest, 2)} of its "
      f"largest size on the path; the gradient's own size is {fmt(grad_norm[-1] / grad_norm.max(), 2)} of its largest")
assert scores[0] > scores[-1] and last_quarter < 0.1  # a fall, nearly all of it before alpha = 0.75
assert along[-1].abs() < 0.1 * steepest and grad_norm[-1] > 0.5 * grad_norm.max()

# %% [markdown]
# The score changes steadily for three quarters of the walk and then flattens: near the image, more
# of the image changes the score little. What flattens is the gradient's component along the path,
# $\nabla S \cdot (x - b)$, which falls to almost nothing at the image. The gradient itself stays
# large there: it points in directions that leave the path. So the gradient at $x$ says how the
# score would move if the pixels moved elsewhere, and almost nothing about how the score got from
# $b$ to $x$; IG adds up the whole walk. Note also where the walk starts, and that the change is
# a *fall*: the black image is an extremely confident melanoma for DermNet. For both models, while a flat image of the
# dataset's mean colour is close to neutral:

# %%
flat = {"black": torch.zeros(1, 3, 64, 64), "mean colour": BASELINES["mean"](torch.zeros(1, 3, 64, 64))}
rows = {}
for name, model in [("shortcut", shortcut), ("debiased", debiased)]:
    with torch.no_grad():
        for what, img in flat.items():
            out = model(img)
            assert prediction_margin(out) > 1e-4
            rows[f"{name}, {what}"] = {"mel logit": out[0, MEL].item(), "largest |logit|": out.abs().max().item(),
                                       "predicted": CLASSES[out.argmax()]}
with torch.no_grad():
    real = torch.stack([m(on.images).amax() for m in (shortcut, debiased)])
print(f"largest logit over the 256 real test images: shortcut {fmt(real[0], 1)}, debiased {fmt(real[1], 1)}")
print(table(rows, 1, index="model, flat image"))
assert all(rows[f"{m}, black"]["mel logit"] > 2 * real.max() for m in ("shortcut", "debiased"))
assert all(rows[f"{m}, mean colour"]["largest |logit|"] < real.min() / 2 for m in ("shortcut", "debiased"))

# %% [markdown]
# A black square is nothing like a skin image, so the models extrapolate, and both call it
# melanoma more confidently than any real lesion. IG from a black baseline therefore answers "why
# is this image *less* melanoma than a black square?". Section 5 compares baselines.

# %% [markdown]
# ## 2. From scratch
#
# The trapezoid rule with $n$ points: $\alpha_k = k/(n-1)$, weights $1/(n-1)$, halved at both
# ends. We reuse the gradient helper from notebook 01 on the stacked path points:

# %%
n = 16
alphas_n = torch.linspace(0, 1, n)
weights = torch.full((n,), 1 / (n - 1))
weights[[0, -1]] /= 2
points = b0 + alphas_n.view(-1, 1, 1, 1) * (x0 - b0)
grads = saliency(shortcut, points, MEL, abs=False)  # [n, 3, 64, 64]
ig_by_hand = (x0 - b0) * (weights.view(-1, 1, 1, 1) * grads).sum(0, keepdim=True)

with torch.no_grad():
    change = (shortcut(x0)[0, MEL] - shortcut(b0)[0, MEL]).item()
ours = integrated_gradients(shortcut, x0, MEL, baseline=0.0, steps=n)
agree("IG by hand vs helper", ig_by_hand, ours, 1e-6)
print(f"sum of attributions {fmt(ig_by_hand.sum(), 1)}, score change S(x) - S(b) = {fmt(change, 1)}")

# %% [markdown]
# The helper walks the same path for a whole batch, `batch_size` path points at a time (by
# default as many as the memory budget allows, see notebook 02), so memory stays bounded whatever
# the number of steps; `path_rule` gives the points and weights of each rule.

# %%
print(inspect.getsource(integrated_gradients))

# %%
print(inspect.getsource(path_rule))

# %% [markdown]
# ## 3. Check against Captum, rule by rule
#
# Captum's `IntegratedGradients` defaults to Gauss-Legendre quadrature (`method="gausslegendre"`).
# Ours defaults to the trapezoid rule. Comparing across rules would compare quadrature errors, not
# implementations, so we compare each rule with its Captum counterpart, 12 images, 20 steps:

# %%
x12, t12 = on.images[:12], on.labels[:12]
ig_captum = IntegratedGradients(shortcut)
for rule, method in [("left", "riemann_left"), ("right", "riemann_right"), ("middle", "riemann_middle"),
                     ("gausslegendre", "gausslegendre"), ("captum_trapezoid", "riemann_trapezoid")]:
    a, da = integrated_gradients(shortcut, x12, t12, steps=20, rule=rule, return_delta=True)
    b, db = ig_captum.attribute(x12, target=t12, n_steps=20, method=method, return_convergence_delta=True)
    agree(f"{rule} vs {method}, attributions", a, b, 1e-6)
    agree(f"{rule} vs {method}, deltas", da, db, 1e-5)

# %% [markdown]
# Every rule agrees to round-off (the deltas to 1e-5 rather than 1e-6: they subtract two logits
# of size ~10, whose float32 spacing is about 1e-6). But note the last row: to match Captum's
# `riemann_trapezoid` we needed a rule of our own, `captum_trapezoid`. Captum evaluates the
# gradient at `linspace(0, 1, n)`, spaced $1/(n-1)$ apart, but weights the points by $1/n$ (ends
# halved), so its weights add up to $(n-1)/n$ instead of 1. On a linear model, where every correct
# rule is exact with any $n$, the effect is plain:

# %%
torch.manual_seed(0)
linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 1)).eval()
xl = torch.rand(1, 3, 2, 2)
exact = linear[1].weight.view(1, 3, 2, 2) * xl  # IG of a linear model from 0: w * x
rows = {}
for n in (2, 5, 50):
    trap = integrated_gradients(linear, xl, 0, steps=n, rule="trapezoid")
    capt = IntegratedGradients(linear).attribute(xl, target=0, n_steps=n, method="riemann_trapezoid")
    rows[n] = {"ours / exact": (trap.sum() / exact.sum()).item(), "Captum / exact": (capt.sum() / exact.sum()).item(),
               "(n-1)/n": (n - 1) / n}
    assert abs(rows[n]["ours / exact"] - 1) < 1e-5 and abs(rows[n]["Captum / exact"] - (n - 1) / n) < 1e-5
print(table(rows, 3, index="steps"))

# %% [markdown]
# On DermNet the same factor holds exactly: Captum's trapezoid attributions are our trapezoid
# attributions times $(n-1)/n$. So Captum's own two rules, trapezoid and its Gauss-Legendre
# default, sit about $1/n$ apart, about 2% at $n = 50$ (the slip, plus each rule's own quadrature
# error): a weighting slip, not a difference between quadrature rules.

# %%
n = 20
ours_trap = integrated_gradients(shortcut, x12, t12, steps=n, rule="trapezoid")
captum_trap = ig_captum.attribute(x12, target=t12, n_steps=n, method="riemann_trapezoid")
_ = agree("ours * (n-1)/n vs Captum's riemann_trapezoid", ours_trap * (n - 1) / n, captum_trap, 1e-6)
with torch.no_grad():  # images whose score changes by more than 5 along the path: a tiny change makes any ratio noisy
    change = (shortcut(x12) - shortcut(torch.zeros_like(x12))).gather(1, t12[:, None])[:, 0]
keep = (change.abs() > 5).nonzero()[:4, 0]
x4, t4 = x12[keep], t12[keep]
trap50 = ig_captum.attribute(x4, target=t4, n_steps=50, method="riemann_trapezoid").flatten(1).sum(1)
gl50 = ig_captum.attribute(x4, target=t4, n_steps=50, method="gausslegendre").flatten(1).sum(1)
ratio = trap50 / gl50
print(f"Captum at n=50, sum of attributions, riemann_trapezoid / gausslegendre, 4 images: "
      f"{', '.join(fmt(r, 3) for r in ratio)} (49/50 = {fmt(49 / 50, 3)})")
assert ((ratio > 0.97) & (ratio < 1)).all() and abs(ratio.median() - 0.98) < 0.01

# %% [markdown]
# ## 4. Completeness, checked
#
# How fast does $|\delta|$ shrink with the number of steps? For 4 images, relative to the score
# change $|S_c(x) - S_c(b)|$, for the trapezoid rule, Gauss-Legendre, and Captum's trapezoid
# (computed from ours with the factor just shown):

# %%
x4, t4 = on.images[:4], predict(shortcut, on.images[:4])
with torch.no_grad():
    dF = (shortcut(x4) - shortcut(torch.zeros_like(x4))).gather(1, t4[:, None])[:, 0]
rows = {}
for steps in (4, 16, 64, 128):
    trap, d_trap = integrated_gradients(shortcut, x4, t4, steps=steps, return_delta=True)
    _, d_gl = integrated_gradients(shortcut, x4, t4, steps=steps, rule="gausslegendre", return_delta=True)
    d_captum = trap.sum((1, 2, 3)) * (steps - 1) / steps - dF
    rows[steps] = {"trapezoid": (d_trap.abs() / dF.abs()).mean().item(),
                   "Gauss-Legendre": (d_gl.abs() / dF.abs()).mean().item(),
                   "Captum riemann_trapezoid": (d_captum.abs() / dF.abs()).mean().item()}
fig, ax = plt.subplots(figsize=(5, 3.5))
for rule in rows[4]:
    ax.plot(list(rows), [r[rule] for r in rows.values()], marker="o", label=rule)
ax.set(xscale="log", yscale="log", xlabel="steps", ylabel="mean |delta| / |S(x) - S(b)|",
       title="completeness error")
ax.legend()
plt.show()
# delta subtracts two logits of size ~30 from a sum of 12,288 float32 terms: its round-off, ~1e-6 of
# the score change, is as large as fmt's default margin on figures this small, hence a wider margin
print(table({steps: {rule: fmt(v, 3, atol=1e-5) for rule, v in r.items()} for steps, r in rows.items()},
            index="steps"))
trap, gl, capt = ([rows[s][rule] for s in rows] for rule in rows[4])
assert all(a > b for v in (trap, gl, capt) for a, b in zip(v, v[1:]))  # every rule converges
assert all(0.5 < g / t < 2 for t, g in zip(trap, gl))  # at about the same rate
assert all(abs(c * s - 1) < 0.2 for s, c in zip(rows, capt))  # Captum's error is close to 1/n
assert rows[16]["trapezoid"] < 0.01 and all(c > 3 * t for t, c in zip(trap[1:], capt[1:]))

# %% [markdown]
# Both correct rules converge at about the same rate here. Gauss-Legendre is exact for smooth
# (polynomial) integrands, but along DermNet's path the gradient jumps every time a ReLU switches,
# and no rule is exact for jumps. Captum's trapezoid carries an extra error of exactly
# $|S(x) - S(b)|/n$ (its last column is close to $1/n$), which dominates from a few steps on. At 16
# steps the trapezoid rule is within about 1% here: check $\delta$ before trusting a map.

# %% [markdown]
# ### The other two axioms
#
# Sundararajan et al. derive IG from axioms, and completeness is one of three. The other two are
# just as easy to check by computation.
#
# **Sensitivity**: if the input and the baseline differ in one feature and the scores differ, that
# feature gets a non-zero attribution. Their example: $f(x) = 1 - \mathrm{ReLU}(1 - x)$, which is
# flat for $x \ge 1$. From $b = 0$ to $x = 2$ the score rises by 1, but the gradient at $x$ is
# 0, so saliency and gradient × input give the feature nothing:

# %%
class Saturating(nn.Module):
    """f(x) = 1 - ReLU(1 - sum of x): rises with x up to 1, then flat."""

    def forward(self, x):
        return (1 - torch.relu(1 - x.sum((1, 2, 3))))[:, None]


flat_top = Saturating().eval()
x_sat = torch.full((1, 1, 1, 1), 2.0)
grad_sat = saliency(flat_top, x_sat, 0, abs=False)
ig_sat = integrated_gradients(flat_top, x_sat, 0, steps=50)  # alphas k/49: the kink at 0.5 is between points
with torch.no_grad():
    change = flat_top(x_sat) - flat_top(torch.zeros_like(x_sat))
print(f"f(x) - f(b) = {fmt(change, 2)}; gradient at x: {fmt(grad_sat, 2)}; gradient x input: "
      f"{fmt(grad_sat * x_sat, 2)}; IG: {fmt(ig_sat, 2)}")
assert grad_sat.abs().max() == 0 and abs(float(ig_sat) - float(change)) < 1e-5

# %% [markdown]
# IG gives the feature the whole change, because it collects the gradient where the function
# still moves, on the way.
#
# **Implementation invariance**: two networks that compute the same function get the same
# attributions, whatever their weights. Double DermNet's first convolution and let its BatchNorm
# undo it (twice the running mean, four times the running variance and $\varepsilon$): different
# weights, the same function. Methods built only from the model's gradient inherit this; the paper
# shows that rules which look inside the network, DeepLift's and LRP's, can break it.

# %%
import copy

twin = copy.deepcopy(shortcut)
with torch.no_grad():
    twin.conv1.weight.mul_(2.0)
    twin.bn1.running_mean.mul_(2.0)
    twin.bn1.running_var.mul_(4.0)
    twin.bn1.eps *= 4.0
    same_function = (twin(x4) - shortcut(x4)).abs().max() / shortcut(x4).abs().max()
assert not torch.equal(twin.conv1.weight, shortcut.conv1.weight) and same_function < 1e-5
print("conv1 weights differ by a factor 2; the logits agree to within 1e-5 of their size")
_ = agree("IG, twin network vs DermNet, 4 images, 16 steps", integrated_gradients(twin, x4, t4, steps=16),
          integrated_gradients(shortcut, x4, t4, steps=16), atol=1e-5)

# %% [markdown]
# ## 5. The baseline decides the question
#
# IG answers "which pixels make this image score differently from the baseline?". Change the
# baseline and you change the question. Four common choices (`helpers.gradients.BASELINES`):
#
# - **black**: all zeros, the usual default;
# - **mean**: every pixel DermSynth's mean colour, a flat skin-like image;
# - **blur**: the image under a strong Gaussian blur: same colours, no edges or texture;
# - **noise**: uniform noise, no structure at all.

# %%
idx = [i0, int(((on.labels == CLASSES.index("nv")) & (predict(shortcut, on.images) == MEL)).nonzero()[0])]
xs, ts = on.images[idx], predict(shortcut, on.images[idx])
fig, axes = plt.subplots(2, 5, figsize=(11, 4.6))
for row in range(2):
    viz.show_image(xs[row], ax=axes[row, 0], title=f"{CLASSES[on.labels[idx[row]]]} → {CLASSES[ts[row]]}")
for col, name in enumerate(BASELINES, start=1):
    attr = integrated_gradients(shortcut, xs, ts, baseline=name, steps=32)
    ruler_mass = mask_mass(attr, on.masks["ruler"][idx])
    for row in range(2):
        viz.overlay(xs[row], attr[row].sum(0), ax=axes[row, col], signed=True,
                    title=f"{name}: ruler mass {ruler_mass[row]:.2f}")
plt.tight_layout()
plt.show()
bl = BASELINES["blur"](xs[:1])
print(f"the blurred baseline of the first image: pixel std {fmt(bl.std(), 3)} (image {fmt(xs[0].std(), 3)})")

# %% [markdown]
# ### When black is not "nothing": the dermoscope's dark corners
#
# IG multiplies by $(x - b)$. Wherever the image *equals* the baseline, the attribution is zero,
# whatever the model does with those pixels. Dermoscopy images often have black corners. With the
# black baseline they are invisible to IG by construction; with the mean-colour baseline they can
# be scored like any other pixel. Over 24 test images that have dark corners:

# %%
pool = make_dataset(120, clinic="B", seed=31)
has_corners = pool.masks["corners"].flatten(1).any(1)
xc = pool.images[has_corners][:24]
mc = {k: v[has_corners][:24] for k, v in pool.masks.items()}
tc = predict(shortcut, xc)
assert prediction_margin(logits(shortcut, xc)) > 1e-4
rows = {}
for name in ("black", "mean"):
    attr = integrated_gradients(shortcut, xc, tc, baseline=name, steps=16)
    rows[name] = {"corner mass": mask_mass(attr, mc["corners"]).mean().item(),
                  "corner share of image": mask_share(mc["corners"]).mean().item(),
                  "mean |x - b| in the corners": (xc - BASELINES[name](xc)).abs().amax(1)[mc["corners"]].mean().item()}
print(table(rows, 3, index="baseline"))
share = rows["black"]["corner share of image"]
assert rows["black"]["corner mass"] < share / 5 and abs(rows["mean"]["corner mass"] / share - 1) < 0.25

# %% [markdown]
# With the black baseline the corners get almost no attribution: not because the model ignores
# them, but because they are (nearly) black, so $x - b \approx 0$ there. The mean-colour baseline
# gives them their share. Neither answer is "right": they answer different questions. The choice
# must be made, and stated.

# %% [markdown]
# ## 6. On DermNet: ruler mass, shortcut versus debiased
#
# 48 lesions with a ruler, each model explaining its own prediction, 16 trapezoid steps, black and
# blurred baselines:

# %%
x48, m48 = on.images[:48], {k: v[:48] for k, v in on.masks.items()}
summary = {}
for name, model in [("shortcut", shortcut), ("debiased", debiased)]:
    target = predict(model, x48)
    for baseline in ("black", "blur"):
        attr = integrated_gradients(model, x48, target, baseline=baseline, steps=16)
        # the pointing game as a number of images: as a share of 48 it often ends in a 5 (42/48 = 0.875)
        summary[f"{name}, {baseline}"] = mass_summary(attr, m48, pointing="count")
print(table(summary, {c: 1 if "pointing" in c else 2 for c in summary["shortcut, black"]}, index="model, IG baseline"))
share = summary["shortcut, black"]["ruler share"]
black_s, black_d = summary["shortcut, black"], summary["debiased, black"]
blur_s, blur_d = summary["shortcut, blur"], summary["debiased, blur"]
assert 0.8 < black_s["ruler mass"] / share < 1.25 and 0.5 < black_d["ruler mass"] / share < 0.8
assert black_s["ruler pointing (of 48)"] > black_d["ruler pointing (of 48)"] + 4.8
assert 2.5 < blur_s["ruler mass"] / share < 3.5 and 19.2 < blur_s["ruler pointing (of 48)"] < 28.8
assert blur_d["ruler mass"] > share

# %% [markdown]
# With the black baseline IG separates the models only weakly: the shortcut model's ruler mass is
# about the ruler's share of the image, the debiased model's about two thirds of it, and only the
# pointing column shows a clear difference. That is the black square again: most of what IG
# explains from black is the fall from "confident melanoma" to this image.
#
# With the blurred baseline the question becomes "what do the edges and fine structure add?", and
# the shortcut is plain: the shortcut model puts about three times the ruler's share on the ruler
# and peaks there in half of the images. The ruler's ticks are the sharpest structure in these
# images, so the debiased model's ruler mass rises above the ruler's share too: compare models
# under one baseline, never numbers across baselines.

# %% [markdown]
# **Explore it yourself.** The explorer below recomputes Integrated Gradients for the image, model and
# setting you pick: a clinic, a class and one of its 20 images, the ruler on or off, the shortcut or
# the debiased model, and its number of steps and its baseline.
# The map explains the model's prediction; set "explain" to the image's class for the evidence for
# the class you picked instead. The image's title gives the prediction; the map's title, the class
# explained and the map's mass on the ruler and on the lesion; the colour bar, what the colours
# measure. Before the notebook runs, and on GitHub, the cell shows a picture of the explorer's first
# view: its controls need a running kernel. Every other method of the course is in its menu too.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers.viz import explorer  # noqa: E402

explorer("Integrated Gradients")

# %% [markdown]
# ## 7. Pitfalls and limits
#
# - **The baseline is part of the answer** (section 5). Black gives dark regions no credit; a blurred
#   baseline gives flat regions none. Report the baseline with the map.
# - **Check completeness.** $\delta$ is free to compute (`return_delta=True`); if it is a sizeable
#   fraction of $S(x) - S(b)$, add steps or switch rules.
# - **Library defaults differ.** Captum's default rule is Gauss-Legendre; its `riemann_trapezoid`
#   weights sum to $(n-1)/n$. Compare like with like.
# - **Completeness is not faithfulness.** The attributions add up to the score change by
#   construction; that does not make each pixel's share meaningful. Faithfulness is measured
#   differently: remove pixels in the map's order and watch the score fall (deletion curves,
#   Petsiuk et al. 2018), or, on DermSynth, take the ruler away (notebook 00's intervention).
# - **Cost:** $n$ forward and backward passes per image; memory is bounded by `batch_size` (or by
#   the memory budget, by default), time is not.

# %% [markdown]
# ## 8. Your turn
#
# Write `my_integrated_gradients(model, x, target, steps)`: IG from a black baseline with the
# trapezoid rule (points `linspace(0, 1, steps)`, weights $1/(steps-1)$, halved at both ends),
# shaped like `x`. The checker compares with `helpers.gradients.integrated_gradients` and
# recognises the usual slips (the wrong weights, the wrong points, forgetting $x - b$).

# %%
from helpers.exercises import check_integrated_gradients


def my_integrated_gradients(model, x, target, steps):
    """Integrated Gradients from the black baseline b = 0 with the trapezoid rule:

        IG(x) = (x - b) * sum_k w_k * d S_target(b + a_k (x - b)) / d x,
        a_k = k / (steps - 1) for k = 0 .. steps - 1,  w_k = 1 / (steps - 1), halved at k = 0 and k = steps - 1

    shaped like x; S_target is the target class's logit."""
    raise NotImplementedError


check_integrated_gradients(my_integrated_gradients)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_integrated_gradients(model, x, target, steps):
#     total = torch.zeros_like(x)
#     for k, alpha in enumerate(torch.linspace(0, 1, steps)):
#         point = (alpha * x).requires_grad_(True)
#         (g,) = torch.autograd.grad(model(point)[torch.arange(len(x)), target].sum(), point)
#         w = 1 / (steps - 1) * (0.5 if k in (0, steps - 1) else 1.0)
#         total += w * g
#     return x * total
# ```
# </details>

# %% [markdown]
# **Exercise 2, an audit.** DermSynth's dark dermoscope corners (`masks["corners"]`) are nearly
# black. Compute IG from the black baseline on clinic-B images that have them
# (`make_dataset(96, clinic="B", seed=777_001)`, those whose corner mask is not empty) and look at
# the mass on the corners, for either model; then try `blur_baseline`. Can IG from a black baseline
# tell you whether a model uses the corners? The checker measures both on the same images.

# %%
from helpers.exercises import check_ig_corners_question  # noqa: E402

black_baseline_can_tell = None  # your answer: True or False
print(check_ig_corners_question(black_baseline_can_tell))

# %% [markdown]
# **Exercise 3, harder (optional).** The quadrature error. Write
# `my_completeness_gap(model, x, target, steps)`: for IG from the black baseline with `steps`
# points (`integrated_gradients` is allowed), the completeness gap
# $|\sum_i \mathrm{IG}_i(x) - (S(x) - S(b))|$ per image. Then print it for 4, 8, 16, 32 and 64 steps
# on a few images: how fast does it fall, and how many steps would you need for a gap below 1% of
# $|S(x) - S(b)|$?

# %%
from helpers.exercises import check_completeness_gap  # noqa: E402


def my_completeness_gap(model, x, target, steps):
    """The completeness gap of IG from the black baseline b = 0 (trapezoid rule, `steps` points), [B]:

        delta = | sum_i IG_i(x) - (S_target(x) - S_target(b)) |"""
    raise NotImplementedError


check_completeness_gap(my_completeness_gap)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_completeness_gap(model, x, target, steps):
#     total = integrated_gradients(model, x, target, steps=steps).sum((1, 2, 3))
#     t = torch.as_tensor(target).expand(len(x))
#     with torch.no_grad():
#         gain = (model(x) - model(torch.zeros_like(x))).gather(1, t[:, None])[:, 0]
#     return (total - gain).abs()
# ```
# On the checker's three images the gap falls from up to a quarter of $|S(x) - S(b)|$ at 4 steps to
# about 1% at 16 to 32 steps, but not steadily: a ReLU network's path is only piecewise smooth, and
# a kink between two points can make more steps slightly worse. Measure $\delta$; do not assume it.
# </details>

# %% [markdown]
# ## Summary
#
# - IG integrates the gradient along the straight path from a baseline to the image; its
#   attributions add up to $S(x) - S(b)$, up to the quadrature error $\delta$ that you should check.
#   It also gives credit to a feature whose gradient has gone flat (sensitivity), and gives two
#   networks that compute the same function the same attributions (implementation invariance).
# - Ours matches Captum rule by rule. Captum's `riemann_trapezoid` weights sum to $(n-1)/n$, which
#   accounts exactly for the gap between its trapezoid and other rules.
# - The baseline changes the question: with black, dark corners get no credit whatever the model
#   does with them.
# - On DermNet, a black image is a confident melanoma for both models, so IG from black explains
#   the wrong question; from a blurred baseline, IG clearly puts the shortcut model's attribution
#   on the ruler.
#
# **Next: 04 · CAM and Grad-CAM.** From pixels to regions: explanations read off the last
# convolutional layer, and the audit that catches the ruler on a hundred images at once.
