"""Checkers for the "Your turn" exercises.

A learner writes their own version of a method; a checker runs it next to ours on DermNet inputs
and says what is wrong, not only whether it is::

    from helpers.exercises import check_mask_mass
    check_mask_mass(my_mask_mass)
    # -> FAIL mask_mass: your values are ours without the absolute value: ... (hint)

The building blocks are reusable by every notebook:

- ``compare(yours, ours)`` diagnoses the common mistakes (wrong shape, summed over the wrong axis,
  sign flipped, a missing or extra absolute value or ReLU, off by a constant factor, only some
  images of the batch right) and returns a ``CheckResult``;
- ``check_method(your_fn, our_fn, model, x, target)`` also checks the method contract: the
  caller's ``x`` unchanged, the model's mode, gradients and hooks as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .hooks import count_hooks


@dataclass
class CheckResult:
    """The verdict of a checker: ``passed``, a one-line ``message`` and the largest difference."""

    passed: bool
    name: str
    message: str
    max_abs_diff: float = float("nan")
    done: bool = True  # False: the learner's scaffold still raises NotImplementedError

    def __post_init__(self) -> None:
        # every checker reports a learner's exception as "your function raised ...": an unfilled
        # scaffold is a to-do, not a failure
        if not self.passed and self.message.startswith("your function raised NotImplementedError"):
            self.done = False
            self.message = NOT_DONE

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else ("TODO" if not self.done else "FAIL")
        return f"{verdict} {self.name}: {self.message}"

    __repr__ = __str__

    def __bool__(self) -> bool:
        return self.passed


NOT_DONE = "not done yet: fill in the function above (replace `raise NotImplementedError`), then run this cell again"


def not_done(name: str, what: str = "") -> CheckResult:
    """The verdict for a scaffold that still raises ``NotImplementedError``: not a failure, a to-do.
    The notebook runs on (``make test`` executes the learner's cells as committed)."""
    return CheckResult(False, name, "not done yet: " + what if what else NOT_DONE, done=False)


def run_learner(name: str, fn, *args, **kwargs):
    """Call a learner's function: ``(result, None)``, or ``(None, CheckResult)`` when it raised
    (``NotImplementedError`` reads as "not done yet", anything else as a failure naming the error)."""
    try:
        return fn(*args, **kwargs), None
    except NotImplementedError:
        return None, not_done(name)
    except Exception as err:  # the learner's code: report, do not crash the notebook
        return None, CheckResult(False, name, f"your function raised {type(err).__name__}: {err}")


def not_a_tensor(name: str, yours, prefix: str = "") -> CheckResult:
    """The verdict for a learner's function that returned something other than a tensor; ``None``
    (a function with no ``return``) says so."""
    hint = ": did you forget `return`?" if yours is None else ""
    return CheckResult(False, name, f"{prefix}expected a torch.Tensor, got {type(yours).__name__}{hint}")


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol)


def compare(yours, ours: torch.Tensor, *, name: str = "result", atol: float = 1e-5,
            rtol: float = 1e-4) -> CheckResult:
    """Compare a learner's tensor with ours and explain the most likely mistake."""
    if not isinstance(yours, torch.Tensor):
        return not_a_tensor(name, yours)
    yours = yours.detach().to(dtype=torch.float64, device="cpu")
    ours = ours.detach().to(dtype=torch.float64, device="cpu")
    shape, want = tuple(yours.shape), tuple(ours.shape)

    if shape != want:
        hint = f"shape {shape}, expected {want}"
        if yours.numel() == ours.numel():
            hint += " (the right number of values in the wrong layout: a permute, view or squeeze?)"
        elif ours.dim() == 4 and yours.dim() == 4 and shape[1] == 1 and want[1] > 1:
            hint += " (you summed over the channels: keep one value per channel)"
        elif ours.dim() == 4 and want[1] > 1 and shape == want[:1] + want[2:]:
            hint += (" (the channel dimension is missing: did you reduce over the channels?"
                     + (" Or is the batch dimension missing?)" if shape == want[1:] else ")"))
        elif len(shape) == len(want) - 1 and shape == want[1:]:
            hint += " (the batch dimension is missing: return one result per image)"
        elif len(shape) == len(want) + 1 and shape[1:] == want:
            hint += " (one dimension too many: results stacked twice?)"
        return CheckResult(False, name, hint)

    if not torch.isfinite(yours).all():
        bad = int((~torch.isfinite(yours)).sum())
        return CheckResult(False, name, f"{bad} value(s) are NaN or infinite (a division by zero?)")

    diff = float((yours - ours).abs().max()) if yours.numel() else 0.0
    if _close(yours, ours, atol, rtol):
        # the bound, not the residual: the residual is round-off and differs from machine to machine
        bound = f"atol={atol:g}" + (f", rtol={rtol:g}" if rtol else "")
        return CheckResult(True, name, f"matches ours (to within {bound})", diff)

    def fail(hint: str) -> CheckResult:
        return CheckResult(False, name, f"{hint} (largest difference {diff:.3g})", diff)

    if _close(-yours, ours, atol, rtol):
        return fail("your values have the opposite sign to ours: check the order of a subtraction")
    if (ours < 0).any() and _close(yours, ours.abs(), atol, rtol):
        return fail("your values are the absolute value of ours: this quantity keeps its sign")
    if (yours < 0).any() and _close(yours.abs(), ours, atol, rtol):
        return fail("your values are ours without the absolute value: take .abs() where the method does")
    if (yours < 0).any() and _close(yours.clamp_min(0), ours, atol, rtol):
        return fail("your values are ours before a ReLU: clamp the negative part to zero")
    if yours.dim() >= 1 and yours.shape[0] > 1:
        per_image = [_close(yours[i], ours[i], atol, rtol) for i in range(yours.shape[0])]
        if any(per_image):
            wrong = [i for i, ok in enumerate(per_image) if not ok]
            return fail(f"right for some images but not for images {wrong}: does each image use its "
                        "own target, and is nothing averaged across the batch?")
    denom = float((yours * yours).sum())
    if denom > 0:
        scale = float((yours * ours).sum()) / denom
        if scale != 0 and _close(yours * scale, ours, atol * 10, rtol * 10):
            return fail(f"your values are ours divided by {scale:.4g}: a missing or extra "
                        "normalisation (a sum instead of a mean, a factor of n, a division by the total?)")
    y, o = yours.flatten(), ours.flatten()
    if y.numel() > 2 and y.std() > 0 and o.std() > 0:
        corr = float(torch.corrcoef(torch.stack([y, o]))[0, 1])
        if corr > 0.99:
            return fail(f"very close (correlation {corr:.4f}) but not equal to within atol={atol:g}: "
                        "a small difference in the recipe (a step rule, an epsilon, float precision?)")
        return fail(f"different values (correlation with ours {corr:.3f})")
    return fail("different values")


def check_method(your_fn, our_fn, model: torch.nn.Module, x: torch.Tensor, target,
                 *, name: str | None = None, atol: float = 1e-5, rtol: float = 1e-4,
                 **options) -> CheckResult:
    """Run a learner's attribution method and ours on the same inputs; check result and contract.

    Besides comparing the results, it checks that ``your_fn`` left the caller's ``x``, the model's
    ``training`` flag, its parameters' ``.grad`` and its hooks as they were.
    """
    name = name or getattr(our_fn, "__name__", "method")
    x_before = x.detach().clone()
    training = model.training
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    hooks = count_hooks(model)
    yours, verdict = run_learner(name, your_fn, model, x, target, **options)
    if verdict is not None:
        return verdict
    if not torch.equal(x.detach(), x_before):
        return CheckResult(False, name, "your function changed the input x in place: work on a copy "
                                        "(x.clone() or x.detach().clone().requires_grad_())")
    if model.training != training:
        return CheckResult(False, name, "your function changed model.training (model.train()/eval()): "
                                        "restore the mode it found")
    if any((g is None) != (p.grad is None) or (g is not None and not torch.equal(g, p.grad))
           for g, p in zip(grads, model.parameters())):
        return CheckResult(False, name, "your function left gradients in the model's parameters: "
                                        "use torch.autograd.grad(...) instead of .backward(), "
                                        "or zero them afterwards")
    if count_hooks(model) != hooks:
        return CheckResult(False, name, "your function left hooks on the model: remove them "
                                        "(handle.remove() in a finally block)")
    ours = our_fn(model, x, target, **options)
    return compare(yours, ours, name=name, atol=atol, rtol=rtol)


# --------------------------------------------------------------------------------------------
# Notebook 00
# --------------------------------------------------------------------------------------------

