"""How cost grows: each method family against image size, number of images and steps or samples,
on DermNet and on torchvision's resnet50 (random weights): ours, the library, and the floor.

    python -m benchmarks.bench_scaling             # writes build/bench/scaling.md and scaling.png
    python -m benchmarks.bench_scaling --quick     # DermNet only, fewer points

- families: Integrated Gradients (a path of gradients), SmoothGrad (noisy gradients), occlusion
  (forward passes of perturbed images).
- the library: Captum with its defaults, as a user calls it (IG and NoiseTunnel send every sample
  in one batch; Occlusion scores one perturbed image per pass).
- the floor: the bare passes the method needs (forward and backward to the input for the gradient
  families, forward for occlusion), in the batches ours chose, with nothing else around them.
- axes, one changed at a time from (128 px, 1 image, 16 steps or samples, 7 x 7 windows):
  size 64 / 128 / 224; images 1 / 2 / 4; steps or samples 8 / 16 / 32 (occlusion: 3 x 3, 7 x 7,
  15 x 15 windows).

Each point is the median of 3 runs (1 for the slowest configurations), ours and Captum
alternating. On a CUDA device (``--device cuda``) the clocks are synchronized.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
import torchvision
from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

from helpers import batching
from helpers.gradients import integrated_gradients, smoothgrad
from helpers.models import load_dermnet
from helpers.perturbation import occlusion

warnings.filterwarnings("ignore")
OUT = Path("build/bench")
BASE = dict(size=128, images=1, n=16)
AXES = {"size": (64, 128, 224), "images": (1, 2, 4), "n": (8, 16, 32)}
FAMILIES = ("integrated_gradients", "smoothgrad", "occlusion")


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    where = torch.cuda.get_device_name() if device == "cuda" else f"{cpu}, {torch.get_num_threads()} threads"
    return f"{where}; torch {torch.__version__}; {datetime.date.today().isoformat()}"


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, device, repeats):
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _windows(size, n):
    """Window and stride giving n x n positions (n = 3, 7, 15) on a size-px image."""
    per = {8: 3, 16: 7, 32: 15}[n]
    stride = size // (per + 1)
    return 2 * stride, stride


def _runs(family, model, x, t, n, device):
    """(ours, Captum's, the floor) for one point, as functions."""
    size = x.shape[-1]
    if family == "occlusion":
        window, stride = _windows(size, n)
        ours = lambda: occlusion(model, x, t, window=window, stride=stride)  # noqa: E731
        theirs = lambda: Occlusion(model).attribute(x, target=t, sliding_window_shapes=(3, window, window),  # noqa: E731
                                                    strides=(3, stride, stride))
        positions = ((size - window) // stride + 1) ** 2
        n_samples, backward = x.shape[0] * (positions + 1), False
    elif family == "integrated_gradients":
        ours = lambda: integrated_gradients(model, x, t, steps=n)  # noqa: E731
        theirs = lambda: IntegratedGradients(model).attribute(x, target=t, n_steps=n)  # noqa: E731
        n_samples, backward = x.shape[0] * n, True
    else:
        gen = torch.Generator(device=x.device)
        ours = lambda: smoothgrad(model, x, t, n_samples=n, noise_level=0.15, generator=gen.manual_seed(0))  # noqa: E731
        theirs = lambda: NoiseTunnel(Saliency(model)).attribute(x, target=t, nt_type="smoothgrad", nt_samples=n,  # noqa: E731
                                                                 stdevs=0.15, abs=False)
        n_samples, backward = x.shape[0] * n, True
    kind = "gradient" if backward else "forward"

    def floor():
        learnt = batching._learnt.get(batching.workload(kind, model, x))
        per = learnt.size if learnt is not None else n_samples
        for lo in range(0, n_samples, per):
            xb = x[:1].expand(min(per, n_samples - lo), *x.shape[1:]).clone()
            if backward:
                xb.requires_grad_(True)
                torch.autograd.grad(model(xb)[:, 0].sum(), xb)
            else:
                with torch.no_grad():
                    model(xb.contiguous(memory_format=torch.channels_last))

    return ours, theirs, floor


def measure(models: dict, device: str, axes: dict) -> list[dict]:
    rows = []
    for mname, model in models.items():
        model = model.to(device)
        seen = set()
        for axis, values in axes.items():
            for value in values:
                point = {**BASE, axis: value}
                key = (point["size"], point["images"], point["n"])
                g = torch.Generator().manual_seed(0)
                x = torch.rand(point["images"], 3, point["size"], point["size"], generator=g).to(device)
                t = torch.arange(point["images"], device=device) % 7
                for family in FAMILIES:
                    if (key, family) in seen:
                        row = next(r for r in rows if r["model"] == mname and r["family"] == family
                                   and (r["size"], r["images"], r["n"]) == key)
                        rows.append({**row, "axis": axis})
                        continue
                    seen.add((key, family))
                    ours, theirs, floor = _runs(family, model, x, t, point["n"], device)
                    ours()  # warm: the policy learns its batch, the kernels their shapes
                    theirs()
                    slow = mname != "DermNet" and point["size"] == 224
                    repeats = 1 if slow else 3
                    a, b = [], []
                    for _ in range(repeats):
                        a.append(_median_time(ours, device, 1))
                        b.append(_median_time(theirs, device, 1))
                    row = dict(model=mname, family=family, axis=axis, **point, ours=statistics.median(a),
                               library=statistics.median(b), floor=_median_time(floor, device, repeats))
                    rows.append(row)
                    print(f"{mname:<8} {family:<21} size {point['size']:>3} images {point['images']} "
                          f"n {point['n']:>2}: ours {row['ours']:7.3f} s  Captum {row['library']:7.3f} s  "
                          f"floor {row['floor']:7.3f} s", flush=True)
    return rows


def write(rows: list[dict], device: str, axes: dict, out: Path = OUT) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    desc = machine(device)
    lines = [f"# How cost grows ({desc})", "",
             "| model | family | axis | size | images | steps/samples | ours s | Captum s | floor s | ours/Captum | "
             "ours/floor |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['family']} | {r['axis']} | {r['size']} | {r['images']} | {r['n']} | "
                     f"{r['ours']:.3f} | {r['library']:.3f} | {r['floor']:.3f} | {r['ours'] / r['library']:.2f} | "
                     f"{r['ours'] / r['floor']:.2f} |")
    table = out / "scaling.md"
    table.write_text("\n".join(lines) + "\n")
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axs = plt.subplots(len(models), len(axes), figsize=(4.2 * len(axes), 3.3 * len(models)), squeeze=False)
    colours = dict(zip(FAMILIES, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for i, m in enumerate(models):
        for j, axis in enumerate(axes):
            ax = axs[i, j]
            for family in FAMILIES:
                pts = sorted((r[axis], r) for r in rows if r["model"] == m and r["family"] == family
                             and r["axis"] == axis)
                xs = [p[0] for p in pts]
                for what, style in (("ours", "-o"), ("library", "--"), ("floor", ":")):
                    ax.plot(xs, [p[1][what] for p in pts], style, color=colours[family], ms=3,
                            label=f"{family} ({'Captum' if what == 'library' else what})" if i == j == 0 else None)
            ax.set_yscale("log")
            ax.set_xticks(list(axes[axis]))
            ax.set_xlabel({"size": "image size (px)", "images": "images", "n": "steps / samples (occlusion: "
                           "3x3, 7x7, 15x15 windows)"}[axis], fontsize=8)
            ax.set_ylabel(f"{m}: seconds per call" if j == 0 else "")
            ax.grid(alpha=0.3, which="both")
    fig.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"How cost grows: ours (solid), Captum's defaults (dashed), the bare passes (dotted)\n{desc}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    plot = out / "scaling.png"
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    return table, plot


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="DermNet only, two points per axis")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    models = {"DermNet": load_dermnet("shortcut")}
    if not args.quick:
        models["resnet50"] = torchvision.models.resnet50(num_classes=7).eval()
    axes = {k: v[:2] for k, v in AXES.items()} if args.quick else AXES
    print(f"How cost grows, {machine(args.device)}")
    rows = measure(models, args.device, axes)
    table, plot = write(rows, args.device, axes)
    print(f"wrote {table} and {plot}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
