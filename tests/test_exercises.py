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


def test_compare_hints_at_a_missing_return(ref):
    message = compare(None, ref).message
    assert "expected a torch.Tensor, got NoneType: did you forget `return`?" in message
    assert "return" not in compare(ref.numpy(), ref).message  # only None means no return


def test_compare_hints_at_a_reduction_over_the_channels():
    ours = torch.randn(4, 3, 8, 8)
    message = compare(ours.sum(1), ours).message
    assert "shape (4, 8, 8), expected (4, 3, 8, 8)" in message and "reduce over the channels" in message
    # not for other shapes: a missing batch dimension, or a map with one channel (a squeeze)
    assert "channels" not in compare(ours[0], ours).message
    assert "channels" not in compare(torch.randn(4, 8, 8), torch.randn(4, 1, 8, 8)).message
    # as many images as channels: either dimension may be the missing one, and both are named
    square = torch.randn(3, 3, 8, 8)
    message = compare(square.sum(1), square).message
    assert "reduce over the channels" in message and "batch dimension" in message


def test_every_checker_hints_at_a_missing_return():
    from helpers.exercises import check_grad_cam_weights, check_occlusion_masks

    assert "did you forget `return`?" in check_grad_cam_weights(lambda act, grad: None).message
    assert "did you forget `return`?" in check_occlusion_masks(lambda size, window, stride: None).message


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


def _ig_attempt(weights_fn, multiply=True):
    def fn(model, x, target, steps):
        total = torch.zeros_like(x)
        for k, alpha in enumerate(torch.linspace(0, 1, steps)):
            point = (alpha * x).requires_grad_(True)
            (g,) = torch.autograd.grad(model(point)[torch.arange(len(x)), target].sum(), point)
            total += weights_fn(k, steps) * g
        return x * total if multiply else total
    return fn


def test_check_integrated_gradients_hints():
    from helpers.exercises import check_integrated_gradients
    right = lambda k, n: (0.5 if k in (0, n - 1) else 1.0) / (n - 1)  # noqa: E731
    assert check_integrated_gradients(_ig_attempt(right))
    assert "all 1/n" in check_integrated_gradients(_ig_attempt(lambda k, n: 1 / n)).message
    assert "halve the first" in check_integrated_gradients(_ig_attempt(lambda k, n: 1 / (n - 1))).message
    captum = lambda k, n: (0.5 if k in (0, n - 1) else 1.0) / n  # noqa: E731
    assert "riemann_trapezoid" in check_integrated_gradients(_ig_attempt(captum)).message
    assert "multiply by (x - baseline)" in check_integrated_gradients(_ig_attempt(right, multiply=False)).message


def test_check_saliency_and_smoothgrad_hints():
    from helpers.exercises import check_saliency, check_smoothgrad
    from helpers.gradients import saliency
    assert check_saliency(lambda m, x, t: saliency(m, x, t))

    def grad_of(score_fn):
        def fn(model, x, target):
            x = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(score_fn(model(x), target).sum(), x)
            return g.abs()
        return fn
    softmax = grad_of(lambda out, t: out.softmax(1)[torch.arange(len(t)), t])
    assert "softmax" in check_saliency(softmax).message
    all_scores = grad_of(lambda out, t: out)
    assert "sum of all class scores" in check_saliency(all_scores).message

    def sg(model, x, target, noise, use_abs=False):
        grads = []
        for eps in noise:
            xn = (x + eps).requires_grad_(True)
            (g,) = torch.autograd.grad(model(xn)[torch.arange(len(x)), target].sum(), xn)
            grads.append(g.abs() if use_abs else g)
        return torch.stack(grads).mean(0)
    assert check_smoothgrad(sg)
    assert "averaged |gradient|" in check_smoothgrad(lambda *a: sg(*a, use_abs=True)).message


def test_check_grad_cam_weights():
    from helpers.exercises import check_grad_cam_weights
    assert check_grad_cam_weights(lambda a, g: g.mean((2, 3)))
    assert "summed the gradients" in check_grad_cam_weights(lambda a, g: g.sum((2, 3))).message
    assert "gradient x activation" in check_grad_cam_weights(lambda a, g: (a * g).mean((2, 3))).message
    assert "ReLU" in check_grad_cam_weights(lambda a, g: g.clamp(min=0).mean((2, 3))).message
    assert not check_grad_cam_weights(lambda a, g: a.mean((2, 3)))


# ---- notebooks 05-07 ----

