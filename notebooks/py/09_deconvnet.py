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
# # 09 · Deconvnets: projecting a unit back to pixels
#
# **The question.** Notebook 08 found the real images and positions where DermNet's melanoma
# channels fire most. Which *pixels* of such an image made the unit fire? Zeiler & Fergus (2014,
# [arXiv:1311.2901](https://arxiv.org/abs/1311.2901)) answered with a **deconvnet**: keep one
# activation, zero the rest of its layer, and send it back down the network, undoing each layer in
# turn. It is a close relative of the gradient map (Simonyan et al., published the same winter),
# and the simplest place to see where the pictures of backpropagation maps come from.
#
# **After this notebook you will be able to**
# - say how saliency, guided backprop and the deconvnet differ: only in what a ReLU passes back;
# - compute the deconvnet with `helpers.deconv.deconvnet` and check it against Captum;
# - build Zeiler & Fergus's projection by hand (unpooling with switches, rectification,
#   transposed convolutions) and say when it equals autograd's;
# - write a convolution as a matrix $W$ and its transpose as $W^\top$, and say why $W^\top$ is not
#   an inverse;
# - test whether a projection says more than where its unit peaked;
# - write a transposed convolution, show it is the gradient of a convolution, and explain
#   checkerboard artifacts and the pixel-shuffle alternative;
# - measure whether a map tells the classes apart.
#
# **Time to run:** about 20 s on 2 CPU cores.

# %%
import inspect
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution, GuidedBackprop, NeuronDeconvolution, Saliency
from torch import nn

from helpers import deconv, viz
from helpers.cam import grad_cam
from helpers.data import CLASSES, MEL, make_dataset
from helpers.deconv import (RULES, conv_transpose2d, deconvnet, relu_backward, rule_backprop, unit_projection,
                            zeiler_fergus)
from helpers.featurevis import top_activating
from helpers.hooks import capture, count_hooks
from helpers.evaluation import bootstrap_ci
from helpers.metrics import edge_strength, mask_mass, mask_share, rank_correlation
from helpers.models import load_dermnet
from helpers.report import agree, fmt, table
from helpers.train import TEST_SEEDS

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")  # Captum, expected
warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")  # Captum, expected
torch.manual_seed(0)
shortcut, debiased = load_dermnet("shortcut"), load_dermnet("debiased")
test_a = make_dataset(2000, clinic="A", seed=TEST_SEEDS["A"])  # held-out clinic A
test_b = make_dataset(1000, clinic="B", seed=TEST_SEEDS["B"])  # held-out clinic B: rulers independent of class
print(f"{len(test_a)} clinic-A and {len(test_b)} clinic-B held-out images")

# %% [markdown]
# ## 1. Three backward rules
#
# Every backpropagation map in the course is one backward pass from a score to the pixels. Linear
# layers (a convolution, BatchNorm in eval mode, the routing of a max-pool) are passed back
# through their transposes, the same in all methods. They differ only at the ReLUs. With $h$ the
# ReLU's forward input and $R$ the signal arriving from above:
#
# | rule | what the ReLU passes back | paper |
# |---|---|---|
# | gradient (saliency) | $R \cdot [h > 0]$ | Simonyan et al. 2014 |
# | guided backprop | $\max(R, 0) \cdot [h > 0]$ | Springenberg et al. 2015, [arXiv](https://arxiv.org/abs/1412.6806) |
# | deconvnet | $\max(R, 0)$ | Zeiler & Fergus 2014, [arXiv](https://arxiv.org/abs/1311.2901) |
#
# The gradient keeps the forward mask; the deconvnet keeps the sign rule and throws the forward
# mask away; guided backprop keeps both. `helpers.deconv.relu_backward` is the whole difference:

# %%
print(inspect.getsource(relu_backward))
h = torch.tensor([-1.0, 2.0, 3.0, -4.0])
signal = torch.tensor([1.0, -1.0, 2.0, -3.0])
rows = {"forward input h": dict(enumerate(h.tolist())), "signal R from above": dict(enumerate(signal.tolist()))}
rows |= {f"passed back: {rule}": dict(enumerate(relu_backward(rule, h, signal).tolist())) for rule in RULES}
print(table({k: {f"unit {i}": v for i, v in r.items()} for k, r in rows.items()}, 1))

# %% [markdown]
# Unit 0 shows the deconvnet's peculiarity: its ReLU was off in the forward pass, yet the
# deconvnet passes the positive signal through. On DermNet, the three rules for the melanoma score
# of three clinic-A melanomas with a ruler (magnitudes, summed over colour channels):

# %%
pick = torch.nonzero((test_a.labels == MEL) & test_a.has_ruler)[:3, 0]
xs = test_a.images[pick]
maps = {rule: rule_backprop(shortcut, xs, MEL, rule).abs().sum(1, keepdim=True) for rule in RULES}
fig = viz.attribution_grid(xs, maps, row_titles=[f"mel, image {int(i)}" for i in pick])
plt.show()

# %% [markdown]
# The three maps of one backward pass look nothing alike. The gradient is grainy but shows the
# lesion and the ruler; guided backprop draws them sharply. The deconvnet covers the whole frame
# with a regular grain in which neither stands out. Over 32 such images, the share of each map's
# magnitude on the lesion and on the ruler, next to their share of the image (what a uniform map
# would score):

# %%
ruler_mel = torch.nonzero((test_a.labels == MEL) & test_a.has_ruler)[:32, 0]
x_rm, masks_rm = test_a.images[ruler_mel], {k: v[ruler_mel] for k, v in test_a.masks.items()}
spread = {}
for rule in RULES:
    m = rule_backprop(shortcut, x_rm, MEL, rule)
    spread[rule] = {"lesion mass": mask_mass(m, masks_rm["lesion"]).mean(),
                    "ruler mass": mask_mass(m, masks_rm["ruler"]).mean()}
spread["(uniform map)"] = {"lesion mass": mask_share(masks_rm["lesion"]).mean(),
                           "ruler mass": mask_share(masks_rm["ruler"]).mean()}
