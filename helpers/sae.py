"""Sparse autoencoders (SAEs): a dictionary of features learned from a layer's activations, no labels.

An SAE rewrites an activation vector ``x`` (one per position of a feature map, ``[d_in]``) as a
sparse, non-negative combination of ``d_latent > d_in`` learned directions, plus a bias:

    f(x)  = sigma(W_enc (x - b_dec) + b_enc)          the latents, [d_latent], mostly zero
    x_hat = W_dec f(x) + b_dec                        the reconstruction, [d_in]

Each decoder row ``W_dec[i]`` (a column of the dictionary) has unit norm, so the size of latent i is
``f_i`` alone. Two ways to make ``f`` sparse:

- **ReLU SAE** (Bricken et al. 2023, "Towards Monosemanticity"): ``sigma = ReLU`` and an L1 penalty,
  ``L = ||x - x_hat||^2 + lambda ||f||_1``; latents that never fire are *resampled* towards inputs
  the SAE reconstructs badly.
- **TopK SAE** (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", arXiv:2406.04093):
  ``sigma = TopK(ReLU(.))`` keeps the k largest latents and zeroes the rest, so L0 = k by
  construction and no L1 shrinks the values; ``L = ||x - x_hat||^2 + alpha L_aux``, where the AuxK
  loss asks the ``k_aux`` largest *dead* latents to reconstruct the residual ``x - x_hat``.
  The encoder starts as the decoder's transpose.

The activations are rescaled first so that their mean norm is ``sqrt(d_in)`` (``norm_scale``,
``normalize``; the scale is kept in each SAE's ``act_scale`` buffer), the convention of Gao et
al. and SAELens: a lambda or a learning rate then means the same at any layer.

    layer_vectors       a layer's activations as one vector per position, [N*h*w, C]
    norm_scale, normalize    the fixed-mean-norm normalization
    ReLUSAE, TopKSAE    the two architectures (``encode``, ``decode``, ``forward``, ``loss``);
                        BatchTopKSAE, TopK over the whole batch (a threshold at inference)
    train_sae           seeded training with a progress bar (dead-latent resampling / AuxK)
    evaluate            L0, normalised MSE and variance explained, dead latents
    splice, ablate_latents   run the model with the layer replaced by the SAE (context managers)
    downstream          accuracy and KL of the model's output with the SAE spliced in
    latent_auroc        how well each latent detects a mask or a flag (AUROC)
    load_sae            the shipped SAEs (``python -m helpers.sae`` rebuilds them)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import models as _models  # DATA_DIR and MANIFEST read at call time (tests point them elsewhere)
from .batching import run_batches, workload
from .contract import check_batch_size, check_input, check_model, check_scores
from .data import IMAGE_SIZE
from .hooks import capture, layer_name, resolve_layer
from .models import load_dermnet, sha256

LAYER = "layer4"
# DermSynth seeds for SAE work: disjoint from training (10,000+), concepts (600,000+) and test (900,000+)
SEED_BASE = {"A": 700_000, "B": 710_000, "eval": 720_000, "C": 730_000}


# ---- activations ----

def _check_int(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


@torch.no_grad()
def layer_vectors(model: nn.Module, images: torch.Tensor, layer=LAYER, batch_size="auto") -> torch.Tensor:
    """``layer``'s output as one vector per spatial position: ``[N * h * w, C]``, in the order
    (image, row, column), so ``.view(N, h, w, C)`` gives the maps back. A token layer ``[N, T, C]``
    (a ViT block) gives one vector per token, ``[N * T, C]`` (``.view(N, T, C)``), prefix tokens
    included. In the layer's dtype, on its device, no gradient. An output holding NaN or inf (a model
    with a NaN weight or bias) is refused, naming the images."""
    check_model(model)
    check_input(images, "images", model=model)
    check_batch_size(batch_size)
    out = []

    def step(lo, hi):
        with capture(model, layer, gradient=False) as rec:
            model(images[lo:hi].contiguous(memory_format=torch.channels_last))
        out.append(_to_vectors(rec.activation))

    run_batches(step, len(images), batch_size, workload("forward", model, images), images.device)
    vectors = torch.cat(out)
    check_scores(vectors.view(len(images), -1), f"layer {layer_name(model, layer)}", "activations")  # per image
    return vectors


def _to_vectors(fmap: torch.Tensor) -> torch.Tensor:
    """A feature map [B, C, h, w] as [B h w, C]; tokens [B, T, C] as [B T, C]."""
    if fmap.dim() == 3:
        return fmap.reshape(-1, fmap.shape[-1])
    if fmap.dim() != 4:
        raise ValueError(f"expected a feature map [B, C, h, w] or tokens [B, T, C], got shape {tuple(fmap.shape)}")
    return fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


def _from_vectors(vectors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``_to_vectors`` undone: vectors back in the shape of ``like``."""
    if like.dim() == 3:
        return vectors.view(like.shape)
    b, c, h, w = like.shape
    return vectors.view(b, h, w, c).permute(0, 3, 1, 2)


