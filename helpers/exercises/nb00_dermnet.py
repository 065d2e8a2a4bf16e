"""Checkers for notebook 00 (notebooks/00_dermnet.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, _bool_answers, _slip, _verdict, compare, run_learner


def check_mask_mass(your_fn, n: int = 16, seed: int = 0) -> CheckResult:
    """Notebook 00: check ``your_fn(attr, mask) -> [B]`` against ``helpers.metrics.mask_mass``.

    The test maps are signed input gradients ``[B, 3, H, W]`` of the shortcut model on clinic-A
    images that all have a ruler, scored on their ruler masks.
    """
    from ..data import make_dataset
    from ..metrics import mask_mass
    from ..models import load_dermnet

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


def check_sliced_accuracy_question(ruler_costs_accuracy, ink_costs_accuracy, hair_costs_accuracy) -> CheckResult:
    """Notebook 00, exercise 2, answered from the data: on clinic B, is the shortcut model's accuracy
    on the images that show an artifact 15 points or more below its accuracy on those that do not?
    For the ruler, the ink marking and hair; measured on 800 fresh clinic-B images (seed 160_001)."""
    from ..concepts import artifacts
    from ..data import make_dataset
    from ..models import load_dermnet
    from ..train import logits

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


def check_pointing_game(your_fn, tol: float = 0.05) -> CheckResult:
    """Notebook 00, exercise 3: ``your_fn(attr, mask, tol) -> [B]``, the pointing game on magnitude
    maps: 1 when the largest |attr| (summed over the channels) inside the mask beats the largest
    outside, 0 when it loses, 0.5 when the two are within ``tol`` of the larger; compared with
    ``helpers.metrics.pointing_game`` on input gradients of the shortcut model and on made-up ties."""
    from ..data import make_dataset
    from ..gradients import input_gradient
    from ..metrics import pointing_game
    from ..models import load_dermnet

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
