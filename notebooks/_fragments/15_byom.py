# %%
# Preamble: notebook 15 runs this earlier; do not paste this cell (it keeps the fragment runnable and lintable)
import timm
import torch
import torchvision
from torch import nn

from helpers.cam import grad_cam, guided_backprop
from helpers.gradients import integrated_gradients, saliency, smoothgrad
from helpers.models import Normalize
from helpers.perturbation import occlusion
from helpers.report import agree, fmt, table

torch.manual_seed(0)

# %% [markdown]
# ## Bring your own model
#
# DermNet was built for this course: it normalizes its own input, every ReLU is a module used once,
# its layers have the names the helpers expect, and it runs at 64 px. A model from torchvision or
# timm has none of these properties. This section runs the playbook's tools on torchvision's
# `resnet18` and a timm ViT, with random weights (nothing is downloaded), and shows each pitfall
# with the error you get or the workaround. The code is the same with pretrained weights: with
# internet access, change one line to
# `torchvision.models.resnet18(weights=torchvision.models.ResNet18_Weights.DEFAULT)`.

# %%
import time  # noqa: E402
import warnings  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from helpers.hooks import count_passes, one_relu_per_use  # noqa: E402
from helpers.metrics import rank_correlation  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
resnet = torchvision.models.resnet18(weights=None).eval()  # random weights, offline
net = nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), resnet).eval()  # takes pixels in [0, 1]
blobs = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(15))  # a smooth test image
image224 = F.interpolate(blobs, size=224, mode="bicubic", align_corners=False).clamp(0, 1)
image = F.interpolate(image224, size=64, mode="area")  # 64 px keeps this section fast
CLASS = 1  # with random weights any class will do: a fixed one, no argmax that round-off could flip

# %% [markdown]
# ### Normalization belongs inside the model
#
# torchvision's models expect ImageNet-normalized input, $(x - \mu)/\sigma$ per channel, and
# most code normalizes in the data loader. Then every "zero" a method uses lives in normalized
# space: IG's black baseline and occlusion's black patch are not black but the ImageNet mean
# colour. Wrap the model as `nn.Sequential(Normalize(mean, std), model)` and give it pixels in
# [0, 1]: a baseline of 0 is then black. The two give different maps (16 steps: each sum matches
# its score difference to a few percent):

# %%
normalized = (image - net[0].mean) / net[0].std
ig_normalized, delta_n = integrated_gradients(resnet, normalized, CLASS, baseline=0.0, steps=16, return_delta=True)
ig_pixels, delta_p = integrated_gradients(net, image, CLASS, baseline=0.0, steps=16, return_delta=True)
zero_in_pixels = net[0].mean * 1.0  # the pixel colour that normalizes to 0
with torch.no_grad():
    score_image, score_black, score_grey = net(torch.cat([image, torch.zeros_like(image),
                                                          zero_in_pixels.expand_as(image)]))[:, CLASS]
print("'0' in normalized space is the pixel colour",
      ", ".join(fmt(v, 3) for v in zero_in_pixels.flatten()), "(the ImageNet mean), not black")
print(table({"normalized outside (baseline 0 = mean colour)": {
                 "sum of IG": ig_normalized.sum(), "S(x) - S(baseline)": score_image - score_grey},
             "Normalize inside (baseline 0 = black)": {
                 "sum of IG": ig_pixels.sum(), "S(x) - S(baseline)": score_image - score_black}}, digits=3))
rho = rank_correlation(ig_normalized.sum(1), ig_pixels.sum(1)).item()
print("rank correlation of the two IG maps (summed over colour):", fmt(rho, 2, atol=1e-3))
# the same baseline, written in either space, gives the same attributions: only the baseline differs
ig_same = integrated_gradients(resnet, normalized, CLASS, baseline=((0 - net[0].mean) / net[0].std).expand_as(image),
                               steps=16)
scale = ig_pixels.abs().max()
_ = agree("IG outside vs inside with black written in normalized space (relative to the largest value)",
          ig_same / scale, ig_pixels / scale, atol=1e-3)
gap_sums = ((score_image - score_grey) - (score_image - score_black)).abs().item()
assert delta_n.abs().item() < 0.05 * abs(score_image - score_grey).item()  # each sum is complete to 5% at 16
assert delta_p.abs().item() < 0.05 * abs(score_image - score_black).item()  # steps...
assert gap_sums > 0.1 * abs(score_image - score_black).item()  # ...and the two explain different differences
assert rho < 0.9 and (score_image - score_grey) * (score_image - score_black) < 0  # here: opposite signs

