"""helpers.hooks: capture records the right tensors and never leaves a hook behind."""

import warnings

import pytest
import torch
from torch import nn

from helpers.hooks import capture, count_hooks, resolve_layer
from helpers.models import DermNet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DermNet().eval()


def test_records_activation_and_gradient(model):
    x = torch.rand(2, 3, 64, 64)
    with capture(model, "layer4") as rec:
        feats = model.features(x)
        out = model.fc(feats.mean((2, 3)))
        out[:, 3].sum().backward()
    assert count_hooks(model) == 0
    assert torch.allclose(rec.activation, feats.detach())
    # d out[:,3] / d feats = fc.weight[3] / (h*w), broadcast over the grid
    expected = (model.fc.weight[3] / 64).view(1, -1, 1, 1).expand_as(feats)
    assert torch.allclose(rec.gradient, expected, atol=1e-7)
    model.zero_grad(set_to_none=True)


def test_hooks_removed_when_the_body_raises(model):
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, model.layer3):
            model(torch.rand(1, 3, 64, 64))
            raise RuntimeError("boom")
    assert count_hooks(model) == 0


def test_hooks_removed_when_the_model_raises(model):
    with pytest.raises(ValueError):
        with capture(model, "layer2"):
            model(torch.rand(1, 4, 64, 64))  # wrong channel count: the model raises
    assert count_hooks(model) == 0


def test_activation_is_a_clone_not_a_view():
    class InPlaceAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            y = self.conv(x)
            return y.mul_(0)  # an in-place change after the hooked layer

    m = InPlaceAfter()
    with torch.no_grad(), capture(m, "conv") as rec:
        m(torch.ones(1, 1, 2, 2))
    assert rec.activation.abs().sum() > 0


def test_resolve_layer_errors_list_valid_names(model):
    assert resolve_layer(model, "layer4.0") is model.layer4[0]
    with pytest.raises(ValueError, match="layer5.*closest names: layer4"):
        resolve_layer(model, "layer5")
    with pytest.raises(ValueError, match="not a module of the model"):
        resolve_layer(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="layer must be"):
        resolve_layer(model, 4)
    with pytest.raises(ValueError):
        with capture(model, "nope"):
            pass
    assert count_hooks(model) == 0


def test_many_calls_leave_nothing(model):
    x = torch.rand(1, 3, 64, 64)
    for _ in range(200):
        with capture(model, "layer4"), torch.no_grad():
            model(x)
    assert count_hooks(model) == 0


def test_no_tensors_leak_through_the_gradient_hook(model):
    import gc

    def live():
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # isinstance on some torch module objects warns
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    x = torch.rand(1, 3, 64, 64)

    def call():
        with capture(model, "layer4") as rec:
            out = model(x.requires_grad_(False).clone().requires_grad_(True))
            torch.autograd.grad(out[0, 0], rec.output)
        return rec

    rec = call()  # a recording held: its activation and gradient
    before = live()
    for _ in range(50):
        rec = call()
    assert live() == before
    assert rec.output is None and rec.activation is not None


def test_capture_without_gradient_hook(model):
    x = torch.rand(1, 3, 64, 64)
    with capture(model, "layer4", gradient=False) as rec:
        out = model(x)
        (g,) = torch.autograd.grad(out[0, 1], rec.output)
    assert rec.gradient is None and g.shape == rec.activation.shape
    assert count_hooks(model) == 0


# ---- a layer that does not run, and names in messages ----

class Spare(nn.Module):
    """Holds a convolution that its forward pass never calls (like inception's AuxLogits in eval)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.spare = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_capture_says_a_layer_did_not_run():
    torch.manual_seed(0)
    model = Spare().eval()
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    with pytest.raises(ValueError, match="layer 'spare' did not run in the forward pass"):
        with capture(model, "spare"):
            model(x)
    with pytest.raises(ValueError, match="layer 'spare' did not run"):  # reading output inside the block
        with capture(model, model.spare, gradient=False) as rec:
            out = model(x)
            torch.autograd.grad(out.sum(), rec.output)
    assert count_hooks(model) == 0


def test_capture_on_a_torchvision_module_that_does_not_run():
    """googlenet's auxiliary heads run only in training mode."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.googlenet(num_classes=3, aux_logits=True, init_weights=False).eval()
    with pytest.raises(ValueError, match="layer 'aux1' did not run in the forward pass"):
        with capture(model, model.aux1), torch.no_grad():
            model(torch.rand(1, 3, 64, 64))
    assert count_hooks(model) == 0


def test_layer_names_in_messages_are_one_line():
    import torchvision

    from helpers.hooks import layer_name

    model = torchvision.models.resnet50()
    assert layer_name(model, model.layer4) == "'layer4'"
    assert layer_name(model, model.layer4[1].relu) == "'layer4.1.relu'"
    assert layer_name(model, "layer4.1") == "'layer4.1'"
    assert layer_name(model, nn.ReLU()) == "(a ReLU)"
    with pytest.raises(ValueError) as err:  # layer4.0.relu runs three times in its block
        with capture(model, model.layer4[0].relu), torch.no_grad():
            model.eval()(torch.rand(1, 3, 32, 32))
    assert "'layer4.0.relu' ran 2 times" in str(err.value) and len(str(err.value)) < 400
    assert count_hooks(model) == 0


def test_grad_cam_says_a_layer_did_not_run():
    from helpers.cam import grad_cam, grad_cam_pp

    torch.manual_seed(0)
    model = Spare().eval()
    for method in (grad_cam, grad_cam_pp):
        with pytest.raises(ValueError, match="layer 'spare' did not run in the forward pass"):
            method(model, torch.rand(1, 3, 8, 8), 0, "spare")
    assert count_hooks(model) == 0


def test_capture_names_both_causes_of_a_second_call(model):
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="ran 2 times inside one capture block.*or a second forward pass"):
        with capture(model, "layer4"), torch.no_grad():
            model(x)
            model(x)
    assert count_hooks(model) == 0
