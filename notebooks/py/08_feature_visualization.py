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
# # 08 · Feature visualization and dataset search: what does a unit want to see?
#
# **The question.** Notebooks 01-07 explained one image at a time. Now turn to the network
# itself: what image would make the melanoma logit, or one channel of `layer4`, as large as
# possible? And which real images excite that channel most? If the shortcut model's melanoma
# channels are ruler detectors, both views should say so.
#
# **After this notebook you will be able to**
# - write an objective (a class logit, a channel, a neuron, a direction) and combine objectives;
# - read a visualization: describe it, then measure what it suggests;
# - run feature visualization with `helpers.featurevis.visualize`, and say what each
#   regularizer and the Fourier parameterization change, with numbers;
# - check the parameterization and the ascent against torch-lucent (lucid for PyTorch);
# - find the top-activating images of a channel and their receptive fields;
# - measure whether DermNet's melanoma channels are ruler detectors.
#
# **Time to run:** about 35 s on 2 CPU cores.

# %%
import inspect
import time
import warnings
from functools import cache

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from helpers import viz
from helpers.data import MEL, make_dataset
from helpers.featurevis import (channel, class_logit, colour_correlation_sqrt, crop_boxes, direction, fft_image,
                                lucent_reference, neuron, receptive_field, ruler_periodicity, to_rgb, top_activating,
                                visualize)
from helpers.hooks import capture, count_hooks
from helpers.models import load_dermnet
from helpers.report import agree, fmt, table
from helpers.train import TEST_SEEDS

warnings.filterwarnings("ignore", category=DeprecationWarning)  # kornia 0.4.1, imported by lucent
warnings.filterwarnings("ignore", category=UserWarning, module="lucent")
torch.manual_seed(0)
shortcut, debiased = load_dermnet("shortcut"), load_dermnet("debiased")
test_a = make_dataset(2000, clinic="A", seed=TEST_SEEDS["A"])  # held-out clinic A
test_b = make_dataset(1000, clinic="B", seed=TEST_SEEDS["B"])  # held-out clinic B: rulers independent of class

# %% [markdown]
# ## 1. Objectives
#
# Feature visualization (Erhan et al. 2009; Simonyan et al. 2014,
# [arXiv:1312.6034](https://arxiv.org/abs/1312.6034); Mordvintsev, Olah & Tyka 2015, "Inceptionism",
# the DeepDream post; Olah et al. 2017,
# [distill.pub/2017/feature-visualization](https://distill.pub/2017/feature-visualization/))
# solves $x^\star = \arg\max_x \; f(x) - \lambda R(x)$ by gradient ascent, where the
# **objective** $f$ reads the network: a class logit, the mean of one channel, one neuron (a
# channel at one position), or a direction $v$ in a layer's activation space,
# $f(x) = \operatorname{mean}_{ij} \langle a_{ij}(x), v\rangle / \lVert v\rVert$. Objectives add and
# scale, as in lucid, so "the mel logit plus half of channel 7" is one expression:

# %%
combo = class_logit(MEL) + 0.5 * channel("layer4", 7) - neuron("layer3", 2, 4, 4)
print(combo)
x4 = test_a.images[:4]
with capture(shortcut, "layer4") as r4, capture(shortcut, "layer3") as r3, torch.no_grad():
    z = shortcut(x4)
by_hand = z[:, MEL] + 0.5 * r4.activation[:, 7].mean((1, 2)) - r3.activation[:, 2, 4, 4]
_ = agree("objective vs by hand, 4 images", combo({"layer4": r4.activation, "layer3": r3.activation}, z),
          by_hand, atol=1e-6)

# %% [markdown]
# A **direction** is what later notebooks will visualize (a concept's CAV in notebook 10, a sparse
# autoencoder's latent in notebook 14). One direction in `layer4` is already known: the row of the
# final layer's weights for melanoma. Since DermNet averages `layer4` over positions before `fc`,
# the mel logit is $\lVert w \rVert \cdot \mathrm{direction}(w) + b$, exactly:

# %%
w_mel, b_mel = shortcut.fc.weight[MEL].detach(), shortcut.fc.bias[MEL].detach()
along = direction("layer4", w_mel)({"layer4": r4.activation}, z)
_ = agree("|w| direction(layer4, w_mel) + b vs the mel logit", w_mel.norm() * along + b_mel, z[:, MEL], atol=1e-5)

