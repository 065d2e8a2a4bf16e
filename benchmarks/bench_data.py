"""How fast DermSynth draws images (target: 1,000 images in at most 2 s on 2 CPU cores).

    python -m benchmarks.bench_data

Reports the median of several runs, as wall time per 1,000 images, and the time of one DermNet
forward pass over the same batch for scale.
"""

from __future__ import annotations

import torch

from benchmarks.common import timed
from helpers.data import make_dataset
from helpers.models import DermNet


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    gen = timed(lambda: make_dataset(1000, seed=1))
    images = make_dataset(1000, seed=1).images
    model = DermNet().eval()
    with torch.no_grad():
        fwd = timed(lambda: model(images), repeats=3)
    print(f"make_dataset(1000):         {gen:6.2f} s  (target <= 2.0 s)")
    print(f"DermNet forward, 1000 imgs: {fwd:6.2f} s  (for scale)")


if __name__ == "__main__":
    main()
