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
# # 11 · Vision Transformers: attention maps, rollout, and what attention does not tell you
#
# **The question.** A Vision Transformer comes with a built-in picture of where it looks: its
# attention. Every block says, for every token, how much it draws from every other token. Is
# that picture an explanation? We train a ViT on DermSynth, let it find the same ruler shortcut
# as DermNet, and ask each attention method, and the model itself, where the evidence is.
#
# **After this notebook you will be able to**
# - get the attention probabilities out of a ViT whose fused kernel never forms them, and prove
#   they are the ones the model used;
# - compute raw attention, attention rollout and attention flow (Abnar & Zuidema 2020), and the
#   class-specific relevance of Chefer et al. (2021), with `helpers.attention`;
# - run Grad-CAM on a ViT's tokens, and avoid the layer that gives an all-zero map;
# - run the course's model-agnostic methods (IG, occlusion) on a ViT unchanged;
# - decide with an intervention which attention map is right about the model.
#
# **Time to run:** about 25 s on 2 CPU cores.

# %%
import inspect
import time
import timeit
import warnings

import matplotlib.pyplot as plt
import networkx as nx
import torch
import torch.nn.functional as F

import helpers.attention as attention_helpers
from helpers import viz
from helpers.attention import attention_flow, attention_maps, relevance, rollout, token_map, tokens_to_grid
from helpers.cam import grad_cam, layer_activation_and_gradient
from helpers.data import CLASSES, MEL, NV, make_dataset
from helpers.gradients import gradient_x_input, integrated_gradients, mean_baseline
from helpers.hooks import count_hooks
from helpers.evaluation import bootstrap_ci
from helpers.metrics import mask_mass, mask_share, rank_correlation
from helpers.models import load_dermnet, load_vit
from helpers.perturbation import occlusion
from helpers.report import agree, fmt, table
from helpers.train import TEST_SEEDS, intervention_pair, logits, ruler_intervention

warnings.filterwarnings("ignore", message=".*backward hook.*")  # pytorch-grad-cam's full backward hooks
torch.manual_seed(0)
vit_s, vit_d = load_vit("shortcut"), load_vit("debiased")
test_a = make_dataset(2000, clinic="A", seed=TEST_SEEDS["A"])  # the held-out clinic-A test set
index = torch.nonzero(test_a.has_ruler)[:16, 0]  # 16 images with a ruler (all melanomas in clinic A)
rulers = test_a[index]
twins = make_dataset(2000, clinic="A", seed=TEST_SEEDS["A"], ruler=False)[index]  # the same lesions, no ruler
x = rulers.images
ruler, lesion = rulers.masks["ruler"], rulers.masks["lesion"]
print(f"{len(x)} ruler images; labels {sorted({CLASSES[int(c)] for c in rulers.labels})}; "
      f"the ruler covers {fmt(mask_share(ruler).mean() * 100, 0)}% of an image on average")

# %% [markdown]
# ## 1. The model: timm's Vision Transformer, sized for DermSynth
#
# A ViT (Dosovitskiy et al. 2021, [arXiv:2010.11929](https://arxiv.org/abs/2010.11929)) cuts the
# image into patches, here 8×8 pixels, so a 64×64 image becomes an 8×8 grid of 64 *tokens*. It
# prepends one learned **CLS token**, and after the last block the classifier reads the CLS token
# alone. In between, each block lets every token gather from every other token by attention,
# then transforms each token on its own (the MLP); both steps are added to a residual stream.
#
# `helpers.models.load_vit` gives timm's own `VisionTransformer` (width 64, depth 4, 4 heads),
# trained with the same data as DermNet: a **shortcut** ViT on clinic A and a **debiased** ViT
# on clinic B. The intervention from notebook 00 says whether each model learned the shortcut:
# the same lesions drawn with and without a ruler.

# %%
base = type(vit_s).__mro__[1]
print(f"{type(vit_s).__name__}, a {base.__module__}.{base.__name__}: "
      f"{sum(p.numel() for p in vit_s.parameters()):,} parameters, {len(vit_s.blocks)} blocks, "
      f"{vit_s.blocks[0].attn.num_heads} heads, grid {vit_s.grid}, T = {1 + vit_s.grid[0] * vit_s.grid[1]} tokens")
pair = intervention_pair(500)  # 500 clinic-B lesions, each drawn without and with a ruler
test_b = make_dataset(500, clinic="B", seed=TEST_SEEDS["B"])
figures = {}
for name, model in [("ViT shortcut", vit_s), ("ViT debiased", vit_d),
                    ("DermNet shortcut", load_dermnet("shortcut")), ("DermNet debiased", load_dermnet("debiased"))]:
    flips = ruler_intervention(model, pair=pair)
    y = pair[0].labels
    others = (y != MEL) & (y != NV) & (flips["pred_off"] == y)  # correct non-mel, non-nv lesions
    figures[name] = {"accuracy A": (logits(model, test_a.images[:500]).argmax(1) == test_a.labels[:500]).float().mean(),
                     "accuracy B": (logits(model, test_b.images).argmax(1) == test_b.labels).float().mean(),
                     "add a ruler: to mel": flips["add"], "add a ruler: nv -> mel": flips["add_by_class"]["nv"],
                     "others -> mel": (flips["pred_on"][others] == MEL).float().mean(),
                     "remove it: changed": flips["remove"]}
print(table(figures, 2, index="model"))
del pair, test_a, test_b  # 3,000 images not needed again: a learner keeps several kernels open

# %% [markdown]
# ## 2. Getting the attention out: the fused kernel never forms it
#
# Self-attention in one head, for tokens $X$ (one per row) and $d$ dimensions per head:
#
# $$A = \operatorname{softmax}\!\left(\frac{Q K^\top}{\sqrt d}\right), \qquad Q = X W_Q,\; K = X W_K,\;
# V = X W_V, \qquad \text{output} = A V .$$
#
# Row $i$ of $A$ is the distribution token $i$ gathers with; row 0 is the CLS token's. The
# obvious way to read $A$ is a forward hook on the attention module. Try it:

# %%
attn0 = vit_s.blocks[0].attn
seen = {}
handle = attn0.register_forward_hook(lambda module, inputs, output: seen.update(output=output))
with torch.no_grad():
    vit_s(x[:2])
handle.remove()
print(f"{type(attn0).__name__}.fused_attn = {attn0.fused_attn}; the hook sees {tuple(seen['output'].shape)} "
      f"= [B, T, width]: the attention's *output*, not its [B, heads, T, T] probabilities")
source = inspect.getsource(type(attn0).forward).splitlines()
start = next(i for i, line in enumerate(source) if "if self.fused_attn" in line)
print("\n".join(source[start:start + 14]))

