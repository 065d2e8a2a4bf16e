"""The helpers stay right on the models people use: torchvision's, with their in-place ops, heads
that are not CAM-shaped, aliases and NumPy targets. Each test reproduces one pattern on a small
hand-built model and, where the pattern comes from torchvision, on the torchvision model itself
(random weights, 64 px)."""

import warnings

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import GuidedGradCam, LayerGradCam
from contract_checks import seeded as _seeded
from torch import nn

from helpers.cam import cam, grad_cam, grad_cam_pp, guided_grad_cam
from helpers.gradients import saliency
from helpers.hooks import capture, count_hooks, resolve_layer
from helpers.perturbation import exact_shapley, kernel_shap


def _captum_grad_cam(model, layer, x, target):
    return LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)


class InPlaceAfter(nn.Module):
    """conv -> ReLU(inplace) -> global average pooling -> fc: the conv's output is overwritten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


# 1. Grad-CAM at a layer whose output is later modified in place -----------------------------

def test_grad_cam_at_a_layer_overwritten_in_place():
    model = _seeded(InPlaceAfter)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = grad_cam(model, x, 1, "conv", upsample=False)
    theirs = _captum_grad_cam(model, model.conv, x, 1)
    assert ours.abs().max() > 0
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert count_hooks(model) == 0


@pytest.mark.parametrize("name, layer", [("resnet18", "layer4.1.bn2"), ("vgg11", "features.18"),
                                         ("mobilenet", "features.12.1")])
def test_grad_cam_matches_captum_on_torchvision_in_place_layers(request, images, name, layer):
    model = request.getfixturevalue(name)
    module = resolve_layer(model, layer)
    ours = grad_cam(model, images, 3, layer, upsample=False)
    theirs = _captum_grad_cam(model, module, images, 3)
    scale = theirs.abs().max()
    assert scale > 0
    assert (ours - theirs).abs().max() <= 1e-5 * scale
    assert count_hooks(model) == 0


def test_grad_cam_pp_is_not_empty_after_an_in_place_relu(vgg11, images):
    assert grad_cam_pp(vgg11, images, 3, "features.18").flatten(1).amax(1).min() > 0


def test_guided_grad_cam_matches_captum_on_resnet18(resnet18, images):
    ours = guided_grad_cam(resnet18, images, 3, "layer4.1.bn2")
    theirs = GuidedGradCam(resnet18, resnet18.layer4[1].bn2).attribute(images, target=3)
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()
    assert count_hooks(resnet18) == 0


def test_capture_gives_the_layers_own_gradient_after_in_place_ops():
    model = _seeded(InPlaceAfter)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with capture(model, "conv") as rec:
        out = model(x)
        (by_output,) = torch.autograd.grad(out[:, 2].sum(), rec.output, retain_graph=True)
        out[:, 2].sum().backward()
    pre = model.conv(x)  # d out / d conv output = fc weight / (h w), masked where the ReLU is off
    expected = (model.fc.weight[2] / 64).view(1, -1, 1, 1) * (pre > 0)
    assert torch.allclose(by_output, expected, atol=1e-7)
    assert torch.allclose(rec.gradient, expected, atol=1e-7)
    assert torch.allclose(rec.activation, pre.detach())
    model.zero_grad(set_to_none=True)


# 2. CAM with a layer/fc pair that is not global average pooling -> linear --------------------

def test_cam_refuses_a_head_that_is_not_gap_then_linear(mobilenet, images):
    with pytest.raises(ValueError, match="classifier.0.*outputs.*grad_cam"):
        cam(mobilenet, images, 1, layer="features.12", fc="classifier.0")
    vit = _seeded(torchvision.models.VisionTransformer, image_size=64, patch_size=16, num_layers=1,
                  num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5)
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero (every logit 0)
    with pytest.raises(ValueError, match="global average pooling.*grad_cam"):
        cam(vit, images, 1, layer="conv_proj", fc="heads.head")
    assert count_hooks(mobilenet) == 0 and count_hooks(vit) == 0


def test_cam_still_works_on_resnet18(resnet18, images):
    maps = cam(resnet18, images, 4, layer="layer4", fc="fc", upsample=False)
    with torch.no_grad():
        logits = resnet18(images)[:, 4]
    assert torch.allclose(maps.mean((1, 2, 3)) + resnet18.fc.bias[4], logits, atol=1e-4)


# 3. A module called twice in one forward pass --------------------------------------------------

class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


def test_capture_refuses_a_module_that_runs_twice():
    model = _seeded(Twice)
    with pytest.raises(ValueError, match="ran 2 times"):
        grad_cam(model, torch.rand(1, 3, 8, 8), 0, "conv")
    assert count_hooks(model) == 0


# 4. A module registered under two names --------------------------------------------------------

class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.layer4 = inner.layer4  # an alias, as wrappers often keep

    def forward(self, x):
        return self.inner(x)


def test_an_aliased_module_resolves_under_either_name(resnet18, images):
    wrapped = Wrapper(resnet18).eval()
    assert resolve_layer(wrapped, "layer4") is resnet18.layer4
    assert torch.allclose(grad_cam(wrapped, images, 2, "layer4"), grad_cam(resnet18, images, 2, "layer4"))


# 5. kernel_shap with one or two segments ------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2])
def test_kernel_shap_with_one_or_two_segments_is_exact(resnet18, images, k):
    seg = torch.zeros(1, 64, 64, dtype=torch.long)
    seg[:, :, 32:] = k - 1
    ks = kernel_shap(resnet18, images[:1], 3, seg, n_samples=50)
    ex = exact_shapley(resnet18, images[:1], 3, seg)
    assert ks.shape == (1, k) and torch.isfinite(ks).all()
    assert torch.allclose(ks, ex, atol=1e-6)


# 6. float64 input, 7. NumPy targets, 8. short error messages ---------------------------------

def test_float64_input_gets_a_clear_error(resnet18, images):
    with pytest.raises(TypeError, match="x is torch.float64 but the model's parameters are torch.float32"):
        saliency(resnet18, images.double(), 1)


def test_numpy_integer_targets(resnet18, images):
    a = grad_cam(resnet18, images, np.int64(1))
    assert torch.equal(a, grad_cam(resnet18, images, 1))
    scores = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert torch.equal(grad_cam(resnet18, images, np.argmax(scores, 1)), grad_cam(resnet18, images, [1, 0]))
    assert torch.equal(saliency(resnet18, images, np.argmax([0.2, 0.7])), saliency(resnet18, images, 1))


def test_error_messages_suggest_names_and_stay_short(mobilenet):
    with pytest.raises(ValueError, match="closest names: features.12.1") as err:
        resolve_layer(mobilenet, "features.12.11")
    assert len(str(err.value)) < 300
    with pytest.raises(ValueError, match="a Conv2d") as err:
        resolve_layer(mobilenet, nn.Conv2d(1, 1, 1))
    assert len(str(err.value)) < 300


# Grad-CAM++ and Score-CAM against pytorch-grad-cam ----------------------------------------------

def _their_map(weights, act):
    return torch.relu((torch.as_tensor(weights)[:, :, None, None] * act).sum(1, keepdim=True))


def _minmax(m):
    flat = m.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    return ((flat - lo[:, None]) / (hi - lo)[:, None]).view_as(m)


def test_grad_cam_pp_differs_from_pytorch_grad_cam_only_by_its_epsilon(resnet18, images):
    """pytorch-grad-cam adds eps = 1e-6 to alpha's denominator 2 g^2 + sum(A) g^3. Here |g| ~ 5e-3,
    so 2 g^2 ~ 5e-5 and eps moves alpha by ~2% (the maps by ~5e-3); on an ImageNet resnet18 at
    224 px, |g| ~ 4e-4 gives 2 g^2 ~ 3e-7 < eps, and the maps differ by up to 0.06. Ours is the
    paper's closed form, with no eps. The paper's formula plus their eps gives their weights;
    gradients 1000x larger (eps negligible) give our map."""
    from pytorch_grad_cam import GradCAMPlusPlus

    from helpers.cam import layer_activation_and_gradient

    t = torch.tensor([3, 3])
    act, grad = layer_activation_and_gradient(resnet18, images, t, "layer4")
    with GradCAMPlusPlus(resnet18, [resnet18.layer4]) as gpp:  # the with block removes its hooks
        theirs_w = gpp.get_cam_weights(images, None, None, act.numpy(), grad.numpy())
    ours = grad_cam_pp(resnet18, images, t, "layer4", upsample=False)
    gap = (_minmax(ours) - _minmax(_their_map(theirs_w, act))).abs().max()
    assert gap > 1e-3  # the difference from pytorch-grad-cam is real...
    g2, g3 = grad.double() ** 2, grad.double() ** 3
    a = act.double()
    alpha = torch.where(grad != 0, g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g3 + 1e-6), 0)
    with_eps = (alpha * grad.double().clamp_min(0)).sum((2, 3))
    assert torch.allclose(with_eps, torch.as_tensor(theirs_w).double(), rtol=1e-4, atol=1e-12)  # ...and is eps

    scaled = Wrapper(resnet18).eval()  # the same network with logits 1000x larger: gradients 1000x larger
    scaled.forward = lambda x: 1000 * resnet18(x)
    act_s, grad_s = layer_activation_and_gradient(scaled, images, t, "layer4")
    with GradCAMPlusPlus(scaled, [resnet18.layer4]) as gpp:
        theirs_s = gpp.get_cam_weights(images, None, None, act_s.numpy(), grad_s.numpy())
    ours_s = grad_cam_pp(scaled, images, t, "layer4", upsample=False)
    assert (_minmax(ours_s) - _minmax(_their_map(theirs_s, act_s))).abs().max() < 1e-5
    assert count_hooks(resnet18) == 0


def test_score_cam_matches_pytorch_grad_cam_with_their_recipe(resnet18, images):
    """Their Score-CAM: masks from activations upsampled with align_corners=True
    (nn.UpsamplingBilinear2d), each scored by the target function, weights = softmax over channels
    of those scores. With a log-softmax target, softmax_k(log p_c(x * H_k)) = p_c / sum_k p_c: our
    weights without the baseline subtraction, up to a positive factor that min-max normalisation
    removes."""
    from pytorch_grad_cam import ScoreCAM

    t, images = torch.tensor([5]), images[:1]  # layer3: 256 masked images to score
    with capture(resnet18, "layer3") as rec, torch.no_grad():
        resnet18(images)
    act = rec.activation
    targets = [lambda o, c=int(c): torch.log_softmax(o, -1)[c] for c in t]
    import tqdm

    tqdm_init = tqdm.tqdm.__init__
    tqdm.tqdm.__init__ = lambda self, *a, **k: tqdm_init(self, *a, **{**k, "disable": True})
    try:
        with ScoreCAM(resnet18, [resnet18.layer3]) as sc:
            sc.batch_size = 64
            theirs_w = sc.get_cam_weights(images, resnet18.layer3, targets, act.numpy(), None)
    finally:
        tqdm.tqdm.__init__ = tqdm_init
    assert count_hooks(resnet18) == 0
    from helpers.cam import score_cam

    ours = score_cam(resnet18, images, t, "layer3", upsample=False, subtract_baseline=False, align_corners=True)
    assert (_minmax(ours) - _minmax(_their_map(theirs_w, act))).abs().max() < 1e-5
    default = score_cam(resnet18, images, t, "layer3", upsample=False, subtract_baseline=False)
    assert not torch.allclose(_minmax(default), _minmax(ours), atol=1e-5)  # the choice matters


# ================================================================================================
# The matrix: every public method on the models learners bring
# ================================================================================================
# resnet18 (in-place ReLUs used twice per block), densenet121 (concatenation, functional ReLU),
# convnext_tiny (LayerNorm, GELU, layer scale) and a timm ViT (tokens, no ReLU), random weights,
# two 64-px images. Each cell is one of: parity with the reference library, "runs" (right shape,
# finite), or a clear error. After every call: no hook, no parameter .grad, no changed mode,
# requires_grad, weight, buffer or input.

import timm  # noqa: E402
from captum.attr import (  # noqa: E402
    Deconvolution,
    GradientShap,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    LayerActivation,
    Lime,
    NeuronDeconvolution,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from captum.metrics import infidelity as captum_infidelity  # noqa: E402
from captum.metrics import sensitivity_max as captum_sensitivity_max  # noqa: E402

from helpers import attention as A  # noqa: E402
from helpers import cam as CAM  # noqa: E402
from helpers import concepts as C  # noqa: E402
from helpers import deconv as D  # noqa: E402
from helpers import evaluation as E  # noqa: E402
from helpers import featurevis as FV  # noqa: E402
from helpers import gradients as G  # noqa: E402
from helpers import perturbation as P  # noqa: E402
from helpers import sae as S  # noqa: E402
from helpers import sanity as SN  # noqa: E402

MATRIX_MODELS = {  # name: (factory, the CAM layer, a unit layer, a small Score-CAM layer)
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), "layer4", "layer3", "layer4"),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=10), "features.norm5",
                    "features.denseblock3", "features.transition2"),
    "convnext_tiny": (lambda: torchvision.models.convnext_tiny(num_classes=10), "features.7", "features.5",
                      "features.4"),
    # the ViT's last block feeds only its CLS token to the head: its patch tokens get no gradient,
    # so Grad-CAM reads the block before it
    "vit": (lambda: timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10), "blocks.10",
            "blocks.5", None),
}


class Setup:
    def __init__(self, name):
        factory, self.layer, self.unit, self.score_layer = MATRIX_MODELS[name]
        torch.manual_seed(0)
        self.name, self.model = name, factory().eval()
        self.vit = name == "vit"
        self.x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        self.t = torch.tensor([3, 7])
        self.snapshot = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.flags = {n: p.requires_grad for n, p in self.model.named_parameters()}
        self.x_before = self.x.clone()

    def assert_untouched(self):
        m = self.model
        assert count_hooks(m) == 0, "a hook was left behind"
        assert not m.training and all(not mm.training for mm in m.modules()), "the mode changed"
        assert all(p.grad is None for p in m.parameters()), "a parameter .grad was left behind"
        assert {n: p.requires_grad for n, p in m.named_parameters()} == self.flags, "requires_grad changed"
        changed = [k for k, v in m.state_dict().items() if not torch.equal(v, self.snapshot[k])]
        assert not changed, f"weights or buffers changed: {changed[:5]}"
        assert torch.equal(self.x, self.x_before) and not self.x.requires_grad, "the input changed"


@pytest.fixture(scope="module", params=list(MATRIX_MODELS))
def setup(request):
    return Setup(request.param)


def _close(ours, theirs, rel=1e-5):
    ours, theirs = torch.as_tensor(ours).double(), torch.as_tensor(theirs).double()
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = theirs.abs().max()
    assert scale > 0, "the reference is all zero: the comparison would prove nothing"
    gap = (ours - theirs).abs().max() / scale
    assert gap <= rel, f"{gap:.2e} of the reference's scale"


def _runs(out, like=None):
    out = out if isinstance(out, torch.Tensor) else torch.as_tensor(out)
    assert torch.isfinite(out).all()
    if like is not None:
        assert out.shape == like


def _segments(s):
    seg = torch.zeros(64, 64, dtype=torch.long)
    seg[32:] += 1
    seg[:, 32:] += 2
    return seg


# ---- pixel attributions: every model -------------------------------------------------------------

def test_matrix_saliency_and_gradient_x_input(setup):
    s = setup
    _close(G.saliency(s.model, s.x, s.t), Saliency(s.model).attribute(s.x, target=s.t))
    _close(G.gradient_x_input(s.model, s.x, s.t), InputXGradient(s.model).attribute(s.x, target=s.t))
    s.assert_untouched()


def test_matrix_smoothgrad(setup):
    s = setup
    xi, ti = s.x[:1], s.t[:1]
    torch.manual_seed(7)
    ours = G.smoothgrad(s.model, xi, ti, n_samples=4, noise_level=0.1)
    torch.manual_seed(7)
    theirs = NoiseTunnel(Saliency(s.model)).attribute(xi, nt_type="smoothgrad", nt_samples=4, target=ti, abs=False,
                                                      stdevs=0.1 * (xi.max() - xi.min()).item())
    _close(ours, theirs)
    s.assert_untouched()


def test_matrix_integrated_gradients(setup):
    s = setup
    ours = G.integrated_gradients(s.model, s.x, s.t, steps=4, rule="captum_trapezoid")
    theirs = IntegratedGradients(s.model).attribute(s.x, target=s.t, n_steps=4, method="riemann_trapezoid")
    _close(ours, theirs)
    s.assert_untouched()


def test_matrix_occlusion(setup):
    s = setup
    ours = P.occlusion(s.model, s.x, s.t, window=32, stride=32, channels_last=False)
    theirs = Occlusion(s.model).attribute(s.x, target=s.t, sliding_window_shapes=(3, 32, 32), strides=(3, 32, 32))
    _close(ours, theirs[:, :1])  # one map; Captum repeats it on every channel
    assert torch.equal(theirs[:, :1].expand_as(theirs), theirs)
    s.assert_untouched()


def test_matrix_lime_kernel_shap_exact_shapley(setup):
    s = setup
    x, t, seg = s.x[:1], s.t[:1], _segments(s)
    torch.manual_seed(5)
    theirs = Lime(s.model).attribute(x, target=t, feature_mask=seg[None, None], n_samples=30,
                                     perturbations_per_eval=30, return_input_shape=False)
    ours = P.lime(s.model, x, t, seg, n_samples=30, seed=5, sampler="captum", distance="input",
                  surrogate="lasso", kernel_width=1.0, hide_color=0.0)
    if theirs.abs().max() > 0:  # Lasso may zero every coefficient on a random network
        _close(ours.values, theirs, rel=1e-4)
    torch.manual_seed(7)
    theirs = KernelShap(s.model).attribute(x, target=t, feature_mask=seg[None, None], n_samples=40,
                                           perturbations_per_eval=40, return_input_shape=False)[0]
    _close(P.kernel_shap(s.model, x, t, seg, n_samples=40, seed=7)[0], theirs, rel=1e-4)
    halves = (seg >= 2).long()  # two segments: the two endpoints and two coalitions decide it exactly
    _close(P.kernel_shap(s.model, x, t, halves, n_samples=20), P.exact_shapley(s.model, x, t, halves), rel=1e-4)
    s.assert_untouched()


def test_matrix_expected_gradients(setup):
    s = setup
    background = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    draws = P.gradient_shap_draws("captum", 2, 4, len(background), seed=11)
    np.random.seed(11)
    theirs = GradientShap(s.model).attribute(s.x, background, target=s.t, n_samples=4)
    _close(P.expected_gradients(s.model, s.x, s.t, background, draws=draws, batch_size=8), theirs)
    s.assert_untouched()


# ---- the CAM family ------------------------------------------------------------------------------

def test_matrix_grad_cam(setup):
    s = setup
    module = resolve_layer(s.model, s.layer)
    if s.vit:
        with pytest.raises(ValueError, match="tokens_to_grid"):
            CAM.grad_cam(s.model, s.x, s.t, s.layer)
        ours = CAM.grad_cam(s.model, s.x, s.t, s.layer, upsample=False, reshape=A.tokens_to_grid)
        assert ours.shape == (2, 1, 4, 4) and ours.abs().max() > 0
        with pytest.raises(ValueError, match="tokens_to_grid"):
            CAM.grad_cam_pp(s.model, s.x, s.t, s.layer)
        pp = CAM.grad_cam_pp(s.model, s.x, s.t, s.layer, upsample=False, reshape=A.tokens_to_grid)
        _runs(pp, (2, 1, 4, 4))
        assert (pp.flatten(1).amax(1) > 0).all()  # a map for each image, not an empty one
    else:
        ours = CAM.grad_cam(s.model, s.x, s.t, s.layer, upsample=False)
        _close(ours, _captum_grad_cam(s.model, module, s.x, s.t))
        _runs(CAM.grad_cam_pp(s.model, s.x, s.t, s.layer), (2, 1, 64, 64))
    s.assert_untouched()


def test_matrix_cam_where_the_head_allows_it(setup):
    s = setup
    fc = {"resnet18": "fc", "densenet121": "classifier", "convnext_tiny": "classifier.2", "vit": "head"}[s.name]
    if s.name == "resnet18":
        maps = CAM.cam(s.model, s.x, s.t, s.layer, fc, upsample=False)
        with torch.no_grad():
            logits = s.model(s.x).gather(1, s.t[:, None])[:, 0]
        assert torch.allclose(maps.mean((1, 2, 3)) + s.model.fc.bias[s.t], logits, atol=1e-4)
    else:  # densenet: a ReLU between norm5 and the pooling; convnext: a LayerNorm; ViT: tokens
        with pytest.raises(ValueError, match="grad_cam|tokens_to_grid"):
            CAM.cam(s.model, s.x, s.t, s.layer, fc)
    s.assert_untouched()


def test_matrix_score_cam(setup):
    s = setup
    if s.vit:
        with pytest.raises(ValueError, match="tokens_to_grid|feature map"):
            CAM.score_cam(s.model, s.x[:1], s.t[:1], s.layer)
    else:
        _runs(CAM.score_cam(s.model, s.x[:1], s.t[:1], s.score_layer, batch_size=256), (1, 1, 64, 64))
    s.assert_untouched()


# ---- the ReLU rules ------------------------------------------------------------------------------

def test_matrix_guided_backprop_and_deconvnet(setup):
    s = setup
    if s.name in ("vit", "convnext_tiny"):  # GELU only: no nn.ReLU to override, and the error says so
        for method in (CAM.guided_backprop, D.deconvnet, lambda m, x, t: CAM.guided_grad_cam(m, x, t, s.layer),
                       lambda m, x, t: D.unit_projection(m, x, s.unit, 2, 0, 0),
                       lambda m, x, t: D.unit_projection(m, x, s.unit, 2, 0, 0, rule="guided")):
            with pytest.raises(ValueError, match="has none.*GELU"):
                method(s.model, s.x, s.t)
        s.assert_untouched()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # densenet's functional relu and convnext's GELU are named in a warning
        _close(CAM.guided_backprop(s.model, s.x, s.t), GuidedBackprop(s.model).attribute(s.x, target=s.t))
        _close(D.deconvnet(s.model, s.x, s.t), Deconvolution(s.model).attribute(s.x, target=s.t))
        layer = resolve_layer(s.model, s.layer)
        _close(CAM.guided_grad_cam(s.model, s.x, s.t, s.layer),
               GuidedGradCam(s.model, layer).attribute(s.x, target=s.t))
        # one unit per image: channel 2 where it is largest (positive, so that dividing by it below
        # commutes with the deconvnet's rectification of the signal)
        with capture(s.model, s.unit) as rec, torch.no_grad():
            s.model(s.x)
        where = rec.activation[:, 2].flatten(1).argmax(1)
        ys, xs = where // rec.activation.shape[-1], where % rec.activation.shape[-1]
        b = torch.arange(2)
        a = rec.activation[b, 2, ys, xs]
        assert (a > 0).all()
        ours = D.unit_projection(s.model, s.x, s.unit, 2, ys, xs)
        theirs = NeuronDeconvolution(s.model, resolve_layer(s.model, s.unit)).attribute(
            s.x, neuron_selector=lambda out: out[b, 2, ys, xs])
        _close(ours / a.view(-1, 1, 1, 1), theirs)  # ours starts from the unit's activation, Captum's from 1
    s.assert_untouched()


def test_matrix_guided_backprop_warns_about_what_it_cannot_override(setup):
    s = setup
    if s.name != "densenet121":  # resnet18: nn.ReLU only; convnext and the ViT: refused above
        return
    with pytest.warns(UserWarning, match="functional relu called 1 time outside an nn.ReLU module"):
        CAM.guided_backprop(s.model, s.x, s.t)
    s.assert_untouched()


def test_matrix_zeiler_fergus_refuses_what_it_cannot_walk(setup):
    s = setup
    with pytest.raises(TypeError, match="unit_projection"):
        D.zeiler_fergus(s.model, s.x, s.unit, 0, 0, 0)
    s.assert_untouched()


# ---- inside the network: feature visualization, concepts, SAEs -----------------------------------

def test_matrix_feature_visualization(setup):
    s = setup
    index, ys, xs, values = FV.top_activating(s.model, s.unit, 2, s.x, k=2)
    assert set(index.tolist()) <= {0, 1} and len(set(index.tolist())) == 2
    assert values[0] >= values[1]
    with capture(s.model, s.unit) as rec, torch.no_grad():
        s.model(s.x)
    act = rec.activation
    per_image = act[..., 2].flatten(1).amax(1) if s.vit else act[:, 2].flatten(1).amax(1)
    assert torch.allclose(values, per_image[index])
    if not s.vit:
        box = FV.receptive_field(s.model, s.unit, 0, 0)
        assert box[0] == 0 and box[1] == 0 and 0 < box[2] <= 64 and 0 < box[3] <= 64
    out = FV.visualize(s.model, FV.channel(s.unit, 2), steps=2)
    images = out[0] if isinstance(out, tuple) else getattr(out, "images", out)
    _runs(images)
    s.assert_untouched()


def test_matrix_concepts(setup):
    s = setup
    module = resolve_layer(s.model, s.unit)
    ours = C.layer_activations(s.model, s.unit, s.x)
    theirs = LayerActivation(s.model, module).attribute(s.x)
    _close(ours, theirs.flatten(1))
    grads = C.layer_gradients(s.model, s.unit, s.x, s.t)[s.unit][1]
    with capture(s.model, s.unit) as rec:
        s.model(s.x).gather(1, s.t[:, None]).sum().backward()
    s.model.zero_grad(set_to_none=True)
    _close(grads, rec.gradient.flatten(1))
    cav = torch.randn(ours.shape[1], generator=torch.Generator().manual_seed(0))
    score = C.tcav_score(s.model, s.unit, cav, s.x, s.t)
    assert score == float(((grads @ cav) > 0).float().mean())
    s.assert_untouched()


def test_matrix_sparse_autoencoder(setup):
    s = setup
    acts = S.layer_vectors(s.model, s.x, s.unit)
    sae = S.TopKSAE(acts.shape[1], 16, k=2)
    S.train_sae(sae, acts, steps=3, batch_size=8, progress=False)
    _runs(S.latent_codes(sae, acts))
    s.assert_untouched()


# ---- sanity checks and evaluation ----------------------------------------------------------------

def test_matrix_randomized_changes_every_parameter_it_should(setup):
    """On a copy with "trained" values (every parameter moved off its initial value, as training
    moves BatchNorm's weight of 1 and layer scale's 1e-6), every parameter inside the randomized
    layer must change and every one outside must not."""
    import copy

    s = setup
    trained = copy.deepcopy(s.model)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 + 0.01 * torch.rand(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    before = {n: p.clone() for n, p in trained.named_parameters()}
    rand = SN.randomized(trained, [s.unit], cascade=False, seed=0)
    assert all(torch.equal(p, before[n]) for n, p in trained.named_parameters())  # the caller's model
    for n, p in rand.named_parameters():
        if n.startswith(s.unit + "."):
            assert not torch.equal(p, before[n]), f"{n} kept its trained value"
        else:
            assert torch.equal(p, before[n]), f"{n} changed outside the randomized layer"
    s.assert_untouched()


def test_matrix_evaluation_metrics(setup):
    s = setup
    attr = G.saliency(s.model, s.x, s.t)
    for metric in (E.deletion, E.insertion, E.road):
        _runs(metric(s.model, s.x, s.t, attr, steps=3).scores)
    _runs(E.faithfulness_correlation(s.model, s.x, s.t, attr, n_runs=4, subset_size=64))
    perturb = E.noise_perturbation(0.01)
    ours = E.infidelity(s.model, s.x, s.t, attr, perturb, n_samples=3, seed=0, channels_last=False)
    torch.manual_seed(0)
    theirs = captum_infidelity(s.model, perturb, s.x, attr, target=s.t, n_perturb_samples=3)
    assert theirs.abs().min() > 0 and torch.equal(ours, theirs)  # "Captum's numbers bit for bit", as documented
    fast = E.infidelity(s.model, s.x, s.t, attr, perturb, n_samples=3, seed=0)  # channels-last: round-off only
    _close(fast, theirs, rel=2e-3)
    ours = E.sensitivity_max(G.saliency, s.model, s.x, s.t, radius=0.02, n_samples=3, seed=0)
    torch.manual_seed(0)
    theirs = captum_sensitivity_max(lambda inputs, target: Saliency(s.model).attribute(inputs, target=target),
                                    s.x, perturb_radius=0.02, n_perturb_samples=3, target=s.t)
    _close(ours, theirs, rel=1e-4)
    s.assert_untouched()


# ---- attention: the ViT, and a clear error elsewhere ---------------------------------------------

def test_matrix_attention(setup):
    s = setup
    if not s.vit:
        for call in (lambda: A.attention_maps(s.model, s.x), lambda: A.relevance(s.model, s.x, s.t)):
            with pytest.raises((ValueError, TypeError), match="ViT|blocks|transformer|attention"):
                call()
        s.assert_untouched()
        return
    gaps = A.verify_attention(s.model, s.x)  # against timm's slow path, block by block
    assert max(gaps) < 1e-5
    maps = A.attention_maps(s.model, s.x)
    _runs(A.rollout(maps))
    _runs(A.relevance(s.model, s.x, s.t), (2, 1, 64, 64))
    s.assert_untouched()



# ---- concepts: CAVs, TCAV with its t-test, relative TCAV; Captum's TCAV as the reference ----------

def _tcav_sets():
    """A concept set (a red square on dim noise), two random sets and the class images, 4 images each."""
    g = torch.Generator().manual_seed(21)
    concept = 0.5 * torch.rand(4, 3, 64, 64, generator=g)
    concept[:, 0, 16:48, 16:48] = 1.0
    randoms = [torch.rand(4, 3, 64, 64, generator=g) for _ in range(2)]
    return concept, randoms, torch.rand(4, 3, 64, 64, generator=g)


def test_matrix_tcav(setup, tmp_path, monkeypatch):
    s = setup
    concept, randoms, images = _tcav_sets()
    acts = [C.layer_activations(s.model, s.unit, z) for z in (concept, *randoms)]
    cav, accuracy = C.train_cav(acts[0], acts[1], seed=0)
    assert cav.shape == acts[0].shape[1:] and abs(float(cav.norm()) - 1) < 1e-5 and 0 <= accuracy <= 1
    out = C.tcav_test(s.model, s.unit, concept, randoms, images, 3)
    s.assert_untouched()
    for i in range(2):  # CAV i: concept vs random set i, held-out split seed + i; the null's: random i vs i + 1
        assert torch.allclose(out["cavs"][i], C.train_cav(acts[0], acts[1 + i], seed=i)[0], atol=1e-4)
        assert torch.allclose(out["random_cavs"][i], C.train_cav(acts[1 + i], acts[2 - i], seed=i)[0], atol=1e-4)
    grads = C.layer_gradients(s.model, s.unit, images, 3)[s.unit][1]
    sens = grads @ out["cavs"].T
    assert torch.equal(out["scores"], (sens > 0).float().mean(0))  # the share of positive sensitivities
    assert torch.equal(out["random_scores"], ((grads @ out["random_cavs"].T) > 0).float().mean(0))
    assert out["p_value"] == C.significance(out["scores"], out["random_scores"])["p_value"]
    rel = C.relative_tcav(s.model, s.unit, concept, randoms[0], images, 3, seeds=range(2))
    s.assert_untouched()
    for i in range(2):  # concept vs random set 0 with split i: tcav_test's first CAV, another split
        v = C.train_cav(acts[0], acts[1], seed=i)[0]
        assert float(rel["scores"][i]) == float(((grads @ v) > 0).float().mean())
    # Captum's TCAV, given our CAVs, counts the same images and weighs them the same (on resnet18 and
    # the ViT: a token layer; densenet and convnext add ~1 s for the same code path)
    if s.name not in ("resnet18", "vit"):
        return
    monkeypatch.chdir(tmp_path)  # Captum must write nothing into the working directory
    sets = {"concept": concept, "random_0": randoms[0], "random_1": randoms[1]}
    pairs = [("concept", "random_0"), ("concept", "random_1")]
    theirs = C.captum_reference(s.model, s.unit, sets, pairs, images, 3,
                                cavs={p: out["cavs"][i] for i, p in enumerate(pairs)})
    for i, p in enumerate(pairs):
        assert theirs[p]["sign_count"] == float(out["scores"][i])
        # "magnitude": the mean sensitivity, as Captum's code computes it (its docstring gives another formula)
        assert abs(theirs[p]["magnitude"] - float(sens[:, i].mean())) <= 1e-4 * float(sens[:, i].abs().mean())
    import os

    assert os.listdir(tmp_path) == []
    s.assert_untouched()


# ---- SAEs inside the model: splice, ablate, direct effect, the probe, the metrics ----------------

_SAES = {}


def _sae(s):
    """A TopK SAE (16 latents, k = 2) trained for 3 steps on the CAM layer's vectors, once per model."""
    if s.name not in _SAES:
        acts = S.layer_vectors(s.model, s.x, s.layer)
        scale = S.norm_scale(acts)
        sae = S.TopKSAE(acts.shape[1], 16, k=2)
        sae.act_scale.fill_(scale)
        S.train_sae(sae, S.normalize(acts, scale), steps=3, batch_size=8, layer=s.layer, progress=False)
        _SAES[s.name] = acts, sae
    return _SAES[s.name]


