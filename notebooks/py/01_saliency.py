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
# # 01 · Saliency maps: the gradient as sensitivity
#
# **The question.** Which pixels, if they changed a little, would change the model's score the most?
#
# **After this notebook you will be able to**
# - compute a saliency map and a gradient × input map with autograd, and with `helpers.gradients`;
# - check them against Captum's `Saliency` and `InputXGradient`;
# - say why raw gradient maps look speckled, and measure it;
# - score a map against DermSynth's ruler mask, and see whether the gradient finds the shortcut.
#
# **Time to run:** about 15 s on 2 CPU cores.

# %%
import inspect
import warnings
from contextlib import ExitStack

import matplotlib.pyplot as plt
import torch
from captum.attr import InputXGradient, Saliency

from helpers import viz
from helpers.data import CLASSES, MEL
from helpers.gradients import gradient_x_input, saliency
from helpers.hooks import capture
from helpers.metrics import mask_mass, mass_summary, rank_correlation
from helpers.models import load_dermnet
from helpers.report import agree, fmt, prediction_margin, table
from helpers.train import intervention_pair, logits, predict

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")  # Captum
torch.manual_seed(0)
shortcut, debiased = load_dermnet("shortcut"), load_dermnet("debiased")
off, on = intervention_pair(n=256)  # the same 256 clinic-B lesions, without and with a ruler

# %% [markdown]
# ## 1. Intuition and maths
#
# Near an image $x$, a network's score for class $c$ behaves like a linear function of the pixels:
#
# $$S_c(x + \varepsilon) \approx S_c(x) + \nabla_x S_c(x) \cdot \varepsilon .$$
#
# The gradient $\nabla_x S_c(x)$ has one entry per pixel and channel: how fast the score moves when
# that value moves. Simonyan, Vedaldi & Zisserman (2014, [arXiv:1312.6034](https://arxiv.org/abs/1312.6034))
# proposed showing its magnitude as an image, the **saliency map**:
#
# $$M_c(x)_{ij} = \max_{\text{channel } k} \left| \frac{\partial S_c}{\partial x_{kij}} \right| .$$
#
# Two choices hide in that formula. The score is the **logit** (before softmax): the gradient of a
# probability near 1 is close to zero everywhere. And the map is the **magnitude**, so it says how
# *sensitive* the score is to a pixel, not in which direction. We keep the signed gradient around
# (`abs=False`) for gradient × input.

# %% [markdown]
# ## 2. From scratch
#
# Autograd computes the whole gradient in one backward pass. For one image:

# %%
x = on.images[:1].clone().requires_grad_(True)  # a clinic-B lesion, with a ruler
score = shortcut(x)[0, MEL]  # the logit of "mel"
score.backward()
grad = x.grad
print(f"true class {CLASSES[on.labels[0]]}, mel logit {fmt(score, 2)}, gradient shape {tuple(grad.shape)}")

# %% [markdown]
# That is the whole method. The helper does the same for a batch, with one target per image, without
# touching the caller's tensor or leaving gradients in the model: it takes `torch.autograd.grad`
# with respect to a detached view of the input, so the parameters' gradients are never computed.

# %%
print(inspect.getsource(saliency))

# %%
print(inspect.getsource(inspect.getmodule(saliency)._gradient))

# %%
ours = saliency(shortcut, on.images[:1], MEL, abs=False)
_ = agree("helper vs the cell above", ours, grad, atol=1e-6)  # prints the bound; returns the residual

# %% [markdown]
# ## 3. Check against Captum
#
# Saliency is deterministic, so ours and Captum's should agree to the last bit (we ask for
# `atol` 1e-6, float32 round-off on logits of this size). Captum's `Saliency` takes the absolute value by default
# (`abs=True`), as ours does. Over 64 images, each with its true class as the target:

# %%
x64, t64 = on.images[:64], on.labels[:64]
checks = {
    "saliency (abs)": (saliency(shortcut, x64, t64), Saliency(shortcut).attribute(x64, target=t64)),
    "saliency (signed)": (saliency(shortcut, x64, t64, abs=False),
                          Saliency(shortcut).attribute(x64, target=t64, abs=False)),
    "gradient x input": (gradient_x_input(shortcut, x64, t64), InputXGradient(shortcut).attribute(x64, target=t64)),
}
for name, (a, b) in checks.items():
    agree(f"{name:<18} ours vs Captum", a, b, atol=1e-6)

# %% [markdown]
# ## 4. What a saliency map looks like, and why it speckles
#
# Four lesions with a ruler, explained for the class the shortcut model predicts. The map is the
# maximum over the colour channels of $|\nabla|$, drawn over the faded image.
#
# A prediction is an argmax, and which images we pick (here and in section 6) depends on it. An
# argmax won by a hair could go the other way on another CPU, whose round-off differs in the last
# bits, so we check first that on none of the 256 images does either model's winning logit beat the
# runner-up by less than 1e-4 of the largest logit's size (a hundred times float32 round-off).

