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
