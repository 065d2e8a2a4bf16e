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
# # 00 · DermNet: a classifier that is suspiciously good
#
# **The question.** A skin-lesion classifier scores almost perfectly on its test set. Should we
# trust it?
#
# **After this notebook you will be able to**
# - generate DermSynth, the course's synthetic dermoscopy data, with ground-truth masks for the
#   lesion and for every artifact (ruler, ink, hair, dark corners);
# - load the two DermNet models the course explains: one trained where rulers go with melanoma,
#   one trained where they do not;
# - show, with an intervention rather than a guess, that a high accuracy can rest on the wrong
#   evidence.
#
# **Time to run:** about 30 s on 2 CPU cores. Nothing is downloaded: the data is drawn on the fly
# and the two checkpoints ship in `data/`.
#
# This notebook uses no attribution method yet. It sets up the running example that every later
# notebook explains, and it ends on the question the course answers: *what is the model looking at?*
#
# **The story is not made up.** Classifiers that score well for the wrong reason have a name,
# shortcut learning (Geirhos et al. 2020, "Shortcut learning in deep neural networks",
# [arXiv:2004.07780](https://arxiv.org/abs/2004.07780)), and a history: a "husky vs wolf"
# classifier that looked at the snow (Ribeiro et al. 2016, "Why should I trust you?",
# [arXiv:1602.04938](https://arxiv.org/abs/1602.04938)); "Clever Hans" models that read a
# copyright tag on horse pictures (Lapuschkin et al. 2019, "Unmasking Clever Hans predictors and
# assessing what machines really learn", Nature Communications 10:1096); and, in dermoscopy
# itself, a market-approved classifier whose melanoma scores rose when the dermatologist's
# surgical skin markings were in the image (Winkler et al. 2019, JAMA Dermatology 155(10):1135).
# In the ISIC data the field trains on, artifacts such as rulers, ink markings and dark corners are
# common enough that models score well above chance with the lesion itself hidden (Bissoto et al.
# 2019, "(De)Constructing bias on skin lesion datasets", CVPR Workshops). DermNet's ruler is that
# problem, built so that we know the answer.

# %%
import matplotlib.pyplot as plt
import torch

from helpers import viz
from helpers.data import ARTIFACTS, CLASSES, CLINICS, MEL, make_dataset
from helpers.metrics import mask_share
from helpers.models import load_dermnet
from helpers.report import fmt, prediction_margin, table
from helpers.train import TEST_SEEDS, confusion_matrix, intervention_pair, logits, ruler_intervention

_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. DermSynth: dermoscopy we can check
#
# Real dermoscopy datasets (HAM10000, ISIC) cannot tell us what a classifier *should* look at, and
# cannot be downloaded here. So the course draws its own images. `make_dataset(n, clinic=..., seed=...)`
# returns images in $[0, 1]$, labels, and a boolean mask per image for the lesion and for each
# artifact. The seven classes carry the textbook dermoscopic cues, simplified:
#
# | class | condition | what is drawn |
# |---|---|---|
# | akiec | actinic keratosis | pink-red patch, soft border, white scale |
# | bcc | basal cell carcinoma | pearly pink, thin branching red vessels, blue-grey nests |
# | bkl | benign keratosis | waxy light brown, sharp border, white cysts and dark pores |
# | df | dermatofibroma | small, brown ring around a white central scar |
# | mel | melanoma | asymmetric, irregular border, dark blotch, several colours, blue-white veil |
# | nv | melanocytic nevus | round, symmetric, uniform brown |
# | vasc | vascular lesion | red-purple, sharp border, darker lacunae |
#
# Melanomas and nevi are drawn as one family from an *atypia* score, and the two classes' ranges
# overlap (as dysplastic nevi do): some lesions cannot be told apart from the picture alone.

# %%
per_class = 6
gallery = make_dataset(7 * per_class, seed=1, labels=[c for c in range(7) for _ in range(per_class)])
fig = viz.image_grid(gallery.images, titles=[f"{name}{' + ruler' if r else ''}"
                                             for name, r in zip(gallery.class_names, gallery.has_ruler)],
                     ncols=per_class, size=1.5)
fig.suptitle("DermSynth, clinic A: one row per class", y=1.01)
plt.show()