def _vectors(fmap):
    """One vector per position, (image, row, column) order, or per token: as layer_vectors documents."""
    return fmap.reshape(-1, fmap.shape[-1]) if fmap.dim() == 3 else fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


def test_matrix_sae_editing(setup):
    s = setup
    acts, sae = _sae(s)
    xn = acts * sae.act_scale
    with capture(s.model, s.layer) as rec, torch.no_grad():
        plain = s.model(s.x)
    _close(acts, _vectors(rec.activation))  # layer_vectors' order: image, row, column (or token)
    with torch.no_grad():
        codes = S.latent_codes(sae, xn)
        recon = sae.decode(codes) / sae.act_scale
    # splice: the layer's output, as the rest of the model sees it, is the reconstruction
    with S.splice(s.model, sae), capture(s.model, s.layer) as rec, torch.no_grad():
        spliced = s.model(s.x)
    _close(_vectors(rec.activation), recon)
    assert not torch.allclose(spliced, plain, rtol=1e-3, atol=1e-4)  # 3 steps reconstruct badly: it shows
    # ablating no latent changes nothing; ablating latent j removes f_j W_dec[j] and keeps the error
    with S.ablate_latents(s.model, sae, []), torch.no_grad():
        _close(s.model(s.x), plain, rel=1e-4)
    j = int(codes.sum(0).argmax())
    with S.ablate_latents(s.model, sae, [j]), capture(s.model, s.layer) as rec, torch.no_grad():
        ablated = s.model(s.x)
    _close(_vectors(rec.activation), acts - codes[:, j:j + 1] * sae.W_dec[j].detach() / sae.act_scale, rel=1e-4)
    s.assert_untouched()
    # downstream: the model's accuracy and the KL to the spliced model's outputs
    out = S.downstream(s.model, sae, s.x, s.t)
    p, q = plain.log_softmax(1), spliced.log_softmax(1)
    assert out["accuracy_model"] == float((plain.argmax(1) == s.t).float().mean())
    assert out["accuracy"] == float((spliced.argmax(1) == s.t).float().mean())
    assert abs(out["kl"] - float((p.exp() * (p - q)).sum(1).mean())) <= 1e-4 * (1 + out["kl"]) and out["kl"] > 0
    # LatentProbe: the model's logits, and the latents as a map (or as tokens) a hook can read
    probe = S.LatentProbe(s.model, sae)
    with capture(probe, "latents") as rec, torch.no_grad():
        assert torch.equal(probe(s.x), plain)
    lat = rec.activation
    want = codes.view(2, -1, 16) if s.vit else codes.view(2, *lat.shape[2:], 16).permute(0, 3, 1, 2)
    assert lat.shape == want.shape and torch.allclose(lat, want, atol=1e-5)
    assert count_hooks(probe) == 0
    # evaluate: L0, the normalised MSE and the variance explained, dead latents
    metrics = S.evaluate(sae, xn)
    with torch.no_grad():
        nmse = float((xn - sae(xn)).double().pow(2).sum() / (xn - xn.mean(0)).double().pow(2).sum())
    assert metrics["l0"] == float((codes > 0).sum(1).double().mean()) and 0 < metrics["l0"] <= 2
    assert abs(metrics["nmse"] - nmse) <= 1e-5 * nmse and abs(metrics["fve"] - (1 - nmse)) <= 1e-5
    assert metrics["dead"] == float(((codes > 0).sum(0) == 0).double().mean())
    if s.name == "resnet18":  # layer4 -> global average pooling -> fc: the direct effect is exact
        effect = S.direct_effect(s.model, sae, 3, "fc", x=s.x)
        change = plain[:, 3] - ablated[:, 3]  # ablating latent j removes its direct effect, times its mean
        _close(change, effect[j] * codes[:, j].view(2, -1).mean(1), rel=1e-4)
    s.assert_untouched()


