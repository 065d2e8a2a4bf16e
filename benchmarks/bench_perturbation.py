"""Perturbation methods: cost against the forward passes they need, and against the libraries.

    python -m benchmarks.bench_perturbation

- Occlusion on 8 images (window 8, stride 4: 225 positions each) against Captum's Occlusion with
  ``perturbations_per_eval`` set so that it scores as many images per forward pass as ours
  (target <= 1.0x), and against the bare batched forward passes on the same images, built
  beforehand, in the same channels-last layout (the physical limit here; target <= 1.2x). Also
  ours in Captum's layout (``channels_last=False``, bit-for-bit arithmetic) against Captum.
- LIME on one image (about 14 superpixels, 500 samples) against the lime package's
  LimeImageExplainer and against Captum's Lime under Captum's choices (target <= 1.0x), each with
  its default batching and with batching as large as ours.
- KernelSHAP, same image and samples, against Captum's KernelShap (target <= 1.0x).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
from captum.attr import KernelShap, Lime, Occlusion
from lime.lime_image import LimeImageExplainer

from benchmarks.common import report, timed_pair
from helpers.data import make_dataset
from helpers.models import load_dermnet
from helpers.perturbation import kernel_shap, lime, occlusion, occlusion_masks, superpixels

warnings.filterwarnings("ignore")


def main() -> None:
    model = load_dermnet("shortcut")
    ds = make_dataset(8, clinic="A", seed=0, ruler=True)
    x, t = ds.images, ds.labels
    rows = []

    # ---- occlusion ----
    batch = 256
    masks = occlusion_masks((64, 64), (8, 8), (4, 4))
    built = torch.where(masks[None, :, None], torch.zeros(()), x[:, None]).flatten(0, 1)  # all occluded images

    def bare(layout):
        def run():
            with torch.no_grad():
                model(x.contiguous(memory_format=layout))
                for start in range(0, len(built), batch):
                    model(built[start:start + batch].contiguous(memory_format=layout))
        return run

    def ours_occ():
        return occlusion(model, x, t, window=8, stride=4, batch_size=batch)

    def ours_occ_captum_layout():
        return occlusion(model, x, t, window=8, stride=4, batch_size=batch, channels_last=False)

    def captum_occ(ppe):
        return lambda: Occlusion(model).attribute(x, target=t, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4),
                                                  baselines=0.0, perturbations_per_eval=ppe)

    a, b = timed_pair(ours_occ, bare(torch.channels_last), repeats=7)
    rows.append(("occlusion 8 img vs bare batched forwards", a, b, "<= 1.2"))
    a, b = timed_pair(ours_occ, captum_occ(batch // len(x)), repeats=7)
    rows.append((f"occlusion vs Captum, {batch} images per pass", a, b, "<= 1.0"))
    a, b = timed_pair(ours_occ_captum_layout, bare(torch.contiguous_format), repeats=7)
    rows.append(("  same, Captum's layout, vs bare forwards", a, b, "-"))
    a, b = timed_pair(ours_occ_captum_layout, captum_occ(batch // len(x)), repeats=7)
    rows.append((f"  same, Captum's layout, vs Captum {batch}/pass", a, b, "-"))
    a, b = timed_pair(ours_occ, captum_occ(1), repeats=3)
    rows.append(("occlusion vs Captum defaults (8 per pass)", a, b, "-"))

    # ---- LIME and KernelSHAP ----
    x1, t1 = x[:1], t[:1]
    seg = superpixels(x1[0], 16)
    label, n = int(t1[0]), 500

    def classifier(images):
        with torch.no_grad():
            return model(torch.as_tensor(images).permute(0, 3, 1, 2).float()).numpy()

    def lime_package(batch_size):
        def run():
            with contextlib.redirect_stderr(io.StringIO()):
                LimeImageExplainer(random_state=0).explain_instance(
                    x1[0].permute(1, 2, 0).numpy(), classifier, labels=(label,), top_labels=None, num_samples=n,
                    segmentation_fn=lambda image: seg.numpy(), random_seed=0, batch_size=batch_size)
        return run

    def ours_lime():
        return lime(model, x1, t1, seg, n_samples=n, seed=0)

    a, b = timed_pair(ours_lime, lime_package(10), repeats=5)
    rows.append((f"lime {n} samples vs lime package (batch 10)", a, b, "<= 1.0"))
    a, b = timed_pair(ours_lime, lime_package(batch), repeats=5)
    rows.append((f"lime vs lime package, batch {batch}", a, b, "<= 1.0"))

    def ours_captum_lime():
        return lime(model, x1, t1, seg, n_samples=n, seed=0, sampler="captum", distance="input",
                    surrogate="lasso", kernel_width=1.0, hide_color=0.0)

    def captum(method, ppe):
        def run():
            torch.manual_seed(0)
            method(model).attribute(x1, target=t1, feature_mask=seg[None, None], n_samples=n,
                                    perturbations_per_eval=ppe, return_input_shape=False)
        return run

    a, b = timed_pair(ours_captum_lime, captum(Lime, 1), repeats=3)
    rows.append(("lime (Captum's choices) vs Captum Lime, ppe 1", a, b, "<= 1.0"))
    a, b = timed_pair(ours_captum_lime, captum(Lime, batch), repeats=5)
    rows.append((f"lime (Captum's choices) vs Captum, ppe {batch}", a, b, "<= 1.0"))

    def ours_ks():
        return kernel_shap(model, x1, t1, seg, n_samples=n, seed=0)

    a, b = timed_pair(ours_ks, captum(KernelShap, 1), repeats=3)
    rows.append((f"kernel_shap {n} vs Captum KernelShap, ppe 1", a, b, "<= 1.0"))
    a, b = timed_pair(ours_ks, captum(KernelShap, batch), repeats=5)
    rows.append((f"kernel_shap vs Captum KernelShap, ppe {batch}", a, b, "<= 1.0"))
    report(rows)


if __name__ == "__main__":
    main()
