"""Deconvnets: our helpers against Captum on the same inputs.

    python -m benchmarks.bench_deconv

- ``deconvnet`` on 64 images against Captum's ``Deconvolution`` (the same backward pass with the
  same ReLU rule; target about 1x).
- One unit projected on 64 images: by autograd (``unit_projection``) and by hand
  (``zeiler_fergus``: unpooling, rectification, transposed convolutions), each against Captum's
  ``NeuronDeconvolution``.
"""

from __future__ import annotations

from captum.attr import Deconvolution, NeuronDeconvolution

from benchmarks.common import report, timed_pair
from helpers.data import MEL, make_dataset
from helpers.deconv import deconvnet, unit_projection, zeiler_fergus
from helpers.models import load_dermnet


def main() -> None:
    model = load_dermnet("shortcut")
    x = make_dataset(64, clinic="A", seed=0).images
    neuron = NeuronDeconvolution(model, model.layer4)
    rows = [
        ("deconvnet, 64 images vs Captum", *timed_pair(lambda: deconvnet(model, x, MEL),
                                                       lambda: Deconvolution(model).attribute(x, target=MEL)), "~1"),
        ("unit_projection, 64 images vs Captum", *timed_pair(lambda: unit_projection(model, x, "layer4", 3, 2, 5),
                                                             lambda: neuron.attribute(x, neuron_selector=(3, 2, 5))),
         "~1"),
        ("zeiler_fergus, 64 images vs Captum", *timed_pair(lambda: zeiler_fergus(model, x, "layer4", 3, 2, 5),
                                                           lambda: neuron.attribute(x, neuron_selector=(3, 2, 5))),
         "~1"),
    ]
    report(rows)


if __name__ == "__main__":
    main()
