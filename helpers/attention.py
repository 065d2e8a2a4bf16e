"""Attention in a Vision Transformer: getting it out, rollout, flow, and gradient-weighted relevance.

    record_attention  a ``with`` block that records every block's attention probabilities
    attention_maps    the attention of every block, [B, heads, T, T] each (T = 1 + patches)
    verify_attention  rebuild each block's output from the recorded attention: the proof
    rollout           Abnar & Zuidema's attention rollout, [B, T, T]
    attention_flow    Abnar & Zuidema's attention flow (a max-flow per input token), [B, T]
    relevance         Chefer et al.'s gradient-weighted relevance, under the method contract
    unfused_attention timm's own unfused path, recorded: an independent route, for checks
    token_map         CLS-to-patch rows [B, T] as maps [B, 1, H, W] at input size
    tokens_to_grid    patch tokens [B, T, C] as a feature map [B, C, h, w] (for Grad-CAM)

**Getting the attention out.** A modern ViT never forms its attention probabilities: timm's
``Attention`` (like ``nn.MultiheadAttention`` with ``need_weights=False``) calls the fused
``scaled_dot_product_attention`` kernel, which goes from q, k, v straight to the output. A hook on
the attention module sees only that output. What can be hooked is the ``qkv`` projection that
feeds the kernel: from its output, the probabilities are recomputed exactly as timm's unfused path
computes them, softmax(q k^T / sqrt(d)). The model itself runs untouched, so its outputs do not
change by a bit; ``verify_attention`` proves the probabilities are the ones the model used, by
rebuilding every block's output from them. ``attention_maps``, which wants only the maps, instead
switches the blocks to timm's unfused path for its one forward pass and reads the probabilities
that path forms: the same numbers to round-off, at the unfused forward's cost rather than the fused
forward's plus a second softmax(q k^T).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn

from .contract import check_input, check_model, check_outputs, check_target
from .data import IMAGE_SIZE

HEAD_FUSIONS = ("mean", "max", "min")


def _unwrapped(model: nn.Module) -> nn.Module:
    """The ViT inside ``nn.DataParallel``, ``DistributedDataParallel`` or any wrapper that holds it as
    ``model.module`` (as many training scripts leave it); the model itself otherwise."""
    while not hasattr(model, "blocks") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def vit_blocks(model: nn.Module) -> nn.Sequential:
    """The transformer blocks of a timm ``VisionTransformer`` (or of the one a wrapper holds as
    ``.module``), each checked to be hookable."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    blocks = getattr(_unwrapped(model), "blocks", None)
    expected = ("expected a timm VisionTransformer: model.blocks, each block's .attn a timm.layers.Attention "
                "with a qkv projection (e.g. helpers.models.load_vit())")
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or len(blocks) == 0:
        hint = ""
        if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
            hint = (" This model uses nn.MultiheadAttention (torchvision's ViT calls it with need_weights=False, "
                    "so the probabilities are never formed and there is no qkv projection to hook).")
        raise TypeError(f"model is a {type(model).__name__} with no transformer blocks: {expected}.{hint}")
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, Attention) or getattr(attn, "gate", None) is not None:
            raise TypeError(f"model.blocks[{i}].attn is a {type(attn).__name__}, whose attention cannot be rebuilt "
                            f"from a qkv projection (a fused kernel with nothing to hook): {expected}")
        if not all(hasattr(block, name) for name in ("norm1", "ls1", "drop_path1", "norm2", "mlp", "ls2")):
            raise TypeError(f"model.blocks[{i}] is a {type(block).__name__}, not timm's pre-norm Block: {expected}")
    return blocks


def _layer_indices(layers, depth: int) -> list[int]:
    if layers is None:
        return list(range(depth))
    items = [layers] if isinstance(layers, int) else list(layers)
    if not items or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise TypeError(f"layers must be None, an int or a list of ints, got {layers!r}")
    bad = [i for i in items if not -depth <= i < depth]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {depth} blocks (0..{depth - 1}, or negative)")
    return sorted({i % depth for i in items})


