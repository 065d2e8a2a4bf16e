"""helpers.deconv: the three ReLU rules, the deconvnet (vs Captum), one unit projected by hand and by
autograd, the conditions under which the two agree, and transposed convolution by hand."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import Deconvolution, GuidedBackprop, NeuronDeconvolution, Saliency
from contract_checks import assert_rejects_bad_input, run_without_side_effects
from contract_checks import seeded as _seeded
from torch import nn

from helpers.cam import guided_backprop
from helpers.data import MEL
from helpers.deconv import (
    RULES,
    conv_transpose2d,
    deconvnet,
    relu_backward,
    relu_rule,
    rule_backprop,
    unit_projection,
    zeiler_fergus,
)
from helpers.exercises import check_conv_transpose, check_deconvnet_class_question
from helpers.hooks import capture, count_hooks

ATOL = 1e-6


def _plain_net(pool=None, seed=0, inplace=False):
    """conv -> relu -> max-pool -> conv -> relu -> conv -> relu: Zeiler & Fergus's kind of network."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace), pool or nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(inplace)).eval()


class SharedInPlaceReLU(nn.Module):
    """torchvision's BasicBlock pattern: one ReLU(inplace=True) called twice, and ``out += x``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv0, self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), \
            nn.Conv2d(4, 4, 3, padding=1)
        self.relu, self.pool, self.fc = nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Linear(4, 3)

    def forward(self, x):
        x = self.pool(self.relu(self.conv0(x)))
        out = self.conv2(self.relu(self.conv1(x)))
        out += x
        return self.fc(self.relu(out).mean((2, 3)))



def test_relu_backward_rules_by_hand():
    inp = torch.tensor([-1.0, 2.0, 3.0, -4.0])
    grad = torch.tensor([1.0, -1.0, 2.0, -3.0])
    assert relu_backward("gradient", inp, grad).tolist() == [0.0, -1.0, 2.0, 0.0]
    assert relu_backward("guided", inp, grad).tolist() == [0.0, 0.0, 2.0, 0.0]
    assert relu_backward("deconvnet", inp, grad).tolist() == [1.0, 0.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="rule must be one of"):
        relu_backward("lrp", inp, grad)


def test_deconvnet_matches_captum(shortcut, batch):
    x, t = batch
    assert (deconvnet(shortcut, x, t) - Deconvolution(shortcut).attribute(x.clone(), target=t)).abs().max() <= ATOL


def test_the_other_rules_match_saliency_and_guided_backprop(shortcut, batch):
    x, t = batch
    plain = Saliency(shortcut).attribute(x.clone(), target=t, abs=False)
    assert (rule_backprop(shortcut, x, t, "gradient") - plain).abs().max() <= ATOL
    guided = GuidedBackprop(shortcut).attribute(x.clone(), target=t)
    assert (rule_backprop(shortcut, x, t, "guided") - guided).abs().max() <= ATOL
    assert torch.equal(rule_backprop(shortcut, x, t, "guided"), guided_backprop(shortcut, x, t))


@pytest.mark.parametrize("layer", ["relu", "maxpool", "layer1", "layer2", "layer3", "layer4"])
def test_zeiler_fergus_by_hand_equals_autograd_on_dermnet(shortcut, batch, layer):
    x = batch[0]
    ys, xs = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]) % 4, torch.tensor([7, 6, 5, 4, 3, 2, 1, 0]) % 4
    by_hand = zeiler_fergus(shortcut, x, layer, 5, ys, xs)
    by_autograd = unit_projection(shortcut, x, layer, 5, ys, xs)
    scale = by_autograd.abs().max()
    assert scale > 0
    assert (by_hand - by_autograd).abs().max() <= 1e-5 * scale
    assert count_hooks(shortcut) == 0


def test_unit_projection_is_captums_neuron_deconvolution_times_the_activation(shortcut, batch):
    x = batch[0]
    theirs = NeuronDeconvolution(shortcut, shortcut.layer4).attribute(x.clone(), neuron_selector=(3, 2, 5))
    with torch.no_grad():
        value = shortcut.features(x)[:, 3, 2, 5]
    ours = unit_projection(shortcut, x, "layer4", 3, 2, 5)
    assert (ours - value[:, None, None, None] * theirs).abs().max() <= 1e-5 * ours.abs().max()


def test_zeiler_fergus_on_a_plain_net_and_overlapping_pooling():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for pool in (nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1)):
        net = _plain_net(pool)
        by_hand = zeiler_fergus(net, x, "7", 2, 3, 4)
        assert (by_hand - unit_projection(net, x, "7", 2, 3, 4)).abs().max() <= 1e-5 * by_hand.abs().max()


def test_max_unpool_writes_where_overlapping_windows_share_a_switch():
    # the condition the hand-built version handles: two 3x3 windows (stride 2) choose the same pixel
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0  # the maximum of all four overlapping windows
    xg = x.clone().requires_grad_(True)
    pooled, switches = F.max_pool2d(xg, 3, 2, return_indices=True)
    (grad,) = torch.autograd.grad(pooled.sum(), xg)
    written = F.max_unpool2d(torch.ones_like(pooled), switches, 3, 2, output_size=x.shape[-2:])
    assert grad[0, 0, 2, 2] == 4.0 and written[0, 0, 2, 2] == 1.0


def test_the_conditions_where_autograd_and_the_hand_built_deconvnet_part():
    x = torch.rand(2, 3, 16, 16)

    class FunctionalReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.fc = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.relu(torch.relu(self.conv(x)) - 0.1).mean((2, 3)))

    torch.manual_seed(0)
    model = FunctionalReLU().eval()
    # the rule reaches the nn.ReLU module only: the functional relu keeps the forward mask, for us and Captum
    with pytest.warns(UserWarning, match="functional relu called 1 time outside an nn.ReLU module"):
        ours = deconvnet(model, x, 1)
    assert (ours - Deconvolution(model).attribute(x.clone(), target=1)).abs().max() <= ATOL
    with pytest.raises(ValueError, match="nn.ReLU modules"):
        deconvnet(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(392, 2)).eval(), x, 0)
    net = _plain_net()
    with pytest.raises(ValueError, match="training mode"):
        zeiler_fergus(net.train(), x, "7", 0, 1, 1)
    net.eval()
    with pytest.raises(TypeError, match="DermNet and nn.Sequential"):
        zeiler_fergus(model, x, "conv", 0, 1, 1)


@pytest.mark.parametrize("stride,padding,output_padding", [(1, 0, 0), (2, 0, 0), (2, 1, 1), (3, 1, 0)])
def test_conv_transpose_by_hand(stride, padding, output_padding):
    g = torch.Generator().manual_seed(stride + padding)
    y, w = torch.randn(2, 5, 7, 7, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    ours = conv_transpose2d(y, w, stride, padding, output_padding)
    assert (ours - F.conv_transpose2d(y, w, None, stride, padding, output_padding)).abs().max() <= 1e-5


def test_conv_transpose_is_the_gradient_of_a_convolution():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 9, generator=g).requires_grad_(True)
    w = torch.randn(5, 4, 3, 3, generator=g)
    out = F.conv2d(x, w, stride=2, padding=1)
    upstream = torch.randn(out.shape, generator=g)
    (grad,) = torch.autograd.grad(out, x, upstream)
    assert (grad - conv_transpose2d(upstream, w, 2, 1, output_padding=0)).abs().max() <= 1e-5


def test_bad_input_and_no_side_effects(shortcut, batch):
    x = batch[0][:2]
    assert_rejects_bad_input(deconvnet, shortcut, x)
    with pytest.raises(ValueError, match="channel 200 is out of range"):
        unit_projection(shortcut, x, "layer4", 200, 0, 0)
    with pytest.raises(ValueError, match="outside layer 'layer4'"):
        zeiler_fergus(shortcut, x, "layer4", 0, 8, 0)
    with pytest.raises(ValueError, match="is not a module of the model"):
        unit_projection(shortcut, x, "layer9", 0, 0, 0)
    with pytest.raises(ValueError, match="not one of the modules zeiler_fergus walks"):
        zeiler_fergus(shortcut, x, "layer4.0.conv1", 0, 0, 0)
    with pytest.raises(ValueError, match="layer 'fc' must output a feature map"):
        unit_projection(shortcut, x, "fc", 0, 0, 0)
    with pytest.raises(ValueError, match="y has 3 entries"):
        unit_projection(shortcut, x, "layer4", 0, torch.tensor([0, 1, 2]), 0)
    with pytest.raises(ValueError, match="rule must be one of"):
        unit_projection(shortcut, x, "layer4", 0, 0, 0, rule="lrp")
    for rule in RULES:
        run_without_side_effects(lambda m, x, t, rule=rule: rule_backprop(m, x, t, rule), shortcut, x, MEL)
    for project in (zeiler_fergus, unit_projection):
        run_without_side_effects(lambda m, x, t, project=project: project(m, x, "layer3", t, 2, 2), shortcut, x, 1)


def test_relu_rule_removes_its_hooks_when_the_model_raises(shortcut):
    with pytest.raises(RuntimeError, match="midway"):
        with relu_rule(shortcut, "deconvnet"):
            raise RuntimeError("midway")
    assert count_hooks(shortcut) == 0


# ---- models a learner brings: in-place ReLUs, other activations, layers passed as modules ----

def _relu_state(model):
    return [(name, m.inplace, "forward" in vars(m)) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]


def _strongest_unit(model, x, layer):
    """(channel, y, x) of the unit of ``layer`` whose smallest activation over the batch is largest."""
    with capture(model, layer) as rec, torch.no_grad():
        model(x)
    low = rec.activation.amin(0)
    assert low.max() > 0
    c, y, x_ = torch.unravel_index(low.argmax(), low.shape)
    return int(c), int(y), int(x_)


@pytest.mark.parametrize("name", ["plain", "shared", "resnet18", "vgg11"])
def test_the_rules_match_captum_on_in_place_relus(request, images, name):
    """An in-place ReLU has rectified its input before a forward hook sees it: replacing its output
    there left the ReLU's own backward (the forward mask) in the graph, and the deconvnet came out
    as guided backprop. Every torchvision CNN has in-place ReLUs (resnet18 shares one per block)."""
    model = {"plain": lambda: nn.Sequential(*_plain_net(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval(),
             "shared": lambda: SharedInPlaceReLU().eval(),
             "resnet18": lambda: request.getfixturevalue("resnet18"),
             "vgg11": lambda: request.getfixturevalue("vgg11")}[name]()
    x, t = images[:, :, :32, :32] if name in ("plain", "shared") else images, torch.tensor([1, 2])
    before = _relu_state(model)
    assert any(inplace for _, inplace, _ in before)
    theirs = Deconvolution(model).attribute(x.clone(), target=t)
    ours = deconvnet(model, x, t)
    assert (ours - theirs).abs().max() <= 1e-6 * theirs.abs().max()
    theirs_guided = GuidedBackprop(model).attribute(x.clone(), target=t)
    guided = guided_backprop(model, x, t)
    assert (guided - theirs_guided).abs().max() <= 1e-6 * theirs_guided.abs().max()
    assert not torch.equal(ours, guided)
    assert _relu_state(model) == before and count_hooks(model) == 0


def test_unit_projection_matches_captum_on_resnet18(resnet18, images):
    c, y, x = _strongest_unit(resnet18, images, "layer3")
    theirs = NeuronDeconvolution(resnet18, resnet18.layer3).attribute(images.clone(), neuron_selector=(c, y, x))
    with capture(resnet18, "layer3") as rec, torch.no_grad():
        resnet18(images)
    ours = unit_projection(resnet18, images, "layer3", c, y, x)
    value = rec.activation[:, c, y, x]
    assert (ours - value[:, None, None, None] * theirs).abs().max() <= 1e-5 * ours.abs().max()


@pytest.mark.parametrize("name", ["plain", "vgg11"])
def test_zeiler_fergus_equals_unit_projection_with_in_place_relus(vgg11, images, name):
    net, layer = (_plain_net(inplace=True), "7") if name == "plain" else (vgg11.features, "19")
    before = _relu_state(net)
    unit = _strongest_unit(net, images, layer)
    by_hand = zeiler_fergus(net, images, layer, *unit)
    by_autograd = unit_projection(net, images, layer, *unit)
    scale = by_hand.abs().max()
    assert scale > 0
    assert (by_hand - by_autograd).abs().max() <= 1e-5 * scale
    assert _relu_state(net) == before and count_hooks(net) == 0


def test_relu_rule_leaves_nothing_behind_when_the_model_raises(resnet18, images):
    images = images[:1, :, :32, :32]
    before = _relu_state(resnet18)
    for rule in RULES:
        with pytest.raises(RuntimeError, match="midway"):
            with relu_rule(resnet18, rule):
                resnet18(images)
                raise RuntimeError("midway")
        assert _relu_state(resnet18) == before and count_hooks(resnet18) == 0
    with pytest.raises(ValueError, match="out of range"):
        deconvnet(resnet18, images, 10)
    assert _relu_state(resnet18) == before and count_hooks(resnet18) == 0
    with torch.no_grad():
        plain = resnet18(images)
    with relu_rule(resnet18, "deconvnet"), torch.no_grad():  # the forward pass computes what it did
        assert torch.equal(resnet18(images), plain)
        with pytest.raises(ValueError, match="already open"):  # a second block would undo the first on exit
            with relu_rule(resnet18, "guided"):
                pass
    assert _relu_state(resnet18) == before and count_hooks(resnet18) == 0


class OtherActivations(nn.Module):
    """An nn.ReLU, an nn.Hardswish module and two functional relus: the rules reach the first only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.relu, self.act, self.fc = nn.ReLU(), nn.Hardswish(), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.relu(self.act(self.conv2(self.relu(self.conv1(x))))).mean((2, 3)).relu())


