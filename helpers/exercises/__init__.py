"""Checkers for the "Your turn" exercises.

A learner writes their own version of a method; a checker runs it next to ours on DermNet inputs
and says what is wrong, not only whether it is::

    from helpers.exercises import check_mask_mass
    check_mask_mass(my_mask_mass)
    # -> FAIL mask_mass: your values are ours without the absolute value: ... (hint)

The building blocks are reusable by every notebook:

- ``compare(yours, ours)`` diagnoses the common mistakes (wrong shape, summed over the wrong axis,
  sign flipped, a missing or extra absolute value or ReLU, off by a constant factor, only some
  images of the batch right) and returns a ``CheckResult``;
- ``check_method(your_fn, our_fn, model, x, target)`` also checks the method contract: the
  caller's ``x`` unchanged, the model's mode, gradients and hooks as they were.

One module per notebook holds that notebook's checkers (``nb10_tcav`` for notebook 10, and so
on); ``core`` holds the machinery they share. Import a checker from here::

    from helpers.exercises import check_tcav_score
"""

from .core import NOT_DONE, CheckResult, check_method, compare, not_a_tensor, not_done, run_learner
from .nb00_dermnet import check_mask_mass, check_pointing_game, check_sliced_accuracy_question
from .nb01_saliency import check_corners_question, check_gradient_x_input, check_saliency
from .nb02_smoothgrad import check_smoothgrad, check_smoothgrad_ruler_question, check_vargrad
from .nb03_integrated_gradients import (
    check_completeness_gap,
    check_ig_corners_question,
    check_integrated_gradients,
)
from .nb04_cam_gradcam import (
    check_grad_cam_pp_weights,
    check_grad_cam_weights,
    check_gradcam_artifacts_question,
)
from .nb05_occlusion import check_occlusion, check_occlusion_ink_question, check_occlusion_masks
from .nb06_lime import check_effective_samples, check_lime_kernel, check_lime_ruler_question
from .nb07_shap import check_coalition_sizes, check_shap_ruler_question, check_shapley
from .nb08_feature_visualization import check_fft_scale, check_ruler_channels_question
from .nb09_deconvnet import check_conv_transpose, check_deconvnet_class_question
from .nb10_tcav import check_ink_question, check_tcav_score
from .nb11_vit_attention import check_debiased_vit_question, check_rollout
from .nb12_sanity_checks import check_randomized, check_sanity_question
from .nb13_evaluating_attributions import check_deletion_scores, check_guided_backprop_randomization_question
from .nb14_sparse_autoencoders import check_artifact_latent_question, check_topk_sae
from .nb15_debugging_playbook import check_flip_rate, check_shortcut_question

__all__ = [
    "NOT_DONE", "CheckResult", "check_method", "compare", "not_a_tensor", "not_done", "run_learner",
    "check_mask_mass", "check_pointing_game", "check_sliced_accuracy_question", "check_corners_question",
    "check_gradient_x_input", "check_saliency", "check_smoothgrad", "check_smoothgrad_ruler_question",
    "check_vargrad", "check_completeness_gap", "check_ig_corners_question", "check_integrated_gradients",
    "check_grad_cam_pp_weights", "check_grad_cam_weights", "check_gradcam_artifacts_question",
    "check_occlusion", "check_occlusion_ink_question", "check_occlusion_masks", "check_effective_samples",
    "check_lime_kernel", "check_lime_ruler_question", "check_coalition_sizes", "check_shap_ruler_question",
    "check_shapley", "check_fft_scale", "check_ruler_channels_question", "check_conv_transpose",
    "check_deconvnet_class_question", "check_ink_question", "check_tcav_score", "check_debiased_vit_question",
    "check_rollout", "check_randomized", "check_sanity_question", "check_deletion_scores",
    "check_guided_backprop_randomization_question", "check_artifact_latent_question", "check_topk_sae",
    "check_flip_rate", "check_shortcut_question",
]
