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
