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
# # 04 · From pixels to regions: CAM, Grad-CAM and friends
#
# **The question.** Pixel maps are grainy and hard to summarise. Which *region* of the image does
# the model use for its decision, and can we audit that over a hundred images at once?
#
# **After this notebook you will be able to**
# - compute CAM, Grad-CAM, Grad-CAM++, Score-CAM, guided backprop and guided Grad-CAM with
#   `helpers.cam`, for any convolutional layer;
# - check them against Captum and against the identities that tie them together;
# - run a Grad-CAM audit of DermNet's shortcut: pointing game and ruler mass over a batch.
#
# **Time to run:** about 20 s on 2 CPU cores.

# %%
import inspect
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam

from helpers import viz
from helpers.cam import (cam, grad_cam, grad_cam_pp, guided_backprop, guided_grad_cam, layer_activation_and_gradient,
                         score_cam)
from helpers.data import CLASSES, MEL, make_dataset, two_lesions
from helpers.metrics import mask_mass, mass_summary, pointing_game, rank_correlation
from helpers.models import load_dermnet
from helpers.report import agree, fmt, prediction_margin, table
from helpers.train import TEST_SEEDS, logits, predict

warnings.filterwarnings("ignore", message=".*required_grads has been set automatically.*")  # Captum
warnings.filterwarnings("ignore", message=".*Setting backward hooks on ReLU activations.*")  # Captum
torch.manual_seed(0)
shortcut, debiased = load_dermnet("shortcut"), load_dermnet("debiased")
test_a = make_dataset(2000, clinic="A", seed=TEST_SEEDS["A"])  # the held-out clinic-A test set


def clear_margin(model, x):
    """Assert that every prediction on x wins by far more than round-off (~1e-6): none flips elsewhere."""
    assert prediction_margin(logits(model, x)) > 1e-4



# %% [markdown]
# ## 1. CAM: why it needed global average pooling
#
# Zhou et al. (2016, [arXiv:1512.04150](https://arxiv.org/abs/1512.04150)) noticed that when a
# network ends in global average pooling (GAP) and one linear layer, the class score is an average
# over locations:
#
# $$S_c = \sum_k W_{ck} \, \frac{1}{hw} \sum_{ij} A_k(i,j) + b_c
#       = \frac{1}{hw} \sum_{ij} \underbrace{\sum_k W_{ck} A_k(i,j)}_{\mathrm{CAM}_c(i,j)} + b_c .$$
#
# So the map $\mathrm{CAM}_c$ *is* the score, location by location: no approximation. DermNet was
# built with GAP before `fc` for exactly this reason. Check: the map's mean plus the bias gives
# back the logit.

# %%
x8, t8 = test_a.images[:8], test_a.labels[:8]
maps = cam(shortcut, x8, t8, upsample=False)  # [8, 1, 8, 8]: layer4's grid
with torch.no_grad():
    logit8 = shortcut(x8).gather(1, t8[:, None])[:, 0]
rebuilt = maps.mean((1, 2, 3)) + shortcut.fc.bias[t8]
print("layer4 grid:", tuple(maps.shape[-2:]))
_ = agree("mean(CAM) + bias vs the logit", rebuilt, logit8, 1e-5)  # logits ~10: float32 spacing ~1e-6

# %%
print(inspect.getsource(cam))

# %% [markdown]
# ## 2. Grad-CAM: any layer, any architecture
#
# Selvaraju et al. (2017, [arXiv:1610.02391](https://arxiv.org/abs/1610.02391)) replaced the
# linear layer's weights with gradients, so the idea works without GAP and at any layer:
#
# $$\alpha_k = \frac{1}{hw}\sum_{ij} \frac{\partial S_c}{\partial A_k(i,j)}, \qquad
# \text{Grad-CAM}_c = \mathrm{ReLU}\Big(\sum_k \alpha_k A_k\Big).$$
#
# For a GAP-then-linear network, $\partial S_c / \partial A_k(i,j) = W_{ck}/(hw)$ at every
# location, so $\alpha_k = W_{ck}/(hw)$: Grad-CAM is CAM (with a ReLU) divided by $hw$, a positive
# constant. Numerically:

# %%
g = grad_cam(shortcut, x8, t8, "layer4", relu=False, upsample=False)
_ = agree("CAM vs 64 * Grad-CAM (no ReLU)", maps, 64 * g, 1e-4)  # CAM reaches ~35: float32 spacing ~4e-6

