"""TCAV: cost of our activations and sensitivities, and of a whole test, against the references.

    python -m benchmarks.bench_concepts

- ``layer_gradients`` (activations and class-logit gradients at layer2, layer3 and layer4 in one
  pass) plus the sensitivities for 20 CAVs per layer, on 200 images, against one forward +
  backward pass of the same batch through DermNet to the input (target <= 1.2x).
- A TCAV run on the same sets, layer2, one concept against 5 random sets: ours
  (``tcav_experiment``: 5 CAVs, 5 null CAVs and the t-test) against Captum's ``TCAV`` with its
  default classifier on the 5 (concept, random) pairs, in a temporary folder (no null, no test:
  Captum has none). Ratio reported (target: not slower).
"""

from __future__ import annotations

import torch

from benchmarks.common import report, timed_pair
from helpers.concepts import (
    LAYERS,
    captum_reference,
    class_images,
    concept_images,
    layer_gradients,
    random_images,
    sensitivities,
    tcav_experiment,
)
from helpers.data import MEL
from helpers.models import load_dermnet


def main() -> None:
    model = load_dermnet("shortcut")
    x = class_images("mel", 200)
    cavs = {layer: torch.randn(20, d) for layer, d in (("layer2", 8192), ("layer3", 4096), ("layer4", 8192))}

    def ours_sens():
        out = layer_gradients(model, LAYERS, x, MEL)
        return [sensitivities(out[layer][1], cavs[layer]) for layer in LAYERS]

    def forward_backward():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xg)[:, MEL].sum(), xg)

    concept = concept_images("ruler", 50)
    randoms = [random_images(50, seed=i) for i in range(5)]
    mel = class_images("mel", 100)
    sets = {"ruler": concept, **{f"random_{i}": r for i, r in enumerate(randoms)}}
    pairs = [("ruler", f"random_{i}") for i in range(5)]
    rows = [("acts + sensitivities, 200 images vs fwd+bwd", *timed_pair(ours_sens, forward_backward, 9), "<= 1.2"),
            ("TCAV test (5+5 CAVs) vs Captum TCAV (5)",
             *timed_pair(lambda: tcav_experiment(model, ["layer2"], {"ruler": concept}, randoms, mel, MEL),
                         lambda: captum_reference(model, "layer2", sets, pairs, mel, MEL), 3),
             "<= 1.0")]
    report(rows)


if __name__ == "__main__":
    main()