# %% [markdown]
# ## 2. Class model visualization, and what each regularizer does
#
# Start with plain gradient ascent on the melanoma logit $S_c$ in pixel space. Simonyan et al.'s
# class model is the second row: the L2-penalized objective $S_c(x) - \lambda\lVert x\rVert_2^2$,
# climbed by the update
#
# $$x \leftarrow x + \eta\,\nabla_x\big(S_c(x) - \lambda\lVert x \rVert_2^2\big).$$
#
# The course takes the same gradient but two practical liberties: the step is Adam's (lr 0.05),
# and the image is the sigmoid of the optimized parameters, so every pixel stays in $[0, 1]$
# (the L2 penalty is on the image minus grey). Then add, one at a time, total variation, periodic
# blur (Yosinski et al. 2015), and finally the full recipe of Olah et al.: a Fourier
# parameterization with $1/f$ scaling, decorrelated colours, and random jitter, scale and rotation
# every step.
#
# **Decorrelated colours.** Neighbouring colour channels of a photo move together. lucid
# optimizes in a colour space whose axes are uncorrelated: the square root of the colour
# covariance, measured here on DermSynth (not ImageNet):

# %%
colour = colour_correlation_sqrt(test_b.images[:400])
print("colour square root (rows: R, G, B; columns: the three colour directions):")
print("\n".join("  ".join(f"{fmt(v, 1):>5}" for v in row) for row in colour.tolist()))
print("column lengths:", ", ".join(fmt(v, 2) for v in colour.norm(dim=0)))

# %% [markdown]
# The first column is the brightness direction: R, G and B move together (its sign is arbitrary,
# as for any eigenvector). The other two are colour directions (red against green and blue,
# blue against green), six to ten times shorter, because DermSynth's pixels vary far more in
# brightness than in hue. A unit step in this space therefore changes brightness far more than
# hue: the optimizer stays among the colours the images actually have.
#
# Two numbers per image: the logit reached (on the image itself, no transform), and its
# **high-frequency share**, the fraction of its spectral power above a quarter of the sampling
# rate (a real melanoma is shown too, for scale).

# %%
def high_frequency_share(images):
    spec = torch.fft.fft2(images - images.mean((2, 3), keepdim=True)).abs().pow(2).sum(1)
    f = torch.fft.fftfreq(images.shape[-1])
    high = (f[:, None] ** 2 + f[None, :] ** 2).sqrt() > 0.25
    return (spec * high).sum((1, 2)) / spec.sum((1, 2))


settings = {
    "pixels": dict(param="pixel", transforms=None),
    "pixels + L2": dict(param="pixel", transforms=None, l2=0.5),
    "pixels + TV": dict(param="pixel", transforms=None, tv=200.0),
    "pixels + blur": dict(param="pixel", transforms=None, blur_every=4, blur_sigma=0.7),
    "Fourier + colour": dict(param="fft", transforms=None, colour=colour),
    "Fourier + colour + transforms": dict(param="fft", colour=colour),
}
start = time.perf_counter()
vis = {name: visualize(shortcut, class_logit(MEL), steps=96, lr=0.05, seed=0, **kw) for name, kw in settings.items()}
print(f"6 visualizations of 96 steps: {time.perf_counter() - start:.1f} s")
with torch.no_grad():
    reached = {name: shortcut(img)[0, MEL] for name, img in vis.items()}
print("the logit reached and the high-frequency share (HF) are in each image's title")
real_mel = test_a.images[test_a.labels == MEL][:1]
with torch.no_grad():
    reached["(a real melanoma)"] = shortcut(real_mel)[0, MEL]
hf = {name: float(high_frequency_share(img)[0]) for name, img in vis.items()}
hf["(a real melanoma)"] = float(high_frequency_share(real_mel)[0])
assert hf["pixels"] > 0.8 and hf["pixels + L2"] > 0.7 and hf["pixels + blur"] < 0.2
assert hf["Fourier + colour + transforms"] < hf["Fourier + colour"] < hf["pixels"] / 1.5
assert hf["pixels + TV"] < hf["pixels"] - 0.05 and float(reached["pixels + TV"]) < float(reached["pixels"])
assert hf["Fourier + colour + transforms"] < hf["(a real melanoma)"]
assert float(reached["pixels + L2"]) < float(reached["pixels"]) / 2
assert float(reached["pixels"]) > 20 * float(reached["(a real melanoma)"])
assert float(reached["pixels + blur"]) > 15 * float(reached["(a real melanoma)"])


def blue_share(images):  # the share of pixels bluer than they are red: DermSynth's veil colour
    return (images[:, 2] > images[:, 0]).float().flatten(1).mean(1)