def _our_warnings(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in seen if "not nn.ReLU modules" in str(w.message)]


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_activations_the_rule_does_not_reach_are_named(images, rule):
    x = images[:, :, :12, :12]
    model = OtherActivations().eval()
    (message,) = _our_warnings(lambda: rule_backprop(model, x, 1, rule))
    assert "'act' (Hardswish)" in message and "functional relu called 2 times" in message
    assert "'relu'" not in message
    assert _our_warnings(lambda: rule_backprop(model, x, 1, "gradient")) == []  # the chain rule is theirs too
    assert count_hooks(model) == 0


def test_mobilenet_and_densenet_activations_are_named(images):
    efficientnet = _seeded(torchvision.models.efficientnet_b0, num_classes=10)  # SiLU only
    with pytest.raises(ValueError, match="has none .its activations are SiLU modules"):
        deconvnet(efficientnet, images, 1)
    mobilenet = _seeded(torchvision.models.mobilenet_v3_small, num_classes=10)
    (message,) = _our_warnings(lambda: deconvnet(mobilenet, images, 1))
    assert "Hardswish" in message and "'features.0.2'" in message and len(message) < 600
    # torchvision's DenseNet (densenet121's code, two one-layer blocks) ends its forward in F.relu
    densenet = _seeded(torchvision.models.DenseNet, growth_rate=8, block_config=(1, 1), num_init_features=8,
                       num_classes=10)
    (message,) = _our_warnings(lambda: guided_backprop(densenet, images, 1))
    assert "functional relu called 1 time " in message
    assert count_hooks(mobilenet) == count_hooks(densenet) == 0


