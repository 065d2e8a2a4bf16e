"""The method contract, checked in one place.

Every attribution method is called as ``method(model, x, target, **options)``. These helpers turn
bad input into a clear error that names the argument, before any work is done:

- ``model``: an ``nn.Module`` in eval mode where train mode would change the answer (BatchNorm,
  Dropout);
- ``x``: a floating tensor ``[B, C, H, W]``;
- ``target``: an int, or one class index per image (list or LongTensor ``[B]``), within the
  model's outputs.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from .batching import check_batch_size  # noqa: F401 - the methods take it from here

_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d, nn.Dropout3d)


def check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training and any(isinstance(m, _MODE_DEPENDENT) for m in model.modules()):
        raise ValueError("model is in training mode, where BatchNorm/Dropout change the answer: "
                         "call model.eval() first")


def _model_dtype(model):
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def check_input(x, name: str = "x", model=None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a batch of images [B, C, H, W], got shape {tuple(x.shape)}"
                         + (" (add a batch dimension: x[None])" if x.dim() == 3 else ""))
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    check_finite(x, name)
    dtype = _model_dtype(model) if model is not None else None
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} is {x.dtype} but the model's parameters are {dtype}: "
                        f"pass {name}.to({dtype}) (or convert the model)")
    return x


def check_finite(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Refuse a tensor holding NaN or inf: every method would return a map of it (or crash deep
    inside), and no map of a NaN image means anything."""
    bad = ~torch.isfinite(x.detach())
    if bad.any():
        where = bad.flatten(1).any(1).nonzero()[:, 0].tolist() if x.dim() > 1 else []
        raise ValueError(f"{name} holds {int(bad.sum())} NaN or inf values"
                         + (f" (in images {where[:10]})" if where else "")
                         + f": pass finite values (torch.nan_to_num({name}) replaces them)")
    return x


def check_scores(scores: torch.Tensor, what: str = "the model", kind: str = "scores") -> torch.Tensor:
    """Refuse non-finite scores [B] or [B, K] from ``what``: a map of a NaN score is not an
    explanation, though the gradient methods would return a finite-looking one. Any tensor with one
    row per image can be checked so (``kind="activations"`` for a layer's output [B, ...]): the
    message names the images whose rows are not finite."""
    bad = ~torch.isfinite(scores.detach())
    if bad.any():
        rows = bad.reshape(len(bad), -1).any(1).nonzero()[:, 0].tolist()
        raise ValueError(f"{what} returned NaN or inf {kind} for images {rows[:10]}: there is nothing to "
                         "explain (check the model's weights and its input scaling)")
    return scores


def check_target(target, batch: int, num_outputs: int | None = None, device=None) -> torch.Tensor:
    """Return the target as a LongTensor [B]; check its range when ``num_outputs`` is known."""
    if isinstance(target, bool | np.bool_):
        raise TypeError("target must be an int or one class index per image, got a bool")
    if isinstance(target, numbers.Integral):  # int, and NumPy integers such as np.argmax(...)
        t = torch.full((batch,), int(target), dtype=torch.long)
    elif isinstance(target, list | tuple | np.ndarray | torch.Tensor):
        t = torch.as_tensor(target)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}")
        t = t.long().reshape(-1).clone()  # a fresh tensor (an inference-mode one cannot join autograd)
        if t.numel() == 1:
            t = t.expand(batch).clone()
        if t.numel() != batch:
            raise ValueError(f"target has {t.numel()} entries for a batch of {batch} images")
    else:
        raise TypeError(f"target must be an int or one class index per image, got {type(target).__name__}")
    if (t < 0).any():
        raise ValueError(f"target {t.tolist()} has a negative class index")
    if num_outputs is not None and (t >= num_outputs).any():
        raise ValueError(f"target {int(t.max())} is out of range for a model with {num_outputs} outputs")
    return t.to(device) if device is not None else t


def check_outputs(out: torch.Tensor, target: torch.Tensor, finite: bool = True) -> None:
    """After the first forward pass: the model gives [B, K] scores and the target is below K;
    the target's scores are finite (``finite=False``: the caller checks them itself)."""
    if out.dim() != 2:
        raise ValueError(f"the model must return scores [B, num_classes], got shape {tuple(out.shape)}")
    if (target >= out.shape[1]).any():
        raise ValueError(f"target {int(target.max())} is out of range for a model with {out.shape[1]} outputs")
    if finite:
        check_scores(out.gather(1, target.to(out.device)[:, None]))


def check_count(value, name: str) -> int:
    """A positive int (a number of samples, steps, images)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
