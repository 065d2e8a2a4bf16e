"""helpers.attention: extraction from fused attention, rollout, flow, relevance, Grad-CAM on tokens.

Rollout and flow have no maintained library: they are checked against their definitions on
hand-built attention with known answers, and flow against networkx's max-flow. Relevance is
checked against the same rule computed through timm's own unfused attention path (a second,
independent way to the gradient of the score with respect to the attention).
"""

import networkx as nx
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import helpers.attention as attention
from helpers.attention import (
    attention_flow,
    attention_maps,
    record_attention,
    relevance,
    rollout,
    token_map,
    tokens_to_grid,
    verify_attention,
)
from helpers.cam import grad_cam, layer_activation_and_gradient
from helpers.hooks import count_hooks
from helpers.models import DermNet, DermViT


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return DermViT().eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_the_model_uses_the_fused_kernel(vit):
    assert all(block.attn.fused_attn for block in vit.blocks)  # so the pitfall is real here


def test_recording_does_not_change_the_output_by_a_bit(vit, x):
    with torch.no_grad():
        plain = vit(x)
    with record_attention(vit) as rec, torch.no_grad():
        hooked = vit(x)
    assert torch.equal(plain, hooked)
    assert count_hooks(vit) == 0
    assert len(rec.attentions) == 4
    for a in rec.attentions:
        assert a.shape == (3, 4, 65, 65)
        assert torch.allclose(a.sum(-1), torch.ones(3, 4, 65), atol=1e-5)


def test_rebuilt_blocks_match_the_model(vit, x):
    gaps = verify_attention(vit, x)
    assert len(gaps) == 4 and max(gaps) < 1e-5, gaps
    assert count_hooks(vit) == 0


def test_verify_attention_can_fail(vit, x, monkeypatch):
    """Probabilities computed without the 1/sqrt(d) scale do not rebuild the blocks."""
    real = attention._probabilities

    def unscaled(attn, qkv):
        b, n, _ = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return (q @ k.transpose(-2, -1)).softmax(-1), v

    monkeypatch.setattr(attention, "_probabilities", unscaled)
    assert max(verify_attention(vit, x)) > 1e-3
    monkeypatch.setattr(attention, "_probabilities", real)
    assert max(verify_attention(vit, x)) < 1e-5


def test_attention_matches_timms_unfused_path(vit, x):
    """timm's own unfused branch forms the probabilities and passes them through attn_drop."""
    with attention.unfused_attention(vit) as seen, torch.no_grad():
        vit(x)
    assert all(b.attn.fused_attn for b in vit.blocks) and count_hooks(vit) == 0
    for ours, theirs in zip(attention_maps(vit, x), seen, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_attention_maps_reads_the_unfused_path_and_agrees_with_the_recording(vit, x):
    """attention_maps switches the blocks to timm's unfused path for its pass: the maps are those
    of the hooked qkv (the fused model's) to round-off, and every flag is restored."""
    with record_attention(vit) as rec, torch.no_grad():
        vit(x)
    maps = attention_maps(vit, x)
    assert all(b.attn.fused_attn for b in vit.blocks) and count_hooks(vit) == 0
    for ours, recorded in zip(maps, rec.attentions, strict=True):
        assert torch.allclose(ours, recorded, atol=1e-6)
    assert max(verify_attention(vit, x)) < 1e-5
    some = attention_maps(vit, x, layers=[1, 3])  # only those blocks switched
    assert torch.allclose(some[1], maps[3], atol=1e-6) and all(b.attn.fused_attn for b in vit.blocks)


def test_attention_maps_restores_the_flags_and_hooks_when_the_forward_raises(vit):
    class Boom(Exception):
        pass

    def explode(module, inputs, output):
        raise Boom

    handle = vit.blocks[2].register_forward_hook(explode)
    try:
        with pytest.raises(Boom):
            attention_maps(vit, torch.rand(1, 3, 64, 64))
    finally:
        handle.remove()
    assert all(b.attn.fused_attn for b in vit.blocks) and count_hooks(vit) == 0


def test_layers_option_and_its_range(vit, x):
    last = attention_maps(vit, x, layers=-1)
    assert len(last) == 1 and torch.allclose(last[0], attention_maps(vit, x)[3], atol=1e-6)  # earlier blocks fused
    with pytest.raises(ValueError, match=r"layers \[4\] out of range for a model with 4 blocks"):
        attention_maps(vit, x, layers=4)
    with pytest.raises(TypeError, match="layers must be"):
        attention_maps(vit, x, layers="last")
    assert count_hooks(vit) == 0


def test_a_cnn_is_refused_with_what_was_expected(x):
    with pytest.raises(TypeError, match="DermNet with no transformer blocks: expected a timm VisionTransformer"):
        attention_maps(DermNet().eval(), x)


def test_torchvisions_vit_is_refused_with_the_reason():
    tv = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=1, num_heads=2,
                                              hidden_dim=16, mlp_dim=32, num_classes=7).eval()
    with pytest.raises(TypeError, match="need_weights=False"):
        attention_maps(tv, torch.rand(1, 3, 64, 64))