def test_check_occlusion_passes_ours_and_names_the_sum_slip():
    from helpers.exercises import check_occlusion
    from helpers.perturbation import occlusion, occlusion_masks

    assert check_occlusion(lambda m, x, t, window, stride: occlusion(m, x, t, window=window, stride=stride))

    def summed(m, x, t, window, stride):
        attr = occlusion(m, x, t, window=window, stride=stride)
        count = occlusion_masks(x.shape[-2:], (window, window), (stride, stride)).sum(0)
        return attr * count

    result = check_occlusion(summed)
    assert not result and "divide by how many windows cover it" in result.message


def _cosine_kernel(z, width, square=False):
    import math

    on = z.double().sum(1)
    d = 1 - on / (on.sqrt().clamp_min(1e-300) * math.sqrt(z.shape[1]))
    return torch.exp(-d ** 2 / (width ** 2 if square else 2 * width ** 2))


def test_check_lime_kernel():
    from helpers.exercises import check_lime_kernel

    assert check_lime_kernel(_cosine_kernel)
    result = check_lime_kernel(lambda z, w: _cosine_kernel(z, w, square=True))
    assert not result and "square root" in result.message


def _shapley(v, k, equal=False):
    import math

    out = torch.zeros(k, dtype=torch.float64)
    for j in range(k):
        for s in range(2 ** k):
            if not (s >> j) & 1:
                n = bin(s).count("1")
                w = 1 / 2 ** (k - 1) if equal else math.factorial(n) * math.factorial(k - n - 1) / math.factorial(k)
                out[j] += w * (v[s | (1 << j)] - v[s])
    return out


def test_check_shapley():
    from helpers.exercises import check_shapley

    assert check_shapley(_shapley)
    result = check_shapley(lambda v, k: _shapley(v, k, equal=True))
    assert not result and "equal weight" in result.message


# ---- notebook 11 ----

def _my_rollout(attentions, order="left", residual=True, fuse_first=True):
    out = None
    for a in attentions:
        eye = torch.eye(a.shape[-1], dtype=a.dtype)
        m = a.mean(1) if fuse_first else a
        m = (0.5 * eye + 0.5 * m) if residual else m
        out = m if out is None else (m @ out if order == "left" else out @ m)
    return out if fuse_first else out.mean(1)


def test_check_rollout_passes_a_learners_version_and_names_the_slips():
    from helpers.exercises import check_rollout

    assert check_rollout(_my_rollout)
    for kwargs, words in (({"order": "right"}, "wrong order"), ({"residual": False}, "left out the residual"),
                          ({"fuse_first": False}, "fuse the heads of each block first")):
        result = check_rollout(lambda a, kw=kwargs: _my_rollout(a, **kw))
        assert not result and words in result.message, result
    result = check_rollout(lambda a: a[0])
    assert not result and "shape (2, 3, 5, 5)" in result.message


# ---- notebook 08 ----

def test_check_fft_scale_passes_ours_and_names_the_infinite_dc():
    from helpers.exercises import check_fft_scale
    from helpers.featurevis import fft_scale

    assert check_fft_scale(fft_scale)
    uncapped = lambda s: 1 / (torch.fft.rfftfreq(s)[None] ** 2 + torch.fft.fftfreq(s)[:, None] ** 2).sqrt()  # noqa: E731
    result = check_fft_scale(uncapped)
    assert not result and "infinite weight at the zero frequency" in result.message
    assert not check_fft_scale(lambda s: fft_scale(s) ** 2)


def test_check_ruler_channels_question_is_answered_from_the_data():
    from helpers.exercises import check_ruler_channels_question

    first, second = check_ruler_channels_question(True), check_ruler_channels_question(False)
    assert first.passed != second.passed  # exactly one answer is right
    right, wrong = (first, second) if first.passed else (second, first)
    assert "of its top 9 images have a ruler" in right.message
    assert "have a ruler," not in wrong.message  # a wrong answer is not told the figures that decide it
    assert not check_ruler_channels_question("yes")


@pytest.mark.parametrize("checker, n", [("check_ruler_channels_question", 1), ("check_deconvnet_class_question", 1),
                                        ("check_ink_question", 2), ("check_debiased_vit_question", 2)])
def test_notebook_08_to_11_questions_read_todo_on_their_placeholders(checker, n):
    """Notebooks 08-11 commit their questions' answers as None: the checker prints a TODO."""
    import helpers.exercises as ex

    res = getattr(ex, checker)(*[None] * n)
    assert not res.passed and not res.done and str(res).startswith("TODO") and "True or False" in res.message