uniform = spread["(uniform map)"]
for rule in RULES:  # how many times a uniform map's share
    spread[rule] |= {"lesion / uniform": spread[rule]["lesion mass"] / uniform["lesion mass"],
                     "ruler / uniform": spread[rule]["ruler mass"] / uniform["ruler mass"]}
print(table(spread, {"lesion mass": 2, "ruler mass": 2, "lesion / uniform": 1, "ruler / uniform": 1},
            index="shortcut, mel score, 32 images"))
for rule in ("gradient", "guided"):
    assert float(spread[rule]["lesion mass"]) > 1.5 * float(uniform["lesion mass"])
    assert float(spread[rule]["ruler mass"]) > 1.5 * float(uniform["ruler mass"])
assert float(spread["deconvnet"]["lesion mass"]) < 1.4 * float(uniform["lesion mass"])
assert float(spread["deconvnet"]["ruler mass"]) < float(uniform["ruler mass"])

# %% [markdown]
# The last two columns divide by the uniform map's share. The gradient puts 2.0 times a uniform
# map's share on the lesion and 1.7 times on the ruler; guided backprop 2.3 times on both. The
# deconvnet's map of the class score is spread almost evenly: 1.3 times on the lesion, 0.8 times
# (less than a uniform map) on the ruler, although this model's melanoma score rests on the ruler. With no
# forward mask at the ReLUs it has little of the image to work from (section 3 says exactly what).
#
# ## 2. Check against Captum
#
# Captum's `Deconvolution`, `GuidedBackprop` and `Saliency` attach the same rules to every
# `nn.ReLU` module (as `helpers.deconv.relu_rule` does). Same model, same images, same targets:

# %%
x8, t8 = test_a.images[:8], test_a.labels[:8]
_ = agree("deconvnet vs Captum Deconvolution", deconvnet(shortcut, x8, t8),
          Deconvolution(shortcut).attribute(x8.clone(), target=t8), atol=1e-6)
_ = agree("guided rule vs Captum GuidedBackprop", rule_backprop(shortcut, x8, t8, "guided"),
          GuidedBackprop(shortcut).attribute(x8.clone(), target=t8), atol=1e-6)
_ = agree("gradient rule vs Captum Saliency(abs=False)", rule_backprop(shortcut, x8, t8, "gradient"),
          Saliency(shortcut).attribute(x8.clone(), target=t8, abs=False), atol=1e-6)
print(f"hooks left on DermNet: {count_hooks(shortcut)}")

# %% [markdown]
# Exact: the same arithmetic in the same order. (`helpers.cam.guided_backprop` from notebook 04
# is `rule_backprop(..., "guided")`.)
#
# ## 3. Zeiler & Fergus by hand: switches, rectification, transposed filters
#
# Zeiler & Fergus did not think of their method as a modified gradient. They attached to each
# layer a "deconvolutional" layer that undoes it approximately, and ran the stack downwards from
# one unit:
#
# 1. **unpool**: a max-pool forgets where each window's maximum was; the forward pass records it
#    (the **switches**), and unpooling puts each value back at its switch, zeros elsewhere;
# 2. **rectify**: pass the signal through a ReLU, so it stays positive like a feature map;
# 3. **filter**: apply the layer's own filters transposed (a transposed convolution with the
#    forward weights; section 4).
#
# Switches on a 4×4 example, pooled 2×2:

# %%
a = torch.tensor([[1.0, 5, 2, 0], [3, 2, 8, 1], [0, 4, 1, 1], [7, 1, 3, 6]])[None, None]
pooled, switches = F.max_pool2d(a, 2, return_indices=True)
print("pooled:\n", pooled[0, 0].int().tolist(), "\nswitches (flat positions in the 4x4 input):\n",
      switches[0, 0].tolist())
print("unpooled:\n", F.max_unpool2d(pooled, switches, 2)[0, 0].int().tolist())

# %% [markdown]
# `zeiler_fergus` builds the deconvnet this way for DermNet: a forward pass records only the
# switches of DermNet's one max-pool, then the signal goes down layer by layer. A residual block
# sends the signal down both branches and adds them; BatchNorm in eval mode is a per-channel scale
# (its shift, like every bias, plays no part); the input normalization becomes a division by the
# std. The heart of it:

# %%
print(inspect.getsource(deconv._down))

# %% [markdown]
# Take the top activation that notebook 08's dataset search found for the shortcut model's
# strongest melanoma channel (ranked by fc weight × mean activation on clinic-A melanomas), and
# project it by hand, and by autograd with the deconvnet rule (`unit_projection`, which starts the
# backward pass from the activation itself, as Zeiler & Fergus do, instead of from 1):

# %%
mel_a = test_a.images[test_a.labels == MEL]


def top_mel_channels(model, k=3):
    """layer4 channels ranked by what they give the mel logit on clinic-A melanomas (notebook 08)."""
    with capture(model, "layer4") as rec, torch.no_grad():
        model(mel_a)
    ranked = (model.fc.weight[MEL].detach() * rec.activation.mean((0, 2, 3))).sort(descending=True)
    assert ranked.values[k - 1] - ranked.values[k] > 1e-3  # the top k are not a near-tie
    return ranked.indices[:k].tolist()


channels = {"shortcut": top_mel_channels(shortcut), "debiased": top_mel_channels(debiased)}
c0 = channels["shortcut"][0]
idx, ys, xs_, value = top_activating(shortcut, "layer4", c0, test_b.images, k=2)
assert value[0] - value[1] > 1e-3  # the top image is not a near-tie
img = test_b.images[idx[:1]]
by_hand = zeiler_fergus(shortcut, img, "layer4", c0, ys[:1], xs_[:1])
by_autograd = unit_projection(shortcut, img, "layer4", c0, ys[:1], xs_[:1])
print(f"shortcut layer4 channel {c0}: its top clinic-B image is #{int(idx[0])}, peak at cell "
      f"({int(ys[0])}, {int(xs_[0])}) of the 8x8 grid")
_ = agree("by hand vs autograd's deconvnet rule", by_hand, by_autograd, atol=1e-4)
theirs = NeuronDeconvolution(shortcut, shortcut.layer4).attribute(img.clone(), neuron_selector=(c0, int(ys[0]),
                                                                                                 int(xs_[0])))