# %% [markdown]
# With `fused_attn` on (timm's default whenever PyTorch has it), the block calls
# `scaled_dot_product_attention`, one kernel that goes from $Q, K, V$ to $AV$ without ever
# storing $A$. The same holds for `nn.MultiheadAttention(..., need_weights=False)`, which
# torchvision's ViT uses. This is the first thing people hit when they try to draw a ViT's
# attention: the hook fires, and there is nothing in it to draw. (Switching `fused_attn` off
# would bring back the slow path and its `attn_drop` module to hook, but it changes the model
# you are explaining, if only by round-off.)
#
# What a hook *can* see is the `qkv` projection that feeds the kernel. From its output, $A$
# follows by the formula above, computed exactly as timm's unfused branch does. The model runs
# untouched:

# %%
print(inspect.getsource(attention_helpers._probabilities))
with attention_helpers.record_attention(vit_s) as rec, torch.no_grad():  # a hook on every block's attn.qkv
    hooked = vit_s(x)
with torch.no_grad():
    plain = vit_s(x)
assert torch.equal(hooked, plain) and count_hooks(vit_s) == 0
print(f"{len(rec.attentions)} blocks, each {tuple(rec.attentions[0].shape)} = [B, heads, T, T]; "
      "the logits with the hooks equal those without, bit for bit; no hook is left")

# %% [markdown]
# **Proof that these are the probabilities the model used.** Recomputing is only safe if the
# result is what the kernel computed internally. So rebuild each block from the recorded $A$
# and compare with the block's real output: for timm's pre-norm block,
#
# $$h = x + \mathrm{proj}(A V), \quad V \text{ from } \mathrm{qkv}(\mathrm{norm}_1(x)), \qquad
# \text{out} = h + \mathrm{MLP}(\mathrm{norm}_2(h)).$$
#
# `verify_attention` does this for every block. A wrong $A$, for example one computed without the
# $1/\sqrt d$ scale, must fail the same test, or the test proves nothing:

# %%
gaps = attention_helpers.verify_attention(vit_s, x)
assert max(gaps) < 1e-5
print(f"every block of the shortcut ViT rebuilt from its recorded attention to within 1e-5 "
      f"(float32 round-off) on {len(x)} images")


def unscaled(attn, qkv):  # the same, but without the 1/sqrt(d) scale: a plausible slip
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return (q @ k.transpose(-2, -1)).softmax(dim=-1), v


correct, attention_helpers._probabilities = attention_helpers._probabilities, unscaled
try:
    wrong_gaps = attention_helpers.verify_attention(vit_s, x)
finally:
    attention_helpers._probabilities = correct
assert min(wrong_gaps) > 1e-2
print("without the scale, the rebuilt blocks miss by more than 0.01 (every block): the check can fail")

# %% [markdown]
# ## 3. Raw attention: where the CLS token looks
#
# `attention_maps(model, x)` returns the list of $[B, \text{heads}, T, T]$ probabilities, one per
# block. It wants only the maps, not the model's output, so it takes the other road for its one
# forward pass: it switches the blocks to timm's unfused path (and back) and reads $A$ where that
# path hands it to `attn_drop`, instead of computing $A$ a second time beside the fused kernel
# (`python -m benchmarks.bench_attention` times it against both forwards). Round-off apart, they
# must be the same maps as the recorded ones above:

# %%
fused_before = [b.attn.fused_attn for b in vit_s.blocks]
att_s, att_d = attention_maps(vit_s, x), attention_maps(vit_d, x)
_ = agree("attention_maps (unfused path) vs record_attention (hooked qkv), every block",
          torch.stack(att_s), torch.stack(rec.attentions), atol=1e-5)
assert [b.attn.fused_attn for b in vit_s.blocks] == fused_before and count_hooks(vit_s) == 0  # switched back

# %% [markdown]
# The CLS row of block $l$, head $h$, is `A[l][:, h, 0, 1:]`: 64 weights, one per patch, that
# `token_map` lays out on the 8×8 grid at image size (each patch's pixels get its weight).

# %%
one = 0
cls_rows = {f"block {b}": token_map(att_s[b][one:one + 1].mean(1)[:, 0], vit_s.grid) for b in range(4)}
cls_rows |= {f"block 3, head {h}": token_map(att_s[3][one:one + 1, h, 0], vit_s.grid) for h in range(4)}
fig, axes = plt.subplots(2, 5, figsize=(10, 5.0), layout="constrained")  # room for two-line titles
viz.show_masks(x[one], {"ruler": ruler[one], "lesion": lesion[one]}, ax=axes[0, 0], title="image, masks")
axes[1, 0].set_axis_off()
for ax, (name, m) in zip([*axes[0, 1:], *axes[1, 1:]], cls_rows.items(), strict=True):
    viz.overlay(x[one], m[0], ax=ax, title=f"{name}\nruler {fmt(mask_mass(m, ruler[one:one + 1])[0], 2)}",
                signed=False)
on_ruler = {name: float(mask_mass(m, ruler[one:one + 1])[0]) for name, m in cls_rows.items()}
heads = [on_ruler[f"block 3, head {h}"] for h in range(4)]
assert on_ruler["block 0"] < 0.2 and on_ruler["block 1"] > 0.45 and 0.2 < on_ruler["block 3"] < 0.6
assert sum(h > 0.5 for h in heads) == 2 and min(heads) < 0.01
fig.suptitle("shortcut ViT: CLS attention, head mean per block (top) and the last block's heads (bottom)",
             fontsize=9)
plt.show()

# %% [markdown]
# The CLS token's attention moves from block to block: on this image, block 0 spreads it over
# the lesion and the skin, block 1 puts half of it on the ruler, and the last block splits it
# between the ruler and one lesion patch. The heads of one block differ too: in the last block,
# two heads put more than half of their mass on the ruler and one puts none there. Averaging the
# heads, as most attention plots do, is a choice. And one block's attention says only how that
# block mixed the tokens *it was given*, which by then are already mixtures of the input patches.
#
# One image shows what a head *can* do. Whether a head *consistently* looks at the ruler is a
# question about many images: every head's CLS attention mass on the ruler and on the lesion,
# averaged over the 16 ruler images (a head that looked nowhere in particular would score the
# masks' areas, 0.12 and 0.14). The CLS token's weight on itself, which the maps leave out, is in
# the last column.

# %%
head_mass = {}
for b in range(4):
    for h in range(4):
        m = token_map(att_s[b][:, h, 0], vit_s.grid)
        head_mass[f"block {b}, head {h}"] = {"ruler": mask_mass(m, ruler).mean(), "lesion": mask_mass(m, lesion).mean(),
                                             "CLS on itself": att_s[b][:, h, 0, 0].mean()}
print(table(head_mass, 2, index="shortcut ViT, CLS row (mean of 16)"))
top_head = max(head_mass, key=lambda k: float(head_mass[k]["ruler"]))
print(f"the head with the most ruler mass: {top_head}")

