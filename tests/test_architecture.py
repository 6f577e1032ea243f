"""House rules that code review alone would let slip."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "napari_pathviz.slide",
    "napari_pathviz.patches",
    "napari_pathviz.tissue",
    "napari_pathviz.render",
    "napari_pathviz.io.zarr_io",
    "napari_pathviz.io.tiff_io",
    "napari_pathviz.io.tables",
    "napari_pathviz.slide_check",
    "napari_pathviz.cli",
    "napari_pathviz._layers",
    "napari_pathviz._reader",
    "napari_pathviz._demo",
    "napari_pathviz.embedding",
    "napari_pathviz.io.embeddings",
    "napari_pathviz.embedding_plot",
    "napari_pathviz.mosaic",
    "napari_pathviz.store",
    "napari_pathviz.models",
    "napari_pathviz.inference",
    "napari_pathviz.cohort",
    "napari_pathviz.cohort_run",
    "napari_pathviz.cohort_tasks",
    "napari_pathviz.heatmap",
    "napari_pathviz.model_card",
    "napari_pathviz._model_files",
    "napari_pathviz.architectures",
    "napari_pathviz._numba_cache",
    "napari_pathviz.store_lock",
    "napari_pathviz.io.atomic",
    "napari_pathviz.attribution",
    "napari_pathviz.attribution.deeplift",
    "napari_pathviz.attribution.gradients",
    "napari_pathviz.attribution.gradcam",
    "napari_pathviz.attribution.stored",
    "napari_pathviz.annotations",
    "napari_pathviz.io.clam_h5",
    "napari_pathviz.io.geojson",
    "napari_pathviz.io.wsinfer",
    "napari_pathviz._qupath_layers",
    "napari_pathviz.slide_level",
    "napari_pathviz.slide_head",
    "napari_pathviz.cohort_data",
    "napari_pathviz.batch_effect",
    "napari_pathviz.embedding_large",
    "napari_pathviz.umap_process",
    "napari_pathviz.umap_first_look",
    "napari_pathviz._umap_backends",
    "napari_pathviz.classes",
    "napari_pathviz.cohort_explain",
]
HEAVY = [
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide6",
    "torch",
    "vispy",
    "magicgui",
    "umap",
    "numba",
    "plotly",
    "sklearn",
    "h5py",
    "shapely",
]


def test_core_imports_no_gui_and_no_torch():
    """The core and the CLI start without napari, Qt, torch or UMAP (imported where used)."""
    code = (
        f"import sys; import {', '.join(CORE)}; print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_io_does_not_import_upwards():
    """io/ turns files into arrays and tables; it must not depend on the objects built on it."""
    from pathlib import Path

    import napari_pathviz.io as io_pkg

    for path in Path(io_pkg.__file__).parent.glob("*.py"):
        text = path.read_text()
        for upper in ("..slide", "..patches", "..tissue", "..render", "napari_pathviz.slide"):
            assert f"from {upper} import" not in text, f"{path.name} imports {upper}"
