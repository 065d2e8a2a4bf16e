"""helpers.sanity: randomized copies, the four similarity measures, the randomization test."""

import numpy as np
import pytest
import torch
from torch import nn

from helpers.gradients import saliency
from helpers.hooks import count_hooks
from helpers.metrics import rank_correlation
from helpers.models import DermNet
from helpers.sanity import as_map, cascade_steps, hog_similarity, randomization_test, randomized, similarities, ssim


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return DermNet().eval()


def _changed(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sorted({k.split(".")[0] for k in sa if not torch.equal(sa[k], sb[k]) and "num_batches" not in k})


def test_cascade_reinitializes_from_the_output_down_and_leaves_the_original_alone(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    out = randomized(net, "layer3")
    assert _changed(net, out) == ["fc", "layer3", "layer4"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random state is untouched
    assert out is not net and not out.training and count_hooks(out) == count_hooks(net)


def test_independent_randomization_touches_only_the_named_layers(net):
    assert _changed(net, randomized(net, ["layer2", "fc"], cascade=False)) == ["fc", "layer2"]
    assert _changed(net, randomized(net, "layer4.0.conv1", cascade=False)) == ["layer4"]


def test_a_layer_gets_the_same_weights_at_every_step_and_seed_matters(net):
    a, b = randomized(net, "fc"), randomized(net, "layer2")
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert torch.equal(randomized(net, "layer4", cascade=False).layer4[0].conv1.weight, b.layer4[0].conv1.weight)
    assert not torch.equal(randomized(net, "fc", seed=1).fc.weight, a.fc.weight)
    # re-initialized as the constructor does: BatchNorm back to identity statistics
    assert torch.equal(b.layer2[0].bn1.running_var, torch.ones(32))


# ---- every parameter of a randomized module is re-initialized, on models the course did not build ----

class _ScaledBranch(nn.Module):
    """A residual branch scaled by a parameter the block holds itself (torchvision's CNBlock.layer_scale)."""

    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.layer_scale = nn.Parameter(torch.full((d,), 1e-6))


class _TinyViT(nn.Module):
    """The ViT patterns: tokens held by the model itself, nn.MultiheadAttention, a layer scale."""

    def __init__(self, d=8):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 8, 8)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, d))
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.block = _ScaledBranch(d)
        self.head = nn.Linear(d, 3)


def _trained(model):
    """A stand-in for training: every parameter moved away from any value an initialization gives."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 + torch.rand(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def tiny_vit():
    return _trained(_TinyViT())


@pytest.fixture(scope="module")
def tv_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    return _trained(ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=3))


@pytest.fixture(scope="module")
def tv_vit():
    from torchvision.models import VisionTransformer
    return _trained(VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16,
                                      mlp_dim=32, num_classes=3))


@pytest.fixture(scope="module")
def timm_vit():
    import timm
    return _trained(timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=3))


def _assert_randomizes_exactly(model, layers, inside, cascade=True):
    """Every parameter inside the re-initialized modules changes, every other one does not, and the
    caller's model is left as it was (compared by name)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = randomized(model, layers, cascade=cascade)
    assert out is not model
    assert [n for n, p in model.named_parameters() if not torch.equal(p, before[n])] == []
    new = dict(out.named_parameters())
    changed = sorted(n for n in before if not torch.equal(new[n], before[n]))
    assert changed == sorted(n for n in before if inside(n))


@pytest.mark.parametrize("layers, cascade, inside", [
    ("embed", True, lambda n: True),  # the whole cascade: the model's own cls_token and pos_embed too
    ("attn", True, lambda n: n.startswith(("attn.", "block.", "head."))),
    ("block", False, lambda n: n.startswith("block.")),
])
def test_randomized_reaches_every_parameter_of_a_hand_built_vit(tiny_vit, layers, cascade, inside):
    _assert_randomizes_exactly(tiny_vit, layers, inside, cascade)


@pytest.mark.parametrize("layers, cascade, inside", [
    ("features", True, lambda n: True),
    ("features.3", True, lambda n: n.startswith(("features.3.", "classifier."))),
    ("features.1.0", False, lambda n: n.startswith("features.1.0.")),  # a CNBlock: its layer_scale too
])
def test_randomized_reaches_every_parameter_of_torchvisions_convnext(tv_convnext, layers, cascade, inside):
    _assert_randomizes_exactly(tv_convnext, layers, inside, cascade)


@pytest.mark.parametrize("layers, cascade, inside", [
    ("conv_proj", True, lambda n: True),  # class_token (the model's own) and encoder.pos_embedding too
    ("encoder", True, lambda n: not n.startswith("conv_proj.") and n != "class_token"),
    ("encoder.layers.encoder_layer_0", False, lambda n: n.startswith("encoder.layers.encoder_layer_0.")),
])
def test_randomized_reaches_every_parameter_of_torchvisions_vit(tv_vit, layers, cascade, inside):
    _assert_randomizes_exactly(tv_vit, layers, inside, cascade)


@pytest.mark.parametrize("layers, cascade, inside", [
    ("patch_embed", True, lambda n: True),  # cls_token and pos_embed too
    ("blocks", True, lambda n: not n.startswith("patch_embed.") and n not in ("cls_token", "pos_embed")),
    ("blocks.0", False, lambda n: n.startswith("blocks.0.")),
])
def test_randomized_reaches_every_parameter_of_timms_vit(timm_vit, layers, cascade, inside):
    _assert_randomizes_exactly(timm_vit, layers, inside, cascade)