fig, axes = plt.subplots(1, 3, figsize=(9, 3))
axes[0].imshow(image[0].permute(1, 2, 0))
axes[0].set_title("input (64 px)")
for ax, attr, title in [(axes[1], ig_normalized, "IG, baseline 0 normalized\n(= mean colour)"),
                        (axes[2], ig_pixels, "IG, baseline 0 in pixels\n(= black)")]:
    m = attr[0].sum(0)
    ax.imshow(m, cmap="RdBu_r", vmin=-m.abs().max(), vmax=m.abs().max())
    ax.set_title(title)
for ax in axes:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# Here the two totals even have opposite signs: the image scores above the mean colour and below
# black. The attributions themselves do not depend on the space: IG with black written in normalized
# coordinates equals IG on the wrapped model. What changed is the question: "what does the
# image add over black?" or "over the average ImageNet colour?". With the normalization inside
# the model, the baseline you write is the baseline you get.
#
# ### Layer names differ
#
# Grad-CAM needs the last convolutional feature map. On a torchvision ResNet it is `layer4`
# (the output of its last block, `layer4[-1]`); after wrapping, the ResNet is child `1`, so the
# name becomes `1.layer4`. A wrong name gets an error that lists the closest names:

# %%
try:
    grad_cam(net, image, CLASS, "layer4")
except ValueError as err:
    print("ValueError:", err)
by_name = grad_cam(net, image, CLASS, "1.layer4")
assert torch.equal(by_name, grad_cam(net, image, CLASS, resnet.layer4[-1]))  # a module works as well as a name
# On an unknown architecture: list the modules with a 4-D output, the last ones are the candidates
shapes, handles = {}, []


def record_shape(name):
    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            shapes[name] = tuple(output.shape)  # (a hook that returns nothing leaves the output alone)
    return hook


for name, module in net.named_modules():
    handles.append(module.register_forward_hook(record_shape(name)))
try:
    with torch.no_grad():
        net(image)
finally:
    for h in handles:
        h.remove()
print("last modules with a feature map:", ", ".join(f"{n} {s[1:]}" for n, s in list(shapes.items())[-3:]))
assert "1.layer4" in shapes

# %% [markdown]
# ### One in-place ReLU, used twice per block
#
# torchvision's `BasicBlock` creates one `nn.ReLU(inplace=True)` and calls it twice in its
# `forward`. Methods that change the backward pass of each ReLU *module* can stumble on both
# properties. Count the calls, then try the libraries:

# %%
calls, handles = {}, []
for module in net.modules():
    if isinstance(module, nn.ReLU):
        handles.append(module.register_forward_hook(lambda m, i, o: calls.__setitem__(m, calls.get(m, 0) + 1)))
try:
    with torch.no_grad():
        net(image)
finally:
    for h in handles:
        h.remove()
print(table({"torchvision resnet18": {"ReLU modules": len(calls), "ReLU calls": sum(calls.values()),
                                      "modules used twice": sum(c == 2 for c in calls.values()),
                                      "in place": all(m.inplace for m in calls)}}))
assert len(calls) == 9 and sum(calls.values()) == 17

# %%
import captum  # noqa: E402
from captum.attr import DeepLift, GuidedBackprop  # noqa: E402

print("captum", captum.__version__, "| torch", torch.__version__.split("+")[0])

net_once = one_relu_per_use(net)  # a copy with one fresh ReLU() per use: the same function
with torch.no_grad():
    assert torch.equal(net_once(image), net(image))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Captum's notices that it sets hooks and requires_grad
    gbp_captum = GuidedBackprop(net).attribute(image, target=CLASS)
    try:
        DeepLift(net).attribute(image, baselines=torch.zeros_like(image), target=CLASS)
        raise AssertionError("DeepLift ran on the shared in-place ReLU")
    except RuntimeError as err:
        print("Captum DeepLift on resnet18: RuntimeError:", str(err).split(".")[0] + ".")
    dl, dl_delta = DeepLift(net_once).attribute(image, baselines=torch.zeros_like(image), target=CLASS,
                                                return_convergence_delta=True)
gbp_once = guided_backprop(net_once, image, CLASS)
_ = agree("guided_backprop, resnet18 vs its one-ReLU-per-use copy", guided_backprop(net, image, CLASS),
          gbp_once, atol=1e-7)
_ = agree("Captum GuidedBackprop on resnet18 vs guided_backprop on the copy", gbp_captum, gbp_once, atol=1e-7)
no_pool = one_relu_per_use(net)
no_pool[1].maxpool = nn.Identity()  # the same network without its max-pooling layer
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    dl_np, dl_np_delta = DeepLift(no_pool).attribute(image, baselines=torch.zeros_like(image), target=CLASS,
                                                      return_convergence_delta=True)
with torch.no_grad():
    gap_np = (no_pool(image) - no_pool(torch.zeros_like(image)))[0, CLASS]
