"""Checkers for notebook 04 (notebooks/04_cam_gradcam.ipynb)."""

from __future__ import annotations

import torch

from .core import (
    CheckResult,
    _bool_answers,
    _dermnet_batch,
    _slip,
    _verdict,
    _with_artifact,
    compare,
    not_a_tensor,
    run_learner,
)


def check_grad_cam_weights(your_fn, layer: str = "layer4") -> CheckResult:
    """Notebook 04: ``your_fn(activations, gradients) -> [B, K]``, Grad-CAM's channel weights."""
    import torch.nn.functional as F

    from ..cam import grad_cam, layer_activation_and_gradient

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


def check_gradcam_artifacts_question(shortcut_ruler_twice_share, ink_twice_share, corners_twice_share) -> CheckResult:
    """Notebook 04, exercise 2, answered from the data: explaining melanoma on clinic-B images, does
    the shortcut model's Grad-CAM put more than twice the ruler's area share on the ruler, and does
    either model's Grad-CAM put more than twice the area share on the ink marking, or on the dark
    corners? (the first 16 images with each artifact of ``make_dataset(96, clinic="B", seed=777_003)``;
    all-zero maps are left out)"""
    from ..cam import grad_cam
    from ..data import MEL
    from ..metrics import mask_mass, mask_share
    from ..models import load_dermnet

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


def check_grad_cam_pp_weights(your_fn, layer: str = "layer3") -> CheckResult:
    """Notebook 04, exercise 3: ``your_fn(activations, gradients) -> [B, K]``, Grad-CAM++'s channel
    weights w_k = sum_ij a_k(i, j) ReLU(g_k(i, j)) with a = g^2 / (2 g^2 + sum_ab A_k(a, b) g^3)
    (0 where the denominator is 0), checked at ``layer3``, where the gradient varies over locations.
    Our weights are the ones ``helpers.cam.grad_cam_pp`` uses (its map is rebuilt from them)."""
    import torch.nn.functional as F

    from ..cam import grad_cam_pp, layer_activation_and_gradient

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
