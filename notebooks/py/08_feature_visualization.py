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
# - run feature visualization with `helpers.featurevis.visualize`, and say what each
#   regularizer and the Fourier parameterization change, with numbers;
# - check the parameterization and the ascent against torch-lucent (lucid for PyTorch);
# - find the top-activating images of a channel and their receptive fields;
# - measure whether DermNet's melanoma channels are ruler detectors.
#
# **Time to run:** about 50 s on 2 CPU cores.

# %%
import inspect
import time
import warnings

import matplotlib.pyplot as plt
import torch

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
colour = colour_correlation_sqrt(test_b.images[:400])  # DermSynth's colour statistics, not ImageNet's
print("colour square root (rows: R, G, B):")
print("\n".join("  ".join(f"{fmt(v, 1):>5}" for v in row) for row in colour.tolist()))

# %% [markdown]
# ## 1. Objectives
#
# Feature visualization (Erhan et al. 2009; Simonyan et al. 2014,
# [arXiv:1312.6034](https://arxiv.org/abs/1312.6034); Olah et al. 2017,
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
# Start as Simonyan et al. did: pixels, plain gradient ascent on the melanoma logit. Then add, one
# at a time, an L2 penalty, total variation, periodic blur (Yosinski et al. 2015), and finally
# the full recipe of Olah et al.: a Fourier parameterization with $1/f$ scaling, decorrelated
# colours, and random jitter, scale and rotation every step. Two numbers per image: the logit
# reached (on the image itself, no transform), and its **high-frequency share**, the fraction of
# its spectral power above a quarter of the sampling rate (a real melanoma is shown too, for
# scale).

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
# the numbers go in the titles: an optimization's end point moves with the CPU's arithmetic more
# than a printed digit may (README), while every claim below is asserted with a margin
names = [*vis, "(a real melanoma)"]
fig = viz.image_grid(torch.cat([*vis.values(), real_mel]),
                     titles=[f"{k}\nlogit {float(reached[k]):.0f}, HF {hf[k]:.2f}" for k in names], ncols=7, size=1.8)
plt.show()

# %% [markdown]
# Plain pixel ascent reaches a logit some forty times a real melanoma's with an image made
# mostly of high frequencies: an adversarial pattern that no photo looks like. The L2 penalty
# tames the amplitude (the logit falls by more than half) but not the frequencies; total
# variation lowers both a little. Blur removes the high frequencies outright.
# The Fourier parameterization starts the search among smooth images (it scales down high
# frequencies, so a gradient step changes them less), and the transforms make the result hold up
# under small shifts and rotations, as a real feature must: together they bring the
# high-frequency share below a real image's.
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
# Same start, same map, same trajectory to float round-off. Two differences are worth knowing:
# lucent's `render_vis` leaves a forward hook on every module of the model it touched (they keep
# firing, and keep tensors alive, on every later call) and leaves gradients in the model's
# `.grad`; `visualize` takes only the image's gradient and removes its hooks. lucent's random
# transforms draw from NumPy's global generator; ours come from `seed` and leave the caller's
# random state alone.
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

fig, axes = plt.subplots(2, 3, figsize=(9, 6.4))
for ax, (layer, c) in zip(axes.flat, [("layer2", 3), ("layer2", 11), ("layer3", 5), ("layer3", 40),
                                      ("layer4", 7), ("layer4", 88)], strict=True):
    idx, ys, xs, _ = top_activating(shortcut, layer, c, test_b.images, k=9)
    boxes = [receptive_field(shortcut, layer, int(y), int(x)) for y, x in zip(ys, xs, strict=True)]
    crops = crop_boxes(test_b.images[idx], boxes, size=32)
    grid = crops.view(3, 3, 3, 32, 32).permute(2, 0, 3, 1, 4).reshape(3, 96, 96)
    viz.show_image(grid, ax=ax, title=f"{layer} channel {c}: top 9 crops")
plt.tight_layout()
plt.show()

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

# %% [markdown]
# The shortcut model's three strongest melanoma channels fire on rulers: all nine of their top
# images have one, hardly any of them a melanoma, and the peak sits on the ruler itself. The
# debiased model's melanoma channels fire on melanomas, and never peak on a ruler (five or six of
# their top nine images have one, more than clinic B's base rate, but the peak is elsewhere).
# That is the dataset-search view of the shortcut, with no attribution map involved.
#
# **Does feature visualization show it too?** Visualize the mel class and the top channel of each
# model, and score each image with a ruler detector built for DermSynth: the share of the
# brightness profile's power at the ruler's tick frequency (one tick every 4 pixels) along the
# best edge. First, check the detector on real images.

