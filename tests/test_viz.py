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
    e.controls["explain"].value = "image's class"
    e.controls["class"].value = "mel"  # this random network has no positive evidence for nv (all 0 after the ReLU)
    first = e.attr.clone()
    assert e.updates == 3 and first.abs().sum() > 0
    e.controls["knob"].value = "layer3"
    assert e.updates == 4 and not torch.equal(first, e.attr)
    # the masses are the map's, on the image the controls chose
    ds = e.image()
    assert e.masses["ruler"] == pytest.approx(float(mask_mass(e.attr.abs()[None], ds.masks["ruler"])[0]))
    e.controls["method"].value = "occlusion"  # the knob follows the method
    assert e.controls["knob"].description == "window" and e.controls["knob"].value == "8x8"
    assert e.updates == 5
    e.controls["ruler"].value = "off"
    assert e.updates == 6 and e.masses["ruler"] != e.masses["ruler"]  # NaN: no ruler in the image
    e.controls["model"].value = "debiased"
    assert e.updates == 7
    with pytest.raises(ValueError, match="method must be one of"):
        Explorer("DeepDream", models=models)


@pytest.fixture(scope="module")
def random_models():
    from helpers.models import DermNet

    torch.manual_seed(0)
    return {"shortcut": DermNet().eval(), "debiased": DermNet().eval()}  # no checkpoint needed


def test_explorer_explains_the_prediction_or_the_images_class_and_says_which(random_models):
    from helpers.cam import grad_cam
    from helpers.data import CLASSES
    from helpers.viz import Explorer

    e = Explorer("Grad-CAM", models=random_models)
    chosen = next(c for c in CLASSES if c != e.prediction)  # a class the model does not predict
    e.controls["class"].value = chosen
    ds = e.image()
    x, model = ds.images, random_models["shortcut"]
    ours = {c: grad_cam(model, x, CLASSES.index(c), "layer4")[0] for c in (chosen, e.prediction)}
    assert e.controls["explain"].value == "prediction"  # the default: why the model says what it says
    assert e.target == e.prediction != chosen and torch.allclose(e.attr, ours[e.prediction])
    image_title, map_title = (ax.get_title() for ax in e.figure.axes[:2])
    assert map_title.startswith(f"Grad-CAM for {e.prediction} (predicted), layer4")
    assert f"predicted {e.prediction}" in image_title and image_title.startswith(chosen)
    e.controls["explain"].value = "image's class"
    assert e.target == chosen and torch.allclose(e.attr, ours[chosen])
    assert not torch.allclose(e.attr, ours[e.prediction])
    assert e.figure.axes[1].get_title().startswith(f"Grad-CAM for {chosen} (the image's class), layer4")
    assert e.image_label.value == f"of 20 {chosen} images (clinic B)"


def test_explorer_says_no_ruler_names_the_outlines_and_labels_the_colour_bar(random_models):
    from helpers.viz import Explorer

    e = Explorer("saliency", models=random_models)
    legend = [t.get_text() for t in e.figure.axes[0].get_legend().get_texts()]
    assert legend == ["lesion", "ruler"]
    bar = e.figure.axes[2]  # the colour bar's axes
    assert bar.get_ylabel() == f"|gradient| of the {e.target} score (RGB sum)"
    e.controls["ruler"].value = "off"
    map_title = e.figure.axes[1].get_title()
    assert "no ruler" in map_title and "nan" not in map_title
    assert [t.get_text() for t in e.figure.axes[0].get_legend().get_texts()] == ["lesion", "ruler (none)"]


def test_explorer_controls_show_their_state_and_sit_in_compact_rows(random_models):
    import ipywidgets as w

    from helpers.viz import Explorer

    e = Explorer("saliency", models=random_models)
    c = e.controls
    toggles = [control for control in c.values() if isinstance(control, w.ToggleButtons)]
    assert len(toggles) == 4
    for toggle in toggles:  # the selected button carries a check mark, and only it
        assert list(toggle.icons) == ["check" if o == toggle.value else "" for o in toggle.options]
        # description on the left of the buttons (as the dropdowns have it), buttons of a set width
        assert toggle.layout.display == "flex" and toggle.layout.flex_flow == "row nowrap"
        assert toggle.style.button_width
    c["ruler"].value = "off"
    assert list(c["ruler"].icons) == ["", "check"]
    # and, in JupyterLab, the selected button filled in: ipywidgets 8.1 marks it "mod-active" inside
    # a ToggleButtons of class "widget-toggle-buttons" (as a browser shows them)
    assert ".widget-toggle-buttons .jupyter-button.mod-active" in e.widget.children[0].value
    rows = [child for child in e.widget.children if isinstance(child, w.HBox)]
    assert len(rows) == 3 and all(r.layout.flex_flow == "row wrap" for r in rows)  # wrap between controls
    # the first control of each row has the same label width, so the rows line up
    assert len({row.children[0].style.description_width for row in rows}) == 1
    # the image slider says what it picks, and waits for the release
    slider = c["image"]
    assert (slider.min, slider.max, slider.continuous_update) == (1, 20, False)
    assert e.image_label.value == "of 20 nv images (clinic B)"
    assert c["knob"].description == "setting" and c["knob"].disabled  # saliency has nothing to tune


def test_the_explorer_shows_the_widget_live_and_a_snapshot_elsewhere(random_models):
    import base64

    from helpers.viz import STATIC_NOTE, Explorer, explorer

    e = explorer("Grad-CAM", models=random_models)
    assert isinstance(e, Explorer)
    data, metadata = e._repr_mimebundle_()
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == e.widget.model_id
    assert base64.b64decode(data["image/png"]).startswith(b"\x89PNG")
    assert "need a running kernel" in data["text/plain"] and "VBox" not in data["text/plain"]
    assert metadata["image/png"]["alt"].endswith(STATIC_NOTE)
    first = data["image/png"]
    e.controls["knob"].value = "layer3"
    assert e._repr_mimebundle_()[0]["image/png"] == first  # the first view, not the current one