blue = {name: float(blue_share(img)[0]) for name, img in vis.items()}
blue["(a real melanoma)"] = float(blue_share(real_mel)[0])
mel_b = test_b.labels == MEL
print(f"pixels bluer than red, clinic B: melanomas {fmt(blue_share(test_b.images[mel_b]).mean(), 2)}, "
      f"other lesions {fmt(blue_share(test_b.images[~mel_b]).mean(), 2)}; "
      f"the ruler's paper: {fmt((test_b.images[:, 2] > test_b.images[:, 0])[test_b.masks['ruler']].float().mean(), 2)}")
assert all(blue[k] > 0.55 for k in vis) and all(blue[k] > 0.95 for k in ("pixels + TV", "pixels + blur"))
names = [*vis, "(a real melanoma)"]
fig = viz.image_grid(torch.cat([*vis.values(), real_mel]), ncols=7, size=1.8,
                     titles=[f"{k}\nlogit {float(reached[k]):.0f}, HF {hf[k]:.2f}\nblue {blue[k]:.2f}" for k in names])
plt.show()

# %% [markdown]
# **What the pictures show.** Plain pixel ascent is coloured noise, one pixel at a time; with the
# L2 penalty it is the same noise at a lower contrast, around grey. Total variation gives blockier
# blue noise; blur gives an almost uniform blue square, and that square still reaches a logit about
# twenty times a real melanoma's. The Fourier parameterization gives a pale blue-white patch with
# dark brown corners, noisy without transforms and smoother with them.
#
# **What the numbers say.** Plain pixel ascent reaches a logit some forty times a real melanoma's
# with an image made mostly of high frequencies: an adversarial pattern that no photo looks like.
# The L2 penalty tames the amplitude (the logit falls by more than half) but not the frequencies;
# total variation lowers both a little. Blur removes the high frequencies outright.
# The Fourier parameterization starts the search among smooth images (it scales down high
# frequencies, so a gradient step changes them less: Olah et al. call this *preconditioning*), and
# the transforms make the result hold up under small shifts and rotations, as a real feature must:
# together they bring the high-frequency share below a real image's.
#
# **The colour is a finding.** In DermSynth the blue-white veil is drawn in melanomas only, and
# it is the one structure bluer than it is red: the third line of each title is the share of such
# pixels. Real images have almost none (1% of a clinic-B melanoma's pixels on average, none on
# other lesions or on the ruler's cream paper: the line above the figure), while every
# visualization is more than half blue, and the pixel, total-variation and blur images almost
# entirely. (A grey random start would be about half: the Fourier images, at about 0.6, are only
# a little above it, and their blue is clearest to the eye in the pale centre.) The shortcut
# model's melanoma logit rewards the veil's colour, not the ruler's cream.
#
# ## 3. Check against torch-lucent
#
# lucent is the PyTorch port of lucid, the library of the Distill articles. With DermSynth's
# colour matrix put in place of its ImageNet one, the same seed gives the same starting spectrum;
# its forward map (spectrum to image) and its optimization loop (Adam at 0.05, no transforms)
# should then match ours step for step. `lucent_reference` runs lucent's own `render_vis` so, and
# cleans up after it.

# %%
print(inspect.getsource(fft_image))
spectrum, start, theirs, leaked = lucent_reference(shortcut, "layer4", 3, colour, steps=20, n=2, seed=0)
with torch.no_grad():
    _ = agree("spectrum -> image, ours vs lucent", to_rgb(fft_image(spectrum, 64), colour), start, atol=1e-6)
ours = visualize(shortcut, channel("layer4", 3), steps=20, n=2, seed=0, transforms=None, colour=colour)
_ = agree("20 Adam steps on channel layer4:3, ours vs lucent", ours, theirs, atol=1e-5)
print(f"lucent's render_vis left {leaked} forward hooks on DermNet's modules (lucent_reference removes them); "
      f"ours leaves {count_hooks(shortcut)}")

# %% [markdown]
# Same start, same map, same trajectory to float round-off, **without transforms**: the random
# jitter, scale and rotation are drawn differently in the two libraries, so with them the two
# runs are not compared here. One difference is worth knowing: lucent's `render_vis` leaves a
# forward hook on every module of the model it touched (counted above; they keep firing, and keep
# tensors alive, on every later call), while `visualize` removes its hooks.
#
# ## 4. Dataset search: the real images a channel likes most
#
# The other half of the picture: run many real images and keep, for one channel, the images
# where it peaks and where. The unit at position $(y, x)$ of a layer sees only part of the image,
# its **receptive field**; `receptive_field` computes it from the architecture (a NaN put in one
# input row spreads through every convolution, pooling and residual branch to exactly the units
# that row reaches). Here on clinic-B images, where rulers are independent of the class:

