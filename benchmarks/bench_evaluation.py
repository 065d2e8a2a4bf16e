"""Evaluation metrics: cost of our deletion/insertion against the bare forward passes they need, and
of infidelity and max-sensitivity against Captum's at equal batch settings.

    python -m benchmarks.bench_evaluation

- Deletion and insertion curves (16 steps) for a batch of 32 DermNet images: ours against the bare
  batched forward passes of the same 2 x 17 x 32 images (batches of 256, channels-last), which is
  the least any implementation must spend (target <= 1.2x).
- ``infidelity`` (10 Gaussian perturbations per image, 16 images, all in one batch) against
  ``captum.metrics.infidelity`` with the same perturbation function and ``max_examples_per_batch``
  (target <= 1.0x).
- ``sensitivity_max`` of saliency (10 samples, radius 0.02, 16 images, one batch) against
  ``captum.metrics.sensitivity_max`` (target <= 1.0x).
"""

from __future__ import annotations

import torch
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max as captum_sensitivity_max

from benchmarks.common import report, timed_pair
from helpers import evaluation as E
from helpers.cam import grad_cam
from helpers.data import make_dataset
from helpers.gradients import saliency
from helpers.models import load_dermnet
from helpers.train import logits


def main() -> None:
    model = load_dermnet("shortcut")
    x = make_dataset(32, clinic="B", seed=3, ruler=True).images
    t = logits(model, x).argmax(1)
    attr = grad_cam(model, x, t)
    steps = 16
    every = x.repeat(2 * (steps + 1), 1, 1, 1)  # the images the two curves evaluate

    def ours_curves():
        E.deletion(model, x, t, attr, steps=steps, substitute="mean")
        E.insertion(model, x, t, attr, steps=steps)

    def bare_forwards():
        with torch.no_grad():
            for lo in range(0, len(every), 256):
                model(every[lo:lo + 256].contiguous(memory_format=torch.channels_last))

    x16, t16 = x[:16], t[:16]
    sal = saliency(model, x16, t16)
    perturb = E.noise_perturbation(0.02)

    def captum_infid():
        torch.manual_seed(0)
        captum_infidelity(model, perturb, x16, sal, target=t16, n_perturb_samples=10)

    def explain(inputs, target):
        return (saliency(model, inputs[0], target),)

    def captum_sens():
        torch.manual_seed(0)
        captum_sensitivity_max(explain, x16, perturb_radius=0.02, n_perturb_samples=10, target=t16)

    rows = [
        ("deletion + insertion (32 x 16 steps) vs bare fwd", *timed_pair(ours_curves, bare_forwards, 7), "<= 1.2"),
        ("infidelity (16 x 10) vs Captum", *timed_pair(lambda: E.infidelity(model, x16, t16, sal, perturb, 10),
                                                      captum_infid, 9), "<= 1.0"),
        ("sensitivity_max, saliency (16 x 10) vs Captum",
         *timed_pair(lambda: E.sensitivity_max(saliency, model, x16, t16, 0.02, 10), captum_sens, 7), "<= 1.0"),
    ]
    report(rows)


if __name__ == "__main__":
    main()