# %% [markdown]
# Where a head looks is not what it does for the score. The causal question needs an
# intervention: switch one head off (zero its output, the slice of the attention's output that
# the head writes before the projection `proj` mixes the heads) and measure how much the mel logit
# falls. Do it for every head, on the ruler images and on their ruler-free twins: a head that
# carries the ruler's evidence should cost more with the ruler in view than without it.

# %%
def ablate_head(model, block, head, images):
    attn = model.blocks[block].attn
    cut = slice(head * attn.head_dim, (head + 1) * attn.head_dim)

    def zero_head(module, inputs):
        out = inputs[0].clone()
        out[..., cut] = 0
        return (out,)

    handle = attn.proj.register_forward_pre_hook(zero_head)
    try:
        with torch.no_grad():
            return model(images)[:, MEL]
    finally:
        handle.remove()


with torch.no_grad():
    mel_ruler, mel_twin = vit_s(x)[:, MEL], vit_s(twins.images)[:, MEL]
for name in head_mass:
    b, h = int(name[6]), int(name[-1])
    head_mass[name] = {"ruler mass": head_mass[name]["ruler"],
                       "mel drop, ruler images": (mel_ruler - ablate_head(vit_s, b, h, x)).mean(),
                       "mel drop, twins": (mel_twin - ablate_head(vit_s, b, h, twins.images)).mean()}
assert count_hooks(vit_s) == 0
print(table(head_mass, 2, index="switch one head off (logits)"))
drops = {k: float(v["mel drop, ruler images"] - v["mel drop, twins"]) for k, v in head_mass.items()}
masses_h = torch.tensor([float(v["ruler mass"]) for v in head_mass.values()])
print(f"{top_head}: ruler mass {fmt(head_mass[top_head]['ruler mass'], 2)}, its ruler-specific drop "
      f"{fmt(drops[top_head], 2)}; the largest ruler-specific drop: {max(drops, key=drops.get)}, "
      f"{fmt(max(drops.values()), 2)}")
drops_h = torch.tensor(list(drops.values()), dtype=torch.float64)
print(f"rank correlation, over the 16 heads, of ruler mass with ruler-specific drop: "
      f"{fmt(rank_correlation(masses_h[None].double(), drops_h[None])[0], 2, atol=1e-3)}")

# %% [markdown]
# Over 16 images the heads do specialize: in the last block three heads put 0.59 to 0.67 of
# their mass on the ruler and one puts 0.93 on the lesion; two heads of block 0 look at the
# lesion (0.70 and 0.68). The CLS token's weight on itself is small here (0.15 at most).
#
# Switching heads off tells a different story. The head that looks at the ruler most (block 3,
# head 2) changes the mel logit by 0.07 more with the ruler in view than without it; the largest
# ruler-specific drop, 1.09, belongs to another head of the same block. Over the 16 heads, ruler
# attention and ruler-specific drop rank-correlate at 0.67: looking at the ruler goes with using
# it, but the ranking by attention does not pick the head that matters. Raw single-layer attention
# is suggestive, not conclusive.
#
# ## 4. Attention rollout
#
# Abnar & Zuidema (2020, [arXiv:2005.00928](https://arxiv.org/abs/2005.00928)) follow the mixing
# through all the blocks. Each block's output token is its input token (the residual) plus what
# attention brought in, so model the block as $\hat A_l = \tfrac12 I + \tfrac12 A_l$ (heads fused,
# rows renormalised) and multiply:
#
# $$R = \hat A_L \hat A_{L-1} \cdots \hat A_1 .$$
#
# $R_{ij}$ is how much of output token $i$ traces back to input token $j$, if every token were a
# plain weighted average of the ones below. The CLS row of $R$ is the map.

# %%
print(inspect.getsource(rollout))

# %% [markdown]
# Rollout has no maintained library to compare with, so check it against answers known by hand:
# identity attention keeps every token where it is; a chain where block 1 sends every token to
# token 2 and block 2 sends every token to token 1 must end at token 2.

# %%
eye = torch.eye(4, dtype=torch.float64)[None, None]
to = lambda j: torch.zeros(1, 1, 4, 4, dtype=torch.float64).index_fill_(3, torch.tensor([j]), 1.0)  # noqa: E731
assert torch.allclose(rollout([eye, eye, eye])[0], eye[0, 0])
chain = rollout([to(2), to(1)], residual=0.0)[0]
assert torch.allclose(chain, to(2)[0, 0])
print("identity attention rolls out to the identity; the one-hot chain ends at token 2 for every token:")
print(chain.int())

roll_s, roll_d = rollout(att_s), rollout(att_d)
assert torch.allclose(roll_s.sum(-1), torch.ones(len(x), 65, dtype=torch.float64))

# %% [markdown]
# How the heads are fused is a choice rollout leaves open: their mean (the default), or, as some
# implementations offer, their maximum or minimum. On the shortcut ViT's 16 images, the share of
# the rollout map on the ruler and on the lesion under each choice:

# %%
fusions = {}
for fusion in ("mean", "max", "min"):
    r = token_map(rollout(att_s, head_fusion=fusion)[:, 0], vit_s.grid)
    fusions[f'head_fusion="{fusion}"'] = {"ruler": mask_mass(r, ruler).mean(), "lesion": mask_mass(r, lesion).mean()}
print(table(fusions, 2, index="rollout, shortcut ViT", atol=1e-4))

# %% [markdown]
# ## 5. Attention flow, and why rollout is what people use
#
# Abnar & Zuidema's second proposal treats the same matrices as a network of pipes: one node per
# token per level, an edge from token $i$ of level $l+1$ down to token $j$ of level $l$ with
# capacity $\hat A_l[i, j]$. The flow of input token $j$ is the **maximum flow** from the CLS
# node at the top to token $j$ at the bottom. Rollout multiplies weights along all paths; flow
# lets each path carry only what its narrowest pipe allows.
#
# Every input token is its own max-flow problem on a graph of $L T^2 = 16{,}900$ edges.
# `attention_flow` solves them with SciPy's Dinic algorithm; networkx's general-purpose solver is
# the reference: same graph, built here independently.

# %%
print(inspect.getsource(attention_flow).split('"""')[2].strip())
hat = [0.5 * torch.eye(65, dtype=torch.float64) + 0.5 * a[one].mean(0).double() for a in att_s]
hat = [h / h.sum(-1, keepdim=True) for h in hat]
graph = nx.DiGraph()
for level, h in enumerate(hat):
    for i in range(65):
        for j in range(65):
            graph.add_edge((level + 1, i), (level, j), capacity=float(h[i, j]))