def test_an_unfilled_scaffold_reads_not_done_yet_and_does_not_raise():
    from helpers.exercises import check_method, run_learner
    from helpers.gradients import saliency

    def scaffold(model, x, target):
        raise NotImplementedError

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    res = check_method(scaffold, saliency, model, torch.randn(2, 3, 2, 2), 0)
    assert not res.passed and not res.done and str(res).startswith("TODO saliency: not done yet")
    _, verdict = run_learner("f", lambda: 1 / 0)
    assert verdict.done and str(verdict).startswith("FAIL f: your function raised ZeroDivisionError")


@pytest.mark.parametrize("checker", ["check_mask_mass", "check_saliency", "check_smoothgrad",
                                     "check_integrated_gradients", "check_grad_cam_weights", "check_occlusion",
                                     "check_lime_kernel", "check_shapley"])
def test_notebook_scaffolds_read_not_done_yet(checker):
    """Notebooks 00-07 commit their exercises as scaffolds that raise NotImplementedError: each
    checker must say "not done yet" (a TODO), not fail and not raise."""
    import helpers.exercises as ex

    def scaffold(*args, **kwargs):
        raise NotImplementedError

    res = getattr(ex, checker)(scaffold)
    assert not res.passed and not res.done and str(res).startswith("TODO") and "not done yet" in res.message


@pytest.mark.parametrize("checker", ["check_fft_scale", "check_conv_transpose", "check_tcav_score", "check_rollout"])
def test_notebook_08_to_11_scaffolds_read_not_done_yet(checker):
    import helpers.exercises as ex

    def scaffold(*args, **kwargs):
        raise NotImplementedError

    res = getattr(ex, checker)(scaffold)
    assert not res.passed and not res.done and "not done yet" in res.message


def test_audit_questions_of_notebooks_01_and_03_answer_from_the_data():
    from helpers.exercises import check_corners_question, check_ig_corners_question

    assert not check_corners_question(None, None).done
    assert check_corners_question(False, False).passed
    assert not check_corners_question(True, False).passed
    assert "True or False" in check_corners_question("no", False).message
    assert not check_ig_corners_question(None).done
    assert check_ig_corners_question(False).passed and not check_ig_corners_question(True).passed


AUDITS_00_TO_07 = [  # (checker, the right answers, the answer a learner most likely gets wrong)
    ("check_sliced_accuracy_question", (True, False, False), "ink_costs_accuracy"),
    ("check_smoothgrad_ruler_question", (True, False), "debiased_above_share"),
    ("check_gradcam_artifacts_question", (True, False, False), "ink_twice_share"),
    ("check_occlusion_ink_question", (True, False), "ink_above_share"),
    ("check_lime_ruler_question", (True, False), "debiased_mostly_ruler"),
    ("check_shap_ruler_question", (True, False), "debiased_over_one_logit"),
]


@pytest.mark.parametrize("checker, right, slip", AUDITS_00_TO_07, ids=[a[0] for a in AUDITS_00_TO_07])
def test_audit_questions_of_notebooks_00_to_07_answer_from_the_data(checker, right, slip):
    """Notebooks 00, 02 and 04-07 commit their audit answers as None: a TODO; the right answers
    pass, measured afresh; a wrong one fails, names the answer and gives the measured figures."""
    import inspect

    import helpers.exercises as ex

    check = getattr(ex, checker)
    names = list(inspect.signature(check).parameters)
    todo = check(*[None] * len(right))
    assert not todo.passed and not todo.done and str(todo).startswith("TODO") and names[0] in todo.message
    assert "True or False" in check("yes", *right[1:]).message
    passed = check(*right)
    assert passed.passed and passed.message.startswith("right"), passed
    wrong = check(*[not a if n == slip else a for n, a in zip(names, right)])
    assert not wrong.passed and wrong.done and slip in wrong.message, wrong
    assert any(ch.isdigit() for ch in wrong.message)


def _grad_cam_pp_weights(activations, gradients, relu=True, total=True):
    g2, g3 = gradients ** 2, gradients ** 3
    denom = 2 * g2 + (activations.sum((2, 3), keepdim=True) if total else activations) * g3
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    alpha = torch.where(denom != 0, g2 / safe, torch.zeros_like(denom))
    return (alpha * (gradients.clamp_min(0) if relu else gradients)).sum((2, 3))


