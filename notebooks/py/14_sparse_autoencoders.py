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
# # 14 · Sparse autoencoders: finding the ruler feature without being told
#
# **The question.** Every method so far needed us to know what to look for: a mask to score a map
# against (01-09), a concept set (10), a class. A **sparse autoencoder** (SAE) needs none of that.
# It learns, from a layer's activations alone, an overcomplete dictionary of directions such that
# each activation is a sparse combination of a few of them. Mechanistic interpretability now uses
# SAEs to look for features nobody thought to test. Here we ask: *does an SAE trained on DermNet's
# activations, with no labels, find a ruler feature in the shortcut model, and does switching that
# feature off remove the shortcut?*
#
# **After this notebook you will be able to**
# - train a ReLU SAE (L1 penalty, resampling) and a TopK SAE (AuxK) from scratch, and check both
#   against the `dictionary-learning` library;
# - report what the field reports: L0, variance explained, dead latents, the downstream cost, the
#   sparsity/fidelity frontier;
# - find the latents that detect a known factor (AUROC against ground truth), look at their
#   top-activating images and their feature visualization, and label latents automatically;
# - edit the model through the SAE (zero latents, keep the reconstruction error) and measure the
#   effect on the decision.
#
# **Time to run:** about 30 s on 2 CPU cores (28 s measured, the SAE of section 2 training in 5 s);
# 70 to 130 s while the same machine ran other heavy jobs. The last cell prints this run's time.

# %%
import inspect
import time
from contextlib import nullcontext

import matplotlib.pyplot as plt
import torch

from helpers import sae as S
from helpers import viz
from helpers.cam import grad_cam
from helpers.concepts import class_images, concept_images, layer_activations, random_images, skin_tone, tcav_score, \
    train_cav
from helpers.data import CLASSES, MEL, make_dataset
from helpers.featurevis import channel, direction, top_activating, visualize
from helpers.hooks import count_hooks
from helpers.metrics import mask_mass
from helpers.models import load_dermnet
from helpers.report import agree, fmt, table
from helpers.train import intervention_pair, logits

start_all = time.perf_counter()
torch.manual_seed(0)
models = {name: load_dermnet(name) for name in ("shortcut", "debiased")}
saes = {name: S.load_sae(name)[0] for name in models}
layer = saes["shortcut"].layer
print(f"layer {layer}; shipped SAEs: {saes['shortcut'].d_latent} latents for {saes['shortcut'].d_in} channels, "
      f"k = {saes['shortcut'].k}")

# %% [markdown]
# ## 1. The idea
#
# Take one activation vector $x \in \mathbb{R}^{d}$ of a layer (here one position of DermNet's
# `layer4` map, $d = 128$ channels). An SAE writes it as
#
# $$f(x) = \sigma\big(W_{enc}(x - b_{dec}) + b_{enc}\big) \in \mathbb{R}^{m}_{\ge 0}, \qquad
# \hat x = W_{dec}^\top f(x) + b_{dec} = \sum_i f_i(x)\, d_i + b_{dec},$$
#
# with $m > d$ latents (here $m = 1024$, 8x overcomplete) and unit-norm dictionary directions
# $d_i$ (the rows of `W_dec`), so that $f_i$ alone says how much of direction $i$ is present.
# Sparsity makes the dictionary interesting: each $x$ should use only a few $d_i$.
#
# - **ReLU SAE** (Bricken et al. 2023, [Towards Monosemanticity](https://transformer-circuits.pub/2023/monosemantic-features)):
#   $\sigma = \mathrm{ReLU}$ and $L = \lVert x - \hat x\rVert^2 + \lambda \lVert f\rVert_1$.
#   The L1 penalty makes $f$ sparse but also pulls every active value towards 0 (*shrinkage*), and
#   latents that stop firing get no gradient ever again (*dead latents*): they are *resampled*
#   towards inputs the SAE reconstructs badly.
# - **TopK SAE** (Gao et al. 2024, [Scaling and evaluating sparse autoencoders](https://arxiv.org/abs/2406.04093)):
#   $\sigma = \mathrm{TopK}_k \circ \mathrm{ReLU}$ keeps the $k$ largest latents and zeroes the
#   rest, so $L_0 = k$ by construction and no penalty shrinks the kept values;
#   $L = \lVert x - \hat x\rVert^2 + \alpha L_{aux}$, where the **AuxK** loss asks the $k_{aux}$
#   largest *dead* latents to reconstruct the residual $e = x - \hat x$,
#   $L_{aux} = \lVert e - W_{dec}^\top z_{aux}\rVert^2 / \lVert e - \bar e \rVert^2$. The encoder starts as the
#   decoder's transpose.
#
# **Which activations.** `layer4` is DermNet's last feature map, $8 \times 8$ positions of 128
# channels, followed only by average pooling and the linear classifier: an edit there reaches the
# logits linearly, and each latent's effect on a logit can be read off directly. We take **one
# vector per position** (64 per image), not one per image: the ruler lies along one edge, so a
# per-position latent can be checked against the ruler mask cell by cell, and 4,000 images give
# 256,000 training vectors. **Normalization**: all vectors are multiplied by one constant so that
# their mean norm is $\sqrt{d}$ (Gao et al., SAELens), so that $\lambda$ and learning rates carry
# over between layers; the constant is stored in each SAE (`act_scale`) and applied by
# `S.normalize`.

