"""The machinery every checker shares: ``CheckResult``, ``compare`` (which diagnoses the common
mistakes), ``check_method`` (which also checks the method contract) and ``run_learner``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hooks import count_hooks


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


def _dermnet_batch(n: int = 4, seed: int = 0):
    from ..data import make_dataset
    from ..models import load_dermnet

    ds = make_dataset(n, clinic="A", seed=seed, ruler=True)
    return load_dermnet("shortcut"), ds.images, ds.labels


def _gradient_of(model, x, t, transform):
    xg = x.detach().clone().requires_grad_(True)
    out = transform(model(xg))
    score = out.sum() if t is None else out[torch.arange(len(x)), t].sum()
    (g,) = torch.autograd.grad(score, xg)
    return g


def _corner_images(n: int = 32):
    """Clinic-B images with dark dermoscope corners (the first ``n`` of a fixed draw), their masks."""
    from ..data import make_dataset

    ds = make_dataset(96, clinic="B", seed=777_001)
    keep = ds.masks["corners"].flatten(1).any(1)
    return ds.images[keep][:n], ds.masks["corners"][keep][:n]


def _call(your_fn, name: str, *args):
    """The learner's result as a flat float64 tensor, or a failing CheckResult saying why not."""
    try:
        yours = your_fn(*args)
    except Exception as err:  # the learner's code: report, do not crash the notebook
        return CheckResult(False, name, f"your function raised {type(err).__name__}: {err}")
    if not isinstance(yours, torch.Tensor):
        return not_a_tensor(name, yours)
    return yours.detach().double().flatten()


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
    from ..data import make_dataset

    ds = make_dataset(count, clinic=clinic, seed=seed)
    keep = ds.masks[artifact].flatten(1).any(1)
    return ds.images[keep][:n], ds.masks[artifact][keep][:n]


def _slip(name: str, yours: torch.Tensor, ours: torch.Tensor, slips: dict, atol: float, rtol: float) -> CheckResult:
    """``compare``, but a result that matches a known slip gets that slip's hint."""
    if isinstance(yours, torch.Tensor) and yours.shape == ours.shape:
        y = yours.detach().double()
        if not _close(y, ours.double(), atol, rtol):
            for hint, wrong in slips.items():
                if wrong.shape == y.shape and _close(y, wrong.double(), atol, rtol):
                    return CheckResult(False, name, hint, float((y - ours.double()).abs().max()))
    return compare(yours, ours, name=name, atol=atol, rtol=rtol)