_HEADS = {"resnet18": "fc", "densenet121": "classifier", "convnext_tiny": "classifier.2", "vit": "head"}


def test_matrix_direct_effect_refuses_a_head_that_is_not_gap_then_linear(setup):
    """densenet (a ReLU after norm5), convnext (a LayerNorm before the head) and the ViT (the CLS
    token, after 2 more blocks) do not read the layer through global average pooling alone."""
    s = setup
    if s.name == "resnet18":  # its direct effect is checked against the model above
        return
    _, sae = _sae(s)
    try:
        with pytest.raises(ValueError, match="global average pooling"):
            S.direct_effect(s.model, sae, 3, _HEADS[s.name], x=s.x)
        with pytest.raises(ValueError, match="pass x="):  # not a DermNet: no probe to assume
            S.direct_effect(s.model, sae, 3, _HEADS[s.name])
    finally:
        s.assert_untouched()


# ---- Adebayo et al.'s randomization test ---------------------------------------------------------

def test_matrix_randomization_test(setup):
    s = setup
    methods = {"saliency": G.saliency}
    head = _HEADS[s.name]  # one step, the head (re-initializing a whole stage of convnext costs seconds)
    out = SN.randomization_test(s.model, methods, s.x, s.t, steps=[head], seed=0)
    s.assert_untouched()
    assert set(out["maps"]) == {"original", head}
    original = G.saliency(s.model, s.x, s.t)
    assert torch.equal(out["maps"]["original"]["saliency"], original)
    randomized = G.saliency(SN.randomized(s.model, head, cascade=True, seed=0), s.x, s.t)
    assert torch.equal(out["maps"][head]["saliency"], randomized)
    assert not torch.allclose(randomized, original)
    want = SN.similarities(original, randomized)
    got = out["similarity"][head]["saliency"]
    assert set(got) == set(want) and all(torch.equal(torch.as_tensor(got[k]), torch.as_tensor(want[k])) for k in want)
    s.assert_untouched()


