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
            alpha: float = 0.6, vmax: float | None = None, percentile: float = 99.0, colorbar: bool = False,
            colorbar_label: str | None = None):
    """Draw a heatmap over a faded grey copy of ``img``.

    signed  None: decide from the data (any negative value -> signed map); True: diverging colours
            centred on zero; False: magnitude from zero.
    vmax    the colour scale's limit, so that several maps can share one scale; by default the
            ``percentile`` of the map's magnitudes (99: the top 1% saturate, so that a few extreme
            pixels do not wash out the rest; Captum's ``outlier_perc=2`` does the same at 98)
    colorbar_label  what the colours measure, written along the colour bar (with ``colorbar``)
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
        bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        if colorbar_label:
            bar.set_label(colorbar_label, fontsize=8)
            bar.ax.tick_params(labelsize=7)
    return ax


def show_masks(img, masks: dict, ax=None, title: str | None = None, names=None, legend: bool = False):
    """Outline ground-truth masks (dict name -> bool [H, W]) on the image, one colour each.

    ``legend`` names the colours under the image; a mask that is empty reads "(none)"."""
    from matplotlib.lines import Line2D

    ax = ax or plt.gca()
    show_image(img, ax=ax, title=title)
    handles = []
    for name in names or masks:
        m = masks[name]
        m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        colour = MASK_COLOURS.get(name, "w")
        if m.any():
            ax.contour(m.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
        handles.append(Line2D([], [], color=colour, lw=1.5, label=name if m.any() else f"{name} (none)"))
    if legend and handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
                  fontsize=7, frameon=False, handlelength=1.5, columnspacing=1.2)
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
    """{method: (knob name, {knob label: fn(model, x, target) -> map [B, 1 or 3, H, W]}, default label,
    what the colours measure for class "{c}")}."""
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
        "saliency": ("", {"|gradient|": lambda m, x, t: saliency(m, x, t)}, "|gradient|",
                     "|gradient| of the {c} score (RGB sum)"),
        "SmoothGrad": ("noise level", {f"{p:.0%}": sg(p) for p in (0.02, 0.05, 0.10, 0.15, 0.25)}, "5%",
                       "mean gradient of the {c} score (RGB sum)"),
        "Integrated Gradients": ("steps, baseline", {f"{s} steps, {b}": ig(s, b) for b in ("black", "blur")
                                                     for s in (8, 32, 64)}, "32 steps, black",
                                 "contribution to the {c} score (RGB sum)"),
        "Grad-CAM": ("layer", {name: gc(name) for name in ("layer4", "layer3", "layer2")}, "layer4",
                     "Grad-CAM evidence for {c} (after ReLU)"),
        "occlusion": ("window", {f"{w}x{w}": occ(w) for w in (4, 8, 16, 32)}, "8x8",
                      "drop in the {c} score when hidden"),
        "LIME": ("samples", {str(n): segmented(lime, n) for n in (100, 300, 1000)}, "300",
                 "LIME weight of the superpixel for {c}"),
        "KernelSHAP": ("samples", {str(n): segmented(kernel_shap, n) for n in (64, 200, 500)}, "200",
                       "Shapley value of the superpixel for {c}"),
    }


IMAGES_PER_CLASS = 20
STATIC_NOTE = ("A snapshot of the explorer's first view: its controls need a running kernel "
               "(run the notebook in JupyterLab to explore).")
# The selected toggle button: ipywidgets 8 only darkens it a little (the "mod-active" class). The
# explorer marks it with a check icon (ToggleButtons.icons) and, in JupyterLab, fills it in.
_EXPLORER_CSS = """<style>
.interp-explorer .widget-toggle-buttons .jupyter-button.mod-active,
.interp-explorer .jupyter-widget-toggle-buttons .jupyter-button.mod-active {
  background-color: var(--jp-brand-color1, #1976d2);
  color: var(--jp-ui-inverse-font-color1, #fff);
}
</style>"""
_LABEL = "56px"  # the labels of the first column (clinic, class, method), all on the left


class Explorer:
    """Pick an image (clinic, class, ruler on/off, which one of the class's 20), a model, a method
    and its main knob; see the map over the image, and its ruler and lesion mass.

    The "explain" control picks the class the map explains: the model's prediction (the default:
    on a nevus with a ruler, the shortcut model predicts mel, and its map shows why) or the image's
    own class, the one chosen in the "class" control. The image's title gives the prediction, the
    map's title the class explained. ``explorer(method)`` returns an
    ``Explorer``, which a notebook displays as its widget (``widget``, the ipywidgets box) when a
    kernel runs it, and, for viewers without a kernel, as a picture of its first view
    (``snapshot_png()``) with one line saying so (see ``helpers.notebook_tools.strip_widget_state``).

    Every control is in ``controls``; setting a control's ``value`` recomputes ``attr`` (the map,
    ``[1, H, W]``), ``masses`` ({"ruler": ..., "lesion": ...}, the share of |map| inside each mask;
    NaN where the image has no such mask), ``target`` and ``prediction`` (class names), and redraws
    ``figure``. Models are loaded once, on first use; nothing is downloaded.
    """

    def __init__(self, method: str = "Grad-CAM", models: dict | None = None):
        import ipywidgets as w

        from .data import CLASSES

        self.methods = _explorer_methods()
        if method not in self.methods:
            raise ValueError(f"method must be one of {list(self.methods)}, got {method!r}")
        self._models = dict(models) if models is not None else {}

        def toggles(options, value, description, button_width, first=False):
            return w.ToggleButtons(options=options, value=value, description=description,
                                   style={"description_width": _LABEL if first else "initial",
                                          "button_width": button_width},
                                   layout=w.Layout(display="flex", flex_flow="row nowrap", align_items="center",
                                                   width="auto", margin="2px 12px 2px 0"))

        def dropdown(options, value, description, width, first=False):
            return w.Dropdown(options=options, value=value, description=description,
                              style={"description_width": _LABEL if first else "initial"},
                              layout=w.Layout(width=width, margin="2px 12px 2px 0"))

        self.controls = {
            "clinic": toggles(["A", "B"], "B", "clinic", "56px", first=True),
            "class": dropdown(list(CLASSES), "nv", "class", "150px", first=True),
            "ruler": toggles(["on", "off"], "on", "ruler", "64px"),
            "image": w.IntSlider(value=1, min=1, max=IMAGES_PER_CLASS, description="image",
                                 continuous_update=False, style={"description_width": "initial"},
                                 layout=w.Layout(width="260px")),
            "model": toggles(["shortcut", "debiased"], "shortcut", "model", "100px"),  # room for the check mark
            "explain": toggles(["prediction", "image's class"], "prediction", "explain", "110px"),
            "method": dropdown(list(self.methods), method, "method", "230px", first=True),
            "knob": dropdown([], None, "setting", "240px"),
        }
        self.image_label = w.Label(layout=w.Layout(margin="2px 0"))
        self.output = w.Output()
        self.figure = None
        self.updates = 0
        self._snapshot = None
        self._set_knob_options()
        for name, control in self.controls.items():
            control.observe(self._on_method if name == "method" else self._on_change, names="value")
            if isinstance(control, w.ToggleButtons):
                self._mark_selected(control)
                control.observe(lambda change: self._mark_selected(change["owner"]), names="value")

        def row(*children):  # a row too wide for the window wraps between controls, not inside one
            return w.HBox(list(children), layout=w.Layout(flex_flow="row wrap", align_items="center"))

        c = self.controls
        self.widget = w.VBox([w.HTML(_EXPLORER_CSS, layout=w.Layout(display="none")),
                              row(c["clinic"], c["ruler"], c["model"]),
                              row(c["class"], c["image"], self.image_label),
                              row(c["method"], c["knob"], c["explain"]), self.output])
        self.widget.add_class("interp-explorer")
        self.update()

    def model(self, name: str):
        if name not in self._models:
            from .models import load_dermnet
            self._models[name] = load_dermnet(name)
        return self._models[name]

    @staticmethod
    def _mark_selected(toggle) -> None:
        """A check mark on the selected button of a ToggleButtons, none on the others."""
        toggle.icons = ["check" if option == toggle.value else "" for option in toggle.options]

    def _set_knob_options(self) -> None:
        knob_name, options, default, _ = self.methods[self.controls["method"].value]
        knob = self.controls["knob"]
        self._quiet = True
        knob.options, knob.value = list(options), default
        knob.description = knob_name or "setting"
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
                            + c["image"].value - 1, ruler=c["ruler"].value == "on", labels=c["class"].value)

    def titles(self) -> tuple[str, str, str]:
        """The image panel's title, the map panel's title and the colour bar's label, for the current
        controls and results."""
        c, (_, options, _, measures) = self.controls, self.methods[self.controls["method"].value]
        setting = f", {c['knob'].value}" if len(options) > 1 else ""
        ruler, lesion = self.masses["ruler"], self.masses["lesion"]
        masses = (f"no ruler, lesion mass {lesion:.2f}" if ruler != ruler  # NaN: the image has no ruler
                  else f"ruler mass {ruler:.2f}, lesion {lesion:.2f}")
        which = "predicted" if c["explain"].value == "prediction" else "the image's class"
        return (f"{c['class'].value} image, clinic {c['clinic'].value}: predicted {self.prediction}",
                f"{c['method'].value} for {self.target} ({which}){setting}\n{masses}",
                measures.format(c=self.target))

    def update(self) -> None:
        """Recompute the map and the masses for the current controls and redraw."""
        from .data import CLASSES
        from .metrics import mask_mass

        c = self.controls
        ds = self.image()
        model = self.model(c["model"].value)
        with torch.no_grad():
            scores = model(ds.images)
        self.prediction = CLASSES[int(scores.argmax(1))]
        self.target = self.prediction if c["explain"].value == "prediction" else c["class"].value
        fn = self.methods[c["method"].value][1][c["knob"].value]
        self.attr = fn(model, ds.images, torch.tensor([CLASSES.index(self.target)])).detach()[0]
        magnitude = self.attr.abs().sum(0, keepdim=True)[None]
        self.masses = {name: float(mask_mass(magnitude, ds.masks[name])[0]) if ds.masks[name].any() else float("nan")
                       for name in ("ruler", "lesion")}
        self.image_label.value = f"of {IMAGES_PER_CLASS} {c['class'].value} images (clinic {c['clinic'].value})"
        self.updates += 1
        if self.figure is not None:
            plt.close(self.figure)  # one live figure per explorer
        image_title, map_title, measures = self.titles()
        with self.output:
            self.output.clear_output(wait=True)
            fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.9))
            show_masks(ds.images[0], {k: ds.masks[k][0] for k in ("lesion", "ruler")}, ax=axes[0],
                       title=image_title, legend=True)
            overlay(ds.images[0], self.attr, ax=axes[1], colorbar=True, title=map_title, colorbar_label=measures)
            fig.tight_layout()
            plt.show()
            self.figure = fig

    def snapshot_png(self) -> bytes:
        """The explorer's view as a PNG, taken the first time it is asked for (when the notebook shows
        the explorer: its first view), with ``STATIC_NOTE`` under it, for viewers without a kernel
        (GitHub, nbconvert's HTML, a notebook opened before it runs). ``snapshot_alt`` describes the
        picture in words."""
        if self._snapshot is None:
            import io

            note = self.figure.text(0.5, 0.0, STATIC_NOTE, ha="center", va="top", fontsize=8, style="italic")
            buffer = io.BytesIO()
            self.figure.savefig(buffer, format="png", bbox_inches="tight")
            note.remove()
            image_title, map_title, _ = self.titles()
            self._snapshot = buffer.getvalue()
            self.snapshot_alt = f"The explorer: {image_title}; {map_title}. ".replace("\n", ", ") + STATIC_NOTE
        return self._snapshot

    def _repr_mimebundle_(self, include=None, exclude=None):
        """The live widget where a kernel runs it; a picture of its first view and one line elsewhere."""
        import base64

        bundle = self.widget._repr_mimebundle_() or {}
        bundle["image/png"] = base64.b64encode(self.snapshot_png()).decode("ascii")
        bundle["text/plain"] = f"Explorer ({self.controls['method'].value}). {STATIC_NOTE}"
        return bundle, {"image/png": {"alt": self.snapshot_alt}}


def explorer(method: str = "Grad-CAM", models: dict | None = None) -> Explorer:
    """The interactive explorer, opened on ``method`` (see ``Explorer``): in a notebook, the last
    line of a cell shows it (the widget, or a snapshot where no kernel runs)."""
    return Explorer(method, models)
