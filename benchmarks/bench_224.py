"""At ImageNet size: torchvision's resnet18 (random weights) on 224 px images, ours against Captum
at equal settings (target: ratio <= 1.0).

    python -m benchmarks.bench_224

- Occlusion, 2 images, window 56, stride 28 (7 x 7 = 49 positions each), the same number of images
  per forward pass on both sides (Captum's ``perturbations_per_eval``), with our channels-last
  default and in Captum's layout (``channels_last=False``).
- Integrated Gradients, 1 image, 50 steps, 64 path points per pass on both sides (Captum's
  ``internal_batch_size``), the riemann_trapezoid rule on both: in Captum's layout (the same work
  in one forward/backward pass: parity is the most either side can reach) and with
  ``channels_last=True``.

Each pair is timed call by call in alternation (``timed_pair``), so that the machine's drift
affects both alike; the median of the repeats is reported.
"""

from __future__ import annotations

import warnings

import torch
import torchvision
from captum.attr import IntegratedGradients, Occlusion

from benchmarks.common import report, timed_pair
from helpers.gradients import integrated_gradients
from helpers.perturbation import occlusion

warnings.filterwarnings("ignore")


def main(repeats: int = 7) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3, 7])
    rows = []

    per_pass = 25  # images per forward pass, both sides

    def captum_occ():
        return Occlusion(model).attribute(x, target=t, sliding_window_shapes=(3, 56, 56), strides=(3, 28, 28),
                                          perturbations_per_eval=per_pass)

    for label, cl in (("channels-last", True), ("Captum's layout", False)):
        def ours_occ(cl=cl):
            return occlusion(model, x, t, window=56, stride=28, batch_size=per_pass * 2, channels_last=cl)
        rows.append((f"occlusion 224 px, 2 images ({label})", *timed_pair(ours_occ, captum_occ, repeats), "<= 1.0"))

    x1, t1 = x[:1], t[:1]
    ig = IntegratedGradients(model)
    for label, cl in (("Captum's layout", False), ("channels-last", True)):
        rows.append((f"IG 224 px, 50 steps ({label})", *timed_pair(
            lambda cl=cl: integrated_gradients(model, x1, t1, steps=50, rule="captum_trapezoid", batch_size=64,
                                               channels_last=cl),
            lambda: ig.attribute(x1, target=t1, n_steps=50, method="riemann_trapezoid", internal_batch_size=64),
            repeats), "<= 1.0"))
    report(rows)


if __name__ == "__main__":
    main()
