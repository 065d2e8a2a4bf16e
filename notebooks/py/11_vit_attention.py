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
# **Time to run:** about 45 s on 2 CPU cores.

# %%
import inspect
import time
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
                     "add a ruler: to mel": flips["add"], "nv": flips["add_by_class"]["nv"],
                     "other classes": (flips["pred_on"][others] == MEL).float().mean(),
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
start = time.perf_counter()
theirs = torch.tensor([nx.maximum_flow_value(graph, (4, 0), (0, j)) for j in some], dtype=torch.float64)
t_nx = (time.perf_counter() - start) / len(some)
start = time.perf_counter()
flow_one = attention_flow([a[one:one + 1] for a in att_s])[0]
t_flow = time.perf_counter() - start
start = time.perf_counter()
rollout([a[one:one + 1] for a in att_s])
t_roll = time.perf_counter() - start
_ = agree("attention_flow vs networkx max-flow, 5 tokens", flow_one[some], theirs, atol=1e-7)
print(f"one image: rollout {t_roll * 1e3:.1f} ms; flow {t_flow:.2f} s with SciPy, "
      f"about {t_nx * 65:.0f} s with networkx (timings vary by machine)")

# %% [markdown]
# Flow is about a hundred times dearer than rollout per image with a fast solver, and thousands
# of times with networkx, and it buys little here: with the residual in every block, each input
# token can push nearly a full unit of flow to the top, so the flows come out nearly uniform
# (section 9 measures it). Rollout is what people use because it is one matrix product per block.
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
rel_nv = relevance(vit_s, x, CLASSES.index("nv"))
print(f"class-specific: the mel and nv maps differ by up to {fmt((rel_s - rel_nv).abs().max(), 1)} "
      f"(rollout's map is the same for every class)")
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
for method in ("attention, last block", "rollout", "relevance (Chefer)"):
    assert m[method]["debiased: ruler"] < m[method]["shortcut: ruler"]
viz.attribution_grid(x[:3], {k: maps["shortcut"][k][:3] for k in ("attention, last block", "rollout",
                                                                  "relevance (Chefer)", "occlusion, 8x8 mean colour")},
                     signed=None)
plt.show()

# %% [markdown]
# Read down the shortcut columns. The first block's CLS attention favours the lesion; the last
# block's is on the ruler, at more than three times the ruler's share of the image. Rollout,
# which multiplies all the blocks, spreads its mass more evenly. Flow is flat: its masses are the
# areas of the ruler and the lesion, because with the residual in every block each input token
# can push nearly a full unit of flow to the top, so every token gets about the same. Relevance,
# the class-specific rule, puts more of its mass on the lesion than on the ruler. Occlusion, one
# patch at a time, finds little on the ruler. For the debiased ViT the last block's attention is
# on the lesion and nowhere else, and every attention method's ruler mass falls.

# %% [markdown]
# ## 10. Which map agrees with the perturbation and gradient views?
#
# Abnar & Zuidema's own test: across the input tokens, rank-correlate each attention map with a
# perturbation measure (occlusion) and with input-gradient importance. Everything is compared at
# the level of the 64 patches (each map summed in magnitude over a patch), because attention has
# nothing finer.

# %%
def per_patch(a):
    return F.avg_pool2d(a.abs().sum(1, keepdim=True), 8).flatten(1)  # [B, 64]


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
# per patch, a swap of two near-tied patches moves one image's correlation by 12 / (64 (64^2 - 1)),
# about 5e-5: a margin of 1e-4 covers two such swaps (pixel-level correlations need 1e-3). One mean
# here lies within that margin of a rounding boundary at 2 decimals, so the table shows 1.
print(table(agreement, 1, index="mean rank correlation", atol=1e-4))
for name in ("shortcut", "debiased"):
    roll, last = agreement["rollout"], agreement["attention, last block"]
    assert roll[f"{name}: vs grad x input"] > last[f"{name}: vs grad x input"] + 0.15
    assert abs(roll[f"{name}: vs occlusion"] - last[f"{name}: vs occlusion"]) < 0.05
    assert max(float(v) for v in agreement["Grad-CAM, blocks[-1].norm1"].values()) < 0.2
assert agreement["Grad-CAM, blocks[-1].norm1"]["debiased: vs grad x input"] < -0.2

