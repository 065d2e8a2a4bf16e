# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · SHAP: a fair share of the score
#
# **The question.** An explanation hands out the model's score among the parts of the image. Is
# there a *fair* way to do that, one with a definition rather than a recipe, and can we compute it?
#
# **After this notebook you will be able to**
# - compute Shapley values of superpixels exactly from their definition with
#   `helpers.perturbation.exact_shapley`, and check the efficiency axiom numerically;
# - approximate them with KernelSHAP (`kernel_shap`) and expected gradients (`expected_gradients`),
#   match Captum and shap draw for draw, and measure how the sampling error shrinks;
# - use the shap library's own image explainers and plots on DermNet, and see where shap's
#   DeepExplainer and Captum's DeepLiftShap part ways;
# - audit the shortcut with Shapley values: ruler mass for the shortcut and debiased models.
#
# **Time to run:** 30 to 50 s on 2 CPU cores (shap compiles its image masker on first use).

# %%
import contextlib
import copy
import inspect
import io
import itertools
import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import shap
import torch
from captum.attr import DeepLiftShap, GradientShap, KernelShap
from skimage.segmentation import mark_boundaries
from sklearn.linear_model import LinearRegression
from torch import nn

from helpers import viz
from helpers.data import MEL, make_dataset
from helpers.gradients import mean_baseline
from helpers.metrics import mask_mass, mask_share, mass_summary, pointing_game
from helpers.models import load_dermnet
from helpers.perturbation import (
    MAX_EXACT_FEATURES,
    exact_shapley,
    expected_gradients,
    gradient_shap_draws,
    kernel_shap,
    kernel_shap_coalitions,
    paint,
    shapley_kernel_sizes,
    superpixels,
    weighted_linear_fit,
)
from helpers.report import agree, fmt, table
from helpers.train import TEST_SEEDS

warnings.filterwarnings("ignore", message=".*required_grads has been set automatically.*")  # Captum
warnings.filterwarnings("ignore", message=".*did not already require gradients.*")  # Captum
warnings.filterwarnings("ignore", message=".*Setting backward hooks on ReLU activations.*")  # Captum
torch.manual_seed(0)
np.random.seed(0)
shortcut, debiased = load_dermnet("shortcut"), load_dermnet("debiased")
test_a = make_dataset(2000, clinic="A", seed=TEST_SEEDS["A"])  # the held-out clinic-A test set
rulers = ((test_a.labels == MEL) & test_a.has_ruler).nonzero()[:, 0]  # clinic-A melanomas with a ruler