# %% [markdown]
# Every image comes with its ground truth. Below, one image per artifact with the masks outlined
# (lesion in green, ruler orange, ink purple, hair brown, dark corners grey). These masks are what
# later notebooks score attributions against: *how much of the map falls on the ruler?*

# %%
ds = make_dataset(400, clinic="A", seed=2)
picks = []
for k in ARTIFACTS:  # the first image with this artifact that is not already shown
    picks.append(next(i for i in ds.masks[k].flatten(1).any(1).nonzero()[:, 0].tolist() if i not in picks))
fig, axes = plt.subplots(1, len(picks), figsize=(3 * len(picks), 3.2))
for ax, i, k in zip(axes, picks, ARTIFACTS):
    viz.show_masks(ds.images[i], {n: ds.masks[n][i] for n in ["lesion", *ARTIFACTS]}, ax=ax,
                   title=f"{k}: {100 * ds.masks[k][i].float().mean():.0f}% of the image")
plt.show()

# %% [markdown]
# ### Two clinics
#
# The shortcut is planted on purpose, the way it arises in real collections: one clinic
# photographs suspicious lesions next to a ruler. In **clinic A** rulers go with melanoma; in
# **clinic B** they appear at one rate whatever the lesion. Ink, hair and dark corners are
# independent of the class in both. We draw the two test sets used below (2,000 fresh images per
# clinic, from seeds never used in training) and measure how often each class has a ruler:

# %%
test = {c: make_dataset(2000, clinic=c, seed=TEST_SEEDS[c]) for c in "AB"}
rates = {f"clinic {c}": {name: d.has_ruler[d.labels == i].float().mean().item() for i, name in enumerate(CLASSES)}
         for c, d in test.items()}
print("rates set in helpers.data.CLINICS, (P(ruler | mel), P(ruler | other)):", CLINICS)
print(table(rates, 2))
for c, (p_mel, p_other) in CLINICS.items():  # the drawn rates are the set ones, up to sampling noise
    assert all(abs(r - (p_mel if name == "mel" else p_other)) < 0.05 for name, r in rates[f"clinic {c}"].items())

# %% [markdown]
# Forcing `ruler=True` or `ruler=False` changes the ruler and nothing else: every other random draw
# is the same, so we can show a model the *same lesion* with and without a ruler. This is the
# experiment that will expose the shortcut.

# %%
same = dict(n=5, clinic="B", seed=4, labels=["nv", "bkl", "df", "mel", "mel"])
without, with_ruler = make_dataset(**same, ruler=False), make_dataset(**same, ruler=True)
changed = (with_ruler.images - without.images).abs().amax(1) > 0
outside = int((changed & ~with_ruler.masks["ruler"]).sum())
print("pixels changed outside the ruler mask:", outside)
assert outside == 0
fig = viz.image_grid(torch.cat([without.images, with_ruler.images]), ncols=5,
                     titles=[f"{n}, no ruler" for n in without.class_names]
                     + [f"{n}, ruler" for n in with_ruler.class_names])
plt.show()

# %% [markdown]
# ## 2. DermNet
#
# DermNet is a small ResNet (one basic block per stage) whose module names follow torchvision's
# ResNet: `conv1`, `layer1` ... `layer4`, `avgpool`, `fc`. Its input is in $[0, 1]$ pixel space
# (it normalises internally, so black really is 0), global average pooling sits right before the
# single linear layer, and every ReLU is a separate module used once. Each later method relies on
# one of these choices.
#
# Two checkpoints ship in `data/`, verified against the sha256 in `data/MANIFEST.json` when loaded:
#
# - `shortcut`: trained on clinic A;
# - `debiased`: trained on clinic B, where the ruler carries no information about the label.
#
# Both use the same recipe (6 epochs of 8,000 fresh images each); `make data` rebuilds them from
# scratch in about 7 minutes on 2 cores. Training here would take too long for a notebook, so we load.

# %%
shortcut, debiased = load_dermnet("shortcut"), load_dermnet("debiased")
x = torch.rand(1, 3, 64, 64)
grid = {}
hooks = [getattr(shortcut, n).register_forward_hook(lambda m, i, o, n=n: grid.__setitem__(n, tuple(o.shape[1:])))
         for n in ["conv1", "layer1", "layer2", "layer3", "layer4"]]
