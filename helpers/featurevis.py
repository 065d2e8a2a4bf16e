"""What a unit wants to see: objectives, feature visualization, dataset search, receptive fields.

    channel, neuron, class_logit, direction   objectives; they add and scale like lucid's
    visualize          gradient ascent on an image (pixel or Fourier parameterization)
    top_activating     the k images of a set that excite a channel most, and where
    receptive_field    the input box a unit at (y, x) of a layer can see, from the architecture
    crop_boxes         those boxes cut out of the images, resized to one size for a grid
    as_grid            how they all read a layer: [B, C, h, w]; tokens [B, T, C] with channels last

An objective maps what the model computed on a batch of images to one score per image; the
visualization maximizes it. Objectives combine: ``class_logit(4) + 0.5 * channel("layer4", 7)``.

Every helper reads a layer as a grid of channels (``as_grid``): a CNN's feature map ``[B, C, h, w]``
as it is; a token layer ``[B, T, C]`` (a ViT block) with its channels last, as a T x 1 grid whose
position (y, 0) is token y; a vector ``[B, C]`` as a 1 x 1 grid. A layer must run exactly once in a
forward pass (a module called twice, such as torchvision's shared ReLU, is refused).

Every hook lives inside a ``with`` block and is removed even when the model raises; the model's
parameters keep their ``requires_grad`` and get no ``.grad``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .batching import run_batches, workload
from .contract import check_batch_size, check_count, check_input, check_model, check_scores
from .hooks import did_not_run, layer_name, ran_more_than_once, resolve_layer

# ---- objectives ----


class Objective:
    """A score per image, computed from the recorded layer outputs and the model's logits.

    ``fn(outputs, logits) -> [n]`` where ``outputs`` maps each layer in ``layers`` to its output.
    ``check(model, outputs, logits)`` validates the objective against the model once, before optimizing.
    """

    def __init__(self, fn, layers=(), name: str = "objective", checks=()):
        self.fn, self.layers, self.name, self.checks = fn, tuple(layers), name, tuple(checks)

    def __call__(self, outputs: dict, logits: torch.Tensor) -> torch.Tensor:
        return self.fn(outputs, logits)

    def check(self, model: nn.Module, outputs: dict, logits: torch.Tensor) -> None:
        for check in self.checks:
            check(model, outputs, logits)

    def __add__(self, other):
        if isinstance(other, int | float) and not isinstance(other, bool):
            return Objective(lambda o, z: self(o, z) + other, self.layers, f"{self.name} + {other}", self.checks)
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda o, z: self(o, z) + other(o, z), self.layers + other.layers,
                         f"{self.name} + {other.name}", self.checks + other.checks)

    __radd__ = __add__

    def __mul__(self, scale):
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            return NotImplemented
        return Objective(lambda o, z: scale * self(o, z), self.layers, f"{scale} * {self.name}", self.checks)

    __rmul__ = __mul__

    def __neg__(self):
        return -1 * self

    def __sub__(self, other):
        return self + (-1 * other)

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def as_grid(output: torch.Tensor) -> torch.Tensor:
    """A layer's output as a grid of channels ``[B, C, h, w]`` (a view, no copy): a feature map as it
    is; a token layer ``[B, T, C]`` as ``[B, C, T, 1]`` (channel c is entry c of every token's vector,
    position (y, 0) is token y, the CLS token first in a timm ViT); a vector ``[B, C]`` as
    ``[B, C, 1, 1]``. (A 4-D output with its channels last, as inside a torchvision ConvNeXt block
    or a Swin stage, cannot be told from a feature map: pick the module after the permute.)"""
    if output.dim() == 4:
        return output
    if output.dim() == 3:
        return output.transpose(1, 2)[..., None]
    if output.dim() == 2:
        return output[..., None, None]
    raise ValueError(f"a layer output of shape {tuple(output.shape)} is not a feature map [B, C, h, w], "
                     "tokens [B, T, C] or a vector [B, C]")


def _shape(output) -> str:
    """How the helpers read ``output``, for messages."""
    if output.dim() == 3:
        return f"{output.shape[1]} tokens of {output.shape[2]} channels (a token layer [B, T, C]: channels last)"
    return f"output {tuple(output.shape[1:])}"


def _check_layer(layer):
    def check(model, outputs, logits):
        out = outputs[layer]
        if not isinstance(out, torch.Tensor) or not 2 <= out.dim() <= 4:
            what = tuple(out.shape) if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
            raise ValueError(f"layer {layer_name(model, layer)} outputs {what}, not a feature map [B, C, h, w], "
                             "tokens [B, T, C] or a vector [B, C]")
    return check


def _check_channel(layer, c):
    def check(model, outputs, logits):
        act = outputs[layer]
        n = as_grid(act).shape[1]
        if not 0 <= c < n:
            raise ValueError(f"channel {c} is out of range for layer {layer_name(model, layer)} with "
                             f"{_shape(act)} (channels 0..{n - 1})")
    return check


def _check_position(model, layer, output, y, x):
    h, w = as_grid(output).shape[-2:]
    if output.dim() == 3 and not (0 <= y < h and x == 0):
        raise ValueError(f"position (y={y}, x={x}) is outside layer {layer_name(model, layer)}'s {h} tokens: "
                         "on a token layer [B, T, C] the position is (token, 0)")
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"position (y={y}, x={x}) is outside layer {layer_name(model, layer)}'s {h}x{w} grid")


def _int(value, name):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def channel(layer, c: int) -> Objective:
    """The mean activation of channel ``c`` of ``layer`` over its positions (over its tokens, for a
    token layer [B, T, C], whose channels are the last axis)."""
    _int(c, "channel")
    return Objective(lambda o, z: as_grid(o[layer])[:, c].flatten(1).mean(1), [layer],
                     f"channel({layer_name(None, layer)}, {c})", [_check_layer(layer), _check_channel(layer, c)])


def neuron(layer, c: int, y: int, x: int) -> Objective:
    """One neuron: channel ``c`` of ``layer`` at position (y, x) of its grid (at token y, with x = 0,
    for a token layer [B, T, C])."""
    for v, n in ((c, "channel"), (y, "y"), (x, "x")):
        _int(v, n)

    def check_position(model, outputs, logits):
        if outputs[layer].dim() == 2:
            raise ValueError(f"neuron needs a layer with a spatial grid [B, C, h, w] or tokens [B, T, C]; "
                             f"layer {layer_name(model, layer)} outputs {tuple(outputs[layer].shape)}: "
                             "use channel(layer, c)")
        _check_position(model, layer, outputs[layer], y, x)

    return Objective(lambda o, z: as_grid(o[layer])[:, c, y, x], [layer],
                     f"neuron({layer_name(None, layer)}, {c}, {y}, {x})",
                     [_check_layer(layer), check_position, _check_channel(layer, c)])


def class_logit(c: int) -> Objective:
    """The logit of class ``c`` (Simonyan et al. 2014's class model, with an L2 penalty in ``visualize``)."""
    _int(c, "class")

    def check(model, outputs, logits):
        if not 0 <= c < logits.shape[1]:
            raise ValueError(f"class {c} is out of range for a model with {logits.shape[1]} outputs")

    return Objective(lambda o, z: z[:, c], [], f"class_logit({c})", [check])


def direction(layer, vector) -> Objective:
    """A direction in ``layer``'s activation space: the mean over positions of <a(y, x), v> / |v|.

    ``vector`` has one entry per channel (``[C]``: the same direction at every position, or every
    token, as a CAV or an SAE latent read at each position), or the shape of one image's whole
    activation (``[C, h, w]``, ``[T, C]`` or flattened: a direction in the space that
    ``concepts.layer_activations`` flattens, as a CAV trained on it).
    """
    v = torch.as_tensor(vector, dtype=torch.float32).detach()
    if v.norm() == 0 or not torch.isfinite(v).all():
        raise ValueError("vector must be finite and not all zero")
    v = v / v.norm()

    def per_channel(act):
        return v.dim() == 1 and v.numel() == as_grid(act).shape[1]

    def score(o, z):
        act = o[layer]
        if per_channel(act):
            return torch.einsum("bc...,c->b...", as_grid(act), v.to(act)).flatten(1).mean(1)
        return act.flatten(1) @ v.flatten().to(act)

    def check(model, outputs, logits):
        act = outputs[layer]
        if not per_channel(act) and v.numel() != act[0].numel():
            raise ValueError(f"vector has shape {tuple(v.shape)}; layer {layer_name(model, layer)} has {_shape(act)}: "
                             f"give one entry per channel ({as_grid(act).shape[1]}) or one per activation "
                             f"({act[0].numel()})")

    return Objective(score, [layer], f"direction({layer_name(None, layer)})", [_check_layer(layer), check])


class _Outputs(dict):
    """``{layer: what its hook kept}`` for one forward pass; ``run(x)`` makes that pass."""

    def __init__(self, model, layers):
        super().__init__()
        self.model, self.calls = model, dict.fromkeys(layers, 0)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """``model(x)``, after which every layer has run exactly once (else the error that says so)."""
        self.clear()
        self.calls = dict.fromkeys(self.calls, 0)
        logits = self.model(x)
        for layer, calls in self.calls.items():
            if calls == 0:
                raise did_not_run(self.model, layer)
            if calls > 1:
                raise ran_more_than_once(self.model, layer, calls)
        return logits


@contextmanager
def _recording(model, layers, keep=lambda output: output):
    """Forward hooks that put ``keep(output)`` of each layer's first call in a dict, the live output
    by default (for gradients); ``outputs.run(x)`` runs the model and checks each layer ran once.
    The model carries on with a copy, so a later in-place operation (``out += identity``, a
    ``ReLU(inplace=True)``) cannot change what was recorded.
    The hooks are removed when the block ends, also when it raises."""
    outputs = _Outputs(model, list(dict.fromkeys(layers)))
    modules = [(layer, resolve_layer(model, layer)) for layer in outputs.calls]

    def hook_for(layer):
        def hook(module, inputs, output):
            outputs.calls[layer] += 1
            if outputs.calls[layer] == 1:
                outputs[layer] = keep(output)
            return output.clone()  # what the rest of the model sees, and may change in place
        return hook

    handles = []
    try:
        for layer, module in modules:
            handles.append(module.register_forward_hook(hook_for(layer)))
        yield outputs
    finally:
        for h in handles:
            h.remove()


# ---- parameterizations ----

def colour_correlation_sqrt(images: torch.Tensor) -> torch.Tensor:
    """The square root (via SVD) of the colour covariance of ``images`` [N, 3, H, W], scaled so its
    largest column norm is 1: lucid's ``color_correlation_svd_sqrt``, measured on DermSynth
    rather than taken from ImageNet."""
    check_input(images, "images")
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double()
    cov = torch.cov(pixels)
    u, s, _ = torch.linalg.svd(cov)
    sqrt = u @ torch.diag(s.sqrt())
    return (sqrt / sqrt.norm(dim=0).max()).to(images.dtype)


def fft_scale(size: int, decay: float = 1.0) -> torch.Tensor:
    """1 / f^decay for the rfft2 frequencies of a ``size`` x ``size`` image (lucid's spectrum scaling),
    with the zero frequency given the lowest non-zero frequency's weight."""
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    freq = (fx ** 2 + fy ** 2).sqrt()
    return 1.0 / freq.clamp_min(1.0 / size) ** decay


def fft_image(spectrum: torch.Tensor, size: int, decay: float = 1.0) -> torch.Tensor:
    """Fourier parameterization: real/imaginary parts ``[n, 3, size, size//2+1, 2]`` to pixels
    ``[n, 3, size, size]`` (before colour decorrelation and the sigmoid): irfft2 of the scaled
    spectrum, divided by 4 (lucid's constant, which keeps the start away from saturation)."""
    scaled = torch.view_as_complex(spectrum.contiguous()) * fft_scale(size, decay).to(spectrum)
    return torch.fft.irfft2(scaled, s=(size, size), norm="ortho") / 4.0


def to_rgb(raw: torch.Tensor, colour: torch.Tensor | None) -> torch.Tensor:
    """Decorrelated colour space -> [0, 1] pixels: apply the colour square root, then a sigmoid."""
    if colour is not None:
        raw = torch.einsum("ij,bjhw->bihw", colour.to(raw), raw)
    return torch.sigmoid(raw)


# ---- transforms and penalties ----

def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per image [n]."""
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    return dy + dx


def diversity(outputs: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine similarity of the images' channel Gram matrices at a layer (lucid's
    diversity): a penalty that pushes a batch of visualizations apart."""
    n = outputs.shape[0]
    if n < 2:
        return outputs.new_zeros(())
    flat = as_grid(outputs).flatten(2)
    gram = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
    sim = gram @ gram.T
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))