# %%
assert all(prediction_margin(logits(m, on.images)) > 1e-4 for m in (shortcut, debiased)), "a prediction is a near-tie"
pred_on = predict(shortcut, on.images)
show = [int(i) for i in ((on.labels == MEL) & (pred_on == MEL)).nonzero()[:2, 0]]
show += [int(i) for i in ((on.labels == CLASSES.index("nv")) & (pred_on == MEL)).nonzero()[:2, 0]]
xs, ts = on.images[show], pred_on[show]
maps = saliency(shortcut, xs, ts).amax(1, keepdim=True)
fig, axes = plt.subplots(2, 4, figsize=(10, 5.2))
for j in range(4):
    viz.show_image(xs[j], ax=axes[0, j], title=f"{CLASSES[on.labels[show[j]]]} → {CLASSES[ts[j]]}")
    viz.overlay(xs[j], maps[j], ax=axes[1, j], title="saliency")
plt.tight_layout()
plt.show()

# %% [markdown]
# The maps are grainy: bright single pixels next to dark ones. That grain is real, not a plotting
# artefact. A ReLU network is piecewise linear: its gradient is constant while every unit keeps its
# on/off state, and jumps when one switches. How many switch when we add noise of 1% of the image
# range, which no one would call a different image? `helpers.hooks.capture` records every ReLU's
# output (and removes its hooks afterwards):

# %%
relus = [name for name, m in shortcut.named_modules() if isinstance(m, torch.nn.ReLU)]


def relu_states(model, x):
    with ExitStack() as stack, torch.no_grad():
        recs = [stack.enter_context(capture(model, name)) for name in relus]
        model(x)
    return torch.cat([(r.activation > 0).flatten(1) for r in recs], 1)


g = torch.Generator().manual_seed(1)
switched = (relu_states(shortcut, x64) != relu_states(shortcut, x64 + 0.01 * torch.randn(x64.shape, generator=g)))
n_switched = int(switched.sum(1).median())
# a unit within round-off of zero can switch on another CPU and move a count by one: print the
# median to the nearest hundred, and check it is not within 10 units of a rounding boundary
assert abs(n_switched % 100 - 50) > 10
print(f"{switched.shape[1]} ReLU units per image; 1% noise switches a median of about "
      f"{round(n_switched, -2):,} of them ({fmt(100 * switched.float().mean(1).median(), 0)}%)")

# %% [markdown]
# Every switched unit bends the function and changes the gradient somewhere. The effect on the map,
# measured by the rank correlation of the saliency maps before and after the noise (printed to one
# decimal: a rank correlation moves by up to about 2e-4 between CPUs, as a few units near zero switch):

# %%
g = torch.Generator().manual_seed(1)
rows = {}
for level in (0.01, 0.05):
    noisy = x64 + level * torch.randn(x64.shape, generator=g)
    r = rank_correlation(saliency(shortcut, x64, t64).amax(1), saliency(shortcut, noisy, t64).amax(1))
    rows[f"noise {level:.0%}"] = {"median rank correlation": r.median().item(), "lowest": r.min().item()}
print(table({k: {c: fmt(v, 1, atol=1e-3) for c, v in row.items()} for k, row in rows.items()}))
assert rows["noise 1%"]["median rank correlation"] < 0.9 and min(row["lowest"] for row in rows.values()) > 0.2

# %% [markdown]
# A noise nobody could see reshuffles a good part of the map's ranking. The overall shape survives
# (the correlation stays well above zero), the pixel-level detail does not. Notebook 02 turns this
# weakness into a method: average the gradient over many such noisy copies.

# %% [markdown]
# ## 5. Gradient × input
#
# Multiplying the gradient by the input gives the first-order Taylor estimate of how much each
# pixel contributes relative to a black image (Shrikumar et al. 2016,
# [arXiv:1605.01713](https://arxiv.org/abs/1605.01713)):
#
# $$A_c(x)_i = x_i \, \frac{\partial S_c}{\partial x_i},$$
#
# and if $S_c$ is linear, $\sum_i A_c(x)_i = S_c(x) - S_c(0)$ exactly.
#
# It keeps the sign: red pixels push the score up, blue ones down. Bright pixels get more weight
# than dark ones just for being bright, which is the first hint of the baseline problem that
# notebook 03 takes on.
#
#
# Both maps below are summed over the colour channels and drawn on one colour scale per column,
# centred on zero (the colour bar under each column: red pushes the score up, blue down). Each row's
# title carries the share of the gradient × input map's magnitude that lies on the ruler.