# %%
print(inspect.getsource(grad_cam))

# %% [markdown]
# ### Check against Captum
#
# Captum's `LayerGradCam` returns the layer-resolution map and, by default, **no ReLU**
# (`relu_attributions=False`): the negative part, evidence *against* the class, stays in. With
# `relu_attributions=True` and the same upsampling, ours and Captum's agree; guided backprop and
# guided Grad-CAM too (to the last bit here, the same arithmetic in the same order; the check
# allows round-off, 1e-6).

# %%
below = {}
for layer in ("layer4", "layer3", "layer2"):
    module = dict(shortcut.named_modules())[layer]
    theirs = LayerGradCam(shortcut, module).attribute(x8, target=t8, relu_attributions=True)
    theirs_up = LayerAttribution.interpolate(theirs, (64, 64), interpolate_mode="bilinear")
    agree(f"Grad-CAM {layer} vs Captum", grad_cam(shortcut, x8, t8, layer), theirs_up, 1e-6)
    raw = LayerGradCam(shortcut, module).attribute(x8, target=t8)
    # the share of the map's magnitude below 0, not of its cells: a cell within round-off of 0 can
    # change sign on another CPU, which moves a count of cells but not the magnitude
    below[f"Grad-CAM {layer}"] = {"share of |Captum's default map| below 0":
                                  (raw.clamp(max=0).abs().sum() / raw.abs().sum()).item()}
gb_captum = GuidedBackprop(shortcut).attribute(x8, target=t8)
ggc_captum = GuidedGradCam(shortcut, shortcut.layer4).attribute(x8, target=t8)
agree("guided backprop vs Captum", guided_backprop(shortcut, x8, t8), gb_captum, 1e-6)
agree("guided Grad-CAM vs Captum", guided_grad_cam(shortcut, x8, t8), ggc_captum, 1e-6)
print(table(below, 3))

# %% [markdown]
# ### Resolution versus semantics: layer4, layer3, layer2
#
# DermNet's `layer4` and `layer3` give an 8×8 grid, `layer2` 16×16. `layer4` is what the
# classifier reads (its average feeds `fc` directly); earlier layers are computed further from the
# decision, and their Grad-CAM maps look different.

# %%
idx = [int(i) for i in ((test_a.labels == MEL) & test_a.has_ruler).nonzero()[:2, 0]]
idx += [int(i) for i in ((test_a.labels == CLASSES.index("nv")) & ~test_a.has_ruler).nonzero()[:1, 0]]
xs, ts = test_a.images[idx], predict(shortcut, test_a.images[idx])
clear_margin(shortcut, xs)
layer_maps = {layer: grad_cam(shortcut, xs, ts, layer) for layer in ("layer4", "layer3", "layer2")}
fig = viz.attribution_grid(xs, layer_maps, row_titles=[f"{CLASSES[test_a.labels[i]]} → {CLASSES[t]}"
                                                       for i, t in zip(idx, ts)])
plt.show()
ruler_by_layer = {k: mask_mass(m[:2], test_a.masks["ruler"][idx[:2]]) for k, m in layer_maps.items()}
print(table({f"melanoma {i + 1}": {k: v[i] for k, v in ruler_by_layer.items()} for i in range(2)}, 2,
            index="ruler mass"))
l4, l3, l2 = ruler_by_layer["layer4"], ruler_by_layer["layer3"], ruler_by_layer["layer2"]
assert ((l3 > l4) & (l2 > l3)).all()  # the earlier the layer, the more on the ruler

# %% [markdown]
# On these two melanomas the earlier layers put even more of the map on the ruler: the choice of
# layer changes the answer, which is why the audit below fixes one layer (`layer4`, the one the
# classifier reads) for both models.

# %% [markdown]
# ## 3. The audit: Grad-CAM over 120 clinic-A test images
#
# One map is an anecdote. The audit runs Grad-CAM (`layer4`) over the first 120 clinic-A test
# images that have a ruler, for both models, each explaining its own prediction, and scores every
# map: the **pointing game** on the ruler (does the map peak on the ruler?) and the **ruler mass**.
# In clinic A a ruler comes only with melanoma, so these are 120 melanomas: the audit asks what each
# model looks at when it recognises melanoma.