some = [0, 1, 9, 27, 36]  # the CLS token and four patches
t_nx = []  # seconds per token: each token is one max-flow problem on the same graph
theirs = []
for j in some:
    start = time.perf_counter()
    theirs.append(nx.maximum_flow_value(graph, (4, 0), (0, j)))
    t_nx.append(time.perf_counter() - start)
theirs = torch.tensor(theirs, dtype=torch.float64)
one_image = [a[one:one + 1] for a in att_s]
flow_one = attention_flow(one_image)[0]
_ = agree("attention_flow vs networkx max-flow, 5 tokens", flow_one[some], theirs, atol=1e-7)

# %% [markdown]
# What each costs, for one image. Each timing is the best of several runs, after a first call
# that is not counted (it pays for loading code and allocating memory, not for the method); for
# networkx, the fastest of the five tokens above, times the 65 tokens of an image.

# %%
# NBVAL_IGNORE_OUTPUT
t_roll = min(timeit.repeat(lambda: rollout(one_image), number=20, repeat=5)) / 20
t_flow = min(timeit.repeat(lambda: attention_flow(one_image), number=1, repeat=3))
t_graph = 65 * min(t_nx)
print(f"one image: rollout {t_roll * 1e3:.2g} ms; flow {t_flow:.2g} s with SciPy, {t_graph:.2g} s with networkx")
print(f"flow with SciPy / rollout: about {float(f'{t_flow / t_roll:.1g}'):,.0f} times; "
      f"networkx / rollout: about {float(f'{t_graph / t_roll:.1g}'):,.0f} times (timings vary by machine)")

# %% [markdown]
# On the machine that ran this notebook, flow cost about ten times as much as rollout per image
# with SciPy's solver, and about two thousand times with networkx. And it buys little here:
# with the residual in every block, each input token can push nearly a full unit of flow to the
# top, so the flows come out nearly uniform (section 9 measures it). Rollout is what people use
# because it is one matrix product per block.
#
# ## 6. Relevance: attention weighted by its gradient (Chefer et al.)
#
# Rollout treats every head alike and ignores the class: it gives the same map for "melanoma" as
# for "nevus". Chefer, Gur & Wolf (2021, [arXiv:2103.15679](https://arxiv.org/abs/2103.15679))
# weight every attention weight by the gradient of the class score with respect to it, keep the
# positive part, and accumulate through the blocks:
#
# $$R \leftarrow R + \operatorname{mean}_h\!\big[(\nabla_{A_l} S_c \odot A_l)^+\big]\, R,
# \qquad R_0 = I .$$
#
# The gradient with respect to $A$ needs $A$ in the autograd graph, which the fused kernel does
# not provide either: with `differentiable=True`, `record_attention` replaces each attention
# module's output by $\mathrm{proj}(AV)$ computed from the recorded $A$ (the same value, to
# round-off).

# %%
print(inspect.getsource(relevance).split('"""')[2].strip())
print()
print(inspect.getsource(attention_helpers.relevance_rule))

# %% [markdown]
# The check: the same rule through a second, independent route to $\nabla_A S_c$, timm's own
# unfused path (`unfused_attention`: `fused_attn` off for the block, the probabilities taken at its
# `attn_drop` module, where timm's slow path passes them).

# %%
def relevance_unfused(model, x, target):
    with attention_helpers.unfused_attention(model) as probs:
        out = model(x.clone().requires_grad_(True))
        grads = torch.autograd.grad(out[:, target].sum(), probs)
    return token_map(attention_helpers.relevance_rule(probs, grads)[:, 0], model.grid)


rel_s = relevance(vit_s, x, MEL)
_ = agree("relevance vs the rule through timm's unfused attention", rel_s, relevance_unfused(vit_s, x, MEL),
          atol=1e-6, rtol=1e-4)


def per_patch(a):  # a map's magnitude summed over each 8x8 patch: [B, 64], the grid attention works on
    return F.avg_pool2d(a.abs().sum(1, keepdim=True), 8).flatten(1)


rel_nv = relevance(vit_s, x, NV)
same_class = rank_correlation(per_patch(rel_s[:8]), per_patch(relevance(vit_s, x[8:], MEL))).mean()
print(f"class-specific: per patch, the mel and nv relevance maps of an image have mean rank correlation "
      f"{fmt(rank_correlation(per_patch(rel_s), per_patch(rel_nv)).mean(), 2, atol=1e-3)} "
      f"(1 would be the same order; rollout's map is the same for every class)")
print(f"control: mel maps of two different images (1-8 paired with 9-16): {fmt(same_class, 1, atol=1e-3)}")
assert count_hooks(vit_s) == 0

# %% [markdown]
# ## 7. Grad-CAM on tokens, and the layer that gives nothing
#
# Grad-CAM (notebook 04) needs a feature map $[B, C, h, w]$. A ViT layer gives tokens
# $[B, T, C]$: drop the CLS token and fold the 64 patch tokens back onto the 8×8 grid. That is
# `tokens_to_grid`, passed to the course's one Grad-CAM as `reshape` (pytorch-grad-cam and torchcam
# call it `reshape_transform`). Which layer? The natural choice, the last block's output, is a trap:

# %%
t_mel = torch.full((len(x),), MEL)
_, g_out = layer_activation_and_gradient(vit_s, x, t_mel, vit_s.blocks[-1], reshape=tokens_to_grid)
_, g_norm = layer_activation_and_gradient(vit_s, x, t_mel, vit_s.blocks[-1].norm1, reshape=tokens_to_grid)
assert g_out.abs().max() == 0 and g_norm.abs().max() > 0
print(f"largest |gradient| on the last block's patch tokens: {g_out.abs().max().item():g} exactly; "
      f"at the input of its attention (blocks[-1].norm1): {fmt(g_norm.abs().max(), 2)}")

# %% [markdown]
# The head reads only the CLS token. After the last block no token mixes with any other, so the
# patch tokens of the last block's *output* never reach the score: their gradient is exactly zero
# and Grad-CAM there is an empty map (pytorch-grad-cam issues #363 and #513 report this). One step
# earlier, at `blocks[-1].norm1`, the patch tokens still feed the CLS token through the last
# attention, and the gradient is there. Now the references, on the same layer:

# %%
from pytorch_grad_cam import GradCAM as PGCGradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from torchcam.methods import GradCAM as TorchcamGradCAM  # noqa: E402

layer = vit_s.blocks[-1].norm1
gc_raw = grad_cam(vit_s, x, MEL, layer, reshape=tokens_to_grid, upsample=False)
with TorchcamGradCAM(vit_s, target_layer=layer, reshape_transform=tokens_to_grid) as extractor:
    theirs_tc = extractor([MEL] * len(x), vit_s(x), normalized=False)[0]