# %%
print(inspect.getsource(S.TopKSAE.encode))
print(inspect.getsource(S.TopKSAE.aux_loss))

# %% [markdown]
# ## 2. A small SAE, trained here
#
# Activations of 300 clinic-A and 300 clinic-B images (seeds reserved for SAE work, never the test
# seeds), normalized, then a TopK SAE with 256 latents and $k = 16$, trained for 400 steps of 1,024
# vectors. `make data` trains the larger shipped SAEs (1,024 latents, $k = 32$, 4,000 images,
# 2,000 steps) the same way: `S.build_shipped`. The target for this cell is under 30 s; it prints
# its time.

# %%
start = time.perf_counter()
train_images = torch.cat([S.training_images(300, c, offset=1) for c in "AB"])  # offset: not the shipped SAEs' images
train_acts = S.layer_vectors(models["shortcut"], train_images)
scale = S.norm_scale(train_acts)
train_acts = S.normalize(train_acts, scale)
eval_set = make_dataset(500, clinic="B", seed=S.SEED_BASE["eval"])  # held out: ruler in 30%
eval_acts = {n: S.normalize(S.layer_vectors(m, eval_set.images), float(saes[n].act_scale)) for n, m in models.items()}
print(f"{len(train_acts)} training vectors of {train_acts.shape[1]} channels; mean norm after normalizing "
      f"{fmt(train_acts.norm(dim=1).mean(), 2)} = sqrt(128) = {fmt(128 ** 0.5, 2)}")

start = time.perf_counter()
small = S.TopKSAE(128, 256, 16, seed=0)
small.act_scale.fill_(scale)
history = S.train_sae(small, train_acts, steps=400, batch_size=1024, lr=2e-3, seed=0, layer=layer)
train_seconds = time.perf_counter() - start
small_metrics = S.evaluate(small, S.normalize(eval_acts["shortcut"] / saes["shortcut"].act_scale, scale))
fig, ax = plt.subplots(figsize=(5, 2.5))
ax.plot(history["mse"])
ax.set(xlabel="step", ylabel="MSE (normalized units)", yscale="log",
       title=f"trained in {train_seconds:.0f} s; held-out variance explained {small_metrics['fve']:.3f}")
plt.show()
print(f"training: {train_seconds:.1f} s")

# %% [markdown]
# ## 3. Checked against `dictionary-learning`
#
# `dictionary-learning` 0.1.0 (Marks, Karvonen et al.) is a maintained SAE library; its
# `AutoEncoderTopK` is Gao et al.'s architecture and its `AutoEncoder` with `StandardTrainer` the
# ReLU SAE with an L1 penalty. Given the same weights and the same inputs we compare the encoder's
# latents, the decoder's output, the loss terms and the AuxK term (with the same dead latents).
# Not compared: their *training loops*, which differ from ours by design (their TopK trainer
# initializes $b_{dec}$ at the geometric median, clips gradients and tracks a threshold for
# inference; their resampling draws inputs from the loss norm, not its square), so trained weights
# are not expected to agree. `overcomplete` and `sae-lens` were the other candidates; they are not
# installed (`sae-lens` is built around language models).

# %%
x = eval_acts["shortcut"][:64]  # few vectors, so that some latents fire on none: AuxK has work to do
for sae in (saes["shortcut"], S.ReLUSAE(128, 1024, l1=0.1, seed=2)):  # the shipped TopK; a fresh ReLU SAE
    trainer = S.reference_trainer(sae)
    with torch.no_grad():
        f = sae.encode(x)
        name = type(sae).__name__
        agree(f"{name} encode vs dictionary-learning", f, trainer.ae.encode(x), atol=0)
        agree(f"{name} decode vs dictionary-learning", sae.decode(f), trainer.ae.decode(f), atol=0)
        if isinstance(sae, S.TopKSAE):
            dead = ~(f > 0).any(0)  # no vector fires them: dead in both counts
            trainer.num_tokens_since_fired[dead] = trainer.dead_feature_threshold
            theirs, ours = trainer.loss(x, step=0, logging=True).losses, sae.loss(x, dead)
            pairs = {"MSE": (ours["mse"], theirs["l2_loss"]), "AuxK": (ours["aux"], theirs["auxk_loss"]),
                     "loss": (ours["loss"], theirs["loss"])}
        else:
            theirs, ours = trainer.loss(x, step=0, logging=True).losses, sae.loss(x)
            pairs = {"MSE": (ours["mse"], theirs["mse_loss"]), "L1": (ours["l1"], theirs["sparsity_loss"]),
                     "loss": (ours["loss"], theirs["loss"])}
    for term, (a, b) in pairs.items():
        agree(f"{name} {term} vs dictionary-learning", a, b, atol=0, rtol=1e-6)
