"""The Attributions widget's Grad-CAM++ eps field (the CLI's --gradcampp-eps), in a viewer
opened as napari's Plugins menu opens the dock: 1e-6 puts pytorch-grad-cam's maps on the
slide (those the engine computes with that eps), 0 the paper's, and a bad value is refused in
a notification before any job, layer or store."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")


def _demo_inputs(rows):
    from napari_pathviz._demo import load_demo
    from napari_pathviz._demo_model import read_patches, to_model_input
    from napari_pathviz.patches import PatchTable

    slide, table = load_demo(with_predictions=False)
    return to_model_input(read_patches(slide, PatchTable(table.df.iloc[rows])))


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
    x = _demo_inputs(rows)
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