def test_check_grad_cam_pp_weights():
    from helpers.exercises import check_grad_cam_pp_weights

    assert check_grad_cam_pp_weights(_grad_cam_pp_weights).passed
    assert "ReLU on the gradient" in check_grad_cam_pp_weights(
        lambda a, g: _grad_cam_pp_weights(a, g, relu=False)).message
    assert "sum of A over all locations" in check_grad_cam_pp_weights(
        lambda a, g: _grad_cam_pp_weights(a, g, total=False)).message
    assert "Grad-CAM's weights" in check_grad_cam_pp_weights(lambda a, g: g.mean((2, 3))).message


def _sizes(k, normalise=True):
    s = torch.arange(k, dtype=torch.float64)
    p = (k - 1) / (s * (k - s))
    p[0] = 0.0
    return p / p.sum() if normalise else p


def test_check_coalition_sizes():
    import math

    from helpers.exercises import check_coalition_sizes

    assert check_coalition_sizes(_sizes).passed
    assert "sum to 1" in check_coalition_sizes(lambda k: _sizes(k, normalise=False)).message

    def per_coalition(k):
        p = _sizes(k) / torch.tensor([float(math.comb(k, s)) for s in range(k)])
        return p / p.sum()
    assert "drop the C(k, s)" in check_coalition_sizes(per_coalition).message
    assert "s = 0 divides by zero" in check_coalition_sizes(
        lambda k: (k - 1) / (torch.arange(k) * (k - torch.arange(k)))).message


def test_check_completeness_gap():
    from helpers.exercises import check_completeness_gap
    from helpers.gradients import integrated_gradients

    def gap(model, x, target, steps, baseline_score=True, signed=False):
        total = integrated_gradients(model, x, target, steps=steps).sum((1, 2, 3))
        with torch.no_grad():
            gain = model(x).gather(1, target[:, None])[:, 0]
            if baseline_score:
                gain = gain - model(torch.zeros_like(x)).gather(1, target[:, None])[:, 0]
        return total - gain if signed else (total - gain).abs()

    assert check_completeness_gap(gap).passed
    assert "baseline's score" in check_completeness_gap(
        lambda *a: gap(*a, baseline_score=False)).message
    assert "keeps the sign" in check_completeness_gap(lambda *a: gap(*a, signed=True)).message


def test_check_effective_samples():
    from helpers.exercises import check_effective_samples

    assert check_effective_samples(lambda w: float(w.sum() ** 2 / (w ** 2).sum())).passed
    assert "1 / n_eff" in check_effective_samples(lambda w: float((w ** 2).sum() / w.sum() ** 2)).message
    assert "mean weight" in check_effective_samples(lambda w: float(w.mean())).message
    assert "return a number" in check_effective_samples(lambda w: "many").message


@pytest.mark.parametrize("checker", ["check_grad_cam_pp_weights", "check_coalition_sizes", "check_completeness_gap",
                                     "check_effective_samples"])
def test_harder_task_scaffolds_read_not_done_yet(checker):
    import helpers.exercises as ex

    def scaffold(*args, **kwargs):
        raise NotImplementedError

    res = getattr(ex, checker)(scaffold)
    assert not res.passed and not res.done and str(res).startswith("TODO") and "not done yet" in res.message


def test_check_gradient_x_input():
    from helpers.exercises import check_gradient_x_input

    assert check_gradient_x_input(lambda m, x, t: x * _grad(m, x, t)).passed
    assert "absolute value" in check_gradient_x_input(lambda m, x, t: (x * _grad(m, x, t)).abs()).message
    assert "gradient alone" in check_gradient_x_input(_grad).message


def _noisy_grads(model, x, target, noise):
    return torch.stack([_grad(model, x + eps, target) for eps in noise])


def test_check_vargrad():
    from helpers.exercises import check_vargrad

    assert check_vargrad(lambda *a: _noisy_grads(*a).var(0, unbiased=False)).passed
    assert "n - 1" in check_vargrad(lambda *a: _noisy_grads(*a).var(0)).message
    assert "SmoothGrad^2" in check_vargrad(lambda *a: (_noisy_grads(*a) ** 2).mean(0)).message
    assert "standard deviation" in check_vargrad(lambda *a: _noisy_grads(*a).std(0, unbiased=False)).message


def _windows(size, window, stride, crop=True, by_rows=True):
    import math

    n = math.ceil((size - window) / stride) + 1 if crop else (size - window) // stride + 1
    starts = [k * stride for k in range(n)]
    masks = torch.zeros(n * n, size, size, dtype=torch.bool)
    for p, (r, c) in enumerate((r, c) for r in starts for c in starts):
        masks[p, r:r + window, c:c + window] = True
    return masks if by_rows else masks.transpose(1, 2)