def check_mask_mass(your_fn, n: int = 16, seed: int = 0) -> CheckResult:
    """Notebook 00: check ``your_fn(attr, mask) -> [B]`` against ``helpers.metrics.mask_mass``.

    The test maps are signed input gradients ``[B, 3, H, W]`` of the shortcut model on clinic-A
    images that all have a ruler, scored on their ruler masks.
    """
    from .data import make_dataset
    from .metrics import mask_mass
    from .models import load_dermnet

    model = load_dermnet("shortcut")
    ds = make_dataset(n, clinic="A", seed=seed, ruler=True)
    x = ds.images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[torch.arange(n), ds.labels].sum(), x)
    mask = ds.masks["ruler"]
    try:
        yours = your_fn(grad.clone(), mask.clone())
    except Exception as err:
        return CheckResult(False, "mask_mass", f"your function raised {type(err).__name__}: {err}")
    ours = mask_mass(grad, mask)
    if isinstance(yours, torch.Tensor) and yours.shape == ours.shape:
        y = yours.detach().double()
        g, m = grad.double(), mask.double()
        known = {
            "you summed signed values, so positive and negative attributions cancel: take the "
            "magnitude (.abs()) before summing": (g.sum(1) * m).sum((1, 2)) / g.sum(1).sum((1, 2)),
            "you took |sum over channels|: take the magnitude of each channel first, then sum over "
            "the channels": (g.sum(1).abs() * m).sum((1, 2)) / g.sum(1).abs().sum((1, 2)),
            "you return the magnitude inside the mask, not its share: divide by the total magnitude "
            "of each image": (g.abs().sum(1) * m).sum((1, 2)),
            "you divided by the number of pixels in the mask (a mean inside the mask), not by the "
            "total magnitude of the image": (g.abs().sum(1) * m).sum((1, 2)) / m.sum((1, 2)),
        }
        for hint, wrong in known.items():
            if torch.allclose(y, wrong, rtol=1e-5, atol=1e-9) and not torch.allclose(y, ours.double(), atol=1e-6):
                return CheckResult(False, "mask_mass", hint, float((y - ours).abs().max()))
    return compare(yours, ours, name="mask_mass", atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Notebooks 01-03: gradient methods
# --------------------------------------------------------------------------------------------

def _dermnet_batch(n: int = 4, seed: int = 0):
    from .data import make_dataset
    from .models import load_dermnet

    ds = make_dataset(n, clinic="A", seed=seed, ruler=True)
    return load_dermnet("shortcut"), ds.images, ds.labels


def check_saliency(your_fn) -> CheckResult:
    """Notebook 01: ``your_fn(model, x, target)`` should return |d score / d x|, shaped like x."""
    from .gradients import saliency

    model, x, t = _dermnet_batch()
    result = check_method(your_fn, saliency, model, x, t, name="saliency")
    if not result.passed and "different values" in result.message:
        try:
            yours = your_fn(model, x, t).detach()
        except Exception:
            return result
        probs = _gradient_of(model, x, t, lambda out: out.softmax(1))
        if torch.allclose(yours, probs.abs(), atol=1e-6):
            return CheckResult(False, "saliency", "you took the gradient of the softmax probability: "
                                                  "use the raw score (logit) of the target class", result.max_abs_diff)
        summed = _gradient_of(model, x, None, lambda out: out)
        if torch.allclose(yours, summed.abs(), atol=1e-6):
            return CheckResult(False, "saliency", "you took the gradient of the sum of all class scores: "
                                                  "pick each image's target score first", result.max_abs_diff)
    return result


def _gradient_of(model, x, t, transform):
    xg = x.detach().clone().requires_grad_(True)
    out = transform(model(xg))
    score = out.sum() if t is None else out[torch.arange(len(x)), t].sum()
    (g,) = torch.autograd.grad(score, xg)
    return g


def check_smoothgrad(your_fn, n_samples: int = 8, noise_level: float = 0.15) -> CheckResult:
    """Notebook 02: ``your_fn(model, x, target, noise)`` with ``noise`` of shape [n, B, C, H, W] already
    scaled to sigma; return the mean gradient over the n noisy copies (SmoothGrad), shaped like x."""
    from .gradients import smoothgrad

    model, x, t = _dermnet_batch(3, seed=1)
    seed = 11
    ours = smoothgrad(model, x, t, n_samples=n_samples, noise_level=noise_level, batch_size=10**6,
                      generator=torch.Generator().manual_seed(seed))
    # the same noise our helper drew: image by image, n_samples each
    raw = torch.randn((x.shape[0] * n_samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed))
    sigma = noise_level * (x.amax((1, 2, 3)) - x.amin((1, 2, 3)))
    noise = (raw.view(x.shape[0], n_samples, *x.shape[1:]) * sigma.view(-1, 1, 1, 1, 1)).transpose(0, 1)
    noise_before = noise.clone()
    try:
        yours = your_fn(model, x.clone(), t, noise)
    except Exception as err:
        return CheckResult(False, "smoothgrad", f"your function raised {type(err).__name__}: {err}")
    if not torch.equal(noise, noise_before):
        return CheckResult(False, "smoothgrad", "your function changed the noise tensor in place")
    if isinstance(yours, torch.Tensor) and yours.shape == x.shape:
        grads = torch.stack([_gradient_of(model, x + noise[k], t, lambda o: o) for k in range(n_samples)])
        if torch.allclose(yours.detach(), grads.abs().mean(0), atol=1e-6):
            return CheckResult(False, "smoothgrad", "you averaged |gradient|: SmoothGrad averages the signed "
                                                    "gradients (take abs only to display)")
        if torch.allclose(yours.detach(), grads.sum(0), atol=1e-5):
            return CheckResult(False, "smoothgrad", "you summed the gradients: divide by the number of samples")
    return compare(yours, ours, name="smoothgrad", atol=1e-6, rtol=1e-4)


def check_integrated_gradients(your_fn, steps: int = 16) -> CheckResult:
    """Notebook 03: ``your_fn(model, x, target, steps)``: IG from a black baseline with the trapezoid
    rule (alphas linspace(0, 1, steps), weights 1/(steps-1), halved at both ends)."""
    from .gradients import input_gradient, integrated_gradients

    model, x, t = _dermnet_batch(3, seed=2)
    result = check_method(your_fn, integrated_gradients, model, x, t, name="integrated_gradients",
                          atol=1e-5, rtol=1e-4, steps=steps)
    if result.passed:
        return result
    try:
        yours = your_fn(model, x, t, steps=steps)
    except Exception:
        return result
    if not isinstance(yours, torch.Tensor) or yours.shape != x.shape:
        return result
    yours = yours.detach()
    ours = integrated_gradients(model, x, t, steps=steps)
    n = steps
    # the gradients at the trapezoid points, then the usual slips in the weights
    grads = torch.stack([input_gradient(model, a * x, t) for a in torch.linspace(0, 1, n)])

    def weighted(w):
        return x * (torch.tensor(w).view(-1, 1, 1, 1, 1) * grads).sum(0)

    ends_halved = lambda w: [w / 2] + [w] * (n - 2) + [w / 2]  # noqa: E731
    slips = {
        "your weights are all 1/n: the points linspace(0, 1, n) are 1/(n-1) apart, and the trapezoid "
        "rule halves the two end weights": weighted([1 / n] * n),
        "your weights are all 1/(n-1): halve the first and the last weight": weighted([1 / (n - 1)] * n),
        "your weights sum to (n-1)/n, like Captum's riemann_trapezoid: the points linspace(0, 1, n) are "
        "1/(n-1) apart, so the weights are 1/(n-1), not 1/n": weighted(ends_halved(1 / n)),
        "you return the averaged gradients: multiply by (x - baseline) at the end":
            weighted(ends_halved(1 / (n - 1))) / x.clamp_min(1e-12) * (x > 0),
    }
    for rule, hint in (("left", "you used the left Riemann rule: include alpha = 1 and halve the end weights"),
                       ("right", "you used the right Riemann rule: include alpha = 0 and halve the end weights"),
                       ("middle", "you used midpoints: the trapezoid rule evaluates at linspace(0, 1, n)")):
        slips[hint] = integrated_gradients(model, x, t, steps=n, rule=rule)
    for hint, wrong in slips.items():
        if torch.allclose(yours, wrong, atol=1e-5, rtol=1e-4):
            return CheckResult(False, "integrated_gradients", hint, float((yours - ours).abs().max()))
    return result


def _corner_images(n: int = 32):
    """Clinic-B images with dark dermoscope corners (the first ``n`` of a fixed draw), their masks."""
    from .data import make_dataset

    ds = make_dataset(96, clinic="B", seed=777_001)
    keep = ds.masks["corners"].flatten(1).any(1)
    return ds.images[keep][:n], ds.masks["corners"][keep][:n]


def check_corners_question(shortcut_above_share, debiased_above_share) -> CheckResult:
    """Notebook 01, exercise 2, answered from the data: on clinic-B images with dark dermoscope
    corners, does each model's saliency map put more than the corners' area share of its mass on
    them? (the first 32 such images of ``make_dataset(96, clinic="B", seed=777_001)``)"""
    from .gradients import saliency
    from .metrics import mask_mass, mask_share
    from .models import load_dermnet
    from .train import logits

    name = "corners question"
    answers = {"shortcut_above_share": shortcut_above_share, "debiased_above_share": debiased_above_share}
    if any(v is None for v in answers.values()):
        return not_done(name, "set both answers to True or False, from your own saliency maps")
    for key, value in answers.items():
        if not isinstance(value, bool):
            return CheckResult(False, name, f"{key} must be True or False, got {value!r}")
    x, m = _corner_images()
    share = float(mask_share(m).mean())
    facts, truth = [], {}
    for model_name in ("shortcut", "debiased"):
        model = load_dermnet(model_name)
        mass = float(mask_mass(saliency(model, x, logits(model, x).argmax(1)), m).mean())
        truth[f"{model_name}_above_share"] = mass > share
        facts.append(f"{model_name} {mass:.3f}")
    detail = f"saliency mass on the corners: {', '.join(facts)}; their area share {share:.3f}"
    if answers == truth:
        return CheckResult(True, name, f"right ({detail}). Dark, flat corners have little contrast, and the "
                                       "gradient of either model barely looks there: unlike the ruler")
    return CheckResult(False, name, f"not quite: {detail}")


def check_ig_corners_question(black_baseline_can_tell) -> CheckResult:
    """Notebook 03, exercise 2, answered from the data: IG from the black baseline puts almost no
    mass on the dark corners, for both models. Can it tell whether a model uses them?"""
    from .gradients import blur_baseline, integrated_gradients
    from .metrics import mask_mass
    from .models import load_dermnet
    from .train import logits

    name = "IG corners question"
    if black_baseline_can_tell is None:
        return not_done(name, "set your answer to True or False")
    if not isinstance(black_baseline_can_tell, bool):
        return CheckResult(False, name, f"answer True or False, got {black_baseline_can_tell!r}")
    x, m = _corner_images(16)
    model = load_dermnet("shortcut")
    t = logits(model, x).argmax(1)
    black = float(mask_mass(integrated_gradients(model, x, t, steps=16).abs(), m).mean())
    blur = float(mask_mass(integrated_gradients(model, x, t, baseline=blur_baseline(x), steps=16).abs(), m).mean())
    gap = float((x * m[:, None]).abs().sum() / (m.sum() * 3))  # mean |x - b| inside the corners, b = 0
    detail = (f"the mean |x - b| inside the corners is {gap:.3f} with the black baseline; the shortcut model's IG mass "
              f"there is {black:.3f} from black and {blur:.3f} from a blurred baseline")
    if not black_baseline_can_tell:
        return CheckResult(True, name, f"right: IG multiplies by x - b, which is about 0 where the image is as dark "
                                       f"as the baseline, whatever the model does ({detail})")
    return CheckResult(False, name, f"not quite: {detail}. What does the factor (x - b) do there?")


# --------------------------------------------------------------------------------------------
# Notebook 04: CAM and Grad-CAM
# --------------------------------------------------------------------------------------------

def check_grad_cam_weights(your_fn, layer: str = "layer4") -> CheckResult:
    """Notebook 04: ``your_fn(activations, gradients) -> [B, K]``, Grad-CAM's channel weights."""
    import torch.nn.functional as F

    from .cam import grad_cam, layer_activation_and_gradient

    model, x, t = _dermnet_batch(4, seed=3)
    act, grad = layer_activation_and_gradient(model, x, t, layer)
    try:
        weights = your_fn(act.clone(), grad.clone())
    except Exception as err:
        return CheckResult(False, "grad_cam_weights", f"your function raised {type(err).__name__}: {err}")
    if not isinstance(weights, torch.Tensor):
        return not_a_tensor("grad_cam_weights", weights)
    weights = weights.detach()
    if weights.shape == act.shape[:2] + (1, 1):
        weights = weights[:, :, 0, 0]
    ours_w = grad.mean((2, 3))
    if weights.shape != ours_w.shape:
        return compare(weights, ours_w, name="grad_cam_weights")
    hw = act.shape[2] * act.shape[3]
    if torch.allclose(weights, grad.sum((2, 3)), atol=1e-7, rtol=1e-5):
        return CheckResult(False, "grad_cam_weights", f"you summed the gradients over the {act.shape[2]}x"
                                                      f"{act.shape[3]} grid: average them (the sum is {hw} times "
                                                      "too large; the map's shape is the same, its scale is not)")
    if torch.allclose(weights, (grad * act).mean((2, 3)), atol=1e-7, rtol=1e-5):
        return CheckResult(False, "grad_cam_weights", "you averaged gradient x activation: the weight is the "
                                                      "average gradient alone; the activation comes in when the "
                                                      "weighted channels are summed")
    if torch.allclose(weights, F.relu(grad).mean((2, 3)), atol=1e-7, rtol=1e-5):
        return CheckResult(False, "grad_cam_weights", "you applied a ReLU to the gradients: Grad-CAM keeps "
                                                      "negative gradients in the average (the ReLU comes at the "
                                                      "end, on the map)")
    result = compare(weights, ours_w, name="grad_cam_weights", atol=1e-7, rtol=1e-5)
    if result.passed:
        built = F.relu((weights[:, :, None, None] * act).sum(1, keepdim=True))
        result = compare(built, grad_cam(model, x, t, layer, upsample=False), name="grad_cam_weights",
                         atol=1e-6, rtol=1e-5)
        if result.passed:
            result.message = "your weights give exactly helpers.cam.grad_cam's map"
    return result


# --------------------------------------------------------------------------------------------
# Notebooks 05-07: perturbation methods
# --------------------------------------------------------------------------------------------

def check_occlusion(your_fn, window: int = 16, stride: int = 8) -> CheckResult:
    """Notebook 05: ``your_fn(model, x, target, window, stride) -> [B, 1, H, W]``, occlusion with a
    black patch: the average score drop over the windows covering each pixel."""
    from .perturbation import occlusion, occlusion_masks

    model, x, t = _dermnet_batch(2, seed=5)
    result = check_method(your_fn, occlusion, model, x, t, name="occlusion", atol=1e-4, rtol=1e-4,
                          window=window, stride=stride)
    if result.passed:
        return result
    try:
        yours = your_fn(model, x, t, window=window, stride=stride)
    except Exception:
        return result
    if not isinstance(yours, torch.Tensor) or yours.shape != (x.shape[0], 1, *x.shape[-2:]):
        return result
    yours = yours.detach()
    masks = occlusion_masks(x.shape[-2:], (window, window), (stride, stride)).float()
    with torch.no_grad():
        full = model(x).gather(1, t[:, None])[:, 0]
        occluded = torch.where(masks[None, :, None].bool(), torch.zeros(()), x[:, None])  # [B, P, C, H, W]
        logits = model(occluded.flatten(0, 1)).view(x.shape[0], masks.shape[0], -1)
    drops = full[:, None] - logits.gather(2, t[:, None, None].expand(-1, masks.shape[0], 1))[..., 0]
    flat = masks.flatten(1)
    paint = lambda d: (d @ flat).view(x.shape[0], 1, *x.shape[-2:])  # noqa: E731
    probs = torch.softmax(model(x), 1).gather(1, t[:, None])[:, 0].detach()
    with torch.no_grad():
        p_occ = torch.softmax(logits, 2).gather(2, t[:, None, None].expand(-1, masks.shape[0], 1))[..., 0]
    slips = {
        "you summed the drops of the windows covering each pixel: divide by how many windows cover it "
        "(pixels near the edges are covered by fewer)": paint(drops),
        "you used probabilities: occlusion here explains the logit, as the other methods of the course do":
            paint(probs[:, None] - p_occ) / flat.sum(0).view(1, 1, *x.shape[-2:]),
    }
    for hint, wrong in slips.items():
        if torch.allclose(yours, wrong, atol=1e-4, rtol=1e-4):
            diff = float((yours - occlusion(model, x, t, window, stride)).abs().max())
            return CheckResult(False, "occlusion", hint, diff)
    return result


def _call(your_fn, name: str, *args):
    """The learner's result as a flat float64 tensor, or a failing CheckResult saying why not."""
    try:
        yours = your_fn(*args)
    except Exception as err:  # the learner's code: report, do not crash the notebook
        return CheckResult(False, name, f"your function raised {type(err).__name__}: {err}")
    if not isinstance(yours, torch.Tensor):
        return not_a_tensor(name, yours)
    return yours.detach().double().flatten()


def check_lime_kernel(your_fn, kernel_width: float = 0.25) -> CheckResult:
    """Notebook 06: ``your_fn(z, kernel_width) -> [n]``, LIME's sample weights for binary vectors
    z ``[n, K]``: exp(-d^2 / (2 w^2)) with d the cosine distance between z and the all-ones vector
    (the lime package's choice; an all-zero z is at distance 1)."""
    import math

    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 2, (200, 12), generator=g)
    z[0] = 1
    z[1] = 0
    yours = _call(your_fn, "lime_kernel", z.clone(), kernel_width)
    if isinstance(yours, CheckResult):
        return yours
    on = z.double().sum(1)
    d = 1 - on / (on.sqrt().clamp_min(1e-300) * math.sqrt(z.shape[1]))
    ours = torch.exp(-d ** 2 / (2 * kernel_width ** 2))
    if yours.shape == ours.shape and not torch.isfinite(yours).all():
        return CheckResult(False, "lime_kernel", "NaN or infinite weights: the all-zero sample has no direction; "
                                                 "give it distance 1 (cosine similarity 0)")
    if yours.shape == ours.shape:
        off = 1 - d
        slips = {
            "your kernel is exp(-d^2 / w^2): the lime package takes the square root of that, "
            "exp(-d^2 / (2 w^2))": torch.exp(-d ** 2 / kernel_width ** 2),
            "you used the cosine similarity where the distance (1 - similarity) belongs":
                torch.exp(-off ** 2 / (2 * kernel_width ** 2)),
            "you used the Euclidean distance to the all-ones vector: LIME for images uses the cosine distance":
                torch.exp(-(z.shape[1] - on) / (2 * kernel_width ** 2)),
            "you used the fraction of segments switched off as the distance: use the cosine distance":
                torch.exp(-(1 - on / z.shape[1]) ** 2 / (2 * kernel_width ** 2)),
        }
        for hint, wrong in slips.items():
            if torch.allclose(yours[2:], wrong[2:], atol=1e-9, rtol=1e-6) and not torch.allclose(yours, ours):
                return CheckResult(False, "lime_kernel", hint, float((yours - ours).abs().max()))
    return compare(yours, ours, name="lime_kernel", atol=1e-9, rtol=1e-6)