# %%
for layer in ("layer1", "layer2", "layer3", "layer4"):
    top, left, bottom, right = receptive_field(shortcut, layer, 3, 3)
    print(f"{layer}: unit (3, 3) sees rows {top}-{bottom - 1}, columns {left}-{right - 1} "
          f"({bottom - top}x{right - left} pixels)")

# %% [markdown]
# That is the *theoretical* receptive field, every pixel that can reach the unit. Luo et al.
# (2016, "Understanding the effective receptive field") showed that the pixels that actually move
# a unit are concentrated in a much smaller, roughly Gaussian patch at its centre.
#
# Which channels to search? Pick them by a rule, one per question and layer, not by browsing:
# - **ruler channel:** the largest paired effect of the ruler, on 200 clinic-B lesions drawn twice,
#   with and without a ruler (mean difference of the channel's mean activation over its spread);
# - **vignette channel:** the largest share of the channel's activation on DermSynth's dark
#   dermoscope corners (the `corners` mask), on the clinic-B images that have them; a channel blind
#   to the corners would put there about the share of the image they cover;
# - **melanoma channel:** the largest standardized difference between clinic-B melanomas and the
#   other lesions (clinic B, so that the ruler cannot stand in for the class).

# %%
with_ruler = make_dataset(200, clinic="B", seed=77, ruler=True)
without = make_dataset(200, clinic="B", seed=77, ruler=False)  # the same 200 lesions, no ruler
layers = ("layer2", "layer3", "layer4")


def channel_means(model, images):  # {layer: [N, C, h, w]} for the three layers, one forward pass
    with capture(model, "layer2") as a2, capture(model, "layer3") as a3, capture(model, "layer4") as a4, \
            torch.no_grad():
        model(images)
    return dict(zip(layers, (a2.activation, a3.activation, a4.activation), strict=True))


def best(score):  # the top channel, refusing a near-tie with the runner-up
    top2 = score.topk(2)
    assert top2.values[0] - top2.values[1] > 1e-3
    return int(top2.indices[0]), float(top2.values[0])


acts_b, acts_on, acts_off = (channel_means(shortcut, x) for x in (test_b.images, with_ruler.images, without.images))
corners = test_b.masks["corners"]
has_corners = corners.flatten(1).any(1)
mel_b = test_b.labels == MEL
picked, rule = {}, {}
for layer in layers:
    a = acts_b[layer]
    diff = (acts_on[layer] - acts_off[layer]).mean((2, 3))
    picked[layer, "ruler"], z = best(diff.mean(0) / diff.std(0).clamp_min(1e-6))
    cell = F.adaptive_avg_pool2d(corners[:, None].float(), a.shape[-1])[:, 0]  # corner share of each cell
    on_corners = ((a * cell[:, None]).sum((2, 3)) / a.sum((2, 3)).clamp_min(1e-6))[has_corners].mean(0)
    picked[layer, "vignette"], share = best(on_corners)
    m = a.mean((2, 3))
    picked[layer, "melanoma"], d = best((m[mel_b].mean(0) - m[~mel_b].mean(0)) / m.std(0).clamp_min(1e-6))
    rule[layer] = {"ruler channel": picked[layer, "ruler"], "paired effect": z,
                   "vignette channel": picked[layer, "vignette"], "mass on corners": share,
                   "corner area": cell[has_corners].mean(),
                   "melanoma channel": picked[layer, "melanoma"], "mel vs other": d}
print(table(rule, 2, index="shortcut model"))


def tiles(crops, ncols=3, gap=1):  # k crops side by side, a white line between them
    padded = F.pad(crops, (0, gap, 0, gap), value=1.0)
    k, c, h, w = padded.shape
    return padded.view(k // ncols, ncols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, k // ncols * h, ncols * w)[
        :, :-gap, :-gap]


@cache
def field(layer, y, x):  # the receptive field depends on the position only
    return receptive_field(shortcut, layer, y, x)


fig, axes = plt.subplots(3, 3, figsize=(9, 9.9))
for row, question in enumerate(("ruler", "vignette", "melanoma")):
    for col, layer in enumerate(layers):
        c = picked[layer, question]
        idx, ys, xs, _ = top_activating(shortcut, layer, c, test_b.images, k=9)
        boxes = [field(layer, int(y), int(x)) for y, x in zip(ys, xs, strict=True)]
        viz.show_image(tiles(crop_boxes(test_b.images[idx], boxes, size=32)), ax=axes[row, col],
                       title=f"{question}: {layer} channel {c}")
