"""The checkers give the right verdict and the right hint for typical mistakes."""

import pytest
import torch

from helpers.exercises import check_mask_mass, check_method, compare
from helpers.hooks import count_hooks
from helpers.metrics import mask_mass
from helpers.models import DermNet


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    return torch.randn(4, 3, 5, 5)


@pytest.mark.parametrize("make, word", [
    (lambda r: r.clone(), "matches"),
    (lambda r: -r, "opposite sign"),
    (lambda r: r.abs(), "absolute value of ours"),
    (lambda r: r * 2, "divided by"),
    (lambda r: r.sum(1, keepdim=True), "summed over the channels"),
    (lambda r: r[0], "batch dimension is missing"),
    (lambda r: r.permute(0, 2, 3, 1), "wrong layout"),
    (lambda r: torch.cat([r[:2], r[2:] + 1]), "images [2, 3]"),
    (lambda r: r + 1e-3 * torch.sin(torch.arange(r.numel()).view(r.shape).float()), "very close"),
    (lambda r: torch.rand_like(r), "different values"),
    (lambda r: r / 0, "NaN or infinite"),
    (lambda r: r.numpy(), "torch.Tensor"),
])
def test_compare_diagnoses(ref, make, word):
    result = compare(make(ref), ref)
    assert word in result.message, result
    assert result.passed == (word == "matches")


def test_compare_missing_abs_and_relu(ref):
    assert "without the absolute value" in compare(ref, ref.abs()).message
    assert "before a ReLU" in compare(ref, ref.clamp_min(0)).message


def _grad(model, x, target):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[torch.arange(len(x)), target].sum(), x)
    return g


def test_check_method_contract():
    torch.manual_seed(0)
    model = DermNet().eval()
    x, t = torch.rand(2, 3, 64, 64), torch.tensor([0, 4])
    assert check_method(_grad, _grad, model, x, t)

    def in_place(model, x, target):
        x.mul_(1.0).add_(1e-3)
        return _grad(model, x, target)
    assert "changed the input x" in check_method(in_place, _grad, model, x.clone(), t).message

    def leaves_grads(model, x, target):
        x = x.clone().requires_grad_(True)
        model(x)[torch.arange(len(x)), target].sum().backward()
        return x.grad
    res = check_method(leaves_grads, _grad, model, x, t)
    assert "left gradients" in res.message
    model.zero_grad(set_to_none=True)

    def leaves_hook(model, x, target):
        model.layer4.register_forward_hook(lambda *a: None)
        return _grad(model, x, target)
    assert "left hooks" in check_method(leaves_hook, _grad, model, x, t).message
    model.layer4._forward_hooks.clear()
    assert count_hooks(model) == 0

    def train_mode(model, x, target):
        model.train()
        return _grad(model, x, target)
    assert "model.training" in check_method(train_mode, _grad, model, x, t).message
    model.eval()

    def crashes(model, x, target):
        raise IndexError("oops")
    assert "raised IndexError" in check_method(crashes, _grad, model, x, t).message


def test_check_mask_mass_on_dermnet():
    assert check_mask_mass(mask_mass)
    no_abs = lambda a, m: (a.sum(1) * m).sum((1, 2)) / a.sum(1).sum((1, 2))
    assert "cancel" in check_mask_mass(no_abs).message
    abs_after_sum = lambda a, m: (a.sum(1).abs() * m).sum((1, 2)) / a.sum(1).abs().sum((1, 2))
    assert "magnitude of each channel first" in check_mask_mass(abs_after_sum).message
    not_normalised = lambda a, m: (a.abs().sum(1) * m).sum((1, 2))
    assert "divide by the total" in check_mask_mass(not_normalised).message
    mean_inside = lambda a, m: (a.abs().sum(1) * m).sum((1, 2)) / m.sum((1, 2))
    assert "number of pixels in the mask" in check_mask_mass(mean_inside).message
    no_batch = lambda a, m: (a.abs().sum(1) * m).sum() / a.abs().sum()
    assert "shape" in check_mask_mass(no_batch).message
    assert "raised" in check_mask_mass(lambda a, m: 1 / 0).message
