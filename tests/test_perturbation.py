"""Occlusion, LIME, KernelSHAP, exact Shapley and expected gradients: parity with Captum, the lime
package and shap, the Shapley axioms, and the method contract."""

import copy
import warnings

import numpy as np
import pytest
import torch
from contract_checks import assert_rejects_bad_input, run_without_side_effects
from torch import nn

from helpers import perturbation as P
from helpers.data import make_dataset


def maxdiff(a, b):
    return (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item()


@pytest.fixture(scope="module")
def one(batch):
    """One clinic-A image, its label and 14 SLIC segments."""
    x, t = batch
    return x[:1], t[:1], P.superpixels(x[0], 16)


@pytest.fixture(scope="module")
def background():
    return make_dataset(16, clinic="B", seed=5).images


class CountingModel(nn.Module):
    """Wraps a model and counts the images it is asked to score."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images, self.calls = model, 0, 0

    def forward(self, x):
        self.images += x.shape[0]
        self.calls += 1
        return self.model(x)


class Linear(nn.Module):
    """An additive model: score_c = sum of w_c * x. Its Shapley values are known in closed form."""

    def __init__(self, shape=(3, 64, 64), classes=2, seed=0):
        super().__init__()
        self.w = nn.Parameter(torch.randn((classes, *shape), generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return (x[:, None] * self.w).flatten(2).sum(-1)


# ---- occlusion ----

@pytest.mark.parametrize("window,stride", [(8, 4), (10, 4), (7, 3), (5, 5), (64, 1), ((6, 9), (2, 3))])
def test_occlusion_matches_captum(shortcut, batch, window, stride):
    from captum.attr import Occlusion

    x, t = batch
    x, t = x[:3], t[:3]
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ref = Occlusion(shortcut).attribute(x, target=t, sliding_window_shapes=(3, wh, ww), strides=(3, sh, sw),
                                        baselines=0.0, perturbations_per_eval=64)
    assert torch.equal(ref, ref[:, :1].expand_as(ref))  # the window covers all channels
    # in Captum's memory layout: the same arithmetic, summed in another order (one float32 spacing
    # of a logit near 10 is 1e-6)
    exact = P.occlusion(shortcut, x, t, window=window, stride=stride, channels_last=False)
    assert exact.shape == (3, 1, 64, 64)
    assert maxdiff(exact, ref[:, :1]) < 2e-6
    # channels-last convolutions round differently: a few float32 spacings
    assert maxdiff(P.occlusion(shortcut, x, t, window=window, stride=stride), ref[:, :1]) < 1e-5


def test_occlusion_with_a_tensor_baseline_matches_captum(shortcut, batch):
    from captum.attr import Occlusion

    from helpers.gradients import blur_baseline

    x, t = batch
    x, t = x[:2], t[:2]
    b = blur_baseline(x)
    ref = Occlusion(shortcut).attribute(x, target=t, sliding_window_shapes=(3, 12, 12), strides=(3, 6, 6),
                                        baselines=b, perturbations_per_eval=32)
    assert maxdiff(P.occlusion(shortcut, x, t, window=12, stride=6, baseline=b), ref[:, :1]) < 1e-5
    assert maxdiff(P.occlusion(shortcut, x, t, window=12, stride=6, baseline="blur"), ref[:, :1]) < 1e-5


def test_occlusion_reports_the_passes_it_ran_and_batches_them(shortcut, batch):
    x, t = batch
    counting = CountingModel(shortcut).eval()
    attr, passes = P.occlusion(counting, x[:4], t[:4], window=8, stride=4, batch_size=100, return_passes=True)
    positions = 15 * 15  # ceil((64 - 8) / 4) + 1 = 15 per direction
    assert passes == 4 * (positions + 1) == counting.images
    assert counting.calls == 1 + -(-4 * positions // 100)  # one pass for x, then full batches
    # another batch size changes only the convolutions' round-off
    assert maxdiff(P.occlusion(shortcut, x[:4], t[:4], window=8, stride=4, batch_size=7), attr) < 1e-5


def test_occlusion_windows_cover_every_pixel_and_crop_at_the_edge():
    masks = P.occlusion_masks((64, 64), (10, 10), (4, 4))
    assert masks.shape[0] == 15 * 15
    assert masks.any(0).all()
    assert masks[-1].sum() == 8 * 8  # the last window starts at 56 and is cropped to 56..63


def test_occlusion_bad_arguments(shortcut, batch):
    x, t = batch
    with pytest.raises(ValueError, match="window .* larger than the image"):
        P.occlusion(shortcut, x[:1], 0, window=65)
    with pytest.raises(ValueError, match="stride .* larger than the window"):
        P.occlusion(shortcut, x[:1], 0, window=4, stride=5)
    with pytest.raises(ValueError, match="window must be a positive int"):
        P.occlusion(shortcut, x[:1], 0, window=0)
    with pytest.raises(ValueError, match="x must be a batch"):
        P.occlusion(shortcut, x[0], 0)
    with pytest.raises(ValueError, match="target 9 is out of range"):
        P.occlusion(shortcut, x[:1], 9)
    with pytest.raises(ValueError, match="baseline of shape"):
        P.occlusion(shortcut, x[:2], 0, baseline=torch.zeros(3, 3, 64, 64))


# ---- segments ----

def test_superpixels_are_labelled_from_zero_without_gaps(batch):
    x, _ = batch
    seg = P.superpixels(x[:3], 16)
    assert seg.shape == (3, 64, 64) and seg.dtype == torch.long
    for s in seg:
        k = int(s.max()) + 1
        assert 8 <= k <= 24 and torch.equal(s.unique(), torch.arange(k))
    assert torch.equal(P.superpixels(x[0], 16), seg[0])


def test_paint_puts_each_value_on_its_segment():
    seg = torch.tensor([[0, 0, 1], [2, 2, 1]])
    out = P.paint(torch.tensor([10.0, 20.0, 30.0]), seg)
    assert out.shape == (1, 1, 2, 3)
    assert out[0, 0].tolist() == [[10, 10, 20], [30, 30, 20]]


def test_segments_errors(shortcut, batch):
    x, t = batch
    with pytest.raises(ValueError, match="segments of shape .* do not fit x"):
        P.lime(shortcut, x[:1], 0, torch.zeros(32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="segments of shape .* do not fit x"):
        P.kernel_shap(shortcut, x[:2], 0, torch.zeros(3, 64, 64, dtype=torch.long))
    with pytest.raises(TypeError, match="segments must hold integer labels"):
        P.exact_shapley(shortcut, x[:1], 0, torch.zeros(64, 64))
    gap = torch.zeros(64, 64, dtype=torch.long)
    gap[:, 32:] = 2  # label 1 unused
    with pytest.raises(ValueError, match="every label 0 .. K-1"):
        P.kernel_shap(shortcut, x[:1], 0, gap)


# ---- LIME ----

@pytest.mark.parametrize("hide_color", [None, 0.0])
def test_lime_matches_the_lime_package(shortcut, one, hide_color):
    from lime.lime_image import LimeImageExplainer

    x, t, seg = one
    label = int(t[0])

    def classifier(images):
        with torch.no_grad():
            return shortcut(torch.as_tensor(images).permute(0, 3, 1, 2).float()).numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = LimeImageExplainer(random_state=3).explain_instance(
            x[0].permute(1, 2, 0).numpy(), classifier, labels=(label,), top_labels=None, hide_color=hide_color,
            num_samples=300, segmentation_fn=lambda image: seg.numpy(), random_seed=0)
    ref = np.zeros(int(seg.max()) + 1)
    for k, v in exp.local_exp[label]:
        ref[k] = v
    ours = P.lime(shortcut, x, t, seg, n_samples=300, hide_color=hide_color, seed=3)
    assert maxdiff(ours.values[0].double(), ref) < 1e-5
    assert torch.equal(ours.map, P.paint(ours.values, seg))


def test_lime_matches_captum_under_captums_choices(shortcut, one):
    from captum.attr import Lime

    x, t, seg = one
    torch.manual_seed(5)
    ref = Lime(shortcut).attribute(x, target=t, feature_mask=seg[None, None], n_samples=200,
                                   perturbations_per_eval=50, return_input_shape=False)
    ours = P.lime(shortcut, x, t, seg, n_samples=200, seed=5, sampler="captum", distance="input",
                  surrogate="lasso", kernel_width=1.0, hide_color=0.0)
    assert maxdiff(ours.values, ref) < 1e-5


def test_lime_on_a_linear_model_recovers_the_segment_contributions():
    model = Linear().eval()
    x = torch.rand(1, 3, 64, 64)
    seg = torch.arange(64).div(16, rounding_mode="floor").repeat(64, 1)  # four vertical bands
    truth = torch.stack([(model.w[1] * x[0])[:, seg == k].sum() for k in range(4)])
    # no ridge penalty, hidden = black: the surrogate is the model itself
    values = P.lime(model, x, 1, seg, n_samples=64, hide_color=0.0, alpha=1e-12).values[0]
    assert maxdiff(values, truth) < 1e-3 * truth.abs().max()


# ---- Shapley values ----

def test_exact_shapley_of_an_additive_game_is_each_players_contribution():
    model = Linear().eval()
    x = torch.rand(2, 3, 64, 64)
    seg = torch.arange(64).div(8, rounding_mode="floor").repeat(64, 1)  # eight bands
    phi = P.exact_shapley(model, x, [0, 1], seg)
    truth = torch.stack([torch.stack([(model.w[c] * x[i])[:, seg == k].sum() for k in range(8)])
                         for i, c in enumerate([0, 1])])
    assert maxdiff(phi, truth) < 1e-4
    # KernelSHAP is exact on an additive game as soon as the regression is determined
    assert maxdiff(P.kernel_shap(model, x, [0, 1], seg, n_samples=40), truth) < 1e-3


def test_exact_shapley_axioms_on_dermnet(shortcut, batch):
    x, t = batch
    seg = torch.arange(64).div(16, rounding_mode="floor")
    seg = (seg[:, None] * 2 + (seg[None, :] >= 2)).long()  # eight blocks of 16 x 32
    phi = P.exact_shapley(shortcut, x[:2], t[:2], seg)
    with torch.no_grad():
        f = shortcut(torch.cat([x[:2], torch.zeros_like(x[:2])])).gather(1, torch.cat([t[:2], t[:2]])[:, None])[:, 0]
    assert maxdiff(phi.sum(1), f[:2] - f[2:]) < 1e-4  # efficiency
    # a dummy player: a segment of a constant image whose pixels are already the baseline
    x0 = x[:1].clone()
    x0[:, :, seg == 7] = 0.0
    assert P.exact_shapley(shortcut, x0, t[:1], seg)[0, 7].abs() < 1e-5


def test_exact_shapley_refuses_too_many_features(shortcut, batch):
    x, t = batch
    seg = torch.arange(64 * 64).view(64, 64) % 17
    with pytest.raises(ValueError, match=r"17 segments need 2\*\*17 = 131,072 forward passes.*at most 16"):
        P.exact_shapley(shortcut, x[:1], 0, seg)


def test_kernel_shap_matches_captum(shortcut, one):
    from captum.attr import KernelShap
    from sklearn.linear_model import LinearRegression

    x, t, seg = one
    k = int(seg.max()) + 1
    torch.manual_seed(7)
    ref = KernelShap(shortcut).attribute(x, target=t, feature_mask=seg[None, None], n_samples=300,
                                         perturbations_per_eval=50, return_input_shape=False)[0]
    ours = P.kernel_shap(shortcut, x, t, seg, n_samples=300, seed=7)[0]
    # the coalitions and scores are the same; Captum solves the regression in float32 (sklearn keeps
    # the dtype it is given), ours in float64: refitting ours in float32 gives Captum's numbers
    z = P.kernel_shap_coalitions(k, 300, seed=7)
    y, _ = P._coalition_scores(shortcut, x[0], torch.zeros_like(x[0]), t[0], seg, z, 64, channels_last=False)
    w = np.ones(300, dtype=np.float32)
    w[:2] = 1e6
    f32 = LinearRegression().fit(z.float().numpy(), y.numpy(), sample_weight=w).coef_
    assert maxdiff(f32, ref) < 1e-6
    assert maxdiff(ours, ref) < 1e-5 * ref.abs().max()


def test_kernel_shap_is_efficient_and_converges_to_exact_shapley(shortcut, one):
    x, t, _ = one
    seg = P.superpixels(x[0], 8)
    exact = P.exact_shapley(shortcut, x, t, seg)
    with torch.no_grad():
        f = shortcut(torch.cat([x, torch.zeros_like(x)]))[:, int(t[0])]
    errors = {}
    for n in (50, 1000):  # 20 times the samples: the error falls as 1 / sqrt(n), so by about 4.5
        runs = torch.stack([P.kernel_shap(shortcut, x, t, seg, n_samples=n, seed=s)[0] for s in range(3)])
        assert maxdiff(runs.sum(1), (f[0] - f[1]).expand(3)) < 1e-4 * f.abs().max()  # efficiency
        errors[n] = (runs - exact).abs().mean().item()
    assert errors[1000] < errors[50] / 3


# ---- expected gradients ----

def test_expected_gradients_matches_captum_gradient_shap(shortcut, batch, background):
    from captum.attr import GradientShap

    x, t = batch
    x, t = x[:3], t[:3]
    draws = P.gradient_shap_draws("captum", 3, 8, len(background), seed=11)
    np.random.seed(11)
    ref = GradientShap(shortcut).attribute(x, background, target=t, n_samples=8)
    ours = P.expected_gradients(shortcut, x, t, background, draws=draws, batch_size=24)  # Captum's one batch
    assert maxdiff(ours, ref) < 1e-6


def test_expected_gradients_matches_shap_gradient_explainer(shortcut):
    import shap

    from helpers.train import TEST_SEEDS

    # images and draws where rounding 1 - alpha from float32 instead of float64 (as shap does)
    # moves a point by one bit across a ReLU and changes the result by 1e-4
    ds = make_dataset(120, clinic="A", seed=TEST_SEEDS["A"])
    rulers = ds[torch.nonzero(ds.has_ruler)[:2, 0]]
    x, t = rulers.images, rulers.labels
    background = make_dataset(32, clinic="B", seed=0).images
    values = shap.GradientExplainer(shortcut, background, batch_size=16).shap_values(x, nsamples=16, rseed=4)
    ref = torch.as_tensor(np.stack([values[i, ..., int(t[i])] for i in range(2)]))
    draws = P.gradient_shap_draws("shap", 2, 16, len(background), seed=4)
    assert draws[1].dtype == torch.float64
    ours = P.expected_gradients(shortcut, x, t, background, draws=draws, batch_size=16)
    assert maxdiff(ours.double(), ref) < 1e-6


def test_expected_gradients_adds_up_per_drawn_baseline_on_a_linear_model(background):
    model = Linear().eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    index, alpha = torch.randint(len(background), (2, 20), generator=g), torch.rand(2, 20, generator=g)
    attr = P.expected_gradients(model, x, 1, background, draws=(index, alpha))
    with torch.no_grad():
        expected = model(x)[:, 1] - model(background)[:, 1][index].mean(1)
    # the gradient is the same everywhere, so each sample is exactly IG from its drawn baseline
    assert maxdiff(attr.sum((1, 2, 3)), expected) < 1e-3


def test_expected_gradients_bad_arguments(shortcut, batch, background):
    x, t = batch
    with pytest.raises(ValueError, match="background must be a batch"):
        P.expected_gradients(shortcut, x[:1], 0, background[0])
    with pytest.raises(ValueError, match="draws must be"):
        P.expected_gradients(shortcut, x[:2], 0, background, draws=(torch.zeros(1, 3).long(), torch.zeros(1, 3)))
    with pytest.raises(ValueError, match="background index out of range"):
        P.expected_gradients(shortcut, x[:1], 0, background, draws=(torch.full((1, 2), 99), torch.zeros(1, 2)))


# ---- the shap library's own image path ----

def test_shap_partition_explainer_is_additive_on_dermnet(shortcut, one):
    import shap

    x, t, _ = one

    def f(nhwc):
        with torch.no_grad():
            return shortcut(torch.as_tensor(nhwc, dtype=torch.float32).permute(0, 3, 1, 2)).numpy()

    explainer = shap.Explainer(f, shap.maskers.Image(0.0, shape=(64, 64, 3)))
    np.random.seed(0)
    sv = explainer(x.permute(0, 2, 3, 1).numpy(), max_evals=300, batch_size=100, outputs=[int(t[0])])
    np.random.seed(0)
    again = explainer(x.permute(0, 2, 3, 1).numpy(), max_evals=300, batch_size=100, outputs=[int(t[0])])
    assert np.array_equal(sv.values, again.values)  # seeded: the same every time
    full, empty = f(x.permute(0, 2, 3, 1).numpy())[0, int(t[0])], f(np.zeros((1, 64, 64, 3)))[0, int(t[0])]
    assert abs(sv.values[0, ..., 0].sum() - (full - empty)) < 1e-4 * abs(full - empty)


def test_shap_deep_explainer_and_captum_deep_lift_shap(shortcut, batch, background):
    import shap
    from captum.attr import DeepLiftShap

    x, t = batch
    x, t, bg = x[:2], t[:2], background[:8]

    def both(model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = shap.DeepExplainer(model, bg).shap_values(x, check_additivity=True)
            ref = DeepLiftShap(model).attribute(x, bg, target=t)
        ours = torch.as_tensor(np.stack([values[i, ..., int(t[i])] for i in range(2)])).float()
        with torch.no_grad():
            gap = model(x).gather(1, t[:, None])[:, 0] - model(bg)[:, t].mean(0)
        return ours, ref, gap

    deep, ref, gap = both(shortcut)
    assert maxdiff(deep.sum((1, 2, 3)), gap) < 1e-4  # shap's values add up (its own check passed too)
    # with the max-pool swapped for an average pool the two libraries agree exactly; with the
    # max-pool, Captum's rule breaks DeepLIFT's summation-to-delta (see notebook 07)
    avg = copy.deepcopy(shortcut)
    avg.maxpool = nn.AvgPool2d(2)
    deep, ref, gap = both(avg)
    assert maxdiff(deep, ref) < 1e-6
    assert maxdiff(ref.sum((1, 2, 3)), gap) < 1e-4


# ---- the contract ----

SEG = torch.arange(64).div(16, rounding_mode="floor").repeat(64, 1)

METHODS = {
    "occlusion": lambda m, x, t: P.occlusion(m, x, t, window=16, stride=16),
    "lime": lambda m, x, t: P.lime(m, x, t, SEG, n_samples=20).map,
    "kernel_shap": lambda m, x, t: P.paint(P.kernel_shap(m, x, t, SEG, n_samples=20), SEG),
    "exact_shapley": lambda m, x, t: P.paint(P.exact_shapley(m, x, t, SEG), SEG),
    "expected_gradients": lambda m, x, t: P.expected_gradients(m, x, t, x.flip(0), n_samples=4),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_shapes_and_no_side_effects(shortcut, batch, name):
    x, t = batch
    out = run_without_side_effects(METHODS[name], shortcut, x[:2].clone(), t[:2])
    assert out.shape == ((2, 3, 64, 64) if name == "expected_gradients" else (2, 1, 64, 64))


@pytest.mark.parametrize("name", list(METHODS))
def test_bad_arguments(shortcut, batch, name):
    assert_rejects_bad_input(METHODS[name], shortcut, batch[0])


@pytest.mark.parametrize("name", list(METHODS))
def test_deterministic_and_independent_of_the_global_seed(shortcut, batch, name):
    x, t = batch
    torch.manual_seed(0)
    np.random.seed(0)
    a = METHODS[name](shortcut, x[:2], t[:2])
    torch.manual_seed(1)
    np.random.seed(1)
    assert torch.equal(a, METHODS[name](shortcut, x[:2], t[:2]))