plt.tight_layout()
plt.show()
del acts_b, acts_on, acts_off  # 115 MB of activations, read only here

# %% [markdown]
# **What the crops show** (rows: the rule; columns: the layer).
# - *Ruler channels.* Layer 2's channel 9 sees ruler ticks in all nine crops: its units are small
#   enough (24 pixels) to hold a few ticks. Layer 3's and layer 4's channel 46 mix ruler strips
#   at the crop's edge with red-purple lesions: a ruler switches them on, but so does that colour.
# - *Vignette channels.* The rule finds no clean vignette detector. Layer 2's channel 1 peaks on
#   ruler ticks, layer 3's channel 17 on round brown lesions (two crops show the black corner),
#   layer 4's channel 39 on pink lesions with red vessels. Each puts three to four times the
#   corners' area share of its mass on them, but its *peak* is elsewhere: a share of mass is not
#   a peak, and a search should say which it ranks by.
# - *Melanoma channels.* Dark, irregular brown lesion borders in layer 2; irregular brown
#   lesions, some with a blue-grey centre (the veil), in layer 3; a mixture in layer 4: irregular
#   brown lesions, but also red and pink ones and one ruler.
#
# %% [markdown]
# ## 5. On DermNet: are the melanoma channels ruler detectors?
#
# Rank `layer4`'s channels by what they give the melanoma logit: the fc weight times the
# channel's mean activation on clinic-A melanomas. For the top three of each model, take the nine
# clinic-B images that excite the channel most and count how many have a ruler at all, and on how
# many the channel's peak (its 8×8 cell of the 64×64 image) lies on the ruler.

# %%
mel_a = test_a.images[test_a.labels == MEL]
ruler_b = test_b.masks["ruler"]
found, top_channels = {}, {}
for name, model in (("shortcut", shortcut), ("debiased", debiased)):
    with capture(model, "layer4") as rec, torch.no_grad():
        model(mel_a)
    contribution = model.fc.weight[MEL].detach() * rec.activation.mean((0, 2, 3))
    ranked = contribution.sort(descending=True)
    assert (ranked.values[2] - ranked.values[3]) > 1e-3  # the top three are not a near-tie
    top_channels[name] = ranked.indices[:3].tolist()
    for c in top_channels[name]:
        idx, ys, xs, value = top_activating(model, "layer4", c, test_b.images, k=10)
        assert value[8] - value[9] > 1e-3  # the ninth place is not a near-tie
        idx, ys, xs = idx[:9], ys[:9], xs[:9]
        on_ruler = [bool(ruler_b[i, 8 * y:8 * y + 8, 8 * x:8 * x + 8].any())
                    for i, y, x in zip(idx, ys, xs, strict=True)]
        found[f"{name} channel {c}"] = {"top-9 with a ruler": int(test_b.has_ruler[idx].sum()),
                                        "peak on the ruler": sum(on_ruler),
                                        "top-9 that are mel": int((test_b.labels[idx] == MEL).sum())}
print(f"clinic B: {fmt(test_b.has_ruler.float().mean(), 2)} of the images have a ruler")
print(table(found, 0, index="layer4 channel (of 9)"))
for c in top_channels["shortcut"]:
    row = found[f"shortcut channel {c}"]
    assert row["top-9 with a ruler"] == 9 and row["peak on the ruler"] >= 8 and row["top-9 that are mel"] <= 2
for c in top_channels["debiased"]:
    row = found[f"debiased channel {c}"]
    assert row["peak on the ruler"] == 0 and row["top-9 that are mel"] == 9
del test_a, mel_a  # the 2,000 clinic-A images are not needed again

# %% [markdown]
# The shortcut model's three strongest melanoma channels fire on rulers: all nine of their top
# images have one, hardly any of them a melanoma, and the peak sits on the ruler itself. The
# debiased model's melanoma channels fire on melanomas, and never peak on a ruler (five or six of
# their top nine images have one, more than clinic B's base rate, but the peak is elsewhere).
# That is the dataset-search view of the shortcut, with no attribution map involved.
#
# **Does feature visualization show it too?** Visualize the mel class and the top channel of each
# model, and the shortcut model's layer-3 ruler channel from section 4, whose units see a patch
# small enough for a few ticks. Then measure three things on each image:
# - **edge score**, a ruler detector built for DermSynth: the share of the brightness profile's
#   power at the ruler's tick frequency (one tick every 4 pixels) along the best edge strip;
# - **tick share**, the same frequency looked for anywhere: the share of the 2-D spectrum's power
#   at 1/4 cycle per pixel along either axis, in whatever part of the image;
# - **the unit's own response**, on its visualization against real images with a ruler and the
#   same lesions without one.
#
# First, check both detectors on real images.