# ---- feature visualization: the other objectives --------------------------------------------------

def test_matrix_visualize_neuron_direction_class_logit(setup):
    """One Adam step from visualize's seeded start, and the objective's value at the image it
    reaches, measured by hand: visualize's history after two steps."""
    s = setup
    with capture(s.model, s.unit) as rec, torch.no_grad():
        s.model(s.x[:1])
    shape = rec.activation.shape  # [1, T, C] for the ViT, [1, C, h, w] for the CNNs
    v = torch.randn(shape[-1] if s.vit else shape[1], generator=torch.Generator().manual_seed(4))
    y = shape[1] // 2 if s.vit else shape[2] // 2  # the ViT: token y (x = 0); the CNNs: the middle of the grid

    def by_hand(img, which):
        with capture(s.model, s.unit) as rec, torch.no_grad():
            logits = s.model(img)
        a = rec.activation
        if which == "neuron":
            return a[:, y, 2] if s.vit else a[:, 2, y, y]
        if which == "direction":
            u = v / v.norm()
            return (a @ u).mean(1) if s.vit else torch.einsum("bchw,c->bhw", a, u).flatten(1).mean(1)
        return logits[:, 3]

    objectives = {"neuron": FV.neuron(s.unit, 2, y, 0 if s.vit else y), "direction": FV.direction(s.unit, v),
                  "class_logit": FV.class_logit(3)}
    for which, objective in objectives.items():
        one = FV.visualize(s.model, objective, steps=1, transforms=None)
        _runs(one, (1, 3, 64, 64))
        _, history = FV.visualize(s.model, objective, steps=2, transforms=None, return_history=True)
        assert len(history) == 2
        _close(history[1], by_hand(one, which)[0], rel=1e-4)
    s.assert_untouched()