print(f"latents dead in the AuxK comparison: {int(dead.sum())} of {len(dead)}")

# %% [markdown]
# ## 4. The numbers the field reports
#
# On 500 held-out clinic-B images (32,000 vectors), for the two shipped SAEs:
# - **L0**: active latents per vector (for TopK, $k$ or fewer);
# - **variance explained** $1 - \sum\lVert x-\hat x\rVert^2 / \sum \lVert x - \bar x\rVert^2$ (one minus the
#   normalized MSE);
# - **dead latents**: never active on the held-out set;
# - **downstream**: the model's accuracy and the KL divergence of its output distribution when
#   `layer4` is *replaced* by the reconstruction $\hat x$ (`S.splice`). A small MSE can still hide
#   a large change in behaviour; the downstream numbers are the ones that matter.

# %%
rows = {}
for name, sae in saes.items():
    m = S.evaluate(sae, eval_acts[name])
    d = S.downstream(models[name], sae, eval_set.images, eval_set.labels)
    rows[name] = {"L0": m["l0"], "var. explained": m["fve"], "dead %": 100 * m["dead"],
                  "acc. model": d["accuracy_model"], "acc. spliced": d["accuracy"], "KL": d["kl"]}
    assert m["fve"] > 0.99 and d["kl"] < 0.01 and abs(d["accuracy"] - d["accuracy_model"]) <= 0.002 + 1e-6
    assert fmt(100 * m["dead"], 1) == "0.3"
print(table(rows, {"L0": 1, "var. explained": 2, "dead %": 1, "acc. model": 3, "acc. spliced": 3, "KL": 4},
            index="SAE for", atol={"KL": 1e-5}))
assert count_hooks(models["shortcut"]) == 0

# %% [markdown]
# **The frontier.** Sparsity costs fidelity. Every SAE paper plots normalized MSE against L0 over a
# sweep of the sparsity knob: $\lambda$ for the ReLU SAE, $k$ for TopK. Small SAEs (256 latents,
# 100 steps of 512 vectors each, on the training vectors of section 2) are enough to see the shape. Training end
# points move with round-off, so the values are in the figure only. These runs are too short for
# AuxK to start (a latent counts as dead after 200,000 vectors without firing; they see 51,200),
# so the right panel shows dead latents without any remedy: the sparser the SAE, the more die.

# %%
start = time.perf_counter()
held = S.normalize(eval_acts["shortcut"] / saes["shortcut"].act_scale, scale)[:8192]
frontier, swept = {"TopK": [], "ReLU": []}, {}
for k in (4, 8, 16, 32):
    sae = swept[f"TopK k={k}"] = S.TopKSAE(128, 256, k, seed=0)
    S.train_sae(sae, train_acts, steps=100, batch_size=512, lr=3e-3, seed=0, progress=False)
    m = S.evaluate(sae, held)
    frontier["TopK"].append((m["l0"], m["nmse"], m["dead"]))
for lam in (0.5, 2.0, 8.0):
    sae = swept[f"ReLU l1={lam:g}"] = S.ReLUSAE(128, 256, l1=lam, seed=0)
    S.train_sae(sae, train_acts, steps=100, batch_size=512, lr=3e-3, seed=0, progress=False)
    m = S.evaluate(sae, held)
    frontier["ReLU"].append((m["l0"], m["nmse"], m["dead"]))
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
for kind, pts in frontier.items():
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=kind)
    ax2.plot([p[0] for p in pts], [100 * p[2] for p in pts], "o-", label=kind)
ax.set(xscale="log", yscale="log", xlabel="L0 (active latents per vector)", ylabel="normalized MSE",
       title="sparsity/fidelity frontier (256 latents, 100 steps)")
ax2.set(xscale="log", xlabel="L0", ylabel="dead latents (%)", title="dead on held-out vectors")
for a in (ax, ax2):
    a.minorticks_off()
    a.set_xticks([4, 8, 16, 32, 64], ["4", "8", "16", "32", "64"])
ax.legend()
plt.show()
print(f"7 SAEs trained: {time.perf_counter() - start:.1f} s")
del train_acts  # the 256,000 training vectors (131 MB) are not read again