# %%
print(inspect.getsource(ruler_periodicity).split('"""')[2].strip())


def tick_share(images, period=4):
    """The share of the grey image's AC power at the tick frequency, 1/period cycles per pixel,
    along either axis (within one frequency bin across it), anywhere in the image."""
    grey = images.mean(1)
    power = torch.fft.fft2(grey - grey.mean((1, 2), keepdim=True)).abs().pow(2)
    size = images.shape[-1]
    f = torch.fft.fftfreq(size, 1 / size).abs()  # cycles per image
    k = size // period
    band = ((f[None, :] == k) & (f[:, None] <= 1)) | ((f[:, None] == k) & (f[None, :] <= 1))
    return (power * band).sum((1, 2)) / power.sum((1, 2))


detectors = {"edge score": ruler_periodicity, "tick share": tick_share}
limit = {}
for name, detect in detectors.items():
    s_on, s_off = detect(with_ruler.images), detect(without.images)
    limit[name] = float(s_off.quantile(0.95))
    auc = (s_on[:, None] > s_off[None]).float().mean()
    print(f"{name} on 200 lesions with and without a ruler: AUC {fmt(auc, 2)}; "
          f"median {fmt(s_on.median(), 3)} with, {fmt(s_off.median(), 4)} without")

top_sc, top_db = top_channels["shortcut"][0], top_channels["debiased"][0]
l3 = picked["layer3", "ruler"]
targets = {"shortcut: class mel": (shortcut, class_logit(MEL), 2),
           f"shortcut: layer4 ch {top_sc}": (shortcut, channel("layer4", top_sc), 4),
           f"shortcut: layer3 ch {l3}": (shortcut, channel("layer3", l3), 2),
           "debiased: class mel": (debiased, class_logit(MEL), 2),
           f"debiased: layer4 ch {top_db}": (debiased, channel("layer4", top_db), 2)}
images = {k: visualize(m, obj, steps=96, n=n, seed=1, colour=colour) for k, (m, obj, n) in targets.items()}
scores = {k: {name: detect(v) for name, detect in detectors.items()} for k, v in images.items()}
for v in scores.values():
    assert all(float(v[name].max()) < limit[name] for name in detectors)  # below 95% of ruler-free images


def unit(model, layer, c, x):  # the channel's mean activation on each image
    with capture(model, layer) as rec, torch.no_grad():
        model(x)
    return rec.activation[:, c].mean((1, 2))


units = {f"shortcut: layer4 ch {top_sc}": (shortcut, "layer4", top_sc),
         f"shortcut: layer3 ch {l3}": (shortcut, "layer3", l3),
         f"debiased: layer4 ch {top_db}": (debiased, "layer4", top_db)}
response, on_vis = {}, {}
for k, (m, layer, c) in units.items():
    response[k] = {"real, with a ruler": unit(m, layer, c, with_ruler.images).median(),
                   "same lesions, no ruler": unit(m, layer, c, without.images).median()}
    on_vis[k] = unit(m, layer, c, images[k])
    assert float(on_vis[k].min()) > 10 * float(response[k]["real, with a ruler"])
print(table(response, 2, index="median activation"))
print("on its own visualization each channel gives more than ten times its median on real rulers "
      "(values in the titles)")
