"""The course's one copy of every method, plus the running example (DermSynth, DermNet).

Modules, one per topic:
    data       DermSynth: synthetic dermoscopy images with ground-truth masks
    models     DermNet, and loading the verified DermNet and DermViT checkpoints
    vit        DermViT: timm's VisionTransformer sized for DermSynth (imported on first use)
    train      training and auditing both models (python -m helpers.train rebuilds data/)
    contract   the method contract's argument checks, shared by every method
    batching   how many samples a model pass takes: batch_size="auto", the memory budget
    gradients  saliency, gradient x input, SmoothGrad, Integrated Gradients and IG baselines
    cam        CAM, Grad-CAM, Grad-CAM++, Score-CAM, guided backprop, guided Grad-CAM
    perturbation  occlusion, superpixels, LIME, KernelSHAP, exact Shapley, expected gradients
    featurevis feature visualization (objectives, visualize), dataset search, receptive fields
    deconv     the three ReLU rules, the deconvnet (by autograd and by hand), transposed convolution
    attention  ViT attention from fused kernels, rollout, attention flow, Chefer's relevance
    concepts   concept sets from DermSynth, CAVs, TCAV with its significance test
    sae        sparse autoencoders (ReLU, TopK), their metrics, editing the model through latents
    hooks      capture a layer's activation and gradient; hooks always removed
    metrics    mask mass and the pointing game
    viz        overlays and grids with one consistent look
    exercises  checkers for the "Your turn" exercises
"""

from .batching import memory_budget, set_memory_budget  # noqa: E402  helpers.set_memory_budget("2GB")

__all__ = ["memory_budget", "set_memory_budget"]


def _give_memory_back_after_each_cell() -> None:
    """In a Jupyter kernel on Linux, return freed memory to the system after every cell.

    glibc keeps memory a program has freed for its own reuse, so a kernel that once held a large
    batch of tensors stays that large after it has let them go: notebook 01's kernel held 1.30 GB
    after its last cell, and 0.91 GB once trimmed. A learner keeps several notebooks open, so the course asks glibc to
    return the free pages (``malloc_trim``) when each cell ends. Elsewhere (macOS, Windows,
    plain Python scripts) this does nothing. ``benchmarks/bench_kernel_memory.py`` measures it.
    """
    import sys

    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is None or not hasattr(shell, "kernel") or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    callbacks = shell.events.callbacks.get("post_run_cell", [])
    if any(getattr(cb, "__name__", "") == "give_memory_back" for cb in callbacks):
        return

    def give_memory_back(result=None):
        trim(0)

    shell.events.register("post_run_cell", give_memory_back)


_give_memory_back_after_each_cell()