# %% [markdown]
# ## 5. Find it: which latent detects the ruler?
#
# The SAE never saw a label. Now we bring the ground truth back, only to *read* the latents: for
# each latent, the AUROC of its activation as a detector of the ruler
# - **per position**: is this cell of the $8 \times 8$ grid at least half covered by the ruler mask?
# - **per image**: the latent's largest value over the map, against `has_ruler`.
#
# An AUROC of 1 means every ruler example scores above every other; 0.5 is chance.

# %%
ruler_cell = S.cell_share(eval_set.masks["ruler"]) >= 0.5
codes, auroc_pos, auroc_img = {}, {}, {}
for name, sae in saes.items():
    codes[name] = S.latent_codes(sae, eval_acts[name])
    auroc_pos[name] = S.latent_auroc(codes[name], ruler_cell)
    auroc_img[name] = S.latent_auroc(codes[name].view(len(eval_set), 64, -1).amax(1), eval_set.has_ruler)
rows = {}
for name in saes:
    top = auroc_pos[name].topk(2)
    assert top.values[0] - top.values[1] > 1e-3  # the best latent is not a near-tie
    best = int(top.indices[0])
    rows[name] = {"best latent": best, "AUROC per position": float(top.values[0]),
                  "its AUROC per image": float(auroc_img[name][best]),
                  "latents with image AUROC >= 0.9": int((auroc_img[name] >= 0.9).sum())}
    assert ((auroc_img[name] - 0.9).abs() > 2e-3).all()  # no latent near the line
best = {name: rows[name]["best latent"] for name in rows}
print(table(rows, 3, index="model"))
assert rows["shortcut"]["AUROC per position"] >= 0.95

# %% [markdown]
# The shortcut model's SAE has latents that detect the ruler cell by cell (AUROC about 0.98) and
# image by image (1.0). The debiased model's SAE has none: its best latent is far below, at either
# scale. Section 7 asks why.
#
# **What does the best latent see?** Notebook 08's dataset search, run on the latent as if it were
# a channel: `S.LatentProbe` passes the model through and exposes the SAE's latent maps as a
# layer, so `top_activating` can rank images by it. Then notebook 08's feature visualization with
# the `direction` objective along the latent's encoder row: the image that pushes `layer4` along
# what the latent reads.

# %%
probe = S.LatentProbe(models["shortcut"], saes["shortcut"])
idx, ys, xs, vals = top_activating(probe, "latents", best["shortcut"], eval_set.images, k=8)
assert (vals[:-1] - vals[1:]).min() > 1e-4 * vals[0]  # no near-tie in the ranking
fig = viz.image_grid(eval_set.images[idx], [f"cell ({int(y)},{int(x)})" for y, x in zip(ys, xs)], ncols=8)
fig.suptitle(f"latent {best['shortcut']}: its 8 top-activating images (cell of the 8x8 grid)", y=1.15)
plt.show()
ruler_pixels = (64 * S.cell_share(eval_set.masks["ruler"]).view(len(eval_set), 8, 8)[idx, ys, xs]).round().int()
print(f"images with a ruler among the top 8: {int(eval_set.has_ruler[idx].sum())} of 8 "
      f"(30% of the 500 searched have one); ruler pixels in the cell where it peaks: "
      f"{int(ruler_pixels.min())} to {int(ruler_pixels.max())} of 64")
assert bool(eval_set.has_ruler[idx].all())

start = time.perf_counter()
enc = saes["shortcut"].W_enc[:, best["shortcut"]].detach()
vis = visualize(models["shortcut"], direction(layer, enc), steps=64, n=2, seed=0)
vis_ruler = visualize(models["shortcut"], channel(layer, int(enc.argmax())), steps=64, n=1, seed=0)
fig = viz.image_grid(torch.cat([vis, vis_ruler]), ["latent direction (1 of 2)", "latent direction (2 of 2)",
                                                   f"its largest channel, {int(enc.argmax())}, alone"], ncols=3,
                     size=2.2)
plt.show()
print(f"feature visualization: {time.perf_counter() - start:.1f} s")

# %% [markdown]
# All eight are ruler images, but the cell where the latent peaks is only partly covered by the
# ruler: the latent fires where the strip meets the skin, one cell in from the edge (at `layer4`
# every cell sees most of the image, so "where" is coarse). The feature visualizations show a fine
# periodic texture but draw no ruler, much like the latent's largest single channel: notebook 08
# met the same with its ruler channels. Dataset search says more than the optimized image here.
#
# ## 6. Interpret the rest: labelling latents against the ground truth
#
# DermSynth knows everything it drew, so latents can be labelled automatically. For the 12 latents
# that fire most often on the held-out images, the AUROC against every known factor: per position
# (a cell at least 10% covered: hairs and ink lines are thin) for the lesion and each artifact;
# per image (the latent's largest value) for dark skin (tone above the median) and each class.
# A latent is **explained** when its best factor reaches AUROC 0.9.