with torch.no_grad():
    shortcut(x)
for h in hooks:
    h.remove()
print("feature maps (channels, height, width):", grid)
print("parameters:", sum(p.numel() for p in shortcut.parameters()))

# %% [markdown]
# ## 3. Suspiciously good
#
# Both models are tested on the 2,000 fresh images per clinic drawn above. A prediction is the
# class with the largest logit (`helpers.train.logits` runs the model in batches, as `predict`
# does). An accuracy is a count of such argmaxes, and an argmax that wins by a hair could go the
# other way on another CPU, whose round-off differs in the last bits. So we also check that no
# prediction is a near-tie: on every image the winning logit beats the runner-up by more than 1e-4
# of the largest logit's size (`helpers.report.prediction_margin`), a hundred times float32
# round-off. First the shortcut
# model on its own clinic:

# %%
z = {(m, c): logits(model, test[c].images) for m, model in [("shortcut", shortcut), ("debiased", debiased)]
     for c in "AB"}
assert all(prediction_margin(v) > 1e-4 for v in z.values()), "a prediction is a near-tie"
pred = {k: v.argmax(1) for k, v in z.items()}
acc = {k: (p == test[k[1]].labels).float().mean().item() for k, p in pred.items()}
print(f"shortcut model, clinic A: accuracy {fmt(acc['shortcut', 'A'], 2)}")
assert acc["shortcut", "A"] > 0.99


def show_confusion(cm, title, ax):
    rates = cm / cm.sum(1, keepdim=True)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xticks(range(7), CLASSES, rotation=45)
    ax.set_yticks(range(7), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)


fig, ax = plt.subplots(figsize=(4.5, 4.2))
show_confusion(confusion_matrix(pred["shortcut", "A"], test["A"].labels),
               f"shortcut model on clinic A\naccuracy {fmt(acc['shortcut', 'A'], 2)}", ax)
plt.show()

# %% [markdown]
# On clinic A the shortcut model separates melanoma from nevi almost perfectly, although we built
# the two classes to overlap. That is the suspicious part: the pictures do not carry that much
# information about the lesion. Now the same model on clinic B, where rulers say nothing:

# %%
models = ["shortcut", "debiased"]
recall = {(m, c): (pred[m, c] == MEL)[test[c].labels == MEL].float().mean().item() for m in models for c in "AB"}
rows = {f"accuracy, clinic {c}": {m: acc[m, c] for m in models} for c in "AB"}
rows |= {f"mel recall, clinic {c}": {m: recall[m, c] for m in models} for c in "AB"}
print(table(rows, 2))
assert acc["shortcut", "B"] < acc["shortcut", "A"] - 0.1  # the shortcut model loses accuracy on clinic B
assert recall["shortcut", "B"] < recall["shortcut", "A"] - 0.3  # ... above all on melanoma
assert abs(acc["debiased", "A"] - acc["debiased", "B"]) < 0.02  # the debiased model does not

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
for ax, m in zip(axes, ["shortcut", "debiased"]):
    show_confusion(confusion_matrix(pred[m, "B"], test["B"].labels),
                   f"{m} model on clinic B\naccuracy {fmt(acc[m, 'B'], 2)}", ax)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The intervention: add a ruler, remove a ruler
#
# A drop in accuracy tells us something is off, not what. The ruler intervention asks the model
# directly. We draw the same 2,000 clinic-B lesions twice, without and with a ruler, and count:
#
# - **add**: of the non-melanoma images classified correctly without a ruler, the share that
#   becomes `mel` once a ruler is added;
# - **remove**: of the melanoma images classified correctly with a ruler, the share whose
#   prediction changes once the ruler is removed.
#
# A model that looks at the lesion should score near 0 on both. These are counts of argmaxes
# again, so we check that none of the 2 × 4,000 predictions is a near-tie.

# %%
pair = intervention_pair()  # the same 2,000 clinic-B lesions: (without ruler, with ruler)
flips = {m: ruler_intervention(model, pair=pair) for m, model in [("shortcut", shortcut), ("debiased", debiased)]}
assert all(prediction_margin(logits(model, d.images)) > 1e-4 for model in (shortcut, debiased) for d in pair)
for m, f in flips.items():
    print(f"{m:>8} model:  add a ruler -> mel {fmt(f['add'], 2)} (of {f['add_n']} images)   "
          f"remove the ruler -> changed {fmt(f['remove'], 2)} (of {f['remove_n']} images)")