# ---- attention: recording, timm's slow path, flow ------------------------------------------------

def _flow_by_networkx(maps, image, residual=0.5):
    """Attention flow from its definition: max-flow from the top CLS node to each bottom token."""
    import networkx as nx

    g, t = nx.DiGraph(), maps[0].shape[-1]
    for level, a in enumerate(maps):
        fused = residual * torch.eye(t, dtype=torch.float64) + (1 - residual) * a[image].double().mean(0)
        fused = fused / fused.sum(-1, keepdim=True)
        for i in range(t):
            for j in range(t):
                g.add_edge((level + 1, i), (level, j), capacity=float(fused[i, j]))
    return torch.tensor([nx.maximum_flow_value(g, (len(maps), 0), (0, j)) for j in range(t)], dtype=torch.float64)


def test_matrix_attention_recording_and_flow(setup):
    s = setup
    if not s.vit:
        for call in (lambda: A.record_attention(s.model).__enter__(), lambda: A.unfused_attention(s.model).__enter__()):
            with pytest.raises(TypeError, match="no transformer blocks: expected a timm VisionTransformer"):
                call()
        s.assert_untouched()
        return
    with torch.no_grad():
        plain = s.model(s.x)
    with A.record_attention(s.model) as rec, torch.no_grad():
        hooked = s.model(s.x)
    assert torch.equal(hooked, plain)  # the model ran untouched
    maps = A.attention_maps(s.model, s.x)
    assert len(rec.attentions) == len(maps) == 12
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(rec.attentions, maps))
    with A.unfused_attention(s.model) as probs, torch.no_grad():
        slow = s.model(s.x)
    _close(slow, plain, rel=1e-5)
    assert len(probs) == 12 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(probs, maps))
    assert all(b.attn.fused_attn for b in s.model.blocks)  # switched back
    flow = A.attention_flow(maps)
    assert flow.shape == (2, 17)
    assert torch.allclose(flow[0].cpu(), _flow_by_networkx(maps, 0), atol=1e-6)
    s.assert_untouched()