def _probabilities(attn: Attention, qkv: torch.Tensor):
    """softmax(q k^T * scale) and v from the qkv projection's output, as timm's unfused path does."""
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1), v


def _attention_output(attn: Attention, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The attention module's output rebuilt from its probabilities: proj(probs @ v)."""
    b, _, n, _ = v.shape
    out = (probs @ v).transpose(1, 2).reshape(b, n, attn.attn_dim)
    return attn.proj_drop(attn.proj(attn.norm(out)))


@dataclass
class AttentionRecording:
    """What ``record_attention`` saw, one entry per recorded block (in block order).

    attentions  [B, heads, T, T] probabilities; detached, unless ``differentiable=True``, where
                they are the live tensors the model's output was computed from (for autograd)
    inputs, outputs  each block's input and output tokens [B, T, C] (with ``blocks_io=True``)
    """

    layers: list[int]
    attentions: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


@contextmanager
def record_attention(model: nn.Module, layers=None, *, differentiable: bool = False, blocks_io: bool = False):
    """Record the attention probabilities of the blocks in ``layers`` (default: all) during one forward.

        with record_attention(model) as rec:
            out = model(x)
        rec.attentions   # one [B, heads, T, T] per block; the hooks are already gone

    A hook on each block's ``attn.qkv`` recomputes the probabilities from q and k; the model runs
    untouched (its outputs are the same to the bit). ``differentiable=True`` is for gradients with
    respect to the attention: each attention module's output is then replaced by ``proj(A v)``
    computed from the recorded A, so that the score depends on A through autograd (the same value
    as the fused kernel's, to float round-off). Each block may run once per recording. Every hook
    is removed when the block ends, also when it raises.
    """
    blocks = vit_blocks(model)
    idx = _layer_indices(layers, len(blocks))
    rec = AttentionRecording(layers=idx)
    slots: dict[int, dict] = {i: {} for i in idx}
    handles = []

    def on_qkv(i):
        def hook(module, inputs, output):
            slot = slots[i]
            if "done" in slot:
                raise ValueError(f"record_attention: block {i} ran twice inside one recording; "
                                 "use one with block per forward pass")
            slot["done"] = True
            attn = blocks[i].attn
            if differentiable:
                probs, slot["v"] = _probabilities(attn, output)
                slot["probs"] = probs
            else:
                with torch.no_grad():
                    probs = _probabilities(attn, output)[0]
            rec.attentions.append(probs)
        return hook

    def on_attn(i):
        def hook(module, inputs, output):
            slot = slots[i]
            return _attention_output(module, slot.pop("probs"), slot.pop("v"))
        return hook

    def on_block(i):
        def hook(module, inputs, output):
            rec.inputs.append(inputs[0].detach())
            rec.outputs.append(output.detach())
        return hook

    try:
        for i in idx:
            handles.append(blocks[i].attn.qkv.register_forward_hook(on_qkv(i)))
            if differentiable:
                handles.append(blocks[i].attn.register_forward_hook(on_attn(i)))
            if blocks_io:
                handles.append(blocks[i].register_forward_hook(on_block(i)))
        yield rec
    finally:
        for h in handles:
            h.remove()
        slots.clear()


def attention_maps(model: nn.Module, x: torch.Tensor, layers=None) -> list[torch.Tensor]:
    """The attention probabilities of every block (or of the blocks in ``layers``), one forward pass.

    Returns a list with one ``[B, heads, T, T]`` tensor per block, T = prefix tokens + number of
    patches (the CLS token first, then any register tokens: ``model.num_prefix_tokens`` of them).
    Row i of a head is the distribution token i attends with: ``A[:, h, 0, 1:]`` is where the CLS
    token looks, which is what the head reads only where it reads the CLS token
    (``global_pool="token"``); an average-pooled head reads the patch tokens' rows. The blocks run
    timm's own unfused path for the call (the probabilities it forms are the ones returned; the
    fused kernel never forms them), and are switched back after it. No hooks are left.
    """
    check_model(model)
    check_input(x, model=model)
    blocks = vit_blocks(model)
    idx = _layer_indices(layers, len(blocks))
    if not all(hasattr(blocks[i].attn, "fused_attn") and isinstance(blocks[i].attn.attn_drop, nn.Module) for i in idx):
        with record_attention(model, layers) as rec, torch.no_grad():  # an older timm: recompute beside the kernel
            model(x)
        return rec.attentions
    # timm's own unfused path forms the probabilities: read them where it hands them to attn_drop,
    # instead of computing them a second time next to the fused kernel (1.4-1.8x a forward, not ~1.1x)
    maps, handles, flags = {}, [], {i: blocks[i].attn.fused_attn for i in idx}

    def on_drop(i):
        def hook(module, inputs):
            if i in maps:
                raise ValueError(f"attention_maps: block {i} ran twice in one forward pass")
            maps[i] = inputs[0].detach()
        return hook

    try:
        for i in idx:
            handles.append(blocks[i].attn.attn_drop.register_forward_pre_hook(on_drop(i)))
            blocks[i].attn.fused_attn = False
        with torch.no_grad():
            model(x)
    finally:
        for i, flag in flags.items():
            blocks[i].attn.fused_attn = flag
        for h in handles:
            h.remove()
    missing = [i for i in idx if i not in maps]
    if missing:
        raise ValueError(f"attention_maps: blocks {missing} did not run in the model's forward pass")
    return [maps[i] for i in idx]


def verify_attention(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Rebuild every block's output from the recorded attention; return the largest absolute gap
    from the block's own output, one float per block.

    For a pre-norm block, with A the recorded probabilities and v from the block's qkv projection,

        h   = x + ls1(proj(A v))          where q, k, v = qkv(norm1(x))
        out = h + ls2(mlp(norm2(h)))

    Gaps at float round-off (about 1e-6) prove that A is the attention the model used. A wrong A
    (a missing scale, the wrong softmax axis, another head layout) gives gaps of order one.
    """
    check_model(model)
    check_input(x, model=model)
    blocks = vit_blocks(model)
    with record_attention(model, blocks_io=True) as rec, torch.no_grad():
        model(x)
    gaps = []
    with torch.no_grad():
        for block, probs, x_in, x_out in zip(blocks, rec.attentions, rec.inputs, rec.outputs, strict=True):
            attn = block.attn
            b, n, _ = x_in.shape
            v = attn.qkv(block.norm1(x_in)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)[2]
            h = x_in + block.drop_path1(block.ls1(_attention_output(attn, probs, v)))
            out = h + block.drop_path2(block.ls2(block.mlp(block.norm2(h))))
            gaps.append(float((out - x_out).abs().max()))
    return gaps


def _check_attentions(attentions) -> list[torch.Tensor]:
    if isinstance(attentions, torch.Tensor) or not isinstance(attentions, list | tuple) or not attentions:
        raise TypeError("attentions must be a non-empty list of [B, heads, T, T] tensors, one per block "
                        "(what attention_maps returns)")
    shape = None
    for i, a in enumerate(attentions):
        if not isinstance(a, torch.Tensor) or a.dim() != 4 or a.shape[-1] != a.shape[-2]:
            got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(f"attentions[{i}] must be [B, heads, T, T], got {got}")
        if shape is not None and (a.shape[0], a.shape[-1]) != shape:
            raise ValueError(f"attentions[{i}] has batch/tokens {(a.shape[0], a.shape[-1])}, block 0 has {shape}")
        if not torch.isfinite(a).all() or (a < 0).any():
            raise ValueError(f"attentions[{i}] must hold non-negative finite probabilities")
        shape = (a.shape[0], a.shape[-1])
    return list(attentions)


def _fused(attentions, residual: float, head_fusion: str) -> list[torch.Tensor]:
    """Per block: fuse the heads, add the residual as an identity, normalise the rows."""
    if isinstance(residual, bool) or not isinstance(residual, int | float) or not 0 <= residual < 1:
        raise ValueError(f"residual must be a number in [0, 1), got {residual!r}")
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    out = []
    for a in _check_attentions(attentions):
        a = a.detach().double()
        fused = a.mean(1) if head_fusion == "mean" else a.amax(1) if head_fusion == "max" else a.amin(1)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        mixed = residual * eye + (1 - residual) * fused
        out.append(mixed / mixed.sum(-1, keepdim=True))
    return out


def rollout(attentions, residual: float = 0.5, head_fusion: str = "mean") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, arXiv:2005.00928).

    Each block's output token i is a mix of its input tokens, through attention *and* through the
    residual connection. Model the residual as an identity and fuse the heads:

        A_l^ = rownorm( residual * I + (1 - residual) * fuse_h A_l )     (fuse: mean, max or min)
        R    = A_L^ A_{L-1}^ ... A_1^

    R[b, i, j] is how much of output token i traces back to input token j; ``R[:, 0, 1:]`` is the
    CLS token's view of the patches, the explanation of a head that reads the CLS token
    (``global_pool="token"``). For a head that averages the patch tokens (``global_pool="avg"``,
    or a ViT without a CLS token) the CLS row explains nothing: the head reads the mean of the
    patch rows, ``R[:, P:].mean(1)`` with P = ``model.num_prefix_tokens``. Returns ``[B, T, T]`` in
    float64 (a product of L stochastic matrices; float64 keeps its rows summing to 1), on the
    attentions' device.
    """
    result = None
    for a in _fused(attentions, residual, head_fusion):
        result = a if result is None else a @ result
    return result


def _max_flow_values(mats: np.ndarray, scale: float) -> np.ndarray:
    """Max-flow from the top CLS node to every bottom token, for one image's fused matrices [L, T, T]."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    n_layers, t, _ = mats.shape
    rows, cols, caps = [], [], []
    for level in range(n_layers):  # node (level, i) is level * t + i; level n_layers is the output
        upper, lower = (level + 1) * t, level * t
        i, j = np.nonzero(mats[level] > 0)
        rows.append(upper + i)  # edge from output token i of block `level` down to its input token j
        cols.append(lower + j)
        caps.append(np.rint(mats[level][i, j] * scale).astype(np.int64))
    n = (n_layers + 1) * t
    graph = csr_matrix((np.concatenate(caps), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    source = n_layers * t  # the CLS token at the top
    return np.array([maximum_flow(graph, source, j, method="dinic").flow_value for j in range(t)]) / scale


def attention_flow(attentions, residual: float = 0.5, head_fusion: str = "mean",
                   scale: float = 1e9) -> torch.Tensor:
    """Attention flow (Abnar & Zuidema 2020): how much the CLS output can draw from each input token.

    Build a layered graph: one node per token per level (level 0 the input, level L the output),
    and an edge from token i of level l+1 down to token j of level l with capacity A_l^[i, j]
    (the same fused, residual-mixed matrices as ``rollout``). The flow of input token j is the
    maximum flow from the CLS node at the top to token j at the bottom. Rollout multiplies the
    weights along every path; flow lets each path carry only what its narrowest edge allows.

    Returns ``[B, T]`` (the CLS row, like ``rollout(...)[:, 0]``: token 0 must be the CLS token that
    the head reads, see ``rollout``), float64, on the attentions' device. Each value is one max-flow
    problem: here solved by SciPy's Dinic algorithm on integer capacities (the weights times
    ``scale``, rounded: values are exact to about 1e-9 per edge). That is T problems per image on
    a graph of L T^2 edges: the cost that keeps attention flow to small cases.
    """
    fused = _fused(attentions, residual, head_fusion)
    stacked = np.stack([a.cpu().numpy() for a in fused], 1)  # [B, L, T, T]
    return torch.tensor(np.stack([_max_flow_values(m, scale) for m in stacked]), device=fused[0].device)


def _grid_of(grid) -> tuple[int, int]:
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = (grid, grid)
    if (not isinstance(grid, tuple | list) or len(grid) != 2
            or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)):
        raise ValueError(f"grid must be a positive int or a (rows, cols) pair, got {grid!r}")
    return tuple(grid)


def _prefix_of(prefix) -> int:
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise ValueError(f"prefix must be an int >= 0 (the tokens before the patches: model.num_prefix_tokens), "
                         f"got {prefix!r}")
    return prefix


def token_map(rows: torch.Tensor, grid, size=IMAGE_SIZE, mode: str = "nearest", prefix: int = 1,
              dtype=torch.float32) -> torch.Tensor:
    """CLS-to-patch rows ``[B, T]`` (T = 1 + rows * cols, the CLS entry first) as ``[B, 1, H, W]``.

    The CLS entry is dropped, the patch entries laid out on the ``grid`` (row-major, as the patch
    embedding orders them) and resized to ``size``. ``mode="nearest"`` (the default) gives every
    pixel of a patch its patch's value, so a mass inside a mask counts whole patches;
    ``"bilinear"`` smooths across patch borders, as most libraries draw it. ``prefix``: how many
    entries come before the patches (``model.num_prefix_tokens``: 0 without a CLS token, 1 + the
    register tokens with them). The map is ``dtype`` (float32, what the figures draw).
    """
    h, w = _grid_of(grid)
    p = _prefix_of(prefix)
    if not isinstance(rows, torch.Tensor) or rows.dim() != 2:
        got = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
        raise ValueError(f"rows must be [B, T] (one row of token weights per image), got {got}")
    if rows.shape[1] != p + h * w:
        raise ValueError(f"rows has {rows.shape[1]} tokens, but a {h}x{w} grid needs {p} + {h * w} = {p + h * w} "
                         "(prefix= sets the tokens before the patches: model.num_prefix_tokens)")
    maps = rows[:, p:].reshape(-1, 1, h, w).to(dtype)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps, size=size, mode=mode, **kwargs)


def tokens_to_grid(tokens: torch.Tensor, grid=None, prefix: int = 1) -> torch.Tensor:
    """Patch tokens as a feature map: ``[B, prefix + h*w, C]`` -> ``[B, C, h, w]``, the ``prefix``
    tokens before the patches dropped (the CLS token; ``model.num_prefix_tokens`` in general: 0
    for a ViT without a CLS token, 1 + the register tokens with them).

    The ``reshape`` that lets Grad-CAM run on a ViT layer (pytorch-grad-cam and torchcam call it
    ``reshape_transform``): ``grad_cam(model, x, t, "blocks.3.norm1", reshape=tokens_to_grid)``
    (``reshape=lambda t: tokens_to_grid(t, prefix=0)`` without a CLS token). ``grid`` defaults to
    the square grid the token count implies.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be [B, T, C] (a transformer layer's output), got {got}")
    p = _prefix_of(prefix)
    n = tokens.shape[1] - p
    if grid is None:
        side = math.isqrt(max(n, 0))
        if side * side != n:
            raise ValueError(f"{n} patch tokens (after {p} prefix tokens) do not form a square grid: pass "
                             "grid=(rows, cols), or prefix= (model.num_prefix_tokens: 0 without a CLS token)")
        grid = side
    h, w = _grid_of(grid)
    if h * w != n:
        raise ValueError(f"tokens has {n} patch tokens (after {p} prefix tokens), but grid {h}x{w} needs {h * w}")
    return tokens[:, p:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def _cls_grid(vit) -> tuple[int, int]:
    """The patch grid of a ViT whose head reads its one CLS token: what ``relevance`` explains."""
    instead = ("explain it with Grad-CAM on the tokens instead: grad_cam(model, x, target, 'blocks.N.norm1', "
               "reshape=lambda t: tokens_to_grid(t, prefix=model.num_prefix_tokens))")
    if not getattr(vit, "has_class_token", True) or getattr(vit, "num_prefix_tokens", 1) == 0:
        raise ValueError(f"relevance explains the CLS token's row, and this ViT has no CLS token: {instead}")
    if getattr(vit, "num_prefix_tokens", 1) != 1:
        raise ValueError(f"relevance expects a ViT with exactly one CLS token and no register or distillation "
                         f"tokens; this one has {vit.num_prefix_tokens} tokens before the patches: {instead}")
    pool = getattr(vit, "global_pool", "token")
    if pool != "token":
        raise ValueError(f"relevance explains the CLS token's row, but this ViT's head (global_pool={pool!r}) "
                         "never reads the CLS token: its gradient at the last block is 0, so the row would "
                         f"explain nothing; {instead}")
    return tuple(vit.patch_embed.grid_size)


def relevance(model: nn.Module, x: torch.Tensor, target, mode: str = "nearest") -> torch.Tensor:
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf 2021, arXiv:2103.15679).

    Rollout treats every head alike and ignores the class. This rule weights each attention
    weight by the gradient of the target score with respect to it, and keeps the positive part:

        R   = I                                                     ([B, T, T])
        R  <- R + mean_h[ (dS_c/dA_l ⊙ A_l)^+ ] R                  for l = 1 .. L
        map = token_map(R[:, 0])                                    (the CLS row)

    The rule explains the CLS token, so the head must read it (timm's ``global_pool="token"``): a
    ViT without a CLS token, with register tokens, or whose head averages the patch tokens is
    refused. A wrapper holding the ViT as ``.module`` (``nn.DataParallel``) is unwrapped. One
    forward and one backward pass for the batch. Returns ``[B, 1, H, W]``, in x's dtype.
    """
    check_model(model)
    check_input(x, model=model)
    vit_blocks(model)
    grid = _cls_grid(_unwrapped(model))
    t = check_target(target, x.shape[0], device=x.device)
    with record_attention(model, differentiable=True) as rec, torch.enable_grad():
        out = model(x.detach().requires_grad_(True))  # so that A needs grad even for a frozen model
        check_outputs(out, t)
        grads = torch.autograd.grad(out.gather(1, t[:, None]).sum(), rec.attentions)
    rows = relevance_rule(rec.attentions, grads)[:, 0]
    return token_map(rows, grid, size=tuple(x.shape[-2:]), mode=mode, dtype=x.dtype)


@torch.no_grad()
def relevance_rule(attentions, grads) -> torch.Tensor:
    """Chefer et al.'s accumulation, ``[B, T, T]``: R = I, then R <- R + mean_h[(grad ⊙ A)^+] R per block."""
    n = attentions[0].shape[-1]
    r = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device).expand(attentions[0].shape[0], n, n)
    for a, g in zip(attentions, grads, strict=True):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    return r


@contextmanager
def unfused_attention(model: nn.Module):
    """timm's own slow path inside the ``with`` block: ``fused_attn`` switched off on every block
    (and restored), the probabilities it forms recorded where it passes them to ``attn_drop``.

        with unfused_attention(model) as probs:
            out = model(x)          # probs: one live [B, heads, T, T] per block

    A second, independent route to the attention and its gradient, for checking ``record_attention``
    and ``relevance``; it changes the model's arithmetic while it lasts (by round-off only).
    """
    blocks = vit_blocks(model)
    probs, handles, flags = [], [], [b.attn.fused_attn for b in blocks]
    try:
        for b in blocks:
            handles.append(b.attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(o)))
            b.attn.fused_attn = False
        yield probs
    finally:
        for b, flag in zip(blocks, flags, strict=True):
            b.attn.fused_attn = flag
        for h in handles:
            h.remove()
