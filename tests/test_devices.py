"""Every method keeps its tensors on x's device and dtype: run on CUDA when a GPU is present.

On a machine without a GPU every test here is skipped. Each method runs on DermNet (or DermViT)
on the GPU and on the CPU, from the same inputs; the result must be on the GPU, in x's dtype, and
equal the CPU's up to the GPUs' round-off (TF32 off). Methods that draw from the global RNG
(whose streams differ between devices) are compared by shape, device and dtype only.
"""

import copy

import pytest
import torch

from helpers import attention as A
from helpers import cam as CAM
from helpers import concepts as C
from helpers import deconv as D
from helpers import evaluation as E
from helpers import featurevis as FV
from helpers import gradients as G
from helpers import metrics as M
from helpers import perturbation as P
from helpers import playbook as PB
from helpers import sae as S
from helpers import sanity as SN
from helpers.data import make_dataset
from helpers.hooks import count_hooks
from helpers.models import load_dermnet, load_vit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def _segments(x):
    seg = torch.zeros(64, 64, dtype=torch.long, device=x.device)
    seg[32:] += 1
    seg[:, 32:] += 2
    return seg


def _first(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple):
        return out[0]
    for name in ("values", "scores", "labels", "images"):
        if hasattr(out, name):
            return getattr(out, name)
    return out


def _sae_codes(model, x):
    acts = S.layer_vectors(model, x, "layer4")
    sae = S.TopKSAE(acts.shape[1], 16, k=2).to(x.device)
    S.train_sae(sae, acts, steps=3, batch_size=8, progress=False)
    return S.latent_codes(sae, acts)


# name: (method(model, x, t), same numbers on both devices?)
CNN = {
    "saliency": (lambda m, x, t: G.saliency(m, x, t), True),
    "gradient_x_input": (lambda m, x, t: G.gradient_x_input(m, x, t), True),
    "smoothgrad": (lambda m, x, t: G.smoothgrad(m, x, t, n_samples=4, generator=torch.Generator().manual_seed(0)),
                   True),  # a CPU generator: the same noise on both devices
    "smoothgrad_global_rng": (lambda m, x, t: G.smoothgrad(m, x, t, n_samples=4, variant="var"), False),
    "integrated_gradients": (lambda m, x, t: G.integrated_gradients(m, x, t, steps=4), True),
    "ig_baselines": (lambda m, x, t: sum(G.integrated_gradients(m, x, t, baseline=b, steps=3)
                                         for b in ("blur", "mean", "noise")), False),
    "cam": (lambda m, x, t: CAM.cam(m, x, t), True),
    "grad_cam": (lambda m, x, t: CAM.grad_cam(m, x, t), True),
    "grad_cam_pp": (lambda m, x, t: CAM.grad_cam_pp(m, x, t), True),
    "score_cam": (lambda m, x, t: CAM.score_cam(m, x, t), True),
    "guided_backprop": (lambda m, x, t: CAM.guided_backprop(m, x, t), True),
    "guided_grad_cam": (lambda m, x, t: CAM.guided_grad_cam(m, x, t), True),
    "deconvnet": (lambda m, x, t: D.deconvnet(m, x, t), True),
    "unit_projection": (lambda m, x, t: D.unit_projection(m, x, "layer3", 1, 1, 1), True),
    "zeiler_fergus": (lambda m, x, t: D.zeiler_fergus(m, x, "layer3", 1, 1, 1), True),
    "occlusion": (lambda m, x, t: P.occlusion(m, x, t, window=16, stride=16), True),
    "superpixels": (lambda m, x, t: P.superpixels(x[0]), True),
    "lime": (lambda m, x, t: P.lime(m, x, t, _segments(x), n_samples=20).values, True),
    "kernel_shap": (lambda m, x, t: P.kernel_shap(m, x, t, _segments(x), n_samples=20), True),
    "exact_shapley": (lambda m, x, t: P.exact_shapley(m, x, t, _segments(x)), True),
    "expected_gradients": (lambda m, x, t: P.expected_gradients(m, x, t, x.flip(0), n_samples=4), True),
    "top_activating": (lambda m, x, t: FV.top_activating(m, "layer3", 2, x, k=2)[3], True),
    "receptive_field": (lambda m, x, t: torch.tensor(FV.receptive_field(m, "layer2", 1, 1)), True),
    "visualize": (lambda m, x, t: _first(FV.visualize(m, FV.channel("layer3", 1), steps=2)), False),
    "layer_activations": (lambda m, x, t: C.layer_activations(m, "layer3", x), True),
    "layer_gradients": (lambda m, x, t: C.layer_gradients(m, "layer3", x, t)["layer3"][1], True),
    "tcav_score": (lambda m, x, t: torch.tensor(C.tcav_score(m, "layer3", torch.ones(C.layer_activations(
        m, "layer3", x[:1]).shape[1], device=x.device), x, t)), True),
    "deletion": (lambda m, x, t: E.deletion(m, x, t, G.saliency(m, x, t), steps=4).scores, True),
    "insertion": (lambda m, x, t: E.insertion(m, x, t, G.saliency(m, x, t), steps=4).scores, True),
    "road": (lambda m, x, t: E.road(m, x, t, G.saliency(m, x, t), steps=3).scores, False),
    "infidelity": (lambda m, x, t: E.infidelity(m, x, t, G.saliency(m, x, t), E.noise_perturbation(),
                                                n_samples=3), False),
    "sensitivity_max": (lambda m, x, t: E.sensitivity_max(G.saliency, m, x, t, n_samples=3), False),
    "faithfulness_correlation": (lambda m, x, t: E.faithfulness_correlation(m, x, t, G.saliency(m, x, t),
                                                                            n_runs=5, subset_size=16), True),
    "randomized": (lambda m, x, t: SN.randomized(m, ["fc"])(x), False),
    "sae": (lambda m, x, t: _sae_codes(m, x), False),
    "spray": (lambda m, x, t: PB.spray(G.saliency(m, x.repeat(4, 1, 1, 1), t.repeat(4)).sum(1, keepdim=True)
                                       + torch.rand(16, 1, 64, 64, device=x.device), n_neighbors=3).labels, False),
    "mask_mass": (lambda m, x, t: M.mask_mass(G.saliency(m, x, t).sum(1, keepdim=True), x[:, :1] > 0.5), True),
    "pointing_game": (lambda m, x, t: M.pointing_game(G.saliency(m, x, t).sum(1, keepdim=True), x[:, :1] > 0.5),
                      True),
}

