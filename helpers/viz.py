"""One look for every figure in the course.

Conventions:
- signed attributions (positive pushes the score up): diverging ``SIGNED_CMAP``, centred on zero,
  symmetric limits;
- magnitudes (|attribution|, CAM heatmaps): sequential ``MAGNITUDE_CMAP`` from zero;
- heatmaps are drawn over a faded grey copy of the image, so the map carries the colour;
- titles can carry the key number (``title="ruler mass 0.41"``).

Images are tensors ``[3, H, W]`` in [0, 1] (or batches of them); maps are ``[H, W]``,
``[1, H, W]`` or ``[C, H, W]`` (summed over channels).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

SIGNED_CMAP = "RdBu_r"
MAGNITUDE_CMAP = "inferno"
MASK_COLOURS = {"lesion": "#2ca02c", "ruler": "#ff7f0e", "ink": "#9467bd", "hair": "#8c564b",
                "corners": "#7f7f7f"}


def to_numpy_image(img) -> np.ndarray:
    """[3, H, W] tensor in [0, 1] -> [H, W, 3] numpy array for imshow."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu()
        if img.dim() == 4 and img.shape[0] == 1:
            img = img[0]
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"img must be [3, H, W], got shape {tuple(img.shape)}")
        return img.permute(1, 2, 0).clamp(0, 1).numpy()
    return np.asarray(img)


def to_numpy_map(attr) -> np.ndarray:
    """[H, W], [1, H, W] or [C, H, W] (summed over channels) -> [H, W] numpy array."""
    a = attr.detach().cpu().float() if isinstance(attr, torch.Tensor) else torch.as_tensor(attr).float()
    if a.dim() == 4 and a.shape[0] == 1:
        a = a[0]
    if a.dim() == 3:
        a = a.sum(0)
    if a.dim() != 2:
        raise ValueError(f"attr must be [H, W] or [C, H, W], got shape {tuple(a.shape)}")
    return a.numpy()


def _magnitudes(maps) -> np.ndarray:
    """|maps| summed over channels for a batch [N, C, H, W] or [N, H, W], as numpy."""
    a = maps.detach().float().cpu()
    return (a.sum(1) if a.dim() == 4 else a).abs().numpy()