with torch.no_grad():
    activation = shortcut.features(img)[0, c0, ys[0], xs_[0]]
_ = agree("by hand vs activation x Captum NeuronDeconvolution", by_hand, activation * theirs, atol=1e-4)
fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.7))
viz.show_image(img[0], ax=axes[0], title=f"top image, channel {c0}")
viz.overlay(img[0], by_hand[0], ax=axes[1], signed=False, title="by hand (switches)")
viz.overlay(img[0], by_autograd[0], ax=axes[2], signed=False, title="autograd, deconvnet rule")
plt.tight_layout()
plt.show()

# %% [markdown]
# The two agree to float round-off (the same sums in another order). They coincide under
# conditions worth stating, each checked below:
#
# 1. **Eval mode.** BatchNorm is then a fixed per-channel affine map, whose transpose is a scale. In
#    training mode its batch statistics tie the images together and its backward pass has extra
#    terms; the course's helpers refuse a model in training mode.
# 2. **Every ReLU is an `nn.ReLU` module, used once.** A backward rule can be attached to a
#    module, not to a `torch.relu` call inside a `forward`. There autograd keeps the plain
#    gradient rule, silently, in Captum as in ours, while the hand-built deconvnet rectifies.
# 3. **Unpooling adds where windows overlap.** With overlapping windows (a 3×3, stride-2 max-pool,
#    as in torchvision's ResNets) two windows can pick the same pixel. The transpose of pooling,
#    which autograd computes, adds both values there; `F.max_unpool2d` writes only one.
#    DermNet's 2×2 pooling never overlaps; `zeiler_fergus` adds where windows overlap.
# 4. **The same starting signal.** A gradient starts from 1, Zeiler & Fergus from the activation:
#    the two differ by that factor (above: Captum's `NeuronDeconvolution` times the activation).
#
# Conditions 1 to 3, computed. First, a model left in training mode is refused before anything
# runs, and nothing of the model changes:

# %%
before = {k: v.clone() for k, v in shortcut.state_dict().items()}
shortcut.train()
try:
    deconvnet(shortcut, x8, t8)
except ValueError as err:
    print("helpers.deconv.deconvnet:", err)
finally:
    shortcut.eval()
unchanged = all(torch.equal(v, shortcut.state_dict()[k]) for k, v in before.items())
print(f"back in eval mode: {not shortcut.training}; weights and BatchNorm statistics unchanged: {unchanged}")