def test_dermnet_gets_no_warning(shortcut, batch):
    x, t = batch[0][:2], batch[1][:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rule in RULES:
            rule_backprop(shortcut, x, t, rule)
        unit_projection(shortcut, x, "layer3", 2, 1, 1)


def test_errors_name_a_module_layer_in_one_line(resnet18, shortcut, images):
    checks = [
        (lambda: unit_projection(resnet18, images, resnet18.layer4, 9999, 0, 0), "channel 9999 .*'layer4'"),
        (lambda: unit_projection(resnet18, images, resnet18.layer4, 0, 5, 0), "outside layer 'layer4'"),
        (lambda: unit_projection(resnet18, images, resnet18.fc, 0, 0, 0), "layer 'fc' must output"),
        (lambda: unit_projection(resnet18, images, resnet18.layer1[0].relu, 0, 0, 0), "'layer1.0.relu' ran 2 times"),
        (lambda: zeiler_fergus(shortcut, images, shortcut.layer4[0], 0, 0, 0), "'layer4.0' is not one of"),
    ]
    for call, match in checks:
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert len(str(err.value)) < 300, str(err.value)
    assert count_hooks(resnet18) == 0


def test_a_layer_that_did_not_run(resnet18, images):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.spare = resnet18, nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.net(x)

    with pytest.raises(ValueError, match="'spare' did not run"):
        unit_projection(Unused().eval(), images, "spare", 0, 0, 0)
    assert count_hooks(resnet18) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_on_the_gpu(shortcut, batch):
    """Every tensor a method makes follows x's device: the GPU result is the CPU one (no TF32)."""
    gpu, x = copy.deepcopy(shortcut).cuda(), batch[0][:2]
    ys = torch.tensor([1, 2])
    calls = [lambda m, x: deconvnet(m, x, 1), lambda m, x: unit_projection(m, x, "layer3", 2, ys, 1),
             lambda m, x: zeiler_fergus(m, x, "layer3", 2, ys, 1)]
    for call in calls:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            ours = call(gpu, x.cuda())
        on_cpu = call(shortcut, x)
        assert ours.device.type == "cuda" and ours.dtype == x.dtype
        assert (ours.cpu() - on_cpu).abs().max() <= 1e-4 * on_cpu.abs().max()


def test_checkers_name_the_slips():
    assert check_conv_transpose(lambda y, w, s, p: conv_transpose2d(y, w, s, p))
    flipped = check_conv_transpose(lambda y, w, s, p: conv_transpose2d(y, w.flip(2, 3), s, p))
    assert not flipped and "flipped" in flipped.message
    uncut = check_conv_transpose(lambda y, w, s, p: conv_transpose2d(y, w, s, 0))
    assert not uncut and "cut `padding`" in uncut.message
    def unstrided(y, weight, stride, padding):
        out = torch.zeros(y.shape[0], weight.shape[1], (y.shape[2] - 1) * stride + 3, (y.shape[3] - 1) * stride + 3)
        full = F.conv_transpose2d(y, weight)
        out[:, :, :full.shape[2], :full.shape[3]] = full
        return out[:, :, padding:out.shape[2] - padding, padding:out.shape[3] - padding]

    slip = check_conv_transpose(unstrided)
    assert not slip and "(i * stride, j * stride)" in slip.message
    conv = check_conv_transpose(lambda y, w, s, p: F.conv2d(y, w.transpose(0, 1), stride=s, padding=p))
    assert not conv and "shrinks like a convolution" in conv.message
    assert check_deconvnet_class_question(False)
    wrong = check_deconvnet_class_question(True)
    assert not wrong and "rank correlation: deconvnet" not in wrong.message  # no figure that decides it
    assert not check_deconvnet_class_question("no")