def test_randomized_refuses_parameters_it_cannot_reinitialize_and_names_them():
    class Tempered(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.temperature = nn.Parameter(torch.ones(()))

    model = nn.Sequential(nn.Linear(4, 4), Tempered()).eval()
    with pytest.raises(ValueError, match=r"'1\.temperature'"):
        randomized(model, "0")
    assert _changed(model, randomized(model, "1.fc", cascade=False)) == ["1"]  # a module without it is fine


def test_randomized_takes_modules_and_names_a_stranger_in_one_line(net):
    assert torch.equal(randomized(net, net.fc).fc.weight, randomized(net, "fc").fc.weight)
    with pytest.raises(ValueError, match="not a module of the model") as err:
        randomized(net, [nn.Sequential(nn.Linear(2, 2), nn.ReLU())])
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_randomization_test_refuses_non_finite_images(net):
    x = torch.rand(2, 3, 32, 32)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x holds 1 NaN"):
        randomization_test(net, {"identity": lambda m, x, t: x.clone()}, x, 0, steps=["fc"])


def test_cascade_steps_of_dermnet(net):
    assert cascade_steps(net) == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]


@pytest.mark.parametrize("layers, match", [("layer9", "not a module"), ([], "at least one"), ([3], "not a module")])
def test_randomized_rejects_bad_layers(net, layers, match):
    with pytest.raises(ValueError, match=match):
        randomized(net, layers)


def test_randomized_rejects_a_non_module():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        randomized("DermNet", "fc")


def test_ssim_and_hog_against_scikit_image_directly():
    from skimage.feature import hog
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g)
    b[0] = a[0] * 5 + 2  # an affine copy: identical after scaling to [0, 1]
    s, h = ssim(a, b), hog_similarity(a, b)
    assert s[0] == pytest.approx(1.0) and h[0] == pytest.approx(1.0)
    for i in (1, 2):
        x, y = a[i].double().numpy(), b[i].double().numpy()
        x, y = (x - x.min()) / (x.max() - x.min()), (y - y.min()) / (y.max() - y.min())
        assert s[i] == pytest.approx(structural_similarity(x, y, data_range=1.0), abs=1e-12)
        hx, hy = (hog(m, pixels_per_cell=(8, 8), cells_per_block=(2, 2)) for m in (x, y))
        assert h[i] == pytest.approx(np.corrcoef(hx, hy)[0, 1], abs=1e-12)
    assert torch.isnan(hog_similarity(torch.zeros(1, 32, 32), a[:1]))[0]


def test_similarities_are_the_paper_measures():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    sims = similarities(a, b)
    assert set(sims) == {"Spearman (abs)", "Spearman (signed)", "SSIM", "HOG"}
    assert torch.allclose(sims["Spearman (abs)"], rank_correlation(a.abs().sum(1), b.abs().sum(1)))
    assert torch.allclose(sims["Spearman (signed)"], rank_correlation(a.sum(1), b.sum(1)))
    same = similarities(a, a)
    assert all(torch.allclose(v, torch.ones(2, dtype=v.dtype)) for v in same.values())
    assert torch.allclose(similarities(a, -a)["Spearman (signed)"], -torch.ones(2))


@pytest.mark.parametrize("bad", [torch.zeros(2, 16, 16), "map"])
def test_as_map_and_similarities_reject_bad_shapes(bad):
    with pytest.raises(ValueError, match="attr must be"):
        as_map(bad)
    with pytest.raises(ValueError, match="a and b must be"):
        ssim(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9))
    with pytest.raises(ValueError, match="one shape"):
        similarities(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))


def test_randomization_test_falls_for_the_gradient_and_leaves_the_model_as_it_was(net):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = randomization_test(net, {"saliency": saliency}, x, 0, steps=["fc", "layer4", "conv1"])
    assert list(res["maps"]) == ["original", "fc", "layer4", "conv1"]
    assert list(res["similarity"]) == ["fc", "layer4", "conv1"]
    assert torch.equal(res["maps"]["original"]["saliency"], saliency(net, x, 0))
    # with every layer re-initialized the gradient is a different function's
    assert res["similarity"]["conv1"]["saliency"]["Spearman (abs)"].mean() < 0.5
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="methods must be"):
        randomization_test(net, {}, x, 0)


# ---- notebook 12's checkers ----

def _solution(model, layer):
    import copy
    out = copy.deepcopy(model)
    names = [name for name, _ in out.named_children()]
    for name in names[names.index(layer):]:
        for module in getattr(out, name).modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return out


def _reset(model, layer, which="up"):
    names = [name for name, _ in model.named_children()]
    chosen = {"up": names[names.index(layer):], "only": [layer], "down": names[:names.index(layer) + 1]}[which]
    for name in chosen:
        for module in getattr(model, name).modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


def test_check_randomized_passes_the_solution_and_names_the_slips():
    import copy

    from helpers.exercises import check_randomized

    def scaffold(model, layer):
        raise NotImplementedError

    assert check_randomized(_solution).passed
    todo = check_randomized(scaffold)
    assert not todo.done and "not done yet" in todo.message
    assert "changed the caller's model" in check_randomized(_reset).message
    assert "only layer3 itself" in check_randomized(lambda m, layer: _reset(copy.deepcopy(m), layer, "only")).message
    assert "wrong way" in check_randomized(lambda m, layer: _reset(copy.deepcopy(m), layer, "down")).message
    assert "nothing was re-initialized" in check_randomized(lambda m, layer: copy.deepcopy(m)).message
    assert "expected a model" in check_randomized(lambda m, layer: None).message


def test_check_sanity_question_answers_from_the_data():
    from helpers.exercises import check_sanity_question

    assert check_sanity_question({"guided backprop"}).passed
    assert not check_sanity_question(set()).passed
    assert "answer with a set" in check_sanity_question({"LIME"}).message