# %%
with_ruler = test_a.has_ruler.nonzero()[:120, 0]
xa, ma = test_a.images[with_ruler], {k: v[with_ruler] for k, v in test_a.masks.items()}
audit, per_image = {}, {}
for name, model in [("shortcut", shortcut), ("debiased", debiased)]:
    clear_margin(model, xa)
    target = predict(model, xa)
    m = grad_cam(model, xa, target, "layer4")
    audit[name] = mass_summary(m, ma, pointing="count")  # pointing: images (ties count one half)
    per_image[name] = (mask_mass(m, ma["ruler"]), pointing_game(m, ma["ruler"]), target)
print(f"{len(xa)} clinic-A images with a ruler; classes: "
      + ", ".join(f"{c} {int((test_a.labels[with_ruler] == i).sum())}" for i, c in enumerate(CLASSES)))
print(table(audit, {k: 1 if "pointing" in k else 2 for k in audit["shortcut"]}, index="Grad-CAM, layer4"))
s, d = audit["shortcut"], audit["debiased"]
assert s["ruler mass"] > 2 * s["ruler share"] and s["lesion pointing (of 120)"] < 6  # almost never
assert d["ruler mass"] < s["ruler share"] / 2 and d["ruler pointing (of 120)"] == 0
assert d["lesion pointing (of 120)"] > 60  # most images

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
bins = torch.linspace(0, 1, 26)
for name, colour in [("shortcut", "#d62728"), ("debiased", "#1f77b4")]:
    ax.hist(per_image[name][0].numpy(), bins=bins.numpy(), alpha=0.6, color=colour, label=f"{name} model")
ax.axvline(audit["shortcut"]["ruler share"], color="k", ls="--", lw=1, label="ruler's share of the image")
ax.set(xlabel="Grad-CAM ruler mass per image", ylabel="images", title="Grad-CAM audit, clinic A")
ax.legend()
plt.show()

# %% [markdown]
# Grad-CAM catches the shortcut on the batch, not on one chosen image. The shortcut model's maps
# put more than twice the ruler's share of the image on the ruler and peak on the lesion almost
# never; the debiased model's maps put less than half the ruler's share there, never peak there,
# and peak on the lesion in most images. (The pointing game is counted in images; an upsampled map
# has plateaus, so an image whose largest values inside and outside the mask are within 0.05% of
# each other is a tie and counts one half.)
#
# One figure needs explaining: the shortcut model's map peaks *on the ruler* in only about a quarter
# of the images, although its ruler mass is more than twice the ruler's share. The reason is
# resolution. Grad-CAM at `layer4` is an 8×8 grid, one value per 8×8-pixel cell, and the ruler is a
# strip 6 to 9 pixels wide, 1 to 3 pixels in from the edge: the cell that holds it also holds skin.
# Upsampled, the map's highest values spread over the whole cell and past the strip's inner side,
# so its largest value outside the ruler equals or beats its largest value on it. Asked at the
# layer's own resolution, "does the peak cell touch the ruler?", the answer differs:

# %%
grid = grad_cam(shortcut, xa, per_image["shortcut"][2], "layer4", upsample=False)[:, 0]  # [120, 8, 8]
touches = F.adaptive_max_pool2d(ma["ruler"].float()[:, None], 8)[:, 0] > 0  # cells with any ruler pixel
covered = F.adaptive_avg_pool2d(ma["ruler"].float()[:, None], 8)[:, 0]  # the ruler's share of each cell
on_cells = pointing_game(grid, touches)  # the pointing game on the grid: ties between cells count one half
peak = grid.flatten(1).argmax(1)
share_of_cell = covered.flatten(1).gather(1, peak[:, None])[:, 0]
print(f"shortcut model, 120 images: pointing game on the 8x8 grid (does the peak cell touch the ruler?) "
      f"{fmt(on_cells.sum(), 1)} of 120; the ruler covers {fmt(share_of_cell.mean(), 1)} of the peak cell on "
      f"average; pixel pointing game on the ruler: {fmt(audit['shortcut']['ruler pointing (of 120)'], 1)} of 120")
assert on_cells.sum() >= 105 and audit["shortcut"]["ruler pointing (of 120)"] < 40 and share_of_cell.mean() < 0.5

# %% [markdown]
# The peak cell touches the ruler in nine images out of ten; the pixel pointing game, asked of a
# map far coarser than the thing it points at, says one in four. For a coarse map, ask the
# pointing question at the map's own resolution, or use the mass.
#
# The worst offenders, where the shortcut model's map puts the most mass on the ruler:

