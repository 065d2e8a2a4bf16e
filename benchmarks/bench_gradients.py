"""Gradient methods against Captum on the same 16 DermNet images (targets: ratio <= 1.0).

    python -m benchmarks.bench_gradients

Captum runs with its defaults for batching (all samples or steps in one pass) and, for a like-for-
like comparison, with the same internal batch size as ours. A second part measures the peak memory
of integrated_gradients at 50 and 200 steps with a fixed batch_size, each in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

from benchmarks.common import report, timed_pair
from helpers.data import make_dataset
from helpers.gradients import integrated_gradients, saliency, smoothgrad
from helpers.models import load_dermnet


def speed() -> None:
    model = load_dermnet("shortcut")
    ds = make_dataset(16, clinic="A", seed=0)
    x, t = ds.images, ds.labels
    bs = 64
    sigma = 0.15  # DermSynth images span about [0, 1]; the same absolute sigma for both
    rows = [("saliency, 16 images",
             *timed_pair(lambda: saliency(model, x, t), lambda: Saliency(model).attribute(x, target=t), 30), "<= 1.0")]

    def ours_sg():
        return smoothgrad(model, x, t, n_samples=50, noise_level=sigma, batch_size=bs)

    def captum_sg(batch=None):
        return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=50, stdevs=sigma,
                                                      target=t, abs=False, nt_samples_batch_size=batch)
    rows.append(("SmoothGrad 50 samples (Captum default batch)", *timed_pair(ours_sg, captum_sg, 5), "<= 1.0"))
    rows.append(("SmoothGrad 50 samples (Captum 4 samples/pass)",
                 *timed_pair(ours_sg, lambda: captum_sg(4), 5), "<= 1.0"))

    ig_c = IntegratedGradients(model)

    def ours_ig():
        return integrated_gradients(model, x, t, steps=50, batch_size=bs)
    rows.append(("IG 50 steps (Captum default batch)", *timed_pair(
        ours_ig, lambda: ig_c.attribute(x, target=t, n_steps=50, method="riemann_trapezoid"), 5), "<= 1.0"))
    rows.append(("IG 50 steps (Captum internal_batch_size=64)", *timed_pair(
        ours_ig, lambda: ig_c.attribute(x, target=t, n_steps=50, method="riemann_trapezoid", internal_batch_size=bs),
        5), "<= 1.0"))
    report(rows)


CHILD = """
import json, os, sys, threading, time, torch
from helpers.data import make_dataset
from helpers.gradients import integrated_gradients
from helpers.models import load_dermnet

PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

steps, mode = int(sys.argv[1]), sys.argv[2]
model = load_dermnet("shortcut"); ds = make_dataset(16, clinic="A", seed=0)
if mode == "ours":
    run = lambda n: integrated_gradients(model, ds.images, ds.labels, steps=n, batch_size=64)
else:
    from captum.attr import IntegratedGradients
    ig = IntegratedGradients(model)
    run = lambda n: ig.attribute(ds.images, target=ds.labels, n_steps=n, method="riemann_trapezoid")
run(2)  # warm up the libraries
base, peak, done = rss(), [0], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
th = threading.Thread(target=sample); th.start()
run(steps)
done[0] = True; th.join()
print(json.dumps({"extra_mib": (peak[0] - base) / 2**20}))
"""


def memory() -> None:
    # glibc keeps freed heap memory mapped, so RSS would show fragmentation rather than live tensors;
    # with this threshold every large buffer is its own mapping, returned to the OS when freed
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    print("\npeak resident memory added by one IG call on 16 images (fresh process each, RSS sampled every ms):")
    for mode in ("ours", "captum"):
        for steps in (50, 200) if mode == "captum" else (50, 200, 800):
            out = subprocess.run([sys.executable, "-c", CHILD, str(steps), mode], capture_output=True, text=True,
                                 check=True, env=env)
            extra = json.loads(out.stdout.strip().splitlines()[-1])["extra_mib"]
            label = "ours, batch_size=64" if mode == "ours" else "Captum, default batching"
            print(f"  {label:<26} steps={steps:<4} +{extra:7.1f} MiB")


def main() -> None:
    torch.manual_seed(0)
    speed()
    memory()


if __name__ == "__main__":
    main()
