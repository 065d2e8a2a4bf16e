"""helpers.gradients: parity with Captum, the maths on models where the answer is known, the contract."""


import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
from torch import nn

from helpers.gradients import (
    BASELINES,
    blur_baseline,
    gradient_x_input,
    input_gradient,
    integrated_gradients,
    path_rule,
    saliency,
    smoothgrad,
)
from helpers.hooks import count_hooks

ATOL = 1e-6  # exact methods: float32 round-off only
# IG's delta subtracts two logits of size ~10-20, whose float32 spacing is ~1e-6: a few of those
DELTA_ATOL = 1e-5


def maxdiff(a, b):
    return (a - b).abs().max().item()


# ---- parity with Captum ----

def test_saliency_matches_captum(shortcut, batch):
    x, t = batch
    assert maxdiff(saliency(shortcut, x, t), Saliency(shortcut).attribute(x, target=t)) <= ATOL
    assert maxdiff(saliency(shortcut, x, t, abs=False), Saliency(shortcut).attribute(x, target=t, abs=False)) <= ATOL


def test_gradient_x_input_matches_captum(shortcut, batch):
    x, t = batch
    assert maxdiff(gradient_x_input(shortcut, x, t), InputXGradient(shortcut).attribute(x, target=t)) <= ATOL


@pytest.mark.parametrize("variant, nt_type", [("mean", "smoothgrad"), ("square", "smoothgrad_sq"), ("var", "vargrad")])
@pytest.mark.parametrize("use_abs", [False, True])
def test_smoothgrad_matches_noise_tunnel_given_the_seed(shortcut, batch, variant, nt_type, use_abs):
    x, t = batch
    for i in (0, 3):  # Captum takes one absolute sigma per call: compare image by image
        xi, ti = x[i:i + 1], t[i:i + 1]
        stdev = 0.15 * (xi.max() - xi.min()).item()  # our noise_level is relative to the image's range
        torch.manual_seed(7)
        ours = smoothgrad(shortcut, xi, ti, n_samples=12, noise_level=0.15, variant=variant, abs=use_abs,
                          batch_size=5)  # batches that split the samples unevenly
        torch.manual_seed(7)
        theirs = NoiseTunnel(Saliency(shortcut)).attribute(xi, nt_type=nt_type, nt_samples=12, stdevs=stdev,
                                                          target=ti, abs=use_abs)
        assert maxdiff(ours, theirs) <= ATOL


@pytest.mark.parametrize("rule, method", [("captum_trapezoid", "riemann_trapezoid"), ("left", "riemann_left"),
                                          ("right", "riemann_right"), ("middle", "riemann_middle"),
                                          ("gausslegendre", "gausslegendre")])
def test_integrated_gradients_matches_captum_rule_by_rule(shortcut, batch, rule, method):
    x, t = batch
    ours, delta = integrated_gradients(shortcut, x, t, steps=20, rule=rule, batch_size=24, return_delta=True)
    theirs, their_delta = IntegratedGradients(shortcut).attribute(x, target=t, n_steps=20, method=method,
                                                                  return_convergence_delta=True)
    assert maxdiff(ours, theirs) <= ATOL
    assert maxdiff(delta, their_delta) <= DELTA_ATOL


def test_captum_trapezoid_is_the_trapezoid_rule_times_n_minus_1_over_n(shortcut, batch):
    """Captum's riemann_trapezoid weights sum to (n-1)/n: exactly that factor from the true rule."""
    x, t = batch
    n = 20
    ours = integrated_gradients(shortcut, x, t, steps=n, rule="trapezoid")
    theirs = IntegratedGradients(shortcut).attribute(x, target=t, n_steps=n, method="riemann_trapezoid")
    assert maxdiff(ours * (n - 1) / n, theirs) <= ATOL