# %%
worst = per_image["shortcut"][0].argsort(descending=True)[:6]
top7 = per_image["shortcut"][0].sort(descending=True).values[:7]
assert (top7[:-1] - top7[1:]).min() > 1e-4  # no near-tie decides who is in the six or in what order
worst_maps = {"shortcut": grad_cam(shortcut, xa[worst], per_image["shortcut"][2][worst], "layer4"),
              "debiased": grad_cam(debiased, xa[worst], per_image["debiased"][2][worst], "layer4")}
titles = [f"{CLASSES[test_a.labels[with_ruler[i]]]}: ruler mass {per_image['shortcut'][0][i]:.2f}" for i in worst]
fig = viz.attribution_grid(xa[worst], worst_maps, row_titles=titles, size=1.7)
plt.show()

# %% [markdown]
# ## 4. Grad-CAM++: more than one instance
#
# Grad-CAM's channel weight is an *average* gradient. When a class appears twice, a channel that
# fires on only one instance is averaged down. Grad-CAM++ (Chattopadhay et al. 2018,
# [arXiv:1710.11063](https://arxiv.org/abs/1710.11063)) weights each location separately, using
# higher-order terms that, for a score passed through $\exp$, reduce to powers of the gradient:
#
# $$w_k = \sum_{ij} \alpha_{ij}^k \,\mathrm{ReLU}(g_{ij}^k), \qquad
# \alpha_{ij}^k = \frac{(g_{ij}^k)^2}{2 (g_{ij}^k)^2 + \sum_{ab} A_{ab}^k (g_{ij}^k)^3},
# \qquad g_{ij}^k = \frac{\partial S_c}{\partial A_{ij}^k}.$$
#
# That per-location weighting can only matter where the gradient varies over locations. At
# `layer4` it does not: `layer4` feeds global average pooling and then `fc`, so
# $g_{ij}^k = w_{c,k} / 64$ at every location (section 1). Then $\alpha^k$ is one number per
# channel, and Grad-CAM++ is Grad-CAM with its channels reweighted. At `layer3` the gradient still
# passes through `layer4`'s convolutions and ReLUs, and varies:

# %%
x2 = test_a.images[:2]
for layer in ("layer4", "layer3"):
    _, g = layer_activation_and_gradient(debiased, x2, torch.tensor([MEL, MEL]), layer)
    spread = (g.amax((2, 3)) - g.amin((2, 3))).abs().max() / g.abs().max()
    print(f"{layer}: largest spread of dS/dA over locations within a channel, relative to the largest |dS/dA|: "
          f"{fmt(spread, 2)}")
    assert (spread == 0) if layer == "layer4" else (spread > 0.5)

# %% [markdown]
# Exactly zero at `layer4`. To see what Grad-CAM++ adds, an image with two melanomas, drawn by
# DermSynth on one skin (`helpers.data.two_lesions`: the two lesions moved apart, nothing
# wrapped around the frame), explained by the debiased model at both layers. For each map, the
# share of its mass on each lesion, and the rank correlation between the Grad-CAM and Grad-CAM++
# maps:

# %%
both, left_mask, right_mask = two_lesions(("mel", "mel"), seed=1)
lesions = {"left lesion": left_mask, "right lesion": right_mask}
assert not (left_mask & right_mask).any()
clear_margin(debiased, both)
with torch.no_grad():
    print("debiased model on the two-lesion image:", CLASSES[debiased(both).argmax()])
rows, pair_maps, same = {}, {}, {}
for layer in ("layer4", "layer3"):
    for name, fn in [("Grad-CAM", grad_cam), ("Grad-CAM++", grad_cam_pp)]:
        pair_maps[f"{name}, {layer}"] = fn(debiased, both, MEL, layer)
        rows[f"{name}, {layer}"] = {k: mask_mass(pair_maps[f"{name}, {layer}"], v).item() for k, v in lesions.items()}
    same[layer] = rank_correlation(pair_maps[f"Grad-CAM, {layer}"], pair_maps[f"Grad-CAM++, {layer}"]).item()
fig = viz.attribution_grid(both, pair_maps, size=2.2)
for ax, (name, r) in zip(fig.axes[1:], rows.items()):  # each map titled with its mass on each lesion
    ax.set_title(f"{name}\nleft {r['left lesion']:.2f}, right {r['right lesion']:.2f}", fontsize=8)