# %%
def factor_aurocs(codes_n, ds):
    per_image = codes_n.view(len(ds), 64, -1).amax(1)
    out = {f: S.latent_auroc(codes_n, S.cell_share(ds.masks[f]) >= 0.1)
           for f in ("lesion", "ruler", "ink", "hair", "corners")}
    tone = skin_tone(ds)
    out["dark skin"] = S.latent_auroc(per_image, tone > tone.median())
    for i, c in enumerate(CLASSES):
        out[f"class {c}"] = S.latent_auroc(per_image, ds.labels == i)
    return out


freq = (codes["shortcut"] > 0).float().mean(0)
order = freq.argsort(descending=True)
assert freq[order[11]] - freq[order[12]] > 1e-4  # the 12 most frequent are well defined
most = order[:12]
factors = factor_aurocs(codes["shortcut"][:, most], eval_set)
names = list(factors)
grid = torch.stack([factors[f] for f in names])  # [factors, 12 latents]
rows, unexplained = {}, []
for j, i in enumerate(most.tolist()):
    a = grid[:, j]
    top2 = a.topk(2)
    assert top2.values[0] - top2.values[1] > 1e-3 and abs(float(top2.values[0]) - 0.9) > 1e-3
    ok = bool(top2.values[0] >= 0.9)
    rows[f"latent {i}"] = {"cells it fires on": int((codes["shortcut"][:, i] > 0).sum()),
                           "best factor": names[int(top2.indices[0])], "AUROC >= 0.9": "yes" if ok else "no"}
    if not ok:
        unexplained.append(i)
print(table(rows, index=f"of {len(codes['shortcut'])} cells"))
fig, ax = plt.subplots(figsize=(9, 4))
ax.imshow(grid.numpy(), cmap="viridis", vmin=0.5, vmax=1, aspect="auto")
ax.set(xticks=range(12), xticklabels=[str(i) for i in most.tolist()], yticks=range(len(names)), yticklabels=names,
       xlabel="latent (most frequent first)", title="AUROC of each latent against each known factor")
for r in range(len(names)):
    for c in range(12):
        ax.text(c, r, f"{float(grid[r, c]):.2f}", ha="center", va="center", fontsize=6,
                color="k" if grid[r, c] > 0.8 else "w")
plt.show()
print(f"explained by a known factor: {12 - len(unexplained)} of 12")

# %% [markdown]
# The unexplained ones, seen through their top-activating images (the same search, read from the
# latent codes already computed):

# %%
show = unexplained[:3]
fig, axes = plt.subplots(len(show), 6, figsize=(9, 1.7 * len(show)), squeeze=False)
maps = codes["shortcut"].view(len(eval_set), 64, -1)
for r, i in enumerate(show):
    peak, where = maps[:, :, i].max(1)
    idx_i = peak.topk(6).indices
    ys_i, xs_i = where[idx_i] // 8, where[idx_i] % 8
    for c in range(6):
        viz.show_image(eval_set.images[idx_i[c]], ax=axes[r, c],
                       title=f"latent {i}" if c == 0 else None)
        axes[r, c].add_patch(plt.Rectangle((8 * int(xs_i[c]) - 0.5, 8 * int(ys_i[c]) - 0.5), 8, 8,
                                           fill=False, color="cyan", lw=1.5))
fig.suptitle("unexplained latents: top-activating images, the cell where each fires most", y=1.0)
fig.tight_layout()
plt.show()
assert unexplained == [83, 328, 903]

# %% [markdown]
# None of them is noise. Latent 83 fires on benign keratoses (waxy, with cysts) but at the left of
# the frame; latent 903 on the white centres of dermatofibromas and on pink lesions; latent 328 on
# brown lesions in dark-cornered images. Each is close to a known factor without being one: a
# feature tied to a position, or a mixture of two classes. Naming them needs a person, or a finer
# ground truth.

# %% [markdown]
# ## 7. Compare: the debiased model, TCAV and Grad-CAM
#
# **Is there a ruler latent in the debiased model?** It could exist: a model can *see* the ruler
# without *using* it. At `layer4` it is not there (section 5). Two numbers tell the models apart:
# how well a linear probe still reads the ruler from `layer4` (a CAV's held-out accuracy, as in
# notebook 10: the information), and how much the ruler latents push the melanoma logit. At
# `layer4` the second is exact: the layer is followed only by average pooling and `fc`, so latent
# $i$ adds $(w_{mel} \cdot d_i / \text{scale}) \times \overline{f_i}$ to the melanoma logit
# (`S.direct_effect`), where $\overline{f_i}$ is its mean over the map.
#
# **TCAV** (notebook 10) needs a concept set we thought of; at `layer4` its score is degenerate:
# the gradient of a logit with respect to `layer4` is the same for every image (a linear head after
# pooling), so every image gets the same sign and the score is 0 or 1. **Grad-CAM** (notebook 04)
# needs the ruler mask to be scored. The SAE needed neither.