# %%
class FunctionalReLU(nn.Module):
    """conv -> torch.relu (a call, not a module) -> average -> linear."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


torch.manual_seed(0)
functional = FunctionalReLU().eval()
x_small = torch.rand(2, 3, 16, 16)
_ = agree("Captum Deconvolution vs the plain gradient, on a model with a functional relu",
          Deconvolution(functional).attribute(x_small.clone(), target=1),
          Saliency(functional).attribute(x_small.clone(), target=1, abs=False), atol=0)
try:
    deconvnet(functional, x_small, 1)
except ValueError as err:
    print("helpers.deconv.deconvnet:", err)

one_peak = torch.zeros(1, 1, 5, 5)
one_peak[0, 0, 2, 2] = 1.0  # the maximum of all four overlapping 3x3 windows (stride 2)
xg = one_peak.clone().requires_grad_(True)
pooled, switches = F.max_pool2d(xg, 3, 2, return_indices=True)
(grad,) = torch.autograd.grad(pooled.sum(), xg)
written = F.max_unpool2d(torch.ones_like(pooled), switches, 3, 2, output_size=(5, 5))
print(f"3x3 windows, stride 2, four windows share the centre: autograd passes back {grad[0, 0, 2, 2]:.0f} "
      f"there, max_unpool2d writes {written[0, 0, 2, 2]:.0f}")

# %% [markdown]
# In training mode BatchNorm would normalize by the batch's own statistics (and update its running
# ones), so the helpers refuse rather than return a different map. Captum's `Deconvolution` on a
# model whose only ReLU is a function call returns the plain
# gradient, with no warning; ours refuses a model with no `nn.ReLU` to override. And a pixel that
# wins four overlapping windows receives four contributions from autograd and one from
# `max_unpool2d`.
#
# Zeiler & Fergus's construction also says what a deconvnet map can know about the image. The
# forward pass records the switches and nothing else: below the top unit, the image enters the
# projection **only** through where each pooling window's maximum was. DermNet has one max-pool,
# in its stem, so a deconvnet map of DermNet is a fixed downward network, steered by one layer of
# switches. Section 5 measures what that means for explaining a class.
#
# ## 4. Transposed convolution
#
# A convolution is a linear map, so it is a matrix. In one dimension first: 8 inputs padded with
# 2 zeros at each end (12 entries), a filter of size $f = 4$, stride $s = 2$. The output has
# $(12 - 4)/2 + 1 = 5$ entries, and $y = W x$ with a $5 \times 12$ matrix $W$ whose rows are the
# filter, shifted by the stride. Take the edge filter $(-1, 0, 0, 1)$:

# %%
w1 = torch.tensor([-1.0, 0, 0, 1], dtype=torch.float64)
n_x, f, s1 = 12, 4, 2
n_y = (n_x - f) // s1 + 1
W = torch.zeros(n_y, n_x, dtype=torch.float64)
for i in range(n_y):
    W[i, i * s1:i * s1 + f] = w1  # row i: the filter, shifted by i strides
print(f"W ({n_y}x{n_x}):\n" + "\n".join(" ".join(f"{int(v):2d}" for v in row) for row in W))
g1 = torch.Generator().manual_seed(0)
x1 = F.pad(torch.randn(8, generator=g1, dtype=torch.float64), (2, 2))  # 8 inputs, 2 zeros at each end
y1 = W @ x1
_ = agree("W x vs F.conv1d(x, w, stride 2)", y1, F.conv1d(x1[None, None], w1[None, None], stride=2)[0, 0],
          atol=1e-12)
_ = agree("W^T y vs F.conv_transpose1d(y, w, stride 2)", W.T @ y1,
          F.conv_transpose1d(y1[None, None], w1[None, None], stride=2)[0, 0], atol=1e-12)
spaced = torch.zeros((n_y - 1) * s1 + 1, dtype=torch.float64)
spaced[::s1] = y1  # s - 1 = 1 zero between the entries of y
zero_inserted = F.pad(spaced, (f - 1, f - 1))  # and f - 1 = 3 zeros at each end: 15 entries
_ = agree("zero insertion + the flipped filter (w4, w3, w2, w1) vs W^T y",
          F.conv1d(zero_inserted[None, None], w1.flip(0)[None, None])[0, 0], W.T @ y1, atol=1e-12)

# %% [markdown]
# So the **transposed convolution** is $W^\top$, and it is itself a convolution: insert $s - 1$
# zeros between the entries of $y$, pad with $f - 1$ zeros, and slide the *flipped* filter over it.
# That is why exercise 1's checker knows the "flipped kernel" slip.
#
# $W^\top$ undoes $W$ only if $W^\top W = I$. It is sometimes said that with this edge filter $W$ is
# orthogonal and back-projection is exact. Its *rows* are orthogonal, but $W$ has 12 columns and
# only 5 rows, so it cannot be: measured on the random $x$ above, and, as a control, on an $x$ made
# to lie in the span of $W$'s rows ($x = W^\top v$), where the back-projection must be exact:

# %%
print("W W^T =", (W @ W.T).int().tolist())
print(f"rank of W: {int(torch.linalg.matrix_rank(W))}, of {n_x} columns: W^T W cannot be the identity")
in_rows = W.T @ torch.randn(n_y, generator=g1, dtype=torch.float64)
print(table({"x: 8 random inputs, padded": {"|W^T W x / 2 - x| / |x|": (W.T @ (W @ x1) / 2 - x1).norm() / x1.norm()},
             "x = W^T v (in the row space)": {"|W^T W x / 2 - x| / |x|":
                                              (W.T @ (W @ in_rows) / 2 - in_rows).norm() / in_rows.norm()}},
            2, index="back-projection W^T y / 2"))

# %% [markdown]
# $W W^\top = 2I$, yet $W^\top y / 2$ misses a random $x$ by most of its length: five numbers cannot
# hold twelve. The claim of exactness is false; back-projection returns only the part of $x$ that
# $W$ can see, exact for an $x$ already in that part. A deconvnet's "filter" step is this $W^\top$,
# never an inverse.
#
# **Two meanings of "sub-pixel convolution".** Some texts give that name to the zero insertion
# above (a convolution at stride $1/s$, between the pixels); Shi et al. (2016) give it to the
# pixel-shuffle layer later in this section. They are one linear map arranged two ways: the even
# outputs of $W^\top y$ use only the filter's even taps, the odd outputs only its odd taps, so the
# transposed convolution is $s$ stride-1 convolutions of $y$, interleaved, which is what pixel
# shuffle computes:

# %%
phases = [F.conv_transpose1d(y1[None, None], w1[p::s1][None, None])[0, 0] for p in range(s1)]
_ = agree("W^T y vs two stride-1 convolutions (even taps, odd taps), interleaved", W.T @ y1,
          torch.stack(phases, 1).flatten(), atol=1e-12)

# %% [markdown]
# In two dimensions the same holds: each input pixel spreads a copy of the kernel, weighted by its
# value, over a $k \times k$ patch of the output, at $s$ times its position, and overlapping
# copies add up. By hand, one strided slice per kernel offset:

# %%
print(inspect.getsource(conv_transpose2d).split('"""')[2].strip())
g = torch.Generator().manual_seed(0)
y_small, w_small = torch.randn(2, 5, 7, 7, generator=g), torch.randn(5, 4, 3, 3, generator=g)
for stride, padding, out_pad in ((1, 0, 0), (2, 1, 1), (3, 1, 0)):
    _ = agree(f"conv_transpose2d by hand vs F.conv_transpose2d, stride {stride}, padding {padding}",
              conv_transpose2d(y_small, w_small, stride, padding, out_pad),
              F.conv_transpose2d(y_small, w_small, None, stride, padding, out_pad), atol=1e-5)

# %% [markdown]
# It is called the transpose because it is one: written as a matrix acting on the flattened
# image, a convolution is a sparse matrix $C$, and `conv_transpose2d` with the same weights is
# $C^\top$. So it is also the **gradient** of the convolution: for $z = C x$,
# $\partial L / \partial x = C^\top \, \partial L / \partial z$. That is why every backward pass
# in this course, and the deconvnet's "filter" step, is a transposed convolution. With autograd:

# %%
xc = torch.randn(2, 4, 9, 9, generator=g).requires_grad_(True)
wc = torch.randn(5, 4, 3, 3, generator=g)
z = F.conv2d(xc, wc, stride=2, padding=1)
upstream = torch.randn(z.shape, generator=g)
(grad_x,) = torch.autograd.grad(z, xc, upstream)
_ = agree("autograd's d<upstream, conv(x)>/dx vs conv_transpose2d(upstream, same weights)", grad_x,
          conv_transpose2d(upstream, wc, stride=2, padding=1), atol=1e-5)

# %% [markdown]
# **Checkerboards** (Odena et al. 2016, [distill.pub/2016/deconv-checkerboard](https://distill.pub/2016/deconv-checkerboard/)).
# When the kernel size is not a multiple of the stride, the copies overlap unevenly: with $k = 3$,
# $s = 2$, some output pixels receive one copy, some two, some four. Count them by spreading a
# constant input with an all-ones kernel, and read the counts in the interior by their position
# modulo 2 (the pattern repeats every 2 pixels):

# %%
def phase_means(out):
    """The interior's mean value at each position modulo 2, [[even-even, even-odd], [odd-even, odd-odd]]."""
    inner = out[..., 4:-4, 4:-4]
    return torch.tensor([[inner[..., a::2, b::2].mean() for b in (0, 1)] for a in (0, 1)])


ones = torch.ones(1, 1, 12, 12)
for k in (3, 4):
    counts = conv_transpose2d(ones, torch.ones(1, 1, k, k), stride=2)
    print(f"kernel {k}, stride 2: copies received, by position modulo 2: {phase_means(counts).int().tolist()}")

