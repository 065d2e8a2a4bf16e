"""Feature visualization and dataset search: cost against the passes they need (same inputs).

    python -m benchmarks.bench_featurevis

- One step of ``visualize`` (Fourier parameterization, colour decorrelation, the default
  transforms, a channel objective) on a batch of 8 images, against one forward + backward of the
  same batch through DermNet to the input (target <= 1.2x).
- ``top_activating`` over 2,000 images against a plain batched forward pass over them
  (target <= 1.2x).
"""

from __future__ import annotations

import torch

from benchmarks.common import report, timed_pair
from helpers.data import make_dataset
from helpers.featurevis import channel, colour_correlation_sqrt, top_activating, visualize
from helpers.models import load_dermnet
from helpers.train import logits


def main() -> None:
    model = load_dermnet("shortcut")
    ds = make_dataset(2000, clinic="A", seed=0)
    colour = colour_correlation_sqrt(ds.images[:200])
    x = ds.images[:8]

    def forward_backward():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xg)[:, 4].sum(), xg)

    steps = 10
    ours, theirs = timed_pair(lambda: visualize(model, channel("layer4", 3), steps=steps, n=8, colour=colour),
                              lambda: [forward_backward() for _ in range(steps)], 5)
    rows = [("visualize, 1 step of 8 images vs fwd+bwd", ours / steps, theirs / steps, "<= 1.2"),
            ("top_activating, 2000 images vs forward",
             *timed_pair(lambda: top_activating(model, "layer4", 3, ds.images, k=9), lambda: logits(model, ds.images,
                                                                                                    256), 5),
             "<= 1.2")]
    report(rows)


if __name__ == "__main__":
    main()