def test_a_block_with_an_unhookable_attention_is_refused(x):
    class Fused(nn.Module):  # attention done in one opaque call, no qkv projection to hook
        def forward(self, t):
            return nn.functional.scaled_dot_product_attention(t[:, None], t[:, None], t[:, None])[:, 0]

    model = DermViT().eval()
    model.blocks[2].attn = Fused()
    with pytest.raises(TypeError, match=r"model.blocks\[2\].attn is a Fused"):
        attention_maps(model, x)
    assert count_hooks(model) == 0


def test_hooks_are_removed_when_the_forward_raises(vit):
    class Boom(Exception):
        pass

    def explode(module, inputs, output):
        raise Boom

    handle = vit.blocks[2].register_forward_hook(explode)  # fails after blocks 0-2 recorded
    try:
        with pytest.raises(Boom), record_attention(vit), torch.no_grad():
            vit(torch.rand(1, 3, 64, 64))
    finally:
        handle.remove()
    assert count_hooks(vit) == 0


def test_a_second_forward_in_one_recording_is_refused(vit, x):
    with pytest.raises(ValueError, match="ran twice"):
        with record_attention(vit), torch.no_grad():
            vit(x)
            vit(x)
    assert count_hooks(vit) == 0


# ---- rollout and flow on hand-built attention ----

def _stack(mats, heads=1):
    """[L, T, T] matrices -> a list of L [1, heads, T, T] attention tensors."""
    return [torch.as_tensor(m, dtype=torch.float64)[None, None].expand(1, heads, *m.shape).clone() for m in mats]


def _one_hot_rows(t, j):
    m = np.zeros((t, t))
    m[:, j] = 1
    return m


def test_identity_attention_rolls_out_to_the_identity():
    eye = np.eye(5)
    for residual in (0.0, 0.5, 0.9):
        assert torch.allclose(rollout(_stack([eye] * 3), residual=residual)[0], torch.eye(5, dtype=torch.float64))
    flow = attention_flow(_stack([eye] * 3))[0]
    assert torch.allclose(flow, torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64), atol=1e-8)


def test_a_one_hot_chain_is_followed():
    # block 1: every token reads token 2; block 2: every token reads token 1: CLS ends at token 2
    mats = [_one_hot_rows(4, 2), _one_hot_rows(4, 1)]
    r = rollout(_stack(mats), residual=0.0)[0]
    assert torch.allclose(r, torch.as_tensor(_one_hot_rows(4, 2)))
    flow = attention_flow(_stack(mats), residual=0.0)[0]
    assert torch.allclose(flow, torch.tensor([0, 0, 1.0, 0], dtype=torch.float64), atol=1e-8)


def test_rollout_of_uniform_attention_has_the_closed_form():
    # A = 11^T / T: A^ = r I + (1 - r) A, and A^n = r^n I + (1 - r^n) A
    t, r, n = 6, 0.5, 3
    uniform = np.full((t, t), 1 / t)
    expected = r ** n * np.eye(t) + (1 - r ** n) * uniform
    assert np.allclose(rollout(_stack([uniform] * n), residual=r)[0].numpy(), expected)


