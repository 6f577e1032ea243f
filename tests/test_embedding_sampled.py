"""The Embedding explorer says when its UMAP layout is sampled (fitted on part of the patches,
the rest placed among them) and lets the user ask for the full fit (issue 21 item 4), in a real
viewer with the widget opened from the Plugins menu and the UMAP run in its child process."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari")

from napari_pathviz._layers import patches_layer_data  # noqa: E402
from napari_pathviz._widgets._umap_form import UmapForm  # noqa: E402
from napari_pathviz.embedding_large import (  # noqa: E402
    FIT_SAMPLE_ABOVE,
    FIT_SAMPLE_SIZE,
    fit_sample_size,
)
from napari_pathviz.patches import PatchTable  # noqa: E402

PLUGIN = "napari-pathviz"
N, DIMS, SAMPLE = 1_200, 16, 400


@pytest.fixture
def explorer(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("PATHVIZ_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    keys = pd.DataFrame(
        {"ID": "s1", "x": np.arange(N) % 40 * 64, "y": np.arange(N) // 40 * 64, "patch_size": 64}
    )
    labels = rng.integers(0, 4, N)
    feats = rng.normal(0, 6, (4, DIMS))[labels] + rng.normal(0, 1, (N, DIMS))
    path = tmp_path / "embeddings.parquet"
    columns = pd.DataFrame(feats.astype(np.float32), columns=[f"feat_{j}" for j in range(DIMS)])
    pd.concat([keys, columns], axis=1).to_parquet(path, index=False)
    viewer = make_napari_viewer()
    from napari.layers import Layer

    table = PatchTable.from_frame(keys.assign(label=labels.astype(str)), slide_id="s1")
    layer = viewer.add_layer(Layer.create(*patches_layer_data(table)))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Embedding explorer")
    widget.embeddings_path.value = str(path)
    widget.seed.value = 0
    return widget, layer


def _run(widget, qtbot) -> None:
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=240_000)


def test_a_sampled_layout_says_so(explorer, qtbot, monkeypatch):
    widget, layer = explorer
    # Above FIT_SAMPLE_ABOVE patches the automatic choice fits on a sample; a table that large
    # takes minutes here, so the form asks for a sample of SAMPLE itself: the child fits on it
    # for real and places the rest.
    chosen = UmapForm.params
    monkeypatch.setattr(
        UmapForm, "params", lambda self: dataclasses.replace(chosen(self), fit_sample=SAMPLE)
    )
    _run(widget, qtbot)
    assert widget.status.value == (
        f"UMAP of {N} patches, sampled: fitted on {SAMPLE}, the rest placed "
        "(tick Full UMAP fit to fit all)"
    )
    assert np.isfinite(layer.features[["umap_0", "umap_1"]].to_numpy()).all()


def test_full_fit_asks_for_every_patch(explorer, qtbot):
    widget, layer = explorer
    # the automatic rule, and the box that overrides it
    assert widget.umap_form.params().fit_sample is None
    assert fit_sample_size(None, FIT_SAMPLE_ABOVE + 1) == FIT_SAMPLE_SIZE
    widget.full_fit.value = True
    params = widget.umap_form.params()
    assert params.fit_sample == 0 and fit_sample_size(0, FIT_SAMPLE_ABOVE + 1) is None
    _run(widget, qtbot)
    assert widget.status.value == f"UMAP of {N} patches", widget.status.value
    assert np.isfinite(layer.features[["umap_0", "umap_1"]].to_numpy()).all()