@pytest.mark.parametrize("rule", ["trapezoid", "left", "right", "middle", "gausslegendre"])
def test_every_rule_integrates_exactly_on_a_linear_model(rule):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x, b = torch.rand(2, 3, 2, 2), torch.rand(2, 3, 2, 2)
    attr, delta = integrated_gradients(model, x, [1, 2], baseline=b, steps=3, rule=rule, return_delta=True)
    w = model[1].weight.view(3, 3, 2, 2)
    assert torch.allclose(attr, w[[1, 2]] * (x - b), atol=1e-6)
    assert delta.abs().max() < 1e-5


def test_captum_trapezoid_misses_on_a_linear_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1)).eval()
    x = torch.ones(1, 1, 2, 2)
    exact = integrated_gradients(model, x, 0, steps=5)
    assert torch.allclose(integrated_gradients(model, x, 0, steps=5, rule="captum_trapezoid"), exact * 4 / 5)


def test_path_rules_weights():
    for rule in ("trapezoid", "left", "right", "middle", "gausslegendre"):
        a, w = path_rule(10, rule)
        assert abs(w.sum().item() - 1) < 1e-6 and a.min() >= 0 and a.max() <= 1
    assert abs(path_rule(10, "captum_trapezoid")[1].sum().item() - 0.9) < 1e-6


def test_completeness_improves_with_steps(shortcut, batch):
    x, t = batch
    deltas = [integrated_gradients(shortcut, x[:4], t[:4], steps=s, return_delta=True)[1].abs().mean().item()
              for s in (8, 32, 128)]
    assert deltas[0] > deltas[1] > deltas[2]


def smooth_model():
    """A small smooth network: its gradient is unique everywhere. (DermNet's is not: at a max-pool
    tie or a ReLU exactly at zero, round-off that depends on the batch size picks the branch, so
    batched and one-by-one gradients can differ at a few pixels.)"""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


@pytest.mark.parametrize("batch_size", [1, 5, 1000])
def test_batching_does_not_change_the_result(batch_size):
    model, x = smooth_model(), torch.rand(3, 3, 8, 8)
    t = torch.tensor([0, 2, 1])
    ref_ig = integrated_gradients(model, x, t, steps=7, batch_size=10**6)
    assert maxdiff(integrated_gradients(model, x, t, steps=7, batch_size=batch_size), ref_ig) <= ATOL
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ref_sg = smoothgrad(model, x, t, n_samples=4, batch_size=10**6, generator=gen())
    assert maxdiff(smoothgrad(model, x, t, n_samples=4, batch_size=batch_size, generator=gen()), ref_sg) <= ATOL


def test_gradient_x_input_is_exact_taylor_on_a_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    x = torch.rand(3, 3, 2, 2)
    attr = gradient_x_input(model, x, 1)
    with torch.no_grad():
        expected = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    assert torch.allclose(attr.sum((1, 2, 3)), expected, atol=1e-6)


def test_per_image_targets_are_used(shortcut, batch):
    x, t = batch
    both = saliency(shortcut, x[:2], torch.tensor([0, 4]), abs=False)
    assert torch.allclose(both[0], saliency(shortcut, x[:1], 0, abs=False)[0], atol=1e-7)
    assert torch.allclose(both[1], saliency(shortcut, x[1:2], 4, abs=False)[0], atol=1e-7)