# %%
gxi = gradient_x_input(shortcut, xs, ts)
sal_signed = saliency(shortcut, xs, ts, abs=False)
on_ruler = mask_mass(gxi, on.masks["ruler"][show])
fig = viz.attribution_grid(xs, {"gradient (signed)": sal_signed, "gradient × input": gxi},
                           row_titles=[f"{CLASSES[on.labels[i]]} → {CLASSES[t]}\nruler mass {float(m):.2f}"
                                       for i, t, m in zip(show, ts, on_ruler)],
                           signed=True, shared_scale=True, colorbar=True)
plt.show()

# %% [markdown]
# ## 6. On DermNet: does the gradient find the ruler?
#
# The same 256 clinic-B lesions, all with a ruler. Each model explains its own prediction. For each
# map we report the share of its magnitude on the ruler (ruler mass) and on the lesion, beside the
# share of the image each covers (what a map spread evenly would score), and the pointing game: how
# often the largest value lies on the ruler or the lesion (the largest value inside the mask against
# the largest outside it; two within 0.05% of each other are a tie and score one half, so that
# round-off cannot pick between near-equal pixels).

# %%
summary = {}
for name, model in [("shortcut", shortcut), ("debiased", debiased)]:
    target = predict(model, on.images)
    for method, fn in [("saliency", saliency), ("gradient × input", gradient_x_input)]:
        summary[name, method] = mass_summary(fn(model, on.images, target), on.masks)
digits = {"ruler pointing": 2, "lesion pointing": 2}  # masses and shares: 3 decimals
print(table({f"{name}, {method}": row for (name, method), row in summary.items()}, digits))
for method in ("saliency", "gradient × input"):
    s, d = summary["shortcut", method], summary["debiased", method]
    assert s["ruler mass"] > s["ruler share"] and s["ruler pointing"] > 0.1
    assert d["ruler mass"] < 2 / 3 * d["ruler share"] and d["ruler pointing"] < 0.02
    assert d["lesion mass"] > max(2 * d["lesion share"], s["lesion mass"])
    assert 2.5 < s["ruler mass"] / d["ruler mass"] < 4  # about three times
assert summary["shortcut", "gradient × input"]["ruler pointing"] > 2 * summary["shortcut", "saliency"]["ruler pointing"]

# %% [markdown]
# Read the table row against row. A map spread evenly would put the ruler's share of the image
# (about 0.12) on the ruler. The shortcut model's maps put more than that there, and peak on the
# ruler in a good part of the images; the debiased model's maps put at most two thirds of it there,
# almost never peak there, and concentrate on the lesion instead. The contrast between the two
# models is the signal: about three times more ruler mass for the shortcut model, with either
# method. Gradient × input, which weights the gradient by the pixel values, peaks on the ruler far
# more often (the pointing column).
#
# The same numbers restricted to the images the shortcut model calls melanoma, where the ruler is
# doing the work:

# %%
called_mel = predict(shortcut, on.images) == MEL
sub = {k: v[called_mel] for k, v in on.masks.items()}
focus = {}
for name, model in [("shortcut", shortcut), ("debiased", debiased)]:
    focus[name] = mass_summary(saliency(model, on.images[called_mel], MEL), sub)
print(f"{int(called_mel.sum())} images the shortcut model calls mel; saliency of the mel score:")
print(table(focus, digits))
assert focus["shortcut"]["ruler mass"] > focus["shortcut"]["ruler share"] > focus["debiased"]["ruler mass"]

# %% [markdown]
# And the intervention from notebook 00, seen through the map: the same lesion without and with a
# ruler, the shortcut model's saliency for "mel" on one shared colour scale.

# %%
i = show[2]  # a nevus that the ruler turns into melanoma
pair_x = torch.cat([off.images[i:i + 1], on.images[i:i + 1]])
pair_maps = {m: saliency(model, pair_x, MEL).amax(1, keepdim=True)
             for m, model in [("shortcut", shortcut), ("debiased", debiased)]}
fig = viz.attribution_grid(pair_x, pair_maps, row_titles=["no ruler", "ruler"], shared_scale=True)
plt.show()

# %% [markdown]
# **Explore it yourself.** The explorer below recomputes saliency for the image, model and setting
# you pick: a clinic, a class and one of its 20 images, the ruler on or off, the shortcut or the
# debiased model, and nothing to tune: the plain |gradient|.
# The map explains the model's prediction; set "explain" to the image's class for the evidence for
# the class you picked instead. The image's title gives the prediction; the map's title, the class
# explained and the map's mass on the ruler and on the lesion; the colour bar, what the colours
# measure. Before the notebook runs, and on GitHub, the cell shows a picture of the explorer's first
# view: its controls need a running kernel. Every other method of the course is in its menu too.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers.viz import explorer  # noqa: E402