_ = agree("Grad-CAM on tokens vs torchcam (8x8, unnormalised)", gc_raw[:, 0], theirs_tc, atol=1e-7)
gc_up = grad_cam(vit_s, x, MEL, layer, reshape=tokens_to_grid)  # bilinear to 64x64, as cv2.resize
with PGCGradCAM(vit_s, [layer], reshape_transform=tokens_to_grid) as cam_pgc:
    theirs_pgc = torch.as_tensor(cam_pgc(x, targets=[ClassifierOutputTarget(MEL)] * len(x)))
flat = gc_up.flatten(1)
ours_mm = ((flat - flat.amin(1, keepdim=True)) / (flat.amax(1, keepdim=True) - flat.amin(1, keepdim=True)))
_ = agree("Grad-CAM on tokens vs pytorch-grad-cam (64x64, min-max)", ours_mm.view(-1, 64, 64), theirs_pgc,
          atol=1e-5)
assert count_hooks(vit_s) == 0

# %% [markdown]
# ## 8. The course's model-agnostic methods work unchanged
#
# Integrated Gradients (notebook 03) and occlusion (notebook 05) ask nothing of the architecture:
# they call the model and, for IG, its gradient with respect to the input. Through the method
# contract, the same calls run on the ViT, and IG's completeness check still holds.

# %%
x8 = x[:8]  # IG costs 32 forward and backward passes per image
ig_s, delta = integrated_gradients(vit_s, x8, MEL, steps=32, return_delta=True)
with torch.no_grad():
    gap = vit_s(x8)[:, MEL] - vit_s(torch.zeros_like(x8))[:, MEL]
assert (delta.abs() / gap.abs()).max() < 0.02
print("IG on the ViT, 32 steps: the attributions sum to f(x) - f(black) within 2% on all 8 images")
occ_s = occlusion(vit_s, x, MEL, window=8, stride=8, baseline="mean")  # one window per patch
print(f"occlusion on the ViT: {tuple(occ_s.shape)}, one forward pass per patch and image")

# %% [markdown]
# ## 9. On DermSynth: where each method puts the shortcut ViT's evidence
#
# Every method, for the class "mel", on the 16 ruler images, for both ViTs: the share of each
# map's mass on the ruler and on the lesion (`mask_mass`, as in every notebook). The ruler covers
# about 12% of an image and the lesion about 14%: a map that ignored both would score about that.

# %%
def vit_maps(model, att):
    grid = model.grid
    return {
        "attention, block 0": token_map(att[0].mean(1)[:, 0], grid),
        "attention, last block": token_map(att[-1].mean(1)[:, 0], grid),
        "rollout": token_map(rollout(att)[:, 0], grid),
        "flow": token_map(attention_flow(att), grid),
        "relevance (Chefer)": relevance(model, x, MEL),
        "Grad-CAM, blocks[-1].norm1": grad_cam(model, x, MEL, model.blocks[-1].norm1, reshape=tokens_to_grid,
                                               mode="nearest"),
        "gradient x input": gradient_x_input(model, x, MEL),
        "IG (8 images)": integrated_gradients(model, x8, MEL, steps=32),
        "occlusion, 8x8 mean colour": occlusion(model, x, MEL, window=8, stride=8, baseline="mean"),
    }


maps = {"shortcut": vit_maps(vit_s, att_s), "debiased": vit_maps(vit_d, att_d)}
masses = {}
for method in maps["shortcut"]:
    row = {}
    for name in ("shortcut", "debiased"):
        a = maps[name][method]
        row[f"{name}: ruler"] = mask_mass(a, ruler[:len(a)]).mean()
        row[f"{name}: lesion"] = mask_mass(a, lesion[:len(a)]).mean()
    masses[method] = row
print(table(masses, 2, index="mass of each map"))
share_r, share_l = mask_share(ruler).mean(), mask_share(lesion).mean()
m = {k: {c: float(v) for c, v in row.items()} for k, row in masses.items()}
assert m["attention, block 0"]["shortcut: lesion"] > 2 * share_l > 2 * m["attention, block 0"]["shortcut: ruler"]
assert m["attention, last block"]["shortcut: ruler"] > 3 * share_r
assert abs(m["flow"]["shortcut: ruler"] - share_r) < 0.03 and abs(m["flow"]["shortcut: lesion"] - share_l) < 0.03
assert m["occlusion, 8x8 mean colour"]["shortcut: ruler"] < 0.1
assert m["attention, last block"]["debiased: lesion"] > 0.9
falls = [k for k in m if m[k]["debiased: ruler"] < m[k]["shortcut: ruler"] - 0.01]
rises = [k for k in m if m[k]["debiased: ruler"] > m[k]["shortcut: ruler"] + 0.01]
assert sorted(falls + rises) == sorted(m)  # no method within 0.01 of level
print(f"ruler mass lower for the debiased ViT: {', '.join(falls)}")
print(f"ruler mass higher for the debiased ViT: {', '.join(rises)}")
shown = ("attention, last block", "rollout", "flow", "relevance (Chefer)", "Grad-CAM, blocks[-1].norm1",
         "occlusion, 8x8 mean colour")
fig = viz.attribution_grid(torch.cat([x[:2], x[:2]]),
                           {k: torch.cat([maps["shortcut"][k][:2], maps["debiased"][k][:2]]) for k in shown},
                           row_titles=["shortcut ViT", "shortcut ViT", "debiased ViT", "debiased ViT"],
                           signed=None, colorbar=True, size=1.9)
fig.suptitle("mel, two ruler images: each map on its own scale (bars); occlusion is signed "
             "(red: covering the patch lowers the mel score)", fontsize=9)
plt.show()

# %% [markdown]
# Read down the shortcut columns. The first block's CLS attention favours the lesion; the last
# block's is on the ruler, at more than three times the ruler's share of the image. Rollout,
# which multiplies all the blocks, spreads its mass more evenly. Flow is flat: its masses are the
# areas of the ruler and the lesion, because with the residual in every block each input token
# can push nearly a full unit of flow to the top, so every token gets about the same. Relevance,
# the class-specific rule, puts more of its mass on the lesion than on the ruler. Occlusion, one
# patch at a time, finds little on the ruler.
#
# For the debiased ViT the last block's attention is on the lesion and nowhere else. The ruler
# mass of the last block, rollout, flow, relevance and the two gradient methods falls from the
# shortcut to the debiased model; three rise: block 0's attention (0.08 to 0.13), occlusion's
# (0.05 to 0.07) and, most, Grad-CAM's (0.11 to 0.27). The figure shows two of the images for
# both models: each map is drawn on its own colour scale, given by its bar.

# %% [markdown]
# ## 10. Which map agrees with the perturbation and gradient views?
#
# Abnar & Zuidema's own test: across the input tokens, rank-correlate each attention map with a
# perturbation measure (occlusion) and with input-gradient importance. Everything is compared at
# the level of the 64 patches (each map summed in magnitude over a patch), because attention has
# nothing finer.