def test_smoothgrad_generator_makes_it_reproducible_and_zero_noise_is_the_gradient(shortcut, batch):
    x, t = batch
    g1 = smoothgrad(shortcut, x[:2], t[:2], n_samples=4, generator=torch.Generator().manual_seed(1))
    g2 = smoothgrad(shortcut, x[:2], t[:2], n_samples=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(g1, g2)
    plain = saliency(shortcut, x[:2], t[:2], abs=False)
    assert maxdiff(smoothgrad(shortcut, x[:2], t[:2], n_samples=3, noise_level=0.0), plain) <= ATOL
    assert smoothgrad(shortcut, x[:2], t[:2], n_samples=3, noise_level=0.0, variant="var").abs().max() < 1e-6


def test_baselines(batch):
    x, _ = batch
    for name, fn in BASELINES.items():
        b = fn(x)
        assert b.shape == x.shape, name
    assert torch.equal(BASELINES["black"](x), torch.zeros_like(x))
    flat = torch.rand(1, 3, 1, 1).expand(1, 3, 16, 16)
    assert torch.allclose(blur_baseline(flat, sigma=2.0), flat, atol=1e-6)  # blurring a flat image
    assert blur_baseline(x).std() < x.std()
    assert torch.equal(BASELINES["noise"](x), BASELINES["noise"](x))


def test_baseline_forms_agree(shortcut, batch):
    x, t = batch
    x, t = x[:2], t[:2]
    a = integrated_gradients(shortcut, x, t, baseline=0.0, steps=4)
    for b in ("black", torch.zeros(3, 64, 64), torch.zeros(1, 3, 64, 64), torch.zeros(2, 3, 64, 64)):
        assert maxdiff(integrated_gradients(shortcut, x, t, baseline=b, steps=4), a) <= ATOL


# ---- the contract: no side effects, clear errors ----

METHODS = [
    lambda m, x, t: saliency(m, x, t),
    lambda m, x, t: gradient_x_input(m, x, t),
    lambda m, x, t: smoothgrad(m, x, t, n_samples=3),
    lambda m, x, t: integrated_gradients(m, x, t, steps=3),
]


@pytest.mark.parametrize("method", METHODS)
def test_no_side_effects(shortcut, batch, method):
    x, t = batch
    x = x[:2].clone()
    before = x.clone()
    grads_before = [p.grad for p in shortcut.parameters()]
    flags = [p.requires_grad for p in shortcut.parameters()]
    method(shortcut, x, t[:2])
    assert torch.equal(x, before) and not x.requires_grad
    assert not shortcut.training
    assert all(g is None for g in grads_before) and all(p.grad is None for p in shortcut.parameters())
    assert [p.requires_grad for p in shortcut.parameters()] == flags
    assert count_hooks(shortcut) == 0


@pytest.mark.parametrize("method", METHODS)
def test_bad_arguments(shortcut, batch, method):
    x, t = batch
    with pytest.raises(ValueError, match=r"x must be a batch"):
        method(shortcut, x[0], 0)
    with pytest.raises(ValueError, match="target 7 is out of range"):
        method(shortcut, x[:2], 7)
    with pytest.raises(ValueError, match="negative"):
        method(shortcut, x[:2], -1)
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        method(shortcut, x[:2], [0, 1, 2])
    with pytest.raises(TypeError, match="model must be"):
        method(lambda z: z, x[:2], 0)
    with pytest.raises(TypeError, match="integer class indices"):
        method(shortcut, x[:2], torch.tensor([0.0, 1.0]))


def test_train_mode_is_refused(batch):
    from helpers.models import DermNet
    model = DermNet().train()
    with pytest.raises(ValueError, match="training mode"):
        saliency(model, batch[0][:1], 0)
    assert model.training


def test_option_errors(shortcut, batch):
    x, t = batch
    x, t = x[:2], t[:2]
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        integrated_gradients(shortcut, x, t, steps=1)
    with pytest.raises(ValueError, match="rule must be one of"):
        integrated_gradients(shortcut, x, t, rule="simpson")
    with pytest.raises(ValueError, match="baseline of shape"):
        integrated_gradients(shortcut, x, t, baseline=torch.zeros(3, 3, 64, 64))
    with pytest.raises(ValueError, match="baseline of shape"):
        integrated_gradients(shortcut, x, t, baseline=torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="baseline: unknown name"):
        integrated_gradients(shortcut, x, t, baseline="white")
    with pytest.raises(ValueError, match="batch_size"):
        integrated_gradients(shortcut, x, t, batch_size=0)
    with pytest.raises(ValueError, match="variant"):
        smoothgrad(shortcut, x, t, variant="median")
    with pytest.raises(ValueError, match="n_samples"):
        smoothgrad(shortcut, x, t, n_samples=0)
    with pytest.raises(ValueError, match="noise_level"):
        smoothgrad(shortcut, x, t, noise_level=-0.1)


def test_input_gradient_in_float64(batch):
    from helpers.models import load_dermnet
    x, t = batch
    model = load_dermnet("shortcut").double()
    g = input_gradient(model, x[:1].double(), t[:1])
    assert g.dtype == torch.float64
    assert maxdiff(g.float(), input_gradient(load_dermnet("shortcut"), x[:1], t[:1])) < 1e-5


def test_target_from_inference_mode(shortcut, batch):
    x, _ = batch
    with torch.inference_mode():
        t = shortcut(x[:2]).argmax(1)
    assert saliency(shortcut, x[:2], t).shape == x[:2].shape


def test_integrated_gradients_channels_last_changes_only_round_off(shortcut, batch):
    x, t = batch
    a = integrated_gradients(shortcut, x[:4], t[:4], steps=8)
    b = integrated_gradients(shortcut, x[:4], t[:4], steps=8, channels_last=True)
    assert b.is_contiguous() and torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(a.abs().max()))


