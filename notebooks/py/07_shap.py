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
# # 07 · SHAP: a fair share of the score
#
# **The question.** Is there a *fair* way to share a model's score among the parts of an image, with
# a definition rather than a recipe? Can we compute it?
#
# **After this notebook you will be able to**
# - compute exact Shapley values of superpixels and check efficiency;
# - approximate them with KernelSHAP and expected gradients, match Captum and shap, and measure the
#   sampling error;
# - use shap's image explainers, and see where shap and Captum differ on DeepLIFT;
# - audit the shortcut with Shapley values.
#
# **Time to run:** 30 to 50 s on 2 CPU cores.

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
# its first 16 melanomas with a ruler: all this notebook explains (the other images are let go)
ruler_mel = test_a[((test_a.labels == MEL) & test_a.has_ruler).nonzero()[:16, 0]]
del test_a


@contextlib.contextmanager
def quietly():
    """shap draws progress bars on stderr and both libraries warn about their hooks: keep the page clean."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# %% [markdown]
# ## 1. Intuition and maths
#
# A game: the **players** are the $K$ superpixels (notebook 06); a **coalition** $S$ is a set of
# them; its **value** $v(S)$ is the model's class score with only $S$ shown:
#
# $$v(S) = S_c\big(x \text{ with the segments outside } S \text{ set to the baseline}\big),
# \qquad v(N) = S_c(x), \quad v(\varnothing) = S_c(\text{baseline}).$$
#
# Shapley (1953) shares $v(N) - v(\varnothing)$ by giving each player its marginal contribution
# $v(S \cup \{i\}) - v(S)$, averaged over every order in which the players could join:
#
# $$\phi_i = \sum_{S \subseteq N \setminus \{i\}} \frac{|S|!\,(K - |S| - 1)!}{K!}
#            \big(v(S \cup \{i\}) - v(S)\big).$$
#
# It is the only sharing with **efficiency** ($\sum_i \phi_i = v(N) - v(\varnothing)$), **symmetry**
# (players that add the same to every coalition get the same), **dummy** (a player that adds nothing
# gets zero) and **additivity** (shares of a sum of games are sums of shares). Lundberg & Lee (2017,
# [arXiv:1705.07874](https://arxiv.org/abs/1705.07874)) call Shapley values of a model's inputs
# **SHAP** values; sections 3 and 5 use their estimators.
#
# **The baseline.** A black image is a near-certain melanoma for DermNet (notebook 03), so "absent"
# means the dataset's mean colour, a flat skin-like image both models find close to neutral (section
# 7 tries black). The running image: a clinic-A melanoma with a ruler.

# %%
x0 = ruler_mel.images[:1]
base0 = mean_baseline(x0)
seg0 = superpixels(x0[0], 8)
K = int(seg0.max()) + 1
ruler0, lesion0 = ruler_mel.masks["ruler"][0], ruler_mel.masks["lesion"][0]
pixels = torch.bincount(seg0.flatten())
segment_table = {j: {"pixels": int(pixels[j]), "ruler share": ruler0[seg0 == j].float().mean().item(),
                     "lesion share": lesion0[seg0 == j].float().mean().item()} for j in range(K)}
ruler_shares = torch.tensor([row["ruler share"] for row in segment_table.values()])
ruler_seg = int(ruler_shares.argmax())
assert ruler_shares[ruler_seg] > ruler_shares.sort().values[-2] + 0.1  # one segment holds the ruler: no near-tie
print(f"{K} superpixels; the ruler lies in segment {ruler_seg}")
print(table(segment_table, 3, index="segment"))

# %% [markdown]
# Coalition $S$ is numbered $n = \sum_{j \in S} 2^j$ (a bit pattern). All $2^6 = 64$ coalitions of our
# 6 players fit in one batch:

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
# Alone, the ruler's segment lifts the shortcut model's melanoma logit well above the empty
# coalition; all but the ruler's segment falls well short of the whole image.
#
# ## 2. Exact Shapley values
#
# From the definition: over all $6! = 720$ orders, add each player's marginal contribution as it
# joins.

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
# The helper uses the coalition form: $2^K$ model evaluations and one weight per coalition size,
# not $K!$ orders.

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
# debiased model gives it about nothing and credits the lesion's. The price:
# $2^K$ forward passes per image, so the helper refuses more than `MAX_EXACT_FEATURES` segments.

# %%
seg_many = superpixels(x0[0], 32)
try:
    exact_shapley(shortcut, x0, MEL, seg_many)
except ValueError as err:
    print(f"MAX_EXACT_FEATURES = {MAX_EXACT_FEATURES}\nValueError: {err}")

# %% [markdown]
# ## 3. KernelSHAP: Shapley values by regression
#
# Lundberg & Lee showed that the Shapley values are the coefficients of a weighted linear
# regression of $v(S)$ on the coalition's indicator vector $z_S$: LIME's surrogate with another
# kernel and no penalty:
#
# $$\phi = \arg\min_{\phi_0, \phi} \sum_{S} \pi(S)\,\big(v(S) - \phi_0 - z_S \cdot \phi\big)^2,
# \qquad \pi(S) = \frac{K - 1}{\binom{K}{|S|}\,|S|\,(K - |S|)}.$$
#
# The empty and full coalitions get infinite weight (in practice a large one), which pins
# $\phi_0 = v(\varnothing)$ and makes the coefficients add up to $v(N) - v(\varnothing)$. On all 64
# coalitions the helpers' solver `weighted_linear_fit` gives the Shapley values back:

# %%
size = players.sum(1)
kernel = torch.tensor([(K - 1) / (math.comb(K, s) * s * (K - s)) if 0 < s < K else 1e6 for s in size.tolist()],
                      dtype=torch.float64)
phi_regression, _ = weighted_linear_fit(players, v, kernel)  # the helper's solver: coefficients, intercept
_ = agree("all 64 coalitions, Shapley kernel: regression vs exact", phi_regression, phi0, 1e-5)

# %% [markdown]
# Beyond a few players, KernelSHAP **samples** coalitions with probability proportional to
# $\pi(S)$, each then weighted 1. $\pi$ depends only on size, so: draw a size $s$ with probability
# $\propto \binom{K}{s}\pi = (K-1)/(s(K-s))$ (`shapley_kernel_sizes`), then $s$ players uniformly.
# Very small and very large coalitions, the most telling about single players, are favoured:

# %%
print("P(size = s), s = 0 .. K-1:", ", ".join(fmt(p, 3) for p in shapley_kernel_sizes(K)))
print("the first 8 coalitions of seed 0 (all-ones and all-zeros first, as in Captum):")
print(kernel_shap_coalitions(K, 8, seed=0).numpy())

# %% [markdown]
# KernelSHAP is this regression on sampled coalitions. Here a lookup in `v` can stand in for the
# model; the helper, which runs the model, must agree:

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
# Captum's `KernelShap` with the same seed, baseline and segments (`feature_mask`):

# %%
torch.manual_seed(3)
captum_kernel = KernelShap(shortcut).attribute(x0, target=MEL, baselines=base0, feature_mask=seg0[None, None],
                                               n_samples=200, perturbations_per_eval=50,
                                               return_input_shape=False)[0]
ours_kernel = kernel_shap(shortcut, x0, MEL, seg0, n_samples=200, seed=3, baseline="mean")[0]
agree("ours vs Captum", ours_kernel, captum_kernel, 1e-5)
print(f"(values up to {fmt(captum_kernel.abs().max(), 1)})")

# %% [markdown]
# Equal to float32 round-off; the next cell finds its source and checks efficiency for both.
#
# <details><summary>Under the hood: the same draws, a float32 solve</summary>
#
# With its global torch seed equal to our `seed`, Captum draws our coalitions in our order; the
# difference is in the solve. Captum hands sklearn's `LinearRegression` float32 arrays, which sklearn
# keeps; ours solves in float64 (a float32 spacing at 6 is 5e-7). A float32 sklearn refit of our
# coalitions and scores gives Captum's numbers.
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
# Mean absolute error against the exact values, 25 to 2,000 samples, 8 seeds. A seed's first $n$
# coalitions do not depend on how many follow: one draw of 2,000 per seed serves every $n$.

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
# The error falls like $1/\sqrt{n}$ (fitted slope in the title): four times the samples, half the
# error; about 1% of the largest value at 25 samples, under 0.1% at 2,000. Every estimate adds up
# exactly (the pinned ends), so only another seed, or exact values, reveal the sampling error.

# %% [markdown]
# ## 4. Expected gradients
#
# With gradients there is another way. Integrated Gradients (notebook 03) shares out
# $S_c(x) - S_c(b)$ for one baseline $b$; **expected gradients** (Erion et al. 2021,
# [arXiv:1906.10670](https://arxiv.org/abs/1906.10670)) averages it over baselines from a
# background set $B$ of real images, with one random point per sample:
#
# $$\mathrm{EG}_i(x) = \mathbb{E}_{b \sim B,\ \alpha \sim U(0,1)}
#    \Big[(x_i - b_i)\,\frac{\partial S_c}{\partial x_i}\big(b + \alpha (x - b)\big)\Big],
# \qquad \mathbb{E}\Big[\sum_i \mathrm{EG}_i(x)\Big] = S_c(x) - \mathbb{E}_{b \sim B}\big[S_c(b)\big].$$
#
# shap's `GradientExplainer` and Captum's `GradientShap` call it GradientSHAP; it is not one of
# Lundberg & Lee's 2017 estimators (Kernel, Linear, Deep and Max SHAP). The players are pixels,
# "absent" means "like a typical background image", and completeness holds only on average.
# Background: 32 clinic-B images, rulers on or off whatever the class.

# %%
background = make_dataset(32, clinic="B", seed=TEST_SEEDS["B"]).images
x2 = ruler_mel.images[:2]
print(inspect.getsource(expected_gradients))

# %% [markdown]
# ### Check against Captum and shap, given the same draws
#
# Each sample is a background index and a point $\alpha$. `gradient_shap_draws` replays either
# library's draws, and `expected_gradients(..., draws=...)` uses them:

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
# <details><summary>Under the hood: "the same draws" means order and precision</summary>
#
# Captum draws all indices, then all points, from numpy's global generator; shap seeds numpy with
# `rseed` and draws sample by sample. Captum computes $1 - \alpha$ in float32, shap in float64; the
# last bit can differ, and where it moves a ReLU across zero a whole gradient changes.
# `gradient_shap_draws` keeps each library's order and precision.
# </details>
#
# ### Completeness, on average
#
# One sample's attributions add up to one random term, not to $S_c(x) - \mathbb{E}_b S_c(b)$. Below,
# 128 samples per image, each term kept separate:

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
# several logits off, the mean of 128 within one (spread / $\sqrt{128}$). Unlike IG with one
# baseline (notebook 03's $\delta$), expected gradients adds up only on average.

# %% [markdown]
# ## 5. The shap library's own image path
#
# ### Partition explainer with an image masker
#
# `shap.Explainer(f, shap.maskers.Image(value, shape))` picks the **Partition** explainer: it splits
# the image into halves, quarters, and so on, and computes Owen values (Shapley values that respect
# that hierarchy) in `max_evals` calls. `f` takes NHWC numpy images and here returns both models'
# melanoma logits; hidden pixels take `value`, our mean-colour image.
#
# <details><summary>Under the hood: masker values and seeding</summary>
#
# `value` can be a number (blurring maskers need opencv). The explainer breaks ties with
# `np.random`: seed numpy before each call.
# </details>

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
# shap's own `image_plot`, in shap's colours, not the course's: red raises the melanoma logit, blue
# lowers it, on one scale for both panels. The shortcut model's strongest credit is on the ruler; the
# debiased model's on the lesion. These are Owen values on shap's rectangles, not Shapley values of
# our superpixels: we check them by additivity only.
#
# ### DeepExplainer and Captum's DeepLiftShap
#
# DeepLIFT (Shrikumar et al. 2017, [arXiv:1704.02685](https://arxiv.org/abs/1704.02685)) propagates
# differences from a reference back through the network, with a rule per layer type; its
# attributions add up to $S_c(x) - S_c(\text{reference})$ ("summation to delta"). shap's
# `DeepExplainer` and Captum's `DeepLiftShap` average it over background references: both should
# add up to $S_c(x) - \mathbb{E}_b S_c(b)$, and agree. Captum reports its own summation error
# (`return_convergence_delta=True`):
#
# <details><summary>Under the hood: hooks</summary>
#
# Both libraries hook the model's modules; hence DermNet's ReLUs are separate, non-in-place modules,
# each used once.
# </details>

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
# shap's values add up. Captum's miss the gap by more than a logit on both images, as its own delta
# reports. The libraries differ by a few hundredths; the values are about a tenth.
#
# Why? DermNet's stem `maxpool` is its one layer whose DeepLIFT rule is not a ReLU's rescale rule.
# Swap it for an average pool in a copy (a different model, used only to locate the difference):

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
# Now the libraries agree to round-off and both add up: the disagreement lives in Captum's max-pool
# rule. With max-pooling, check Captum's delta before trusting DeepLiftShap. (Captum's open issue
# [#1276](https://github.com/meta-pytorch/captum/issues/1276) concerns its DeepLIFT max-pool code;
# our tables locate the difference, not its cause.)

# %% [markdown]
# ## 6. On DermNet: the shortcut in Shapley values
#
# The first 16 clinic-A melanomas with a ruler, about 14 superpixels each (too many for exact
# values). KernelSHAP (100 samples, mean-colour baseline) and expected gradients (16 samples,
# clinic-B background) for the melanoma logit, both models, on the same segments.

# %%
x16, m16 = ruler_mel.images, ruler_mel.masks
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
# Both estimators see the shortcut: the shortcut model puts about three times the ruler's share on
# the ruler. The debiased model's KernelSHAP puts almost nothing there; its expected gradients put
# about the ruler's share (pixel attributions reach every pixel that differs from the background),
# peaking on the lesion in every image. Compare models within one method, not across methods. (Half
# counts: a KernelSHAP peak is a whole segment; one straddling the mask's edge scores one half.) Per
# image:

# %%
per_image = {"ruler share": mask_share(m16["ruler"]), **{name: mask_mass(m, m16["ruler"]) for name, m in maps.items()}}
print(table({stat: {name: getattr(values, stat)() for name, values in per_image.items()}
             for stat in ("mean", "min", "max")}, 2))
share = per_image["ruler share"]
assert per_image["shortcut, KernelSHAP"].min() > share.max() and per_image["shortcut, EG"].min() > share.max()
assert per_image["debiased, KernelSHAP"].max() < share.min()

# %% [markdown]
# Not carried by a few images: the shortcut model's *smallest* ruler mass, with either method,
# exceeds the *largest* ruler share; the debiased model's largest KernelSHAP ruler mass is below the
# smallest share.

# %%
order = ["shortcut, KernelSHAP", "debiased, KernelSHAP", "shortcut, EG", "debiased, EG"]
fig = viz.attribution_grid(x16[:3], {name: maps[name][:3] for name in order}, signed=True, size=1.9)
plt.show()

# %% [markdown]
# **Explore it yourself.** Pick a clinic, a class and one of its 20 images, the ruler on or off, the
# model and the number of coalitions; the explorer recomputes KernelSHAP.
# The map explains the model's prediction; set "explain" to the image's class for the evidence for
# the class you picked instead. The image's title gives the prediction; the map's title, the class
# explained and the map's mass on the ruler and on the lesion; the colour bar, what the colours
# measure. Before the notebook runs, and on GitHub, the cell shows a picture of the explorer's first
# view: its controls need a running kernel. Every other method of the course is in its menu too.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers.viz import explorer  # noqa: E402

explorer("KernelSHAP")

# %% [markdown]
# ## 7. Pitfalls and limits
#
# - **The baseline defines "absent", and so the question.** Black instead of the mean colour, in the
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
#   From black, every segment *lowers* the melanoma logit (black is the better melanoma), and the
#   ruler's segment no longer stands out for the shortcut model: correct Shapley values of a game
#   nobody meant to ask about.
# - **Sampling error is invisible in the sum.** KernelSHAP and Partition values add up at any budget.
#   Check the spread across seeds (section 3).
# - **The superpixels choose the players.** The ruler's segment above is partly skin, and its value is
#   painted there too.
# - **Off-distribution coalitions.** A melanoma with a flat skin-coloured hole is not a training
#   image; $v(S)$ is what the model does with it anyway.
# - **Shapley values explain the model, relative to a reference, not the world.** A large value on
#   the ruler says the model uses it, not that rulers cause melanoma.
# - **Libraries differ where they look alike** (section 5): check summation or efficiency first.

# %% [markdown]
# ## 8. Your turn
#
# Write `my_shapley(v, k)`: the $k$ Shapley values of a game given by the value of every coalition,
# a tensor `v` of length $2^k$ (coalition $S$ at index $\sum_{j \in S} 2^j$, as `v` in section 1).
# The checker compares with the definition on a random game and recognises the usual slips.

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
# **Exercise 2, an audit.** Take the first 8 clinic-B images with a ruler of
# `make_dataset(96, clinic="B", seed=777_003)`, 16 SLIC segments each; run KernelSHAP for melanoma
# (100 samples, `baseline="mean"`) with both models. In each image take the segment with the largest
# share of ruler pixels: is its Shapley value above one logit on average, for the shortcut model?
# For the debiased model? The checker measures it on the same images.

# %%
from helpers.exercises import check_shap_ruler_question  # noqa: E402

shortcut_over_one_logit = None  # your answers: True or False
debiased_over_one_logit = None
print(check_shap_ruler_question(shortcut_over_one_logit, debiased_over_one_logit))

# %% [markdown]
# **Exercise 3, harder (optional).** KernelSHAP's coalition-size sampler. Write
# `my_coalition_sizes(k)`: the probability that section 3's sampler draws a coalition of size $s$,
# for $s = 0, \dots, k-1$. The checker compares with `helpers.perturbation.shapley_kernel_sizes` for
# several $k$. Then look at $k = 14$: which sizes does KernelSHAP spend its samples on?

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
# Summing one coalition's kernel weight, $(k-1) / (\binom{k}{s} s (k-s))$, over the
# $\binom{k}{s}$ coalitions of a size cancels the binomial. The mass sits at the two ends (one
# segment in, or one out), where a coalition says most about one player.
# </details>

# %% [markdown]
# ## Summary
#
# - Shapley values average each player's marginal contribution over every order: the only sharing
#   with efficiency, symmetry, dummy and additivity.
# - KernelSHAP (a regression on sampled coalitions) and expected gradients (IG averaged over
#   background images) estimate them; given the same draws, ours match the libraries. KernelSHAP
#   adds up exactly, expected gradients on average: the sum hides the sampling error.
# - Captum's DeepLIFT max-pool rule breaks summation to delta on DermNet; without the max-pool, shap
#   and Captum agree.
# - The shortcut model's Shapley values put about three times the ruler's share on the ruler; the
#   debiased model's do not. From black, the same game hides the shortcut.
#
# **Next: 08 · Feature visualization.** From one image to what a unit of the network responds to:
# images optimised to excite a neuron, a channel, a class.