s_on = tick_share(with_ruler.images)
typical = int(s_on.argsort()[len(s_on) // 2])  # the real ruler image with the median tick share
real = torch.cat([with_ruler.images[typical:typical + 1], without.images[typical:typical + 1]])
shown = torch.cat([v[:2] for v in images.values()] + [real])
titles = [f"{k.replace(': ', chr(10))}\nedge {float(scores[k]['edge score'][i]):.3f}, "
          f"tick {float(scores[k]['tick share'][i]):.3f}"
          + (f"\nunit {float(on_vis[k][i]):.0f}" if k in on_vis else "") for k in images for i in range(2)]
titles += [f"real\n{w}\nedge {float(ruler_periodicity(x[None])[0]):.3f}, tick {float(tick_share(x[None])[0]):.3f}"
           for w, x in zip(("ruler", "no ruler"), real, strict=True)]
fig = viz.image_grid(shown, titles=titles, ncols=6, size=2.1)
fig.set_size_inches(12.6, 6.6)
fig.tight_layout()
plt.show()

# %% [markdown]
# **What the pictures show.** The shortcut model's three targets, the class, its top `layer4`
# channel and its `layer3` ruler channel, give nearly the same image: a pale blue-white patch
# covered in a fine, high-frequency texture, with dark brown and green corners. The debiased
# model's give a smooth, dark lesion-like blob on a cream border. The two models want very
# different images.
#
# **What the measurements say.** Both detectors separate real images with and without a ruler
# (AUC 1.00), and neither finds ticks in any visualization: every one scores below what 5% of
# real images *without* a ruler reach, on the edge score and on the tick share anywhere in the
# image. The shortcut model's texture is fine, but it is not at the ruler's tick frequency.
# The units' own responses (table above) confirm that the two shortcut channels are ruler
# detectors on real images: the same lesions give them many times more with a ruler than
# without, while the debiased model's channel hardly notices the ruler (the control). Yet each
# gives its own visualization more than ten times what it gives a real ruler. So these channels
# are ruler detectors on real data (section 5's search), and what drives them hardest is a pale
# blue-white texture, not a drawing of ticks at an edge. What maximizes a unit and what the unit
# does on real images are different questions.
#
# **Many optima.** A visualization is one local maximum from one random start. The four images
# of the shortcut model's top channel above come from four starts; lucid's *diversity* term pushes
# a batch apart by penalizing the cosine similarity of their `layer3` Gram matrices
# (`featurevis.diversity`). Same channel, same starts, without and with it (weight 2000):

# %%
plain = images[f"shortcut: layer4 ch {top_sc}"]
diverse = visualize(shortcut, channel("layer4", top_sc), steps=96, n=4, seed=1, colour=colour,
                    diversity_layer="layer3", diversity_weight=2000.0)


def mean_pairwise_distance(x):  # root-mean-square pixel difference, averaged over the pairs
    i, j = torch.triu_indices(len(x), len(x), 1)
    return (x[i] - x[j]).pow(2).flatten(1).mean(1).sqrt().mean()


d_plain, d_diverse = mean_pairwise_distance(plain), mean_pairwise_distance(diverse)
act_plain, act_diverse = unit(shortcut, "layer4", top_sc, plain), unit(shortcut, "layer4", top_sc, diverse)
assert float(d_diverse) > 1.15 * float(d_plain) and float(act_diverse.min()) < 0.5 * float(act_plain.min())
assert float(tick_share(diverse).max()) < limit["tick share"]
print(f"for scale, four real clinic-B images lie {fmt(mean_pairwise_distance(test_b.images[:4]), 2)} apart")
fig = viz.image_grid(torch.cat([plain, diverse]), ncols=4, size=2.0,
                     titles=[f"without, start {i + 1}\nunit {float(act_plain[i]):.0f}" for i in range(4)]
                     + [f"with diversity, start {i + 1}\nunit {float(act_diverse[i]):.0f}, "
                        f"tick {float(tick_share(diverse[i:i + 1])[0]):.3f}" for i in range(4)])
fig.suptitle(f"mean pairwise distance: {float(d_plain):.2f} without, {float(d_diverse):.2f} with", y=1.02)
plt.show()
del test_b  # the 1,000 clinic-B images are not needed again: a learner keeps several kernels open

# %% [markdown]
# Without the penalty the four starts end in variations on one picture (the same blue-white
# patch, its dark corners moved). With it they spread further apart (the distances in the
# figure's title; four real images, for scale, in the line above it) and look different: speckled
# pale patches, a brown texture, diagonal green-yellow stripes. None has power at the ruler's tick
# frequency (tick share in the titles, each below the ruler-free 95th percentile). The price is the
# objective: with the penalty the channel reaches far less (the unit's value in the titles). Diversity
# shows other images the unit accepts; it does not show that the unit has one meaning.
#
# ## 6. Pitfalls and limits
#
# - **Adversarial patterns.** Without a parameterization or regularizer that favours natural
#   images, the ascent finds high-frequency patterns that score absurdly high (section 2).
# - **One optimum among many.** A visualization is one local maximum from one start; several
#   starts, and a diversity term, show how much it varies (section 5).
# - **Maximizing is not explaining.** What drives a unit to its extreme can differ from what it
#   responds to on real data: here, the dataset search finds the ruler and the visualizations
#   draw no ruler ticks. Check visualizations against real top-activating images.
# - **Not free from the data's biases.** A common claim (the CS230 notes, for one) is that
#   gradient ascent shows "the idealized concept that excites a neuron, free from dataset
#   biases". The objective is read through the trained network, so whatever the training data
#   taught it comes along: the shortcut model's melanoma visualizations differ from the debiased
#   model's (section 5), and the only difference between the two is the data they were trained on.
# - **Receptive fields grow fast.** A `layer4` unit can see the whole 64×64 image; saying "this
#   unit looks at the ruler" needs the position of its peak, not its receptive field, and the
#   *effective* field (Luo et al. 2016) is smaller than the theoretical one.
# - **Confounded search.** On clinic-A images, where nearly every melanoma has a ruler, any
#   melanoma channel's top images have rulers: search where the suspected cue is independent of
#   the class (clinic B here).
#
# ## 7. Your turn
#
# **Exercise 1.** Write `my_fft_scale(size)`: the $1/f$ weights for the `rfft2` frequencies of a
# `size`×`size` image, $[size, size/2 + 1]$, with the zero frequency given the weight of the
# lowest non-zero frequency, $1/size$. The checker compares with `fft_scale` and names the usual slips.

# %%
from helpers.exercises import check_fft_scale  # noqa: E402


def my_fft_scale(size):
    """The 1/f weights of the rfft2 frequencies of a size x size image, [size, size // 2 + 1]:

        w(fy, fx) = 1 / max(sqrt(fx^2 + fy^2), 1 / size)

    fy over torch.fft.fftfreq(size), fx over torch.fft.rfftfreq(size) (cycles per pixel)."""
    raise NotImplementedError


check_fft_scale(my_fft_scale)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_fft_scale(size):
#     fy = torch.fft.fftfreq(size)[:, None]
#     fx = torch.fft.rfftfreq(size)[None, :]
#     return 1.0 / (fx ** 2 + fy ** 2).sqrt().clamp_min(1.0 / size)   # cap the zero frequency
# ```
# </details>
#
# **Exercise 2.** Does the shortcut model's top melanoma channel fire on rulers *in images that
# are not melanomas*? Measure it: pick the `layer4` channel with the largest fc weight for mel
# times its mean activation on clinic-A melanomas, run `top_activating` for it over 1,000 clinic-B
# images of your own (`make_dataset(1000, clinic="B", seed=...)`), and count its top 9 images that
# have a ruler, and those of them that are not melanomas. Answer True if 5 or more have a ruler
# (about 3 would be chance: 30% of clinic-B images have one) and 3 or more of those are not
# melanomas. The checker runs the search on 1,000 other clinic-B images.

# %%
from helpers.exercises import check_ruler_channels_question  # noqa: E402

fires_on_rulers_in_other_classes = None  # your answer, from your measurement: True or False
check_ruler_channels_question(fires_on_rulers_in_other_classes)

# %% [markdown]
# ## Summary
#
# - An objective reads the network (a logit, a channel, a neuron, a direction); feature
#   visualization climbs it. Without help the climb ends in high-frequency patterns; blur, a
#   Fourier parameterization and transformation robustness keep it among natural-looking images,
#   and the notebook measured what each does.
# - Without transforms, ours matches torch-lucent's parameterization and ascent step for step, and
#   unlike it leaves no hooks on the model.
# - Dataset search with receptive fields computed from the architecture shows the shortcut
#   directly: the shortcut model's three strongest melanoma channels peak on rulers in images of
#   any class; the debiased model's peak on melanomas.
# - Channels picked by a rule show what they respond to: ruler ticks in `layer2`, rulers and
#   red-purple lesions in `layer3` and `layer4`, irregular brown lesions for melanoma; ranking by a
#   share of mass on the vignette found no channel whose peak is on it.
# - The visualizations of the shortcut model's ruler channels show no ruler ticks: at the tick
#   frequency they hold no more power than a ruler-free photo, at the edge or anywhere in the
#   image. They show a pale blue-white texture (the veil's colour) that drives the unit far harder
#   than a real ruler does, where the debiased model draws a dark lesion-like blob: what maximizes
#   a unit is not the same as what it does on real images.
#
# Going further: Olah et al. (2018), "The Building Blocks of Interpretability"
# ([distill.pub/2018/building-blocks](https://distill.pub/2018/building-blocks/)), combine feature
# visualization with attribution: one visualization per position of a real image's activations.
#
# **Next: 09 · Deconvnets.** Project one activation back to pixels through the network, with
# unpooling switches and transposed convolutions.