def default_transforms(size: int):
    """Transformation robustness (Olah et al. 2017), scaled to a 64-pixel image: pad, jitter by up to
    4 pixels, scale by 0.9-1.1, rotate by up to 10 degrees, jitter again."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Pad(4, padding_mode="reflect"), v2.RandomCrop(size + 4),
                       v2.RandomAffine(degrees=10, scale=(0.9, 1.1)), v2.RandomCrop(size)])


# ---- visualization ----

def visualize(model: nn.Module, objective: Objective, *, size: int = 64, steps: int = 128, lr: float = 0.05,
              param: str = "fft", transforms="default", n: int = 1, seed: int = 0, l2: float = 0.0,
              tv: float = 0.0, blur_every: int = 0, blur_sigma: float = 0.5, colour: torch.Tensor | None = None,
              diversity_layer=None, diversity_weight: float = 0.0, return_history: bool = False):
    """Maximize ``objective`` over ``n`` images by gradient ascent (Adam); return ``[n, 3, size, size]``.

    param        "fft": Fourier coefficients scaled by 1/f (Olah et al. 2017); "pixel": raw pixels
    transforms   "default" (``default_transforms``), None, or any callable on a [n, 3, H, W] batch,
                 applied afresh every step
    l2, tv       weights of an L2 penalty (on the image minus grey) and of total variation
    blur_every   blur the image parameters every k steps (Yosinski et al. 2015; pixel only)
    colour       a 3x3 colour square root (``colour_correlation_sqrt``) to decorrelate colours
    diversity_layer, diversity_weight   a penalty on the Gram similarity of the n images
    seed         every random draw (the start and the transforms) comes from it; the caller's
                 random state is left as it was
    return_history  also return the objective's batch mean at every step

    The model's parameters are not changed and get no gradient (only the image's is taken).
    """
    check_model(model)
    check_count(n, "n")
    check_count(steps, "steps")
    if param not in ("fft", "pixel"):
        raise ValueError(f"param must be 'fft' or 'pixel', got {param!r}")
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an Objective (channel, neuron, class_logit, direction), "
                        f"got {type(objective).__name__}")
    if transforms == "default":
        transforms = default_transforms(size)
    if transforms is not None and not callable(transforms):
        raise TypeError("transforms must be 'default', None or a callable")
    if blur_every and param != "pixel":
        raise ValueError("blur_every applies to param='pixel' (blur the pixels, not the spectrum)")
    if colour is not None and not torch.isfinite(colour).all():
        raise ValueError("colour holds NaN or inf values: pass a finite 3x3 matrix (colour_correlation_sqrt)")
    layers = list(objective.layers) + ([diversity_layer] if diversity_layer is not None else [])
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    history = []
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)
        if param == "fft":
            params = (0.01 * torch.randn(n, 3, size, size // 2 + 1, 2, device=device, dtype=dtype)).requires_grad_()
        else:
            params = (0.01 * torch.randn(n, 3, size, size, device=device, dtype=dtype)).requires_grad_()
        opt = torch.optim.Adam([params], lr=lr)

        def image():
            raw = fft_image(params, size) if param == "fft" else params
            return to_rgb(raw, colour)

        with _recording(model, layers) as outputs:
            for step in range(steps):
                img = image()
                view = transforms(img) if transforms is not None else img
                logits = outputs.run(view.contiguous(memory_format=torch.channels_last))  # ~15% faster on CPU
                if step == 0:
                    objective.check(model, outputs, logits)
                    if diversity_layer is not None:
                        _check_layer(diversity_layer)(model, outputs, logits)
                score = check_scores(objective(outputs, logits), f"the objective {objective.name}")
                loss = -score.mean()
                if l2:
                    loss = loss + l2 * (img - 0.5).pow(2).flatten(1).sum(1).mean()
                if tv:
                    loss = loss + tv * total_variation(img).mean()
                if diversity_layer is not None and diversity_weight:
                    loss = loss + diversity_weight * diversity(outputs[diversity_layer])
                (grad,) = torch.autograd.grad(loss, params)
                params.grad = grad
                opt.step()
                params.grad = None
                history.append(float(score.detach().mean()))
                if blur_every and (step + 1) % blur_every == 0:
                    from torchvision.transforms.v2 import functional as TF
                    with torch.no_grad():
                        k = 2 * math.ceil(2 * blur_sigma) + 1
                        params.copy_(TF.gaussian_blur(params, [k, k], [blur_sigma, blur_sigma]))
        with torch.no_grad():
            result = image().detach()
    return (result, history) if return_history else result


# ---- dataset search and receptive fields ----

@torch.no_grad()
def top_activating(model: nn.Module, layer, channel: int, images: torch.Tensor, k: int = 9,
                   batch_size="auto"):
    """The ``k`` images of ``images`` on which ``channel`` of ``layer`` reaches its largest value,
    and where: ``(image_index, y, x, value)``, each a tensor of length k, by value descending.

    One position per image (its maximum), so the k images are distinct. The channel's map is kept,
    never the whole layer, so memory stays small over thousands of images. The layer is read as a
    grid (``as_grid``): for a token layer [B, T, C] the channels are the last axis and y is the token
    (x = 0); for a layer without positions ([B, C]), y = x = 0.
    """
    check_model(model)
    check_input(images, "images", model=model)
    check_batch_size(batch_size)
    _int(channel, "channel")
    _int(k, "k")
    if not 1 <= k <= images.shape[0]:
        raise ValueError(f"k must be between 1 and the number of images ({images.shape[0]}), got {k}")

    def keep(output):  # the channel's map [B, h*w] and the grid's width
        _check_layer(layer)(model, {layer: output}, None)
        _check_channel(layer, channel)(model, {layer: output}, None)
        grid = as_grid(output)
        return grid[:, channel].detach().flatten(1), grid.shape[-1]

    maps = []
    was_training = model.training
    model.eval()
    try:
        with _recording(model, [layer], keep) as outputs:
            def step(lo, hi):
                outputs.run(images[lo:hi].contiguous(memory_format=torch.channels_last))
                maps.append(outputs[layer][0])

            run_batches(step, len(images), batch_size, workload("forward", model, images), images.device)
    finally:
        model.train(was_training)
    best, where = torch.cat(maps).max(1)  # [N]: each image's maximum, and where in [h*w]
    check_scores(best, f"channel {channel} of layer {layer_name(model, layer)}")
    value, index = best.topk(k)
    w = outputs[layer][1]
    pos = where[index]
    return index, pos // w, pos % w, value


@torch.no_grad()
def receptive_field(model: nn.Module, layer, y: int, x: int, image_size: int = 64, *, batch_size="auto"):
    """The input box ``(top, left, bottom, right)`` (bottom/right exclusive, clipped to the image)
    that the unit at (y, x) of ``layer`` can see; on a token layer [B, T, C], (y, 0) is token y.

    Found from the architecture, not from a table: a NaN placed in one input row spreads through
    every convolution, pooling and residual branch to exactly the positions that row can reach,
    whatever the weights (0 x NaN is NaN). Probe r (r < image_size) is a grey image whose row r is
    NaN, probe image_size + c one whose column c is NaN, and a last, all-grey probe checks that the
    unit is finite without them. They give the input rows and columns the unit depends on. (A
    global pooling layer, or a token after attention, sees the whole image.)

    batch_size  probes per forward pass (the answer does not depend on it): memory grows with it,
                and larger batches run somewhat faster on a CPU ("auto": ``helpers.batching``)
    """
    check_model(model)
    for v, n in ((y, "y"), (x, "x"), (image_size, "image_size")):
        _int(v, n)
    check_batch_size(batch_size)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    size = image_size
    pos = torch.arange(size, device=device)

    def probes(ks):  # probe k: row k NaN (k < size), else column k - size NaN (none for the last one)
        nan = (ks[:, None, None] == pos[:, None]) | (ks[:, None, None] - size == pos[None, :])  # [b, S, S]
        grey = torch.full((len(ks), 3, size, size), 0.5, dtype=dtype, device=device)
        return grey.masked_fill(nan[:, None], float("nan"))

    def keep(output):  # where the layer is not finite [b, h, w], and its shape (a tensor without data)
        _check_layer(layer)(model, {layer: output}, None)
        return (~torch.isfinite(as_grid(output))).any(1), torch.empty_like(output, device="meta")

    hits = []
    was_training = model.training
    model.eval()
    try:
        with _recording(model, [layer], keep) as outputs:
            def step(lo, hi):
                ks = torch.arange(lo, hi, device=device)
                outputs.run(probes(ks).contiguous(memory_format=torch.channels_last))  # faster on CPU
                hits.append(outputs[layer][0])

            sample = torch.empty(1, 3, size, size, dtype=dtype, device="meta")
            run_batches(step, 2 * size + 1, batch_size, workload("forward", model, sample), device)
    finally:
        model.train(was_training)
    _check_position(model, layer, outputs[layer][1], y, x)
    hit = torch.cat(hits)[:, y, x]  # [2 S + 1]
    if hit[-1]:
        raise ValueError(f"layer {layer_name(model, layer)} is NaN or inf at (y={y}, x={x}) on a grey image: "
                         "the model is not finite (check its weights), so no receptive field can be traced")
    rows = torch.nonzero(hit[:size])[:, 0]
    cols = torch.nonzero(hit[size:-1])[:, 0]
    if len(rows) == 0 or len(cols) == 0:
        raise ValueError(f"the unit at (y={y}, x={x}) of layer {layer_name(model, layer)} does not depend on "
                         "the input")
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def crop_boxes(images: torch.Tensor, boxes, size: int = 32) -> torch.Tensor:
    """Cut each box ``(top, left, bottom, right)`` out of its image and resize it to ``size`` pixels
    (bilinear): ``[k, 3, size, size]``, ready for ``viz.image_grid``."""
    check_input(images, "images")
    if len(boxes) != len(images):
        raise ValueError(f"got {len(boxes)} boxes for {len(images)} images")
    crops = []
    for img, (top, left, bottom, right) in zip(images, boxes, strict=True):
        crop = img[:, top:bottom, left:right][None]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(crops)


def ruler_periodicity(images: torch.Tensor, period: int = 4, depth: int = 10) -> torch.Tensor:
    """A simple ruler detector for DermSynth: per image, the largest share (over the four edges) of
    the brightness profile's AC power at the ruler's tick frequency (one tick every ``period``
    pixels), in the strip ``depth`` pixels deep along that edge. ``[N]`` in [0, 1]; a ruler gives a
    sharp peak at that frequency, skin and lesions spread their power over many.
    """
    check_input(images, "images")
    grey = images.mean(1)  # [N, H, W]
    strips = [grey[:, :depth].mean(1), grey[:, -depth:].mean(1), grey[:, :, :depth].mean(2),
              grey[:, :, -depth:].mean(2)]  # top, bottom, left, right: [N, L] profiles along the edge
    scores = []
    for profile in strips:
        profile = profile - profile.mean(1, keepdim=True)
        power = torch.fft.rfft(profile, dim=1).abs().pow(2)[:, 1:]  # drop the DC term
        k = profile.shape[1] // period  # the tick frequency's bin
        scores.append(power[:, k - 1] / power.sum(1).clamp_min(1e-12))
    return torch.stack(scores, 1).amax(1)


def lucent_reference(model: nn.Module, layer: str, c: int, colour: torch.Tensor, steps: int, n: int = 2,
                     seed: int = 0, size: int = 64):
    """torch-lucent's own ``render_vis`` on channel ``c`` of ``layer`` (lucent's layer name: module
    path joined by "_"), as the reference for ``visualize``: Fourier parameterization, colours
    decorrelated with ``colour`` (put in place of lucent's ImageNet matrix for the call), Adam at
    0.05, no transforms, seeded as ours is.

    Returns ``(spectrum, start, images, leaked)``: lucent's starting parameters and the image they
    map to, the images after ``steps`` steps ``[n, 3, size, size]``, and how many hooks lucent
    left on the model. Those hooks, and the gradients lucent leaves in the model's ``.grad``, are
    removed before returning.
    """
    import lucent.optvis.param.color as lucent_colour
    from lucent.optvis import objectives, render
    from lucent.optvis import param as lucent_param

    saved = lucent_colour.color_correlation_normalized
    lucent_colour.color_correlation_normalized = colour.numpy()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            params, image_f = lucent_param.image(size, batch=n, fft=True, decorrelate=True)
            with torch.no_grad():
                start = image_f()
            torch.manual_seed(seed)
            images = render.render_vis(model, objectives.channel(layer.replace(".", "_"), c),
                                       lambda: lucent_param.image(size, batch=n, fft=True, decorrelate=True),
                                       transforms=[], thresholds=(steps,), preprocess=False, fixed_image_size=size,
                                       show_image=False, progress=False)[-1]
    finally:
        lucent_colour.color_correlation_normalized = saved
        leaked = sum(len(m._forward_hooks) for m in model.modules())
        for module in model.modules():
            module._forward_hooks.clear()
        model.zero_grad(set_to_none=True)
    return params[0].detach(), start, torch.as_tensor(images).permute(0, 3, 1, 2), leaked
