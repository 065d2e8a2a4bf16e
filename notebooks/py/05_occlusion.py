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
# # 05 · Occlusion: cover it up and watch the score
#
# **The question.** Every map so far was read off the model's insides: gradients, activations.
# What if we only look at what goes in and what comes out? Cover a patch of the image; if the
# score falls, the patch mattered. Does that brute-force check agree with Grad-CAM on DermNet?
#
# **After this notebook you will be able to**
# - compute an occlusion map with `helpers.perturbation.occlusion`, batched, and know how many
#   forward passes it costs;
# - check it against Captum's `Occlusion`, edges included;
# - choose a window, a stride and a patch colour, and say what each choice does to the map;
# - measure where occlusion and Grad-CAM agree, and read an image where they do not.
#
# **Time to run:** about 30 s on 2 CPU cores.

# %%
import inspect

import matplotlib.pyplot as plt
import torch
from captum.attr import Occlusion

from helpers import viz
from helpers.cam import grad_cam
from helpers.data import CLASSES, MEL, make_dataset
from helpers.gradients import mean_baseline
from helpers.metrics import mask_mass, mask_share, pointing_game, rank_correlation
from helpers.models import load_dermnet
from helpers.perturbation import occlusion, occlusion_masks
from helpers.report import agree, fmt, table
from helpers.train import TEST_SEEDS

torch.manual_seed(0)
shortcut, debiased = load_dermnet("shortcut"), load_dermnet("debiased")
test_a = make_dataset(2000, clinic="A", seed=TEST_SEEDS["A"])  # the held-out clinic-A test set
rulers = test_a[torch.nonzero(test_a.has_ruler)[:16, 0]]  # 16 images with a ruler (all melanomas here)
x0 = rulers.images[:1]
print("labels of the 16 ruler images:", sorted({CLASSES[int(c)] for c in rulers.labels}))

# %% [markdown]
# ## 1. The idea
#
# Zeiler & Fergus (2014, [arXiv:1311.2901](https://arxiv.org/abs/1311.2901)) slid a grey square
# over the image and recorded the class score at each position. For a window position $p$ and the
# class score $S_c$ (DermNet's logit):
#
# $$\Delta_p = S_c(x) - S_c(x \text{ with window } p \text{ replaced by a baseline}),
# \qquad A(i, j) = \operatorname{mean}_{p \ni (i, j)} \Delta_p .$$
#
# Positive: hiding the pixels lowers the score, so they supported the class. Every pixel gets the
# average drop of the windows that cover it. Nothing about the model is needed but its output.
#
# One window by hand first: cover a 16×16 patch of the ruler, on the 8-pixel grid nearest the
# middle of its strip, with DermSynth's mean colour. (Here the ruler runs along the bottom edge; the
# patch's top-left corner is printed in the figure.)

# %%
ruler_rows, ruler_cols = torch.nonzero(rulers.masks["ruler"][0], as_tuple=True)
r, c = int(ruler_rows.float().median()) // 8 * 8, int(ruler_cols.float().median()) // 8 * 8
covered = x0.clone()
covered[..., r:r + 16, c:c + 16] = mean_baseline(x0)[..., r:r + 16, c:c + 16]  # DermSynth's mean colour
with torch.no_grad():
    s_full, s_cov = shortcut(x0)[0, MEL].item(), shortcut(covered)[0, MEL].item()
fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
viz.show_masks(x0[0], {k: v[0] for k, v in rulers.masks.items()}, ax=axes[0], title="image, masks outlined",
               names=["ruler", "lesion"])
viz.show_image(covered[0], ax=axes[1], title=f"16x16 patch at ({r}, {c})")
axes[2].bar(["image", "covered"], [s_full, s_cov], color=["tab:blue", "tab:orange"])
axes[2].set_title("mel logit (shortcut)")
fig.tight_layout()
plt.show()
print(f"covering 16x16 pixels of the ruler moves the mel logit from {fmt(s_full, 1)} to {fmt(s_cov, 1)} "
      f"(drop {fmt(s_full - s_cov, 1)})")

# %% [markdown]
# ## 2. The helper: every window, in batches
#
# Doing that for every position is the whole method. The windows start at multiples of the stride;
# the last one in each direction is cropped at the image's far edge, so every pixel is covered.