# %%
agreement = {}
for method in ("attention, block 0", "attention, last block", "rollout", "flow", "relevance (Chefer)",
               "Grad-CAM, blocks[-1].norm1", "IG (8 images)"):
    row = {}
    for name in ("shortcut", "debiased"):
        a = per_patch(maps[name][method])
        n = len(a)
        occ = per_patch(maps[name]["occlusion, 8x8 mean colour"][:n])
        row[f"{name}: vs occlusion"] = rank_correlation(a, occ).mean()
        row[f"{name}: vs grad x input"] = rank_correlation(a, per_patch(maps[name]["gradient x input"][:n])).mean()
    agreement[method] = row
# one decimal: two near-tied patches that swap ranks can move a mean across a boundary at two
print(table(agreement, 1, index="mean rank correlation", atol=1e-4))
for name in ("shortcut", "debiased"):
    roll, last = agreement["rollout"], agreement["attention, last block"]
    assert roll[f"{name}: vs grad x input"] > last[f"{name}: vs grad x input"] + 0.15
    assert abs(roll[f"{name}: vs occlusion"] - last[f"{name}: vs occlusion"]) < 0.05
    assert max(float(v) for v in agreement["Grad-CAM, blocks[-1].norm1"].values()) < 0.2
assert all(float(agreement["flow"][c]) < float(agreement["rollout"][c]) - 0.1 for c in agreement["flow"])
assert min(agreement, key=lambda k: float(agreement[k]["shortcut: vs occlusion"])) == "flow"
assert agreement["Grad-CAM, blocks[-1].norm1"]["debiased: vs grad x input"] < -0.2

# %% [markdown]
# Abnar & Zuidema's finding holds in part: rollout agrees much better than the last block's raw
# attention with gradient × input, on both models, but with occlusion the two are level, and
# neither agrees with it well. Their other finding, that flow agrees about as well as rollout,
# does not reproduce here: flow is below rollout in every column, and on the shortcut model it
# agrees with occlusion least of all the maps. Grad-CAM on tokens agrees with nothing (on the debiased model it
# even orders the patches against gradient × input), as it is often found not to on ViTs. And
# agreement is not truth: two maps can agree and both be wrong about the model.

# %% [markdown]
# ## 11. The intervention decides
#
# DermSynth can settle what agreement cannot, because it can take the ruler away: `twins` are
# the same 16 lesions drawn without the ruler. Take the lesion away too, by painting it with
# DermSynth's mean colour, and the two *players*, ruler and lesion, have four coalitions whose
# scores the model gives directly. Their
# exact Shapley values (notebook 07) split the mel logit between them:
#
# $$\phi_\text{ruler} = \tfrac12\big[(S(\text{both}) - S(\text{lesion only})) +
# (S(\text{ruler only}) - S(\text{neither}))\big], \quad \text{and alike for } \phi_\text{lesion}.$$
#
# The ruler's share of the evidence, $\phi_\text{ruler} / (\phi_\text{ruler} + \phi_\text{lesion})$,
# is a fact about the model on these images. Each map makes a claim about the same quantity: its
# ruler mass over its ruler plus lesion mass.

# %%
def coalition_scores(model, x, twins_x, lesion_mask):
    paint = mean_baseline(x)
    inside = lesion_mask[:, None]
    with torch.no_grad():
        return {"both": model(x)[:, MEL], "lesion only": model(twins_x)[:, MEL],
                "ruler only": model(torch.where(inside, paint, x))[:, MEL],
                "neither": model(torch.where(inside, paint, twins_x))[:, MEL]}


def evidence_share(model, x, twins_x, lesion_mask):
    s = coalition_scores(model, x, twins_x, lesion_mask)
    phi_r = 0.5 * ((s["both"] - s["lesion only"]) + (s["ruler only"] - s["neither"]))
    phi_l = 0.5 * ((s["both"] - s["ruler only"]) + (s["lesion only"] - s["neither"]))
    share = phi_r.clamp_min(0) / (phi_r.clamp_min(0) + phi_l.clamp_min(0))  # per image
    return phi_r, phi_l, share


def claimed_shares(a):  # per image: the map's ruler mass over its ruler plus lesion mass
    on_ruler, on_lesion = mask_mass(a, ruler[:len(a)]), mask_mass(a, lesion[:len(a)])
    return on_ruler / (on_ruler + on_lesion)


def two(v):  # two decimals, or one where a change of 1e-4 could move the second
    v = float(v)
    return fmt(v, 2) if len({f"{v + d:.2f}".replace("-0.00", "0.00") for d in (-1e-4, 0, 1e-4)}) == 1 else fmt(v, 1)


def with_ci(values):  # mean over images [95% bootstrap interval over the images]
    mean, low, high = bootstrap_ci(values)
    return f"{two(mean)} [{two(low)}, {two(high)}]"


verdict, truth = {}, {}
for name, model in (("shortcut", vit_s), ("debiased", vit_d)):
    phi_r, phi_l, truth[name] = evidence_share(model, x, twins.images, lesion)
    verdict[name] = {"phi ruler (logits)": phi_r.mean(), "phi lesion (logits)": phi_l.mean(),
                     "ruler share [95% CI]": with_ci(truth[name])}
print(table(verdict, 2, index="intervention (mean of 16)"))
uniform_i = mask_share(ruler) / (mask_share(ruler) + mask_share(lesion))  # a map that is the same everywhere
per_image = {method: {name: claimed_shares(maps[name][method]) for name in maps} for method in maps["shortcut"]}
per_image["uniform map (control)"] = {name: uniform_i for name in maps}
claims, mean_miss = {}, {}
for method, c in per_image.items():
    row = {}
    for name in maps:
        row[f"{name}: claims"] = two(c[name].mean())
        row[f"{name}: miss [95% CI]"] = with_ci(c[name] - truth[name][:len(c[name])])
    mean_miss[method] = sum(abs(float((c[n] - truth[n][:len(c[n])]).mean())) for n in maps) / 2
    claims[method] = row | {"mean |miss|": two(mean_miss[method])}
print(table(claims, index="ruler / (ruler + lesion)"))
covers_zero = {name: [k for k, c in per_image.items()
                      if bootstrap_ci(c[name] - truth[name][:len(c[name])])[1] <= 0
                      <= bootstrap_ci(c[name] - truth[name][:len(c[name])])[2]] for name in maps}
for name in maps:
    print(f"{name} ViT, miss interval contains 0: {', '.join(covers_zero[name]) or 'none'}")
