"""Checkers for notebook 11 (notebooks/11_vit_attention.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, _bool_answers, compare


def check_rollout(your_fn) -> CheckResult:
    """Notebook 11: ``your_fn(attentions) -> [B, T, T]``, attention rollout with the residual as
    0.5 I + 0.5 A, heads fused by their mean, rows normalised, blocks multiplied in order
    (the last block's matrix on the left), from a list of ``[B, heads, T, T]`` tensors."""
    from ..attention import rollout

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
    from ..attention import attention_maps, token_map
    from ..data import MEL, make_dataset
    from ..metrics import mask_mass, mask_share
    from ..models import load_vit
    from ..report import fmt
    from ..train import TEST_SEEDS

    early = _bool_answers("debiased ViT", {"attends_to_ruler": attends_to_ruler, "uses_ruler": uses_ruler})
    if early is not None:
        return early
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
    return CheckResult(False, "debiased ViT", f"not quite ({', '.join(wrong)}): measure both (the last block's CLS "
                                              "attention mass on the ruler against the ruler's share; the mel logit "
                                              "with and without the ruler)")