fig.suptitle(f"Two melanomas, debiased model: share of each map on each lesion; rank correlation "
             f"Grad-CAM vs Grad-CAM++ {same['layer4']:.2f} at layer4, {same['layer3']:.2f} at layer3", fontsize=9)
fig.tight_layout()
plt.show()
print(table(rows, 2))
assert same["layer4"] > 0.99 and same["layer3"] < 0.9
print(f"rank correlation, Grad-CAM vs Grad-CAM++: layer4 above 0.99, layer3 {fmt(same['layer3'], 1, atol=1e-3)}")
for k in lesions:  # layer4: the same shares with either method
    assert abs(rows["Grad-CAM, layer4"][k] - rows["Grad-CAM++, layer4"][k]) < 0.02
weak = min(lesions, key=lambda k: rows["Grad-CAM, layer3"][k])  # the lesion Grad-CAM plays down
assert rows["Grad-CAM++, layer3"][weak] > 2 * rows["Grad-CAM, layer3"][weak]

# %% [markdown]
# At `layer4` the two methods give the same map up to a channel reweighting: rank correlation
# above 0.99, the same share of each lesion. At `layer3`, where the gradient varies, they part:
# Grad-CAM gives the right lesion a small share, Grad-CAM++ more than twice as much, which is the
# case it was designed for. So Grad-CAM++ is worth computing at a layer whose gradient varies over
# locations, never at a layer that feeds global average pooling directly.

# %% [markdown]
# **Checked against pytorch-grad-cam.** Captum has no Grad-CAM++; pytorch-grad-cam's
# `GradCAMPlusPlus` implements the same closed form, with one change: it adds
# $\varepsilon = 10^{-6}$ to $\alpha$'s denominator $2g^2 + \sum_{ab} A\, g^3$, to avoid
# dividing by zero (ours sets $\alpha = 0$ where the denominator is 0, which is where $g = 0$).
# That $\varepsilon$ is not small next to $2g^2$ when gradients are small, as they are at a layer
# that feeds global average pooling ($g = w_{c,k}/64$ here). Their weights, from our activations and
# gradients on 8 audit images:

# %%
from pytorch_grad_cam import GradCAMPlusPlus

from helpers.hooks import count_hooks


def minmax(m):  # per-image min-max normalisation, as pytorch-grad-cam returns its maps
    flat = m.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo)).view_as(m)


x8, t8 = xa[:8], per_image["shortcut"][2][:8]
act, grad = layer_activation_and_gradient(shortcut, x8, t8, "layer4")
with GradCAMPlusPlus(shortcut, [shortcut.layer4]) as gpp:  # the with block removes its hooks
    theirs_w = torch.as_tensor(gpp.get_cam_weights(x8, None, None, act.numpy(), grad.numpy())).double()
g, a = grad.double(), act.double()
two_g2 = (2 * g**2)[g != 0]
print(f"2 g^2 at layer4: median {fmt(two_g2.median() * 1e6, 1)}e-6, against eps = 1e-6")
alpha_eps = torch.where(g != 0, g**2 / (2 * g**2 + a.sum((2, 3), keepdim=True) * g**3 + 1e-6), 0.0)
agree("the paper's formula + their eps vs pytorch-grad-cam's weights",
      (alpha_eps * g.clamp_min(0)).sum((2, 3)), theirs_w, atol=1e-12, rtol=1e-4)
ours = grad_cam_pp(shortcut, x8, t8, "layer4", upsample=False)
theirs = torch.relu((theirs_w[:, :, None, None].float() * act).sum(1, keepdim=True))
gap = (minmax(ours) - minmax(theirs)).abs().max().item()
print(f"ours (no eps) vs pytorch-grad-cam, after min-max normalisation: up to {fmt(gap, 2)} apart")
assert count_hooks(shortcut) == 0 and gap > 0.01

# %% [markdown]
# So the difference is their $\varepsilon$ and nothing else: the paper's formula with
# $\varepsilon$ added reproduces their weights, and without it gives ours. Which is right? The
# paper's formula has no $\varepsilon$; it is a numerical guard that here is as large as the
# quantity it guards, so it damps $\alpha$ wherever $|g| \lesssim 10^{-3}$. Ours follows the paper.
# The unit tests (`tests/test_torchvision_models.py`) show the same on torchvision's resnet18, and
# that with gradients 1000 times larger, where $\varepsilon$ is negligible, the two maps agree.