# %%
for window, stride in [(8, 4), (10, 4), (16, 8)]:
    masks = occlusion_masks((64, 64), (window, window), (stride, stride))
    cover = masks.sum(0)
    print(f"window {window:2d}, stride {stride}: {masks.shape[0]:3d} positions; each pixel covered "
          f"{int(cover.min())} to {int(cover.max())} times; last window {int(masks[-1].sum())} pixels")

# %% [markdown]
# Pixels near the border are covered by fewer windows than pixels in the middle: that is why the
# map averages the drops instead of summing them. The helper builds the occluded images for all
# positions of all images as one stream and scores them `batch_size` at a time: no Python loop
# over windows, no forward pass of a single image.

# %%
print(inspect.getsource(occlusion))

# %% [markdown]
# ## 3. Check against Captum
#
# Captum's `Occlusion` with the same window (over all three channels), stride and baseline. By
# default the helper hands DermNet its occluded images in channels-last memory layout, which makes
# the convolutions faster on a CPU (`benchmarks/bench_perturbation.py` measures by how much) and
# rounds them differently; with `channels_last=False` it does Captum's arithmetic, and only the
# order in which the drops are summed can move the last bit.

# %%
x2, t2 = rulers.images[:2], rulers.labels[:2]
for window, stride in [(10, 4), (7, 3)]:
    ref = Occlusion(shortcut).attribute(x2, target=t2, sliding_window_shapes=(3, window, window),
                                        strides=(3, stride, stride), baselines=0.0, perturbations_per_eval=64)
    ours, passes = occlusion(shortcut, x2, t2, window=window, stride=stride, return_passes=True)
    same = occlusion(shortcut, x2, t2, window=window, stride=stride, channels_last=False)
    print(f"window {window:2d} stride {stride}: {passes} forward passes")
    agree("  ours (channels-last) vs Captum", ours, ref[:, :1], atol=1e-5)
    agree("  ours (Captum's layout) vs Captum", same, ref[:, :1], atol=2e-6)

# %% [markdown]
# Windows 10 and 7 do not tile 64 pixels, so their last windows are cropped: the edges agree too.
# (Captum returns one map per channel, all equal; ours returns one map, `[B, 1, H, W]`.)
#
# ## 4. Window, stride and patch colour
#
# A window smaller than the object misses redundancy: hiding one tick of a ruler leaves the rest
# of the ruler to do the job. A large window blurs the map. The stride sets the resolution and the
# cost: the number of forward passes grows with the square of 1 / stride.

# %%
settings = [(4, 2), (8, 4), (16, 8), (32, 16)]
maps, rows = {}, {}
for window, stride in settings:
    attr, passes = occlusion(shortcut, x0, MEL, window=window, stride=stride, baseline="mean",
                             return_passes=True)
    maps[f"w{window} s{stride}"] = attr
    rows[window] = {"stride": stride, "forward passes": passes,
                    "ruler mass": mask_mass(attr, rulers.masks["ruler"][:1]).item(),
                    "largest drop": attr.max().item()}
print(table(rows, {"ruler mass": 3, "largest drop": 2}, index="window"))
viz.attribution_grid(x0, maps, signed=True)
plt.show()

# %% [markdown]
# The patch colour matters as much. "Absent" has to be *something*: a black patch, the mean skin
# colour, or a blurred copy of the image. Notebook 03 found that DermNet scores a black image as
# melanoma with a logit of about 41, far above any real image. What does a black patch do?

# %%
mel_batch = rulers.images
baselines = {"black": 0.0, "mean colour": "mean", "blur": "blur"}
occ = {name: occlusion(shortcut, mel_batch, MEL, window=8, stride=4, baseline=b) for name, b in baselines.items()}
ruler = rulers.masks["ruler"]
rows = {name: {"mean drop": a.mean().item(), "pixels with a negative drop": (a < 0).float().mean().item(),
               "ruler mass": mask_mass(a, ruler).mean().item()} for name, a in occ.items()}
