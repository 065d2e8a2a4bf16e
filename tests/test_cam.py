"""helpers.cam: parity with Captum, identities, hand-computed values, and no leaked hooks."""

import copy
import gc
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam
from contract_checks import assert_rejects_bad_input, run_without_side_effects
from torch import nn

from helpers.attention import tokens_to_grid
from helpers.cam import cam, grad_cam, grad_cam_pp, guided_backprop, guided_grad_cam, score_cam
from helpers.hooks import capture, count_hooks, resolve_layer

ATOL = 1e-6


def maxdiff(a, b):
    return (a - b).abs().max().item()


class Tiny(nn.Module):
    """conv -> ReLU -> GAP -> linear, small enough to compute by hand."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.relu(self.conv(x))), 1))


# ---- parity with Captum ----

@pytest.mark.parametrize("layer", ["layer4", "layer3", "layer2"])
def test_grad_cam_matches_captum(shortcut, batch, layer):
    x, t = batch
    module = dict(shortcut.named_modules())[layer]
    theirs = LayerGradCam(shortcut, module).attribute(x, target=t, relu_attributions=True)
    assert maxdiff(grad_cam(shortcut, x, t, layer, upsample=False), theirs) <= ATOL
    up = LayerAttribution.interpolate(theirs, x.shape[-2:], interpolate_mode="bilinear")
    assert maxdiff(grad_cam(shortcut, x, t, layer, mode="bilinear"), up) <= ATOL
    # Captum's default keeps the negative part
    theirs_raw = LayerGradCam(shortcut, module).attribute(x, target=t)
    assert maxdiff(grad_cam(shortcut, x, t, layer, relu=False, upsample=False), theirs_raw) <= ATOL
    assert (theirs_raw < 0).any()


def test_guided_backprop_matches_captum(shortcut, batch):
    x, t = batch
    assert maxdiff(guided_backprop(shortcut, x, t), GuidedBackprop(shortcut).attribute(x, target=t)) <= ATOL


def test_guided_grad_cam_matches_captum(shortcut, batch):
    x, t = batch
    theirs = GuidedGradCam(shortcut, shortcut.layer4).attribute(x, target=t)
    assert maxdiff(guided_grad_cam(shortcut, x, t, "layer4"), theirs) <= ATOL


# ---- identities ----

def test_cam_equals_grad_cam_times_grid_size_on_gap_linear(shortcut, batch):
    """With GAP then one linear layer, dS/dA_k(i,j) = W[c,k] / (h*w): Grad-CAM's weights are CAM's
    divided by h*w, so ReLU(CAM) = h*w * Grad-CAM, a positive constant."""
    x, t = batch
    c = cam(shortcut, x, t, upsample=False)
    g = grad_cam(shortcut, x, t, "layer4", relu=False, upsample=False)
    assert torch.allclose(c, g * 64, atol=1e-5)
    # the map's spatial mean plus the bias is the class score
    with torch.no_grad():
        scores = shortcut(x).gather(1, t[:, None])[:, 0]
    assert torch.allclose(c.mean((1, 2, 3)) + shortcut.fc.bias[t], scores, atol=1e-4)


def test_score_cam_weights_are_softmax_score_increases(shortcut, batch):
    x, t = batch
    x, t = x[:2], t[:2]
    maps, weights = score_cam(shortcut, x, t, batch_size=50, return_weights=True)
    assert weights.shape == (2, 128) and maps.shape == (2, 1, 64, 64)
    from helpers.hooks import capture
    with capture(shortcut, "layer4") as rec, torch.no_grad():
        shortcut(x)
    for b, k in [(0, 3), (1, 77)]:
        a = F.interpolate(rec.activation[b:b + 1, k:k + 1], size=(64, 64), mode="bilinear", align_corners=False)
        if a.max() == a.min():
            continue
        h = (a - a.min()) / (a.max() - a.min())
        with torch.no_grad():
            p = shortcut(x[b:b + 1] * h).softmax(1)[0, t[b]] - shortcut(torch.zeros(1, 3, 64, 64)).softmax(1)[0, t[b]]
        assert abs(weights[b, k].item() - p.item()) < 1e-6


def test_score_cam_batch_size_does_not_matter(shortcut, batch):
    x, t = batch
    a = score_cam(shortcut, x[:2], t[:2], batch_size=7)
    b = score_cam(shortcut, x[:2], t[:2], batch_size=256)
    assert maxdiff(a, b) <= 1e-5


# ---- hand-computed values on a tiny model ----

def test_cam_family_by_hand():
    model = Tiny().eval()
    x = torch.rand(1, 1, 4, 4)
    act = model.relu(model.conv(x)).detach()  # [1, 2, 4, 4]
    w = model.fc.weight.detach()[1]  # target class 1
    assert torch.allclose(cam(model, x, 1, layer="relu", upsample=False)[0, 0],
                          (w[:, None, None] * act[0]).sum(0), atol=1e-6)
    g = w / 16  # dS/dA = W / (h*w) everywhere
    expected = F.relu((g[:, None, None] * act[0]).sum(0))
    assert torch.allclose(grad_cam(model, x, 1, layer="relu", upsample=False)[0, 0], expected, atol=1e-6)
    # Grad-CAM++ with constant gradients g_k: a = g^2 / (2 g^2 + S_k g^3), w_k = 16 a relu(g)
    s = act[0].sum((1, 2))
    alpha = g ** 2 / (2 * g ** 2 + s * g ** 3)
    alpha = torch.where(2 * g ** 2 + s * g ** 3 != 0, alpha, torch.zeros_like(alpha))
    wpp = 16 * alpha * F.relu(g)
    expected_pp = F.relu((wpp[:, None, None] * act[0]).sum(0))
    assert torch.allclose(grad_cam_pp(model, x, 1, layer="relu", upsample=False)[0, 0], expected_pp, atol=1e-6)


def test_guided_relu_by_hand():
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
        model[2].weight.copy_(torch.tensor([[1.0, -2.0, 3.0]]))

    class Wrap(nn.Module):  # our methods want images: [B, 1, 1, 3]
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x.flatten(1))

    x = torch.tensor([1.0, 2.0, -1.0]).view(1, 1, 1, 3)
    # plain gradient [1, -2, 0]; guided: negative gradient stopped -> [1, 0, 0]
    assert guided_backprop(Wrap().eval(), x, 0).flatten().tolist() == [1.0, 0.0, 0.0]


# ---- the contract ----

METHODS = {
    "cam": lambda m, x, t: cam(m, x, t),
    "grad_cam": lambda m, x, t: grad_cam(m, x, t, "layer4"),
    "grad_cam_pp": lambda m, x, t: grad_cam_pp(m, x, t, "layer4"),
    "score_cam": lambda m, x, t: score_cam(m, x, t, "layer4", batch_size=64),
    "guided_backprop": lambda m, x, t: guided_backprop(m, x, t),
    "guided_grad_cam": lambda m, x, t: guided_grad_cam(m, x, t, "layer4"),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_shapes_and_no_side_effects(shortcut, batch, name):
    x, t = batch
    out = run_without_side_effects(METHODS[name], shortcut, x[:2].clone(), t[:2])
    assert out.shape == ((2, 3, 64, 64) if name.startswith("guided") else (2, 1, 64, 64))


@pytest.mark.parametrize("name", list(METHODS))
def test_bad_arguments(shortcut, batch, name):
    assert_rejects_bad_input(METHODS[name], shortcut, batch[0])


def test_layer_errors(shortcut, batch):
    x, t = batch
    with pytest.raises(ValueError, match="layer5.*closest names"):
        grad_cam(shortcut, x[:1], 0, "layer5")
    with pytest.raises(ValueError, match="not a module of the model"):
        grad_cam(shortcut, x[:1], 0, nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="4-D feature map"):
        grad_cam(shortcut, x[:1], 0, "fc")
    with pytest.raises(ValueError, match="4-D feature map"):
        score_cam(shortcut, x[:1], 0, "fc")
    with pytest.raises(ValueError, match="does not have the structure CAM needs"):
        cam(shortcut, x[:1], 0, layer="layer3")
    with pytest.raises(ValueError, match="fc='layer4' must name the final nn.Linear"):
        cam(shortcut, x[:1], 0, fc="layer4")
    with pytest.raises(ValueError, match="batch_size"):
        score_cam(shortcut, x[:1], 0, batch_size=0)
    assert count_hooks(shortcut) == 0


def test_guided_backprop_needs_relu_modules():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(2)).eval()
    model(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="nn.ReLU"):
        guided_backprop(model, torch.rand(1, 3, 8, 8), 0)


class RaisesAfterLayer(Tiny):
    def forward(self, x):
        self.relu(self.conv(x))
        raise RuntimeError("midway")


@pytest.mark.parametrize("name", list(METHODS))
def test_a_model_that_raises_midway_leaves_no_hooks(name):
    model = RaisesAfterLayer().eval()
    fn = {"cam": lambda: cam(model, torch.rand(1, 1, 4, 4), 0, layer="relu"),
          "grad_cam": lambda: grad_cam(model, torch.rand(1, 1, 4, 4), 0, layer="relu"),
          "grad_cam_pp": lambda: grad_cam_pp(model, torch.rand(1, 1, 4, 4), 0, layer="relu"),
          "score_cam": lambda: score_cam(model, torch.rand(1, 1, 4, 4), 0, layer="relu"),
          "guided_backprop": lambda: guided_backprop(model, torch.rand(1, 1, 4, 4), 0),
          "guided_grad_cam": lambda: guided_grad_cam(model, torch.rand(1, 1, 4, 4), 0, layer="relu")}[name]
    with pytest.raises(RuntimeError, match="midway"):
        fn()
    assert count_hooks(model) == 0


def _live_tensors():
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on some torch module objects warns
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("name", ["cam", "grad_cam", "grad_cam_pp", "score_cam", "guided_backprop", "guided_grad_cam"])
def test_a_thousand_calls_leave_no_hooks_and_no_tensors(name):
    model = Tiny().eval()
    x = torch.rand(2, 1, 6, 6)
    call = {"cam": lambda: cam(model, x, [0, 1], layer="relu"),
            "grad_cam": lambda: grad_cam(model, x, [0, 1], layer="relu"),
            "grad_cam_pp": lambda: grad_cam_pp(model, x, [0, 1], layer="relu"),
            "score_cam": lambda: score_cam(model, x, [0, 1], layer="relu"),
            "guided_backprop": lambda: guided_backprop(model, x, [0, 1]),
            "guided_grad_cam": lambda: guided_grad_cam(model, x, [0, 1], layer="relu")}[name]
    call()
    before = _live_tensors()
    for _ in range(1000):
        call()
    assert count_hooks(model) == 0
    assert _live_tensors() == before


def test_score_cam_logit_scores_match_pytorch_grad_cam(shortcut, batch):
    """pytorch-grad-cam's ScoreCAM: the masked inputs' class logits, softmaxed over the channels."""
    import contextlib
    import io

    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from helpers.cam import layer_activation_and_gradient

    x, t = batch[0][:2], batch[1][:2]
    _, w = score_cam(shortcut, x, t, subtract_baseline=False, align_corners=True, score="logit",
                     return_weights=True)
    act, _ = layer_activation_and_gradient(shortcut, x, t, "layer4")
    with ScoreCAM(shortcut, [shortcut.layer4]) as sc, contextlib.redirect_stderr(io.StringIO()):
        theirs = sc.get_cam_weights(x, None, [ClassifierOutputTarget(int(c)) for c in t], act.numpy(), None)
    assert (w.softmax(1) - torch.as_tensor(theirs)).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="score must be"):
        score_cam(shortcut, x, t, score="rank")


# ---- models a learner brings ----

@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


class ConstantChannel(nn.Module):
    """conv (stride 4) -> ReLU -> GAP -> linear, channel 0 a constant map (zero weights, a bias)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.relu = nn.Conv2d(3, 6, 3, stride=4, padding=1), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(6, 3)
        with torch.no_grad():
            self.conv.weight[0] = 0
            self.conv.bias[0] = 0.1234

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def _quiet_score_cam(model, layer, x, targets):
    """pytorch-grad-cam's ScoreCAM weights, its progress bar silenced."""
    import tqdm
    from pytorch_grad_cam import ScoreCAM

    with capture(model, layer) as rec, torch.no_grad():
        model(x)
    tqdm_init = tqdm.tqdm.__init__
    tqdm.tqdm.__init__ = lambda self, *a, **k: tqdm_init(self, *a, **{**k, "disable": True})
    try:
        with ScoreCAM(model, [resolve_layer(model, layer)]) as sc:
            return torch.as_tensor(sc.get_cam_weights(x, None, targets, rec.activation.numpy(), None))
    finally:
        tqdm.tqdm.__init__ = tqdm_init