# %% [markdown]
# Abnar & Zuidema's finding holds in part: rollout agrees much better than the last block's raw
# attention with gradient × input, on both models, but with occlusion the two are level, and
# neither agrees with it well. Grad-CAM on tokens agrees with nothing (on the debiased model it
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
def evidence_share(model, x, twins_x, lesion_mask):
    paint = mean_baseline(x)
    inside = lesion_mask[:, None]
    with torch.no_grad():
        both, lesion_only = model(x)[:, MEL], model(twins_x)[:, MEL]
        ruler_only = model(torch.where(inside, paint, x))[:, MEL]
        neither = model(torch.where(inside, paint, twins_x))[:, MEL]
    phi_r = 0.5 * ((both - lesion_only) + (ruler_only - neither))
    phi_l = 0.5 * ((both - ruler_only) + (lesion_only - neither))
    return phi_r, phi_l


def claimed_share(a):
    on_ruler, on_lesion = mask_mass(a, ruler[:len(a)]), mask_mass(a, lesion[:len(a)])
    return (on_ruler / (on_ruler + on_lesion)).mean()


verdict = {}
for name, model in (("shortcut", vit_s), ("debiased", vit_d)):
    phi_r, phi_l = evidence_share(model, x, twins.images, lesion)
    truth = (phi_r.clamp_min(0) / (phi_r.clamp_min(0) + phi_l.clamp_min(0))).mean()
    verdict[name] = {"phi ruler (logits)": phi_r.mean(), "phi lesion (logits)": phi_l.mean(), "ruler share": truth}
print(table(verdict, 2, index="intervention (mean of 16)"))
claims = {method: {f"{name}: claimed ruler share": claimed_share(maps[name][method]) for name in maps}
          for method in maps["shortcut"]}
claims = {m: row | {"shortcut: miss": row["shortcut: claimed ruler share"] - verdict["shortcut"]["ruler share"]}
          for m, row in claims.items()}
print(table(claims, 2, index="ruler / (ruler + lesion)"))
uniform = (share_r / (share_r + share_l)).item()  # what a map that is the same everywhere claims
print(f"a uniform map would claim {fmt(uniform, 2)}: the ruler's and the lesion's areas")
miss = {k: abs(float(row["shortcut: miss"])) for k, row in claims.items()}
close = [k for k in miss if miss[k] < 0.05]
assert all(miss[k] > 0.1 for k in miss if k not in close)  # no method near the 0.05 line
print(f"within 0.05 of the intervention on the shortcut ViT: {', '.join(close)}")
truth_s = float(verdict["shortcut"]["ruler share"])
last_claim = float(claims["attention, last block"]["shortcut: claimed ruler share"])
assert "rollout" in close and "attention, last block" not in close and last_claim > truth_s + 0.1
assert float(verdict["debiased"]["ruler share"]) < 0.02
assert float(claims["attention, last block"]["debiased: claimed ruler share"]) < 0.02
assert float(claims["rollout"]["debiased: claimed ruler share"]) > 0.15

# %% [markdown]
# The intervention answers the question the attention maps raised. For the shortcut ViT the
# ruler and the lesion carry about equal evidence: about half each. The last block's attention
# claims about two thirds for the ruler, an overstatement; rollout's claim matches the
# intervention. Two others land close too, for reasons to distrust: flow, because it is flat (a
# uniform map claims about the same), and gradient × input. Relevance and Grad-CAM understate
# the ruler, and occlusion (one patch at a time, while the rest of the ruler stays in view)
# misses it almost entirely.
#
# The debiased ViT turns the verdict around. It does not use the ruler at all, and its last
# block's attention says exactly that: nothing on the ruler. Rollout, there, still gives the
# ruler a fifth of the claim, because it mixes in the earlier blocks, which look everywhere.
# No attention map is right on both models; only the intervention could tell which is right
# on which.

# %% [markdown]
# ## 12. Two architectures, one shortcut?
#
# DermNet saw the same clinic-A images. Section 1 showed both models lose most of their
# melanoma calls when the ruler is removed, but adding a ruler turns far fewer non-melanomas
# into melanomas for the ViT. The Shapley split says why, and whether each architecture's
# favourite method reads its own model right (Grad-CAM at `layer4` for DermNet, relevance for the ViT).