# ---- sums of many gradients keep their accuracy (float64 accumulation) ----

def _smooth_toy():
    """A conv, a softplus and a linear head: the gradient changes all along the path."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


def test_integrated_gradients_stays_exact_with_many_steps():
    """The same points and weights summed in float64 on a float64 copy of the model are the
    reference. Summed one float32 step at a time, the gap grew with the steps (6e-6 of the scale
    at 5,000 steps); Captum's one sum stays within ~1e-7."""
    import copy

    model, x = _smooth_toy(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    steps = 5000
    alphas, weights = path_rule(steps, "captum_trapezoid")
    m64, x64 = copy.deepcopy(model).double(), x.double()
    points = (alphas.double().view(-1, 1, 1, 1, 1) * x64).reshape(-1, 3, 8, 8).requires_grad_(True)
    (g,) = torch.autograd.grad(m64(points)[:, 1].sum(), points)
    exact = (weights.double().view(-1, 1, 1, 1, 1) * g.view(steps, *x.shape)).sum(0) * x64
    ours = integrated_gradients(model, x, 1, steps=steps, rule="captum_trapezoid", batch_size=1000)
    theirs = IntegratedGradients(model).attribute(x, target=1, n_steps=steps, method="riemann_trapezoid",
                                                  internal_batch_size=1000)
    scale = exact.abs().max()
    captum_gap = (theirs.double() - exact).abs().max() / scale
    assert ours.dtype == torch.float32
    assert (ours.double() - exact).abs().max() / scale <= max(2e-7, captum_gap)


def test_smoothgrad_stays_exact_with_many_samples():
    """SmoothGrad's mean and VarGrad over 4,000 noisy copies, against the same noise draws with
    the gradients taken and summed in float64."""
    import copy

    model, x = _smooth_toy(), torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    n = 4000
    noise = torch.randn((n, 3, 8, 8), generator=torch.Generator().manual_seed(5))
    sigma = 0.15 * (x.max() - x.min())
    m64 = copy.deepcopy(model).double()
    points = (x + noise * sigma).double().requires_grad_(True)  # the float32 points ours will see
    (g,) = torch.autograd.grad(m64(points)[:, 2].sum(), points)
    for variant, exact in (("mean", g.mean(0)), ("var", g.var(0, unbiased=False))):
        ours = smoothgrad(model, x, 2, n_samples=n, noise_level=0.15, variant=variant, batch_size=1000,
                          generator=torch.Generator().manual_seed(5))
        assert ours.dtype == torch.float32
        assert (ours[0].double() - exact).abs().max() / exact.abs().max() <= 2e-7, variant


def test_integrated_gradients_keeps_a_bfloat16_models_dtype():
    """The path points take x's dtype: alphas kept in float32 turned them float32, and a bfloat16
    model then refused them."""
    model = _smooth_toy().to(torch.bfloat16)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    attr = integrated_gradients(model, x, 1, steps=4)
    assert attr.dtype == torch.bfloat16 and torch.isfinite(attr).all()