def test_head_fusion_then_row_normalisation():
    a = torch.tensor([[[[0.9, 0.1], [0.2, 0.8]], [[0.3, 0.7], [0.6, 0.4]]]], dtype=torch.float64)  # [1, 2, 2, 2]
    for fusion, fused in (("mean", a.mean(1)), ("max", a.amax(1)), ("min", a.amin(1))):
        m = 0.5 * torch.eye(2, dtype=torch.float64) + 0.5 * fused
        assert torch.allclose(rollout([a], head_fusion=fusion), m / m.sum(-1, keepdim=True))


def test_rollout_is_the_product_in_block_order():
    rng = np.random.default_rng(0)
    mats = [m / m.sum(-1, keepdims=True) for m in rng.random((3, 5, 5))]
    hat = [0.5 * np.eye(5) + 0.5 * m for m in mats]
    assert np.allclose(rollout(_stack(mats))[0].numpy(), hat[2] @ hat[1] @ hat[0])


def test_flow_matches_networkx_on_random_attention():
    rng = np.random.default_rng(1)
    t, n = 6, 3
    mats = [m / m.sum(-1, keepdims=True) for m in rng.random((n, t, t))]
    ours = attention_flow(_stack(mats, heads=2))[0].numpy()
    graph = nx.DiGraph()
    for level, m in enumerate(mats):
        hat = 0.5 * np.eye(t) + 0.5 * m
        for i in range(t):
            for j in range(t):
                graph.add_edge((level + 1, i), (level, j), capacity=float(hat[i, j]))
    theirs = np.array([nx.maximum_flow_value(graph, (n, 0), (0, j)) for j in range(t)])
    assert np.abs(ours - theirs).max() < 1e-7


def test_rollout_and_flow_check_their_input():
    good = _stack([np.eye(3)])
    with pytest.raises(TypeError, match="list of"):
        rollout(good[0])
    with pytest.raises(ValueError, match="residual"):
        rollout(good, residual=1.0)
    with pytest.raises(ValueError, match="head_fusion"):
        rollout(good, head_fusion="sum")
    with pytest.raises(ValueError, match=r"attentions\[1\]"):
        rollout(good + _stack([np.eye(4)]))
    with pytest.raises(ValueError, match="non-negative"):
        attention_flow([-good[0]])


# ---- token maps and Grad-CAM on tokens ----

def test_token_map_lays_tokens_out_row_major():
    rows = torch.zeros(1, 5)
    rows[0, 2] = 1.0  # the second patch: top right on a 2x2 grid
    m = token_map(rows, 2, size=4)
    assert m.shape == (1, 1, 4, 4) and m[0, 0, :2, 2:].eq(1).all() and m.sum() == 4
    with pytest.raises(ValueError, match="a 3x3 grid needs 1 \\+ 9 = 10"):
        token_map(rows, 3)
    with pytest.raises(ValueError, match="grid must be"):
        token_map(rows, (2, 0))


def test_tokens_to_grid_drops_cls_and_keeps_channels():
    tokens = torch.arange(2 * 5 * 3.0).view(2, 5, 3)
    grid = tokens_to_grid(tokens)
    assert grid.shape == (2, 3, 2, 2) and torch.equal(grid[:, :, 0, 1], tokens[:, 2])
    with pytest.raises(ValueError, match="square grid"):
        tokens_to_grid(torch.zeros(1, 7, 3))


def test_last_block_patch_tokens_get_no_gradient(vit, x):
    _, grad = layer_activation_and_gradient(vit, x, torch.tensor([0, 1, 2]), "blocks.3", reshape=tokens_to_grid)
    assert grad.abs().max() == 0  # the head reads the CLS token only
    _, grad = layer_activation_and_gradient(vit, x, torch.tensor([0, 1, 2]), "blocks.3.norm1", reshape=tokens_to_grid)
    assert grad.abs().max() > 0


def test_grad_cam_on_tokens_matches_torchcam_exactly(vit, x):
    from torchcam.methods import GradCAM

    t = [0, 4, 6]
    ours = grad_cam(vit, x, t, vit.blocks[-1].norm1, upsample=False, reshape=tokens_to_grid)
    with GradCAM(vit, target_layer=vit.blocks[-1].norm1, reshape_transform=tokens_to_grid) as extractor:
        theirs = extractor(t, vit(x), normalized=False)[0]
    assert torch.allclose(ours[:, 0], theirs, atol=1e-7)
    assert count_hooks(vit) == 0