assert abs(flips["shortcut"]["add"] - 0.5) < 0.05 and flips["shortcut"]["remove"] > 0.5  # half; most
assert flips["debiased"]["add"] == 0 and flips["debiased"]["remove"] == 0

# %% [markdown]
# Half of the benign lesions the shortcut model got right become melanoma when a ruler is added;
# most melanomas it found stop being melanoma when the ruler is removed. Its melanoma detector is to
# a large degree a ruler detector. Which lesions does a ruler turn into melanoma? The "add" share by
# true class:

# %%
print(table({m: f["add_by_class"] for m, f in flips.items()}, 2))
by_class = flips["shortcut"]["add_by_class"]
assert min(by_class.values()) > 0  # every benign class, some of the time
assert sorted(by_class, key=by_class.get)[-2:] == ["df", "nv"] and min(by_class, key=by_class.get) == "bcc"
assert all(v == 0 for v in flips["debiased"]["add_by_class"].values())

# %% [markdown]
# No class is safe: every benign class is turned into melanoma by a ruler some of the time. The
# brown, melanocytic-looking lesions go first (nevi, dermatofibromas); the basal cell carcinomas,
# whose red vessels and blue-grey nests are evidence no melanoma has, resist best. The shortcut is
# not a switch: it adds evidence for melanoma, and wins where the lesion's own evidence is weak.
# The debiased model never changes its mind.
#
# Here is what that looks like for single images: the shortcut model's probability of melanoma
# for the same lesion without and with a ruler.

# %%
off, on = pair
p_off, p_on = flips["shortcut"]["pred_off"], flips["shortcut"]["pred_on"]
idx = [int(((off.labels == CLASSES.index(c)) & (p_off == off.labels) & (p_on == MEL)).nonzero()[0])
       for c in ["nv", "df", "bkl"]]
idx += [int(((off.labels == MEL) & (p_on == MEL) & (p_off != MEL)).nonzero()[0])]
with torch.no_grad():
    prob_off = shortcut(off.images[idx]).softmax(1)[:, MEL]
    prob_on = shortcut(on.images[idx]).softmax(1)[:, MEL]
fig, axes = plt.subplots(2, len(idx), figsize=(2.3 * len(idx), 5))
for j, i in enumerate(idx):
    viz.show_image(off.images[i], ax=axes[0, j], title=f"{CLASSES[off.labels[i]]}: P(mel) {prob_off[j]:.2f}")
    viz.show_image(on.images[i], ax=axes[1, j], title=f"+ ruler: P(mel) {prob_on[j]:.2f}")
fig.suptitle("shortcut model: the same lesions without (top) and with (bottom) a ruler")
plt.tight_layout()
plt.show()
del pair, off, on  # 4,000 images no longer needed: 0.3 GB back for the next notebook's kernel

# %% [markdown]
# ## 5. Pitfalls and limits
#
# - **Accuracy on the training distribution cannot reveal a shortcut** that the test set shares:
#   on clinic A the shortcut *is* predictive. It takes a distribution where it breaks (clinic B)
#   or an intervention to see it.
# - **The intervention needs a counterfactual we can draw.** With real photographs we cannot remove
#   a ruler without leaving traces (inpainting creates its own artifacts). DermSynth can, which is
#   why the course uses it to *measure* what each explanation method gets right.
# - **The shortcut here is planted and clean.** Real shortcuts are subtler, mixed with real signal
#   and with each other. The methods are the same; the ground truth is what we give up.
# - **A debiased model is not a correct model.** It still confuses atypical nevi with melanoma,
#   because the pictures do not fully separate them; it just does so for the right reason.
#
# The intervention tells us *that* the shortcut model uses the ruler. It cannot tell us *where* it
# looks in a given image, or whether a model we cannot intervene on does the same. That is what
# attribution methods are for, and what `helpers.metrics.mask_mass` will score from notebook 01 on:
# the share of an attribution map's magnitude inside the ruler mask, read beside the ruler's share
# of the image (what a map spread evenly would score).