# %% [markdown]
# With $k = 3$ the counts form a 4-2-2-1 checkerboard; with $k = 4$ every pixel receives four.
# Learned kernels make it worse or better; a layer can cancel the pattern only by learning
# weights that do so. Two ways out: **resize, then convolve** (Odena et al.), and **sub-pixel
# convolution** (Shi et al. 2016): a stride-1 convolution makes $s^2$ channels per output channel,
# and `F.pixel_shuffle` interleaves them into an $s\times$ larger image. Each output pixel then
# comes from exactly one kernel. Its own checkerboard is the $s^2$ sub-kernels differing; an
# initialization that starts them equal (ICNR, Aitken et al. 2017) removes it. The same constant
# input through random kernels (8 input channels, 3 output channels, 20 random draws); the figure
# is the spread of the four phase means relative to their mean, so 0 means no checkerboard:

# %%
def checkerboard(make, draws=20):
    """Mean over random draws of std / mean of the four phase means, for a constant input."""
    spread = []
    for seed in range(draws):
        gen = torch.Generator().manual_seed(seed)
        out = make(torch.ones(1, 8, 12, 12), gen)
        ph = phase_means(out.abs().sum(1))
        spread.append(ph.std() / ph.mean())
    return torch.stack(spread).mean()


def transposed(k):
    return lambda x, gen: conv_transpose2d(x, torch.randn(8, 3, k, k, generator=gen), stride=2)


def pixel_shuffle(icnr):
    def make(x, gen):
        w = torch.randn(3, 8, 3, 3, generator=gen)
        w = w.repeat_interleave(4, 0) if icnr else torch.randn(12, 8, 3, 3, generator=gen)  # 4 = s^2 sub-kernels
        return F.pixel_shuffle(F.conv2d(x, w, padding=1), 2)
    return make


def resize_conv(x, gen):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), torch.randn(3, 8, 3, 3, generator=gen),
                    padding=1)


upsamplers = {"transposed conv, k=3, s=2": transposed(3), "transposed conv, k=4, s=2": transposed(4),
              "pixel shuffle, random init": pixel_shuffle(False), "pixel shuffle, ICNR init": pixel_shuffle(True),
              "nearest resize + conv": resize_conv}
spreads = {name: {"checkerboard (std/mean of phases)": checkerboard(make)} for name, make in upsamplers.items()}
print(table(spreads, 2, index="upsampling a constant input"))
s = {name: float(row["checkerboard (std/mean of phases)"]) for name, row in spreads.items()}
assert s["transposed conv, k=3, s=2"] > s["transposed conv, k=4, s=2"] + 0.1 > 0.2
assert abs(s["transposed conv, k=4, s=2"] - s["pixel shuffle, random init"]) < 0.1
assert s["pixel shuffle, ICNR init"] < 1e-3 and s["nearest resize + conv"] < 1e-3

fig, axes = plt.subplots(1, len(upsamplers), figsize=(12, 2.9), layout="constrained")
for ax, (name, make) in zip(axes, upsamplers.items(), strict=True):
    out = make(torch.ones(1, 8, 12, 12), torch.Generator().manual_seed(0)).abs().sum(1)
    ph = phase_means(out)
    im = ax.imshow(out[0, 2:-2, 2:-2] / out[0, 2:-2, 2:-2].mean(), cmap=viz.MAGNITUDE_CMAP, vmin=0.5, vmax=1.5)
    ax.set_title(f"{name}\nstd/mean of phases {fmt(ph.std() / ph.mean(), 2)}", fontsize=8)
    ax.axis("off")
fig.colorbar(im, ax=axes, shrink=0.8, label="output / its mean")
plt.show()

# %% [markdown]
# The figure shows one draw of each (its own std/mean in the title), every panel divided by its
# mean and drawn on one colour scale, so a flat output is one even colour. The uneven overlap
# gives $k = 3, s = 2$ the strongest checkerboard. $k = 4$ removes the
# geometric part and leaves what random weights add: about as much as pixel shuffle with four
# random sub-kernels, the same cause. ICNR and resize-convolution give none at all (at
# initialization; training can still learn one).
#
# DermNet's own downsampling is a 3×3 convolution with stride 2 (in `layer2` and `layer3`), so
# every backward map in the course passes through $k = 3, s = 2$ transposes. Measured on the
# deconvnet and gradient maps of 64 clinic-A images:

# %%
x64 = test_a.images[:64]
board = {}
for rule in ("gradient", "deconvnet"):
    ph = phase_means(rule_backprop(shortcut, x64, MEL, rule).abs().sum(1).mean(0))
    board[rule] = {"checkerboard (std/mean of phases)": ph.std() / ph.mean()}
print(table(board, 2, index="shortcut, mel score"))
assert float(board["deconvnet"]["checkerboard (std/mean of phases)"]) > 0.1
assert float(board["gradient"]["checkerboard (std/mean of phases)"]) < 0.03

# %% [markdown]
# The deconvnet's signal is kept positive at every ReLU, so the copies that overlap unevenly add
# up instead of cancelling: the four phase means of its maps spread by about 15% of their mean,
# the regular grain of section 1's figure. The gradient's signed copies mostly cancel (about 1%).
#
# ## 5. On DermNet
#
# ### Do the shortcut model's melanoma channels trace the ruler?
#
# For the three strongest melanoma channels of each model (as in notebook 08), project each
# channel's peak on its top nine clinic-B images, and measure on the images that have a ruler:
# the share of the projection's magnitude on the ruler (against the ruler's share of the image),
# and whether it **traces the ticks**: the projection's mean magnitude on the black tick marks
# divided by its mean on the ruler's blank paper (1 means the ticks are not singled out). Guided
# backprop of the same unit (the gradient rule with the sign rule added) is shown for comparison.

# %%
def tick_contrast(projection, images, ruler):
    """Per image: mean |projection| on the tick marks (dark pixels of the ruler) / on its blank paper."""
    mag, grey = projection.abs().sum(1), images.mean(1)
    ticks, paper = ruler & (grey < 0.3), ruler & (grey > 0.6)
    return (mag * ticks).sum((1, 2)) / ticks.sum((1, 2)) / ((mag * paper).sum((1, 2)) / paper.sum((1, 2)))