def test_grad_cam_on_tokens_matches_pytorch_grad_cam(vit, x):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    t = [0, 4, 6]
    ours = grad_cam(vit, x, t, vit.blocks[-1].norm1, reshape=tokens_to_grid)  # bilinear, as cv2.resize
    with GradCAM(vit, [vit.blocks[-1].norm1], reshape_transform=tokens_to_grid) as cam:
        theirs = torch.as_tensor(cam(x, targets=[ClassifierOutputTarget(c) for c in t]))
    flat = ours.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    assert torch.allclose(((flat - lo) / (hi - lo)).view(3, 64, 64), theirs, atol=1e-5)
    assert count_hooks(vit) == 0


# ---- relevance ----

def _relevance_unfused(model, x, target):
    """Chefer's rule through timm's own unfused attention (probabilities hooked at attn_drop)."""
    with attention.unfused_attention(model) as probs:
        out = model(x.clone().requires_grad_(True))
        grads = torch.autograd.grad(out[range(len(x)), target].sum(), probs)
    return attention.relevance_rule(probs, grads)[:, 0, 1:].reshape(-1, 8, 8)


def test_relevance_matches_the_rule_through_timms_unfused_path(vit, x):
    t = torch.tensor([4, 1, 6])
    ours = relevance(vit, x, t, mode="nearest")
    assert ours.shape == (3, 1, 64, 64)
    theirs = _relevance_unfused(vit, x, t)
    assert torch.allclose(ours[:, 0, ::8, ::8], theirs.detach(), atol=1e-6, rtol=1e-4)


def test_relevance_is_class_specific_and_batched(vit, x):
    a, b = relevance(vit, x, 0), relevance(vit, x, 4)
    assert (a - b).abs().max() > 1e-4
    single = torch.cat([relevance(vit, x[i:i + 1], 4) for i in range(3)])
    assert torch.allclose(b, single, atol=1e-6)


def test_relevance_leaves_no_trace(vit, x):
    vit.zero_grad(set_to_none=True)  # the libraries' backward passes above filled .grad
    before = x.clone()
    relevance(vit, x, 2)
    assert torch.equal(x, before) and count_hooks(vit) == 0 and not vit.training
    assert all(p.grad is None for p in vit.parameters())
    with pytest.raises(ValueError, match="out of range"):
        relevance(vit, x, 7)
    with pytest.raises(ValueError, match="x must be"):
        relevance(vit, x[0], 2)
    assert count_hooks(vit) == 0


# ---- ViTs the course did not build: other heads, no CLS token, wrappers, float64 ----

def _small_timm_vit(**kwargs):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3,
                             **kwargs).eval()


@pytest.fixture(scope="module")
def avg_vit():
    return _small_timm_vit(global_pool="avg")


@pytest.fixture(scope="module")
def timm_tiny_avg():
    import timm
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=64, global_pool="avg", num_classes=3).eval()


def test_an_average_pooled_head_never_reads_the_cls_token(avg_vit):
    """The pattern: with global_pool="avg" the score's gradient at the last block's CLS output is 0."""
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = {}
    handle = avg_vit.blocks[-1].register_forward_hook(lambda m, i, o: out.setdefault("tokens", o))
    try:
        score = avg_vit(x)[:, 0].sum()
    finally:
        handle.remove()
    grad = torch.autograd.grad(score, out["tokens"])[0]
    assert grad[:, 0].abs().max() == 0 and grad[:, 1:].abs().max() > 0


@pytest.mark.parametrize("fixture, size", [("avg_vit", 32), ("timm_tiny_avg", 64)])
def test_relevance_refuses_a_head_that_does_not_read_the_cls_token(request, fixture, size):
    model = request.getfixturevalue(fixture)
    with pytest.raises(ValueError, match=r"global_pool='avg'.*never reads the CLS token"):
        relevance(model, torch.rand(1, 3, size, size), 0)
    assert count_hooks(model) == 0


def test_relevance_refuses_a_vit_without_a_cls_token():
    model = _small_timm_vit(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="no CLS token"):
        relevance(model, torch.rand(1, 3, 32, 32), 0)