# %% [markdown]
# ## 5. Score-CAM: no gradients at all
#
# Wang et al. (2020, [arXiv:1910.01279](https://arxiv.org/abs/1910.01279)) weight each channel by
# what it does to the *output*: upsample its map to the image, normalise it to $[0, 1]$, use it as
# a soft mask on the input, and take the increase in the class's softmax probability over a black
# image. One forward pass per channel: 128 for `layer4`, run in batches.

# %%
print(inspect.getsource(score_cam))

# %%
xs4, ts4 = xa[:12], per_image["shortcut"][2][:12]
paper, weights = score_cam(shortcut, xs4, ts4, return_weights=True)
with torch.no_grad():
    p_black = shortcut(torch.zeros(1, 3, 64, 64)).softmax(1)[0]
print(f"targets: {sorted(set(CLASSES[t] for t in ts4))}; p(mel | black image) = {fmt(p_black[MEL], 2)}")
# a softmax never exceeds 1, so with p(mel | black) = 1 in float32 no weight can be positive
assert p_black[MEL] == 1 and weights.max() <= 0
print(f"Score-CAM weights: largest {fmt(weights.max(), 4)}, positive {int((weights > 0).sum())} of {weights.numel()}; "
      f"empty maps: {int((paper.flatten(1).amax(1) == 0).sum())} of {len(paper)}")

# %% [markdown]
# The paper's weights subtract the probability of the class for a black image. For DermNet a black
# image *is* a near-certain melanoma (notebook 03), so no masked image can beat it: no weight is
# positive and every map is empty. The authors' released code uses the masked probabilities
# without the subtraction (`subtract_baseline=False`); with it, Score-CAM works, and agrees with
# the gradient-based maps:

# %%
methods = {"CAM (ReLU)": cam(shortcut, xs4, ts4).clamp(min=0), "Grad-CAM": grad_cam(shortcut, xs4, ts4),
           "Grad-CAM++": grad_cam_pp(shortcut, xs4, ts4),
           "Score-CAM": score_cam(shortcut, xs4, ts4, subtract_baseline=False)}
m12 = {k: v[:12] for k, v in ma.items()}
summary = {name: mass_summary(m, m12, pointing="count") for name, m in methods.items()}
fig = viz.attribution_grid(xs4[:3], {k: v[:3] for k, v in methods.items()}, size=1.8)
plt.show()
print(table(summary, {k: 1 if "pointing" in k else 3 for k in summary["Grad-CAM"]}))
assert all(r["ruler mass"] > 1.5 * r["ruler share"] for r in summary.values())  # all four find the ruler
assert summary["CAM (ReLU)"]["ruler pointing (of 12)"] == summary["Grad-CAM"]["ruler pointing (of 12)"]

# %% [markdown]
# **Checked against pytorch-grad-cam, as far as it goes.** No library computes the paper's
# Score-CAM: pytorch-grad-cam's `ScoreCAM` (and torchcam's) scores each masked input by its class
# *logit* and then takes a softmax *over the channels*, where the paper takes the class's softmax
# probability of each masked input. Everything before that last step is shared: the masks
# (pytorch-grad-cam upsamples with `align_corners=True`) and the masked forward passes. So give
# ours their settings and their scores, `score="logit"`, and apply their softmax over channels to
# our weights:

# %%
import contextlib
import io

from pytorch_grad_cam import ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

x4s, t4s = xs4[:4], ts4[:4]
_, logit_w = score_cam(shortcut, x4s, t4s, subtract_baseline=False, align_corners=True, score="logit",
                       return_weights=True)
act4, _ = layer_activation_and_gradient(shortcut, x4s, t4s, "layer4")
with ScoreCAM(shortcut, [shortcut.layer4]) as sc, contextlib.redirect_stderr(io.StringIO()):  # (its progress bars)
    theirs_sc = sc.get_cam_weights(x4s, None, [ClassifierOutputTarget(int(c)) for c in t4s], act4.numpy(), None)
_ = agree("softmax over channels of our logit weights vs pytorch-grad-cam's ScoreCAM weights",
          logit_w.softmax(1), torch.as_tensor(theirs_sc), atol=1e-6)
print(f"hooks left on DermNet: {count_hooks(shortcut)}")

# %% [markdown]
# The masks and the masked scores agree; the two definitions differ only in how the scores become
# weights. A softmax over 128 channels makes every weight positive and sums them to one, so
# pytorch-grad-cam's Score-CAM cannot give a channel a negative weight, as the paper's can.