# %%
ruler_imgs, rand_imgs = concept_images("ruler", 50), random_images(50)
mel = class_images("mel", 60)  # held-out clinic-B melanomas, artifacts as drawn
mel_ruler = make_dataset(60, clinic="B", seed=S.SEED_BASE["eval"] + 1, ruler=True, labels="mel")
compare_rows = rows = {}
for name, model in models.items():
    cav, cav_acc = train_cav(layer_activations(model, layer, ruler_imgs), layer_activations(model, layer, rand_imgs))
    ruler_set = (auroc_img[name] >= 0.9).nonzero().flatten()
    eff = S.direct_effect(model, saes[name], MEL)
    mean_f = codes[name].view(len(eval_set), 64, -1).mean(1)[eval_set.has_ruler]  # on ruler images
    push = (mean_f[:, ruler_set] * eff[ruler_set]).sum(1).mean() if len(ruler_set) else torch.tensor(0.0)
    cam = grad_cam(model, mel_ruler.images, MEL)
    rows[name] = {"best latent AUROC": float(auroc_pos[name].max()), "ruler latents": len(ruler_set),
                  "their push on mel logit": float(push), "CAV accuracy": cav_acc,
                  "TCAV (layer4)": tcav_score(model, layer, cav, mel, MEL),
                  "Grad-CAM ruler mass": float(mask_mass(cam, mel_ruler.masks["ruler"]).mean())}
print(table(rows, {"best latent AUROC": 3, "their push on mel logit": 1, "CAV accuracy": 2, "TCAV (layer4)": 2,
                   "Grad-CAM ruler mass": 2}, index="model"))
assert rows["shortcut"]["ruler latents"] > 0 and rows["debiased"]["ruler latents"] == 0
assert rows["shortcut"]["their push on mel logit"] > 1
del codes["debiased"], train_images  # 130 MB of codes not read again: a learner keeps several kernels open

# %% [markdown]
# ## 8. Switch it off
#
# "An interpretable latent" is not "a latent the model uses": only an intervention decides.
# `S.ablate_latents(model, sae, latents)` runs the model with `layer4` replaced by the SAE's
# reconstruction with those latents zeroed **plus the reconstruction error**,
#
# $$x' = \hat x\big|_{f_L = 0} + (x - \hat x) = x - \sum_{i \in L} f_i(x)\, d_i ,$$
#
# so the only change is the edit (with $L$ empty the model is unchanged). The **ruler latents** are
# chosen on the 500 selection images of section 5, by one rule: per-image AUROC against
# `has_ruler` of at least 0.9. The ruler is split over many latents (one per edge and ruler
# position, see the pitfalls), so one latent cannot be enough. A caveat: the threshold 0.9 was
# picked while this notebook was written, after 0.95 and 0.99 had been tried on a 1,000-lesion
# version of this test (32 and 17 latents, flip rates about 0.07 and 0.16): it was chosen with the
# answer in view, and a stricter rule removes less of the shortcut. The test is notebook 00's: 500
# clinic-B lesions (test seeds, never used above) drawn without and with a ruler; the **flip
# rate** is the share of correctly classified non-melanomas that become melanoma when the ruler is
# added. A control: as many latents drawn at random among those that fire.

# %%
start = time.perf_counter()
ruler_latents = (auroc_img["shortcut"] >= 0.9).nonzero().flatten()
assert ((auroc_img["shortcut"] - 0.9).abs() > 2e-3).all()  # the rule has a margin: no latent near 0.9
fires = (codes["shortcut"] > 0).any(0)
candidates = fires.nonzero().flatten()
candidates = candidates[~torch.isin(candidates, ruler_latents)]
g = torch.Generator().manual_seed(0)
random_latents = candidates[torch.randperm(len(candidates), generator=g)[:len(ruler_latents)]]
pair = intervention_pair(500)
off, on = pair
model = models["shortcut"]


def margins(scores):
    """Each image's gap between its top two scores, relative to its largest score."""
    top2 = scores.topk(2, 1).values
    return (top2[:, 0] - top2[:, 1]) / scores.abs().amax(1)


