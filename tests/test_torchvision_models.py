"""The helpers stay right on the models people use: torchvision's, with their in-place ops, heads
that are not CAM-shaped, aliases and NumPy targets. Each test reproduces one pattern on a small
hand-built model and, where the pattern comes from torchvision, on the torchvision model itself
(random weights, 64 px)."""

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import GuidedGradCam, LayerGradCam
from torch import nn

from helpers.cam import cam, grad_cam, grad_cam_pp, guided_grad_cam
from helpers.gradients import saliency
from helpers.hooks import capture, count_hooks, resolve_layer
from helpers.perturbation import exact_shapley, kernel_shap


def _seeded(factory, **kwargs):
    torch.manual_seed(0)
    return factory(**kwargs).eval()


@pytest.fixture(scope="module")
def resnet18():
    return _seeded(torchvision.models.resnet18, num_classes=10)


@pytest.fixture(scope="module")
def vgg11():
    return _seeded(torchvision.models.vgg11, num_classes=10)


@pytest.fixture(scope="module")
def mobilenet():
    return _seeded(torchvision.models.mobilenet_v3_small, num_classes=10)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


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