VIT = {
    "attention_maps": (lambda m, x, t: torch.stack(A.attention_maps(m, x)), True),
    "rollout": (lambda m, x, t: A.rollout(A.attention_maps(m, x)), True),
    "relevance": (lambda m, x, t: A.relevance(m, x, t), True),
    "grad_cam_tokens": (lambda m, x, t: CAM.grad_cam(m, x, t, "blocks.3", reshape=A.tokens_to_grid), True),
    "saliency": (lambda m, x, t: G.saliency(m, x, t), True),
}


FLOAT64 = {"rollout"}  # documented: a product of many stochastic matrices, kept in float64


@pytest.fixture(scope="module")
def images():
    ds = make_dataset(4, seed=0)
    return ds.images, ds.labels


@pytest.fixture(scope="module", autouse=True)
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _check(model_cpu, table, name, images, device="cuda"):
    method, same = table[name]
    x, t = images
    gpu = copy.deepcopy(model_cpu).to(device)
    xg, tg = x.to(device), t.to(device)
    torch.manual_seed(0)
    out = _first(method(gpu, xg, tg))
    assert out.device.type == device, f"{name} returned a tensor on {out.device}"
    if out.is_floating_point():
        assert out.dtype == (torch.float64 if name in FLOAT64 else x.dtype), name
    assert count_hooks(gpu) == 0 and all(p.grad is None for p in gpu.parameters())
    if same:
        torch.manual_seed(0)
        ref = _first(method(model_cpu, x, t))
        assert out.shape == ref.shape
        scale = ref.double().abs().max().clamp_min(1e-12)
        assert ((out.cpu().double() - ref.double()).abs().max() / scale) < 1e-3, name


@pytest.mark.parametrize("name", list(CNN))
def test_cnn_methods_on_cuda(images, name):
    _check(load_dermnet("shortcut"), CNN, name, images)


@pytest.mark.parametrize("name", list(VIT))
def test_vit_methods_on_cuda(images, name):
    _check(load_vit("shortcut"), VIT, name, images)


def test_auto_batches_on_the_gpu_give_the_cpus_numbers_and_respect_the_budget():
    """batch_size="auto" counts a CUDA pass's tensors as a CPU pass's (the clocks synchronized):
    the result is the one-pass result, and no pass's tensors exceed the budget's counted share."""
    from helpers import batching

    model = load_dermnet("shortcut").cuda()
    ds = make_dataset(4, clinic="A", seed=0)
    x, t = ds.images.cuda(), ds.labels.cuda()
    batching.forget()
    with torch.backends.cudnn.flags(deterministic=True, benchmark=False):
        auto = G.integrated_gradients(model, x, t, steps=64, batch_size="64MB")
        whole = G.integrated_gradients(model, x, t, steps=64, batch_size=10**6)
    assert auto.is_cuda and torch.allclose(auto, whole, atol=1e-5, rtol=1e-4)
    learnt = batching._learnt[batching.workload("gradient", model, x)]
    assert learnt.fixed_bytes + learnt.size * learnt.bytes_per_sample <= batching.COUNTED_SHARE * 64e6 + 1
    batching.forget()
