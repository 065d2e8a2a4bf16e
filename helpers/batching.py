"""How many samples each model pass takes: one policy for every method that batches passes.

Methods that send many perturbed or interpolated copies of an image through the model (Integrated
Gradients, SmoothGrad, occlusion, LIME, KernelSHAP, Score-CAM, deletion and insertion, infidelity,
sensitivity, TCAV, dataset search, receptive fields) take ``batch_size``:

    an int       that many samples per pass
    "auto"       (the default) sized by this policy, under the process's memory budget
    "512MB"      "auto" under that budget, for this call only (B, KB, MB, GB, KiB, MiB, GiB)

"auto" works in two steps, both measured on the call's own passes, so no pass is wasted:

1. **Memory.** The first two passes take 2 and 4 samples (4 and 8 for forward passes without a
   backward, which hold a small part of what a backward needs) while every tensor they create
   is counted (a ``TorchDispatchMode`` that sees each operator's outputs, forward and backward
   alike). The largest number of bytes alive at once in each gives the cost per sample (the
   difference) and the fixed cost of a pass; no pass is then larger than the budget allows. The
   count misses what an operator allocates and frees inside itself (a convolution's workspace)
   and the allocator's slack: on ResNet-50 the process grew by 1.4x what was counted. So the
   counted tensors are held to ``COUNTED_SHARE`` (65%) of the budget. A fixed cost up to the
   model's own size is not charged to it (torchvision's ViT-B/16 makes 343 MB of weight-sized
   tensors in every pass, whatever its size; its weights are 346 MB): the budget bounds what a
   method adds on top of the model.
2. **Speed.** A pass of one sample wastes time on fixed costs; past a size that depends on the
   model and the machine's caches, a larger pass is no faster per sample and only holds more
   memory (ResNet-50 at 224 px on 2 cores: 146-166 ms per image from 2 to 16 images, 226 ms at
   40). So the passes double in size while the time per sample keeps falling by at least
   ``GAIN`` (a size that does not gets a second pass: a new shape's first pass can pay one-off
   costs, and the machine is shared), and settle at the fastest size seen. (Going on through
   sizes that run no faster costs more than it finds: a first occlusion call on ResNet-50, 169
   positions, took 1.26x the time of the best fixed size and 9x its memory that way.) A rest
   shorter than half a pass joins the pass before it (when the budget allows), rather than
   running alone at a slow small size.

What was learnt is kept for the rest of the process, per model, sample shape, dtype, device,
thread count and kind of pass, so a second call starts at the settled size. The results do not
depend on the batch beyond float round-off (tests/test_batching.py checks this at 1, "auto" and
everything in one pass).

The budget is ``DEFAULT_MEMORY_BUDGET`` (1 GiB), or the environment variable
``HELPERS_MEMORY_BUDGET`` ("2GB") read at import, or ``set_memory_budget(...)``, which can also be
used as a ``with`` block that restores the previous budget. It bounds the memory a method's
passes add, not the model's own weights.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

DEFAULT_MEMORY_BUDGET = 1 << 30
ENV_VAR = "HELPERS_MEMORY_BUDGET"
FIRST_PASS = 2  # samples in the first measured pass; the second takes twice as many
GAIN = 0.05  # a doubled pass must be this much faster per sample to be worth its memory
MAX_AUTO = 1024  # no "auto" pass is larger, whatever the budget
COUNTED_SHARE = 0.65  # of the budget, for the tensors counted: the rest is for what the count misses

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30}


def parse_memory(value, name: str = "memory budget") -> int:
    """Bytes from an int (bytes) or a string such as "512MB", "1.5GiB" or "2g"."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number of bytes or a size such as '1GB', got {value!r}")
    if isinstance(value, int):
        nbytes = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{name} must be a number of bytes or a size such as '512MB' or '2GiB', "
                             f"got {value!r}")
        nbytes = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise ValueError(f"{name} must be a number of bytes or a size such as '1GB', got {value!r}")
    if nbytes < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return nbytes