explorer("saliency")

# %% [markdown]
# ## 7. Pitfalls and limits
#
# - **Local, not global.** The gradient describes an infinitesimal neighbourhood. A pixel can
#   matter a great deal and have a zero gradient, when the unit it drives is saturated or switched
#   off. Notebook 03 (Integrated Gradients) addresses exactly this.
# - **Sensitivity is not contribution.** A large gradient says the score *would* move if the pixel
#   moved, not that the pixel *is* responsible for the score.
# - **Noisy at the pixel level**, as measured above: do not read meaning into single bright pixels.
# - **Choices that change the picture:** logit or probability, absolute value or sign, maximum or
#   sum over the channels. State them when you show a map.
# - **A map that looks plausible is not evidence that it is faithful.** The test is to randomise
#   the model's weights and watch whether the map changes at all (Adebayo et al. 2018); notebook 04
#   does it for Grad-CAM and guided backprop, and notebook 09 shows why some maps barely depend on
#   the class they explain.

# %% [markdown]
# ## 8. Your turn
#
# Write `my_saliency(model, x, target)`: for a batch `x` `[B, 3, H, W]` and a LongTensor `target`
# `[B]`, return $|\partial S_{target}/\partial x|$ with the shape of `x`, without leaving gradients in
# the model or changing `x`. The checker compares with `helpers.gradients.saliency` on DermNet images
# and tells you what is off.

# %%
from helpers.exercises import check_saliency


def my_saliency(model, x, target):
    """Saliency (Simonyan et al. 2014): |d S_target(x) / d x|, shaped like x [B, 3, H, W], where
    S_target is the model's raw score (logit) for each image's target class. Leave no gradients in
    the model and do not change x."""
    raise NotImplementedError


check_saliency(my_saliency)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_saliency(model, x, target):
#     x = x.clone().requires_grad_(True)
#     scores = model(x)[torch.arange(len(x)), target]   # logits, one per image
#     (grad,) = torch.autograd.grad(scores.sum(), x)      # no .backward(): no gradients left in the model
#     return grad.abs()
# ```
# </details>

# %% [markdown]
# **Exercise 2, an audit.** DermSynth also draws dark dermoscope corners (`masks["corners"]`). Take
# clinic-B images that have them (`make_dataset(96, clinic="B", seed=777_001)`, those whose corner
# mask is not empty), compute saliency for each model's own prediction, and compare the mass on the
# corners (`mask_mass`) with their area share (`mask_share`). Does each model's saliency put more
# than the corners' share on them? The checker measures it on the same images.

# %%
from helpers.exercises import check_corners_question  # noqa: E402

shortcut_above_share = None  # your answers: True or False
debiased_above_share = None
print(check_corners_question(shortcut_above_share, debiased_above_share))

# %% [markdown]
# **Exercise 3, harder (optional).** Gradient × input. Write `my_gradient_x_input(model, x, target)`
# with the method contract of exercise 1. Then read section 6's table again: which of the two
# methods puts more of the debiased model's map on the ruler, and why might multiplying by the
# pixel values do that?

# %%
from helpers.exercises import check_gradient_x_input  # noqa: E402


def my_gradient_x_input(model, x, target):
    """Gradient x input (Shrikumar et al. 2016): x * d S_target(x) / d x, signed, shaped like x
    [B, 3, H, W]; S_target is the target class's logit. Leave no gradients in the model and do
    not change x."""
    raise NotImplementedError


check_gradient_x_input(my_gradient_x_input)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_gradient_x_input(model, x, target):
#     xg = x.clone().requires_grad_(True)
#     (grad,) = torch.autograd.grad(model(xg)[torch.arange(len(x)), target].sum(), xg)
#     return x * grad   # signed: the product is the first-order contribution from a black image
# ```
# Gradient × input gives the debiased model's ruler more mass than saliency does. The ruler is
# brighter than the skin (compare `on.images.mean(1)[on.masks["ruler"]].mean()` with the rest of the
# image), and multiplying by $x$ weights bright pixels up, whatever the model does with them.
# </details>

# %% [markdown]
# ## Summary
#
# - A saliency map is the magnitude of the gradient of the class logit with respect to the pixels:
#   one backward pass. Ours matches Captum's `Saliency` and `InputXGradient` exactly.
# - It is grainy: 1% noise reorders much of the map, because ReLU networks are piecewise linear.
# - On DermNet it already finds the shortcut: the shortcut model's maps put more than the ruler's
#   share of the image on the ruler and about three times the debiased model's ruler mass; the
#   debiased model's maps sit on the lesion.
#
# **Next: 02 · SmoothGrad.** Average the gradient over noisy copies of the image: does the map
# hold still under small input changes, and does it still find the ruler?