def measure(model, edit=None):
    """Notebook 00's flip rate (as ruler_intervention counts it) and the accuracy on the ruler-free
    images, from the scores. A prediction won by less than 1e-4 (relative) could go the other way
    on another CPU: such an image is left out of that row (the "undecided" column), and no image
    may lie near that line itself."""
    with edit if edit is not None else nullcontext():
        s_off, s_on = logits(model, off.images), logits(model, on.images)
    m = torch.minimum(margins(s_off), margins(s_on))
    assert not ((m > 0.5e-4) & (m < 2e-4)).any()
    keep = m >= 1e-4
    p_off, p_on, y = s_off.argmax(1)[keep], s_on.argmax(1)[keep], off.labels[keep]
    base = (y != MEL) & (p_off == y)  # non-melanomas right without the ruler
    return {"flip rate": float((p_on[base] == MEL).float().mean()), "of": int(base.sum()),
            "accuracy, no ruler": float((p_off == y).float().mean()), "undecided": int((~keep).sum())}


results = {
    "shortcut": measure(model),
    f"shortcut, best latent {best['shortcut']} alone off": measure(
        model, S.ablate_latents(model, saes["shortcut"], [best["shortcut"]])),
    f"shortcut, {len(ruler_latents)} random latents off": measure(
        model, S.ablate_latents(model, saes["shortcut"], random_latents)),
    "debiased": measure(models["debiased"]),
    f"shortcut, {len(ruler_latents)} ruler latents off": measure(
        model, S.ablate_latents(model, saes["shortcut"], ruler_latents)),
}
print(table(results, {"flip rate": 3, "accuracy, no ruler": 3}, index=""))
print(f"intervention: {time.perf_counter() - start:.1f} s")
assert count_hooks(model) == 0
flip = {k: v["flip rate"] for k, v in results.items()}
assert flip["shortcut"] >= 0.4 and flip["debiased"] <= 0.05
final = results[f"shortcut, {len(ruler_latents)} ruler latents off"]
assert abs(flip[f"shortcut, {len(ruler_latents)} random latents off"] - flip["shortcut"]) < 0.1
drop = results["shortcut"]["accuracy, no ruler"] - final["accuracy, no ruler"]
assert final["flip rate"] <= 0.05 and 0.01 < drop < 0.03
assert 0.15 < 1 - flip[f"shortcut, best latent {best['shortcut']} alone off"] / flip["shortcut"] < 0.25
print(f"the ruler flips {fmt(flip['shortcut'], 3)} of the shortcut model's correct non-melanomas to melanoma; "
      f"with its {len(ruler_latents)} ruler latents switched off: {fmt(final['flip rate'], 3)} "
      f"(the debiased model: {fmt(flip['debiased'], 3)})")

# %% [markdown]
# With its 40 ruler latents switched off, the shortcut model adds melanoma for a ruler about as
# rarely as the debiased model does, while 40 random latents change nothing and the accuracy on
# ruler-free images moves by about two points. The best single latent is not enough: the ruler is
# spread over many latents. An SAE trained without labels found the feature, and the intervention
# showed that the model uses it. That is the number the table ends on.

# %% [markdown]
# ## 9. Pitfalls and limits
#
# - **Dead latents.** A ReLU latent that stops firing gets no gradient and never comes back; the
#   stronger the L1 penalty, the more die (the right panel of the frontier figure). Resampling
#   revives them by hand; TopK with AuxK keeps the shipped SAEs at 0.3% dead (section 4).
# - **Shrinkage.** L1 penalizes the size of every active latent, so a ReLU SAE reconstructs
#   vectors too short: the best rescaling of its reconstruction,
#   $\gamma = \langle \hat x - b, x - b\rangle / \lVert \hat x - b\rVert^2$, is above 1.
#   TopK applies no penalty to the kept values (below).
# - **Feature splitting.** As the dictionary grows, one feature splits into several finer ones.
#   The ruler in the shipped 1,024-latent SAE is 40 latents (one per edge and position of the
#   strip); the 256-latent SAE of section 2 has fewer (below). So "the ruler latent" is a family,
#   and an edit must take all of it (section 8: one latent alone removed a fifth of the flips).
# - **Reconstruction error hides behaviour.** A variance explained of 0.99 says little about what
#   the lost 1% does downstream: always report the downstream accuracy and KL (section 4), and
#   keep the error term when editing, so that only the edit changes the output.
# - **An interpretable latent is not a latent the model uses.** The debiased model's `layer4` still
#   lets a linear probe tell ruler images apart (CAV accuracy 0.72), yet the ruler changes none of
#   its decisions. Only the intervention decides.
# - **Labels were needed to read the latents.** The SAE learned without labels, but we named
#   latent 925 "ruler" by comparing it with ground truth that real data rarely has; on real data
#   that step is manual inspection of top-activating examples, which is where mistakes creep in.

# %%
def shrinkage(sae, x):
    """The best rescaling of the reconstruction, <x_hat - b, x - b> / |x_hat - b|^2, over all vectors."""
    with torch.no_grad():
        r, t = sae(x) - sae.b_dec, x - sae.b_dec
        return float((r * t).sum() / (r * r).sum())


