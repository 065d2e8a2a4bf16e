"""helpers.hooks for models the course did not build: count_passes counts what a method costs,
one_relu_per_use gives torchvision's ResNets one ReLU module per use (random weights, small inputs)."""

import pytest
import torch
import torchvision
from captum.attr import DeepLift
from torch import nn

from helpers.cam import grad_cam, guided_backprop
from helpers.gradients import integrated_gradients, saliency, smoothgrad
from helpers.hooks import count_hooks, count_passes, one_relu_per_use
from helpers.perturbation import occlusion


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _relu_calls(model, x):
    calls = {}
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    handles = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(m, calls.get(m, 0) + 1)) for m in relus]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return relus, calls


# count_passes -----------------------------------------------------------------------------------

def test_count_passes_counts_each_method(resnet18, images):
    cases = [(lambda: saliency(resnet18, images, 1), (1, 2, 1, 2)),
             (lambda: grad_cam(resnet18, images, 1), (1, 2, 1, 2)),
             (lambda: integrated_gradients(resnet18, images, 1, steps=8, batch_size=4), (4, 16, 4, 16)),
             (lambda: smoothgrad(resnet18, images, 1, n_samples=3, batch_size=64), (1, 6, 1, 6)),
             (lambda: occlusion(resnet18, images, 1, window=16, stride=16, batch_size=64),
              (2, 2 + 2 * 4, 0, 0))]  # x, then 4 windows
    for run, expected in cases:
        with count_passes(resnet18) as c:
            run()
        assert (c.forward_calls, c.forward_images, c.backward_calls, c.backward_images) == expected
    assert count_hooks(resnet18) == 0


def test_count_passes_agrees_with_occlusions_own_count(resnet18, images):
    with count_passes(resnet18) as c:
        _, passes = occlusion(resnet18, images, 1, window=8, stride=8, batch_size=7, return_passes=True)
    assert c.forward_images == passes == 2 * (16 + 1)
    assert c.forward_calls > 1 and c.backward_calls == 0


def test_count_passes_backward_by_dot_backward_and_not_after_the_block(resnet18, images):
    x = images.clone().requires_grad_(True)
    with count_passes(resnet18) as c:
        out = resnet18(x)
        out[:, 0].sum().backward(retain_graph=True)
    out[:, 1].sum().backward()  # after the block: not counted
    assert (c.forward_calls, c.forward_images, c.backward_calls, c.backward_images) == (1, 2, 1, 2)
    resnet18.zero_grad(set_to_none=True)
    assert count_hooks(resnet18) == 0


def test_count_passes_removes_its_hooks_when_the_body_raises(resnet18):
    with pytest.raises(RuntimeError):
        with count_passes(resnet18):
            resnet18(torch.rand(1, 4, 32, 32))  # wrong channel count
    assert count_hooks(resnet18) == 0


def test_count_passes_bad_input():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        with count_passes("resnet"):
            pass

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    pair = Pair()
    with pytest.raises(TypeError, match="returned tuple"):
        with count_passes(pair):
            pair(torch.zeros(1))
    assert count_hooks(pair) == 0


# one_relu_per_use -------------------------------------------------------------------------------

@pytest.mark.parametrize("factory", [torchvision.models.resnet18, torchvision.models.resnet50])
def test_one_relu_per_use_same_function_every_relu_once(factory, images):
    torch.manual_seed(0)
    model = factory(num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    once = one_relu_per_use(model)
    with torch.no_grad():
        assert torch.equal(once(images), model(images))
    relus, calls = _relu_calls(model, images)
    assert any(calls[m] > 1 for m in relus) and all(m.inplace for m in relus)  # the original: shared, in place
    relus, calls = _relu_calls(once, images)
    assert relus and all(calls.get(m) == 1 for m in relus) and not any(m.inplace for m in relus)
    assert not once.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is unchanged
    assert once.layer4[-1].bn2 is not model.layer4[-1].bn2  # a copy, not shared weights


def test_one_relu_per_use_keeps_layer_names_and_guided_backprop(resnet18, images):
    once = one_relu_per_use(nn.Sequential(nn.Identity(), resnet18).eval())
    names = dict(once.named_modules())
    assert "1.layer4" in names and "1.layer4.1.bn2" in names and "1.fc" in names
    assert torch.equal(grad_cam(once, images, 2, "1.layer4"), grad_cam(resnet18, images, 2, "layer4"))
    assert torch.equal(guided_backprop(once[1], images, 2), guided_backprop(resnet18, images, 2))


def test_one_relu_per_use_lets_deeplift_run(resnet18, images):
    base = torch.zeros_like(images)
    with pytest.raises(RuntimeError, match="used more than once"):
        DeepLift(resnet18).attribute(images, baselines=base, target=2)
    once = one_relu_per_use(resnet18)
    attr, delta = DeepLift(once).attribute(images, baselines=base, target=2, return_convergence_delta=True)
    with torch.no_grad():
        gap = once(images)[:, 2] - once(base)[:, 2]
    assert gap.abs().min() > 1e-3
    assert (delta.abs() <= 1e-4 * gap.abs().max()).all()  # DeepLift's completeness holds on the copy
    assert count_hooks(resnet18) == 0 and count_hooks(once) == 0


def test_one_relu_per_use_bad_input():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        one_relu_per_use(torchvision.models.resnet18)
    with pytest.raises(ValueError, match="no torchvision BasicBlock"):
        one_relu_per_use(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(inplace=True)))
