"""helpers.featurevis: objectives, visualize, dataset search, receptive fields."""

import math
from functools import partial

import pytest
import timm
import torch
import torchvision
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
from helpers.hooks import count_hooks, count_passes


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


# ---- models a learner brings (issue 25): shared modules, unused modules, token layers, sizes ----

class _Learners(nn.Module):
    """One ReLU module called twice (as torchvision's BasicBlock calls its ``relu``), and a conv the
    model holds but its forward never calls (as inception_v3's AuxLogits in eval mode)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu, self.spare, self.fc = nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).mean((2, 3)))


class _Tokens(nn.Module):
    """A ViT in miniature: 8x8 patches -> tokens [B, T, C] (token t is patch (t // 8, t % 8) at 64 px)
    -> a per-token linear ``block`` -> the mean token -> ``head``."""

    def __init__(self):
        super().__init__()
        self.patch, self.block, self.head = nn.Conv2d(3, 6, 8, stride=8), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.block(self.patch(x).flatten(2).transpose(1, 2)).mean(1))


def _seeded(factory, **kwargs):
    torch.manual_seed(0)
    return factory(**kwargs).eval()


@pytest.fixture(scope="module")
def learners():
    return _seeded(_Learners)


@pytest.fixture(scope="module")
def tokens():
    return _seeded(_Tokens)


@pytest.fixture(scope="module")
def resnet18():
    return _seeded(torchvision.models.resnet18, num_classes=10)


@pytest.fixture(scope="module")
def vit():
    return _seeded(timm.create_model, model_name="vit_tiny_patch16_224", pretrained=False, img_size=64,
                   num_classes=10)


@pytest.fixture(scope="module")
def six():
    return torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _layer_output(model, layer, x):
    """The layer's output, by a plain forward hook (the brute-force reference)."""
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen


def test_a_module_that_runs_twice_is_refused(learners, resnet18, six):
    """torchvision's BasicBlock calls one ReLU module twice: each helper that records it refuses."""
    assert len(_layer_output(resnet18, "layer4.1.relu", six[:2])) == 2
    for model, layer in ((learners, "relu"), (resnet18, "layer4.1.relu")):
        for call in (partial(top_activating, model, layer, 3, six, k=3),
                     partial(receptive_field, model, layer, 0, 0, image_size=32, batch_size=16),
                     partial(visualize, model, channel(layer, 0), steps=1, size=32)):
            with pytest.raises(ValueError, match=f"layer '{layer}' ran 2 times in one forward pass"):
                call()
        assert count_hooks(model) == 0 and not model.training


def test_a_module_that_never_runs_is_named(learners, six):
    """A module the model holds but does not call: one message from every helper."""
    googlenet = _seeded(torchvision.models.googlenet, num_classes=10, aux_logits=True, init_weights=False)
    for model, layer in ((learners, "spare"), (googlenet, "aux1")):
        for call in (partial(top_activating, model, layer, 0, six[:2, :, :32, :32], k=1),
                     partial(receptive_field, model, layer, 0, 0, image_size=32, batch_size=2),
                     partial(visualize, model, channel(layer, 0), steps=1, size=32),
                     partial(visualize, model, class_logit(0), steps=1, size=32, diversity_layer=layer,
                             diversity_weight=1.0)):
            with pytest.raises(ValueError, match=f"layer '{layer}' did not run in the forward pass"):
                call()
        assert count_hooks(model) == 0 and all(p.grad is None for p in model.parameters())


def test_a_token_layer_has_its_channels_last(tokens, vit, six):
    """A ViT block outputs [B, T, C]: channel c is entry c of every token, the position is the token."""
    for model, layer, c, n_channels in ((tokens, "block", 4, 6), (vit, "blocks.5", 100, 192)):
        (out,) = _layer_output(model, layer, six)
        assert out.dim() == 3 and out.shape[-1] == n_channels
        index, y, x, value = top_activating(model, layer, c, six, k=3, batch_size=4)
        best, token = out[..., c].max(1)
        expected = best.topk(3)
        assert torch.equal(index, expected.indices) and torch.equal(value, expected.values)
        assert torch.equal(y, token[index]) and torch.equal(x, torch.zeros_like(x))
        last = n_channels - 1
        with pytest.raises(ValueError, match=rf"channel {n_channels} is out of range .* \(channels 0..{last}\)"):
            top_activating(model, layer, n_channels, six, k=1)
        # visualize maximizes the channel's mean over tokens: with lr=0 the image is the start image
        img, history = visualize(model, channel(layer, c), steps=1, lr=0.0, transforms=None, return_history=True)
        (at_start,) = _layer_output(model, layer, img)
        assert history[0] == pytest.approx(float(at_start[0, :, c].mean()), abs=1e-6)
        one = neuron(layer, c, 2, 0)({layer: out}, None)
        assert torch.equal(one, out[:, 2, c])
        v = torch.randn(n_channels, generator=torch.Generator().manual_seed(1))
        along = direction(layer, v)
        along.check(model, {layer: out}, None)
        assert torch.allclose(along({layer: out}, None), (out @ (v / v.norm())).mean(1), atol=1e-6)
        with pytest.raises(ValueError, match=r"position \(y=0, x=1\) is outside"):
            visualize(model, neuron(layer, c, 0, 1), steps=1)
        assert count_hooks(model) == 0


def test_a_token_sees_its_patch(tokens, vit):
    """receptive_field on tokens: position (y, 0) is token y; a patch token sees its patch, a token
    after attention sees the whole image."""
    for t in (0, 9, 63):
        assert receptive_field(tokens, "block", t, 0, batch_size=32) == (8 * (t // 8), 8 * (t % 8),
                                                                         8 * (t // 8) + 8, 8 * (t % 8) + 8)
    for t in (0, 6):  # timm's patch_embed: 16 px patches, 4x4 of them at 64 px
        assert receptive_field(vit, "patch_embed", t, 0, batch_size=64) == (16 * (t // 4), 16 * (t % 4),
                                                                             16 * (t // 4) + 16, 16 * (t % 4) + 16)
    assert receptive_field(vit, "blocks.0", 3, 0, batch_size=64) == (0, 0, 64, 64)
    with pytest.raises(ValueError, match=r"outside layer 'blocks.0'.*17 tokens"):
        receptive_field(vit, "blocks.0", 17, 0, batch_size=64)


def test_receptive_field_is_the_same_for_every_batch_size(resnet18):
    net = _plain_net()
    units = [(0, 0), (3, 5), (7, 7)]
    expected = [receptive_field(net, "3", y, x, image_size=32) for y, x in units]
    for batch_size in (1, 7, 65, 1000):
        assert [receptive_field(net, "3", y, x, image_size=32, batch_size=batch_size) for y, x in units] == expected
    with count_passes(net) as passes:
        receptive_field(net, "3", 3, 5, image_size=32, batch_size=7)
    assert passes.forward_calls == math.ceil(passes.forward_images / 7) and passes.forward_images >= 64
    boxes = {bs: receptive_field(resnet18, "layer2", 1, 2, image_size=32, batch_size=bs) for bs in (13, 128)}
    assert boxes[13] == boxes[128] == receptive_field(resnet18, "layer2", 1, 2, image_size=32)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        receptive_field(net, "3", 0, 0, batch_size=0)


def test_a_layer_given_as_a_module_is_named_in_one_line():
    resnet50 = _seeded(torchvision.models.resnet50, num_classes=10)
    layer4 = resnet50.layer4
    assert len(repr(layer4)) > 2000
    x = torch.rand(2, 3, 32, 32)
    calls = (lambda: top_activating(resnet50, layer4, 5000, x, k=1),
             lambda: receptive_field(resnet50, layer4, 3, 0, image_size=16),
             lambda: visualize(resnet50, channel(layer4, 5000), steps=1, size=32),
             lambda: visualize(resnet50, neuron(layer4, 0, 5, 0), steps=1, size=32),
             lambda: visualize(resnet50, direction(layer4, torch.ones(7)), steps=1, size=32))
    for call in calls:
        with pytest.raises(ValueError, match="layer 'layer4'") as error:
            call()
        assert len(str(error.value)) < 300
    assert len(repr(channel(layer4, 3))) < 100


class _NaNAfter(nn.Module):
    def forward(self, x):
        return x * float("nan")


def test_non_finite_input_or_scores_get_a_clear_error(six):
    net = nn.Sequential(_plain_net(), _NaNAfter()).eval()
    bad = six.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="images holds 1 NaN"):
        top_activating(net, "0", 0, bad, k=1)
    with pytest.raises(ValueError, match="images holds 1 NaN"):
        colour_correlation_sqrt(bad)
    with pytest.raises(ValueError, match="images holds 1 NaN"):
        crop_boxes(bad, [(0, 0, 8, 8)] * 6)
    with pytest.raises(ValueError, match="colour holds NaN or inf"):
        visualize(net, class_logit(0), steps=1, colour=torch.tensor([[float("nan"), 0, 0], [0, 1, 0], [0, 0, 1]]))
    # a model whose layer (or logits) are NaN on finite images
    broken = _seeded(torchvision.models.resnet18, num_classes=10)
    with torch.no_grad():
        broken.layer4[1].bn2.bias.fill_(float("nan"))
    for model, layer in ((net, "1"), (broken, "layer4")):
        with pytest.raises(ValueError, match="NaN or inf"):
            top_activating(model, layer, 0, six, k=1)
        with pytest.raises(ValueError, match="NaN or inf"):
            visualize(model, channel(layer, 0), steps=1, size=32)
        with pytest.raises(ValueError, match="NaN or inf"):
            receptive_field(model, layer, 0, 0, image_size=16)
        assert count_hooks(model) == 0


def test_helpers_follow_the_models_dtype(six):
    """float64 models and images give float64 results (no tensor made in float32 on the side)."""
    net = _plain_net().double()
    x = six.double()
    img = visualize(net, channel("3", 1), steps=2, colour=colour_correlation_sqrt(x))
    assert img.dtype == torch.float64
    assert top_activating(net, "3", 1, x, k=2)[3].dtype == torch.float64
    assert receptive_field(net, "3", 2, 2, image_size=32) == receptive_field(_plain_net(), "3", 2, 2, image_size=32)
    assert colour_correlation_sqrt(x).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_helpers_run_on_the_gpu(six):
    for model, layer in ((_plain_net().cuda(), "3"), (_seeded(_Tokens).cuda(), "block")):
        x = six.cuda()
        index, y, xx, value = top_activating(model, layer, 1, x, k=2)
        assert index.is_cuda and value.is_cuda
        assert receptive_field(model, layer, 1, 0, image_size=64) == receptive_field(model.cpu(), layer, 1, 0)
        model.cuda()
        assert visualize(model, channel(layer, 1), steps=2, colour=colour_correlation_sqrt(x)).is_cuda


def test_recorded_values_survive_in_place_ops_after_the_layer():
    """torchvision's BasicBlock adds the identity to bn2's output in place, then rectifies it in
    place: top_activating and visualize's objectives must read bn2's own output (found by review:
    top_activating returned 0.81 where bn2's largest value was 0.64)."""
    import torchvision

    from helpers.hooks import capture

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    index, _, _, values = top_activating(model, "layer1.0.bn2", 1, images, k=3)
    with capture(model, "layer1.0.bn2") as rec, torch.no_grad():
        model(images)
    best = rec.activation[:, 1].flatten(1).amax(1)
    assert torch.equal(index, best.topk(3).indices) and torch.allclose(values, best.topk(3).values)
    assert (rec.activation[:, 1] < 0).any()  # bn2's output has negative values that the in-place ReLU would zero
