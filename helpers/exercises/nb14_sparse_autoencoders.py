"""Checkers for notebook 14 (notebooks/14_sparse_autoencoders.ipynb)."""

from __future__ import annotations

import torch

from .core import CheckResult, compare, run_learner


def _topk_inputs():
    from ..sae import load_sae

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
    from ..data import make_dataset
    from ..models import load_dermnet
    from ..sae import SEED_BASE, cell_share, latent_auroc, latent_codes, layer_vectors, load_sae, normalize

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
    from ..report import fmt

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