print(table({"one ReLU per use": {"sum of DeepLift": dl.sum(), "S(x) - S(black)": score_image - score_black},
             "the same, MaxPool2d removed": {"sum of DeepLift": dl_np.sum(), "S(x) - S(black)": gap_np}}))
_ = agree("DeepLift without MaxPool2d: sum of attributions vs S(x) - S(black)", dl_np.sum(), gap_np, atol=1e-5)
assert dl_delta.abs().item() > 0.05 * abs(score_image - score_black).item()  # with it, the sum misses
assert gbp_once.abs().max() > 1e-3 and abs(gap_np) > 1e-2

# %% [markdown]
# With these versions (printed above), guided backprop survives the shared in-place
# ReLU, ours and Captum's alike: each call of the module gets its own hook, and the in-place
# ReLU keeps the sign the guided rule needs. DeepLift does not: it stores one reference
# activation per module, so a module called twice has nowhere to keep the second one, and Captum
# refuses with a clear error. The fix is a copy with one ReLU per use,
# `helpers.hooks.one_relu_per_use(model)`: the same weights and outputs, every other layer name
# kept. DeepLift then runs, but its attributions miss $S(x) - S(\text{black})$ by more than 5%:
# the rule Captum applies at `MaxPool2d` does not keep the sum exact. Remove the pooling layer
# (a different network, for the check only) and the sum is exact again. So on a torchvision
# ResNet, DeepLift's completeness is a check to run, not a property to assume.
#
# ### 224 px: what each method costs
#
# ImageNet models take 224 px, 12 times the pixels of DermNet's 64. A method's cost is its
# number of forward and backward passes times the time of one pass, and only the perturbation
# methods' pass count grows with the image. `helpers.hooks.count_passes` counts them on the real
# model at 64 px; at 224 px, counting needs no real network (the count does not depend on the
# weights), so a one-layer stand-in counts the passes without running resnet18 over them.
# Occlusion keeps its window a fixed fraction of the image here (16 px with stride 8 at 64 px,
# 56 px with stride 28 at 224 px); the last row keeps the 16-px window at both sizes.

# %%
from collections import OrderedDict  # noqa: E402

from helpers.perturbation import occlusion_masks  # noqa: E402

METHODS = {
    "saliency": lambda m, x, size: saliency(m, x, CLASS),
    "Grad-CAM": lambda m, x, size: grad_cam(m, x, CLASS, "1.layer4"),
    "guided backprop": lambda m, x, size: guided_backprop(m, x, CLASS),
    "SmoothGrad (10 samples)": lambda m, x, size: smoothgrad(m, x, CLASS, n_samples=10),
    "IG (16 steps)": lambda m, x, size: integrated_gradients(m, x, CLASS, steps=16),
    "occlusion": lambda m, x, size: occlusion(m, x, CLASS, window=size // 4, stride=size // 8),
}
stand_in = nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), nn.Sequential(OrderedDict(  # "1.layer4" as in net
    layer4=nn.Conv2d(3, 4, 16, stride=16), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
    fc=nn.Linear(4, 1000)))).eval()


def passes(model, x):
    out = {}
    for name, method in METHODS.items():
        with count_passes(model) as c:
            method(model, x, x.shape[-1])
        out[name] = (c.forward_images, c.backward_images)
    return out


counted64 = passes(net, image)
stand64, stand224 = passes(stand_in, image), passes(stand_in, image224)
assert counted64 == stand64  # the stand-in counts what resnet18 costs
# occlusion with the same 16-px window at both sizes: one pass per window position, plus the image
fixed = {size: (len(occlusion_masks((size, size), (16, 16), (8, 8))) + 1, 0) for size in (64, 224)}
rows = {name: {"forward images": counted64[name][0], "backward images": counted64[name][1],
               "forward images, 224 px": stand224[name][0]} for name in METHODS}
rows["occlusion, 16-px window"] = {"forward images": fixed[64][0], "backward images": fixed[64][1],
                                  "forward images, 224 px": fixed[224][0]}
print(table(rows, index="per image"))
assert all(stand224[name] == counted64[name] for name in METHODS)  # counts do not grow with the image...
assert fixed[64] == counted64["occlusion"] and fixed[224][0] > 10 * fixed[64][0]  # ...unless the window stays put

# %% [markdown]
# Only occlusion's count depends on the image size, and only if its window does not grow with
# the image: with the same 16-px window, 224 px needs 27 x 27 positions instead of 7 x 7. For
# every method, what grows is the time per pass. Timings vary from machine to machine, so they
# appear only in the figure (and the cell's printout is not compared by the notebook tests).

# %%
# NBVAL_IGNORE_OUTPUT