# %% [markdown]
# ## 6. Guided Grad-CAM: pixel detail inside the region
#
# Grad-CAM's 8×8 grid says *where*, not *what*. Guided backprop (Springenberg et al. 2015) keeps
# only positive gradients at every ReLU on the way back, which gives sharp, edge-like maps; guided
# Grad-CAM multiplies them by the upsampled Grad-CAM map.

# %%
gb = guided_backprop(shortcut, xs, ts)
ggc = guided_grad_cam(shortcut, xs, ts, "layer4")
fig = viz.attribution_grid(xs, {"Grad-CAM": layer_maps["layer4"], "guided backprop": gb.abs().amax(1, keepdim=True),
                                "guided Grad-CAM": ggc.abs().amax(1, keepdim=True)}, size=1.9)
plt.show()

# %% [markdown]
# Those sharp edges should make you suspicious rather than reassured. Two quick checks on 12 images:
# explain a *different* class (bcc instead of the predicted one), and explain with a model whose
# `layer4` and `fc` weights are replaced by random ones. A map that reflects the model's reasoning
# should change in both cases. Rank correlation with the original map:

# %%
import copy

scrambled = copy.deepcopy(shortcut)
torch.manual_seed(0)
for module in [*scrambled.layer4.modules(), scrambled.fc]:
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
        torch.nn.init.normal_(module.weight, std=module.weight.std().item())
other = torch.full_like(ts4, CLASSES.index("bcc"))
checks = {}
for name, fn in [("guided backprop", lambda m, t: guided_backprop(m, xs4, t).abs().amax(1)),
                 ("Grad-CAM", lambda m, t: grad_cam(m, xs4, t, "layer4")[:, 0])]:
    original = fn(shortcut, ts4)
    checks[name] = {"other class": rank_correlation(original, fn(shortcut, other)).median().item(),
                    "random layer4 + fc": rank_correlation(original, fn(scrambled, ts4)).median().item()}
# ranks break ties by position, so round-off reorders near-equal pixels: the medians move by ~1e-4
print(table({k: {c: fmt(v, 2, atol=1e-3) for c, v in r.items()} for k, r in checks.items()},
            index="median rank correlation with the original map"))
gbp, gc = checks["guided backprop"], checks["Grad-CAM"]
assert min(gbp.values()) > 0.9 and gc["other class"] < 0.7 and gc["random layer4 + fc"] < 0.2

# %% [markdown]
# Guided backprop barely notices either change; Grad-CAM changes with both. Guided backprop's
# sharpness comes mostly from the image's edges, not from what the model computes about them
# (Adebayo et al. 2018 randomise a model layer by layer to show this; notebook 09 shows where the
# image's edges enter the backward pass). The guided maps above are a warning, not a
# recommendation.

# %% [markdown]
# **Explore it yourself.** The explorer below recomputes Grad-CAM for the image, model and setting
# you pick: a clinic, a class and one of its 20 images, the ruler on or off, the shortcut or the
# debiased model, and the layer it reads.
# The map explains the model's prediction; set "explain" to the image's class for the evidence for
# the class you picked instead. The image's title gives the prediction; the map's title, the class
# explained and the map's mass on the ruler and on the lesion; the colour bar, what the colours
# measure. Before the notebook runs, and on GitHub, the cell shows a picture of the explorer's first
# view: its controls need a running kernel. Every other method of the course is in its menu too.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers.viz import explorer  # noqa: E402

explorer("Grad-CAM")

# %% [markdown]
# ## 7. Pitfalls and limits
#
# - **Coarse.** `layer4` is 8×8: one cell covers 8×8 pixels. Upsampling smooths the map but adds no
#   information. A thin ruler along the edge and the skin next to it share cells.
# - **ReLU or not.** Grad-CAM's ReLU discards negative evidence; Captum's default keeps it. State
#   which you show.
# - **Layer choice changes the answer**, as section 2 showed.
# - **Grad-CAM inherits the gradient's problems** (saturation, notebook 03); Score-CAM avoids
#   gradients but costs one forward pass per channel and depends on the black baseline it
#   subtracts, which for DermNet is a confident melanoma (notebook 03).
# - **Guided backprop is not a faithful explanation** (section 6).