share = mask_share(ruler).mean().item()
print(table(rows, {"mean drop": 2, "pixels with a negative drop": 2, "ruler mass": 3}, index="patch"))
print(f"the ruler's share of the image: {fmt(share, 3)}")
black = rows["black"]
assert black["mean drop"] < 0 and abs(black["pixels with a negative drop"] - 0.75) < 0.05  # "three pixels in four"
assert abs(black["ruler mass"] - share) < 0.03  # black: near the ruler's share
assert min(rows["mean colour"]["ruler mass"], rows["blur"]["ruler mass"]) > 2 * share  # the ruler stands out
viz.attribution_grid(mel_batch[:3], {name: a[:3] for name, a in occ.items()}, signed=True)
plt.show()

# %% [markdown]
# A black patch *raises* the melanoma logit over most of the image (negative drops on about three
# pixels in four, in the table): dark blobs are melanoma evidence to this model, so the
# black-patch map mostly says "adding darkness helps" and its ruler mass sits near the ruler's
# share of the image. The mean colour and the blur make a
# hidden patch look like skin, and the ruler stands out. From here on the patch is the mean colour.
#
# ## 5. Occlusion and Grad-CAM: do they agree?
#
# Grad-CAM (notebook 04) reads the last convolutional layer; occlusion changes the input and watches
# the output. When two methods this different point at the same place, that place is more likely
# real. We measure agreement per image as the rank correlation of the two maps (Grad-CAM without
# its final ReLU, so that both maps are signed).

# %%
occ_s = occ["mean colour"]
cam_s = grad_cam(shortcut, mel_batch, MEL, relu=False)
corr = rank_correlation(occ_s, cam_s)
mass_occ, mass_cam = mask_mass(occ_s, ruler).mean().item(), mask_mass(cam_s.clamp_min(0), ruler).mean().item()
print(f"rank correlation occlusion vs Grad-CAM over {len(corr)} images: median {fmt(corr.median(), 2)}, "
      f"min {fmt(corr.min(), 2)}, max {fmt(corr.max(), 2)}")
print(f"ruler mass, occlusion {fmt(mass_occ, 3)} vs Grad-CAM {fmt(mass_cam, 3)}")
assert 0.3 < corr.median().item() < 0.8  # "moderate"
assert abs(mass_occ - mass_cam) < 0.15  # similar mass on the ruler
plt.figure(figsize=(4, 2.4))
plt.hist(corr.numpy(), bins=12, range=(-1, 1), color="tab:blue")
plt.xlabel("rank correlation, occlusion vs Grad-CAM")
plt.ylabel("images")
plt.tight_layout()
plt.show()

# %% [markdown]
# The agreement is moderate, and the image where it is lowest is worth a look. DermSynth can say
# how much the ruler matters there, because it can draw the same image without its ruler: the true
# effect of the ruler is the change in the logit when it is removed.

# %%
worst = int(corr.argmin())
lowest, runner_up = corr.sort().values[:2].tolist()
assert runner_up - lowest > 1e-3  # the lowest correlation is not a near-tie
no_ruler = make_dataset(2000, clinic="A", seed=TEST_SEEDS["A"], ruler=False)
index = torch.nonzero(test_a.has_ruler)[:16, 0]
with torch.no_grad():
    effect = shortcut(mel_batch)[:, MEL] - shortcut(no_ruler.images[index])[:, MEL]
lesion = rulers.masks["lesion"]
one = slice(worst, worst + 1)
print(f"image {worst}: rank correlation {fmt(corr[worst], 2)}")
where = {}
for name, a in [("occlusion", occ_s), ("Grad-CAM (ReLU)", cam_s.clamp_min(0))]:
    r_mass, l_mass = mask_mass(a[one], ruler[one]).item(), mask_mass(a[one], lesion[one]).item()
    where[name] = {"ruler mass": r_mass, "lesion mass": l_mass, "elsewhere": 1 - r_mass - l_mass}
print(table(where, 2, index=f"image {worst}"))
print(f"removing the ruler lowers the mel logit by {fmt(effect[worst], 2)} "
      f"(median over the 16 images: {fmt(effect.median(), 2)})")
for column in ("ruler mass", "lesion mass"):  # the same share on the ruler and on the lesion
    assert abs(where["occlusion"][column] - where["Grad-CAM (ReLU)"][column]) < 0.02
