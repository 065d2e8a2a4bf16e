"""helpers.evaluation: deletion/insertion (vs Quantus PixelFlipping), ROAD's imputation (vs Quantus),
infidelity and max-sensitivity (vs Captum, exactly given the same perturbations), faithfulness
correlation (vs Quantus), localization AUC (vs scikit-learn), Kendall's tau (vs scipy), the
bootstrap, the method contract and bad input."""

import copy
import warnings

import numpy as np
import pytest
import torch
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max as captum_sensitivity_max
from contract_checks import run_without_side_effects

from helpers import evaluation as E
from helpers.cam import grad_cam
from helpers.data import make_dataset
from helpers.gradients import saliency, smoothgrad
from helpers.hooks import count_hooks
from helpers.train import logits


@pytest.fixture(scope="module")
def rulers():
    """Six clinic-B images with a ruler, their predicted classes (shortcut model) and masks."""
    ds = make_dataset(6, clinic="B", seed=5, ruler=True)
    return ds


@pytest.fixture(scope="module")
def xt(shortcut, rulers):
    x = rulers.images
    return x, logits(shortcut, x).argmax(1)


def _captum_method(method, model):
    """A course method as Captum's explanation_func: tuple in, tuple out."""
    return lambda inputs, target: (method(model, inputs[0] if isinstance(inputs, tuple) else inputs, target),)


# ------------------------------------------------------------------------------------------
# Infidelity and sensitivity: Captum, exactly
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("batch_size", [None, 12])
def test_infidelity_equals_captum(shortcut, xt, normalize, batch_size):
    x, t = xt
    attr = saliency(shortcut, x, t)
    perturb = E.noise_perturbation(0.01)
    ours = E.infidelity(shortcut, x, t, attr, perturb, 10, seed=3, normalize=normalize, batch_size=batch_size,
                        channels_last=False)
    torch.manual_seed(3)
    theirs = captum_infidelity(shortcut, perturb, x, attr, target=t, n_perturb_samples=10, normalize=normalize,
                               max_examples_per_batch=batch_size)
    assert torch.equal(ours, theirs)
    fast = E.infidelity(shortcut, x, t, attr, perturb, 10, seed=3, normalize=normalize, batch_size=batch_size)
    assert torch.allclose(fast, theirs, rtol=1e-4, atol=1e-6)  # channels-last: round-off only


def test_infidelity_dict_shares_the_perturbations(shortcut, xt):
    x, t = xt
    maps = {"saliency": saliency(shortcut, x, t), "grad_cam": grad_cam(shortcut, x, t)}
    perturb = E.noise_perturbation(0.01)
    both = E.infidelity(shortcut, x, t, maps, perturb, 6, seed=1)
    for name, a in maps.items():
        assert torch.equal(both[name], E.infidelity(shortcut, x, t, a, perturb, 6, seed=1))