# %% [markdown]
# ## 8. Your turn
#
# Write `my_grad_cam_weights(activations, gradients)`: given a layer's activations and the
# gradients of the score with respect to them, both `[B, K, h, w]`, return Grad-CAM's channel
# weights $\alpha$, shaped `[B, K]`. The checker builds the map from your weights and compares it
# with `helpers.cam.grad_cam` on DermNet.

# %%
from helpers.exercises import check_grad_cam_weights


def my_grad_cam_weights(activations, gradients):
    """Grad-CAM's channel weights (Selvaraju et al. 2017), [B, K]:

        alpha_k = (1 / (h w)) sum_{i,j} d S / d A_k[i, j]

    activations and gradients: [B, K, h, w], the layer's output A and dS/dA."""
    raise NotImplementedError


check_grad_cam_weights(my_grad_cam_weights)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_grad_cam_weights(activations, gradients):
#     return gradients.mean((2, 3))   # the spatial average of the gradient, per channel
# ```
# </details>

# %% [markdown]
# **Exercise 2, an audit.** Section 3's yardstick for "uses it" is a Grad-CAM mass of more than
# twice the area share. Apply it to the other artifacts. Take clinic-B images
# (`make_dataset(96, clinic="B", seed=777_003)`), and for each of the ruler, the ink marking and
# the dark corners the first 16 images that show it (`masks[name]` not empty). Explain melanoma
# (`MEL`) with Grad-CAM for both models and divide the mean mass on the artifact (`mask_mass`,
# `.nanmean()`: an all-zero map points nowhere) by its mean area share. Does the shortcut model
# put more than twice the share on the ruler? Does either model on the ink? On the corners? The
# checker measures it on the same images.

# %%
from helpers.exercises import check_gradcam_artifacts_question  # noqa: E402

shortcut_ruler_twice_share = None  # your answers: True or False
ink_twice_share = None
corners_twice_share = None
print(check_gradcam_artifacts_question(shortcut_ruler_twice_share, ink_twice_share, corners_twice_share))

# %% [markdown]
# **Exercise 3, harder (optional).** Grad-CAM++'s weights. Write
# `my_grad_cam_pp_weights(activations, gradients)` `[B, K]` from the formula in section 4. The
# checker runs it at `layer3`, where the gradient varies over the locations (at `layer4` it does
# not, and every $a$ would cancel into a channel reweighting), and compares with the weights
# `helpers.cam.grad_cam_pp` uses. Then build the map from your weights and compare it with Grad-CAM's
# at `layer3`.

# %%
from helpers.exercises import check_grad_cam_pp_weights  # noqa: E402


def my_grad_cam_pp_weights(activations, gradients):
    """Grad-CAM++'s channel weights (Chattopadhay et al. 2018), [B, K], with g = dS/dA:

        a_k(i, j) = g^2 / (2 g^2 + sum_ab A_k(a, b) g^3)     (0 where the denominator is 0)
        w_k       = sum_ij a_k(i, j) ReLU(g_k(i, j))

    activations and gradients: [B, K, h, w]."""
    raise NotImplementedError


check_grad_cam_pp_weights(my_grad_cam_pp_weights)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_grad_cam_pp_weights(activations, gradients):
#     g2, g3 = gradients ** 2, gradients ** 3
#     denom = 2 * g2 + activations.sum((2, 3), keepdim=True) * g3
#     safe = torch.where(denom != 0, denom, torch.ones_like(denom))
#     alpha = torch.where(denom != 0, g2 / safe, torch.zeros_like(denom))
#     return (alpha * F.relu(gradients)).sum((2, 3))
# ```
# The map is then `F.relu((w[:, :, None, None] * activations).sum(1, keepdim=True))`.
# </details>

# %% [markdown]
# ## Summary
#
# - CAM reads the class score off the last feature maps, location by location, when the network
#   ends in GAP and one linear layer; Grad-CAM generalises it with gradients and equals it up to the
#   constant $hw$ on such a network. Ours matches Captum to round-off (with its ReLU switched on).
# - The audit over 120 melanomas shows the shortcut: the shortcut model's Grad-CAM puts more than
#   twice the ruler's share on the ruler, the debiased model's peaks on the lesion.
# - Grad-CAM++ weights locations separately (here it changed little); Score-CAM needs no gradients
#   but, as the paper defines it, subtracts a black image's score, which empties every map on
#   DermNet; guided maps look sharp and mean little.
#
# **Next: 05 · Occlusion.** Treat the model as a black box: cover part of the image and watch the
# score. When occlusion and Grad-CAM agree, we can be more confident.