found, examples, peaks = {}, {}, {}
for name, model in (("shortcut", shortcut), ("debiased", debiased)):
    for c in channels[name]:
        idx, ys, xs_, value = top_activating(model, "layer4", c, test_b.images, k=10)
        assert value[8] - value[9] > 1e-3  # the ninth place is not a near-tie
        idx, ys, xs_ = idx[:9], ys[:9], xs_[:9]
        images, ruler = test_b.images[idx], test_b.masks["ruler"][idx]
        has = test_b.has_ruler[idx]
        proj = zeiler_fergus(model, images, "layer4", c, ys, xs_)
        guided = unit_projection(model, images, "layer4", c, ys, xs_, rule="guided")
        found[f"{name} channel {c}"] = {
            "with a ruler (of 9)": int(has.sum()),
            "ruler mass": mask_mass(proj[has], ruler[has]).mean(),
            "ruler share": mask_share(ruler[has]).mean(),
            "ticks/paper, deconvnet": tick_contrast(proj[has], images[has], ruler[has]).median(),
            "ticks/paper, guided": tick_contrast(guided[has], images[has], ruler[has]).median()}
        examples[f"{name} channel {c}"] = (images[:3], proj[:3], guided[:3])
        peaks[f"{name} channel {c}"] = (idx, ys, xs_, proj)
print(table(found, {"ruler mass": 2, "ruler share": 3, "ticks/paper, deconvnet": 1, "ticks/paper, guided": 1},
            index="layer4 channel, top 9 clinic-B images"))
rows_s = [found[f"shortcut channel {c}"] for c in channels["shortcut"]]
rows_d = [found[f"debiased channel {c}"] for c in channels["debiased"]]
assert all(float(r["ruler mass"]) > 2 * float(r["ruler share"]) for r in rows_s)
assert all(float(r["ruler mass"]) < float(r["ruler share"]) for r in rows_d)
assert all(0.7 < float(r["ticks/paper, deconvnet"]) < 1.4 for r in rows_s)
assert all(float(r["ticks/paper, guided"]) > float(r["ticks/paper, deconvnet"]) + 0.2 for r in rows_s)

key = f"shortcut channel {channels['shortcut'][0]}"
images, proj, guided = examples[key]
fig = viz.attribution_grid(images, {"deconvnet (by hand)": proj, "guided backprop": guided},
                           row_titles=[key] * 3, signed=False)
plt.show()

# %% [markdown]
# The shortcut model's melanoma channels are projected onto the ruler: nearly three times the
# ruler's share of the image, where the debiased model's channels put less than the ruler's share
# there. But the deconvnet does **not trace the ticks**: its projection is a grainy blob over the
# unit's peak, about as strong on the blank paper as on the tick marks. Guided backprop of the
# same unit, which keeps the forward ReLU masks, does single out the ticks: the forward mask is
# where the image's detail comes from.
#
# Is the ruler mass evidence about the image, or only about where the peak is? Section 3 says the
# image enters a DermNet projection only through one layer of switches, and the peaks themselves
# came from notebook 08's search, which found them on the ruler. Three controls keep the peak's
# position and take away something else:
#
# - **the ruler-free twin**: the same image drawn without its ruler (DermSynth changes the ruler
#   and nothing else), the same unit projected from the same position;
# - **a random channel** of `layer4` (not one of the three), projected from the same positions;
# - **a Gaussian blob** centred on the peak's cell of the 8×8 grid, 8 pixels (one cell) wide,
#   which knows nothing but the position.
#
# The unit need not fire on the twin, and a random channel need not fire at all, so these
# projections start from 1 instead of the activation: Captum's `NeuronDeconvolution`, which
# section 3 checked equals ours divided by the activation. A share of the magnitude does not depend
# on that factor. The ruler mask is the original image's in every row.

# %%
twin_b = make_dataset(1000, clinic="B", seed=TEST_SEEDS["B"], ruler=False)  # the same images, no ruler
size = test_b.images.shape[-1]
cell = size // 8  # pixels per cell of layer4's 8x8 grid
grid_y, grid_x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")


def projection_from_one(model, layer, images, c, ys, xs):
    """The deconvnet projection of the layer's unit (c, y, x) per image, started from 1."""
    return NeuronDeconvolution(model, layer).attribute(
        images.clone(), neuron_selector=lambda out: out[torch.arange(len(out)), c, ys, xs])


gen = torch.Generator().manual_seed(0)
spare = [c for c in range(shortcut.fc.in_features) if c not in channels["shortcut"]]
controls = {}
for c in channels["shortcut"]:
    idx, ys, xs_, proj = peaks[f"shortcut channel {c}"]
    ruler = test_b.masks["ruler"][idx]
    assert bool(test_b.has_ruler[idx].all())  # all nine have a ruler (table above)
    c_random = spare[int(torch.randint(len(spare), (1,), generator=gen))]
    blob = torch.exp(-((grid_y - (ys[:, None, None] + 0.5) * cell) ** 2
                       + (grid_x - (xs_[:, None, None] + 0.5) * cell) ** 2) / (2 * cell ** 2))[:, None]
    with capture(shortcut, "layer4") as rec, torch.no_grad():
        shortcut(torch.cat([test_b.images[idx], twin_b.images[idx]]))
    act = rec.activation[:, c].flatten(1).gather(1, torch.cat([ys * 8 + xs_] * 2)[:, None])[:, 0]
    controls[f"channel {c}"] = {
        "activation, image": act[:9].mean(), "activation, twin": act[9:].mean(),
        "ruler mass: the unit": mask_mass(proj, ruler).mean(),
        "on the twin": mask_mass(projection_from_one(shortcut, shortcut.layer4, twin_b.images[idx], c, ys, xs_),
                                 ruler).mean(),
        "random channel": mask_mass(projection_from_one(shortcut, shortcut.layer4, test_b.images[idx], c_random,
                                                         ys, xs_), ruler).mean(),
        "blob at the peak": mask_mass(blob, ruler).mean(),
        "ruler share": mask_share(ruler).mean()}
print(table(controls, {"activation, image": 1, "activation, twin": 1, "ruler mass: the unit": 2, "on the twin": 2,
                      "random channel": 2, "blob at the peak": 2, "ruler share": 3},
            index="shortcut, top 9 clinic-B images"))