gamma = {name: shrinkage(sae, held) for name, sae in swept.items()}
small_codes = S.latent_codes(small, S.normalize(eval_acts["shortcut"] / saes["shortcut"].act_scale, scale))
small_auroc = S.latent_auroc(small_codes.view(len(eval_set), 64, -1).amax(1), eval_set.has_ruler)
n_small = int((small_auroc >= 0.9).sum())
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 2.8))
ax.bar(list(gamma), list(gamma.values()), color=["C0"] * 4 + ["C1"] * 3)
ax.axhline(1, color="k", lw=0.8)
ax.set(ylabel="best rescaling gamma", title="shrinkage: ReLU (orange) reconstructs short")
ax.tick_params(axis="x", rotation=60)
ax2.bar(["256 latents (sec. 2)", "1024 latents (shipped)"], [n_small, len(ruler_latents)])
ax2.set(ylabel="ruler latents", title=f"feature splitting: {n_small} vs {len(ruler_latents)} ruler latents")
plt.show()
assert min(gamma[n] for n in gamma if n.startswith("ReLU")) > max(gamma[n] for n in gamma if n.startswith("TopK"))
assert n_small < len(ruler_latents)
assert best["shortcut"] == 925 and len(ruler_latents) == 40
assert fmt(compare_rows["debiased"]["CAV accuracy"], 2) == "0.72"
print("every ReLU SAE of the sweep shrinks more than every TopK SAE; the smaller dictionary has fewer ruler latents")
del small_codes, eval_acts, held  # 80 MB not read again (the exercises use codes and eval_set)

# %% [markdown]
# ## 10. Your turn
#
# **Exercise 1.** Write the TopK SAE's forward pass and its loss from the formulas of section 1,
# with plain tensor operations: given activations `[N, d_in]` and the weights (`W_enc [d_in, m]`,
# `b_enc [m]`, `W_dec [m, d_in]`, `b_dec [d_in]`), return the latents `[N, m]`, the reconstruction
# `[N, d_in]` and the MSE term of the loss (the squared error summed over the channels, averaged
# over the vectors). The checker runs it with the shipped SAE's weights and names the usual slips.

# %%
from helpers.exercises import check_artifact_latent_question, check_topk_sae  # noqa: E402


def my_topk_sae(acts, W_enc, b_enc, W_dec, b_dec, k):
    """f = TopK_k(ReLU(W_enc (x - b_dec) + b_enc)), the others 0; x_hat = f W_dec + b_dec;
    mse = mean over vectors of sum over channels of (x - x_hat)^2. Returns (f, x_hat, mse)."""
    raise NotImplementedError


print(check_topk_sae(my_topk_sae))

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_topk_sae(acts, W_enc, b_enc, W_dec, b_dec, k):
#     pre = torch.relu((acts - b_dec) @ W_enc + b_enc)
#     top = pre.topk(k, dim=-1)
#     f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
#     recon = f @ W_dec + b_dec
#     return f, recon, (acts - recon).pow(2).sum(-1).mean()
# ```
# </details>
#
# **Exercise 2.** Use the tools of sections 5 and 6 on the shipped shortcut SAE (`codes["shortcut"]`
# and `S.latent_auroc` on the masks of `eval_set`): which latent best detects the dermoscope's
# **dark corners** (a cell at least 10% covered)? Is there any latent that detects **hair** with an
# AUROC of 0.9 or more? The checker measures both on fresh images.

# %%
corners_latent = 0  # your answers
hair_latent_exists = True
print(check_artifact_latent_question(corners_latent, hair_latent_exists))

# %% [markdown]
# ## Summary
#
# - An SAE rewrites each activation vector as a sparse, non-negative combination of learned unit
#   directions. ReLU + L1 shrinks and kills latents (resampling helps); TopK fixes L0 = k, does not
#   shrink, and AuxK keeps latents alive. Ours equal `dictionary-learning`'s encoder, decoder, loss
#   and AuxK exactly, given the same weights.
# - Report L0, variance explained, dead latents and, above all, the downstream cost: the shipped
#   SAEs explain 99% of `layer4`'s variance and change the accuracy by at most 0.2 points.
# - Without labels, the shortcut model's SAE learned ruler latents (AUROC 0.98 per position, 1.0
#   per image); the debiased model's SAE has none at `layer4`, though a linear probe still reads
#   some ruler information there.
# - Switched off together, with the reconstruction error kept, the 40 ruler latents take the
#   shortcut model's ruler flip rate from 0.50 to 0.01, about the debiased model's 0.00, at a cost of
#   two points of accuracy on ruler-free images; 40 random latents change nothing.
#
# **Next: 15 · a debugging playbook**, which puts the course's methods in the order a practitioner
# would use them on a suspicious model.

# %%
print(f"notebook run time: {time.perf_counter() - start_all:.0f} s")