assert all(abs(w["elsewhere"] - 0.5) < 0.05 for w in where.values())  # about half on the plain skin
assert effect[worst] > 3  # several logits
viz.attribution_grid(mel_batch[one], {"occlusion": occ_s[one], "Grad-CAM": cam_s[one]}, signed=True)
plt.show()

# %% [markdown]
# On this image the two maps put the same share of their mass on the ruler and on the lesion, and
# the ruler does matter (removing it costs several logits). What they disagree about is the order
# of the remaining pixels, the plain skin, over which both maps spread about half their mass
# thinly: a rank correlation over all 4,096 pixels weighs that background as much as the ruler.
# So a low correlation is a prompt to look at *where* the mass goes and to run the intervention,
# not a verdict on either method. The
# methods also measure different things: occlusion, what happens when one window is *removed*;
# Grad-CAM, where the last layer's features push the score *locally*.
#
# ## 6. On DermNet: the shortcut model versus the debiased model

# %%
occ_d = occlusion(debiased, mel_batch, MEL, window=8, stride=4, baseline="mean")
rows = {}
for name, a in [("shortcut", occ_s), ("debiased", occ_d)]:
    rows[name] = {"ruler mass": mask_mass(a, ruler).mean().item(),
                  "lesion mass": mask_mass(a, lesion).mean().item(),
                  # the pointing game as a number of the 16 images (a share of 16 can sit on a
                  # rounding boundary: 6/16 = 0.375); a tie counts one half
                  "ruler pointing (of 16)": pointing_game(a, ruler).nansum().item(),
                  "lesion pointing (of 16)": pointing_game(a, lesion).nansum().item()}
l_share = mask_share(lesion).mean().item()
print(table(rows, {"ruler mass": 2, "lesion mass": 2, "ruler pointing (of 16)": 1, "lesion pointing (of 16)": 1},
            index="model"))
print(f"ruler share {fmt(share, 3)}, lesion share {fmt(l_share, 3)}")
assert 2.5 < rows["shortcut"]["ruler mass"] / share < 3.5  # about three times the ruler's share
assert rows["debiased"]["ruler mass"] < share
assert rows["debiased"]["lesion pointing (of 16)"] == 16  # the largest drop on the lesion in every image
viz.attribution_grid(mel_batch[:4], {"shortcut": occ_s[:4], "debiased": occ_d[:4]}, signed=True)
plt.show()

# %% [markdown]
# With no access to gradients at all, occlusion finds the shortcut: the shortcut model's map puts
# about three times the ruler's share of the image on the ruler, the debiased model's less than
# the ruler's share, and its largest drop is on the lesion in every image.

# %% [markdown]
# **Explore it yourself.** The explorer below recomputes occlusion for the image, model and setting
# you pick: a clinic, a class and one of its 20 images, the ruler on or off, the shortcut or the
# debiased model, and its window size.
# The map explains the model's prediction; set "explain" to the image's class for the evidence for
# the class you picked instead. The image's title gives the prediction; the map's title, the class
# explained and the map's mass on the ruler and on the lesion; the colour bar, what the colours
# measure. Before the notebook runs, and on GitHub, the cell shows a picture of the explorer's first
# view: its controls need a running kernel. Every other method of the course is in its menu too.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers.viz import explorer  # noqa: E402

explorer("occlusion")

# %% [markdown]
# ## 7. Pitfalls and limits
#
# - **The patch colour is a hypothesis about "absence".** A black patch on DermNet adds melanoma
#   evidence instead of removing any (section 4).
# - **Out of distribution.** A grey square is not something the model saw in training; part of the
#   drop can be surprise at the square rather than loss of evidence.
# - **Redundancy hides importance.** Two rulers, or a long one, survive the removal of any single
#   window: occlusion under-reports features that are present more than once.
# - **Cost.** B × (positions + 1) forward passes: 226 per image at window 8, stride 4; 962 at window 4, stride 2.
#   The gradient maps cost one backward pass.
#
# ## 8. Your turn
#
# Write `my_occlusion(model, x, target, window, stride)` with a black patch (baseline 0) that
# returns `[B, 1, H, W]`: for each window position, the drop of the target logit, averaged over the
# windows covering each pixel. Loop over the positions if you like; the checker compares with
# `helpers.perturbation.occlusion` and names common slips.

