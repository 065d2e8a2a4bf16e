"""helpers.concepts: concept sets, CAVs, TCAV with its test, and parity with Captum's TCAV."""

import os
import random
from functools import partial

import numpy as np
import pytest
import torch
import torchvision
from scipy.stats import ttest_ind
from torch import nn

from helpers.concepts import (
    CONCEPTS,
    artifacts,
    captum_reference,
    class_images,
    concept_images,
    fmt_p,
    layer_activations,
    layer_gradients,
    random_images,
    relative_tcav,
    score_range,
    sensitivities,
    significance,
    skin_tone,
    summary,
    tcav_experiment,
    tcav_score,
    tcav_test,
    train_cav,
)
from helpers.data import MEL, make_dataset
from helpers.hooks import count_hooks
from helpers.models import load_dermnet


@pytest.fixture(scope="module")
def small_sets():
    """Small sets for fast tests: 12 ruler images, 3 random sets of 12, 10 melanomas."""
    return (concept_images("ruler", 12), [random_images(12, seed=i) for i in range(3)], class_images("mel", 10))


def _state(model):
    return (model.training, [p.requires_grad for p in model.parameters()], [p.grad for p in model.parameters()],
            count_hooks(model))


def test_concept_sets_are_deterministic_and_shaped():
    a, b = concept_images("ink", 6), concept_images("ink", 6)
    assert a.shape == (6, 3, 64, 64) and torch.equal(a, b)
    assert not torch.equal(concept_images("ink", 6, seed=1), a)
    assert not torch.equal(random_images(6, seed=0), random_images(6, seed=1))
    for name in CONCEPTS:
        x = concept_images(name, 3)
        assert x.shape == (3, 3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_concept_sets_check_their_arguments():
    with pytest.raises(ValueError, match="name must be one of"):
        concept_images("rulers", 5)
    with pytest.raises(ValueError, match="n must be a positive int"):
        concept_images("ruler", 0)
    with pytest.raises(ValueError, match="seed"):
        random_images(5, seed=-1)


def test_selection_uses_the_ground_truth():
    ds = make_dataset(300, clinic="B", seed=5)
    present = artifacts(ds)
    assert torch.equal(present["ruler"], ds.has_ruler)
    for name in ("ink", "hair", "corners"):
        assert 0.05 < float(present[name].float().mean()) < 0.5
    tone = skin_tone(ds)
    assert float(tone.min()) > -0.1 and float(tone.max()) < 1.1
    # the estimate follows the skin's real darkness: brighter skin pixels, lower tone
    bright = ds.images.mean(1)[:, :4, 28:36].mean((1, 2))  # a strip at the top edge, mostly skin
    assert float(torch.corrcoef(torch.stack([tone, bright]))[0, 1]) < -0.8


def test_sets_differ_by_their_concept():
    dark, light = concept_images("dark_skin", 8), concept_images("light_skin", 8)
    assert float(dark.mean()) < float(light.mean()) - 0.1
    from helpers.featurevis import ruler_periodicity

    assert float(ruler_periodicity(concept_images("ruler", 20)).median()) > \
        3 * float(ruler_periodicity(random_images(20)).median())


def test_layer_activations_are_the_flattened_layer_output(shortcut, small_sets):
    x = small_sets[0][:4]
    acts = layer_activations(shortcut, "layer4", x, batch_size=3)
    with torch.no_grad():
        expected = shortcut.features(x).flatten(1)
    assert acts.shape == (4, 128 * 8 * 8)
    assert torch.allclose(acts, expected, atol=1e-5)
    assert count_hooks(shortcut) == 0


def test_layer_gradients_are_the_class_logit_gradient(shortcut, small_sets):
    x = small_sets[2][:5]
    out = layer_gradients(shortcut, ["layer2", "layer4"], x, MEL, batch_size=2)
    acts4, g4 = out["layer4"]
    # DermNet averages layer4 over its 8x8 grid before fc: the gradient is w_mel / 64 everywhere
    expected = (shortcut.fc.weight[MEL].detach() / 64)[:, None].expand(128, 64).reshape(-1)
    assert torch.allclose(g4, expected.expand_as(g4), atol=1e-7)
    # layer2: against autograd on a hand-built forward pass
    with torch.enable_grad():
        m = shortcut
        a1 = m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(m.normalize(x))))))
        a2 = m.layer2(a1)
        a2r = a2.detach().requires_grad_(True)
        z = m.fc(m.avgpool(m.layer4(m.layer3(a2r))).flatten(1))
        (g2,) = torch.autograd.grad(z[:, MEL].sum(), a2r)
    assert torch.allclose(out["layer2"][1], g2.flatten(1), atol=1e-6)
    assert torch.allclose(out["layer2"][0], a2.detach().flatten(1), atol=1e-5)
    assert shortcut.fc.weight.grad is None and count_hooks(shortcut) == 0