def seconds_per_image(model, x, backward, repeats=2):
    best = float("inf")
    for _ in range(repeats):
        xg = x.detach().requires_grad_(backward)
        start = time.perf_counter()
        with torch.set_grad_enabled(backward):
            out = model(xg)[:, CLASS].sum()
            if backward:
                torch.autograd.grad(out, xg)
        best = min(best, time.perf_counter() - start)
    return best


cost = {}
for size, x in ((64, image), (224, image224)):
    t_fwd, t_both = seconds_per_image(net, x, False), seconds_per_image(net, x, True)
    counts = {**(counted64 if size == 64 else stand224), "occlusion, 16-px window": fixed[size]}
    cost[size] = {name: f * t_fwd + b * max(t_both - t_fwd, 0.0) for name, (f, b) in counts.items()}
fig, ax = plt.subplots(figsize=(8, 3))
pos = torch.arange(len(rows)).float()
for k, size in enumerate((64, 224)):
    ax.barh(pos + 0.4 * k, list(cost[size].values()), height=0.4, label=f"{size} px")
ax.set_yticks(pos + 0.2, list(rows))
ax.set_xscale("log")
ax.set_xlabel("estimated seconds per image on this machine (passes x time per pass)")
ratio = cost[224]["saliency"] / cost[64]["saliency"]
ax.set_title(f"resnet18 on CPU: one pass at 224 px costs about {ratio:.0f}x one at 64 px")
ax.legend()
plt.tight_layout()
plt.show()
print("approximate, this machine:", ", ".join(f"{n} {cost[224][n]:.1g} s" for n in rows), "at 224 px")

# %% [markdown]
# ### Fused attention: nothing to hook
#
# In a timm ViT, each block's `Attention` calls PyTorch's fused `scaled_dot_product_attention`:
# the attention probabilities are never formed, so the module timm's slow path passes them
# through (`attn_drop`) is never called, and a hook on it sees nothing. `helpers.attention`
# gives two ways out: `record_attention` recomputes the probabilities from the `qkv`
# projection while the model runs untouched, and `unfused_attention` switches timm's slow path
# on for the duration of a `with` block.

# %%
from helpers.attention import record_attention, tokens_to_grid, unfused_attention, vit_blocks  # noqa: E402

vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()  # 4x4 patches + CLS
seen = []
handle = vit.blocks[-1].attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o))
try:
    with torch.no_grad():
        logits_vit = vit(image)
finally:
    handle.remove()
print(f"fused_attn = {vit.blocks[-1].attn.fused_attn}; the hook on attn_drop was called {len(seen)} times")
with record_attention(vit) as rec, torch.no_grad():
    assert torch.equal(vit(image), logits_vit)  # recording changes nothing the model computes
with unfused_attention(vit) as probs, torch.no_grad():
    vit(image)
print(f"record_attention: {len(rec.attentions)} blocks of {tuple(rec.attentions[-1].shape)} [B, heads, T, T]")
_ = agree("record_attention vs timm's unfused path, last block", rec.attentions[-1], probs[-1], atol=1e-5)
assert not seen and len(rec.attentions) == len(vit.blocks)
try:
    vit_blocks(torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=1, num_heads=2,
                                                    hidden_dim=16, mlp_dim=32))
except TypeError as err:
    print("torchvision's ViT: TypeError:", str(err).split("(e.g.")[0].strip())

# %% [markdown]
# Grad-CAM needs a feature map, and a ViT layer gives tokens `[B, 1 + h w, C]`: drop the CLS
# token and fold the rest into the patch grid with `reshape=tokens_to_grid`. The layer is the
# last block's first LayerNorm, not the block's output: only the CLS token of that output reaches
# the head, so its patch tokens get no gradient and the map would be empty.

# %%
vit_cam = grad_cam(vit, image, CLASS, "blocks.11.norm1", reshape=tokens_to_grid, upsample=False)
print("ViT Grad-CAM map:", tuple(vit_cam.shape), "one value per 16-px patch")
assert vit_cam.shape == (1, 1, 4, 4) and vit_cam.max() > 0
after_last = grad_cam(vit, image, CLASS, "blocks.11", reshape=tokens_to_grid, relu=False, upsample=False)
print("Grad-CAM at the last block's output: every value zero?", bool((after_last == 0).all()))
assert (after_last == 0).all()

# %% [markdown]
# ### Before you trust a map on your own model
#
# - **Normalization inside the model**, so that a zero baseline or patch is the image you mean.
# - **The layer by name, checked**: its output is a 4-D feature map (or tokens reshaped into one).
# - **One ReLU module per use, not in place**, for DeepLift, DeepSHAP, LRP and any rule tied to
#   modules: `one_relu_per_use`, then check completeness (the sum equals the score difference).
# - **A budget in passes**: count them (`count_passes`) before running occlusion or SHAP at 224 px.
# - **The sanity checks of notebook 12** on your model: randomize its weights, and the map must change.