least = min(mean_miss.values())
best = [k for k, v in mean_miss.items() if v <= least + 0.01]  # a tie within 0.01 is a tie
assert all(abs(v - least - 0.01) > 1e-3 for v in mean_miss.values())  # and no method sits on that line
gc_debiased = per_image["Grad-CAM, blocks[-1].norm1"]["debiased"].mean()
print(f"smallest mean |miss| over the two models (and within 0.01 of it): {', '.join(best)}, {two(least)}; "
      f"Grad-CAM on the debiased ViT claims {two(gc_debiased)} against {two(truth['debiased'].mean())}")
like_flat = [k for k, c in per_image.items() if k != "uniform map (control)"
             and bootstrap_ci(c["shortcut"] - uniform_i[:len(c["shortcut"])])[1] <= 0
             <= bootstrap_ci(c["shortcut"] - uniform_i[:len(c["shortcut"])])[2]]
print(f"shortcut ViT, claim not told apart from the flat map's (the interval of the difference contains 0): "
      f"{', '.join(like_flat) or 'none'}")
assert gc_debiased > max(c["debiased"].mean() for k, c in per_image.items() if not k.startswith("Grad-CAM")) + 0.1

# %% [markdown]
# The intervention answers the question the attention maps raised, but only one of the two
# models can tell the methods apart. For the shortcut ViT the ruler carries about half of the
# ruler-plus-lesion evidence (0.53, interval 0.50 to 0.55). A flat map, the same everywhere,
# claims the masks' areas, 0.48: a miss of only -0.04. So on this model a method that passes
# is not thereby shown to read the model: rollout (miss 0.01), flow (-0.02) and gradient × input
# (0.02) land close, and the last line above lists the claims that cannot be told apart from the
# flat map's at all. The last block's attention (+0.14) and IG (+0.15) overstate the ruler;
# occlusion (-0.44: one patch at a time, while the rest of the ruler stays in view) misses it
# almost entirely.
#
# The debiased ViT is the case that discriminates: it does not use the ruler (share 0.00) while
# a flat map claims 0.48. Its last block's attention says so (a miss that rounds to 0.00).
# Rollout still gives the ruler 0.21, because it mixes in the earlier blocks, which look
# everywhere, and flow 0.42, nearly the flat map's claim. The clearest false alarm is Grad-CAM
# on tokens: 0.76 of its ruler-plus-lesion mass on a ruler the model does not use, more than a
# flat map would claim. Over both models the smallest mean miss is 0.07 (gradient × input, and
# the last block's attention), then rollout's 0.11; the intervals of single misses are several
# hundredths wide, so differences of a few hundredths do not rank methods. On the debiased ViT
# no map's interval contains the truth; only the intervention could tell which map is right on
# which model.
#
# A common piece of advice reads "for rigorous causal attribution in ViTs, use Attention Rollout
# or apply Grad-CAM to the patch embeddings". Here it fails where it matters: on the model that
# ignores the ruler, rollout overstates the ruler and Grad-CAM on tokens makes the worst claim
# in the table. Neither is causal; the intervention is.

# %% [markdown]
# ## 12. Two architectures, one shortcut?
#
# DermNet saw the same clinic-A images. Section 1 showed both models lose most of their
# melanoma calls when the ruler is removed, but adding a ruler turns far fewer non-melanomas
# into melanomas for the ViT. The interaction between the two players tests one explanation;
# and the Shapley split checks whether each architecture's favourite method reads its own
# model right (Grad-CAM at `layer4` for DermNet, relevance for the ViT).

# %%
dermnet = load_dermnet("shortcut")
_, _, cnn_share = evidence_share(dermnet, x, twins.images, lesion)
cnn_gc = grad_cam(dermnet, x, MEL, "layer4")
compare = {
    "DermNet shortcut": {"ruler share (intervention)": cnn_share.mean(),
                         "Grad-CAM claims": claimed_shares(cnn_gc).mean(),
                         "relevance claims": None,
                         "occlusion claims": claimed_shares(occlusion(dermnet, x, MEL, window=8, stride=8,
                                                                      baseline="mean")).mean()},
    "ViT shortcut": {"ruler share (intervention)": truth["shortcut"].mean(),
                     "Grad-CAM claims": per_image["Grad-CAM, blocks[-1].norm1"]["shortcut"].mean(),
                     "relevance claims": per_image["relevance (Chefer)"]["shortcut"].mean(),
                     "occlusion claims": per_image["occlusion, 8x8 mean colour"]["shortcut"].mean()},
}
print(table(compare, 2, index="model"))
together = {}
for name, model in (("DermNet shortcut", dermnet), ("ViT shortcut", vit_s)):
    sc = coalition_scores(model, x, twins.images, lesion)
    inter = sc["both"] - sc["ruler only"] - sc["lesion only"] + sc["neither"]
    together[name] = {"ruler alone adds": two((sc["ruler only"] - sc["neither"]).mean()),
                      "ruler added to the lesion": two((sc["both"] - sc["lesion only"]).mean()),
                      "lesion alone adds": two((sc["lesion only"] - sc["neither"]).mean()),
                      "interaction": two(inter.mean()),
                      "interaction / total": two(inter.mean() / (sc["both"] - sc["neither"]).mean())}
print(table(together, index="mel logit, mean of 16"))
cross = rank_correlation(per_patch(cnn_gc), per_patch(maps["shortcut"]["relevance (Chefer)"])).mean()
print(f"DermNet's Grad-CAM vs the ViT's relevance, per patch: mean rank correlation {fmt(cross, 2, atol=1e-4)}")
vit_truth = float(truth["shortcut"].mean())
assert float(cnn_share.mean()) > 0.5 and 0.4 < vit_truth < 0.65
assert float(figures["ViT shortcut"]["others -> mel"]) < 0.1
assert float(figures["DermNet shortcut"]["others -> mel"]) > 0.3

# %% [markdown]
# Both architectures found the shortcut, and lean on it to a similar degree: the ruler is a bit
# more than half of the ruler-plus-lesion evidence for DermNet (0.63), about half for the ViT
# (0.53). DermNet's Grad-CAM reads its model's share closely (0.63); on the ViT, the favourite
# class-specific method, relevance, understates it (0.40), and Grad-CAM on tokens more (0.31).
#
# Why are "the ruler's share is about half" and "removing the ruler changes 98% of the calls"
# (section 1) both true? The share says how the ruler and the lesion split the evidence; the 98%
# says how often losing the ruler's part is enough to change the call. A call changes when the
# mel logit falls below another class's, and the ruler's part is about 4 logits (3.9 for the ViT):
# removing either player can change the call.
#
# The interaction $S(\text{both}) - S(\text{ruler only}) - S(\text{lesion only}) + S(\text{neither})$
# asks whether the ruler adds more when the lesion is there. On these melanomas it hardly does for
# the ViT (0.15 logits, 2% of the total effect: the ruler adds 3.83 alone and 3.98 to the lesion),
# and for DermNet it adds less with the lesion (interaction -0.98). So the two models' different
# response to a ruler on *other* classes (section 1: the ViT turns 2% of them into melanomas,
# DermNet 42%) is not explained by an interaction with a melanoma lesion; what a lesion of another
# class does to the ruler's effect is not measured here. The two models' maps agree only
# moderately on where the evidence is (rank correlation 0.40).
#
# The number this notebook adds: on the shortcut ViT, the last block's attention claims about two
# thirds of the ruler-plus-lesion evidence for the ruler, where the intervention says half; on the
# debiased ViT it is right, and rollout and Grad-CAM on tokens raise false alarms.