def show_image(img, ax=None, title: str | None = None):
    """Show one image without axes."""
    ax = ax or plt.gca()
    ax.imshow(to_numpy_image(img), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def overlay(img, attr, ax=None, title: str | None = None, signed: bool | None = None,
            alpha: float = 0.6, vmax: float | None = None, percentile: float = 99.0, colorbar: bool = False):
    """Draw a heatmap over a faded grey copy of ``img``.

    signed  None: decide from the data (any negative value -> signed map); True: diverging colours
            centred on zero; False: magnitude from zero.
    vmax    the colour scale's limit, so that several maps can share one scale; by default the
            ``percentile`` of the map's magnitudes (99: the top 1% saturate, so that a few extreme
            pixels do not wash out the rest; Captum's ``outlier_perc=2`` does the same at 98)
    """
    ax = ax or plt.gca()
    image = to_numpy_image(img)
    heat = to_numpy_map(attr)
    if heat.shape != image.shape[:2]:
        raise ValueError(f"attr is {heat.shape} but the image is {image.shape[:2]}: resize the map first")
    grey = image.mean(2, keepdims=True).repeat(3, 2)
    ax.imshow(0.35 + 0.5 * grey, interpolation="nearest")
    if signed is None:
        signed = bool((heat < 0).any())
    limit = float(vmax if vmax is not None else np.percentile(np.abs(heat), percentile)) or 1.0
    if signed:
        im = ax.imshow(heat, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit, alpha=alpha, interpolation="nearest")
    else:
        im = ax.imshow(heat, cmap=MAGNITUDE_CMAP, vmin=0, vmax=limit, alpha=alpha, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        plt.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return ax


def show_masks(img, masks: dict, ax=None, title: str | None = None, names=None):
    """Outline ground-truth masks (dict name -> bool [H, W]) on the image, one colour each."""
    ax = ax or plt.gca()
    show_image(img, ax=ax, title=title)
    for name in names or masks:
        m = masks[name]
        m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        if m.any():
            ax.contour(m.astype(float), levels=[0.5], colors=[MASK_COLOURS.get(name, "w")], linewidths=1.2)
    return ax


def image_grid(images, titles=None, ncols: int = 8, size: float = 1.5):
    """A grid of images ([N, 3, H, W]) with optional titles; returns the figure."""
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.1), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            show_image(images[i], ax=ax, title=titles[i] if titles else None)
        else:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def attribution_grid(images, maps: dict, row_titles=None, signed: bool | None = None,
                     size: float = 1.8, shared_scale: bool = False, colorbar: bool = False):
    """Images down the rows, methods across the columns: ``maps`` is {method name: [N, ...] maps}.

    The first column shows the image. Titles of the top row name the methods; ``row_titles`` (one
    per image) label the first column. ``shared_scale`` puts each method's maps on one colour scale;
    ``colorbar`` draws it under the column (with ``shared_scale``) or beside every map.
    """
    n, names = len(images), list(maps)
    fig, axes = plt.subplots(n, len(names) + 1, figsize=((len(names) + 1) * size, n * size * 1.05),
                             squeeze=False)
    for i in range(n):
        show_image(images[i], ax=axes[i, 0], title=row_titles[i] if row_titles else None)
        for j, name in enumerate(names):
            vmax = float(np.percentile(_magnitudes(maps[name]), 99)) if shared_scale else None
            overlay(images[i], maps[name][i], ax=axes[i, j + 1], signed=signed, vmax=vmax,
                    title=name if i == 0 else None, colorbar=colorbar and not shared_scale)
    fig.tight_layout()
    if colorbar and shared_scale:  # one bar under each method's column, after the layout is set
        for j in range(len(names)):
            fig.colorbar(axes[-1, j + 1].images[-1], ax=axes[:, j + 1], orientation="horizontal",
                         fraction=0.04, pad=0.02)
    return fig


# --------------------------------------------------------------------------------------------
# An interactive explorer (ipywidgets), shared by the method notebooks
# --------------------------------------------------------------------------------------------

def _explorer_methods() -> dict:
    """{method: (knob name, {knob label: fn(model, x, target) -> map [B, 1 or 3, H, W]}, default label)}."""
    from .cam import grad_cam
    from .gradients import blur_baseline, integrated_gradients, saliency, smoothgrad
    from .perturbation import kernel_shap, lime, occlusion, paint, superpixels

    def sg(level):
        return lambda m, x, t: smoothgrad(m, x, t, n_samples=25, noise_level=level,
                                          generator=torch.Generator().manual_seed(0))

    def ig(steps, baseline):
        return lambda m, x, t: integrated_gradients(m, x, t, steps=steps,
                                                    baseline=blur_baseline(x) if baseline == "blur" else 0.0)

    def segmented(fn, n):
        def run(m, x, t):
            seg = superpixels(x, n_segments=16)
            values = fn(m, x, t, seg, n_samples=n)
            return values.map if hasattr(values, "map") else paint(values, seg)
        return run

    def gc(layer):
        return lambda m, x, t: grad_cam(m, x, t, layer)

    def occ(w):
        return lambda m, x, t: occlusion(m, x, t, window=w, stride=w // 2)

    return {
        "saliency": ("", {"|gradient|": lambda m, x, t: saliency(m, x, t)}, "|gradient|"),
        "SmoothGrad": ("noise level", {f"{p:.0%}": sg(p) for p in (0.02, 0.05, 0.10, 0.15, 0.25)}, "5%"),
        "Integrated Gradients": ("steps, baseline", {f"{s} steps, {b}": ig(s, b) for b in ("black", "blur")
                                                     for s in (8, 32, 64)}, "32 steps, black"),
        "Grad-CAM": ("layer", {name: gc(name) for name in ("layer4", "layer3", "layer2")}, "layer4"),
        "occlusion": ("window", {f"{w}x{w}": occ(w) for w in (4, 8, 16, 32)}, "8x8"),
        "LIME": ("samples", {str(n): segmented(lime, n) for n in (100, 300, 1000)}, "300"),
        "KernelSHAP": ("samples", {str(n): segmented(kernel_shap, n) for n in (64, 200, 500)}, "200"),
    }


class Explorer:
    """Pick an image (clinic, class, ruler on/off, which one), a model, a method and its main knob;
    see the map over the image and its ruler and lesion mass.

    ``Explorer(method="Grad-CAM").widget`` is the ipywidgets box a notebook displays. Every control
    is in ``controls``; setting a control's ``value`` recomputes ``attr`` (the map, ``[1, H, W]``),
    ``masses`` ({"ruler": ..., "lesion": ...}, the share of |map| inside each mask) and redraws
    ``figure``. Models are loaded once, on first use; nothing is downloaded.
    """

    def __init__(self, method: str = "Grad-CAM", models: dict | None = None):
        import ipywidgets as w

        from .data import CLASSES

        self.methods = _explorer_methods()
        if method not in self.methods:
            raise ValueError(f"method must be one of {list(self.methods)}, got {method!r}")
        self._models = dict(models) if models is not None else {}
        self.controls = {
            "clinic": w.ToggleButtons(options=["A", "B"], value="B", description="clinic"),
            "class": w.Dropdown(options=list(CLASSES), value="nv", description="class"),
            "ruler": w.ToggleButtons(options=["on", "off"], value="on", description="ruler"),
            "image": w.IntSlider(value=0, min=0, max=19, description="image"),
            "model": w.ToggleButtons(options=["shortcut", "debiased"], value="shortcut", description="model"),
            "method": w.Dropdown(options=list(self.methods), value=method, description="method"),
            "knob": w.Dropdown(description="knob"),
        }
        self.output = w.Output()
        self.figure = None
        self.updates = 0
        self._set_knob_options()
        for name, control in self.controls.items():
            control.observe(self._on_method if name == "method" else self._on_change, names="value")
        self.widget = w.VBox([w.HBox([self.controls[k] for k in ("clinic", "ruler", "model")]),
                              w.HBox([self.controls[k] for k in ("class", "image")]),
                              w.HBox([self.controls[k] for k in ("method", "knob")]), self.output])
        self.update()

    def model(self, name: str):
        if name not in self._models:
            from .models import load_dermnet
            self._models[name] = load_dermnet(name)
        return self._models[name]

    def _set_knob_options(self) -> None:
        knob_name, options, default = self.methods[self.controls["method"].value]
        knob = self.controls["knob"]
        self._quiet = True
        knob.options, knob.value = list(options), default
        knob.description = knob_name or "knob"
        knob.disabled = len(options) == 1
        self._quiet = False

    def _on_method(self, change) -> None:
        self._set_knob_options()
        self.update()

    def _on_change(self, change) -> None:
        if not getattr(self, "_quiet", False):
            self.update()

    def image(self):
        """The chosen image as a one-image DermSynth batch (deterministic from the controls)."""
        from .data import CLASSES, make_dataset

        c = self.controls
        return make_dataset(1, clinic=c["clinic"].value, seed=31_000 + 100 * CLASSES.index(c["class"].value)
                            + c["image"].value, ruler=c["ruler"].value == "on", labels=c["class"].value)

    def update(self) -> None:
        """Recompute the map and the masses for the current controls and redraw."""
        from .data import CLASSES
        from .metrics import mask_mass

        c = self.controls
        ds = self.image()
        model = self.model(c["model"].value)
        with torch.no_grad():
            scores = model(ds.images)
        pred = int(scores.argmax(1))
        fn = self.methods[c["method"].value][1][c["knob"].value]
        self.attr = fn(model, ds.images, torch.tensor([pred])).detach()[0]
        magnitude = self.attr.abs().sum(0, keepdim=True)[None]
        self.masses = {name: float(mask_mass(magnitude, ds.masks[name])[0]) if ds.masks[name].any() else float("nan")
                       for name in ("ruler", "lesion")}
        self.prediction = CLASSES[pred]
        self.updates += 1
        if self.figure is not None:
            plt.close(self.figure)  # one live figure per explorer
        with self.output:
            self.output.clear_output(wait=True)
            fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
            show_masks(ds.images[0], {k: ds.masks[k][0] for k in ("lesion", "ruler")}, ax=axes[0],
                       title=f"{c['class'].value}, clinic {c['clinic'].value}: predicted {self.prediction}")
            overlay(ds.images[0], self.attr, ax=axes[1], colorbar=True,
                    title=f"{c['method'].value} ({c['knob'].value}): ruler mass {self.masses['ruler']:.2f}, "
                          f"lesion {self.masses['lesion']:.2f}")
            fig.tight_layout()
            plt.show()
            self.figure = fig


def explorer(method: str = "Grad-CAM", models: dict | None = None):
    """The interactive explorer's widget, opened on ``method`` (see ``Explorer``)."""
    return Explorer(method, models).widget