def test_score_cam_gives_a_constant_channel_map_a_zero_mask(resnet18):
    """A map constant over the layer's grid says nothing about where: upsampled, it varies only by
    rounding (~1e-7), and stretching that to [0, 1] made a mask of noise. Every channel of a 1x1
    layer is constant: resnet18's layer4 at 32 px."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = ConstantChannel().eval()
    _, w = score_cam(model, x, [0, 2], "relu", return_weights=True)
    assert (w[:, 0] == 0).all() and (w[:, 1:] != 0).all()  # p_c(x * 0) - p_c(0) = 0
    _, w = score_cam(model, x, [0, 2], "pool", return_weights=True)  # a 1x1 layer: every channel constant
    assert (w == 0).all()
    _, w = score_cam(resnet18, x, [1, 2], "layer4", return_weights=True)
    assert (w == 0).all()
    # pytorch-grad-cam upsamples a 1x1 map exactly (align_corners=True), so it already gets zero masks
    _, w = score_cam(resnet18, x, [1, 2], "layer4", subtract_baseline=False, score="logit", return_weights=True)
    theirs = _quiet_score_cam(resnet18, "layer4", x, [lambda o, c=c: o[c] for c in (1, 2)])
    assert (w.softmax(1) - theirs).abs().max() <= 1e-6
    assert count_hooks(resnet18) == 0


class Tokens(nn.Module):
    """A ViT's pattern: patches -> tokens [B, 1 + h*w, C] (CLS first) -> a block -> mean -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch, self.block, self.head = nn.Conv2d(3, 8, 8, stride=8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        return self.head(F.gelu(self.block(tokens)).mean(1))