def check_shapley(your_fn) -> CheckResult:
    """Notebook 07: ``your_fn(v, k) -> [k]``, exact Shapley values from a table of coalition values
    ``v`` [2**k] where coalition S has index sum of 2**j over its players j."""
    import math

    g = torch.Generator().manual_seed(0)
    k = 5
    v = torch.randn(2 ** k, generator=g, dtype=torch.float64) * 3
    yours = _call(your_fn, "shapley", v.clone(), k)
    if isinstance(yours, CheckResult):
        return yours
    code = torch.arange(2 ** k)
    size = torch.tensor([bin(c).count("1") for c in range(2 ** k)])

    def shapley(weight):
        out = torch.zeros(k, dtype=torch.float64)
        for j in range(k):
            without = code[(code >> j) & 1 == 0]
            out[j] = sum(weight(int(size[s])) * (v[s | (1 << j)] - v[s]) for s in without)
        return out

    ours = shapley(lambda s: math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k))
    if yours.shape == ours.shape:
        slips = {
            "you averaged the marginal contributions with equal weight: a coalition of size s gets weight "
            "s! (k - s - 1)! / k!": shapley(lambda s: 1 / 2 ** (k - 1)),
            "your weights are 1 / C(k-1, s): divide once more by k (all sizes together must weigh 1)":
                shapley(lambda s: 1 / math.comb(k - 1, s)),
            "your players are numbered from the other end: player j is bit j, (index >> j) & 1":
                ours.flip(0) if not torch.allclose(ours.flip(0), ours) else ours + 1,
        }
        for hint, wrong in slips.items():
            if torch.allclose(yours, wrong, atol=1e-9, rtol=1e-7):
                return CheckResult(False, "shapley", hint, float((yours - ours).abs().max()))
        if abs(float(yours.sum()) - float(v[-1] - v[0])) > 1e-6:
            result = compare(yours, ours, name="shapley", atol=1e-9, rtol=1e-7)
            result.message += f"; efficiency fails: your values sum to {float(yours.sum()):.4f}, " \
                              f"v(all) - v(none) = {float(v[-1] - v[0]):.4f}"
            return result
    return compare(yours, ours, name="shapley", atol=1e-9, rtol=1e-7)


def check_rollout(your_fn) -> CheckResult:
    """Notebook 11: ``your_fn(attentions) -> [B, T, T]``, attention rollout with the residual as
    0.5 I + 0.5 A, heads fused by their mean, rows normalised, blocks multiplied in order
    (the last block's matrix on the left), from a list of ``[B, heads, T, T]`` tensors."""
    from .attention import rollout

    g = torch.Generator().manual_seed(0)
    raw = [torch.rand(2, 3, 5, 5, generator=g, dtype=torch.float64) ** 3 for _ in range(3)]
    attentions = [a / a.sum(-1, keepdim=True) for a in raw]
    try:
        yours = your_fn([a.clone() for a in attentions])
    except Exception as err:  # the learner's code: report, do not crash the notebook
        return CheckResult(False, "rollout", f"your function raised {type(err).__name__}: {err}")
    ours = rollout(attentions)
    if isinstance(yours, torch.Tensor) and yours.shape == ours.shape:
        yours = yours.detach().double()
        eye = torch.eye(5, dtype=torch.float64)
        hat = [0.5 * eye + 0.5 * a.mean(1) for a in attentions]

        def product(mats):
            out = mats[0]
            for m in mats[1:]:
                out = m @ out
            return out

        slips = {
            "you multiplied in the wrong order: block l's matrix goes on the left, R = A_L ... A_1 "
            "(each block mixes the tokens the blocks below produced)":
                hat[0] @ hat[1] @ hat[2],
            "you left out the residual: each block's output keeps its input, A^ = 0.5 I + 0.5 A":
                product([a.mean(1) for a in attentions]),
            "you averaged the heads after the product: fuse the heads of each block first":
                product([0.5 * eye + 0.5 * a for a in attentions]).mean(1),
            "you added the identity without halving: 0.5 I + 0.5 A keeps the rows summing to 1 (or "
            "normalise the rows after adding I)": product([eye + a.mean(1) for a in attentions]),
        }
        for hint, wrong in slips.items():
            if torch.allclose(yours, wrong, atol=1e-9, rtol=1e-7):
                return CheckResult(False, "rollout", hint, float((yours - ours).abs().max()))
    return compare(yours, ours, name="rollout", atol=1e-9, rtol=1e-7)


def check_debiased_vit_question(attends_to_ruler: bool, uses_ruler: bool) -> CheckResult:
    """Notebook 11, exercise 2, answered from the data: on 16 held-out clinic-A ruler images (not
    the notebook's), does the debiased ViT's last-block CLS attention put more mass on the ruler
    than the ruler's share of the image, and does removing the ruler move its melanoma logit by
    one logit or more on average?"""
    from .attention import attention_maps, token_map
    from .data import MEL, make_dataset
    from .metrics import mask_mass, mask_share
    from .models import load_vit
    from .report import fmt
    from .train import TEST_SEEDS

    for name, value in (("attends_to_ruler", attends_to_ruler), ("uses_ruler", uses_ruler)):
        if not isinstance(value, bool):
            return CheckResult(False, "debiased ViT", f"{name} must be True or False, got {value!r}")
    model = load_vit("debiased")
    test_a = make_dataset(2000, clinic="A", seed=TEST_SEEDS["A"])
    index = torch.nonzero(test_a.has_ruler)[16:32, 0]
    images = test_a.images[index]
    twins = make_dataset(2000, clinic="A", seed=TEST_SEEDS["A"], ruler=False).images[index]
    ruler = test_a.masks["ruler"][index]
    last = attention_maps(model, images, layers=-1)[0]
    mass = mask_mass(token_map(last.mean(1)[:, 0], model.grid), ruler).mean().item()
    share = mask_share(ruler).mean().item()
    with torch.no_grad():
        effect = (model(images)[:, MEL] - model(twins)[:, MEL]).abs().mean().item()
    truth = (mass > share, effect >= 1.0)
    facts = (f"its last-block attention puts {fmt(mass, 3)} of its mass on the ruler, which covers "
             f"{fmt(share, 3)} of the image; removing the ruler moves its mel logit by {fmt(effect, 2)} on average")
    if (attends_to_ruler, uses_ruler) == truth:
        lesson = ("where attention lands and what the decision uses are separate questions: the intervention "
                  "answers the second") if truth[0] != truth[1] else "attention and the intervention agree here"
        return CheckResult(True, "debiased ViT", f"right: {facts}; {lesson}")
    wrong = [n for n, a, t in (("attends_to_ruler", attends_to_ruler, truth[0]), ("uses_ruler", uses_ruler, truth[1]))
             if a != t]
    return CheckResult(False, "debiased ViT", f"not quite ({', '.join(wrong)}): {facts}")