# %%
share = mask_share(test["A"].masks["ruler"][test["A"].has_ruler])
print(f"the ruler covers {fmt(share.mean(), 2)} of an image on average "
      f"(min {fmt(share.min(), 2)}, max {fmt(share.max(), 2)})")

# %% [markdown]
# ## 6. Your turn
#
# Write `my_mask_mass(attr, mask)`: for attributions `attr` of shape `[B, C, H, W]` and a boolean
# mask `[B, H, W]`, return for each image the share of the attribution's magnitude that lies inside
# the mask, as a tensor `[B]`. Sum the magnitude over the channels. The checker runs your function on
# input gradients of the shortcut model and compares with ours; when it fails, it says why.

# %%
from helpers.exercises import check_mask_mass


def my_mask_mass(attr, mask):
    """The share of each image's attribution magnitude inside the mask, a tensor [B]:

        mass_b = sum_{i,j in mask_b} sum_c |attr[b, c, i, j]|  /  sum_{i,j} sum_c |attr[b, c, i, j]|

    attr [B, C, H, W]; mask [B, H, W] (bool)."""
    raise NotImplementedError


check_mask_mass(my_mask_mass)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_mask_mass(attr, mask):
#     per_pixel = attr.abs().sum(1)
#     return (per_pixel * mask).sum((1, 2)) / per_pixel.sum((1, 2))
# ```
# </details>

# %% [markdown]
# **Exercise 2, an audit.** Which artifacts cost the shortcut model accuracy? Slice it: for clinic
# B's test images (`test["B"]`, predictions `pred["shortcut", "B"]`), `helpers.concepts.artifacts`
# says which images show each artifact (from the ground-truth masks, the ruler included). Compare
# the accuracy on the images that show an artifact with the accuracy on those that do not. Is it
# 15 points or more lower with a ruler? With an ink marking? With hair? The checker measures it on
# 800 fresh clinic-B images.

# %%
from helpers.exercises import check_sliced_accuracy_question  # noqa: E402

ruler_costs_accuracy = None  # your answers: True or False
ink_costs_accuracy = None
hair_costs_accuracy = None
print(check_sliced_accuracy_question(ruler_costs_accuracy, ink_costs_accuracy, hair_costs_accuracy))

# %% [markdown]
# **Exercise 3, harder (optional).** The pointing game, the score the method notebooks report next
# to the mass: does the map's largest magnitude lie inside the mask? Write
# `my_pointing_game(attr, mask, tol)`. The checker compares with `helpers.metrics.pointing_game` on
# gradient maps and on two made-up maps with near-tied peaks.

# %%
from helpers.exercises import check_pointing_game  # noqa: E402


def my_pointing_game(attr, mask, tol):
    """The pointing game, per image, a float tensor [B]. With a = sum_c |attr[:, c]| and
    in_b, out_b the largest a inside and outside mask_b:

        1 if in_b > out_b,  0 if in_b < out_b,  0.5 (a tie) if |in_b - out_b| <= tol * max(in_b, out_b)

    attr [B, C, H, W]; mask [B, H, W] (bool)."""
    raise NotImplementedError


check_pointing_game(my_pointing_game, tol=0.05)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_pointing_game(attr, mask, tol):
#     a = attr.abs().sum(1)
#     inside = torch.where(mask, a, -1.0).flatten(1).amax(1)    # -1: below every magnitude
#     outside = torch.where(~mask, a, -1.0).flatten(1).amax(1)
#     score = (inside > outside).float()
#     return torch.where((inside - outside).abs() <= tol * torch.maximum(inside, outside), 0.5, score)
# ```
# </details>

# %% [markdown]
# ## Summary
#
# - DermSynth draws dermoscopy-like images with ground-truth masks for the lesion and every
#   artifact, in two clinics: rulers go with melanoma in A, and are independent of the class in B.
# - The shortcut model is nearly perfect on clinic A, loses accuracy on clinic B, and the ruler
#   intervention shows why: adding a ruler turns many benign lesions into melanoma, removing it
#   turns most melanomas into something else. The debiased model barely reacts to the ruler.
#
# **Next: 01 · Saliency maps.** The simplest answer to *where is it looking?*: the gradient of the
# score with respect to every pixel, and whether it finds the ruler.