@pytest.mark.parametrize("name", ["tokens", "torchvision_vit"])
def test_a_token_layer_gets_told_about_tokens_to_grid(name):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    if name == "tokens":
        model, layer = Tokens().eval(), "block"
    else:  # torchvision's VisionTransformer, two small layers
        torch.manual_seed(0)
        model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                     hidden_dim=16, mlp_dim=32, num_classes=3).eval()
        layer = "encoder.layers.encoder_layer_0"
    head = "head" if name == "tokens" else "heads.head"
    for method in (grad_cam, grad_cam_pp, score_cam, lambda *a: cam(*a, fc=head)):
        with pytest.raises(ValueError, match="4-D feature map") as err:
            method(model, x, 1, layer)
        assert "reshape=helpers.attention.tokens_to_grid" in str(err.value) and len(str(err.value)) < 400
    for method in (grad_cam, grad_cam_pp, score_cam):  # the fix the message names works
        maps = method(model, x, 1, layer, reshape=tokens_to_grid)
        assert maps.shape == (2, 1, 32, 32) and torch.isfinite(maps).all()
    assert count_hooks(model) == 0


def test_errors_name_a_module_layer_in_one_line(resnet18):
    x = torch.rand(1, 3, 64, 64)
    checks = [
        (lambda: grad_cam(resnet18, x, 0, resnet18.fc), "layer 'fc' must output a 4-D"),
        (lambda: grad_cam_pp(resnet18, x, 0, resnet18.fc), "layer 'fc' must output a 4-D"),
        (lambda: score_cam(resnet18, x, 0, resnet18.fc), "layer 'fc' must output a 4-D"),
        (lambda: cam(resnet18, x, 0, layer=resnet18.fc), "layer 'fc' must output a 4-D"),
        (lambda: cam(resnet18, x, 0, layer=resnet18.layer3, fc=resnet18.fc), "channels to feed 'fc' directly"),
        (lambda: cam(resnet18, x, 0, fc=resnet18.layer4), "fc='layer4' must name"),
        (lambda: grad_cam(resnet18, x, 0, resnet18.layer1[0].relu), "'layer1.0.relu' ran 2 times"),
    ]
    for call, match in checks:
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert len(str(err.value)) < 300, str(err.value)
    assert count_hooks(resnet18) == 0


def test_dermnet_gets_no_warning(shortcut, batch):
    x, t = batch[0][:2], batch[1][:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guided_grad_cam(shortcut, x, t, "layer4")  # guided backprop and Grad-CAM


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_on_the_gpu(shortcut, batch):
    """Every tensor a method makes follows x's device: the GPU result is the CPU one (no TF32)."""
    gpu, x = copy.deepcopy(shortcut).cuda(), batch[0][:2]
    for name in METHODS:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            ours = METHODS[name](gpu, x.cuda(), [0, 1])
        on_cpu = METHODS[name](shortcut, x, [0, 1])
        assert ours.device.type == "cuda" and ours.dtype == x.dtype
        assert (ours.cpu() - on_cpu).abs().max() <= 1e-4 * on_cpu.abs().max(), name