def test_train_cav_finds_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(50, generator=g)
    d = d / d.norm()
    base = torch.randn(120, 50, generator=g)
    concept, rand = base[:60] + 8 * d, base[60:]
    cav, acc = train_cav(concept, rand, seed=0)
    assert cav.shape == (50,) and abs(float(cav.norm()) - 1) < 1e-6
    assert float(cav @ d) > 0.5 and acc > 0.95  # points towards the concept
    again, acc2 = train_cav(concept, rand, seed=0)
    assert torch.equal(cav, again) and acc == acc2
    flipped, _ = train_cav(rand, concept, seed=0)
    assert float(flipped @ d) < -0.5
    cav3, acc3, (low, high) = train_cav(concept, rand, seed=1, accuracy_range=True)
    assert low <= acc3 <= high


def test_train_cav_checks_its_arguments():
    x = torch.randn(10, 8)
    with pytest.raises(ValueError, match="random_acts has 2 rows"):
        train_cav(x, x[:2])
    with pytest.raises(ValueError, match="features"):
        train_cav(x, torch.randn(10, 9))
    with pytest.raises(ValueError, match=r"concept_acts must be \[N, D\]"):
        train_cav(torch.randn(10, 2, 4), x)
    with pytest.raises(TypeError, match="concept_acts must be a torch.Tensor"):
        train_cav(x.numpy(), x)


def test_tcav_score_counts_positive_directional_derivatives(shortcut, small_sets):
    x = small_sets[2]
    g = torch.Generator().manual_seed(3)
    cav = torch.randn(32 * 16 * 16, generator=g)
    grads = layer_gradients(shortcut, "layer2", x, MEL)["layer2"][1]
    assert tcav_score(shortcut, "layer2", cav, x, MEL) == float(((grads @ cav) > 0).float().mean())
    # layer4: every image has the same gradient, so the score is 0 or 1, the sign of w_mel . cav
    cav4 = torch.randn(128 * 64, generator=g)
    w = shortcut.fc.weight[MEL].detach()[:, None].expand(128, 64).reshape(-1)
    assert tcav_score(shortcut, "layer4", cav4, x, MEL) == float(float(w @ cav4) > 0)
    with pytest.raises(ValueError, match="cav has 10 entries"):
        tcav_score(shortcut, "layer2", torch.ones(10), x, MEL)
    assert torch.equal(sensitivities(grads, cav), grads @ cav)


def test_significance_is_scipys_t_test_with_bonferroni():
    s, z = [0.9, 0.95, 1.0, 0.85], [0.2, 0.7, 0.5, 0.1, 0.9]
    out = significance(s, z, n_tests=7)
    p = ttest_ind(s, z).pvalue
    assert out["p_value"] == pytest.approx(p) and out["p_corrected"] == pytest.approx(min(1, 7 * p))
    assert out["significant"] == (min(1, 7 * p) < 0.05)
    assert significance([1.0, 1.0], [1.0, 1.0])["p_value"] == 1.0
    with pytest.raises(ValueError, match="at least 2 random sets"):
        significance([0.5], [0.1, 0.2])
    with pytest.raises(ValueError, match="n_tests"):
        significance(s, z, n_tests=0)


