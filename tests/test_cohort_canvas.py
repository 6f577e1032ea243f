"""The Cohort explorer, opened as napari's Plugins menu opens it, centres a slide it opens
through napari's public canvas size: no private-attribute deprecation warning per slide."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_pathviz._widgets._cohort_slides import camera_of  # noqa: E402
from test_cohort_widget import SIZE, cohort  # noqa: E402, F401  (the cohort fixture)


def test_opening_a_slide_zooms_by_the_public_canvas_size(make_napari_viewer, qtbot, cohort):  # noqa: F811
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-pathviz", "Cohort explorer")
    widget.embeddings_folder.value = str(cohort["embeddings"])
    widget.slides_table_path.value = str(cohort["table"])
    widget.load_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.frame is not None, timeout=180_000)
    qtbot.waitUntil(lambda: widget.load_button.enabled, timeout=10_000)
    frame = widget.frame
    for slide_id in ("scan", "ome"):
        row = int(np.flatnonzero((frame["ID"] == slide_id).to_numpy())[5])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shown = widget.open_slide(slide_id, [row], centre=row)
        assert shown is not None
        private = [w for w in caught if "_canvas_size" in str(w.message)]
        assert not private, [str(w.message) for w in private]
        # The patch is an eighth of the canvas's shorter side, as large as the canvas allows.
        height, width = viewer.canvas.size
        assert min(height, width) > 300  # the real canvas, not a default
        assert camera_of(viewer).zoom == pytest.approx(min(height, width) / (8 * SIZE))