# %%
dermnet = load_dermnet("shortcut")
phi_r, phi_l = evidence_share(dermnet, x, twins.images, lesion)
cnn_truth = (phi_r.clamp_min(0) / (phi_r.clamp_min(0) + phi_l.clamp_min(0))).mean()
cnn_gc = grad_cam(dermnet, x, MEL, "layer4")
compare = {
    "DermNet shortcut": {"ruler share (intervention)": cnn_truth, "Grad-CAM claims": claimed_share(cnn_gc),
                         "occlusion claims": claimed_share(occlusion(dermnet, x, MEL, window=8, stride=8,
                                                                    baseline="mean"))},
    "ViT shortcut": {"ruler share (intervention)": verdict["shortcut"]["ruler share"],
                     "Grad-CAM claims": claims["Grad-CAM, blocks[-1].norm1"]["shortcut: claimed ruler share"],
                     "occlusion claims": claims["occlusion, 8x8 mean colour"]["shortcut: claimed ruler share"]},
}
print(table(compare, 2, index="model"))
cross = rank_correlation(per_patch(cnn_gc), per_patch(maps["shortcut"]["relevance (Chefer)"])).mean()
print(f"DermNet's Grad-CAM vs the ViT's relevance, per patch: mean rank correlation {fmt(cross, 2, atol=1e-4)}")
vit_truth = float(verdict["shortcut"]["ruler share"])
assert float(cnn_truth) > 0.5 and 0.4 < vit_truth < 0.65
assert abs(float(compare["DermNet shortcut"]["Grad-CAM claims"]) - float(cnn_truth)) < 0.05
assert float(compare["ViT shortcut"]["Grad-CAM claims"]) < vit_truth - 0.1
assert float(figures["ViT shortcut"]["other classes"]) < 0.1
assert float(figures["DermNet shortcut"]["other classes"]) > 0.3

# %% [markdown]
# Both architectures found the shortcut, and lean on it to a similar degree: the ruler is a bit
# more than half of the ruler-plus-lesion evidence for DermNet, about half for the ViT. DermNet's
# Grad-CAM reads its model's share closely; on the ViT, Grad-CAM on tokens understates it, and
# rollout (section 11) is the method that reads it. They use the ruler differently, though, as
# section 1 showed: adding a ruler turns nearly every nevus (melanoma's look-alike) into a
# melanoma for both, but the ViT rarely flips any other class, where DermNet flips many. The ViT
# uses the ruler *together with* a melanoma-like lesion; DermNet adds the ruler's evidence
# whatever the lesion. The two models' maps agree only moderately on where the evidence is.
#
# The number this notebook adds: on the shortcut ViT, the last block's attention claims about two
# thirds of the ruler-plus-lesion evidence for the ruler; the intervention and rollout say half.
# On the debiased ViT it is the other way round.

# %% [markdown]
# ## 13. Pitfalls and limits
#
# - **Attention is not explanation** (Jain & Wallace 2019, [arXiv:1902.10186](https://arxiv.org/abs/1902.10186);
#   Wiegreffe & Pinter 2019, [arXiv:1908.04626](https://arxiv.org/abs/1908.04626)). Attention says
#   how tokens were *mixed*, not how much each mattered to the score: what comes through also
#   depends on the values, the MLPs and everything downstream. Section 11 measured the gap.
# - **Head averaging.** Heads in one block look at different things (section 3); the mean is a
#   choice, and `head_fusion="max"` or `"min"` gives other maps.
# - **The residual stream.** Each block adds attention's output to its input; a single block's
#   attention ignores that path, and rollout's $\tfrac12 I$ is an assumption about its weight.
# - **Attention *to* the CLS token vs *from* it.** Row 0 of $A$ (what CLS gathers) is the map;
#   column 0 (who reads CLS) is something else. And `token_map` drops the CLS entry of row 0,
#   which is often large: the CLS token attends to itself.
# - **Grad-CAM's layer.** On a CLS-token classifier, the last block's output gives an all-zero map;
#   use the input of the last attention (`blocks[-1].norm1`).
# - **Fused kernels.** A hook on the attention module sees no probabilities; recompute them from
#   `qkv` and prove, block by block, that the recomputation is the model's own (section 2).
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
# **Exercise 2.** The debiased ViT was trained where rulers carry no label information. Look at
# its rows in the tables of sections 9 and 11, then answer: does its last-block attention land on
# the ruler more than the ruler's share of the image, and does its decision use the ruler? The
# checker measures both on 16 *other* ruler images.

# %%
from helpers.exercises import check_debiased_vit_question  # noqa: E402

attends_to_ruler = True  # more attention mass on the ruler than the ruler's share of the image?
uses_ruler = True  # does removing the ruler change its melanoma score by a logit or more, on average?
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
#   finding, in part: with occlusion they are level). The intervention, an exact Shapley split
#   between ruler and lesion, is the judge: on the shortcut ViT rollout reads the ruler's share
#   and the last block overstates it; on the debiased ViT the last block is right and rollout
#   overstates. Where attention lands is not, by itself, what the model uses.
#
# **Next: 12 · Sanity checks.** If the weights are randomized, does the map change? A method that
# draws the same picture for a trained and a random model explains the image, not the model.