def test_infidelity_normalized_is_scale_invariant(shortcut, xt):
    x, t = xt
    a = saliency(shortcut, x, t)
    p = E.noise_perturbation(0.01)
    one = E.infidelity(shortcut, x, t, a, p, 8, normalize=True)
    assert torch.allclose(E.infidelity(shortcut, x, t, 7 * a, p, 8, normalize=True), one, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(E.infidelity(shortcut, x, t, 7 * a, p, 8), E.infidelity(shortcut, x, t, a, p, 8))


def test_infidelity_leaves_the_callers_rng_alone(shortcut, xt):
    x, t = xt
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    E.infidelity(shortcut, x, t, saliency(shortcut, x, t), E.noise_perturbation(), 4)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("batch_size", [None, 12])
def test_sensitivity_max_equals_captum(shortcut, xt, batch_size):
    x, t = xt
    ours = E.sensitivity_max(saliency, shortcut, x, t, 0.02, 5, seed=1, batch_size=batch_size)
    torch.manual_seed(1)
    theirs = captum_sensitivity_max(_captum_method(saliency, shortcut), x, perturb_radius=0.02, n_perturb_samples=5,
                                    target=t, max_examples_per_batch=batch_size)
    assert torch.equal(ours, theirs)


def test_sensitivity_max_of_a_sampling_method_equals_captum(shortcut, xt):
    """SmoothGrad draws its noise from the same global stream, in the same order."""
    x, t = xt

    def sg(model, inputs, target):
        return smoothgrad(model, inputs, target, n_samples=4)

    ours = E.sensitivity_max(sg, shortcut, x, t, 0.02, 3, seed=2)
    torch.manual_seed(2)
    theirs = captum_sensitivity_max(_captum_method(sg, shortcut), x, n_perturb_samples=3, target=t)
    assert torch.equal(ours, theirs)


def test_sensitivity_is_zero_for_a_constant_map(shortcut, xt):
    x, t = xt
    ones = E.sensitivity_max(lambda m, x, t: torch.ones_like(x), shortcut, x, t, 0.05, 3)
    assert torch.equal(ones, torch.zeros(len(x)))


# ------------------------------------------------------------------------------------------
# Faithfulness correlation and pixel flipping: Quantus
# ------------------------------------------------------------------------------------------

@pytest.fixture
def quantus():
    quantus = pytest.importorskip("quantus")
    old = getattr(np, "trapz", None)
    np.trapz = np.trapezoid  # Quantus 0.6.0 calls the removed np.trapz
    yield quantus
    if old is None:
        del np.trapz
    else:
        np.trapz = old


def test_faithfulness_correlation_equals_quantus(shortcut, xt, quantus):
    x, t = xt
    attr = grad_cam(shortcut, x, t)
    ours = E.faithfulness_correlation(shortcut, x, t, attr, n_runs=40, subset_size=224, seed=0, channels_last=False)
    np.random.seed(0)
    metric = quantus.FaithfulnessCorrelation(nr_runs=40, subset_size=224, perturb_baseline=0.0,
                                             disable_warnings=True, return_aggregate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = metric(model=shortcut, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=attr.numpy(), device="cpu")
    assert np.abs(ours.numpy() - np.array(theirs)).max() <= 1e-5


def test_deletion_equals_quantus_pixel_flipping(shortcut, xt, quantus):
    """Quantus flips single values (C H W of them, features_in_step at a time) in the order of the
    map broadcast over the channels; with a map of distinct values, every third step of 64 values
    has removed whole pixels: our deletion at 64 pixels a step."""
    x, t = xt
    smap = saliency(shortcut, x, t).sum(1, keepdim=True)
    metric = quantus.PixelFlipping(features_in_step=64, perturb_baseline=0.0, disable_warnings=True,
                                   return_aggregate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.array(metric(model=shortcut, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=smap.numpy(),
                                 device="cpu"))
    ours = E.deletion(shortcut, x, t, smap, steps=64, substitute=0.0, channels_last=False)
    assert np.abs(ours.scores[:, 1:].numpy() - theirs[:, 2::3]).max() <= 1e-6


def test_linear_imputation_equals_quantus(xt, quantus):
    from quantus.functions.perturb_func import noisy_linear_imputation

    x, _ = xt
    g = torch.Generator().manual_seed(0)
    removed = torch.rand(2, 1, 64, 64, generator=g) < 0.5
    removed[1] = False
    removed[1, 0, 10:50, 0:60] = True  # a large hole touching the border
    ours = E.linear_imputation(x[:2], removed)
    for i in range(2):
        ref = noisy_linear_imputation(x[i].double().numpy(), np.flatnonzero(removed[i].numpy().ravel()), noise=0.0)
        assert np.abs(ours[i].double().numpy() - ref).max() <= 1e-6
    assert torch.equal(ours[~removed.expand_as(ours)], x[:2][~removed.expand_as(ours)])


# ------------------------------------------------------------------------------------------
# Deletion, insertion, ROAD
# ------------------------------------------------------------------------------------------

def test_deletion_and_insertion_by_hand(shortcut, xt):
    x, t = xt
    attr = grad_cam(shortcut, x, t)
    d = E.deletion(shortcut, x, t, attr, steps=4, substitute="mean")
    i = E.insertion(shortcut, x, t, attr, steps=4, substitute="mean")
    assert d.fractions.tolist() == [0, 0.25, 0.5, 0.75, 1.0] and d.scores.shape == (6, 5) and d.auc.shape == (6,)
    probs = logits(shortcut, x).softmax(1).gather(1, t[:, None])[:, 0]
    mean = E.make_substitute(x, "mean")
    p_mean = logits(shortcut, mean).softmax(1).gather(1, t[:, None])[:, 0]
    assert torch.allclose(d.scores[:, 0], probs, atol=1e-6) and torch.allclose(d.scores[:, -1], p_mean, atol=1e-6)
    assert torch.allclose(i.scores[:, 0], p_mean, atol=1e-6) and torch.allclose(i.scores[:, -1], probs, atol=1e-6)
    # one step by hand: the top quarter of the pixels, in the map's order
    ranks = E.pixel_order(attr)
    x1 = torch.where((ranks < 1024).view(6, 1, 64, 64), mean, x)
    assert torch.allclose(d.scores[:, 1], logits(shortcut, x1).softmax(1).gather(1, t[:, None])[:, 0], atol=1e-6)
    s = d.scores
    assert torch.allclose(d.auc, ((s[:, 1:] + s[:, :-1]) / 2 * 0.25).sum(1).to(d.auc.dtype))


def test_pixel_order_morf_lerf_and_ties():
    a = torch.tensor([[[[3.0, 1.0], [1.0, -2.0]]]])
    assert E.pixel_order(a).tolist() == [[0, 1, 2, 3]]
    assert E.pixel_order(a, "lerf").tolist() == [[3, 1, 2, 0]]
    assert E.pixel_order(a, abs=True).tolist() == [[0, 2, 3, 1]]


def test_a_faithful_map_beats_its_reverse(shortcut, xt):
    """Deleting by the gradient x input of the score beats deleting by its negation (MoRF vs LeRF)."""
    x, t = xt
    attr = saliency(shortcut, x, t, abs=False) * x
    morf = E.deletion(shortcut, x, t, attr, steps=16, score="logit").auc
    lerf = E.deletion(shortcut, x, t, attr, steps=16, score="logit", order="lerf").auc
    assert (morf < lerf).all()
    assert torch.equal(E.deletion(shortcut, x, t, -attr, steps=16, score="logit").auc, lerf)


def test_batching_does_not_change_the_curve(shortcut, xt):
    x, t = xt
    attr = grad_cam(shortcut, x, t)
    a = E.insertion(shortcut, x, t, attr, steps=8, batch_size=5)
    b = E.insertion(shortcut, x, t, attr, steps=8, batch_size=256)
    assert torch.allclose(a.scores, b.scores, atol=1e-6)


def test_road_is_seeded_and_keeps_the_kept_pixels(shortcut, xt):
    x, t = xt
    attr = grad_cam(shortcut, x[:2], t[:2])
    one = E.road(shortcut, x[:2], t[:2], attr, steps=4, seed=1)
    assert torch.equal(one.scores, E.road(shortcut, x[:2], t[:2], attr, steps=4, seed=1).scores)
    assert not torch.equal(one.scores, E.road(shortcut, x[:2], t[:2], attr, steps=4, seed=2).scores)
    assert one.fractions.tolist() == [0, 0.25, 0.5, 0.75]  # never every pixel: nothing to impute from
    probs = logits(shortcut, x[:2]).softmax(1).gather(1, t[:2, None])[:, 0]
    assert torch.allclose(one.scores[:, 0], probs, atol=1e-6)


def test_substitutes(xt):
    x, _ = xt
    for kind in E.SUBSTITUTES:
        s = E.make_substitute(x, kind)
        assert s.shape == x.shape and torch.isfinite(s).all()
    assert torch.equal(E.make_substitute(x, 0.5), torch.full_like(x, 0.5))
    with pytest.raises(ValueError, match="substitute must be one of"):
        E.make_substitute(x, "grey")


# ------------------------------------------------------------------------------------------
# Localization, bootstrap, rankings
# ------------------------------------------------------------------------------------------

def test_localization_auc_equals_sklearn(shortcut, xt, rulers):
    from sklearn.metrics import average_precision_score, roc_auc_score

    x, t = xt
    mask = rulers.masks["ruler"]
    y = mask.flatten(1).numpy()
    for attr in (saliency(shortcut, x, t), grad_cam(shortcut, x, t)):  # grad_cam: plateaus of ties
        mags = attr.abs().sum(1).flatten(1).double().numpy()
        ap, roc = E.localization_auc(attr, mask, "pr"), E.localization_auc(attr, mask, "roc")
        for i in range(len(y)):
            assert abs(ap[i].item() - average_precision_score(y[i], mags[i])) <= 1e-6
            assert abs(roc[i].item() - roc_auc_score(y[i], mags[i])) <= 1e-6


def test_localization_auc_extremes():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2] = True
    perfect = mask.float()[:, None] + 0.1
    assert E.localization_auc(perfect, mask).item() == 1.0 and E.localization_auc(perfect, mask, "roc").item() == 1.0
    flat = torch.ones(1, 1, 4, 4)
    assert E.localization_auc(flat, mask).item() == 0.5 and E.localization_auc(flat, mask, "roc").item() == 0.5
    assert E.localization_auc(flat, torch.zeros_like(mask)).isnan().all()


def test_kendall_tau_equals_scipy():
    from scipy.stats import kendalltau

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a, b = torch.randint(0, 5, (9,), generator=g), torch.randint(0, 5, (9,), generator=g)
        ours, theirs = E.kendall_tau(a, b), kendalltau(a.numpy(), b.numpy()).statistic
        assert (np.isnan(ours) and np.isnan(theirs)) or abs(ours - theirs) <= 1e-12


def test_bootstrap_ci_is_paired_seeded_and_covers_the_mean():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 40, generator=g)
    mean, low, high = E.bootstrap_ci(v, n_boot=500, seed=1)
    assert ((low < mean) & (mean < high)).all()
    m1, l1, h1 = E.bootstrap_ci(v[1], n_boot=500, seed=1)
    assert l1 == low[1] and h1 == high[1]  # the same resamples for every row
    # the width shrinks like 1/sqrt(N)
    wide = E.bootstrap_ci(torch.randn(10, generator=g), n_boot=2000)
    narrow = E.bootstrap_ci(torch.randn(640, generator=g), n_boot=2000)
    assert (narrow[2] - narrow[1]) < (wide[2] - wide[1]) / 4


def test_rank_methods():
    assert E.rank_methods({"a": 0.1, "b": 0.3, "c": 0.2}) == {"a": 3, "b": 1, "c": 2}
    assert E.rank_methods({"a": 0.1, "b": 0.3, "c": 0.2}, higher_is_better=False) == {"a": 1, "b": 3, "c": 2}
    assert E.rank_methods({"a": 0.30, "b": 0.31, "c": 0.1}, margin=0.05) == {"a": 1, "b": 1, "c": 3}


# ------------------------------------------------------------------------------------------
# The contract and bad input
# ------------------------------------------------------------------------------------------

def test_no_side_effects(shortcut, xt):
    x, t = xt
    attr = grad_cam(shortcut, x, t)
    before = attr.clone()
    run_without_side_effects(lambda m, x, t: E.deletion(m, x, t, attr, steps=4), shortcut, x, t)
    run_without_side_effects(lambda m, x, t: E.road(m, x[:1], t[:1], attr[:1], steps=2), shortcut, x, t)
    run_without_side_effects(lambda m, x, t: E.infidelity(m, x, t, attr, E.noise_perturbation(), 2), shortcut, x, t)
    run_without_side_effects(lambda m, x, t: E.sensitivity_max(grad_cam, m, x, t, 0.02, 2), shortcut, x, t)
    run_without_side_effects(lambda m, x, t: E.faithfulness_correlation(m, x, t, attr, n_runs=4), shortcut, x, t)
    assert torch.equal(attr, before) and count_hooks(shortcut) == 0


@pytest.mark.parametrize("metric", [
    lambda m, x, t, a: E.deletion(m, x, t, a, steps=2),
    lambda m, x, t, a: E.road(m, x, t, a, steps=2),
    lambda m, x, t, a: E.infidelity(m, x, t, a, E.noise_perturbation(), 2),
    lambda m, x, t, a: E.sensitivity_max(grad_cam, m, x, t, 0.02, 2),
    lambda m, x, t, a: E.faithfulness_correlation(m, x, t, a, n_runs=2),
], ids=["deletion", "road", "infidelity", "sensitivity_max", "faithfulness_correlation"])
def test_non_finite_images_and_scores_are_refused(shortcut, xt, metric):
    x, t = xt[0][:2], xt[1][:2]
    attr = torch.rand(2, 1, 64, 64)
    bad = x.clone()
    bad[1, 0, 5, 5] = float("inf")
    with pytest.raises(ValueError, match=r"x holds 1 NaN or inf values \(in images \[1\]\)"):
        metric(shortcut, bad, t, attr)
    broken = copy.deepcopy(shortcut)
    with torch.no_grad():
        broken.fc.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or inf scores"):
        metric(broken, x, t, attr)
    assert count_hooks(shortcut) == 0 and count_hooks(broken) == 0


def test_bad_input(shortcut, xt):
    x, t = xt
    attr = grad_cam(shortcut, x, t)
    with pytest.raises(ValueError, match="x must be a batch"):
        E.deletion(shortcut, x[0], 0, attr)
    with pytest.raises(ValueError, match="target 9 is out of range"):
        E.insertion(shortcut, x, 9, attr, steps=2)
    with pytest.raises(ValueError, match="attr of shape"):
        E.deletion(shortcut, x, t, attr[:2])
    with pytest.raises(TypeError, match="attr must be a torch.Tensor"):
        E.deletion(shortcut, x, t, attr.numpy())
    with pytest.raises(ValueError, match="steps must be an int"):
        E.deletion(shortcut, x, t, attr, steps=0)
    with pytest.raises(ValueError, match="order must be"):
        E.deletion(shortcut, x, t, attr, order="random")
    with pytest.raises(ValueError, match="score must be"):
        E.insertion(shortcut, x, t, attr, score="softmax")
    with pytest.raises(ValueError, match="attr has NaN"):
        E.deletion(shortcut, x, t, attr * float("nan"))
    with pytest.raises(TypeError, match="perturb_fn must be a function"):
        E.infidelity(shortcut, x, t, attr, 0.01)
    with pytest.raises(ValueError, match="perturb_fn must return"):
        E.infidelity(shortcut, x, t, attr, lambda inputs: inputs, 2)
    with pytest.raises(ValueError, match="n_samples must be an int"):
        E.sensitivity_max(saliency, shortcut, x, t, 0.02, 0)
    with pytest.raises(TypeError, match="method must be an attribution function"):
        E.sensitivity_max("saliency", shortcut, x, t)
    with pytest.raises(ValueError, match="subset_size"):
        E.faithfulness_correlation(shortcut, x, t, attr, subset_size=10 ** 6)
    with pytest.raises(ValueError, match="curve must be"):
        E.localization_auc(attr, torch.zeros(6, 64, 64, dtype=torch.bool), "f1")
    with pytest.raises(ValueError, match="model is in training mode"):
        E.deletion(copy.deepcopy(shortcut).train(), x, t, attr)
    with pytest.raises(ValueError, match="values must be"):
        E.bootstrap_ci(torch.ones(1))


# ------------------------------------------------------------------------------------------
# Notebook 13's exercise checkers
# ------------------------------------------------------------------------------------------

def _my_deletion_scores(model, x, target, attr, steps, descending=True, probs=True, use_abs=False):
    """The solution of notebook 13's exercise 1, with the usual slips as switches."""
    b, _, h, w = x.shape
    v = attr.abs().sum(1) if use_abs else attr.sum(1)
    order = v.flatten(1).argsort(dim=1, descending=descending, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(h * w).expand(b, -1))
    t = torch.as_tensor(target).expand(b)
    out = []
    with torch.no_grad():
        for k in range(steps + 1):
            removed = (ranks < k * h * w // steps).view(b, 1, h, w)
            scores = model(torch.where(removed, 0.0, x))
            scores = scores.softmax(1) if probs else scores
            out.append(scores[torch.arange(b), t])
    return torch.stack(out, 1)


def test_check_deletion_scores():
    from helpers.exercises import check_deletion_scores

    assert check_deletion_scores(_my_deletion_scores).passed
    lerf = check_deletion_scores(lambda *a: _my_deletion_scores(*a, descending=False))
    assert not lerf.passed and "LeRF" in lerf.message
    logit = check_deletion_scores(lambda *a: _my_deletion_scores(*a, probs=False))
    assert not logit.passed and "logits" in logit.message
    mag = check_deletion_scores(lambda *a: _my_deletion_scores(*a, use_abs=True))
    assert not mag.passed and "magnitude" in mag.message
    short = check_deletion_scores(lambda *a: _my_deletion_scores(*a)[:, 1:])
    assert not short.passed and "steps + 1" in short.message

    def scaffold(model, x, target, attr, steps):
        raise NotImplementedError

    todo = check_deletion_scores(scaffold)
    assert not todo.passed and not todo.done and str(todo).startswith("TODO")


def test_check_guided_backprop_randomization_question():
    from helpers.exercises import check_guided_backprop_randomization_question as check

    todo = check(None)
    assert not todo.done and str(todo).startswith("TODO")
    assert not check("no").passed
    right, wrong = check(False), check(True)  # guided backprop barely changes: it fails the check
    assert right.passed and "Nie et al." in right.message
    assert not wrong.passed and "guided backprop" in wrong.message
