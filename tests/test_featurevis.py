"""helpers.featurevis: objectives, visualize, dataset search, receptive fields."""

import pytest
import torch
from torch import nn

from helpers.data import MEL
from helpers.featurevis import (
    channel,
    class_logit,
    colour_correlation_sqrt,
    crop_boxes,
    direction,
    fft_image,
    fft_scale,
    neuron,
    receptive_field,
    to_rgb,
    top_activating,
    visualize,
)
from helpers.hooks import count_hooks


def _plain_net():
    """conv3 -> relu -> maxpool2 -> conv3 (stride 2) -> relu: receptive fields known by hand."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU()).eval()


def test_receptive_field_matches_the_textbook_formula():
    net = _plain_net()
    # sizes: conv3 gives 3 (jump 1), maxpool 2 gives 4 (jump 2), the stride-2 conv3 4 + 2 * 2 = 8.
    # Unit y reads pooled rows 2y-1 .. 2y+1, i.e. conv1 rows 4y-2 .. 4y+3, i.e. input rows 4y-3 .. 4y+4.
    for y in range(1, 7):
        top, left, bottom, right = receptive_field(net, "3", y, y, image_size=32)
        assert bottom - top == 8 and right - left == 8
        assert top == 4 * y - 3
    assert receptive_field(net, "3", 0, 0, image_size=32) == (0, 0, 5, 5)  # clipped at the edge


def test_receptive_field_on_dermnet_sees_residual_branches(shortcut):
    assert receptive_field(shortcut, "conv1", 3, 3) == (2, 2, 5, 5)
    assert receptive_field(shortcut, "layer1", 3, 3) == (1, 1, 13, 13)
    top, left, bottom, right = receptive_field(shortcut, "layer3", 4, 4)
    assert bottom - top == 48 and right - left == 48  # grows with every 3x3 conv and stride
    assert receptive_field(shortcut, "avgpool", 0, 0) == (0, 0, 64, 64)
    with pytest.raises(ValueError, match="outside layer 'layer4'"):
        receptive_field(shortcut, "layer4", 8, 0)
    assert count_hooks(shortcut) == 0


def test_top_activating_is_the_brute_force_answer(shortcut, batch):
    images = batch[0]
    index, y, x, value = top_activating(shortcut, "layer4", 5, images, k=3, batch_size=3)
    with torch.no_grad():
        acts = shortcut.features(images)[:, 5]  # layer4 output
    per_image, where = acts.flatten(1).max(1)
    expected = per_image.topk(3)
    assert torch.equal(index, expected.indices)
    assert torch.allclose(value, expected.values, atol=1e-5)
    assert torch.equal(y * 8 + x, where[index])
    assert (value[:-1] >= value[1:]).all() and count_hooks(shortcut) == 0


def test_top_activating_checks_its_input(shortcut, batch):
    images = batch[0]
    with pytest.raises(ValueError, match="channel 128 is out of range"):
        top_activating(shortcut, "layer4", 128, images, k=2)
    with pytest.raises(ValueError, match="not a module"):
        top_activating(shortcut, "layer5", 0, images, k=2)
    with pytest.raises(ValueError, match="k must be between"):
        top_activating(shortcut, "layer4", 0, images, k=9)
    assert count_hooks(shortcut) == 0


def test_objectives_add_and_scale():
    outputs = {"l": torch.arange(2 * 3 * 2 * 2.0).view(2, 3, 2, 2)}
    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    a, b = channel("l", 1), class_logit(0)
    combined = a + 0.5 * b - neuron("l", 2, 1, 0)
    expected = outputs["l"][:, 1].mean((1, 2)) + 0.5 * logits[:, 0] - outputs["l"][:, 2, 1, 0]
    assert torch.allclose(combined(outputs, logits), expected)
    assert set(combined.layers) == {"l"}
    d = direction("l", torch.tensor([0.0, 3.0, 4.0]))  # unit vector (0, 0.6, 0.8) at every position
    assert torch.allclose(d(outputs, logits), (0.6 * outputs["l"][:, 1] + 0.8 * outputs["l"][:, 2]).mean((1, 2)))


def test_objectives_name_what_is_wrong(shortcut):
    for objective, words in ((channel("layer4", 128), "channel 128 is out of range"),
                             (neuron("layer4", 0, 8, 0), r"outside layer 'layer4'"),
                             (neuron("fc", 0, 0, 0), "needs a layer with a spatial grid"),
                             (class_logit(7), "class 7 is out of range"),
                             (direction("layer4", torch.ones(5)), "give one entry per channel")):
        with pytest.raises(ValueError, match=words):
            visualize(shortcut, objective, steps=1)
    with pytest.raises(ValueError, match="not a module"):
        visualize(shortcut, channel("layer9", 0), steps=1)
    with pytest.raises(TypeError, match="objective must be"):
        visualize(shortcut, lambda o, z: z[:, 0], steps=1)
    assert count_hooks(shortcut) == 0


def test_visualize_raises_the_objective_and_leaves_the_model_alone(shortcut):
    flags = [p.requires_grad for p in shortcut.parameters()]
    state = {k: v.clone() for k, v in shortcut.state_dict().items()}
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    img, history = visualize(shortcut, class_logit(MEL), steps=24, return_history=True)
    assert torch.rand(1) == before  # the caller's random stream is untouched
    assert img.shape == (1, 3, 64, 64) and 0 <= img.min() and img.max() <= 1
    assert sum(history[-4:]) / 4 > sum(history[:4]) / 4 + 1
    assert [p.requires_grad for p in shortcut.parameters()] == flags
    assert all(p.grad is None for p in shortcut.parameters())
    assert all(torch.equal(v, state[k]) for k, v in shortcut.state_dict().items())
    assert count_hooks(shortcut) == 0 and not shortcut.training


def test_visualize_is_deterministic_from_its_seed(shortcut):
    a = visualize(shortcut, channel("layer3", 2), steps=6, n=2, seed=3)
    b = visualize(shortcut, channel("layer3", 2), steps=6, n=2, seed=3)
    c = visualize(shortcut, channel("layer3", 2), steps=6, n=2, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_every_option_runs(shortcut, batch):
    colour = colour_correlation_sqrt(batch[0])
    img = visualize(shortcut, channel("layer4", 1), steps=4, n=2, param="pixel", transforms=None, l2=1e-3,
                    tv=0.1, blur_every=2, colour=colour, diversity_layer="layer3", diversity_weight=1.0)
    assert img.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="blur_every applies to param='pixel'"):
        visualize(shortcut, channel("layer4", 1), steps=2, blur_every=1)


def test_fft_parameterization_against_torch_fft():
    torch.manual_seed(0)
    spectrum = torch.randn(1, 3, 16, 9, 2)
    scale = fft_scale(16)
    direct = torch.fft.irfft2(torch.complex(spectrum[..., 0], spectrum[..., 1]) * scale, s=(16, 16), norm="ortho") / 4
    assert torch.allclose(fft_image(spectrum, 16), direct, atol=1e-6)
    assert scale[0, 0] == scale[0, 1] and scale[0, 1] > scale[4, 4]  # 1/f, the DC term capped


def test_colour_square_root_reproduces_the_covariance(batch):
    images = batch[0]
    sqrt = colour_correlation_sqrt(images)
    cov = torch.cov(images.permute(1, 0, 2, 3).reshape(3, -1).double()).float()
    rebuilt = sqrt @ sqrt.T
    assert torch.allclose(rebuilt / rebuilt.max(), cov / cov.max(), atol=1e-4)


def test_crop_boxes_resizes_each_box():
    images = torch.rand(2, 3, 64, 64)
    crops = crop_boxes(images, [(0, 0, 16, 16), (10, 20, 42, 52)], size=32)
    assert crops.shape == (2, 3, 32, 32)
    assert torch.allclose(crops[1], images[1, :, 10:42, 20:52])  # same size: unchanged


def test_fourier_parameterization_and_ascent_match_lucent(shortcut, batch):
    """torch-lucent (lucid for PyTorch), with DermSynth's colour matrix in place of ImageNet's: the
    same start from the same seed, the same forward map, and the same images after 5 Adam steps
    without transforms."""
    from helpers.featurevis import lucent_reference

    colour = colour_correlation_sqrt(batch[0])
    spectrum, start, theirs, leaked = lucent_reference(shortcut, "layer4", 3, colour, steps=5)
    assert torch.allclose(to_rgb(fft_image(spectrum, 64), colour), start, atol=1e-6)
    assert leaked > 0 and count_hooks(shortcut) == 0  # lucent leaves hooks; the reference removes them
    assert all(p.grad is None for p in shortcut.parameters())
    ours = visualize(shortcut, channel("layer4", 3), steps=5, n=2, seed=0, transforms=None, colour=colour)
    assert torch.allclose(ours, theirs, atol=1e-5)