def test_tcav_test_returns_the_documented_figures(shortcut, small_sets):
    concept, randoms, mel = small_sets
    before = _state(shortcut)
    one = tcav_test(shortcut, "layer2", concept, randoms, mel, MEL, seed=0)
    corrected = tcav_test(shortcut, "layer2", concept, randoms, mel, MEL, seed=0, n_tests=5)
    for key in ("score_mean", "score_std", "random_mean", "p_value", "significant", "scores", "cavs", "accuracies"):
        assert key in one
    assert len(one["scores"]) == 3 and one["cavs"].shape == (3, 32 * 16 * 16)
    assert one["p_value"] == corrected["p_value"]
    assert corrected["p_corrected"] == pytest.approx(min(1.0, 5 * one["p_value"]))
    assert one["p_corrected"] == one["p_value"]  # no n_tests: uncorrected
    assert one["score_mean"] == pytest.approx(float(one["scores"].double().mean()))
    # the round-off variants bracket the figures
    assert all(abs(v["score_mean"] - one["score_mean"]) <= 0.05 for v in one["variants"])
    assert _state(shortcut) == before
    again = tcav_test(shortcut, "layer2", concept, randoms, mel, MEL, seed=0)
    assert torch.equal(again["scores"], one["scores"]) and again["p_value"] == one["p_value"]


def test_tcav_experiment_matches_tcav_test(shortcut, small_sets):
    concept, randoms, mel = small_sets
    many = tcav_experiment(shortcut, ["layer2", "layer3"], {"ruler": concept, "other": randoms[0]}, randoms, mel, MEL)
    one = tcav_test(shortcut, "layer3", concept, randoms, mel, MEL, n_tests=4)
    assert torch.equal(many[("ruler", "layer3")]["scores"], one["scores"])
    assert many[("ruler", "layer3")]["p_corrected"] == one["p_corrected"]  # n_tests = 2 concepts x 2 layers


def test_bad_input_gets_clear_errors_and_leaves_the_model_alone(shortcut, small_sets):
    concept, randoms, mel = small_sets
    before = _state(shortcut)
    with pytest.raises(ValueError, match="concept_images is empty"):
        tcav_test(shortcut, "layer2", concept[:0], randoms, mel, MEL)
    with pytest.raises(ValueError, match="random_image_sets has 1 set"):
        tcav_test(shortcut, "layer2", concept, randoms[:1], mel, MEL)
    with pytest.raises(TypeError, match="random_image_sets must be a list"):
        tcav_test(shortcut, "layer2", concept, randoms[0], mel, MEL)
    with pytest.raises(ValueError, match="layer 'layer5' is not a module"):
        tcav_test(shortcut, "layer5", concept, randoms, mel, MEL)
    with pytest.raises(ValueError, match="layer 'layer9' is not a module"):
        layer_activations(shortcut, "layer9", concept)
    with pytest.raises(ValueError, match="target 7 is out of range"):  # raised mid-way, hooks in place
        tcav_test(shortcut, "layer2", concept, randoms, mel, 7)
    with pytest.raises(ValueError, match="images must be a batch"):
        tcav_score(shortcut, "layer2", torch.ones(8192), mel[0], MEL)
    assert _state(shortcut) == before
    shortcut.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            tcav_test(shortcut, "layer2", concept, randoms, mel, MEL)
    finally:
        shortcut.eval()


def test_relative_tcav(shortcut, small_sets):
    concept, randoms, mel = small_sets
    rel = relative_tcav(shortcut, "layer2", concept, randoms[0], mel, MEL, seeds=range(3))
    assert len(rel["scores"]) == 3 and 0 <= rel["score_mean"] <= 1
    assert rel["score_mean_range"][0] <= rel["score_mean"] <= rel["score_mean_range"][1]


def test_printing_helpers(shortcut, small_sets):
    assert fmt_p(3e-5) == "<0.0001" and fmt_p(5e-4) == "<0.001" and fmt_p(0.004) == "<0.01"
    assert fmt_p(0.034) == "0.03" and fmt_p(0.56) == "0.6" and fmt_p(0.56, coarse=True) == ">0.05"
    concept, randoms, mel = small_sets
    row = summary(tcav_test(shortcut, "layer2", concept, randoms, mel, MEL))
    assert set(row) == {"TCAV", "null", "p (Bonferroni)", "significant"} and " ± " in row["TCAV"]
    grads = layer_gradients(shortcut, "layer2", mel, MEL)["layer2"][1]
    score, low, high = score_range(grads, torch.ones(grads.shape[1]))
    assert low <= score <= high