# ---- non-finite input and non-finite scores ------------------------------------------------------

class NaNScores(nn.Module):
    """The wrapped model's scores, with NaN for every image (as a diverged network gives)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * float("nan")


def _finite_methods(layer="layer4", unit="layer3"):
    seg = torch.zeros(64, 64, dtype=torch.long)
    seg[:, 32:] = 1
    return {
        "saliency": lambda m, x: G.saliency(m, x, 1),
        "smoothgrad": lambda m, x: G.smoothgrad(m, x, 1, n_samples=2),
        "integrated_gradients": lambda m, x: G.integrated_gradients(m, x, 1, steps=2),
        "grad_cam": lambda m, x: CAM.grad_cam(m, x, 1, layer),
        "cam": lambda m, x: CAM.cam(m, x, 1, layer, "fc"),
        "guided_backprop": lambda m, x: CAM.guided_backprop(m, x, 1),
        "deconvnet": lambda m, x: D.deconvnet(m, x, 1),
        "occlusion": lambda m, x: P.occlusion(m, x, 1, window=32, stride=32),
        "lime": lambda m, x: P.lime(m, x[:1], 1, seg, n_samples=10),
        "kernel_shap": lambda m, x: P.kernel_shap(m, x[:1], 1, seg, n_samples=10),
        "tcav_score": lambda m, x: C.tcav_score(m, unit, torch.ones(256 * 4 * 4), x, 1),
        "deletion": lambda m, x: E.deletion(m, x, 1, torch.rand_like(x[:, :1]), steps=2),
    }


@pytest.mark.parametrize("method", list(_finite_methods()))
def test_non_finite_input_is_refused_by_name(resnet18, images, method):
    x = images.clone()
    x[0, 0, 5, 5] = float("inf")
    with pytest.raises(ValueError, match=r"(x|images) holds 1 NaN or inf values \(in images \[0\]\)"):
        _finite_methods()[method](resnet18, x)
    assert count_hooks(resnet18) == 0 and all(p.grad is None for p in resnet18.parameters())


@pytest.mark.parametrize("method", list(_finite_methods()))
def test_non_finite_scores_are_refused(resnet18, images, method):
    """With NaN logits, saliency and SmoothGrad returned finite maps, guided backprop zeros and
    tcav_score 1.0; CAM, LIME and KernelSHAP crashed deep inside."""
    model = NaNScores(resnet18).eval()
    model.fc = resnet18.fc  # CAM reads the head by name
    model.layer3, model.layer4 = resnet18.layer3, resnet18.layer4
    with pytest.raises(ValueError, match="NaN or inf scores"):
        _finite_methods()[method](model, images)
    assert count_hooks(resnet18) == 0 and all(p.grad is None for p in resnet18.parameters())


def _nan_bias_net():
    """conv -> ReLU -> max-pool -> conv -> ReLU -> pooling -> fc, the first conv's bias NaN in one channel."""
    net = _seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten(), nn.Linear(4, 3)))
    with torch.no_grad():
        net[0].bias[0] = float("nan")
    return net