def test_check_occlusion_masks():
    from helpers.exercises import check_occlusion_masks

    assert check_occlusion_masks(_windows).passed
    assert "never covered" in check_occlusion_masks(lambda *a: _windows(*a, crop=False)).message
    assert "column by column" in check_occlusion_masks(lambda *a: _windows(*a, by_rows=False)).message
    assert "torch.Tensor" in check_occlusion_masks(lambda *a: _windows(*a).tolist()).message


def _pointing(attr, mask, tol, ties=True, signed=False):
    a = attr.sum(1) if signed else attr.abs().sum(1)
    inside = torch.where(mask, a, -9e9).flatten(1).amax(1)
    outside = torch.where(~mask, a, -9e9).flatten(1).amax(1)
    score = (inside > outside).float()
    return torch.where((inside - outside).abs() <= tol * torch.maximum(inside, outside), 0.5, score) if ties else score


def test_check_pointing_game():
    from helpers.exercises import check_pointing_game

    assert check_pointing_game(_pointing).passed
    assert "ties" in check_pointing_game(lambda *a: _pointing(*a, ties=False)).message
    assert "signed values" in check_pointing_game(lambda *a: _pointing(*a, ties=False, signed=True)).message


@pytest.mark.parametrize("checker", ["check_gradient_x_input", "check_vargrad", "check_occlusion_masks",
                                     "check_pointing_game"])
def test_more_harder_task_scaffolds_read_not_done_yet(checker):
    import helpers.exercises as ex

    def scaffold(*args, **kwargs):
        raise NotImplementedError

    res = getattr(ex, checker)(scaffold)
    assert not res.passed and not res.done and str(res).startswith("TODO") and "not done yet" in res.message


# ---- notebook 15 ----

def _my_flip_rate(model, off_images, on_images, labels, target):
    from helpers.train import predict
    p_off, p_on = predict(model, off_images), predict(model, on_images)
    base = (labels != target) & (p_off == labels)
    return (p_on[base] == target).float().mean().item()


def test_flip_rate_checker():
    from helpers.exercises import check_flip_rate
    from helpers.train import predict

    def scaffold(model, off_images, on_images, labels, target):
        raise NotImplementedError

    def every_other(model, off_images, on_images, labels, target):
        return (predict(model, on_images)[labels != target] == target).float().mean().item()

    assert check_flip_rate(_my_flip_rate).passed
    from helpers.data import MEL
    from helpers.exercises.nb15_debugging_playbook import _flip_pair
    from helpers.models import load_dermnet
    from helpers.train import artifact_intervention
    off, on = _flip_pair()
    model = load_dermnet("clinic_c")  # the checker's formula is the helper's "add"
    assert _my_flip_rate(model, off.images, on.images, off.labels, MEL) == artifact_intervention(
        model, "ink", MEL, pair=(off, on))["add"]
    todo = check_flip_rate(scaffold)
    assert not todo.passed and not todo.done and "not done yet" in str(todo)
    slip = check_flip_rate(every_other)
    assert not slip.passed and "right without the artifact" in slip.message
    assert not check_flip_rate(lambda *a: "0.5").passed


def test_shortcut_question_checker():
    from helpers.exercises import check_shortcut_question

    todo = check_shortcut_question(None, None)
    assert not todo.passed and not todo.done
    right = check_shortcut_question("ink", "mel")
    assert right.passed, right.message
    assert not check_shortcut_question("ruler", "mel").passed
    assert not check_shortcut_question("ink", "nv").passed
    assert "artifact must be" in check_shortcut_question("tattoo", "mel").message
    assert "stands_for must be" in check_shortcut_question("ink", "melanoma").message


def test_each_notebooks_checkers_live_in_its_own_module():
    """A learner looking for notebook 10's checker finds it in helpers/exercises/nb10_tcav.py: every
    checker a notebook imports is defined in the module named after that notebook."""
    import re
    from pathlib import Path

    import helpers.exercises as ex

    root = Path(__file__).resolve().parent.parent
    seen = 0
    for twin in sorted((root / "notebooks" / "py").glob("[0-9][0-9]_*.py")):
        for names in re.findall(r"from helpers\.exercises import ([^#\n]+)", twin.read_text()):
            for name in re.findall(r"check_\w+", names):
                assert getattr(ex, name).__module__ == f"helpers.exercises.nb{twin.stem}", (twin.name, name)
                seen += 1
    assert seen >= 40 and set(ex.__all__) >= {"compare", "check_method", "CheckResult", "run_learner"}
