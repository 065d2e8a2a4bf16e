"""Full-size models, default batches: torchvision's resnet50 and vit_b_16 (random weights) at 224 px.

    python -m benchmarks.bench_full_size            # both models
    python -m benchmarks.bench_full_size resnet50   # one

For each batched method, its default call (``batch_size="auto"``, from a fresh policy: the
measuring passes are part of the time) against a sweep of fixed batch sizes on the same inputs,
every call alone in a fresh process (after one forward and backward pass that starts the
libraries up), timed and measured together:

- memory: the peak resident memory the call adds (Linux's VmHWM, reset just before the call),
  within the memory budget plus the model's own size (target <= 1.0 of that sum);
- time: within 1.15x of the fastest size of the sweep whose memory fits that same allowance
  (target <= 1.15); "2nd call" is a second default call in the same process, which starts at
  the size the first settled on (its ratio to the same fastest size). The fastest size overall
  is shown too: on vit_b_16 it can be every sample in one pass, at more memory than the budget
  allows. The sweep's largest size is every sample in one pass (the old defaults of 64 and 256
  did that here).

The calls take 1 image: on resnet50, IG and SmoothGrad at their default 50 steps and samples,
occlusion with a 32-px window at stride 16 (169 positions), KernelSHAP with 96 coalitions and a
64-step deletion curve; on vit_b_16, about a third of that work (32 steps and samples; 49
positions, 64 coalitions, 48 steps). About 20 minutes on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import torch
import torchvision

from helpers import batching
from helpers.evaluation import deletion
from helpers.gradients import integrated_gradients, smoothgrad
from helpers.perturbation import kernel_shap, occlusion

warnings.filterwarnings("ignore")

SWEEP = (2, 4, 8, 16, 64)
SIZES = {"resnet50": dict(steps=50, samples=96, stride=16, deletion=63),
         "vit_b_16": dict(steps=32, samples=64, stride=32, deletion=48)}


def model_and_input(name: str):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return model, x, torch.tensor([3])


def calls(name: str, model, x, t) -> dict:
    """The method calls, each a function of batch_size."""
    n = SIZES[name]
    seg = torch.arange(16).view(4, 4).repeat_interleave(56, 0).repeat_interleave(56, 1)
    return {
        "integrated_gradients": lambda bs: integrated_gradients(model, x, t, steps=n["steps"], batch_size=bs),
        "smoothgrad": lambda bs: smoothgrad(model, x, t, n_samples=n["steps"], batch_size=bs,
                                            generator=torch.Generator().manual_seed(0)),
        "occlusion": lambda bs: occlusion(model, x, t, window=32, stride=n["stride"], batch_size=bs),
        "kernel_shap": lambda bs: kernel_shap(model, x, t, seg, n_samples=n["samples"], batch_size=bs),
        "deletion": lambda bs: deletion(model, x, t, x.mean(1, keepdim=True), steps=n["deletion"], batch_size=bs),
    }


_CHILD = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from benchmarks.bench_full_size import calls, model_and_input
name, method, bs = sys.argv[1], sys.argv[2], sys.argv[3]
bs = int(bs) if bs.isdigit() else bs
model, x, t = model_and_input(name)
xg = x.clone().requires_grad_(True)
torch.autograd.grad(model(xg)[0, 0], xg)  # the libraries' one-off start-up, outside the measure
call = calls(name, model, x, t)[method]
def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
before = kb("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark to the current RSS
start = time.perf_counter()
call(bs)
seconds = time.perf_counter() - start
added = kb("VmHWM:") - before
again = 0.0
if bs == "auto":  # a second call starts at the size the first one settled on
    start = time.perf_counter()
    call(bs)
    again = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "added": added, "again": again}))
"""


def in_fresh_process(name: str, method: str, batch_size) -> dict:
    """One call in a new process: its seconds, and the bytes of peak resident memory it adds."""
    out = subprocess.run([sys.executable, "-c", _CHILD, name, method, str(batch_size)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(name: str) -> list[dict]:
    model, x, t = model_and_input(name)
    allowed = batching.memory_budget() + sum(p.numel() * p.element_size() for p in model.parameters())
    rows = []
    for method in calls(name, model, x, t):
        sweep = {bs: in_fresh_process(name, method, bs) for bs in SWEEP}
        auto = in_fresh_process(name, method, "auto")
        best = min(sweep, key=lambda b: sweep[b]["seconds"])
        fits = [b for b in SWEEP if sweep[b]["added"] <= allowed] or [min(SWEEP)]
        best_fit = min(fits, key=lambda b: sweep[b]["seconds"])
        row = dict(model=name, method=method, auto_s=auto["seconds"], again_s=auto["again"], auto_added=auto["added"],
                   allowed=allowed,
                   best_size=best, best_s=sweep[best]["seconds"], fit_size=best_fit,
                   fit_s=sweep[best_fit]["seconds"], all_added=sweep[max(SWEEP)]["added"],
                   sweep={str(b): (round(v["seconds"], 2), round(v["added"] / 1e6)) for b, v in sweep.items()})
        rows.append(row)
        print_row(row, flush=True)
    return rows


def print_header() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; budget "
          f"{batching.memory_budget() / 2**20:.0f} MiB; 224 px, 1 image; every call in a fresh process")
    print(f"{'model':<9} {'method':<21} {'auto s':>7} {'best s':>7} {'(size)':>6} {'ratio':>6}  "
          f"{'in budget':>9} {'(size)':>6} {'ratio':>6} {'2nd call':>8}  {'auto +MB':>8} {'allowed':>8} {'ratio':>6}  "
          f"{'all-in-one +MB':>14}")
    print(f"{'':<31}targets: time <= 1.15 x the fastest size whose memory fits the budget; memory <= 1.0")


def print_row(r: dict, flush: bool = False) -> None:
    print(f"{r['model']:<9} {r['method']:<21} {r['auto_s']:7.2f} {r['best_s']:7.2f} {r['best_size']:>6} "
          f"{r['auto_s'] / r['best_s']:6.2f}  {r['fit_s']:9.2f} {r['fit_size']:>6} {r['auto_s'] / r['fit_s']:6.2f} "
          f"{r['again_s'] / r['fit_s']:8.2f}  "
          f"{r['auto_added'] / 1e6:8.0f} {r['allowed'] / 1e6:8.0f} {r['auto_added'] / r['allowed']:6.2f}  "
          f"{r['all_added'] / 1e6:14.0f}   sweep (s, +MB) "
          + " ".join(f"{k}:{v[0]:.2f},{v[1]}" for k, v in r["sweep"].items()), flush=flush)


def main(names=("resnet50", "vit_b_16")) -> list[dict]:
    print_header()
    rows = []
    for name in names:
        rows += run(name)
    return rows


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ("resnet50", "vit_b_16"))