def norm_scale(acts: torch.Tensor) -> float:
    """The factor ``sqrt(d_in) / mean ||x||`` that brings the vectors' mean norm to ``sqrt(d_in)``."""
    _check_acts(acts, None, "acts")
    return float(math.sqrt(acts.shape[1]) / acts.norm(dim=1).mean())


def normalize(acts: torch.Tensor, scale: float) -> torch.Tensor:
    """The activations as the SAEs read them: ``acts * scale`` (``scale`` from ``norm_scale``,
    or an SAE's ``act_scale``)."""
    scale = float(scale)
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return acts * scale


def _check_acts(acts, d_in, name: str = "acts") -> torch.Tensor:
    if not isinstance(acts, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(acts).__name__}")
    if acts.dim() != 2 or (d_in is not None and acts.shape[1] != d_in):
        want = f"[N, {d_in}]" if d_in is not None else "[N, d]"
        raise ValueError(f"{name} must be {want}, got shape {tuple(acts.shape)}"
                         + (" (a feature map? use layer_vectors)" if acts.dim() == 4 else ""))
    if not acts.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {acts.dtype}")
    return acts


# ---- the two architectures ----

class _SAE(nn.Module):
    """What both SAEs share: parameters, decode, unit-norm decoder rows, the normalization buffer."""

    def __init__(self, d_in: int, d_latent: int, seed: int = 0):
        super().__init__()
        _check_int(d_in, "d_in")
        _check_int(d_latent, "d_latent")
        g = torch.Generator().manual_seed(int(seed))
        w = torch.randn(d_latent, d_in, generator=g)
        self.W_dec = nn.Parameter(w / w.norm(dim=1, keepdim=True))  # row i: latent i's direction
        self.W_enc = nn.Parameter(self.W_dec.detach().t().clone())  # [d_in, d_latent]
        self.b_enc = nn.Parameter(torch.zeros(d_latent))
        self.b_dec = nn.Parameter(torch.zeros(d_in))  # the pre-encoder bias, subtracted before encoding
        self.register_buffer("act_scale", torch.tensor(1.0))  # normalize(acts, act_scale) is what it reads
        self.d_in, self.d_latent = d_in, d_latent
        self.layer = None  # the model layer it reads, set by train_sae / load_sae

    def _check(self, acts, d: int, name: str) -> torch.Tensor:
        _check_acts(acts, d, name)
        if acts.dtype != self.W_dec.dtype:
            raise TypeError(f"{name} are {acts.dtype} but the SAE's parameters are {self.W_dec.dtype}: pass "
                            f"{name}.to({self.W_dec.dtype}) (or convert the SAE: sae.to({acts.dtype}))")
        return acts

    def pre_acts(self, acts: torch.Tensor) -> torch.Tensor:
        """``W_enc (x - b_dec) + b_enc``, before the non-linearity: ``[N, d_latent]``."""
        self._check(acts, self.d_in, "acts")
        return (acts - self.b_dec) @ self.W_enc + self.b_enc

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``x_hat = W_dec f + b_dec``: ``[N, d_latent] -> [N, d_in]``."""
        self._check(latents, self.d_latent, "latents")
        return latents @ self.W_dec + self.b_dec

    def forward(self, acts: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(acts))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each decoder row to unit norm (after every optimizer step)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _mse(self, acts, recon) -> torch.Tensor:
        return (acts - recon).pow(2).sum(-1).mean()


class ReLUSAE(_SAE):
    """ReLU SAE with an L1 penalty (Bricken et al. 2023): ``f = ReLU(W_enc (x - b_dec) + b_enc)``,
    ``L = mean_n ||x - x_hat||^2 + l1 * mean_n ||f||_1``."""

    def __init__(self, d_in: int, d_latent: int, *, l1: float = 1.0, seed: int = 0):
        super().__init__(d_in, d_latent, seed)
        if not isinstance(l1, int | float) or isinstance(l1, bool) or not l1 >= 0:
            raise ValueError(f"l1 (lambda) must be a number >= 0, got {l1!r}")
        self.l1 = float(l1)
        with torch.no_grad():
            self.W_enc.mul_(0.1)  # small latents at the start, as Bricken et al.

    def encode(self, acts: torch.Tensor) -> torch.Tensor:
        """The latents ``ReLU(W_enc (x - b_dec) + b_enc)``: ``[N, d_in] -> [N, d_latent]``."""
        return F.relu(self.pre_acts(acts))

    def loss(self, acts: torch.Tensor, dead: torch.Tensor | None = None) -> dict:
        """``{"mse", "l1", "loss", "latents"}`` on a batch (``dead`` is ignored: the ReLU SAE resamples)."""
        f = self.encode(acts)
        mse, l1 = self._mse(acts, self.decode(f)), f.abs().sum(-1).mean()
        return {"mse": mse, "l1": l1, "loss": mse + self.l1 * l1, "latents": f.detach()}


class TopKSAE(_SAE):
    """TopK SAE (Gao et al. 2024): ``f = TopK_k(ReLU(W_enc (x - b_dec) + b_enc))``, the k largest
    kept and the rest set to 0; ``L = mean_n ||x - x_hat||^2 + aux_alpha * L_aux``.

    ``L_aux = mean_n ||e - W_dec z_aux||^2 / mean_n ||e - mean(e)||^2``, where ``e = x - x_hat``
    and ``z_aux`` keeps the ``k_aux = min(d_in // 2, #dead)`` largest pre-activations among the
    dead latents: a gradient that pulls dead latents towards what the live ones miss.
    """

    def __init__(self, d_in: int, d_latent: int, k: int, *, aux_alpha: float = 1 / 32, seed: int = 0):
        super().__init__(d_in, d_latent, seed)
        _check_int(k, "k")
        if k > d_latent:
            raise ValueError(f"k ({k}) cannot be larger than the dictionary (d_latent = {d_latent})")
        if not isinstance(aux_alpha, int | float) or not aux_alpha >= 0:
            raise ValueError(f"aux_alpha must be a number >= 0, got {aux_alpha!r}")
        self.k, self.aux_alpha, self.k_aux = k, float(aux_alpha), max(1, d_in // 2)

    def encode(self, acts: torch.Tensor) -> torch.Tensor:
        """The latents: the k largest of ``ReLU(W_enc (x - b_dec) + b_enc)``, the others 0."""
        return self._topk(F.relu(self.pre_acts(acts)))

    def _topk(self, post_relu: torch.Tensor) -> torch.Tensor:
        top = post_relu.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(post_relu).scatter_(-1, top.indices, top.values)

    def aux_loss(self, residual: torch.Tensor, post_relu: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """``L_aux`` (see the class): the dead latents' top ``k_aux`` reconstruct ``residual``."""
        n_dead = int(dead.sum())
        if n_dead == 0:
            return residual.new_zeros(())
        z = post_relu.masked_fill(~dead, -math.inf).topk(min(self.k_aux, n_dead), dim=-1, sorted=False)
        err = (residual - self._sparse_decode(z.indices, z.values)).pow(2).sum(-1).mean()
        return (err / (residual - residual.mean(0)).pow(2).sum(-1).mean()).nan_to_num(0.0)

    def _sparse_decode(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``sum_j values_j W_dec[indices_j]`` per row, reading only the k rows used: the same sum as
        ``latents @ W_dec`` without the (d_latent - k) zeros, which makes training about twice as fast."""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")

    def loss(self, acts: torch.Tensor, dead: torch.Tensor | None = None) -> dict:
        """``{"mse", "aux", "loss", "latents"}`` on a batch; ``dead`` is a bool ``[d_latent]`` mask for AuxK.
        (The decoder reads only the k active rows here; ``decode`` gives the same up to round-off.)"""
        post_relu = F.relu(self.pre_acts(acts))
        top = post_relu.topk(self.k, dim=-1, sorted=False)
        recon = self._sparse_decode(top.indices, top.values) + self.b_dec
        f = torch.zeros_like(post_relu).scatter_(-1, top.indices, top.values.detach())
        mse = self._mse(acts, recon)
        aux = mse.new_zeros(()) if dead is None else self.aux_loss((acts - recon).detach(), post_relu, dead)
        return {"mse": mse, "aux": aux, "loss": mse + self.aux_alpha * aux, "latents": f.detach()}


class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE (Bussmann, Leask & Nanda 2024, arXiv:2412.06410): in training, the ``k * N``
    largest latents of the whole batch of N vectors are kept, so L0 is k on average (more for hard
    vectors, fewer for easy ones); in eval mode, every latent above a threshold ``theta`` is kept,
    ``theta`` being a running average (beta = 0.999) of the smallest activation kept in training.
    Before any training step (``threshold < 0``) eval mode uses the batch rule too."""

    threshold_beta = 0.999

    def __init__(self, d_in: int, d_latent: int, k: int, *, aux_alpha: float = 1 / 32, seed: int = 0):
        super().__init__(d_in, d_latent, k, aux_alpha=aux_alpha, seed=seed)
        self.register_buffer("threshold", torch.tensor(-1.0))

    def _topk(self, post_relu: torch.Tensor) -> torch.Tensor:
        if self.training or self.threshold < 0:
            flat = post_relu.flatten()
            top = flat.topk(self.k * post_relu.shape[0], sorted=False)
            return torch.zeros_like(flat).scatter_(-1, top.indices, top.values).view_as(post_relu)
        return post_relu * (post_relu > self.threshold)

    def loss(self, acts: torch.Tensor, dead: torch.Tensor | None = None) -> dict:
        """As ``TopKSAE.loss`` with the batch rule (dense decoder); in train mode it also updates
        the inference threshold."""
        post_relu = F.relu(self.pre_acts(acts))
        f = self._topk(post_relu)
        recon = self.decode(f)
        mse = self._mse(acts, recon)
        if self.training:
            with torch.no_grad():
                active = f[f > 0]
                low = active.min() if active.numel() else f.new_zeros(())
                beta = 0.0 if self.threshold < 0 else self.threshold_beta
                self.threshold.copy_(beta * self.threshold + (1 - beta) * low)
        aux = mse.new_zeros(()) if dead is None else self.aux_loss((acts - recon).detach(), post_relu, dead)
        return {"mse": mse, "aux": aux, "loss": mse + self.aux_alpha * aux, "latents": f.detach()}


# ---- training ----

def train_sae(sae: _SAE, acts: torch.Tensor, *, steps: int = 1000, batch_size: int = 1024, lr: float = 1e-3,
              seed: int = 0, dead_after: int = 200_000, resample_every: int = 250, layer: str | None = None,
              progress: bool = True) -> dict:
    """Train ``sae`` in place on normalized activation vectors ``acts`` [N, d_in] (Adam).

    Deterministic from ``seed`` (the batches). ``b_dec`` starts at the data's mean. After each step
    the decoder's rows are set back to unit norm, and the part of their gradient along themselves
    is removed first (it would only change their norm). A latent is dead once it has not fired for
    ``dead_after`` vectors: the TopK SAE feeds those to AuxK; the ReLU SAE resamples them every
    ``resample_every`` steps towards inputs it reconstructs badly (Bricken et al.). The learning
    rate falls linearly to 0 over the last 20% of the steps. The SAE takes the activations' dtype
    and device (``sae.to(acts.dtype)``: float64 activations train a float64 SAE); the batches are
    drawn on the CPU, so they are the same on every device. Returns the loss history.
    """
    if not isinstance(sae, _SAE):
        raise TypeError(f"sae must be a ReLUSAE or TopKSAE, got {type(sae).__name__}")
    _check_acts(acts, sae.d_in)
    _check_int(steps, "steps")
    check_batch_size(batch_size)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    g = torch.Generator().manual_seed(int(seed))
    sae.to(device=acts.device, dtype=acts.dtype)
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    decay_from = int(0.8 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_from else (steps - s) / max(1, steps - decay_from))
    since_fired = torch.zeros(sae.d_latent, dtype=torch.long, device=acts.device)
    history = {"loss": [], "mse": []}
    sae.train()
    for step in tqdm(range(steps), desc=type(sae).__name__, disable=not progress):
        batch = acts[torch.randint(len(acts), (batch_size,), generator=g).to(acts.device)]
        dead = since_fired >= dead_after
        losses = sae.loss(batch, dead)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        with torch.no_grad():
            unit = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
            sae.W_dec.grad -= (sae.W_dec.grad * unit).sum(1, keepdim=True) * unit
        opt.step()
        sched.step()
        sae.normalize_decoder()
        fired = (losses["latents"] > 0).any(0)  # this step's latents, before the update
        since_fired += batch_size
        since_fired[fired] = 0
        if isinstance(sae, ReLUSAE) and (step + 1) % resample_every == 0 and step + 1 < decay_from:
            _resample(sae, opt, batch, since_fired >= dead_after, g)
            since_fired[since_fired >= dead_after] = 0
        history["loss"].append(float(losses["loss"].detach()))
        history["mse"].append(float(losses["mse"].detach()))
    opt.zero_grad(set_to_none=True)  # no gradients left on the parameters
    sae.eval()
    if layer is not None:
        sae.layer = layer
    return history


@torch.no_grad()
def _resample(sae: ReLUSAE, opt, batch: torch.Tensor, dead: torch.Tensor, g: torch.Generator) -> int:
    """Bricken et al.'s resampling: each dead latent gets an input drawn with probability proportional
    to its squared reconstruction error as its decoder direction; its encoder row is that direction
    times 0.2 x the live rows' mean norm, its bias 0, and Adam's moments for it are reset."""
    idx = dead.nonzero().flatten()
    if len(idx) == 0:
        return 0
    err = (batch - sae(batch)).pow(2).sum(-1)
    pick = torch.multinomial((err / err.sum()).cpu(), len(idx), replacement=len(idx) > len(batch), generator=g)
    v = batch[pick] - sae.b_dec
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = sae.W_enc[:, ~dead].norm(dim=0).mean() if (~dead).any() else sae.W_enc.new_tensor(1.0)
    sae.W_dec[idx] = v
    sae.W_enc[:, idx] = v.t() * 0.2 * alive
    sae.b_enc[idx] = 0.0
    for p, cols in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][cols] = 0.0
    return len(idx)


# ---- the metrics the field reports ----

@torch.no_grad()
def evaluate(sae: _SAE, acts: torch.Tensor, batch_size: int = 8192) -> dict:
    """On held-out normalized vectors ``acts``: ``l0`` (mean active latents per vector), ``nmse``
    (``sum ||x - x_hat||^2 / sum ||x - mean x||^2``), ``fve = 1 - nmse`` (fraction of variance
    explained), ``dead`` (share of latents never active on ``acts``) and ``freq`` (each latent's
    firing frequency)."""
    _check_acts(acts, sae.d_in)
    err = active = 0.0
    fired = torch.zeros(sae.d_latent, dtype=torch.float64, device=acts.device)
    for i in range(0, len(acts), batch_size):
        x = acts[i:i + batch_size]
        f = sae.encode(x)
        err += float((x - sae.decode(f)).double().pow(2).sum())
        on = f > 0
        active += float(on.sum())
        fired += on.sum(0).double()
    var = float((acts.double() - acts.double().mean(0)).pow(2).sum())
    return {"l0": active / len(acts), "nmse": err / var, "fve": 1 - err / var,
            "dead": float((fired == 0).double().mean()), "freq": fired / len(acts)}


# ---- the SAE inside the model ----

@contextmanager
def _patched(model: nn.Module, sae: _SAE, layer, edit):
    layer = sae.layer if layer is None else layer
    if layer is None:
        raise ValueError("layer: this SAE does not know which layer it reads; pass layer=")
    if not isinstance(sae, _SAE):
        raise TypeError(f"sae must be a ReLUSAE or TopKSAE, got {type(sae).__name__}")
    module = resolve_layer(model, layer)

    def hook(_module, _inputs, output):
        channels = output.shape[-1] if output.dim() == 3 else output.shape[1] if output.dim() == 4 else None
        if channels != sae.d_in:
            raise ValueError(f"layer {layer_name(model, layer)} outputs {tuple(output.shape)}; the SAE reads "
                             f"{sae.d_in} channels")
        x = normalize(_to_vectors(output), float(sae.act_scale))
        return _from_vectors(edit(x) / sae.act_scale, output)

    handle = module.register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


def splice(model: nn.Module, sae: _SAE, layer=None):
    """Context manager: inside it, ``layer``'s output (default: the layer the SAE reads) is replaced
    by the SAE's reconstruction ``x_hat`` (no error term), to measure what the reconstruction
    error costs downstream. The hook is removed on exit, also when an exception is raised."""
    return _patched(model, sae, layer, lambda x: sae(x))


def ablate_latents(model: nn.Module, sae: _SAE, latents, layer=None):
    """Context manager: inside it, ``layer``'s output is replaced by the reconstruction with
    ``latents`` zeroed plus the reconstruction error,

        x' = decode(f with f_L = 0) + (x - decode(f)) = x - sum_{i in L} f_i W_dec[i],

    so the model's output changes only through the edit (no latents: the output is unchanged, up
    to round-off). Nothing is left on the model after the block, also when it raises."""
    idx = torch.as_tensor(latents, dtype=torch.long).flatten()
    if idx.numel() and (idx.min() < 0 or idx.max() >= sae.d_latent):
        raise ValueError(f"latents must be indices in [0, {sae.d_latent}), got {idx.tolist()}")

    def edit(x):
        f = sae.encode(x)
        error = x - sae.decode(f)
        f = f.clone()
        f[:, idx.to(f.device)] = 0.0
        return sae.decode(f) + error

    return _patched(model, sae, layer, edit)


@torch.no_grad()
def downstream(model: nn.Module, sae: _SAE, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256):
    """With the SAE's reconstruction spliced in at its layer: ``accuracy`` (and ``accuracy_model``,
    the model's own), and ``kl``, the mean ``KL(p_model || p_spliced)`` of the output distributions."""
    from .train import logits
    check_model(model)
    check_input(images, "images", model=model)
    before = check_scores(logits(model, images, batch_size))
    with splice(model, sae):
        after = check_scores(logits(model, images, batch_size), "the model with the SAE spliced in")
    kl = F.kl_div(after.log_softmax(1), before.log_softmax(1), log_target=True, reduction="batchmean")
    return {"accuracy_model": float((before.argmax(1) == labels).float().mean()),
            "accuracy": float((after.argmax(1) == labels).float().mean()), "kl": float(kl)}


@torch.no_grad()
def latent_codes(sae: _SAE, acts: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """The latents of many normalized vectors, in batches: ``[N, d_latent]``."""
    return torch.cat([sae.encode(acts[i:i + batch_size]) for i in range(0, len(acts), batch_size)])


def latent_auroc(codes: torch.Tensor, positive: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """The AUROC of each latent's activation as a detector of ``positive`` (bool ``[N]``), ``[d_latent]``:
    the probability that a random positive vector has the larger activation than a random negative
    one, ties counted one half (the Mann-Whitney U statistic over ``n_pos * n_neg``)."""
    positive = torch.as_tensor(positive, dtype=torch.bool, device=codes.device).flatten()
    if codes.dim() != 2 or codes.shape[0] != positive.numel():
        raise ValueError(f"codes [N, d_latent] and positive [N] must match, got {tuple(codes.shape)} "
                         f"and {positive.numel()}")
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("positive must contain both positive and negative examples")
    out = []
    for j in range(0, codes.shape[1], chunk):
        neg = codes[~positive, j:j + chunk].t().contiguous().sort(dim=1).values  # [c, n_neg], sorted
        pos = codes[positive, j:j + chunk].t().contiguous()
        # per positive value v: #negatives below v, plus one half per negative equal to v
        below = torch.searchsorted(neg, pos, right=False).double()
        below_or_equal = torch.searchsorted(neg, pos, right=True).double()
        out.append((below + below_or_equal).sum(1) / 2 / (n_pos * n_neg))
    return torch.cat(out).float()


def cell_share(mask: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """The share of each grid cell that a pixel mask ``[N, H, W]`` covers, as one value per position
    in ``layer_vectors``' order: ``[N * grid * grid]``."""
    m = mask.float()[:, None]
    return F.adaptive_avg_pool2d(m, grid).flatten()


class LatentProbe(nn.Module):
    """``model`` with an SAE reading ``layer``: its forward returns the model's logits, and its
    ``latents`` submodule (an identity) sees the SAE's latent maps ``[B, d_latent, h, w]`` (for a
    token layer, latent tokens ``[B, T, d_latent]``), so that
    any tool that hooks a layer (notebook 08's ``top_activating``) can treat latent i as a channel.
    The model is called, never changed."""

    def __init__(self, model: nn.Module, sae: _SAE, layer=None):
        super().__init__()
        self.model, self.sae, self.layer = model, sae, sae.layer if layer is None else layer
        self.latents = nn.Identity()
        self.training = model.training  # the model's mode, set without touching the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with capture(self.model, self.layer, gradient=False) as rec:
            out = self.model(x)
        act = rec.activation
        f = self.sae.encode(normalize(_to_vectors(act), float(self.sae.act_scale)))
        # latents as a map [B, d_latent, h, w], or as tokens [B, T, d_latent] for a token layer
        self.latents(f.view(*act.shape[:2], -1) if act.dim() == 3
                     else f.view(act.shape[0], *act.shape[2:], -1).permute(0, 3, 1, 2))
        return out


def direct_effect(model: nn.Module, sae: _SAE, target: int, fc: str = "fc", x: torch.Tensor | None = None,
                  layer=None) -> torch.Tensor:
    """Each latent's direct effect on the ``target`` logit, ``[d_latent]``, when the layer is followed
    by global average pooling and a linear layer ``fc`` (DermNet's layer4). The logit is
    ``w . mean_pos(a) + b`` and ``a = (sum_i f_i W_dec[i] + b_dec + error) / scale``, so latent i adds

        (w . W_dec[i] / scale) * mean over positions of f_i      (this function returns the bracket).

    That holds only if ``fc`` reads the mean of the layer's output over its positions and nothing
    else, which is checked on one forward pass of ``x`` (images the model takes; for a DermNet, a
    64 px probe when ``x`` is None). Any other head (a ReLU or a LayerNorm before it, a ViT's CLS
    token after further blocks) is refused: its bracket would be a number with no meaning.
    ``layer``: the SAE's layer, ``sae.layer`` by default."""
    check_model(model)
    head = resolve_layer(model, fc)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"fc={layer_name(model, fc)} must be an nn.Linear, got {type(head).__name__}")
    layer = sae.layer if layer is None else layer
    if layer is None:
        raise ValueError("the SAE does not record the layer it reads: pass layer=")
    if x is None:
        if not isinstance(model, _models.DermNet):
            raise ValueError("direct_effect checks that fc reads the layer through global average pooling on one "
                             "forward pass: pass x= (a few images the model takes)")
        param = next(model.parameters())
        x = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0)
                       ).to(device=param.device, dtype=param.dtype)
    check_input(x, "x", model=model)
    fed = {}
    handle = head.register_forward_pre_hook(lambda module, args: fed.__setitem__("in", args[0].detach()))
    try:
        with capture(model, layer, gradient=False) as rec, torch.no_grad():
            model(x)
    finally:
        handle.remove()
    act = rec.activation
    pooled = act.mean((2, 3)) if act.dim() == 4 else None
    if pooled is None or "in" not in fed or fed["in"].shape != pooled.shape or not torch.allclose(
            fed["in"], pooled, rtol=1e-4, atol=1e-5 * (1 + float(pooled.abs().max()))):
        raise ValueError(f"direct_effect needs {layer_name(model, layer)} to feed {layer_name(model, fc)} through "
                         "global average pooling alone, and this model's head does something else in between: a "
                         "latent's effect on the logit is not a fixed number here (measure it with ablate_latents)")
    return (sae.W_dec.detach() @ head.weight.detach()[target]) / float(sae.act_scale)


# ---- the reference: dictionary-learning 0.1.0 ----

def _import_dictionary_learning():
    """Import dictionary-learning's two modules we compare against. Its package ``__init__`` imports
    ``nnsight`` (for its activation buffer on language models), installed without its dependencies
    here (requirements-nodeps.txt): when nnsight is absent, an empty stand-in is registered for the
    import, and removed again."""
    import importlib
    import sys
    import types

    stub = None
    if importlib.util.find_spec("nnsight") is None and "nnsight" not in sys.modules:
        stub = types.ModuleType("nnsight")
        stub.LanguageModel = object
        sys.modules["nnsight"] = stub
    try:
        from dictionary_learning.dictionary import AutoEncoder
        from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
        from dictionary_learning.trainers.standard import StandardTrainer
        from dictionary_learning.trainers.top_k import AutoEncoderTopK, TopKTrainer
    finally:
        if stub is not None and sys.modules.get("nnsight") is stub:
            del sys.modules["nnsight"]
    return AutoEncoder, AutoEncoderTopK, StandardTrainer, TopKTrainer, BatchTopKTrainer


@torch.no_grad()
def reference_trainer(sae: _SAE):
    """dictionary-learning's trainer for ``sae``'s kind (``TopKTrainer``, ``BatchTopKTrainer`` or
    ``StandardTrainer``, the latter with no sparsity warm-up), its autoencoder given ``sae``'s weights: theirs stores
    ``encoder.weight = W_enc^T``, ``decoder.weight = W_dec^T``, and calls ``b_dec`` ``bias`` in the
    ReLU SAE. ``trainer.ae`` is the module; ``trainer.loss(x, step=0, logging=True)`` its losses."""
    AutoEncoder, AutoEncoderTopK, StandardTrainer, TopKTrainer, BatchTopKTrainer = _import_dictionary_learning()
    common = dict(steps=10, activation_dim=sae.d_in, dict_size=sae.d_latent, layer=0, lm_name="dermnet",
                  warmup_steps=1, device="cpu", seed=0)
    if isinstance(sae, BatchTopKSAE):
        trainer = BatchTopKTrainer(k=sae.k, auxk_alpha=sae.aux_alpha, **common)
        trainer.ae.b_dec.copy_(sae.b_dec)
        trainer.ae.threshold.copy_(sae.threshold)
    elif isinstance(sae, TopKSAE):
        trainer = TopKTrainer(k=sae.k, auxk_alpha=sae.aux_alpha, **common)
        trainer.ae.b_dec.copy_(sae.b_dec)
    else:
        trainer = StandardTrainer(l1_penalty=sae.l1, sparsity_warmup_steps=None, **common)
        trainer.ae.bias.copy_(sae.b_dec)
    trainer.ae.encoder.weight.copy_(sae.W_enc.t())
    trainer.ae.encoder.bias.copy_(sae.b_enc)
    trainer.ae.decoder.weight.copy_(sae.W_dec.t())
    return trainer


# ---- the shipped SAEs ----

SHIPPED = dict(layer=LAYER, d_latent=1024, k=32, steps=2000, batch_size=1024, lr=1e-3, n_images=4000, seed=0)


# the DermNet each shipped SAE reads, and the clinics whose images it is trained on (half each)
SAE_MODELS = {"shortcut": ("A", "B"), "debiased": ("A", "B"), "clinic_c": ("C", "B")}


def sae_path(name: str):
    if name not in SAE_MODELS:
        raise ValueError(f"name must be one of {list(SAE_MODELS)}, got {name!r}")
    return _models.DATA_DIR / f"sae_{name}.pt"


def training_images(n: int, clinic: str, offset: int = 0) -> torch.Tensor:
    """``n`` DermSynth images of ``clinic`` from the seeds reserved for SAE work (never test seeds)."""
    from .data import make_dataset
    return make_dataset(n, clinic=clinic, seed=SEED_BASE[clinic] + offset).images


def load_sae(name: str = "shortcut"):
    """The shipped TopK SAE for DermNet ``name`` ("shortcut", "debiased" or "clinic_c"), sha256-verified against
    data/MANIFEST.json, in eval mode: ``(sae, layer)``, the layer it reads (``sae.layer`` too)."""
    path = sae_path(name)
    rebuild = "Rebuild it with `make data` (python -m helpers.sae)."
    manifest_path = _models.MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    entry = manifest.get("files", {}).get(path.name)
    if entry is None or not path.exists():
        raise FileNotFoundError(f"{path.name} is missing or not listed in {manifest_path.name}. {rebuild}")
    if sha256(path) != entry["sha256"]:
        raise RuntimeError(f"{path} does not match {manifest_path.name} (sha256): altered or from another "
                           f"build. {rebuild}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = entry["config"]
    sae = TopKSAE(state["W_enc"].shape[0], state["W_enc"].shape[1], cfg["k"])
    sae.load_state_dict(state)
    sae.layer = cfg["layer"]
    return sae.eval(), sae.layer


def build_shipped(name: str, progress: bool = True, **overrides):
    """Train the shipped SAE for DermNet ``name`` from ``SHIPPED``: activations of ``n_images``
    images, half from each of its two clinics (``SAE_MODELS``: A and B, or C and B for clinic C's
    model), normalized to mean norm sqrt(d_in)."""
    cfg = dict(SHIPPED, **overrides)
    model = load_dermnet(name)
    half = cfg["n_images"] // 2
    acts = torch.cat([layer_vectors(model, training_images(half, c), cfg["layer"]) for c in SAE_MODELS[name]])
    scale = norm_scale(acts)
    acts = normalize(acts, scale)
    sae = TopKSAE(acts.shape[1], cfg["d_latent"], cfg["k"], seed=cfg["seed"])
    sae.act_scale.fill_(scale)
    train_sae(sae, acts, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["seed"],
              layer=cfg["layer"], progress=progress)
    return sae, cfg


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the shipped SAEs in data/ (sae_*.pt).")
    parser.add_argument("--models", nargs="+", default=list(SAE_MODELS), choices=list(SAE_MODELS))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for name in args.models:
        start = time.perf_counter()
        sae, cfg = build_shipped(name, progress=not args.no_progress)
        seconds = time.perf_counter() - start
        path = sae_path(name)
        torch.save({k: v.contiguous() for k, v in sae.state_dict().items()}, path)
        manifest_path = _models.MANIFEST  # read just before writing: only this file's entry changes
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"files": {}}
        manifest.setdefault("files", {})[path.name] = {
            "sha256": sha256(path), "bytes": path.stat().st_size, "config": cfg,
            "train_seconds": round(seconds, 1)}
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        print(f"sae {name}: trained in {seconds:.0f} s, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