# %% [markdown]
# Without its ruler, the unit all but stops firing (activation 11 to 15 on the images, at most 0.8
# on their twins): that is the forward pass telling us the unit responds to the ruler. The
# projection says nothing more. Projected from the same position, the unit puts the same share on
# where the ruler was when there is no ruler (0.34 to 0.36, against 0.35 to 0.36); a random channel
# from the same positions puts 0.27 to 0.34 there, and a blob that knows only the position 0.42 to
# 0.48. **The deconvnet adds nothing beyond the peak's position here**: its ruler mass restates
# where notebook 08's search found the peaks, and is no independent evidence that the units look
# at the ruler.
#
# ### One max-pool, or one after every block
#
# That is a fact about DermNet, not about deconvnets. Zeiler & Fergus worked on AlexNet, which has
# three (overlapping) max-pools; DermNet has one 2×2 max-pool, in its stem. Every pool adds a
# layer of switches, and the switches are the only way the image enters a projection. To see what
# they carry, take a small VGG-style network with a 2×2 max-pool after each of three blocks
# (conv 3×3, ReLU, pool; then a last conv and ReLU: an 8×8 grid like `layer4`'s) and *random*
# weights, so that nothing it shows can come from training. As a control, the same network with
# average pools: it has no switches, so its projections cannot depend on the image at all.
#
# The measure: project the centre unit (4, 4) of 8 channels on 32 clinic-B images (started from
# 1), and take the rank correlation, over the 32×32 pixels around the centre, between the
# projection's magnitude and the image's edges (`helpers.metrics.edge_strength`), minus the same
# with *another* image's edges. Above 0: the projection follows its own image.

# %%
def vgg_style(pool):
    """Three blocks conv 3x3 -> ReLU -> pool 2x2, then conv -> ReLU; random weights (seed 0)."""
    torch.manual_seed(0)
    layers = []
    for c_in, c_out in ((3, 16), (16, 32), (32, 64)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), pool(2)]
    return nn.Sequential(*layers, nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()).eval()


vgg_max, vgg_avg = vgg_style(nn.MaxPool2d), vgg_style(nn.AvgPool2d)
nets = {"DermNet (shortcut), layer4": (shortcut, shortcut.layer4),
        "VGG-style, random, 3 max-pools": (vgg_max, vgg_max[-1]),
        "the same with average pools": (vgg_avg, vgg_avg[-1])}
x32b, centre, chans = test_b.images[:32], slice(16, 48), torch.arange(0, 64, 8)
edges = edge_strength(x32b)[:, 0, centre, centre].repeat(len(chans), 1, 1)  # row r: image r % 32
other_edges = edge_strength(x32b.roll(1, 0))[:, 0, centre, centre].repeat(len(chans), 1, 1)
follows, shown = {}, {}
for name, (model, layer) in nets.items():
    proj = projection_from_one(model, layer, x32b.repeat(len(chans), 1, 1, 1), chans.repeat_interleave(32), 4, 4)
    mag = proj.abs().sum(1)[:, centre, centre]
    own, other = rank_correlation(mag, edges), rank_correlation(mag, other_edges)
    mean, low, high = bootstrap_ci((own - other).view(len(chans), 32).mean(0))  # per image, over images
    follows[name] = {"own image's edges": own.mean(), "another image's": other.mean(),
                     "difference": mean, "95% interval": f"[{fmt(low, 2)}, {fmt(high, 2)}]"}
    shown[name] = proj[:2]
print(table(follows, 2, atol=1e-3, index="projection vs edges, rank corr."))
fig = viz.attribution_grid(x32b[:2], shown, row_titles=["image 0", "image 1"], signed=False)
plt.show()

# %% [markdown]
# With the switches of three max-pools, the random network's projections follow their own image's
# edges a little more than another image's: a difference of 0.05, with an interval that just
# reaches 0. DermNet's, with one max-pool, differ by 0.01, inside an interval around 0 as wide as
# the average-pool control's, which by construction cannot follow the image. The structural point
# holds whatever the weights: without switches a deconvnet projection cannot depend on the image,
# and each max-pool adds a way in. With random weights that way in is narrow; how much wider
# Zeiler & Fergus's trained AlexNet filters make it, this notebook does not measure. So do not
# carry "deconvnets show nothing" from DermNet, which has one max-pool, to a network with many.
#
# ### Does the map depend on the class it explains?
#
# A map that explains "melanoma" should differ from one that explains "nevus". Measure it as the
# Spearman rank correlation, per image, between the map for mel and the map for each of the six
# other classes, averaged over 32 held-out clinic-A images (1: the same picture whatever the
# class). Mahendran & Vedaldi (2016) and Nie et al. (2018) showed that deconvnet and guided
# backprop largely reconstruct the image instead; Grad-CAM (here without its final ReLU, so that
# zeroed regions do not tie) is the class-discriminative reference.

# %%
x32 = test_a.images[:32]
others = [c for c in range(len(CLASSES)) if c != MEL]
methods = {"gradient": lambda m, c: rule_backprop(m, x32, c, "gradient").abs().sum(1),
           "guided backprop": lambda m, c: rule_backprop(m, x32, c, "guided").abs().sum(1),
           "deconvnet": lambda m, c: deconvnet(m, x32, c).abs().sum(1),
           "Grad-CAM (no ReLU)": lambda m, c: grad_cam(m, x32, c, relu=False)[:, 0]}
insensitive = {}
for method, fn in methods.items():
    insensitive[method] = {}
    for name, model in (("shortcut", shortcut), ("debiased", debiased)):
        mel_map = fn(model, MEL)
        r = torch.stack([rank_correlation(mel_map, fn(model, c)) for c in others])
        insensitive[method][name] = r.mean()
print(table(insensitive, 2, atol=1e-3, index="mel vs other classes, rank corr."))
r_ = {m: {k: float(v) for k, v in row.items()} for m, row in insensitive.items()}
for name in ("shortcut", "debiased"):
    assert r_["guided backprop"][name] > r_["deconvnet"][name] > r_["gradient"][name] > r_["Grad-CAM (no ReLU)"][name]
    assert r_["deconvnet"][name] > 0.7 and r_["Grad-CAM (no ReLU)"][name] < 0.3