def check_fft_scale(your_fn, size: int = 16) -> CheckResult:
    """Notebook 08, exercise 1: ``your_fn(size) -> [size, size // 2 + 1]``, the 1/f weights of the
    rfft2 frequencies, the zero frequency capped at 1/size."""
    from .featurevis import fft_scale

    try:
        yours = your_fn(size)
    except Exception as err:  # the learner's code: report, do not crash the notebook
        return CheckResult(False, "fft_scale", f"your function raised {type(err).__name__}: {err}")
    ours = fft_scale(size).double()
    if isinstance(yours, torch.Tensor) and yours.shape == ours.shape:
        yours = yours.detach().double()
        if not torch.isfinite(yours).all():
            return CheckResult(False, "fft_scale", "infinite weight at the zero frequency: cap the frequency at "
                                                   "1/size before dividing (.clamp_min(1 / size))")
        fx_wrong = torch.fft.fftfreq(size)[None, : size // 2 + 1].double()
        fy = torch.fft.fftfreq(size)[:, None].double()
        slips = {
            "your x frequencies come from fftfreq, whose last rfft2 entry is -1/2: use rfftfreq (the same "
            "magnitudes here, so check the sign convention if this fires)":
                1 / (fx_wrong ** 2 + fy ** 2).sqrt().clamp_min(1 / size),
            "you weighted by 1/f^2: the course (and lucid) use 1/f": 1 / (torch.fft.rfftfreq(size)[None].double() ** 2
                                                                     + fy ** 2).clamp_min(1 / size ** 2),
        }
        for hint, wrong in slips.items():
            if torch.allclose(yours, wrong) and not torch.allclose(wrong, ours):
                return CheckResult(False, "fft_scale", hint, float((yours - ours).abs().max()))
    return compare(yours, ours, name="fft_scale", atol=1e-6, rtol=1e-6)


def check_ruler_channels_question(answer: bool) -> CheckResult:
    """Notebook 08, exercise 2, answered from the data: on 1,000 clinic-B images not used in the
    notebook, do the top-9 images of the shortcut model's top melanoma channel (by fc weight x mean
    activation on clinic-A melanomas) mostly have a ruler (5 or more, where 3 would be the base
    rate), several of them (3 or more) in lesions that are not melanomas?"""
    from .data import MEL, make_dataset
    from .featurevis import top_activating
    from .hooks import capture
    from .models import load_dermnet
    from .train import TEST_SEEDS

    if not isinstance(answer, bool):
        return CheckResult(False, "ruler channels", f"answer must be True or False, got {answer!r}")
    model = load_dermnet("shortcut")
    test_a = make_dataset(1000, clinic="A", seed=TEST_SEEDS["A"])
    with capture(model, "layer4") as rec, torch.no_grad():
        model(test_a.images[test_a.labels == MEL])
    top = int((model.fc.weight[MEL].detach() * rec.activation.mean((0, 2, 3))).argmax())
    other = make_dataset(1000, clinic="B", seed=TEST_SEEDS["B"] + 17)
    idx = top_activating(model, "layer4", top, other.images, k=9)[0]
    rulers = int(other.has_ruler[idx].sum())
    n = int(((other.labels[idx] != MEL) & other.has_ruler[idx]).sum())
    truth = rulers >= 5 and n >= 3  # (about 30% of clinic-B images have a ruler, 1 in 7 is a melanoma)
    facts = f"channel {top}: {rulers} of its top 9 images have a ruler, {n} of them not melanomas"
    if answer == truth:
        return CheckResult(True, "ruler channels", f"right: {facts}" + (
            "; the channel answers the ruler, not the lesion" if truth else ""))
    return CheckResult(False, "ruler channels", f"not quite: {facts}")


# --------------------------------------------------------------------------------------------
# Notebook 09: deconvnets
# --------------------------------------------------------------------------------------------

def check_conv_transpose(your_fn) -> CheckResult:
    """Notebook 09, exercise 1: ``your_fn(y, weight, stride, padding)`` -> the transposed
    convolution ``F.conv_transpose2d(y, weight, stride=stride, padding=padding)``, by hand.
    Checked on three settings (stride 1 and 2, with and without padding) with a non-symmetric
    kernel and different numbers of input and output channels."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 3, 5, 5, generator=g)
    weight = torch.randn(3, 4, 3, 3, generator=g)  # [C_in, C_out, k, k]
    for stride, padding in ((1, 0), (2, 0), (2, 1)):
        name = f"conv_transpose (stride {stride}, padding {padding})"
        try:
            yours = your_fn(y.clone(), weight.clone(), stride, padding)
        except Exception as err:  # the learner's code: report, do not crash the notebook
            return CheckResult(False, name, f"your function raised {type(err).__name__}: {err}")
        ours = F.conv_transpose2d(y, weight, stride=stride, padding=padding)
        if isinstance(yours, torch.Tensor) and yours.dim() == 4:
            h = yours.shape[-1]
            if h < y.shape[-1]:
                return CheckResult(False, name, f"{h}x{h} output from a {y.shape[-1]}x{y.shape[-1]} input: that "
                                                "shrinks like a convolution; a transposed convolution spreads each "
                                                "input pixel over a k x k patch of the output, and grows")
            if yours.shape[1] != ours.shape[1]:
                return CheckResult(False, name, f"{yours.shape[1]} output channels, expected {ours.shape[1]}: the "
                                                "weight of a transposed convolution is [C_in, C_out, k, k]")
            if h == ours.shape[-1] + 2 * padding and padding:
                return CheckResult(False, name, f"{h}x{h} output, expected {ours.shape[-1]}: cut `padding` rows "
                                                "and columns from each side of the full output")
            if h == (y.shape[-1] - 1) + 3 - 2 * padding and stride > 1:
                return CheckResult(False, name, "the output has the size of a stride-1 result: input pixel (i, j) "
                                                "places its kernel at (i * stride, j * stride)")
            if yours.shape == ours.shape and stride > 1:
                full = F.conv_transpose2d(y, weight)  # every kernel placed at (i, j), not (i * s, j * s)
                unstrided = torch.zeros(*ours.shape[:2], ours.shape[2] + 2 * padding, ours.shape[3] + 2 * padding)
                unstrided[:, :, :full.shape[2], :full.shape[3]] = full
                unstrided = unstrided[:, :, padding:unstrided.shape[2] - padding, padding:unstrided.shape[3] - padding]
                if torch.allclose(yours.double(), unstrided.double(), atol=1e-4):
                    return CheckResult(False, name, "input pixel (i, j) places its kernel at (i, j): with a stride it "
                                                    "belongs at (i * stride, j * stride)")
            if yours.shape == ours.shape:
                flipped = F.conv_transpose2d(y, weight.flip(2, 3), stride=stride, padding=padding)
                if torch.allclose(yours.double(), flipped.double(), atol=1e-4):
                    return CheckResult(False, name, "your kernel is flipped: weight[:, :, u, v] lands at offset "
                                                    "(u, v) from the input pixel's position, unflipped")
        result = compare(yours, ours, name=name, atol=1e-4, rtol=1e-4)
        if not result:
            return result
    return CheckResult(True, "conv_transpose", "matches F.conv_transpose2d at stride 1 and 2, with and without "
                                               "padding (to within atol=1e-4)")


def check_deconvnet_class_question(deconvnet_tells_the_class: bool) -> CheckResult:
    """Notebook 09, exercise 2, answered from the data: on 32 clinic-B images not used in the
    notebook, is the shortcut model's deconvnet map for mel as different from its maps for the other
    classes as Grad-CAM's is? Measured as the mean Spearman rank correlation between the mel map
    and each other class's map: a method tells the classes apart when it is well below 0.5."""
    from .cam import grad_cam
    from .data import MEL, make_dataset
    from .deconv import deconvnet
    from .metrics import rank_correlation
    from .models import load_dermnet
    from .report import fmt
    from .train import TEST_SEEDS

    if not isinstance(deconvnet_tells_the_class, bool):
        return CheckResult(False, "deconvnet and the class",
                           f"answer must be True or False, got {deconvnet_tells_the_class!r}")
    model = load_dermnet("shortcut")
    x = make_dataset(32, clinic="B", seed=TEST_SEEDS["B"] + 29).images
    others = [c for c in range(model.fc.out_features) if c != MEL]
    deconv = {c: deconvnet(model, x, c).abs().sum(1) for c in [MEL, *others]}
    cams = {c: grad_cam(model, x, c, relu=False)[:, 0] for c in [MEL, *others]}
    r_deconv = torch.stack([rank_correlation(deconv[MEL], deconv[c]) for c in others]).mean().item()
    r_cam = torch.stack([rank_correlation(cams[MEL], cams[c]) for c in others]).mean().item()
    truth = r_deconv < 0.5
    facts = (f"mel vs the other classes, mean rank correlation: deconvnet {fmt(r_deconv, 2, atol=1e-3)}, "
             f"Grad-CAM {fmt(r_cam, 2, atol=1e-3)}")
    if deconvnet_tells_the_class == truth:
        return CheckResult(True, "deconvnet and the class", f"right: {facts}" + (
            "" if truth else "; the deconvnet map is mostly the same picture whatever the class"))
    return CheckResult(False, "deconvnet and the class", f"not quite: {facts}")


# --------------------------------------------------------------------------------------------
# Notebook 10: TCAV
# --------------------------------------------------------------------------------------------

def _tcav_inputs():
    """Gradients of the mel logit at layer2 for 40 held-out melanomas (shortcut model), and a unit
    direction there whose TCAV score is between 0.25 and 0.75, with no sensitivity near zero
    (the first of a fixed sequence of random directions that qualifies)."""
    from .concepts import class_images, layer_gradients
    from .data import MEL
    from .models import load_dermnet

    model = load_dermnet("shortcut")
    grads = layer_gradients(model, ["layer2"], class_images("mel", 40, seed=1), MEL)["layer2"][1]
    g = torch.Generator().manual_seed(0)
    for _ in range(1000):
        cav = torch.randn(grads.shape[1], generator=g)
        cav = cav / cav.norm()
        s = grads @ cav
        if 0.25 <= float((s > 0).float().mean()) <= 0.75 and float((s.abs() / grads.norm(dim=1)).min()) > 1e-4:
            return grads, cav
    raise RuntimeError("no suitable direction found")


def check_tcav_score(your_fn) -> CheckResult:
    """Notebook 10, exercise 1: ``your_fn(gradients [N, D], cav [D]) -> float``, the share of images
    whose directional derivative along the CAV is > 0."""
    grads, cav = _tcav_inputs()
    s = grads @ cav
    ours = float((s > 0).float().mean())
    try:
        yours = your_fn(grads.clone(), cav.clone())
    except Exception as err:  # the learner's code: report, do not crash the notebook
        return CheckResult(False, "tcav_score", f"your function raised {type(err).__name__}: {err}")
    if isinstance(yours, torch.Tensor):
        if yours.numel() != 1:
            return CheckResult(False, "tcav_score", f"expected one number, got a tensor of shape {tuple(yours.shape)}: "
                                                    "take the share over the images (a mean of the 0/1 indicators)")
        yours = float(yours)
    if isinstance(yours, bool) or not isinstance(yours, int | float):
        return CheckResult(False, "tcav_score", f"expected a float, got {type(yours).__name__}")
    yours = float(yours)
    if abs(yours - ours) < 1e-9:
        return CheckResult(True, "tcav_score", f"matches ours ({ours:.3f} of {len(s)} melanomas)", 0.0)
    slips = {
        "you returned whether the *mean* sensitivity is positive: count the images one by one, then take the "
        "share": float(s.mean() > 0),
        "you counted the negative sensitivities: the score is the share with S(x) > 0": float((s < 0).float().mean()),
        "you took the mean sensitivity itself (Captum's 'magnitude'): the score counts signs":
            float(s.mean()),
        "you returned a count, not a share: divide by the number of images": float((s > 0).sum()),
    }
    for hint, wrong in slips.items():
        if abs(yours - wrong) < 1e-6 * max(1.0, abs(wrong)):
            return CheckResult(False, "tcav_score", f"{hint} (yours {yours:.3f}, ours {ours:.3f})", abs(yours - ours))
    return CheckResult(False, "tcav_score", f"different: yours {yours:.3f}, ours {ours:.3f}", abs(yours - ours))


def check_ink_question(shortcut_uses_ink: bool, debiased_uses_ink: bool) -> CheckResult:
    """Notebook 10, exercise 2, answered from the data: is "ink" significant for mel at any of
    layer2-4 (TCAV against 20 random sets, Bonferroni over the notebook's 21 tests), for the
    shortcut model and for the debiased one? The checker re-runs the notebook's test on the same
    sets (``concept_images("ink", 50)``, ``random_images(50, seed=i)`` for i < 20, 100 melanomas)."""
    from .concepts import LAYERS, class_images, concept_images, random_images, summary, tcav_experiment
    from .data import MEL
    from .models import load_dermnet

    for name, value in (("shortcut_uses_ink", shortcut_uses_ink), ("debiased_uses_ink", debiased_uses_ink)):
        if not isinstance(value, bool):
            return CheckResult(False, "ink", f"{name} must be True or False, got {value!r}")
    ink = {"ink": concept_images("ink", 50)}
    randoms = [random_images(50, seed=i) for i in range(20)]
    mel = class_images("mel", 100)
    truth, facts = [], []
    for name in ("shortcut", "debiased"):
        res = tcav_experiment(load_dermnet(name), LAYERS, ink, randoms, mel, MEL, n_tests=21)
        rows = {layer: summary(res[("ink", layer)]) for layer in LAYERS}
        truth.append(any(res[("ink", layer)]["significant"] for layer in LAYERS))
        facts.append(f"{name}: " + "; ".join(f"{layer} TCAV {r['TCAV']}, p {r['p (Bonferroni)']}"
                                            for layer, r in rows.items()))
    answer = (shortcut_uses_ink, debiased_uses_ink)
    detail = " | ".join(facts)
    if answer == tuple(truth):
        return CheckResult(True, "ink", f"right ({detail}). A significant score near 0 counts: the mel logit "
                                        "falls along the ink direction. Whether the *decision* uses ink is a question "
                                        "for an intervention")
    wrong = [n for n, a, t in zip(("shortcut_uses_ink", "debiased_uses_ink"), answer, truth) if a != t]
    return CheckResult(False, "ink", f"not quite ({', '.join(wrong)}): {detail}")


# --------------------------------------------------------------------------------------------
# Notebook 12: sanity checks
# --------------------------------------------------------------------------------------------

def check_randomized(your_fn) -> CheckResult:
    """Notebook 12, exercise 1: ``your_fn(model, layer)`` returns a copy of ``model`` whose ``layer``
    and every top-level layer after it are re-initialized; ``model`` itself is left as it was."""
    from .models import load_dermnet

    name = "randomized"
    model = load_dermnet("shortcut")
    top = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for layer in ("layer3", "fc", "layer1"):
        out, verdict = run_learner(name, your_fn, model, layer)
        if verdict is not None:
            return verdict
        if not isinstance(out, torch.nn.Module):
            return CheckResult(False, name, f"expected a model (an nn.Module), got {type(out).__name__}")
        if out is model or any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
            return CheckResult(False, name, "your function changed the caller's model: re-initialize a copy "
                                            "(copy.deepcopy(model)) and return it")
        new = out.state_dict()
        changed = [n for n in top if any(not torch.equal(before[k], new[k]) for k in before
                                         if k.startswith(n + ".") and "num_batches" not in k)]
        want = top[top.index(layer):]
        if changed == want:
            continue
        if not changed:
            hint = ("nothing was re-initialized: call reset_parameters() on every module inside the layers "
                    "(layer.modules() reaches the convolutions inside the blocks; children() does not)")
        elif changed == [layer]:
            hint = f"only {layer} itself was re-initialized: a cascade also re-initializes every layer above it"
        elif changed == top[:top.index(layer) + 1]:
            hint = "you went the wrong way: the cascade starts at the output (fc) and goes down to the layer named"
        else:
            hint = f"re-initialized {changed}, expected {want}"
        return CheckResult(False, name, f"{hint} (layer={layer!r})")
    return CheckResult(True, name, "re-initializes the layer and everything above it, on a copy "
                                   "(checked for layer3, fc and layer1)")


def check_sanity_question(still_similar) -> CheckResult:
    """Notebook 12, exercise 2, answered from the data: with fc, layer4 and layer3 re-initialized,
    which of saliency, Grad-CAM and guided backprop keep a mean Spearman (abs) above 0.6 with the
    trained shortcut model's maps, on ten fresh clinic-B images with a ruler?"""
    from .cam import grad_cam, guided_backprop
    from .data import make_dataset
    from .gradients import saliency
    from .models import load_dermnet
    from .sanity import randomization_test
    from .train import TEST_SEEDS, logits

    name = "sanity question"
    choices = {"saliency", "Grad-CAM", "guided backprop"}
    if not isinstance(still_similar, set | frozenset | list | tuple) or not set(still_similar) <= choices:
        return CheckResult(False, name, f"answer with a set of names from {sorted(choices)}, got {still_similar!r}")
    model = load_dermnet("shortcut")
    x = make_dataset(10, clinic="B", seed=TEST_SEEDS["B"] + 1212, ruler=True).images
    t = logits(model, x).argmax(1)
    methods = {"saliency": lambda m, x, t: saliency(m, x, t, abs=False),
               "Grad-CAM": lambda m, x, t: grad_cam(m, x, t, "layer4"), "guided backprop": guided_backprop}
    sims = randomization_test(model, methods, x, t, steps=["layer3"])["similarity"]["layer3"]
    means = {n: float(s["Spearman (abs)"].nan_to_num(0.0).mean()) for n, s in sims.items()}  # all-zero map: 0
    truth = {n for n, v in means.items() if v > 0.6}
    detail = ", ".join(f"{n} {v:.2f}" for n, v in means.items())
    if set(still_similar) == truth:
        return CheckResult(True, name, f"right ({detail}): only guided backprop keeps its map with the top of the "
                                       "network random; it redraws the image's edges" if truth == {"guided backprop"}
                           else f"right ({detail})")
    return CheckResult(False, name, f"not quite: mean Spearman (abs) on ten fresh images: {detail}")


# --------------------------------------------------------------------------------------------
# Notebook 13: evaluating attributions
# --------------------------------------------------------------------------------------------

def _deletion_inputs(n: int = 6):
    """Six clinic-B images with a ruler, the debiased model's predictions and its gradient x input
    maps (signed, and without plateaus of tied values)."""
    from .data import make_dataset
    from .gradients import gradient_x_input
    from .models import load_dermnet
    from .train import logits

    model = load_dermnet("debiased")
    x = make_dataset(n, clinic="B", seed=2024, ruler=True).images
    t = logits(model, x).argmax(1)
    return model, x, t, gradient_x_input(model, x, t)


def check_deletion_scores(your_fn, steps: int = 8) -> CheckResult:
    """Notebook 13, exercise 1: ``your_fn(model, x, target, attr, steps) -> [B, steps + 1]``, the
    deletion curve's scores (to black, most relevant first, softmax probability of the target)."""
    from .evaluation import deletion

    name = "deletion_scores"
    model, x, t, attr = _deletion_inputs()
    yours, failed = run_learner(name, your_fn, model, x.clone(), t.clone(), attr.clone(), steps)
    if failed is not None:
        return failed
    ours = deletion(model, x, t, attr, steps=steps, channels_last=False).scores
    if isinstance(yours, torch.Tensor) and yours.shape == ours.shape:
        slips = {
            "you removed the least relevant pixels first (LeRF): sort in descending order":
                deletion(model, x, t, attr, steps=steps, order="lerf").scores,
            "your scores are logits: take the softmax probability of the target":
                deletion(model, x, t, attr, steps=steps, score="logit").scores,
            "you ranked pixels by the magnitude of the attribution: keep its sign (pixels for the class first)":
                deletion(model, x, t, attr, steps=steps, abs=True).scores,
        }
        for hint, wrong in slips.items():
            if _close(yours.detach().float(), wrong, 1e-4, 1e-4) and not _close(wrong, ours, 1e-4, 1e-4):
                return CheckResult(False, name, hint)
    if isinstance(yours, torch.Tensor) and yours.shape == (ours.shape[0], ours.shape[1] - 1):
        return CheckResult(False, name, f"shape {tuple(yours.shape)}: the curve has steps + 1 points, starting "
                                        "with the untouched image (k = 0)")
    return compare(yours, ours, name=name, atol=1e-4, rtol=1e-4)


def check_guided_backprop_randomization_question(guided_backprop_passes) -> CheckResult:
    """Notebook 13, exercise 2: does guided backprop's map change (mean rank correlation of the
    magnitudes below 0.5) when the shortcut model's layer4 and fc are re-initialized? Recomputed on
    16 fresh clinic-B images, next to Grad-CAM."""
    from .cam import grad_cam, guided_backprop
    from .data import make_dataset
    from .metrics import rank_correlation
    from .models import load_dermnet
    from .sanity import randomized
    from .train import logits

    name = "randomization question"
    if guided_backprop_passes is None:
        return not_done(name, "set guided_backprop_passes to True or False, then run this cell again")
    if not isinstance(guided_backprop_passes, bool):
        return CheckResult(False, name, f"answer True or False, got {guided_backprop_passes!r}")
    model = load_dermnet("shortcut")
    scrambled = randomized(model, "layer4", cascade=True)
    x = make_dataset(16, clinic="B", seed=77, ruler=True).images
    t = logits(model, x).argmax(1)
    sims = {k: rank_correlation(f(model, x, t).abs().sum(1), f(scrambled, x, t).abs().sum(1)).mean().item()
            for k, f in (("guided backprop", guided_backprop), ("Grad-CAM", grad_cam))}
    truth = sims["guided backprop"] < 0.5
    detail = (f"mean rank correlation with the randomized model's map: guided backprop {sims['guided backprop']:.2f}, "
              f"Grad-CAM {sims['Grad-CAM']:.2f}")
    if guided_backprop_passes == truth:
        return CheckResult(True, name, f"right ({detail}). Guided backprop's ReLU rule reconstructs the image "
                                       "(Nie et al. 2018), so its map barely depends on the top layers" if not truth
                           else f"right ({detail})")
    return CheckResult(False, name, f"not quite: {detail}")


# --------------------------------------------------------------------------------------------
# Notebook 14: sparse autoencoders
# --------------------------------------------------------------------------------------------

def _topk_inputs():
    from .sae import load_sae

    sae, _ = load_sae("shortcut")
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(64, sae.d_in, generator=g) + sae.b_dec.detach()
    return sae, acts


def check_topk_sae(your_fn) -> CheckResult:
    """Notebook 14, exercise 1: ``your_fn(acts, W_enc, b_enc, W_dec, b_dec, k) -> (latents, recon, mse)``,
    the TopK SAE's forward pass and its reconstruction loss, checked against ``helpers.sae.TopKSAE``
    with the shipped SAE's weights."""
    import torch.nn.functional as F

    name = "topk_sae"
    sae, acts = _topk_inputs()
    p = {k: v.detach().clone() for k, v in (("W_enc", sae.W_enc), ("b_enc", sae.b_enc), ("W_dec", sae.W_dec),
                                            ("b_dec", sae.b_dec))}
    out, err = run_learner(name, your_fn, acts.clone(), p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"], sae.k)
    if err is not None:
        return err
    if not isinstance(out, tuple) or len(out) != 3:
        return CheckResult(False, name, "return three things: (latents, recon, mse)")
    latents, recon, mse = out
    with torch.no_grad():
        f = sae.encode(acts)
        ours_recon = sae.decode(f)
        ours_mse = sae.loss(acts)["mse"]
        pre = (acts - sae.b_dec) @ sae.W_enc + sae.b_enc
        by_abs = pre.abs().topk(sae.k, -1).indices
        slips = {
            "you did not subtract b_dec before encoding (the pre-encoder bias)":
                sae._topk(F.relu(acts @ sae.W_enc + sae.b_enc)),
            "you kept the k largest by absolute value: keep the k largest after the ReLU":
                torch.zeros_like(pre).scatter_(-1, by_abs, F.relu(pre).gather(-1, by_abs)),
            "you applied the ReLU but kept every latent: keep only the k largest": F.relu(pre),
        }
    if not isinstance(latents, torch.Tensor) or latents.shape != f.shape:
        return CheckResult(False, name, f"latents must be a tensor of shape {tuple(f.shape)}, got "
                                        f"{getattr(latents, 'shape', type(latents).__name__)}")
    if not torch.allclose(latents, f, atol=1e-4, rtol=1e-4):
        for hint, wrong in slips.items():
            if torch.allclose(latents, wrong, atol=1e-4, rtol=1e-4):
                return CheckResult(False, name, hint)
        return CheckResult(False, name, f"latents differ from ours ({int(((latents > 0) != (f > 0)).sum())} "
                                        "entries active in one and not the other)")
    res = compare(recon, ours_recon, name="recon", atol=1e-4)
    if not res:
        return CheckResult(False, name, f"recon: {res.message} (x_hat = latents @ W_dec + b_dec)")
    mse = float(mse)
    if abs(mse - float(ours_mse)) <= 1e-4 * float(ours_mse):
        return CheckResult(True, name, "matches ours: latents, reconstruction and loss")
    if abs(mse - float((acts - ours_recon).pow(2).mean())) <= 1e-4 * float(ours_mse):
        return CheckResult(False, name, "your mse is the mean over every entry: sum the squared error over the "
                                        "d_in channels, then average over the vectors")
    if abs(mse - float((acts - ours_recon).pow(2).sum())) <= 1e-4 * float((acts - ours_recon).pow(2).sum()):
        return CheckResult(False, name, "your mse is summed over the vectors too: average over the vectors")
    return CheckResult(False, name, f"mse {mse:.4g}, ours {float(ours_mse):.4g}")


def check_artifact_latent_question(corners_latent, hair_latent_exists) -> CheckResult:
    """Notebook 14, exercise 2, answered from the data: which latent of the shipped shortcut SAE best
    detects the dermoscope's dark corners (per position, a cell at least 10% covered), and does any
    latent detect hair with AUROC >= 0.9? Measured on 300 fresh clinic-B images (not the notebook's)."""
    from .data import make_dataset
    from .models import load_dermnet
    from .sae import SEED_BASE, cell_share, latent_auroc, latent_codes, layer_vectors, load_sae, normalize

    name = "artifact_latents"
    if isinstance(corners_latent, bool) or not isinstance(corners_latent, int):
        return CheckResult(False, name, f"corners_latent must be a latent index (int), got {corners_latent!r}")
    if not isinstance(hair_latent_exists, bool):
        return CheckResult(False, name, f"hair_latent_exists must be True or False, got {hair_latent_exists!r}")
    sae, layer = load_sae("shortcut")
    if not 0 <= corners_latent < sae.d_latent:
        return CheckResult(False, name, f"corners_latent must be in [0, {sae.d_latent}), got {corners_latent}")
    ds = make_dataset(300, clinic="B", seed=SEED_BASE["eval"] + 7)
    codes = latent_codes(sae, normalize(layer_vectors(load_dermnet("shortcut"), ds.images, layer),
                                        float(sae.act_scale)))
    corners = latent_auroc(codes, cell_share(ds.masks["corners"]) >= 0.1)
    hair = latent_auroc(codes, cell_share(ds.masks["hair"]) >= 0.1)
    truth_hair = bool(hair.max() >= 0.9)
    from .report import fmt

    facts = (f"on fresh images, latent {corners_latent}: corners AUROC {fmt(corners[corners_latent], 2)}; "
             f"the best: {fmt(corners.max(), 2)}; the best hair latent: AUROC {fmt(hair.max(), 2)}")
    wrong = []
    if float(corners[corners_latent]) < float(corners.max()) - 0.02:
        wrong.append("corners_latent is not among the best corner detectors")
    if hair_latent_exists != truth_hair:
        wrong.append("hair_latent_exists")
    if not wrong:
        return CheckResult(True, name, f"right ({facts})" + ("" if truth_hair else ". No hair latent: by layer4 the "
                                                                     "model no longer represents hair"))
    return CheckResult(False, name, f"not quite ({', '.join(wrong)}): {facts}")


# --------------------------------------------------------------------------------------------
# Notebooks 00-07: audit questions answered from the data
# --------------------------------------------------------------------------------------------

def _bool_answers(name: str, answers: dict):
    """``None`` while any answer is still ``None`` (a TODO), a failing verdict for a non-bool."""
    if any(value is None for value in answers.values()):
        return not_done(name, f"set {', '.join(answers)} to True or False, from your own measurement")
    for key, value in answers.items():
        if not isinstance(value, bool):
            return CheckResult(False, name, f"{key} must be True or False, got {value!r}")
    return None


def _verdict(name: str, answers: dict, truth: dict, detail: str, lesson: str) -> CheckResult:
    wrong = [key for key in answers if answers[key] != truth[key]]
    if not wrong:
        return CheckResult(True, name, f"right ({detail}). {lesson}")
    return CheckResult(False, name, f"not quite ({', '.join(wrong)}): {detail}")


def _with_artifact(artifact: str, n: int, seed: int, count: int = 96, clinic: str = "B"):
    """The first ``n`` images of ``make_dataset(count, clinic=clinic, seed=seed)`` that show
    ``artifact`` ("ruler", "ink", "hair" or "corners"), and that artifact's masks."""
    from .data import make_dataset

    ds = make_dataset(count, clinic=clinic, seed=seed)
    keep = ds.masks[artifact].flatten(1).any(1)
    return ds.images[keep][:n], ds.masks[artifact][keep][:n]


def check_sliced_accuracy_question(ruler_costs_accuracy, ink_costs_accuracy, hair_costs_accuracy) -> CheckResult:
    """Notebook 00, exercise 2, answered from the data: on clinic B, is the shortcut model's accuracy
    on the images that show an artifact 15 points or more below its accuracy on those that do not?
    For the ruler, the ink marking and hair; measured on 800 fresh clinic-B images (seed 160_001)."""
    from .concepts import artifacts
    from .data import make_dataset
    from .models import load_dermnet
    from .train import logits

    name = "sliced accuracy question"
    answers = {"ruler_costs_accuracy": ruler_costs_accuracy, "ink_costs_accuracy": ink_costs_accuracy,
               "hair_costs_accuracy": hair_costs_accuracy}
    early = _bool_answers(name, answers)
    if early is not None:
        return early
    ds = make_dataset(800, clinic="B", seed=160_001)
    right = (logits(load_dermnet("shortcut"), ds.images).argmax(1) == ds.labels).float()
    present = artifacts(ds)
    gaps = {a: float(right[~present[a]].mean() - right[present[a]].mean()) for a in ("ruler", "ink", "hair")}
    truth = {f"{a}_costs_accuracy": gap >= 0.15 for a, gap in gaps.items()}
    detail = ("on 800 fresh clinic-B images the shortcut model's accuracy is lower with the artifact than "
              "without by " + ", ".join(f"{gap:+.3f} ({a})" for a, gap in gaps.items()))
    return _verdict(name, answers, truth, detail,
                    "Only the ruler costs it accuracy: a slice by each artifact finds the shortcut without "
                    "looking inside the model, once you know which artifacts to slice by")


def check_smoothgrad_ruler_question(shortcut_above_share, debiased_above_share) -> CheckResult:
    """Notebook 02, exercise 2, answered from the data: on clinic-B images with a ruler, does each
    model's SmoothGrad map (5% noise, 10 samples, for its own prediction) put more than the ruler's
    area share of its mass on the ruler? (the ruler images of ``make_dataset(64, clinic="B",
    seed=202_001)``, 11 of them; saliency's masses are given for comparison)"""
    from .gradients import saliency, smoothgrad
    from .metrics import mask_mass, mask_share
    from .models import load_dermnet
    from .train import logits

    name = "SmoothGrad ruler question"
    answers = {"shortcut_above_share": shortcut_above_share, "debiased_above_share": debiased_above_share}
    early = _bool_answers(name, answers)
    if early is not None:
        return early
    x, m = _with_artifact("ruler", 16, 202_001, count=64)
    share = float(mask_share(m).mean())
    facts, truth = [], {}
    for model_name in ("shortcut", "debiased"):
        model = load_dermnet(model_name)
        t = logits(model, x).argmax(1)
        smooth = float(mask_mass(smoothgrad(model, x, t, n_samples=10, noise_level=0.05,
                                            generator=torch.Generator().manual_seed(0)), m).mean())
        plain = float(mask_mass(saliency(model, x, t), m).mean())
        truth[f"{model_name}_above_share"] = smooth > share
        facts.append(f"{model_name} {smooth:.3f} (saliency {plain:.3f})")
    detail = f"SmoothGrad's ruler mass: {', '.join(facts)}; the ruler's area share {share:.3f}"
    return _verdict(name, answers, truth, detail,
                    "SmoothGrad keeps saliency's verdict on both models: it makes the map steadier, it does "
                    "not change what the gradient points at")


def check_gradcam_artifacts_question(shortcut_ruler_twice_share, ink_twice_share, corners_twice_share) -> CheckResult:
    """Notebook 04, exercise 2, answered from the data: explaining melanoma on clinic-B images, does
    the shortcut model's Grad-CAM put more than twice the ruler's area share on the ruler, and does
    either model's Grad-CAM put more than twice the area share on the ink marking, or on the dark
    corners? (the first 16 images with each artifact of ``make_dataset(96, clinic="B", seed=777_003)``;
    all-zero maps are left out)"""
    from .cam import grad_cam
    from .data import MEL
    from .metrics import mask_mass, mask_share
    from .models import load_dermnet

    name = "Grad-CAM artifacts question"
    answers = {"shortcut_ruler_twice_share": shortcut_ruler_twice_share, "ink_twice_share": ink_twice_share,
               "corners_twice_share": corners_twice_share}
    early = _bool_answers(name, answers)
    if early is not None:
        return early
    models = {n: load_dermnet(n) for n in ("shortcut", "debiased")}
    ratio = {}
    for artifact in ("ruler", "ink", "corners"):
        x, m = _with_artifact(artifact, 16, 777_003)
        share = float(mask_share(m).mean())
        for model_name, model in models.items():
            ratio[artifact, model_name] = float(mask_mass(grad_cam(model, x, MEL), m).nanmean()) / share
    truth = {"shortcut_ruler_twice_share": ratio["ruler", "shortcut"] > 2,
             "ink_twice_share": max(ratio["ink", "shortcut"], ratio["ink", "debiased"]) > 2,
             "corners_twice_share": max(ratio["corners", "shortcut"], ratio["corners", "debiased"]) > 2}
    detail = "Grad-CAM mass / area share (shortcut, debiased): " + ", ".join(
        f"{a} {ratio[a, 'shortcut']:.2f}, {ratio[a, 'debiased']:.2f}" for a in ("ruler", "ink", "corners"))
    return _verdict(name, answers, truth, detail,
                    "Only the shortcut model's ruler clears the bar. A coarse 8x8 map smeared over a thin ink "
                    "line still gives it about its area share, so a ratio near 1 says 'not used', not 'used a bit'")


def check_occlusion_ink_question(ruler_above_share, ink_above_share) -> CheckResult:
    """Notebook 05, exercise 2, answered from the data: explaining melanoma on clinic-B images with
    the shortcut model, occlusion (window 16, stride 8, mean-colour patch): does the map put more
    than the area share on the ruler? On the ink marking? (the first 8 images with each of
    ``make_dataset(96, clinic="B", seed=777_003)``)"""
    from .data import MEL
    from .metrics import mask_mass, mask_share
    from .models import load_dermnet
    from .perturbation import occlusion

    name = "occlusion ink question"
    answers = {"ruler_above_share": ruler_above_share, "ink_above_share": ink_above_share}
    early = _bool_answers(name, answers)
    if early is not None:
        return early
    model = load_dermnet("shortcut")
    ratio = {}
    for artifact in ("ruler", "ink"):
        x, m = _with_artifact(artifact, 8, 777_003)
        attr = occlusion(model, x, MEL, window=16, stride=8, baseline="mean")
        ratio[artifact] = float(mask_mass(attr, m).nanmean() / mask_share(m).mean())
    truth = {"ruler_above_share": ratio["ruler"] > 1, "ink_above_share": ratio["ink"] > 1}
    detail = f"occlusion mass / area share: ruler {ratio['ruler']:.2f}, ink {ratio['ink']:.2f}"
    return _verdict(name, answers, truth, detail,
                    "Hiding the ruler costs the melanoma logit far more than its size; hiding the ink costs "
                    "less than its size. (A 16-pixel window is wider than the ink line: the drop it measures "
                    "belongs to the skin and lesion under the window too)")


def check_lime_ruler_question(shortcut_mostly_ruler, debiased_mostly_ruler) -> CheckResult:
    """Notebook 06, exercise 2, answered from the data: on 10 fresh clinic-A melanomas with a ruler
    (``make_dataset(10, clinic="A", seed=606_001, ruler=True, labels="mel")``), 16 SLIC segments,
    LIME for melanoma with 100 samples and seed 0: is the top segment mostly ruler (more than half
    of its pixels) in more than half of the images, for each model?"""
    from .data import MEL, make_dataset
    from .models import load_dermnet
    from .perturbation import lime, superpixels

    name = "LIME ruler question"
    answers = {"shortcut_mostly_ruler": shortcut_mostly_ruler, "debiased_mostly_ruler": debiased_mostly_ruler}
    early = _bool_answers(name, answers)
    if early is not None:
        return early
    ds = make_dataset(10, clinic="A", seed=606_001, ruler=True, labels="mel")
    segs = superpixels(ds.images, n_segments=16)
    k = int(segs.max()) + 1
    part = torch.stack([torch.bincount(s.flatten(), weights=r.flatten().float(), minlength=k)
                        / torch.bincount(s.flatten(), minlength=k).clamp_min(1)
                        for s, r in zip(segs, ds.masks["ruler"])])  # [10, K]: the ruler's share of each segment
    counts, truth = {}, {}
    for model_name in ("shortcut", "debiased"):
        values = lime(load_dermnet(model_name), ds.images, MEL, segs, n_samples=100, seed=0).values
        counts[model_name] = int((part.gather(1, values.argmax(1, keepdim=True))[:, 0] > 0.5).sum())
        truth[f"{model_name}_mostly_ruler"] = counts[model_name] > 5
    detail = (f"top segment mostly ruler in {counts['shortcut']} of 10 (shortcut) and {counts['debiased']} of 10 "
              "(debiased)")
    return _verdict(name, answers, truth, detail,
                    "LIME's single most important segment is enough to catch the shortcut model")


def check_shap_ruler_question(shortcut_over_one_logit, debiased_over_one_logit) -> CheckResult:
    """Notebook 07, exercise 2, answered from the data: on clinic-B images with a ruler, 16 SLIC
    segments, KernelSHAP for melanoma (100 samples, mean-colour baseline): is the Shapley value of
    the segment that is most ruler worth more than one logit on average, for each model? (the first
    8 ruler images of ``make_dataset(96, clinic="B", seed=777_003)``)"""
    from .data import MEL
    from .models import load_dermnet
    from .perturbation import kernel_shap, superpixels

    name = "SHAP ruler question"
    answers = {"shortcut_over_one_logit": shortcut_over_one_logit, "debiased_over_one_logit": debiased_over_one_logit}
    early = _bool_answers(name, answers)
    if early is not None:
        return early
    x, m = _with_artifact("ruler", 8, 777_003)
    segs = superpixels(x, n_segments=16)
    k = int(segs.max()) + 1
    part = torch.stack([torch.bincount(s.flatten(), weights=r.flatten().float(), minlength=k)
                        / torch.bincount(s.flatten(), minlength=k).clamp_min(1) for s, r in zip(segs, m)])
    ruler_seg = part.argmax(1, keepdim=True)
    value, truth = {}, {}
    for model_name in ("shortcut", "debiased"):
        phi = kernel_shap(load_dermnet(model_name), x, MEL, segs, n_samples=100, baseline="mean")
        value[model_name] = phi.gather(1, ruler_seg)[:, 0]
        truth[f"{model_name}_over_one_logit"] = float(value[model_name].mean()) > 1
    detail = ", ".join(f"{n}: mean {float(v.mean()):+.2f} logits (from {float(v.min()):+.2f} to {float(v.max()):+.2f})"
                       for n, v in value.items())
    return _verdict(name, answers, truth, f"the ruler segment's Shapley value, {detail}",
                    "The shortcut model's ruler segment is worth about two logits of melanoma in every image; "
                    "the debiased model's is worth nothing either way")


# --------------------------------------------------------------------------------------------
# Notebooks 00-07: the harder, optional tasks
# --------------------------------------------------------------------------------------------

def _slip(name: str, yours: torch.Tensor, ours: torch.Tensor, slips: dict, atol: float, rtol: float) -> CheckResult:
    """``compare``, but a result that matches a known slip gets that slip's hint."""
    if isinstance(yours, torch.Tensor) and yours.shape == ours.shape:
        y = yours.detach().double()
        if not _close(y, ours.double(), atol, rtol):
            for hint, wrong in slips.items():
                if wrong.shape == y.shape and _close(y, wrong.double(), atol, rtol):
                    return CheckResult(False, name, hint, float((y - ours.double()).abs().max()))
    return compare(yours, ours, name=name, atol=atol, rtol=rtol)


def check_grad_cam_pp_weights(your_fn, layer: str = "layer3") -> CheckResult:
    """Notebook 04, exercise 3: ``your_fn(activations, gradients) -> [B, K]``, Grad-CAM++'s channel
    weights w_k = sum_ij a_k(i, j) ReLU(g_k(i, j)) with a = g^2 / (2 g^2 + sum_ab A_k(a, b) g^3)
    (0 where the denominator is 0), checked at ``layer3``, where the gradient varies over locations.
    Our weights are the ones ``helpers.cam.grad_cam_pp`` uses (its map is rebuilt from them)."""
    import torch.nn.functional as F

    from .cam import grad_cam_pp, layer_activation_and_gradient

    model, x, t = _dermnet_batch(3, seed=4)
    act, grad = layer_activation_and_gradient(model, x, t, layer)
    yours, verdict = run_learner("grad_cam_pp_weights", your_fn, act.clone(), grad.clone())
    if verdict is not None:
        return verdict
    a, g = act.double(), grad.double()

    def weights(alpha, relu=True):
        return (alpha * (F.relu(g) if relu else g)).sum((2, 3))

    def alpha_of(denom):
        return torch.where(denom != 0, g ** 2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)

    ours = weights(alpha_of(2 * g ** 2 + a.sum((2, 3), keepdim=True) * g ** 3))
    rebuilt = F.relu((ours[:, :, None, None] * a).sum(1, keepdim=True)).float()
    assert torch.allclose(rebuilt, grad_cam_pp(model, x, t, layer, upsample=False), atol=1e-5, rtol=1e-4)
    slips = {
        "you left out the ReLU on the gradient: Grad-CAM++ sums a * ReLU(g), only positive gradients count":
            weights(alpha_of(2 * g ** 2 + a.sum((2, 3), keepdim=True) * g ** 3), relu=False),
        "your a has no sum_ab A g^3 term in the denominator, so a = 1/2 everywhere: the term is what lets "
        "a location's weight depend on its gradient": weights(alpha_of(2 * g ** 2)),
        "you used A(i, j) where the denominator has the sum of A over all locations of the channel":
            weights(alpha_of(2 * g ** 2 + a * g ** 3)),
        "these are Grad-CAM's weights, the mean gradient: Grad-CAM++ weights each location by a": g.mean((2, 3)),
        "you averaged a * ReLU(g) over the locations: Grad-CAM++ sums them":
            weights(alpha_of(2 * g ** 2 + a.sum((2, 3), keepdim=True) * g ** 3)) / (g.shape[2] * g.shape[3]),
    }
    if isinstance(yours, torch.Tensor) and yours.shape == act.shape[:2] + (1, 1):
        yours = yours[:, :, 0, 0]
    return _slip("grad_cam_pp_weights", yours, ours.float(), slips, atol=1e-6, rtol=1e-4)


def check_coalition_sizes(your_fn) -> CheckResult:
    """Notebook 07, exercise 3: ``your_fn(k) -> [k]``, the probability KernelSHAP's sampler gives a
    coalition size s = 0 .. k-1: proportional to (k - 1) / (s (k - s)), 0 for s = 0 (the empty and
    the full coalition are added separately). Compared with ``shapley_kernel_sizes`` for several k."""
    import math

    from .perturbation import shapley_kernel_sizes

    name = "coalition_sizes"
    for k in (3, 6, 14):
        yours, verdict = run_learner(name, your_fn, k)
        if verdict is not None:
            return verdict
        s = torch.arange(1, k, dtype=torch.float64)
        raw = torch.cat([torch.zeros(1, dtype=torch.float64), (k - 1) / (s * (k - s))])
        per_coalition = torch.cat([torch.zeros(1, dtype=torch.float64),
                                   (k - 1) / (torch.tensor([math.comb(k, int(i)) for i in s]) * s * (k - s))])
        slips = {
            "your probabilities do not sum to 1: divide by their sum": raw,
            "you used the Shapley kernel's weight of one coalition, (k - 1) / (C(k, s) s (k - s)): the sampler "
            "draws a size first, and all C(k, s) coalitions of that size share it, so drop the C(k, s)":
                per_coalition / per_coalition.sum(),
            "every size is equally likely in yours: the kernel favours small and large coalitions, "
            "(k - 1) / (s (k - s))": torch.cat([torch.zeros(1, dtype=torch.float64), torch.full((k - 1,), 1 / (k - 1),
                                                                                                dtype=torch.float64)]),
        }
        if isinstance(yours, torch.Tensor) and yours.shape == (k,) and not torch.isfinite(yours.double()).all():
            return CheckResult(False, name, f"NaN or infinite values for k = {k}: s = 0 divides by zero; its "
                                            "probability is 0 (the empty coalition is added separately)")
        result = _slip(name, yours, shapley_kernel_sizes(k).double(), slips, atol=1e-6, rtol=1e-5)
        if not result.passed:
            result.message = f"k = {k}: {result.message}"
            return result
    return CheckResult(True, name, "matches shapley_kernel_sizes for k = 3, 6, 14 (to within atol=1e-6)")


def check_completeness_gap(your_fn) -> CheckResult:
    """Notebook 03, exercise 3: ``your_fn(model, x, target, steps) -> [B]``, IG's quadrature error
    |sum_i IG_i(x) - (S(x) - S(b))| per image, from the black baseline with the trapezoid rule."""
    from .gradients import integrated_gradients

    name = "completeness_gap"
    model, x, t = _dermnet_batch(3, seed=2)
    with torch.no_grad():
        sx, sb = model(x).gather(1, t[:, None])[:, 0], model(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    for steps in (4, 32):
        yours, verdict = run_learner(name, your_fn, model, x.clone(), t, steps)
        if verdict is not None:
            return verdict
        total = integrated_gradients(model, x, t, steps=steps).sum((1, 2, 3))
        ours = (total - (sx - sb)).abs()
        slips = {
            "you left out the baseline's score: completeness says sum IG = S(x) - S(b), and S(black) is far "
            "from 0 here": (total - sx).abs(),
            "yours keeps the sign: the gap is the absolute difference": total - (sx - sb),
            "you divided by |S(x) - S(b)|: return the absolute gap, in logits": ours / (sx - sb).abs(),
        }
        result = _slip(name, yours, ours, slips, atol=1e-4, rtol=1e-3)
        if not result.passed:
            result.message = f"steps = {steps}: {result.message}"
            return result
    return CheckResult(True, name, "matches ours at 4 and 32 steps (to within atol=1e-4, rtol=1e-3)")


def check_effective_samples(your_fn) -> CheckResult:
    """Notebook 06, exercise 3: ``your_fn(weights) -> float``, the effective sample size of LIME's
    weighted regression, (sum pi)^2 / sum pi^2, for weights [n]; checked on the lime kernel's
    weights at several kernel widths."""
    import math

    name = "effective_samples"
    z = torch.randint(0, 2, (500, 16), generator=torch.Generator().manual_seed(0))
    z[0] = 1
    on = z.double().sum(1)
    d = 1 - on / (on.sqrt().clamp_min(1e-300) * 4.0)
    for width in (0.1, 0.25, 1.0):
        pi = torch.exp(-d ** 2 / (2 * width ** 2))
        yours, verdict = run_learner(name, your_fn, pi.clone())
        if verdict is not None:
            return verdict
        try:
            yours = float(yours)
        except (TypeError, ValueError):
            return CheckResult(False, name, f"return a number, got {type(yours).__name__}")
        ours = float(pi.sum() ** 2 / (pi ** 2).sum())
        slips = {"you returned sum pi^2 / (sum pi)^2: that is 1 / n_eff": 1 / ours,
                 "you returned the mean weight: n_eff is (sum pi)^2 / sum pi^2": float(pi.mean()),
                 "you returned sum pi: that counts weight, not samples; n_eff is (sum pi)^2 / sum pi^2":
                     float(pi.sum()),
                 "you squared the weights before summing on top: (sum pi)^2, not sum pi^2, goes above the line":
                     float((pi ** 2).sum() ** 2 / (pi ** 4).sum())}
        if not math.isclose(yours, ours, rel_tol=1e-6):
            for hint, wrong in slips.items():
                if math.isclose(yours, wrong, rel_tol=1e-6):
                    return CheckResult(False, name, f"kernel width {width}: {hint}")
            return CheckResult(False, name, f"kernel width {width}: yours is {yours:.4g}, ours {ours:.4g}")
    return CheckResult(True, name, "matches (sum pi)^2 / sum pi^2 at kernel widths 0.1, 0.25 and 1")


def check_gradient_x_input(your_fn) -> CheckResult:
    """Notebook 01, exercise 3: ``your_fn(model, x, target)``, gradient x input x * dS/dx, signed,
    shaped like x; compared with ``helpers.gradients.gradient_x_input`` (and the method contract)."""
    from .gradients import gradient_x_input, input_gradient

    model, x, t = _dermnet_batch(3, seed=6)
    result = check_method(your_fn, gradient_x_input, model, x, t, name="gradient_x_input", atol=1e-6, rtol=1e-4)
    if result.passed or not result.done:
        return result
    yours, verdict = run_learner("gradient_x_input", your_fn, model, x.clone(), t)
    if verdict is not None or not isinstance(yours, torch.Tensor) or yours.shape != x.shape:
        return result
    g = input_gradient(model, x, t)
    slips = {"you took an absolute value (of the gradient or of the product): gradient x input keeps the "
             "gradient's sign (take .abs() only to display it)": x * g.abs(),
             "you returned the gradient alone: multiply it by the input": g}
    return _slip("gradient_x_input", yours, gradient_x_input(model, x, t), slips, atol=1e-6, rtol=1e-4)


def check_vargrad(your_fn, n_samples: int = 8, noise_level: float = 0.05) -> CheckResult:
    """Notebook 02, exercise 3: ``your_fn(model, x, target, noise)``, VarGrad: the variance over the
    noisy copies of the gradient, (1/n) sum_k g_k^2 - ((1/n) sum_k g_k)^2, with ``noise``
    [n, B, C, H, W] as in exercise 1; compared with ``smoothgrad(..., variant="var")`` on the same draws."""
    from .gradients import smoothgrad

    model, x, t = _dermnet_batch(2, seed=1)
    seed = 12
    raw = torch.randn((x.shape[0] * n_samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed))
    sigma = noise_level * (x.amax((1, 2, 3)) - x.amin((1, 2, 3)))
    noise = (raw.view(x.shape[0], n_samples, *x.shape[1:]) * sigma.view(-1, 1, 1, 1, 1)).transpose(0, 1)
    yours, verdict = run_learner("vargrad", your_fn, model, x.clone(), t, noise.clone())
    if verdict is not None:
        return verdict
    ours = smoothgrad(model, x, t, n_samples=n_samples, noise_level=noise_level, variant="var", batch_size=10**6,
                      generator=torch.Generator().manual_seed(seed))
    grads = torch.stack([_gradient_of(model, x + noise[k], t, lambda o: o) for k in range(n_samples)])
    slips = {"you returned the mean of the squared gradients (SmoothGrad^2): subtract the squared mean":
             (grads ** 2).mean(0),
             "you returned the standard deviation: VarGrad is the variance, no square root": grads.var(0, False).sqrt(),
             "you divided by n - 1 (torch.var's default): VarGrad is the plain mean over the n samples, "
             "unbiased=False": grads.var(0),
             "you took the variance of |gradient|: VarGrad uses the signed gradients": grads.abs().var(0, False)}
    return _slip("vargrad", yours, ours, slips, atol=1e-6, rtol=1e-3)


def check_occlusion_masks(your_fn) -> CheckResult:
    """Notebook 05, exercise 3: ``your_fn(size, window, stride) -> [P, size, size]`` bool, the window
    positions of occlusion on a square image, row by row, stride apart, the last window in each
    direction cropped at the far edge; compared with ``helpers.perturbation.occlusion_masks``."""
    from .perturbation import occlusion_masks

    name = "occlusion_masks"
    for size, window, stride in ((64, 16, 8), (64, 12, 8), (10, 4, 3)):
        case = f"size {size}, window {window}, stride {stride}"
        yours, verdict = run_learner(name, your_fn, size, window, stride)
        if verdict is not None:
            return verdict
        ours = occlusion_masks((size, size), (window, window), (stride, stride))
        if not isinstance(yours, torch.Tensor):
            return not_a_tensor(name, yours, prefix=f"{case}: ")
        yours = yours.bool()
        if yours.dim() != 3 or yours.shape[1:] != ours.shape[1:]:
            return CheckResult(False, name, f"{case}: shape {tuple(yours.shape)}, expected [P, {size}, {size}]")
        if not yours.any(0).all():
            return CheckResult(False, name, f"{case}: some pixels are never covered (the far edge?): add one more "
                                            "window at the end, cropped at the image's edge")
        if yours.shape[0] != ours.shape[0]:
            return CheckResult(False, name, f"{case}: {yours.shape[0]} windows, expected {ours.shape[0]} "
                                            f"(ceil((size - window) / stride) + 1 per direction)")
        if torch.equal(yours, ours):
            continue
        if torch.equal(yours, ours.transpose(1, 2)):
            return CheckResult(False, name, f"{case}: your windows go column by column: number them row by row")
        if torch.equal(yours.sum((1, 2)).sort().values, ours.sum((1, 2)).sort().values):
            return CheckResult(False, name, f"{case}: the right windows, in another order: row by row, left to right")
        return CheckResult(False, name, f"{case}: different windows (the first differs at position "
                                        f"{int((yours != ours).flatten(1).any(1).nonzero()[0, 0])})")
    return CheckResult(True, name, "matches occlusion_masks for (64, 16, 8), (64, 12, 8) and (10, 4, 3)")


def check_pointing_game(your_fn, tol: float = 0.05) -> CheckResult:
    """Notebook 00, exercise 3: ``your_fn(attr, mask, tol) -> [B]``, the pointing game on magnitude
    maps: 1 when the largest |attr| (summed over the channels) inside the mask beats the largest
    outside, 0 when it loses, 0.5 when the two are within ``tol`` of the larger; compared with
    ``helpers.metrics.pointing_game`` on input gradients of the shortcut model and on made-up ties."""
    from .data import make_dataset
    from .gradients import input_gradient
    from .metrics import pointing_game
    from .models import load_dermnet

    ds = make_dataset(12, clinic="A", seed=5, ruler=True)
    grad = input_gradient(load_dermnet("shortcut"), ds.images, ds.labels)
    mask = ds.masks["ruler"]
    # two made-up maps on image 0's mask: peaks tol/2 apart (a tie, 0.5), and 2 tol apart (the outside wins)
    inside_px, outside_px = mask[0].flatten().nonzero()[0, 0], (~mask[0]).flatten().nonzero()[0, 0]
    made_up = torch.zeros(2, 3, mask[0].numel())
    made_up[:, 1, inside_px] = torch.tensor([1.0, 1.0 - 2 * tol])
    made_up[:, 1, outside_px] = torch.tensor([1.0 - tol / 2, 1.0])
    attr = torch.cat([grad, made_up.view(2, 3, *mask.shape[1:])])
    mask = torch.cat([mask, mask[:1].expand(2, -1, -1)])
    yours, verdict = run_learner("pointing_game", your_fn, attr.clone(), mask.clone(), tol)
    if verdict is not None:
        return verdict
    ours = pointing_game(attr, mask, tol=tol)
    per_pixel = attr.abs().sum(1)
    inside = torch.where(mask, per_pixel, -1.0).flatten(1).amax(1)
    outside = torch.where(~mask, per_pixel, -1.0).flatten(1).amax(1)
    signed = attr.sum(1)
    slips = {"you compared the signed values: the pointing game looks at the magnitude, |attr| summed over the "
             "channels": torch.where(torch.where(mask, signed, -9e9).flatten(1).amax(1)
                                     > torch.where(~mask, signed, -9e9).flatten(1).amax(1), 1.0, 0.0),
             "you left out the ties: within tol of the maximum the two peaks are a tie, 0.5":
                 torch.where(inside > outside, 1.0, 0.0)}
    return _slip("pointing_game", yours, ours, slips, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------
# Notebook 15: the debugging playbook
# --------------------------------------------------------------------------------------------

def _flip_pair(n: int = 400, seed: int = 915_001, artifact: str = "ink"):
    """Fresh clinic-B lesions drawn without and with ``artifact`` (seeds no notebook prints)."""
    from .train import intervention_pair
    return intervention_pair(n, seed=seed, clinic="B", artifact=artifact)


def check_flip_rate(your_fn) -> CheckResult:
    """Notebook 15, exercise 1: ``your_fn(model, off_images, on_images, labels, target)`` returns the
    share of the images of other classes, classified correctly without the artifact, that the
    model calls ``target`` with it (``helpers.train.artifact_intervention``'s "add"). Checked on
    fresh lesions, once with their true labels and once with a fifth of the other classes' labels
    changed, so that "classified correctly without the artifact" matters."""
    from .data import MEL, NV
    from .models import load_dermnet
    from .train import predict

    name = "flip_rate"
    model = load_dermnet("clinic_c")
    off, on = _flip_pair()
    p_off, p_on = predict(model, off.images), predict(model, on.images)
    relabelled = off.labels.clone()
    change = (relabelled != MEL) & (torch.arange(len(relabelled)) % 5 == 0)
    relabelled[change] = torch.where(relabelled[change] == NV, 0, NV)  # another class, never mel
    results = []
    for labels in (off.labels, relabelled):
        yours, verdict = run_learner(name, your_fn, model, off.images.clone(), on.images.clone(), labels.clone(), MEL)
        if verdict is not None:
            return verdict
        try:
            yours = float(yours)
        except (TypeError, ValueError):
            return CheckResult(False, name, f"expected a number (a share in [0, 1]), got {type(yours).__name__}")
        base = (labels != MEL) & (p_off == labels)
        ours = (p_on[base] == MEL).float().mean().item()
        others = labels != MEL
        slips = {
            "you counted every image of another class: count only those the model gets right without "
            "the artifact": (p_on[others] == MEL).float().mean().item(),
            "you counted any change of prediction: count only the changes to the target class":
                (p_on[base] != p_off[base]).float().mean().item(),
            "you included the target class itself: its images cannot flip to it":
                (p_on[p_off == labels] == MEL).float().mean().item(),
        }
        results.append((yours, ours, slips))
    diff = max(abs(y - o) for y, o, _ in results)
    if diff < 1e-9:
        return CheckResult(True, name, f"right: adding ink turns {results[0][1]:.2f} of the correct non-melanomas "
                                       "into melanoma", diff)
    for yours, ours, slips in results:
        for hint, value in slips.items():
            if abs(yours - value) < 1e-9 and abs(value - ours) > 1e-9:
                return CheckResult(False, name, hint, diff)
    yours, ours, _ = max(results, key=lambda r: abs(r[0] - r[1]))
    return CheckResult(False, name, f"got {yours:.4f}, expected {ours:.4f}", diff)


def check_shortcut_question(artifact, stands_for) -> CheckResult:
    """Notebook 15, exercise 2, answered from the data: which artifact does clinic C's model use as a
    shortcut, and for which class? Measured on fresh clinic-B lesions with the ruler and with the ink
    painted on: the artifact that flips the most correct predictions, and the class they flip to."""
    from .data import ARTIFACTS, CLASSES
    from .models import load_dermnet
    from .train import predict

    name = "shortcut question"
    if artifact is None or stands_for is None:
        return not_done(name, "set artifact to one of " + ", ".join(map(repr, ARTIFACTS))
                        + " and stands_for to a class name, from your own measurement")
    if artifact not in ARTIFACTS:
        return CheckResult(False, name, f"artifact must be one of {ARTIFACTS}, got {artifact!r}")
    if stands_for not in CLASSES:
        return CheckResult(False, name, f"stands_for must be one of {CLASSES}, got {stands_for!r}")
    model = load_dermnet("clinic_c")
    facts, rates, goes_to = [], {}, {}
    for art in ("ruler", "ink"):
        off, on = _flip_pair(artifact=art)
        p_off, p_on = predict(model, off.images), predict(model, on.images)
        changed = (p_off == off.labels) & (p_on != p_off)
        rates[art] = changed.float().mean().item()
        goes_to[art] = CLASSES[int(torch.bincount(p_on[changed], minlength=len(CLASSES)).argmax())]
        facts.append(f"painting the {art} on changes {rates[art]:.2f} of the correct predictions"
                     + (f", mostly to {goes_to[art]}" if changed.any() else ""))
    truth = max(rates, key=rates.get)
    detail = "; ".join(facts)
    if artifact == truth and stands_for == goes_to[truth]:
        return CheckResult(True, name, f"right ({detail})")
    return CheckResult(False, name, f"not quite: {detail}")
