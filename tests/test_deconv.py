"""helpers.deconv: the three ReLU rules, the deconvnet (vs Captum), one unit projected by hand and by
autograd, the conditions under which the two agree, and transposed convolution by hand."""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution, GuidedBackprop, NeuronDeconvolution, Saliency
from contract_checks import assert_rejects_bad_input, run_without_side_effects
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
from helpers.hooks import count_hooks

ATOL = 1e-6


def _plain_net(pool=None, seed=0):
    """conv -> relu -> max-pool -> conv -> relu -> conv -> relu: Zeiler & Fergus's kind of network."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), pool or nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU()).eval()


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
    assert not check_deconvnet_class_question(True)
    assert not check_deconvnet_class_question("no")