def test_parity_with_captum_using_our_cavs(shortcut, small_sets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Captum must write nothing into the working directory
    concept, randoms, mel = small_sets
    ours = tcav_test(shortcut, "layer2", concept, randoms, mel, MEL)
    sets = {"ruler": concept, "random_0": randoms[0], "random_1": randoms[1]}
    pairs = [("ruler", "random_0"), ("ruler", "random_1")]
    cavs = {p: ours["cavs"][i] for i, p in enumerate(pairs)}
    random.seed(123)
    np.random.seed(123)
    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    before = _state(shortcut)
    theirs = captum_reference(shortcut, "layer2", sets, pairs, mel, MEL, cavs=cavs)
    grads = layer_gradients(shortcut, "layer2", mel, MEL)["layer2"][1]
    for i, p in enumerate(pairs):
        assert theirs[p]["sign_count"] == float(ours["scores"][i])  # exactly the same count
        assert abs(theirs[p]["magnitude"] - float(sensitivities(grads, cavs[p]).mean())) <= 1e-6
        assert torch.equal(theirs[p]["cav"], cavs[p])
    assert os.listdir(tmp_path) == []
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2])
    assert _state(shortcut)[:2] == before[:2] and _state(shortcut)[3] == 0


def test_captums_own_cavs_are_seeded_and_comparable(shortcut, small_sets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    concept, randoms, mel = small_sets
    sets = {"ruler": concept, "random_0": randoms[0]}
    pairs = [("ruler", "random_0")]
    a = captum_reference(shortcut, "layer3", sets, pairs, mel, MEL, seed=0)
    b = captum_reference(shortcut, "layer3", sets, pairs, mel, MEL, seed=0)
    assert torch.equal(a[pairs[0]]["cav"], b[pairs[0]]["cav"])  # seeded: the same CAV twice
    ours, _ = train_cav(layer_activations(shortcut, "layer3", concept), layer_activations(shortcut, "layer3",
                                                                                         randoms[0]))
    v = a[pairs[0]]["cav"] / a[pairs[0]]["cav"].norm()
    assert float(v @ ours) > 0.3  # two linear classifiers, similar directions
    assert 0 <= a[pairs[0]]["accuracy"] <= 1
    assert os.listdir(tmp_path) == []


def test_exercise_checkers():
    from helpers.exercises import check_tcav_score

    assert check_tcav_score(lambda g, c: float(((g @ c) > 0).float().mean()))
    wrong = check_tcav_score(lambda g, c: float((g @ c).mean() > 0))
    assert not wrong and "mean" in wrong.message
    assert "negative" in check_tcav_score(lambda g, c: float(((g @ c) < 0).float().mean())).message
    assert "raised" in check_tcav_score(lambda g, c: 1 / 0).message


def test_ink_question_is_answered_by_tcav_and_by_the_intervention():
    """Notebook 10's exercise 2: exactly one pair of answers passes, measured on fresh images, and a
    wrong answer is told how to measure it, not the figures."""
    from helpers.exercises import check_ink_question

    assert "ink_significant must be True or False" in check_ink_question("yes", False).message
    results = {(a, b): check_ink_question(a, b) for a in (True, False) for b in (True, False)}
    assert sum(r.passed for r in results.values()) == 1
    right = next(r for r in results.values() if r.passed)
    assert "adding ink turns" in right.message and "TCAV: layer2" in right.message
    assert all("adding ink turns" not in r.message for r in results.values() if not r.passed)


# ---- models a learner brings (issue 25) ----

class _Learners(nn.Module):
    """A conv the model holds but its forward never calls (as googlenet's aux1 in eval mode)."""

    def __init__(self):
        super().__init__()
        self.conv, self.spare, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def _seeded(factory, **kwargs):
    torch.manual_seed(0)
    return factory(**kwargs).eval()


@pytest.fixture(scope="module")
def four():
    return torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_a_module_that_never_runs_is_named(four):
    googlenet = _seeded(torchvision.models.googlenet, num_classes=10, aux_logits=True, init_weights=False)
    x = four[:2, :, :32, :32]
    for model, layer in ((_seeded(_Learners), "spare"), (googlenet, "aux1")):
        for call in (partial(layer_activations, model, layer, x), partial(layer_gradients, model, layer, x, 0),
                     partial(tcav_score, model, layer, torch.ones(10), x, 0),
                     partial(relative_tcav, model, layer, x, x, x, 0)):
            with pytest.raises(ValueError, match=f"layer '{layer}' did not run in the forward pass"):
                call()
        n = len(list(model.parameters()))
        assert _state(model) == (False, [True] * n, [None] * n, 0)


def test_a_layer_given_as_a_module_is_named_in_one_line(four):
    resnet50 = _seeded(torchvision.models.resnet50, num_classes=10)
    assert len(repr(resnet50.layer4)) > 2000
    x = four[:, :, :32, :32]
    with pytest.raises(ValueError, match="cav has 10 entries; layer 'layer4' has") as error:
        tcav_score(resnet50, resnet50.layer4, torch.ones(10), x[:2], 0)
    assert len(str(error.value)) < 300
    # a module object is one layer, not the list of its children
    out = tcav_experiment(resnet50, resnet50.layer4, {"c": x[:3]}, [x[1:], x[:3]], x[:2], 0)
    assert list(out) == [("c", resnet50.layer4)] and out[("c", resnet50.layer4)]["cavs"].shape == (2, 2048)
    assert count_hooks(resnet50) == 0


class _NaNLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.bias.fill_(float("nan"))

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_non_finite_input_or_scores_get_a_clear_error(four):
    resnet18 = _seeded(torchvision.models.resnet18, num_classes=10)
    with torch.no_grad():
        resnet18.fc.bias.fill_(float("nan"))
    for model, layer in ((_seeded(_NaNLogits), "conv"), (resnet18, "layer4")):
        with pytest.raises(ValueError, match=r"returned NaN or inf scores for images \[0, 1, 2, 3\]"):
            tcav_score(model, layer, torch.ones(layer_activations(model, layer, four[:1]).shape[1]), four, 0)
        with pytest.raises(ValueError, match="NaN or inf scores"):
            layer_gradients(model, layer, four, 0)
        assert count_hooks(model) == 0 and all(p.grad is None for p in model.parameters())
    bad = four.clone()
    bad[2, 1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="images holds 1 NaN or inf"):
        layer_activations(resnet18, "layer4", bad)
    with pytest.raises(ValueError, match="images holds 1 NaN or inf"):
        captum_reference(resnet18, "layer4", {"a": four, "b": four}, [("a", "b")], bad, 0)
    acts = torch.randn(6, 5)
    bad_acts = acts.clone()
    bad_acts[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"concept_acts holds 1 NaN or inf values \(in images \[4\]\)"):
        train_cav(bad_acts, acts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_concept_helpers_run_on_the_gpu(shortcut, small_sets):
    concept, randoms, mel = small_sets
    model = load_dermnet("shortcut").cuda()
    acts = layer_activations(model, "layer3", concept.cuda())
    assert acts.is_cuda and torch.allclose(acts.cpu(), layer_activations(shortcut, "layer3", concept), atol=1e-4)
    a, g = layer_gradients(model, "layer3", mel.cuda(), MEL)["layer3"]
    assert a.is_cuda and g.is_cuda
    cav, acc = train_cav(acts, layer_activations(model, "layer3", randoms[0].cuda()))
    assert cav.is_cuda
    assert 0 <= tcav_score(model, "layer3", cav, mel.cuda(), MEL) <= 1
    result = tcav_test(model, "layer3", concept.cuda(), [r.cuda() for r in randoms], mel.cuda(), MEL)
    assert 0 <= result["score_mean"] <= 1
