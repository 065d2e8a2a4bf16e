"""CAM methods: cost against the passes they need, and against Captum (same inputs).

    python -m benchmarks.bench_cam

- Grad-CAM on 32 images against a plain forward + backward to the input on the same batch
  (target <= 1.3x) and against Captum's LayerGradCam (target <= 1.0x).
- Score-CAM on 4 images (4 x 128 masked inputs) against running the same masked forwards as one
  plain batched loop (target <= 1.0x), in the default memory layout and in channels-last.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam

from benchmarks.common import report, timed_pair
from helpers.cam import grad_cam, score_cam
from helpers.data import make_dataset
from helpers.hooks import capture
from helpers.models import load_dermnet

warnings.filterwarnings("ignore")


def main() -> None:
    model = load_dermnet("shortcut")
    ds = make_dataset(32, clinic="A", seed=0)
    x, t = ds.images, ds.labels

    def forward_backward():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xg).gather(1, t[:, None]).sum(), xg)

    def ours():
        return grad_cam(model, x, t, "layer4")

    def captum():
        attr = LayerGradCam(model, model.layer4).attribute(x, target=t, relu_attributions=True)
        return F.interpolate(attr, size=(64, 64), mode="bilinear", align_corners=False)

    rows = [("Grad-CAM, 32 images vs forward+backward", *timed_pair(ours, forward_backward, 30), "<= 1.3"),
            ("Grad-CAM, 32 images vs Captum LayerGradCam", *timed_pair(ours, captum, 30), "<= 1.0")]

    xs, ts = x[:4], t[:4]
    with capture(model, "layer4") as rec, torch.no_grad():
        model(xs)
    up = F.interpolate(rec.activation, size=(64, 64), mode="bilinear", align_corners=False)
    lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
    masked = (xs[:, None] * ((up - lo) / (hi - lo).clamp_min(1e-12))[:, :, None]).reshape(-1, 3, 64, 64)

    def plain_loop(layout=torch.contiguous_format):
        with torch.no_grad():
            for i in range(0, len(masked), 128):
                model(masked[i:i + 128].contiguous(memory_format=layout)).softmax(1)

    def ours_sc():
        return score_cam(model, xs, ts, batch_size=128)

    rows.append(("Score-CAM, 4 x 128 masks vs plain loop", *timed_pair(ours_sc, plain_loop, 7), "<= 1.0"))
    rows.append(("Score-CAM vs plain loop, channels-last",
                 *timed_pair(ours_sc, lambda: plain_loop(torch.channels_last), 7), "(same layout)"))
    report(rows)


if __name__ == "__main__":
    main()