def _budget_from_env() -> int:
    value = os.environ.get(ENV_VAR)
    return DEFAULT_MEMORY_BUDGET if not value else parse_memory(value, ENV_VAR)


_budget = _budget_from_env()


def memory_budget() -> int:
    """The process's memory budget for "auto" batches, in bytes."""
    return _budget


class set_memory_budget:  # noqa: N801 - used like a function, and as a with block
    """Set the process's memory budget for "auto" batches: bytes, or a size such as "2GB".

        helpers.set_memory_budget("2GB")          # from now on
        with helpers.set_memory_budget("256MB"):  # inside the block only
            integrated_gradients(model, x, target)
    """

    def __init__(self, budget):
        global _budget
        new = parse_memory(budget, "budget")
        self.previous = _budget
        _budget = new

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _budget
        _budget = self.previous
        return False


def check_batch_size(batch_size, name: str = "batch_size"):
    """A positive int, "auto", or a memory size ("512MB"); returned as given (sizes checked)."""
    if isinstance(batch_size, int) and not isinstance(batch_size, bool):
        if batch_size < 1:
            raise ValueError(f"{name} must be a positive int, 'auto' or a memory size such as '512MB', "
                             f"got {batch_size!r}")
        return batch_size
    if batch_size == "auto":
        return batch_size
    if isinstance(batch_size, str):
        try:
            parse_memory(batch_size, name)
        except ValueError:
            raise ValueError(f"{name} must be a positive int, 'auto' or a memory size such as '512MB', "
                             f"got {batch_size!r}") from None
        return batch_size
    raise ValueError(f"{name} must be a positive int, 'auto' or a memory size such as '512MB', got {batch_size!r}")


# ------------------------------------------------------------------------------------------
# Counting the bytes a pass holds at once
# ------------------------------------------------------------------------------------------