# %%
print(inspect.getsource(ruler_periodicity).split('"""')[2].strip())
with_ruler = make_dataset(200, clinic="B", seed=77, ruler=True)
without = make_dataset(200, clinic="B", seed=77, ruler=False)
s_on, s_off = ruler_periodicity(with_ruler.images), ruler_periodicity(without.images)
auc = (s_on[:, None] > s_off[None]).float().mean()
assert auc > 0.99
print(f"detector on 200 lesions with and without a ruler: AUC {fmt(auc, 2)}; "
      f"median score {fmt(s_on.median(), 2)} with, {fmt(s_off.median(), 3)} without")

targets = {}
for name, model in (("shortcut", shortcut), ("debiased", debiased)):
    targets[f"{name}: class mel"] = (model, class_logit(MEL))
    targets[f"{name}: layer4 channel {top_channels[name][0]}"] = (model, channel("layer4", top_channels[name][0]))
images = {k: visualize(m, obj, steps=96, n=4, seed=1, colour=colour) for k, (m, obj) in targets.items()}
scores = {k: ruler_periodicity(v) for k, v in images.items()}
limit = float(s_off.quantile(0.95))
for v in scores.values():
    assert float(v.max()) < 0.5 * limit  # far from the line, on every machine
print(f"every one of the {4 * len(scores)} visualizations scores below half the 95th percentile of real "
      f"images without a ruler ({fmt(limit, 2)}); real rulers score {fmt(s_on.median(), 2)} (median)")
fig = viz.image_grid(torch.cat([v[:2] for v in images.values()]),
                     titles=[f"{k}\nscore {float(scores[k][i]):.3f}" for k in images for i in range(2)],
                     ncols=8, size=1.6)
plt.show()

# %% [markdown]
# The detector separates real images with and without a ruler almost perfectly, and it finds
# **no ruler** in any of the visualizations: even the shortcut model's, for the class and for its
# ruler channel, score below half of what 5% of real images *without* a ruler reach. Whatever ruler-like structure
# these channels respond to, gradient ascent from noise does not draw it as a ruler at an edge.
# That is a finding too: the channels are ruler detectors on real data (section 5), and their
# visualization does not show it. What maximizes a unit and what the unit does on real images are
# different questions.
#
# ## 6. Pitfalls and limits
#
# - **Adversarial patterns.** Without a parameterization or regularizer that favours natural
#   images, the ascent finds high-frequency patterns that score absurdly high (section 2).
# - **One optimum among many.** A visualization is one local maximum from one seed; `n=4`
#   different seeds (or a diversity term) show how much it varies.
# - **Maximizing is not explaining.** What drives a unit to its extreme can differ from what it
#   responds to on real data: here, the dataset search finds the ruler and the visualization does
#   not. Check visualizations against real top-activating images.
# - **Receptive fields grow fast.** A `layer4` unit sees the whole 64×64 image; saying "this
#   unit looks at the ruler" needs the position of its peak, not its receptive field.
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
# **Exercise 2.** Do the shortcut model's top melanoma channels fire on rulers *in images that are
# not melanomas*? Answer from section 5, then let the checker run the search on 1,000 other
# clinic-B images.

# %%
from helpers.exercises import check_ruler_channels_question  # noqa: E402

fires_on_rulers_in_other_classes = False  # your answer: True or False
check_ruler_channels_question(fires_on_rulers_in_other_classes)

# %% [markdown]
# ## Summary
#
# - An objective reads the network (a logit, a channel, a neuron, a direction); feature
#   visualization climbs it. Without help the climb ends in high-frequency patterns; blur, a
#   Fourier parameterization and transformation robustness keep it among natural-looking images,
#   and the notebook measured what each does.
# - Ours matches torch-lucent's parameterization and ascent step for step, and unlike it leaves no
#   hooks or gradients on the model.
# - Dataset search with receptive fields computed from the architecture shows the shortcut
#   directly: the shortcut model's three strongest melanoma channels peak on rulers in images of
#   any class; the debiased model's peak on melanomas.
# - The visualizations of those channels contain no ruler by a detector that finds real rulers
#   almost perfectly: what maximizes a unit is not the same as what it does.
#
# **Next: 09 · Deconvnets.** Project one activation back to pixels through the network, with
# unpooling switches and transposed convolutions.