_LAYER_METHODS = {  # the methods that read a layer's output and returned NaN from a NaN bias below it
    "unit_projection": lambda m, layer, x: D.unit_projection(m, x, layer, 0, 1, 1),
    "zeiler_fergus": lambda m, layer, x: D.zeiler_fergus(m, x, layer, 0, 1, 1),
    "layer_activations": lambda m, layer, x: C.layer_activations(m, layer, x),
    "layer_vectors": lambda m, layer, x: S.layer_vectors(m, x, layer),
}


@pytest.mark.parametrize("method", list(_LAYER_METHODS))
def test_a_non_finite_layer_output_is_refused(resnet18, images, method):
    """With a NaN bias below the layer (finite images), these returned NaN maps and activations
    without a word; they refuse, as top_activating does, and name the images."""
    import copy

    call = _LAYER_METHODS[method]
    broken = copy.deepcopy(resnet18)
    with torch.no_grad():
        broken.bn1.bias[0] = float("nan")

    def stem(m):  # zeiler_fergus walks nn.Sequential models: resnet18's own stem, as one
        return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool).eval()

    if method == "zeiler_fergus":
        cases = [(_nan_bias_net(), "3", "3"), (stem(broken), "3", "3")]
        healthy = stem(resnet18)
    else:
        cases = [(_nan_bias_net(), "3", "3"), (broken, "layer3", "layer3")]
        healthy = resnet18
    for model, layer, name in cases:
        with pytest.raises(ValueError, match=rf"layer '{name}' returned NaN or inf activations for images \[0, 1\]"):
            call(model, layer, images)
        assert count_hooks(model) == 0 and all(p.grad is None for p in model.parameters())
        assert all("forward" not in vars(m) for m in model.modules())  # relu_rule put every ReLU back
    assert torch.isfinite(call(healthy, cases[1][1], images)).all()  # the intact model is not refused
