"""Checks of the method contract shared by the method test files."""

import pytest
import torch

from helpers.hooks import count_hooks


def run_without_side_effects(method, model, x, t):
    """Call ``method(model, x, t)`` and check that x, the model's mode, its gradients and its hooks
    are as they were; return the result."""
    before = x.clone()
    out = method(model, x, t)
    assert torch.equal(x, before) and not x.requires_grad and not model.training
    assert all(p.grad is None for p in model.parameters())
    assert count_hooks(model) == 0
    return out


def assert_rejects_bad_input(method, model, x):
    """A missing batch dimension and an out-of-range target get errors that name them."""
    with pytest.raises(ValueError, match="x must be a batch"):
        method(model, x[0], 0)
    with pytest.raises(ValueError, match="target 9 is out of range"):
        method(model, x[:1], 9)
    assert count_hooks(model) == 0


def seeded(factory, **kwargs):
    """``factory(**kwargs)`` in eval mode, its random weights drawn after ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    return factory(**kwargs).eval()
