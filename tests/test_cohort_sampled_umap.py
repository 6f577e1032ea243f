"""The Cohort explorer says when its UMAP is sampled and fits every patch when asked (issue 21
item 4), in a real viewer; the sampling threshold is lowered from 200,000 to 100 patches so the
test cohort of test_cohort_widget takes the sampled path in seconds."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pathviz import embedding_large
from napari_pathviz.embedding import UMAPParams, umap_embed
from test_cohort_widget import cohort  # noqa: F401  (the fixture)

LOWERED = 100


def _load_cohort(viewer, qtbot, paths, full_fit: bool):
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-pathviz", "Cohort explorer")
    widget.embeddings_folder.value = str(paths["embeddings"])
    widget.slides_table_path.value = str(paths["table"])
    widget.use_given.value = False
    widget.full_fit.value = full_fit
    widget.load_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.frame is not None, timeout=180_000)
    qtbot.waitUntil(lambda: widget.load_button.enabled, timeout=10_000)
    return widget


@pytest.mark.parametrize("full_fit", [False, True])
def test_cohort_umap_says_sampled_and_fits_all_when_asked(
    make_napari_viewer,
    qtbot,
    cohort,  # noqa: F811
    monkeypatch,
    full_fit,
):
    monkeypatch.setattr(embedding_large, "FIT_SAMPLE_ABOVE", LOWERED)
    monkeypatch.setattr(embedding_large, "FIT_SAMPLE_SIZE", LOWERED)
    widget = _load_cohort(make_napari_viewer(show=True), qtbot, cohort, full_fit)
    n = len(widget.frame)
    assert n > LOWERED
    full = umap_embed(widget.features, UMAPParams(random_state=0, fit_sample=0), use_cache=False)
    if full_fit:
        assert "sampled" not in widget.status.value and "(UMAP)" in widget.status.value
        np.testing.assert_array_equal(widget.coords, full)
    else:
        assert f"sampled UMAP: fitted on {LOWERED:,} patches" in widget.status.value
        assert "tick Full UMAP fit" in widget.status.value
        sampled = umap_embed(
            widget.features, UMAPParams(random_state=0, fit_sample=LOWERED), use_cache=False
        )
        np.testing.assert_array_equal(widget.coords, sampled)
        assert not np.array_equal(widget.coords, full)
