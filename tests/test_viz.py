"""helpers.viz draws without error, with the course's conventions."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import viz  # noqa: E402


def test_overlay_signed_and_magnitude():
    img = torch.rand(3, 8, 8)
    signed = torch.randn(3, 8, 8)
    ax = viz.overlay(img, signed)
    assert ax.images[-1].get_cmap().name == viz.SIGNED_CMAP
    lo, hi = ax.images[-1].get_clim()
    assert lo == -hi  # centred on zero
    ax = viz.overlay(img, signed.abs().sum(0))
    assert ax.images[-1].get_cmap().name == viz.MAGNITUDE_CMAP and ax.images[-1].get_clim()[0] == 0
    plt.close("all")


def test_overlay_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="resize"):
        viz.overlay(torch.rand(3, 8, 8), torch.rand(4, 4))


def test_grids():
    imgs = torch.rand(3, 3, 8, 8)
    fig = viz.image_grid(imgs, titles=["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 4
    fig = viz.attribution_grid(imgs, {"m1": torch.randn(3, 3, 8, 8), "m2": torch.rand(3, 1, 8, 8)},
                               shared_scale=True)
    assert len(fig.axes) == 9
    masks = {"lesion": torch.zeros(8, 8, dtype=torch.bool), "ruler": torch.ones(8, 8, dtype=torch.bool)}
    viz.show_masks(imgs[0], masks)
    plt.close("all")


def test_grid_with_colour_bars():
    imgs = torch.rand(2, 3, 8, 8)
    maps = {"m1": torch.rand(2, 1, 8, 8), "m2": 10 * torch.rand(2, 1, 8, 8)}
    fig = viz.attribution_grid(imgs, maps, signed=False, shared_scale=True, colorbar=True)
    assert len(fig.axes) == 6 + 2  # one bar per method column
    lims = [fig.axes[k].images[-1].get_clim() for k in (1, 4)]  # m1 in rows 0 and 1
    assert lims[0] == lims[1]
    fig = viz.attribution_grid(imgs, maps, colorbar=True)
    assert len(fig.axes) == 6 + 4  # one bar per map
    plt.close("all")


def test_explorer_recomputes_the_map_and_masses_when_a_control_changes():
    from helpers.metrics import mask_mass
    from helpers.models import DermNet
    from helpers.viz import Explorer

    torch.manual_seed(0)
    models = {"shortcut": DermNet().eval(), "debiased": DermNet().eval()}  # no checkpoint needed
    e = Explorer("Grad-CAM", models=models)
    assert e.updates == 1 and e.figure is not None and e.attr.shape == (1, 64, 64)
    assert e.controls["knob"].value == "layer4" and "layer3" in e.controls["knob"].options
    first = e.attr.clone()
    e.controls["knob"].value = "layer3"
    assert e.updates == 2 and not torch.equal(first, e.attr)
    # the masses are the map's, on the image the controls chose
    ds = e.image()
    assert e.masses["ruler"] == pytest.approx(float(mask_mass(e.attr.abs()[None], ds.masks["ruler"])[0]))
    e.controls["method"].value = "occlusion"  # the knob follows the method
    assert e.controls["knob"].description == "window" and e.controls["knob"].value == "8x8"
    assert e.updates == 3
    e.controls["ruler"].value = "off"
    assert e.updates == 4 and e.masses["ruler"] != e.masses["ruler"]  # NaN: no ruler in the image
    e.controls["model"].value = "debiased"
    assert e.updates == 5
    with pytest.raises(ValueError, match="method must be one of"):
        Explorer("DeepDream", models=models)