@contextlib.contextmanager
def quietly():
    """shap draws progress bars on stderr and both libraries warn about their hooks: keep the page clean."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# %% [markdown]
# ## 1. Intuition and maths
#
# Treat the explanation as a game. The **players** are the $K$ superpixels of the image (notebook
# 06). A **coalition** $S$ is a set of them; its **value** $v(S)$ is the model's score for the class
# when only the segments in $S$ are shown and every other segment is replaced by a baseline:
#
# $$v(S) = S_c\big(x \text{ with the segments outside } S \text{ set to the baseline}\big),
# \qquad v(N) = S_c(x), \quad v(\varnothing) = S_c(\text{baseline}).$$
#
# How should $v(N) - v(\varnothing)$ be shared among the players? Shapley (1953) answered: give
# each player its marginal contribution $v(S \cup \{i\}) - v(S)$, averaged over every order in
# which the players could join, so over all coalitions $S$ it could join, weighted by how many
# orders lead to them:
#
# $$\phi_i = \sum_{S \subseteq N \setminus \{i\}} \frac{|S|!\,(K - |S| - 1)!}{K!}
#            \big(v(S \cup \{i\}) - v(S)\big).$$
#
# It is the only way of sharing that has four properties:
# - **efficiency**: $\sum_i \phi_i = v(N) - v(\varnothing)$, the whole change is handed out;
# - **symmetry**: two players that add the same to every coalition get the same share;
# - **dummy**: a player that adds nothing to any coalition gets zero;
# - **additivity**: the shares of a sum of two games are the sums of the shares.
#
# Lundberg & Lee (2017, [arXiv:1705.07874](https://arxiv.org/abs/1705.07874)) called Shapley values
# of a model's inputs **SHAP** values, showed that LIME's regression with a particular kernel
# recovers them (KernelSHAP), and that DeepLIFT averaged over references approximates them. This
# notebook computes them exactly, then approximately, then with the shap library.
#
# **The baseline.** "Absent" has to mean something. For DermNet a black image is a near-certain
# melanoma (notebook 03), so we use the dataset's mean colour, a flat skin-like image that both
# models find close to neutral. Section 7 shows what black would do.
#
# The running image: a clinic-A melanoma with a ruler, cut into a handful of superpixels.

# %%
x0 = test_a.images[rulers[:1]]
base0 = mean_baseline(x0)
seg0 = superpixels(x0[0], 8)
K = int(seg0.max()) + 1
ruler0, lesion0 = test_a.masks["ruler"][rulers[0]], test_a.masks["lesion"][rulers[0]]
pixels = torch.bincount(seg0.flatten())
segment_table = {j: {"pixels": int(pixels[j]), "ruler share": ruler0[seg0 == j].float().mean().item(),
                     "lesion share": lesion0[seg0 == j].float().mean().item()} for j in range(K)}
ruler_shares = torch.tensor([row["ruler share"] for row in segment_table.values()])
ruler_seg = int(ruler_shares.argmax())
assert ruler_shares[ruler_seg] > ruler_shares.sort().values[-2] + 0.1  # one segment holds the ruler: no near-tie
print(f"{K} superpixels; the ruler lies in segment {ruler_seg}")
print(table(segment_table, 3, index="segment"))

# %% [markdown]
# Every coalition is a bit pattern: coalition number $n = \sum_{j \in S} 2^j$ (player $j$ is bit
# $j$). With 6 players there are $2^6 = 64$ coalitions, so we can score them all in one batch:

# %%
code = torch.arange(2 ** K)
players = (code[:, None] >> torch.arange(K)) & 1  # row n: which players coalition n contains
composed = torch.where(players.bool()[:, seg0][:, None], x0[0], base0[0])  # [64, 3, 64, 64]
with torch.no_grad():
    v = shortcut(composed)[:, MEL].double()  # the game: v[n] = value of coalition n

show = {"nobody": 0, "the ruler's segment": 2 ** ruler_seg, "all but the ruler's": 2 ** K - 1 - 2 ** ruler_seg,
        "everybody": 2 ** K - 1}
fig, axes = plt.subplots(1, 5, figsize=(11, 2.6))
axes[0].imshow(mark_boundaries(viz.to_numpy_image(x0[0]), seg0.numpy(), color=(1, 1, 1)))
axes[0].set_axis_off()
axes[0].set_title(f"{K} superpixels", fontsize=9)
for ax, (name, n) in zip(axes[1:], show.items()):
    viz.show_image(composed[n], ax=ax, title=f"{name}\nv = {v[n]:.2f}")
plt.tight_layout()
plt.show()
ruler_alone, all_but_ruler = v[show["the ruler's segment"]], v[show["all but the ruler's"]]
assert ruler_alone > v[0] + 3 and all_but_ruler < v[-1] - 3  # what the titles show: well above, well short

# %% [markdown]
# Shown alone, the ruler's segment (over a flat skin-coloured image) already raises the shortcut
# model's melanoma logit well above the empty coalition; everything but the ruler's segment falls
# well short of the whole image.
#
# ## 2. Exact Shapley values
#
# From the definition, as an average over orders: for each of the $6! = 720$ orders, add each
# player's marginal contribution when it joins those before it.

# %%
phi_orders = torch.zeros(K, dtype=torch.float64)
for order in itertools.permutations(range(K)):
    coalition = 0
    for player in order:
        phi_orders[player] += v[coalition | 2 ** player] - v[coalition]
        coalition |= 2 ** player
phi_orders /= math.factorial(K)

phi0 = exact_shapley(shortcut, x0, MEL, seg0, baseline="mean")[0]
print("Shapley values of the 6 segments:", ", ".join(fmt(p, 2) for p in phi_orders))
agree("over orders vs exact_shapley", phi_orders, phi0, 1e-5)
print(f"efficiency: sum = {fmt(phi0.sum(), 2)}, v(N) - v(empty) = {fmt(v[-1] - v[0], 2)}")
_ = agree("efficiency: sum vs v(N) - v(empty)", phi0.sum(), v[-1] - v[0], 1e-4)

# %% [markdown]
# The helper uses the coalition form of the formula: one weight per coalition size instead of $K!$
# orders, which is $2^K$ model evaluations and $K 2^{K-1}$ differences.

# %%
print(inspect.getsource(exact_shapley))

# %% [markdown]
# The same game played by the debiased model:

# %%
phi0_debiased = exact_shapley(debiased, x0, MEL, seg0, baseline="mean")[0]
print(table({j: {"ruler share": row["ruler share"], "lesion share": row["lesion share"],
                 "shortcut": phi0[j], "debiased": phi0_debiased[j]} for j, row in segment_table.items()},
            {"ruler share": 3, "lesion share": 3, "shortcut": 2, "debiased": 2}, index="segment"))
lesion_seg = int(torch.tensor([row["lesion share"] for row in segment_table.values()]).argmax())
for phi, top in [(phi0, ruler_seg), (phi0_debiased, lesion_seg)]:  # each model's largest value, by a margin
    assert phi.argmax() == top and phi[top] > phi.sort().values[-2] + 1
assert abs(phi0_debiased[ruler_seg]) < 0.2  # the debiased model: about nothing for the ruler

# %% [markdown]
# The shortcut model gives the ruler's segment the largest share of its melanoma logit; the
# debiased model gives it about nothing and credits the lesion's segment instead. Exact values,
# no sampling: this is what the game says.
#
# The price is $2^K$ forward passes per image. The helper refuses beyond
# `MAX_EXACT_FEATURES` segments rather than start a run that would not finish:

# %%
seg_many = superpixels(x0[0], 32)
try:
    exact_shapley(shortcut, x0, MEL, seg_many)
except ValueError as err:
    print(f"MAX_EXACT_FEATURES = {MAX_EXACT_FEATURES}\nValueError: {err}")

# %% [markdown]
# ## 3. KernelSHAP: Shapley values by regression
#
# Lundberg & Lee's second result: the Shapley values are the coefficients of a weighted linear
# regression of $v(S)$ on the indicator vector $z_S$ of the coalition: LIME's surrogate (notebook
# 06) with a particular kernel and no penalty,
#
# $$\phi = \arg\min_{\phi_0, \phi} \sum_{S} \pi(S)\,\big(v(S) - \phi_0 - z_S \cdot \phi\big)^2,
# \qquad \pi(S) = \frac{K - 1}{\binom{K}{|S|}\,|S|\,(K - |S|)},$$
#
# where the empty and the full coalition get infinite weight (in practice a very large one), which
# pins $\phi_0 = v(\varnothing)$ and makes the coefficients add up to $v(N) - v(\varnothing)$. With all
# 64 coalitions and these weights the regression (solved by `weighted_linear_fit`, the solver the
# helpers' LIME and KernelSHAP share) gives the Shapley values back, to round-off (`phi0` is float32):

# %%
size = players.sum(1)
kernel = torch.tensor([(K - 1) / (math.comb(K, s) * s * (K - s)) if 0 < s < K else 1e6 for s in size.tolist()],
                      dtype=torch.float64)
phi_regression, _ = weighted_linear_fit(players, v, kernel)  # the helper's solver: coefficients, intercept
_ = agree("all 64 coalitions, Shapley kernel: regression vs exact", phi_regression, phi0, 1e-5)

# %% [markdown]
# With many players we cannot list every coalition, so KernelSHAP **samples** them, with
# probability proportional to $\pi(S)$; each sample then gets weight 1. $\pi(S)$ depends only on
# the size, and there are $\binom{K}{s}$ coalitions of size $s$, so: draw a size $s$ with
# probability proportional to $\binom{K}{s}\pi = (K-1)/(s(K-s))$ (`shapley_kernel_sizes`), then $s$
# players uniformly. The sampler favours the very small and the very large coalitions, which
# tell the most about single players:

# %%
print("P(size = s), s = 0 .. K-1:", ", ".join(fmt(p, 3) for p in shapley_kernel_sizes(K)))
print("the first 8 coalitions of seed 0 (all-ones and all-zeros first, as in Captum):")
print(kernel_shap_coalitions(K, 8, seed=0).numpy())

# %% [markdown]
# KernelSHAP is then this regression on the sampled coalitions. Since our game has only 64
# coalitions we already know every value, so a lookup replaces the model; the helper runs the
# model on each sampled coalition and must give the same numbers:

# %%
def kernel_shap_by_lookup(z):
    """KernelSHAP on our 6-player game: sampled coalitions z, values looked up in v."""
    w = torch.ones(len(z), dtype=torch.float64)
    w[:2] = 1e6  # the full and the empty coalition pin the ends (Captum's weight)
    return weighted_linear_fit(z, v[(z << torch.arange(K)).sum(1)], w)[0]


phi_kernel = kernel_shap(shortcut, x0, MEL, seg0, n_samples=200, seed=0, baseline="mean")[0]
by_lookup = kernel_shap_by_lookup(kernel_shap_coalitions(K, 200, seed=0))
agree("200 samples: helper vs lookup", phi_kernel, by_lookup, 1e-5)
print(f"200 samples: largest |helper - exact| = {fmt((phi_kernel - phi0).abs().max(), 3)}")

# %%
print(inspect.getsource(kernel_shap))

# %% [markdown]
# ### Check against Captum
#
# Captum's `KernelShap` draws the same coalitions in the same order when its global torch seed
# equals our `seed`; give it the same baseline and segments (`feature_mask`):

# %%
torch.manual_seed(3)
captum_kernel = KernelShap(shortcut).attribute(x0, target=MEL, baselines=base0, feature_mask=seg0[None, None],
                                               n_samples=200, perturbations_per_eval=50,
                                               return_input_shape=False)[0]
ours_kernel = kernel_shap(shortcut, x0, MEL, seg0, n_samples=200, seed=3, baseline="mean")[0]
agree("ours vs Captum", ours_kernel, captum_kernel, 1e-5)
print(f"(values up to {fmt(captum_kernel.abs().max(), 1)})")

# %% [markdown]
# Equal to float32 round-off: the same coalitions, the same scores, the same answer. The last
# check shows where the round-off comes from.
#
# <details><summary>Under the hood: why float32 round-off and not exact</summary>
#
# A float32 spacing at 6 is 5e-7, and the difference is not from the sampling: the coalitions and
# the scores are the same, but the regression is not solved the same way. Captum hands sklearn's
# `LinearRegression` float32 arrays, and sklearn keeps the dtype it is given; ours solves in
# float64. Refitting our coalitions and scores in float32 with sklearn gives Captum's numbers (the
# next cell).
# </details>

# %%
z3 = kernel_shap_coalitions(K, 200, seed=3)
w3 = np.ones(200, dtype=np.float32)
w3[:2] = 1e6
refit32 = LinearRegression().fit(z3.float().numpy(), v[(z3 << torch.arange(K)).sum(1)].float().numpy(),
                                 sample_weight=w3).coef_
agree("float32 refit vs Captum", refit32, captum_kernel, 1e-6)
print(f"efficiency: sum of ours = {fmt(ours_kernel.sum(), 2)}, Captum's = {fmt(captum_kernel.sum(), 2)}, "
      f"v(N) - v(empty) = {fmt(v[-1] - v[0], 2)}")
agree("efficiency, ours: sum vs v(N) - v(empty)", ours_kernel.sum(), v[-1] - v[0], 1e-4)
_ = agree("efficiency, Captum's: sum vs v(N) - v(empty)", captum_kernel.sum(), v[-1] - v[0], 1e-4)

# %% [markdown]
# ### How fast does KernelSHAP converge?
#
# The mean absolute error against the exact values, for 25 to 2,000 samples and 8 seeds. The first
# $n$ coalitions of a seed do not depend on how many are drawn after them, so one draw of 2,000
# per seed serves every $n$; the lookup makes each fit free.

# %%
sample_sizes = [25, 50, 100, 200, 500, 1000, 2000]
draws_by_seed = [kernel_shap_coalitions(K, max(sample_sizes), seed=s) for s in range(8)]
assert torch.equal(draws_by_seed[0][:100], kernel_shap_coalitions(K, 100, seed=0))  # prefixes
errors = pd.DataFrame({n: [(kernel_shap_by_lookup(z[:n]) - phi0.double()).abs().mean().item() for z in draws_by_seed]
                       for n in sample_sizes}).rename_axis("seed")
slope = np.polyfit(np.log(sample_sizes), np.log(errors.mean()), 1)[0]

fig, ax = plt.subplots(figsize=(5, 3.4))
ax.loglog(sample_sizes, errors.T, color="0.75", lw=0.8)
ax.loglog(sample_sizes, errors.mean(), "o-", color="#d62728", label="mean over 8 seeds")
ax.loglog(sample_sizes, errors.mean().iloc[0] * (np.array(sample_sizes) / 25) ** -0.5, "k--", lw=1,
          label="slope -1/2")
ax.set(xlabel="samples n", ylabel="mean |KernelSHAP - exact|", title=f"KernelSHAP error, fitted slope {slope:.2f}")
ax.legend()
plt.show()
print(table(errors.agg(["mean", "max"]), 3, index="samples"))
largest = phi0.abs().max().item()
assert abs(slope + 0.5) < 0.15  # the Monte Carlo rate
assert 0.005 < errors.mean()[25] / largest < 0.015 and errors.mean()[2000] / largest < 0.001  # 1%, under 0.1%

# %% [markdown]
# The error falls like $1/\sqrt{n}$ (the fitted slope is in the title), the Monte Carlo rate: four
# times the samples for half the error. On this small game it is about 1% of the largest value at
# 25 samples and under 0.1% at 2,000. Every sampled estimate adds up exactly (efficiency holds at any
# $n$, thanks to the pinned ends), so the sum says nothing about the sampling error: only another
# seed, or the exact values, do.

# %% [markdown]
# ## 4. Expected gradients
#
# KernelSHAP treats the model as a black box and needs many forward passes per image. When
# gradients are available, there is another way to share out the score. Integrated Gradients
# (notebook 03) shares out $S_c(x) - S_c(b)$ for a single baseline $b$. **Expected gradients**
# (Erion et al. 2021, [arXiv:1906.10670](https://arxiv.org/abs/1906.10670); shap's
# `GradientExplainer` and Captum's `GradientShap` implement it under the name GradientSHAP, which
# is not one of the estimators of Lundberg & Lee 2017: Kernel, Linear, Deep and Max SHAP) averages
# it over baselines drawn from a background set $B$ of real images,
# and estimates both the path integral and that average with one random point per sample:
#
# $$\mathrm{EG}_i(x) = \mathbb{E}_{b \sim B,\ \alpha \sim U(0,1)}
#    \Big[(x_i - b_i)\,\frac{\partial S_c}{\partial x_i}\big(b + \alpha (x - b)\big)\Big],
# \qquad \mathbb{E}\Big[\sum_i \mathrm{EG}_i(x)\Big] = S_c(x) - \mathbb{E}_{b \sim B}\big[S_c(b)\big].$$
#
# The players are now pixels, "absent" means "as in a typical background image", and completeness
# holds on average only. Our background: 32 clinic-B images, rulers on or off whatever the class.

# %%
background = make_dataset(32, clinic="B", seed=TEST_SEEDS["B"]).images
x2 = test_a.images[rulers[:2]]
print(inspect.getsource(expected_gradients))

# %% [markdown]
# ### Check against Captum and shap, given the same draws
#
# Each sample is a background index and a point $\alpha$. Captum's `GradientShap` draws them from
# numpy's global generator, all indices first and then all points; shap's `GradientExplainer` seeds
# numpy with `rseed` and draws index and point sample by sample. `gradient_shap_draws` replays
# either order, and `expected_gradients(..., draws=...)` uses those draws:

# %%
draws = gradient_shap_draws("captum", batch=2, n_samples=8, n_background=len(background), seed=0)
np.random.seed(0)
eg_captum = GradientShap(shortcut).attribute(x2, background, target=MEL, n_samples=8)
eg_ours = expected_gradients(shortcut, x2, MEL, background, draws=draws, batch_size=16)  # Captum's one batch

with quietly():  # ranked_outputs=1: only each image's top output (mel for both), not all seven
    eg_shap, top = shap.GradientExplainer(shortcut, background, batch_size=10).shap_values(
        x2, nsamples=10, rseed=0, ranked_outputs=1)
assert (top == MEL).all()
eg_shap = torch.as_tensor(eg_shap[..., 0])  # [2, 3, 64, 64, 1] -> [2, 3, 64, 64]
draws = gradient_shap_draws("shap", batch=2, n_samples=10, n_background=len(background), seed=0)
eg_ours_10 = expected_gradients(shortcut, x2, MEL, background, draws=draws, batch_size=10)
agree("ours vs Captum GradientShap (8 samples)", eg_ours, eg_captum, 1e-6)
agree("ours vs shap GradientExplainer (10 samples)", eg_ours_10, eg_shap, 1e-6)
print(f"(values up to {fmt(eg_ours_10.abs().max(), 2)})")

# %% [markdown]
# Exact: the same draws give the same attributions.
#
# <details><summary>Under the hood: "the same draws" includes their precision</summary>
#
# Captum turns $\alpha$ into float32 and computes $1 - \alpha$ in float32; shap keeps $\alpha$ a
# float64 number, so its $1 - \alpha$ is rounded from float64. The two can differ in the last bit,
# and where that bit moves a ReLU across zero a whole gradient changes, so `gradient_shap_draws`
# keeps each library's precision and `expected_gradients` computes $1 - \alpha$ in it.
# </details>
#
# ### Completeness, on average
#
# One sample's attributions add up to one random term, not to $S_c(x) - \mathbb{E}_b S_c(b)$. To see
# the average at work, take 128 samples per image and keep every term separate (one image per
# draw, one draw each):

# %%
index, alpha = gradient_shap_draws("captum", batch=2, n_samples=128, n_background=len(background), seed=1)
terms = expected_gradients(shortcut, x2.repeat_interleave(128, 0), MEL, background,
                           draws=(index.view(-1, 1), alpha.view(-1, 1)))
term_sums = terms.sum((1, 2, 3)).view(2, 128).double()
with torch.no_grad():
    gap = (shortcut(x2)[:, MEL] - shortcut(background)[:, MEL].mean()).double()
rows = {f"mean of {n} terms - gap": term_sums[:, :n].mean(1) - gap for n in (8, 32, 128)}
rows["spread of one term (std)"] = term_sums.std(1)
rows["spread / sqrt(128)"] = term_sums.std(1) / math.sqrt(128)
print("gap = S(x) - mean S(background):", ", ".join(fmt(g, 2) for g in gap))
print(table({name: {"image 1": r[0], "image 2": r[1]} for name, r in rows.items()}, 1))
assert ((rows["spread of one term (std)"] > 8) & (rows["spread of one term (std)"] < 13)).all()  # about ten
assert (rows["mean of 8 terms - gap"].abs() > 2).all() and (rows["mean of 32 terms - gap"].abs() > 2).all()
assert (rows["mean of 128 terms - gap"].abs() < 1).all()

# %% [markdown]
# One term misses the gap by about ten logits (its spread); the mean of 8 or 32 terms is still
# several logits off, the mean of 128 within one, as the spread divided by $\sqrt{128}$ predicts.
# IG from one baseline comes with a per-image completeness check (the $\delta$ of notebook 03);
# expected gradients adds up only on average, and its sum is itself a noisy estimate of the gap.

# %% [markdown]
# ## 5. The shap library's own image path
#
# ### Partition explainer with an image masker
#
# `shap.Explainer(f, shap.maskers.Image(value, shape))` chooses the **Partition** explainer: it
# splits the image into halves, quarters, and so on, and computes Owen values (Shapley values that
# respect that hierarchy) with `max_evals` model calls. `f` takes NHWC numpy images. The masker
# fills hidden pixels with `value`: our mean-colour image (a number works too; the blurring maskers
# need opencv). One `f` can return both models' melanoma logits, so one run explains both. The
# explainer breaks ties with `np.random`: seed numpy before every call.

# %%
def both_mel_logits(nhwc):
    images = torch.as_tensor(nhwc, dtype=torch.float32).permute(0, 3, 1, 2)
    with torch.no_grad():
        return torch.stack([shortcut(images)[:, MEL], debiased(images)[:, MEL]], 1).numpy()


x2_nhwc = x2.permute(0, 2, 3, 1).numpy()
masker = shap.maskers.Image(base0[0].permute(1, 2, 0).numpy(), shape=(64, 64, 3))
explainer = shap.Explainer(both_mel_logits, masker, output_names=["shortcut: mel", "debiased: mel"])
np.random.seed(0)
with quietly():
    sv = explainer(x2_nhwc, max_evals=300, batch_size=150, silent=True)  # shap shows a bar only on slow runs
assert np.abs(sv.base_values[0] - sv.base_values[1]).max() < 1e-6  # one hidden image for both
print("values:", sv.values.shape, " base values (the hidden image): shortcut",
      fmt(sv.base_values[0, 0], 2), " debiased", fmt(sv.base_values[0, 1], 2))
_ = agree("additivity: sum of values vs f(x) - f(hidden)", sv.values.sum((1, 2, 3)),
          both_mel_logits(x2_nhwc) - sv.base_values, 1e-4)

# %%
shap.image_plot(sv, show=False)
plt.show()

# %% [markdown]
# This figure is shap's own `image_plot`, in shap's colours, not the course's (`helpers.viz`): its
# red-blue map is scaled to the 99.9th percentile of |value| over both panels, and it draws over a faint grey copy
# of the image. Red raises the melanoma logit, blue lowers it. The shortcut model's strongest credit sits on the
# ruler; the debiased model's on the lesion, with almost nothing on the ruler. The values add up;
# they are Owen values on shap's own hierarchy of rectangles, not Shapley values of our
# superpixels, so we compare them with ours only through that check, not number for number.
#
# ### DeepExplainer and Captum's DeepLiftShap
#
# DeepLIFT (Shrikumar et al. 2017, [arXiv:1704.02685](https://arxiv.org/abs/1704.02685)) propagates
# differences from a reference through the network in one backward pass, with a rule per layer
# type; its attributions add up to $S_c(x) - S_c(\text{reference})$ ("summation to delta").
# shap's `DeepExplainer` and Captum's `DeepLiftShap` both average DeepLIFT over background images as
# references, so both should add up to $S_c(x) - \mathbb{E}_b S_c(b)$ and agree. Both work through
# hooks on the model's modules, which is why DermNet's ReLUs are separate, non-in-place modules used
# once. Captum returns its own summation error with `return_convergence_delta=True` (one per image
# and reference):

# %%
def deep_shap(model, references):
    """shap's DeepExplainer and Captum's DeepLiftShap on x2, and what they should add up to, per image."""
    with quietly():  # the top output of both images is mel; we check additivity ourselves below
        deep, top = shap.DeepExplainer(model, references).shap_values(x2, ranked_outputs=1, check_additivity=False)
        dls, delta = DeepLiftShap(model).attribute(x2, references, target=MEL, return_convergence_delta=True)
    assert (top == MEL).all()
    deep = torch.as_tensor(deep[..., 0]).float()
    with torch.no_grad():
        gap = model(x2)[:, MEL] - model(references)[:, MEL].mean()
    return {"gap": gap, "shap sum": deep.sum((1, 2, 3)), "Captum sum": dls.sum((1, 2, 3)),
            "Captum's delta": delta.view(2, -1).mean(1), "shap": deep, "Captum": dls}


def deep_shap_table(d, columns):
    figures = {"S(x) - mean S(b)": d["gap"], "Captum: sum - gap": d["Captum sum"] - d["gap"],
               "Captum's delta (mean)": d["Captum's delta"],
               "max |shap - Captum|": (d["shap"] - d["Captum"]).abs().flatten(1).amax(1),
               "max |shap value|": d["shap"].abs().flatten(1).amax(1)}
    return table({f"image {i + 1}": {c: figures[c][i] for c in columns} for i in range(2)},
                 {c: 3 if c.startswith("max") else 2 for c in columns})


deep_max = deep_shap(shortcut, background[:8])
agree("shap: sum vs S(x) - mean S(b)", deep_max["shap sum"], deep_max["gap"], 1e-4)
print(deep_shap_table(deep_max, ["S(x) - mean S(b)", "Captum: sum - gap", "Captum's delta (mean)",
                                 "max |shap - Captum|", "max |shap value|"]))
miss = deep_max["Captum sum"] - deep_max["gap"]
assert (miss.abs() > 1).all()  # more than a logit on both images
agree("Captum's delta vs its miss (sum - gap)", deep_max["Captum's delta"], miss, 1e-4)
differ = (deep_max["shap"] - deep_max["Captum"]).abs().flatten(1).amax(1)
assert ((differ > 0.01) & (differ < 0.1)).all()  # a few hundredths
assert (deep_max["shap"].abs().flatten(1).amax(1) - 0.1).abs().max() < 0.05  # values about a tenth

# %% [markdown]
# shap's values add up to round-off. Captum's miss the gap by more than a logit on both images, and
# Captum says so itself: its delta is the same number. The two libraries differ by a few hundredths
# where the values themselves are about a tenth.
#
# Where does that come from? DermNet has one layer whose DeepLIFT rule is not the rescale rule of a
# ReLU: the stem's `maxpool`. Swap it for an average pool in a copy of the model (a different model,
# used only to locate the difference) and run the same comparison:

# %%
avg_pooled = copy.deepcopy(shortcut)
avg_pooled.maxpool = nn.AvgPool2d(2)
deep_avg = deep_shap(avg_pooled, background[:8])
print(deep_shap_table(deep_avg, ["S(x) - mean S(b)", "max |shap value|"]))
agree("shap vs Captum", deep_avg["shap"], deep_avg["Captum"], 1e-6)
agree("shap: sum vs S(x) - mean S(b)", deep_avg["shap sum"], deep_avg["gap"], 1e-4)
agree("Captum: sum vs S(x) - mean S(b)", deep_avg["Captum sum"], deep_avg["gap"], 1e-4)
_ = agree("Captum's delta vs 0", deep_avg["Captum's delta"], torch.zeros(2), 1e-4)

# %% [markdown]
# Now the two libraries agree to round-off and both add up. The disagreement lives in Captum's
# max-pool rule: on a network with max-pooling, check Captum's delta before trusting DeepLiftShap.
# (Captum has an open issue about its DeepLIFT max-pool code,
# [#1276](https://github.com/meta-pytorch/captum/issues/1276); the tables above locate the
# difference, they do not diagnose it.)

# %% [markdown]
# ## 6. On DermNet: the shortcut in Shapley values
#
# The audit: the first 16 clinic-A melanomas with a ruler, about 14 superpixels each (too many for
# exact values: $2^{14}$ passes per image), KernelSHAP with 100 samples and the mean-colour baseline,
# explaining the melanoma logit for both models; and expected gradients with 16 samples from the
# clinic-B background. The segments are computed once, so both models play the same game.

# %%
x16 = test_a.images[rulers[:16]]
m16 = {k: m[rulers[:16]] for k, m in test_a.masks.items()}
seg16 = superpixels(x16, 16)
counts = seg16.flatten(1).amax(1) + 1
print(f"superpixels per image: {counts.min().item()} to {counts.max().item()}")
audit, maps = {}, {}
for name, model in [("shortcut", shortcut), ("debiased", debiased)]:
    values = kernel_shap(model, x16, MEL, seg16, n_samples=100, baseline="mean")
    with torch.no_grad():
        gap16 = model(x16)[:, MEL] - model(mean_baseline(x16))[:, MEL]
    agree(f"{name}: efficiency, sum vs S(x) - S(baseline)", values.sum(1), gap16, 1e-4)
    maps[f"{name}, KernelSHAP"] = paint(values, seg16)
    maps[f"{name}, EG"] = expected_gradients(model, x16, MEL, background, n_samples=16)
    for method in ("KernelSHAP", "EG"):
        audit[f"{name}, {method}"] = mass_summary(maps[f"{name}, {method}"], m16, pointing="count")
print(table(audit, {k: 1 if "pointing" in k else 2 for k in audit["shortcut, EG"]}))
for method in ("KernelSHAP", "EG"):  # about three times the ruler's share
    assert 2.5 < audit[f"shortcut, {method}"]["ruler mass"] / audit[f"shortcut, {method}"]["ruler share"] < 3.5
assert audit["debiased, KernelSHAP"]["ruler mass"] < 0.05  # almost nothing
assert abs(audit["debiased, EG"]["ruler mass"] / audit["debiased, EG"]["ruler share"] - 1) < 0.2  # about the share
assert (pointing_game(maps["debiased, EG"], m16["lesion"]) == 1).all()  # peaks on the lesion in every image

# %% [markdown]
# Both estimators see the shortcut. With either, the shortcut model puts about three times the
# ruler's share of the image on the ruler. The debiased model's KernelSHAP values put almost
# nothing there; its expected gradients put about the ruler's share there (pixel attributions
# reach every pixel that differs from the background images) and peak on the lesion in every
# image. (A KernelSHAP map is flat on each superpixel, so its peak is a whole segment: when that
# segment straddles the mask's edge, the pointing game calls it a tie and scores one half, hence the
# half counts.) Compare models under
# one method, not numbers across methods. Per image:

# %%
per_image = {"ruler share": mask_share(m16["ruler"]), **{name: mask_mass(m, m16["ruler"]) for name, m in maps.items()}}
print(table({stat: {name: getattr(values, stat)() for name, values in per_image.items()}
             for stat in ("mean", "min", "max")}, 2))
share = per_image["ruler share"]
assert per_image["shortcut, KernelSHAP"].min() > share.max() and per_image["shortcut, EG"].min() > share.max()
assert per_image["debiased, KernelSHAP"].max() < share.min()

# %% [markdown]
# Not an average carried by a few images: the shortcut model's *smallest* ruler mass, with either
# method, is above the *largest* ruler share, and the debiased model's largest KernelSHAP ruler mass
# is below the smallest share.

# %%
order = ["shortcut, KernelSHAP", "debiased, KernelSHAP", "shortcut, EG", "debiased, EG"]
fig = viz.attribution_grid(x16[:3], {name: maps[name][:3] for name in order}, signed=True, size=1.9)
plt.show()

# %% [markdown]
# **Explore it yourself.** The explorer below recomputes KernelSHAP for the image, model and setting
# you pick: a clinic, a class, the ruler on or off, the shortcut or the debiased model, and
# its number of coalitions. Its title gives the map's ruler and lesion mass. (It needs a running kernel: on
# GitHub the widget does not render. Every other method of the course is in its menu too.)

# %%
# NBVAL_IGNORE_OUTPUT
from helpers.viz import explorer  # noqa: E402

explorer("KernelSHAP")

# %% [markdown]
# ## 7. Pitfalls and limits
#
# - **The baseline defines "absent", and so the question.** Replace the mean colour by black in the
#   exact game of section 2:

# %%
rows = {}
for name, model in [("shortcut", shortcut), ("debiased", debiased)]:
    for baseline in ("mean", "black"):
        phi = exact_shapley(model, x0, MEL, seg0, baseline=baseline)[0]
        with torch.no_grad():
            empty = model(mean_baseline(x0) if baseline == "mean" else torch.zeros_like(x0))[0, MEL].item()
        rows[f"{name}, {baseline}"] = {"v(empty)": empty, "sum of values": phi.sum().item(),
                                       "ruler's segment": phi[ruler_seg].item(), "largest value": phi.max().item()}
print(table(rows, 1))
assert rows["shortcut, black"]["largest value"] < 0 and rows["debiased, black"]["largest value"] < 0
assert rows["shortcut, black"]["ruler's segment"] < rows["shortcut, black"]["largest value"] - 1

# %% [markdown]
#   From black, every segment of this melanoma *lowers* the melanoma logit (the black image is the
#   more convincing melanoma), and the ruler's segment no longer stands out for the shortcut model.
#   The values are correct Shapley values of a game nobody meant to ask about.
# - **Sampling error is invisible in the sum.** KernelSHAP and the Partition explainer add up
#   exactly at any budget; expected gradients only on average. Check the spread across seeds
#   (section 3) or compare with exact values on a small game.
# - **The superpixels decide who the players are.** A segment gets one value for all its pixels:
#   the ruler's segment above is only partly ruler, and its value is painted on the skin next to it
#   too. Another segmentation is another game, with other values.
# - **Off-distribution coalitions.** A melanoma with a flat skin-coloured hole in it is not an image
#   the model was trained on; $v(S)$ is what the model does with it anyway.
# - **Shapley values explain the model, relative to a reference, not the world.** A large value on
#   the ruler says the model uses the ruler, not that rulers cause melanoma.
# - **Libraries differ where they look alike** (section 5): check summation or efficiency before
#   comparing methods.

# %% [markdown]
# ## 8. Your turn
#
# Write `my_shapley(v, k)`: given the value of every coalition of $k$ players, as a tensor `v` of
# length $2^k$ where coalition $S$ has index $\sum_{j \in S} 2^j$ (as `v` in section 1), return the
# $k$ Shapley values. The checker compares with the definition on a random game and recognises the
# usual slips.

# %%
from helpers.exercises import check_shapley


def my_shapley(v, k):
    """The k exact Shapley values of a game given by v [2**k], where coalition S has index
    sum_{j in S} 2**j:

        phi_j = sum_{S without j} |S|! (k - |S| - 1)! / k! * (v(S + {j}) - v(S))"""
    raise NotImplementedError


check_shapley(my_shapley)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_shapley(v, k):
#     phi = torch.zeros(k, dtype=v.dtype)
#     for j in range(k):
#         for s in range(2 ** k):
#             if not (s >> j) & 1:
#                 size = bin(s).count("1")
#                 weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
#                 phi[j] += weight * (v[s | (1 << j)] - v[s])
#     return phi
# ```
#
# Then `my_shapley(v, K)` on the DermNet game of section 1 gives `phi0` back.
# </details>

# %% [markdown]
# **Exercise 2, an audit.** How much is the ruler worth? Take the first 8 clinic-B images with a
# ruler of `make_dataset(96, clinic="B", seed=777_003)`, cut each into 16 SLIC segments, and run
# KernelSHAP for melanoma (100 samples, `baseline="mean"`) with both models. In each image find the
# segment with the largest share of ruler pixels. Is its Shapley value more than one logit on
# average, for the shortcut model? For the debiased model? The checker measures it on the same
# images.

# %%
from helpers.exercises import check_shap_ruler_question  # noqa: E402

shortcut_over_one_logit = None  # your answers: True or False
debiased_over_one_logit = None
print(check_shap_ruler_question(shortcut_over_one_logit, debiased_over_one_logit))

# %% [markdown]
# **Exercise 3, harder (optional).** KernelSHAP's coalition-size sampler. Write
# `my_coalition_sizes(k)`: the probability that the sampler of section 3 draws a coalition of size
# $s$, for $s = 0, \dots, k-1$. The checker compares with `helpers.perturbation.shapley_kernel_sizes`
# for several $k$. Then look at it for $k = 14$: which sizes does KernelSHAP spend its samples on?

# %%
from helpers.exercises import check_coalition_sizes  # noqa: E402


def my_coalition_sizes(k):
    """P(size s) for s = 0 .. k-1, a tensor [k] that sums to 1:

        P(s) proportional to (k - 1) / (s (k - s))  for s = 1 .. k-1,   P(0) = 0

    (the empty and the full coalition are added separately, with a large weight)."""
    raise NotImplementedError


check_coalition_sizes(my_coalition_sizes)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_coalition_sizes(k):
#     s = torch.arange(k, dtype=torch.float64)
#     p = (k - 1) / (s * (k - s))   # inf at s = 0 ...
#     p[0] = 0.0                    # ... which the sampler never draws
#     return p / p.sum()
# ```
# The kernel's weight of one coalition, $(k-1) / (\binom{k}{s} s (k-s))$, summed over the
# $\binom{k}{s}$ coalitions of a size, gives this: the binomial cancels. The mass sits at the two
# ends (one segment in, or one out), where each coalition says most about one player.
# </details>

# %% [markdown]
# ## Summary
#
# - Shapley values share $v(N) - v(\varnothing)$ among the players by averaging each player's
#   marginal contribution over every order; they are the only sharing with efficiency, symmetry,
#   dummy and additivity. `exact_shapley` computes them from the definition for up to 16 players.
# - KernelSHAP is a weighted regression on coalitions sampled with the Shapley kernel: ours matches
#   Captum given the same seed (up to Captum's float32 solve), adds up exactly, and converges to the
#   exact values like $1/\sqrt{n}$.
# - Expected gradients average IG over background images with one random point per sample: ours
#   matches Captum's GradientShap and shap's GradientExplainer draw for draw; it adds up only on
#   average.
# - shap's Partition explainer adds up; its DeepExplainer adds up and matches Captum's DeepLiftShap
#   once the max-pool is gone, while Captum's max-pool rule breaks summation to delta on DermNet.
# - On 16 melanomas with a ruler, the shortcut model's Shapley values put about three times the
#   ruler's share on the ruler; the debiased model's do not. The baseline must be chosen: from black, the
#   same game hides the shortcut.
#
# **Next: 08 · Feature visualization.** From explaining one image to asking what a unit of the
# network responds to: images optimised to excite a neuron, a channel, a class.
