"""Fixtures: every slide and table the tests read is written here, by the tests themselves."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

# A real tissue image, not square, so that a swapped axis is caught.
HEIGHT, WIDTH = 1000, 1400


@pytest.fixture(scope="session")
def tissue_rgb() -> np.ndarray:
    from skimage import data

    return np.tile(data.immunohistochemistry(), (2, 3, 1))[:HEIGHT, :WIDTH].copy()


@pytest.fixture(scope="session", autouse=True)
def demo_data_dir(tmp_path_factory) -> Path:
    """Builds the demo data once per test session, and keeps results (UMAP cache) away from
    the user's cache. Numba's compiled kernels may persist: they only save time."""
    import os

    path = tmp_path_factory.mktemp("demo")
    os.environ["PATHVIZ_DEMO_DIR"] = str(path)
    os.environ.setdefault(
        "NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "napari-pathviz" / "numba")
    )
    os.environ["PATHVIZ_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    return path


_JPEG = {"compression": "jpeg", "photometric": "rgb", "metadata": None}


def write_pyramidal_tiff(path: Path, image: np.ndarray, levels: int = 3) -> Path:
    """A generic pyramidal TIFF: level 0 with reduced-resolution SubIFDs, JPEG tiles, calibrated
    at 0.25 µm/px through the TIFF resolution tags (in centimetres)."""
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            image,
            tile=(256, 256),
            subifds=levels - 1,
            resolution=(40000, 40000),
            resolutionunit="CENTIMETER",
            **_JPEG,
        )
        for k in range(1, levels):
            tw.write(image[:: 2**k, :: 2**k], tile=(256, 256), subfiletype=1, **_JPEG)
    return path


def write_svs(path: Path, image: np.ndarray) -> Path:
    """An Aperio-style SVS: baseline, thumbnail (strips), two reduced levels, a label."""
    head = "Aperio Image Library v12.0.15\r\n"
    h, w = image.shape[:2]
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            image,
            tile=(256, 256),
            description=f"{head}{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=70|AppMag = 20"
            "|MPP = 0.4990",
            **_JPEG,
        )
        tw.write(image[::8, ::8], description=f"{head}thumbnail", **_JPEG)
        tw.write(image[::2, ::2], tile=(256, 256), description=head, **_JPEG)
        tw.write(image[::4, ::4], tile=(256, 256), description=head, **_JPEG)
        tw.write(image[:100, :100], description=f"{head}label 100x100", subfiletype=1, **_JPEG)
    return path


def write_ome_tiff(path: Path, image: np.ndarray) -> Path:
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(
            image,
            tile=(256, 256),
            subifds=1,
            compression="jpeg",
            photometric="rgb",
            metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
        )
        tw.write(
            image[::2, ::2], tile=(256, 256), subfiletype=1, compression="jpeg", photometric="rgb"
        )
    return path


@pytest.fixture
def pyramidal_tiff(tmp_path, tissue_rgb) -> Path:
    return write_pyramidal_tiff(tmp_path / "slide.tif", tissue_rgb)


@pytest.fixture
def svs_file(tmp_path, tissue_rgb) -> Path:
    return write_svs(tmp_path / "scan.svs", tissue_rgb)


@pytest.fixture
def ome_tiff(tmp_path, tissue_rgb) -> Path:
    return write_ome_tiff(tmp_path / "scan.ome.tif", tissue_rgb)


@pytest.fixture
def ome_zarr(tmp_path, tissue_rgb) -> Path:
    """OME-Zarr written by the package's own writer."""
    import dask.array as da

    from napari_pathviz.io.pyramid import lazy_levels
    from napari_pathviz.io.zarr_io import write_ome_zarr

    levels = lazy_levels(da.from_array(tissue_rgb, chunks=(256, 256, 3)), min_size=300)
    return write_ome_zarr(levels, tmp_path / "slide.ome.zarr", n_native=1, mpp=0.5, chunk=256)


@pytest.fixture
def pathflowai_project(tmp_path, tissue_rgb) -> dict:
    """PathFlowAI's outputs: {ID}.zarr as one (x, y, C) array, and patch_info.db with one table
    per patch size (columns index, ID, x, y, patch_size, annotation, one coverage column each)."""
    import zarr

    slide_id = "case01"
    transposed = np.ascontiguousarray(tissue_rgb.transpose(1, 0, 2))  # (x, y, C)
    arr = zarr.create_array(
        str(tmp_path / f"{slide_id}.zarr"),
        shape=transposed.shape,
        chunks=(256, 256, 3),
        dtype="uint8",
        zarr_format=2,
    )
    arr[:] = transposed
    rows = []
    for size in (128, 256):
        for x in range(0, WIDTH - size + 1, size):
            for y in range(0, HEIGHT - size + 1, size):
                frac = x / WIDTH
                rows.append(
                    {
                        "ID": slide_id,
                        "x": x,
                        "y": y,
                        "patch_size": size,
                        "annotation": "tumor" if frac > 0.5 else "stroma",
                        "tumor": round(frac, 3),
                        "stroma": round(1 - frac, 3),
                    }
                )
        rows.append(
            {
                "ID": "other_slide",
                "x": 0,
                "y": 0,
                "patch_size": size,
                "annotation": "stroma",
                "tumor": 0.0,
                "stroma": 1.0,
            }
        )
    df = pd.DataFrame(rows)
    db = tmp_path / "patch_info.db"
    with sqlite3.connect(db) as con:
        for size, part in df.groupby("patch_size"):
            part.reset_index(drop=True).to_sql(str(size), con, index=True)
    return {
        "zarr": tmp_path / f"{slide_id}.zarr",
        "db": db,
        "id": slide_id,
        "rows": df,
        "image": tissue_rgb,
    }


def run_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the installed ``pathviz`` console script in a fresh process, as a user would."""
    exe = os.path.join(os.path.dirname(sys.executable), "pathviz")
    return subprocess.run(
        [exe, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def notifications():
    """Messages napari would show the user, collected."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def collect(event):
        seen.append(str(getattr(event, "message", event)))

    notification_manager.notification_ready.connect(collect)
    yield seen
    notification_manager.notification_ready.disconnect(collect)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Deletes the Qt objects the session leaves behind, one at a time, before PyQt's exit
    handler would. napari keeps every closed Window alive (its theme's canvas event holds a
    lambda its teardown cannot disconnect), and each Window's task-status manager holds the
    workers it ran, whose signals hold our widgets. PyQt6's atexit cleanup then deletes those
    parentless widgets while it walks its own wrapper map, and deleting their children under
    that walk crashed the interpreter after every test had passed (a core dump showed
    ``cleanup_on_exit`` -> ``sip_api_get_address`` on a freed wrapper)."""
    if "PyQt6.QtCore" not in sys.modules:
        return
    import gc

    from PyQt6 import sip
    from PyQt6.QtCore import QCoreApplication, QObject, QThread

    gc.collect()
    app = QCoreApplication.instance()
    here = QThread.currentThread()
    # type(), not isinstance(): some module objects warn when their __class__ is read.
    for obj in [o for o in gc.get_objects() if issubclass(type(o), QObject)]:
        try:
            orphan = sip.ispyowned(obj) and not sip.isdeleted(obj) and obj.parent() is None
            if orphan and obj is not app and obj.thread() is here:
                sip.delete(obj)
        except RuntimeError:  # deleted along with an object deleted before it
            pass
    gc.collect()
