"""Grad-CAM++'s eps from the user's side: ``pathviz gradcam --gradcampp-eps`` stores the maps
the engine computes with that eps; the Attributions widget's Grad-CAM++ eps field, in a viewer
opened as napari's Plugins menu opens the dock, puts them on the slide (1e-6: pytorch-grad-cam's
maps, 0: the paper's), and a bad value is refused in a notification before any job, layer or
store. (The engine against pytorch-grad-cam: test_peer_agreement.py, test_vit.py.)"""

from __future__ import annotations

import numpy as np
import pytest


def _inputs_at(keys):
    """The demo patches at the stored keys' (x, y), as the demo model reads them."""
    from napari_pathviz._demo import load_demo
    from napari_pathviz._demo_model import read_patches, to_model_input
    from napari_pathviz.patches import PatchTable

    slide, table = load_demo(with_predictions=False)
    rows = table.df.set_index(["x", "y"]).loc[list(zip(keys["x"], keys["y"], strict=True))]
    return to_model_input(read_patches(slide, PatchTable(rows.reset_index())))


def test_cli_gradcampp_eps_stores_the_engines_maps(tmp_path, capsys):
    from importlib import resources

    from napari_pathviz._demo import ensure_demo_data
    from napari_pathviz._demo_model import load_demo_model
    from napari_pathviz.attribution import attribute
    from napari_pathviz.attribution.stored import open_attributions
    from napari_pathviz.cli import main

    paths = ensure_demo_data()
    weights = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
    common = ["gradcam", "-m", weights, "--factory", "napari_pathviz._demo_model:build_demo_model"]
    common += ["--mean", "0.8", "0.72", "0.7", "--std", "0.15", "0.18", "0.18"]
    common += ["--slide", str(paths["slide"]), "--patches", str(paths["patches"])]
    common += ["--ids", "3", "200", "--device", "cpu", "--method", "gradcampp"]
    maps = {}
    for eps in ("1e-6", "0"):
        store = tmp_path / f"eps{eps}.zarr"
        out = ["-o", str(tmp_path / f"{eps}.png"), "--attributions-out", str(store)]
        assert main([*common, *out, "--gradcampp-eps", eps]) == 0, capsys.readouterr().err
        result, keys = open_attributions(store)
        maps[eps] = np.asarray(result.maps)
    x = _inputs_at(keys)
    expected = attribute(load_demo_model(), x, "gradcampp", eps=1e-6).maps
    scale = np.abs(expected).max()
    assert np.abs(maps["1e-6"] - expected).max() <= 1e-5 * scale
    paper = attribute(load_demo_model(), x, "gradcampp").maps
    assert np.abs(maps["0"] - paper).max() <= 1e-5 * scale
    assert np.abs(maps["0"] - maps["1e-6"]).max() > 1e-3 * scale


def _stores():
    from napari_pathviz.store import cache_root

    folder = cache_root() / "attributions"
    return set(folder.iterdir()) if folder.exists() else set()


def _explain(widget, qtbot, eps: str):
    widget.gradcampp_eps.value = eps
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert widget.status.value.startswith("gradcampp: 2 patches"), widget.status.value
    return widget._last[0]


def test_widget_gradcampp_eps(make_napari_viewer, qtbot, notifications):
    pytest.importorskip("napari")
    from napari_pathviz._demo_model import load_demo_model
    from napari_pathviz._widgets._attribution_layers import LAYER_PREFIX, META_ATTRIBUTION
    from napari_pathviz.attribution import attribute

    viewer = make_napari_viewer()
    viewer.open_sample("napari-pathviz", "demo")
    patches = viewer.layers[-1]
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-pathviz", "Attributions")
    widget.form.prefill_demo()
    widget.method.value = "gradcampp"
    widget.device.value = "cpu"
    patches.selected_data = {3, 200}
    viewer.layers.selection.active = patches

    theirs = _explain(widget, qtbot, "1e-6")
    rows = list(viewer.layers[f"{LAYER_PREFIX}gradcampp"].metadata[META_ATTRIBUTION]["rows"])
    assert sorted(rows) == [3, 200]
    x = _inputs_at(patches.features.iloc[rows])
    expected = attribute(load_demo_model(), x, "gradcampp", eps=1e-6).maps
    scale = np.abs(expected).max()
    assert np.abs(np.asarray(theirs.maps) - expected).max() <= 1e-5 * scale
    paper = _explain(widget, qtbot, "0")
    assert np.abs(np.asarray(paper.maps) - expected).max() > 1e-3 * scale  # eps changed them
    np.testing.assert_allclose(
        np.asarray(paper.maps), attribute(load_demo_model(), x, "gradcampp").maps, atol=1e-6 * scale
    )

    layers, stores = [layer.name for layer in viewer.layers], _stores()
    for bad in ("-1e-6", "tiny", "nan"):
        widget.gradcampp_eps.value = bad
        widget.run_button.clicked.emit()
        assert any("Grad-CAM++ eps must be" in m and bad in m for m in notifications), bad
        assert widget.run_button.enabled  # nothing started
    assert [layer.name for layer in viewer.layers] == layers
    assert _stores() == stores