class PeakMemory(TorchDispatchMode):
    """Inside the ``with`` block, the largest number of bytes held at once by tensors created in
    it (``.peak``): each operator's outputs are counted until their storage is freed. Workspace an
    operator frees before returning is not seen; storages made before the block are not counted."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # PyTorch otherwise wraps __torch_dispatch__ to keep torch.compile out of it, and that
        # imports torch._dynamo on the first pass counted: 2 s and 150 MB in every process.
        # Nothing here runs under torch.compile.
        return False

    def __init__(self):
        super().__init__()
        self.live: dict = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                try:
                    storage = t.untyped_storage()
                except (RuntimeError, NotImplementedError):
                    continue
                ref = StorageWeakRef(storage)
                if ref not in self.live:
                    self.live[ref] = storage.nbytes()
        for ref in [r for r in self.live if r.expired()]:
            del self.live[ref]
        self.peak = max(self.peak, sum(self.live.values()))
        return out


# ------------------------------------------------------------------------------------------
# The policy
# ------------------------------------------------------------------------------------------

@dataclass
class _Learnt:
    bytes_per_sample: float
    fixed_bytes: float  # what a pass holds whatever its size (a layer's reordered weights, ...)
    size: int  # the fastest size so far: the one used once settled
    rate: float = 0.0  # samples per second at ``size``
    settled: bool = False
    trial: int = 0  # the size being tried, its best rate and how often it ran
    trial_rate: float = 0.0
    trial_runs: int = 0


_learnt: dict = {}


def workload(kind: str, model, sample) -> tuple:
    """The key under which "auto" remembers a kind of pass: the model, one sample's shape, dtype
    and device, and the thread count; last, the model's own size in bytes (its parameters and
    buffers). ``sample`` is a tensor whose first dimension is the batch."""
    own = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return (kind, id(model), tuple(sample.shape[1:]), sample.dtype, str(sample.device), torch.get_num_threads(), own)


def _model_bytes(key: tuple) -> int:
    return key[-1] if len(key) == 7 and isinstance(key[-1], int) else 0


def forget() -> None:
    """Drop what "auto" has learnt in this process (the next calls measure again)."""
    _learnt.clear()


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _next_size(learnt: _Learnt, cap: int) -> int:
    if learnt.settled:
        return min(learnt.size, cap)
    if learnt.size > cap or learnt.trial > cap:  # a smaller budget than when these were tried
        learnt.size, learnt.rate = min(learnt.size, cap), 0.0
        learnt.trial, learnt.trial_rate, learnt.trial_runs = 0, 0.0, 0
    if not learnt.trial:
        learnt.trial = learnt.size if not learnt.rate else min(cap, 2 * learnt.size)
    return learnt.trial


def _learn(learnt: _Learnt, size: int, rate: float, cap: int) -> None:
    """One full pass of the size on trial ran at ``rate`` samples per second. It is kept if it
    beats the best so far by GAIN. If not, it gets one more pass (a new shape's first pass can pay
    one-off costs, and the machine is shared); if that fails too, the search ends at the best."""
    learnt.trial_rate, learnt.trial_runs = max(learnt.trial_rate, rate), learnt.trial_runs + 1
    if not learnt.rate or learnt.trial_rate > (1 + GAIN) * learnt.rate:
        learnt.size, learnt.rate = size, learnt.trial_rate
        learnt.settled = size >= cap
    elif learnt.trial_runs < 2:
        return
    else:
        learnt.settled = True
    learnt.trial, learnt.trial_rate, learnt.trial_runs = 0, 0.0, 0


def run_batches(step, n: int, batch_size, key: tuple, device=None) -> None:
    """Call ``step(lo, hi)`` for consecutive ranges covering samples [0, n), each range one pass.

    ``batch_size`` as in the module docstring; ``key`` from ``workload(...)``; ``device`` is synced
    before each clock reading (CUDA). ``step`` must give results that do not depend on the ranges.
    """
    if n <= 0:
        return
    if isinstance(batch_size, int):
        for lo in range(0, n, batch_size):
            step(lo, min(n, lo + batch_size))
        return
    budget = memory_budget() if batch_size == "auto" else parse_memory(batch_size, "batch_size")
    lo = 0
    learnt = _learnt.get(key)
    if learnt is None:
        peaks, rates = [], []
        first = 2 * FIRST_PASS if key[0] == "forward" else FIRST_PASS  # a forward pass holds far less
        for size in (first, 2 * first):  # two sizes: the cost per sample and the fixed cost
            hi = min(n, lo + size)
            _sync(device)
            start = time.perf_counter()
            with PeakMemory() as mem:
                step(lo, hi)
            _sync(device)
            rates.append((hi - lo) / max(time.perf_counter() - start, 1e-9))  # the counting costs little
            peaks.append((hi - lo, max(mem.peak, 1)))
            lo = hi
            if lo == n:
                return  # too few samples to learn from: measure again next time
        (a, pa), (b, pb) = peaks
        per = max((pb - pa) / (b - a), pb / b / 4)  # a pass that does not grow with the batch still counts
        learnt = _learnt[key] = _Learnt(bytes_per_sample=per, fixed_bytes=max(pb - b * per, 0.0), size=b,
                                        rate=rates[1])
        if rates[0] > (1 + GAIN) * rates[1]:  # the smaller pass was the faster: no reason to grow
            learnt.size, learnt.rate, learnt.settled = a, rates[0], True
    while lo < n:
        charged = max(0.0, learnt.fixed_bytes - _model_bytes(key))  # the budget is for what comes on top of the model
        cap = max(1, min(MAX_AUTO, int((COUNTED_SHARE * budget - charged) // learnt.bytes_per_sample)))
        size = _next_size(learnt, cap)
        hi = min(n, lo + size)
        if 0 < n - hi < size // 2 and n - lo <= cap:  # no short tail pass: take the rest in this one
            hi = n
        _sync(device)
        start = time.perf_counter()
        step(lo, hi)
        _sync(device)
        if not learnt.settled and hi - lo == size == learnt.trial:  # only full passes teach the speed
            _learn(learnt, size, size / max(time.perf_counter() - start, 1e-9), cap)
        lo = hi