# %% [markdown]
# The deconvnet's maps for mel and for any other class order the pixels much the same way (rank
# correlation 0.7 to 0.8), and guided backprop's even more so. Grad-CAM's maps for different classes are
# unrelated or opposed. Section 3 says why the deconvnet cannot do better: the class enters only
# at the top, as the positive part of the class's row of `fc` (the deconvnet rectifies the signal
# at `layer4`'s last ReLU), and the image enters only through the switches of one max-pool. So a
# deconvnet (or guided backprop) map is not evidence about the class; it says which image structure
# the network's downward path reconstructs. Nie et al. test exactly this, the class; the sanity
# checks of Adebayo et al. (2018, notebook 12) test the neighbouring failure, a map that barely
# changes when the model's weights or the training labels are randomized.
#
# ## 6. Pitfalls and limits
#
# - **Class-insensitive.** Deconvnet and guided backprop maps barely change with the class they
#   explain (section 5): they reconstruct image structure. Do not read them as "evidence for mel".
# - **Only `nn.ReLU` modules are rectified.** A `torch.relu` call in `forward` keeps the plain
#   gradient there: Captum's `Deconvolution` says nothing (section 3), `relu_rule` warns and counts
#   the calls. In-place ReLUs, and one ReLU module reused across a block (torchvision's ResNets),
#   are rectified: the rule replaces each module's forward for the call, as Captum's hooks do
#   (notebook 15 computes this case on torchvision's resnet18; this notebook does not).
# - **The image enters only through the switches.** With one max-pool (DermNet) a projection
#   restates where its unit peaked (section 5's controls); more pools let more of the image in.
# - **`max_unpool2d` writes, it does not add.** With overlapping pooling windows it is not the
#   transpose of pooling (section 3).
# - **A projection is not a part of the image.** It is a picture drawn through the network's
#   transposed filters from one unit; it lands where the unit's evidence is (on the ruler, here),
#   but its texture comes from the filters and the switches (the grain, the missing ticks).
# - **Checkerboards come from the architecture.** A stride-2, 3×3 layer passed back gives uneven
#   overlap, in the deconvnet and in every other backward map.
#
# ## 7. Your turn
#
# **Exercise 1.** Write a transposed convolution by hand: `my_conv_transpose(y, weight, stride,
# padding)` with `y` $[B, C_{in}, h, w]$ and `weight` $[C_{in}, C_{out}, k, k]$. Each input pixel
# $(i, j)$ adds its kernel, weighted by its value, at $(i s, j s)$ of a zero output of size
# $(h - 1) s + k$; then `padding` rows and columns are cut from each side. The checker compares with
# `F.conv_transpose2d` and names the usual slips (a flipped kernel, padding not cut, the stride
# forgotten).

# %%
from helpers.exercises import check_conv_transpose  # noqa: E402


def my_conv_transpose(y, weight, stride, padding):
    """The transposed convolution of y [B, C_in, h, w] with weight [C_in, C_out, k, k]:

        out[b, o, i s + u, j s + v] += sum_c y[b, c, i, j] * weight[c, o, u, v]

    on a zero output of size (h - 1) s + k by (w - 1) s + k, then `padding` rows and columns cut
    from each side."""
    raise NotImplementedError


check_conv_transpose(my_conv_transpose)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_conv_transpose(y, weight, stride, padding):
#     b, _, h, w = y.shape
#     _, c_out, k, _ = weight.shape
#     out = y.new_zeros(b, c_out, (h - 1) * stride + k, (w - 1) * stride + k)
#     for i in range(h):
#         for j in range(w):
#             out[:, :, i * stride:i * stride + k, j * stride:j * stride + k] += torch.einsum(
#                 "bc,cokl->bokl", y[:, :, i, j], weight)
#     return out[:, :, padding:out.shape[2] - padding, padding:out.shape[3] - padding]
# ```
# `helpers.deconv.conv_transpose2d` loops over the $k^2$ kernel offsets instead of the $hw$ input
# pixels: the same sum, far fewer Python steps.
# </details>
#
# **Exercise 2.** Could you tell from the shortcut model's deconvnet map alone whether it
# explains mel or another class? Measure it on 32 clinic-B images of your own: the mean rank
# correlation (`helpers.metrics.rank_correlation`) between the mel map and each other class's map,
# for the deconvnet and, as the control, for Grad-CAM (`relu=False`). A method tells the classes
# apart when that correlation is well below 0.5. The checker measures it on 32 other images.

# %%
from helpers.exercises import check_deconvnet_class_question  # noqa: E402

deconvnet_tells_the_class = None  # your answer, from your measurement: True or False
check_deconvnet_class_question(deconvnet_tells_the_class)

# %% [markdown]
# ## Summary
#
# - Saliency, guided backprop and the deconvnet are one backward pass with three ReLU rules; ours
#   match Captum's exactly.
# - Zeiler & Fergus's deconvnet, built by hand from unpooling with switches, rectification and
#   transposed filters, equals autograd's deconvnet rule in eval mode, with `nn.ReLU` modules, and
#   with unpooling that adds where windows overlap; the notebook checked each condition.
# - A transposed convolution is the gradient of a convolution; uneven overlap ($k$ not a multiple
#   of $s$) makes checkerboards, which pixel shuffle with ICNR or resize-convolution avoid, and
#   DermNet's stride-2 layers leave that grain in its deconvnet maps.
# - In one dimension, a stride-2 convolution is a 5×12 matrix $W$; the transposed convolution is
#   $W^\top$, equal to zero insertion plus the flipped filter, and $W^\top y / 2$ does not recover
#   $x$ even for an edge filter with orthogonal rows.
# - On DermNet, the shortcut model's melanoma channels project onto the ruler (without tracing its
#   ticks), but a ruler-free twin, a random channel and a blob at the peak do as well: the
#   projection adds nothing beyond the peak's position. The deconvnet map also barely depends on
#   the class it explains, unlike Grad-CAM.
#
# **Next: 10 · TCAV.** From pixels and units to human concepts: does the melanoma decision depend
# on "ruler" as a concept, and is that statistically significant?