def test_tokens_to_grid_and_token_map_take_the_prefix_tokens():
    """No CLS token (class_token=False), one, or one and four registers: the patch tokens are the last h*w."""
    patches = torch.rand(2, 16, 5)
    expected = patches.transpose(1, 2).reshape(2, 5, 4, 4)
    assert torch.equal(tokens_to_grid(patches, prefix=0), expected)
    assert torch.equal(tokens_to_grid(torch.cat([torch.rand(2, 1, 5), patches], 1)), expected)
    assert torch.equal(tokens_to_grid(torch.cat([torch.rand(2, 5, 5), patches], 1), prefix=5), expected)
    with pytest.raises(ValueError, match=r"15 patch tokens \(after 1 prefix tokens\).*prefix="):
        tokens_to_grid(patches)
    rows = torch.rand(2, 16)
    assert torch.equal(token_map(rows, 4, size=4, prefix=0)[:, 0], rows.view(2, 4, 4))
    with pytest.raises(ValueError, match="needs 1 \\+ 16 = 17"):
        token_map(rows, 4)


def test_grad_cam_on_the_tokens_of_a_vit_without_cls_token():
    model = _small_timm_vit(class_token=False, global_pool="avg")
    cam = grad_cam(model, torch.rand(2, 3, 32, 32), 1, model.blocks[-1].norm1, upsample=False,
                   reshape=lambda t: tokens_to_grid(t, prefix=model.num_prefix_tokens))
    assert cam.shape == (2, 1, 4, 4) and cam.abs().max() > 0 and count_hooks(model) == 0


class _Wrapper(nn.Module):
    """What DistributedDataParallel and many training scripts leave: the ViT under ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


@pytest.fixture(scope="module", params=["DermViT", "timm_vit_tiny"])
def any_vit(request, vit):
    """The course's DermViT (a timm subclass) and timm's own vit_tiny at 64 px (random weights)."""
    if request.param == "DermViT":
        return vit
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10).eval()


@pytest.fixture(scope="module")
def plain_results(any_vit, x):
    return attention_maps(any_vit, x[:2]), relevance(any_vit, x[:2], 3)


@pytest.mark.parametrize("wrap", [nn.DataParallel, _Wrapper], ids=["DataParallel", "module-wrapper"])
def test_the_attention_helpers_unwrap_a_module_wrapped_vit(any_vit, x, wrap, plain_results):
    x = x[:2]
    wrapped = wrap(any_vit).eval()
    maps, rel = plain_results
    assert len(maps) == len(any_vit.blocks)
    assert all(torch.equal(a, b) for a, b in zip(attention_maps(wrapped, x), maps, strict=True))
    assert torch.equal(relevance(wrapped, x, 3), rel)
    assert max(verify_attention(wrapped, x)) < 1e-5
    with record_attention(wrapped, layers=0) as rec, torch.no_grad():
        wrapped(x)
    assert len(rec.attentions) == 1 and count_hooks(wrapped) == 0


def test_relevance_of_a_float64_vit_stays_float64(x):
    torch.manual_seed(0)
    model = DermViT().eval().double()
    r = relevance(model, x.double(), 2)
    assert r.dtype == torch.float64 and count_hooks(model) == 0
    assert torch.allclose(r, relevance(model.float(), x, 2).double(), atol=1e-5)


@pytest.mark.parametrize("method", [attention_maps, verify_attention, lambda m, x: relevance(m, x, 0)],
                         ids=["attention_maps", "verify_attention", "relevance"])
def test_non_finite_images_are_refused(vit, x, method):
    bad = x.clone()
    bad[1, 2, 3, 4] = float("inf")
    with pytest.raises(ValueError, match=r"x holds 1 NaN or inf values \(in images \[1\]\)"):
        method(vit, bad)
    assert count_hooks(vit) == 0


def test_relevance_refuses_non_finite_scores(x):
    torch.manual_seed(0)
    model = DermViT().eval()
    with torch.no_grad():
        model.head.bias[2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf scores"):
        relevance(model, x, 2)
    assert count_hooks(model) == 0 and all(p.grad is None for p in model.parameters())