# %%
from helpers.exercises import check_occlusion


def my_occlusion(model, x, target, window, stride):
    """Occlusion with a black patch, [B, 1, H, W]: for each window position p (stride apart),

        drop_p = S_target(x) - S_target(x with window p set to 0),

    and each pixel gets the mean of drop_p over the windows p that cover it."""
    raise NotImplementedError


check_occlusion(my_occlusion)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_occlusion(model, x, target, window, stride):
#     t = torch.as_tensor(target).expand(x.shape[0])
#     with torch.no_grad():
#         full = model(x).gather(1, t[:, None])[:, 0]
#         total = torch.zeros(x.shape[0], 1, *x.shape[-2:])
#         count = torch.zeros(1, 1, *x.shape[-2:])
#         for r in range(0, x.shape[-2] - window + 1, stride):
#             for c in range(0, x.shape[-1] - window + 1, stride):
#                 covered = x.clone()
#                 covered[..., r:r + window, c:c + window] = 0
#                 drop = full - model(covered).gather(1, t[:, None])[:, 0]
#                 total[..., r:r + window, c:c + window] += drop.view(-1, 1, 1, 1)
#                 count[..., r:r + window, c:c + window] += 1
#     return total / count   # the average drop, not the sum
# ```
# (With window 16 and stride 8 the windows tile 64 pixels exactly; for other sizes the last
# window must be cropped at the edge, as the helper does.)
# </details>

# %% [markdown]
# **Exercise 2, an audit.** Does the shortcut model use the ink marking as it uses the ruler? Take
# clinic-B images (`make_dataset(96, clinic="B", seed=777_003)`) and, for the ruler and for the ink
# marking, the first 8 images that show it. Explain melanoma (`MEL`) with occlusion (window 16,
# stride 8, `baseline="mean"`) and compare the mean mass on the artifact with its mean area share.
# Is the ruler's mass above its share? The ink's? The checker measures it on the same images.

# %%
from helpers.exercises import check_occlusion_ink_question  # noqa: E402

ruler_above_share = None  # your answers: True or False
ink_above_share = None
print(check_occlusion_ink_question(ruler_above_share, ink_above_share))

# %% [markdown]
# **Exercise 3, harder (optional).** Windows that do not tile. With window 16 and stride 8 the
# windows fit 64 pixels exactly; with window 12 and stride 8 they do not, and a loop over
# `range(0, size - window + 1, stride)` never hides the last pixels. Write
# `my_occlusion_masks(size, window, stride)`: every window position as a boolean mask, row by row,
# the last window in each direction cropped at the image's far edge (as Captum's `Occlusion`).

# %%
from helpers.exercises import check_occlusion_masks  # noqa: E402


def my_occlusion_masks(size, window, stride):
    """The occlusion windows of a size x size image, a bool tensor [P, size, size], row by row:
    starts 0, stride, 2 stride, ... in each direction, ceil((size - window) / stride) + 1 of them,
    each window cropped at the far edge."""
    raise NotImplementedError


check_occlusion_masks(my_occlusion_masks)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_occlusion_masks(size, window, stride):
#     starts = [k * stride for k in range(math.ceil((size - window) / stride) + 1)]
#     masks = torch.zeros(len(starts) ** 2, size, size, dtype=torch.bool)
#     for p, (r, c) in enumerate((r, c) for r in starts for c in starts):
#         masks[p, r:r + window, c:c + window] = True   # slicing crops at the edge
#     return masks
# ```
# (`import math` first.)
# </details>

# %% [markdown]
# ## Summary
#
# - Occlusion needs only inputs and outputs: it is the check that does not trust the model's
#   internals. Ours matches Captum's `Occlusion` to float32 round-off, edges included, and reports
#   its cost in forward passes.
# - The window, the stride and above all the patch colour shape the map; on DermNet a black patch
#   is melanoma evidence, so the mean skin colour is the fairer "absence".
# - Occlusion and Grad-CAM agree moderately on DermNet's ruler images (median rank correlation
#   printed in section 5) and put similar mass on the ruler; where the correlation is low, look at
#   where the mass goes and run the ground-truth intervention.
#
# **Next: 06 · LIME.** Instead of one square at a time, switch many superpixels off at random and
# fit a linear model to the scores.