# %% [markdown]
# ## 13. Pitfalls and limits
#
# - **Is attention explanation? The question is debated.** Jain & Wallace (2019,
#   [arXiv:1902.10186](https://arxiv.org/abs/1902.10186)) argue it is not: other attention weights
#   can give the same prediction. Wiegreffe & Pinter's reply, "Attention is not not Explanation"
#   (2019, [arXiv:1908.04626](https://arxiv.org/abs/1908.04626)), shows that the verdict depends on
#   the test. Attention says how tokens were *mixed*, not how much each mattered to the score: what
#   comes through also depends on the values, the MLPs and everything downstream. Sections 3 and
#   11 measured the gap on this model.
# - **Head averaging.** Heads in one block look at different things (section 3); the mean is a
#   choice, and `head_fusion="max"` or `"min"` moves rollout's masses (section 4).
# - **The residual stream.** Each block adds attention's output to its input; a single block's
#   attention ignores that path, and rollout's $\tfrac12 I$ is an assumption about its weight.
# - **Attention *to* the CLS token vs *from* it.** Row 0 of $A$ (what CLS gathers) is the map;
#   column 0 (who reads CLS) is something else. And `token_map` drops the CLS entry of row 0, the
#   CLS token's weight on itself (the last column of section 3's head table): the map's masses are
#   shares of what is left.
# - **Grad-CAM's layer.** On a CLS-token classifier, the last block's output gives an all-zero map;
#   use the input of the last attention (`blocks[-1].norm1`).
# - **Fused kernels.** A hook on the attention module sees no probabilities; recompute them from
#   `qkv` and prove, block by block, that the recomputation is the model's own (section 2). In
#   Hugging Face `transformers`, `output_attentions=True` returns attentions only from the eager
#   (unfused) attention path: load the model with `attn_implementation="eager"`. With the default
#   SDPA path, depending on the version, the model falls back to eager with a warning or refuses.
# - **Which Chefer et al.?** Two papers share the name. The CVPR 2021 one
#   ([arXiv:2012.09838](https://arxiv.org/abs/2012.09838), the "Transformer-Explainability"
#   repository) weights each attention map's gradient by its LRP relevance; the ICCV 2021 one
#   ([arXiv:2103.15679](https://arxiv.org/abs/2103.15679)), built here, weights it by the attention
#   itself and needs no LRP rules.
# - **Occlusion misses a redundant cue.** Covering one 8×8 patch of a ruler that spans many patches
#   leaves the rest of it in view: the shortcut ViT's occlusion map has almost nothing on the ruler,
#   though the ruler carries real evidence (section 11).
#
# ## 14. Your turn
#
# **Exercise 1.** Write `my_rollout(attentions)`: from a list of $[B, \text{heads}, T, T]$
# tensors, fuse the heads by their mean, add the residual as $\tfrac12 I + \tfrac12 A$, and
# multiply the blocks in order. The checker runs it on hand-made attention and names the usual
# slips (the order of the product, the residual, fusing after the product).

# %%
from helpers.exercises import check_rollout  # noqa: E402


def my_rollout(attentions):
    """Attention rollout (Abnar & Zuidema 2020), [B, T, T], from a list of [B, heads, T, T] tensors:

        A_l = (1/2) I + (1/2) mean_heads(attentions[l]),   rollout = A_L ... A_2 A_1  (blocks 1 .. L)"""
    raise NotImplementedError


check_rollout(my_rollout)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_rollout(attentions):
#     result = None
#     for a in attentions:
#         a_hat = 0.5 * torch.eye(a.shape[-1], dtype=a.dtype) + 0.5 * a.mean(1)
#         result = a_hat if result is None else a_hat @ result   # the later block on the left
#     return result
# ```
# </details>
#
# **Exercise 2.** The debiased ViT was trained where rulers carry no label information. Measure,
# on 16 clinic-A images with a ruler of your own choosing (`make_dataset(..., clinic="A")`, and the
# same seed with `ruler=False` for their twins): does its last block's CLS attention put more mass
# on the ruler than the ruler's share of the image (`attention_maps`, `token_map`, `mask_mass`,
# `mask_share`), and does removing the ruler move its mel logit by one logit or more on average?
# The checker measures both on 16 other ruler images.

# %%
from helpers.exercises import check_debiased_vit_question  # noqa: E402

attends_to_ruler = None  # your answer, True or False: more attention on the ruler than its share?
uses_ruler = None  # your answer, True or False: does removing the ruler move the mel logit by >= 1?
check_debiased_vit_question(attends_to_ruler, uses_ruler)

# %% [markdown]
# ## Summary
#
# - A fused attention kernel never forms the attention probabilities. Recompute them from the
#   `qkv` projection with a hook, leave the model untouched, and prove the recomputation by
#   rebuilding every block's output from it (section 2).
# - Raw attention, rollout and flow are three readings of the same matrices; rollout is one matrix
#   product per block, flow a max-flow per token that here comes out nearly flat. Relevance
#   (Chefer et al.) weights attention by its gradient and is class-specific. Checks: rollout and flow
#   against hand-built cases and networkx, relevance against timm's unfused path, Grad-CAM on tokens
#   against pytorch-grad-cam and torchcam. Grad-CAM needs the layer before the last attention, not
#   the last block's output, whose patch tokens get no gradient.
# - IG and occlusion run on the ViT unchanged through the method contract.
# - Rollout agrees better than raw last-block attention with gradient × input (Abnar & Zuidema's
#   finding, in part: with occlusion they are level, and flow agrees worse than rollout).
# - The intervention, an exact Shapley split between ruler and lesion, is the judge, and the
#   judge needs a control: on the shortcut ViT a flat map's claim lies inside the interval of
#   the truth, so that model cannot separate the methods. The debiased ViT can: there the last
#   block's attention is right, rollout overstates the ruler, and Grad-CAM on tokens claims most
#   of the evidence (0.76) for a ruler the model does not use.
# - A head that looks at the ruler is not, by that, the head that uses it: switching heads off
#   one at a time measures what each does for the score (section 3). Where attention lands is not,
#   by itself, what the model uses.
#
# **Next: 12 · Sanity checks.** If the weights are randomized, does the map change? A method that
# draws the same picture for a trained and a random model explains the image, not the model.
