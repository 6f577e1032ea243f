"""Zarr slides: OME-Zarr (NGFF 0.4 and 0.5), groups of numbered levels, single arrays, and
PathFlowAI's ``{basename}.zarr`` single array laid out (x, y, C).

Also writes OME-Zarr pyramids (NGFF 0.4 on zarr format 2, axes c, y, x, which every OME-Zarr
reader opens).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PathvizError
from .source import CheckedArray, PyramidSource

LAYOUTS = ("auto", "yxc", "xyc", "cyx")
_UNIT_TO_MICRONS = {
    "micrometer": 1.0,
    "micron": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "nanometer": 1e-3,
    "nm": 1e-3,
    "millimeter": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}


def is_zarr_path(path: str | os.PathLike) -> bool:
    p = Path(path)
    if str(path).rstrip("/").lower().endswith(".zarr"):
        return True
    return p.is_dir() and any((p / name).exists() for name in ("zarr.json", ".zgroup", ".zarray"))


def open_zarr(
    path: str | os.PathLike, layout: str = "auto", allow_missing_chunks: bool = False
) -> PyramidSource:
    """Opens a zarr slide lazily; reads metadata only."""
    import zarr

    path = str(path)
    if layout not in LAYOUTS:
        raise PathvizError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if not os.path.exists(path):
        raise PathvizError(f"{path}: no such file or directory")
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:
        raise PathvizError(
            f"{path}: not a readable zarr store ({type(exc).__name__}: {exc})"
        ) from exc

    check = not allow_missing_chunks
    if isinstance(node, zarr.Array):
        axes = _single_array_axes(node, path, layout)
        return PyramidSource(
            path,
            [CheckedArray(node, path, 0, check)],
            axes,
            "zarr-array",
            metadata={"layout": axes},
        )

    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return _open_ome(node, path, multiscales[0], layout, check)

    level_names = sorted((k for k in node.array_keys() if k.isdigit()), key=int)
    if not level_names:
        raise PathvizError(
            f"{path}: zarr group has no OME 'multiscales' metadata and no numbered level arrays"
        )
    arrays = [node[k] for k in level_names]
    axes = _single_array_axes(arrays[0], path, layout)
    checked = [CheckedArray(a, path, i, check) for i, a in enumerate(arrays)]
    _check_levels_shrink(checked, axes, path)
    return PyramidSource(path, checked, axes, "zarr-levels", metadata={"layout": axes})


def _open_ome(group: Any, path: str, ms: dict, layout: str, check: bool) -> PyramidSource:
    datasets = ms.get("datasets") or []
    if not datasets:
        raise PathvizError(f"{path}: OME multiscales metadata lists no datasets")
    axes_meta = ms.get("axes")
    arrays = []
    for i, ds in enumerate(datasets):
        try:
            arrays.append(group[ds["path"]])
        except Exception as exc:
            raise PathvizError(
                f"{path}: OME dataset {ds.get('path')!r} (level {i}) is missing"
            ) from exc
    ndim = arrays[0].ndim
    if axes_meta:
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes_meta]
        axes = "".join(n[0].lower() for n in names)
    else:  # NGFF 0.1-0.3 had no axes: always t c z y x
        axes = "tczyx"[-ndim:]
    if layout != "auto":
        axes = layout
    if len(axes) != ndim or not {"y", "x"} <= set(axes):
        raise PathvizError(f"{path}: OME axes {axes!r} do not fit arrays of {ndim} dimensions")

    mpp = None
    transforms = datasets[0].get("coordinateTransformations") or []
    scales = [t["scale"] for t in transforms if t.get("type") == "scale"]
    if scales and axes_meta and isinstance(axes_meta[axes.index("x")], dict):
        unit = axes_meta[axes.index("x")].get("unit")
        factor = _UNIT_TO_MICRONS.get(str(unit).lower()) if unit else None
        if factor is not None:
            mpp = float(scales[0][axes.index("x")]) * factor
    checked = [CheckedArray(a, path, i, check) for i, a in enumerate(arrays)]
    _check_levels_shrink(checked, axes, path)
    return PyramidSource(
        path, checked, axes, "ome-zarr", mpp=mpp, metadata={"layout": axes, "name": ms.get("name")}
    )


def _single_array_axes(array: Any, path: str, layout: str) -> str:
    if layout != "auto":
        return layout
    if array.ndim == 2:
        return "yx"
    if array.ndim != 3:
        raise PathvizError(f"{path}: expected a 2-D or 3-D image array, found shape {array.shape}")
    names = array.attrs.get("_ARRAY_DIMENSIONS")  # xarray's convention
    if names and len(names) == 3:
        return "".join(str(n)[0].lower() for n in names)
    if array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        return "cyx"
    if looks_like_pathflowai_slide(path):
        return "xyc"
    return "yxc"


def looks_like_pathflowai_slide(path: str) -> bool:
    """PathFlowAI keeps ``{basename}.zarr`` beside a patch database whose ``ID`` column names
    that basename; such an array is stored (x, y, C)."""
    zarr_path = Path(path)
    basename = zarr_path.name.removesuffix(".zarr")
    for db in zarr_path.parent.glob("*.db"):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                tables = [
                    r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
                ]
                for table in tables:
                    cols = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
                    if (
                        "ID" in cols
                        and con.execute(
                            f'SELECT 1 FROM "{table}" WHERE ID = ? LIMIT 1', (basename,)
                        ).fetchone()
                    ):
                        return True
        except sqlite3.Error:
            continue
    return False


def _check_levels_shrink(arrays: list, axes: str, path: str) -> None:
    iy, ix = axes.index("y"), axes.index("x")
    for i in range(1, len(arrays)):
        prev, cur = arrays[i - 1].shape, arrays[i].shape
        if cur[iy] > prev[iy] or cur[ix] > prev[ix]:
            raise PathvizError(f"{path}: level {i} {cur} is larger than level {i - 1} {prev}")


def write_ome_zarr(
    levels: list,
    out: str | os.PathLike,
    *,
    n_native: int | None = None,
    mpp: float | None = None,
    chunk: int = 512,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Path:
    """Writes y-x-c dask levels as an OME-Zarr pyramid: NGFF 0.4 on zarr format 2, axes c, y, x.

    NGFF 0.4 rather than 0.5: both validate (ome-zarr-models 1.7) and open in ome-zarr-py 0.18,
    but 0.5 needs a zarr-v3 reader, while 0.4 also opens in the readers most users have
    (napari-ome-zarr, Fiji/BigDataViewer, QuPath, vizarr, older ome-zarr-py). NGFF orders axes
    time, channel, space, so the channel axis comes first; our reader shows it as one RGB layer.

    Levels are written one chunk row at a time so that memory stays bounded, progress can be
    reported as (chunks done, chunks total) and the work can be cancelled between rows. Levels
    past ``n_native`` (those a Slide built lazily) are computed from the level just written rather
    than from level 0 again, so each source pixel is read once. The pyramid is built in a hidden
    sibling folder and renamed to ``out`` at the end: a failure or a cancel leaves no output.
    """
    import shutil

    from .atomic import partial_folder, remove_stale_partials

    out = Path(out)
    if out.exists():
        raise PathvizError(f"{out}: already exists; choose another output path or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)  # a killed write's leftover (kill -9 runs no cleanup)
    partial = partial_folder(out)
    try:
        n_native = len(levels) if n_native is None else n_native
        datasets = _write_levels(levels, partial, n_native, mpp, chunk, progress, cancelled)
        n_channels = int(levels[0].shape[2])
        attrs = _ngff_attrs(name or out.name, datasets, mpp, n_channels, n_native, levels[0].dtype)
        import zarr

        zarr.open_group(str(partial), mode="r+", zarr_format=2).attrs.update(attrs)
        if out.exists():
            raise PathvizError(f"{out}: appeared while it was being written; not replacing it")
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _write_levels(
    levels: list,
    folder: Path,
    n_native: int,
    mpp: float | None,
    chunk: int,
    progress: Callable[[int, int], None] | None,
    cancelled: Callable[[], bool] | None,
) -> list[dict]:
    """Writes each (y, x, c) level as a (c, y, x) array; returns the NGFF ``datasets``."""
    import dask.array as da
    import zarr
    from numcodecs import Blosc

    from .pyramid import downsample_2x

    group = zarr.open_group(str(folder), mode="w-", zarr_format=2)
    n_channels = int(levels[0].shape[2])
    total = sum(-(-lv.shape[0] // chunk) * -(-lv.shape[1] // chunk) for lv in levels)
    done = 0
    datasets = []
    base_h, base_w = levels[0].shape[:2]
    factors = (1.0, 1.0)
    for i, level in enumerate(levels):
        if i >= n_native:
            level = downsample_2x(da.from_zarr(group[str(i - 1)]).transpose(1, 2, 0))
        arr = group.create_array(
            str(i),
            shape=(n_channels, *level.shape[:2]),
            chunks=(n_channels, chunk, chunk),
            dtype=level.dtype,
            compressors=Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE),
            fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
            config={"write_empty_chunks": True},
        )
        for y0 in range(0, level.shape[0], chunk):
            if cancelled is not None and cancelled():
                raise InterruptedError("conversion cancelled")
            band = np.asarray(level[y0 : y0 + chunk].compute())
            arr[:, y0 : y0 + band.shape[0]] = band.transpose(2, 0, 1)
            done += -(-level.shape[1] // chunk)
            if progress is not None:
                progress(done, total)
        if i >= n_native:  # a 2 x 2 mean that trims an odd edge: exactly twice the last
            factors = (factors[0] * 2, factors[1] * 2)
        else:
            factors = (base_h / level.shape[0], base_w / level.shape[1])
        datasets.append(
            {"path": str(i), "coordinateTransformations": _level_transforms(factors, mpp)}
        )
    return datasets


def _level_transforms(factors: tuple[float, float], mpp: float | None) -> list[dict]:
    """Scale (microns, or level-0 pixels when the mpp is unknown) and the half-pixel translation
    that puts a coarse pixel's centre over the centre of the level-0 pixels it averages, as
    ome-zarr-py writes it."""
    unit = mpp or 1.0
    scale = [1.0] + [f * unit for f in factors]
    translation = [0.0] + [(f - 1.0) / 2.0 * unit for f in factors]
    return [
        {"type": "scale", "scale": scale},
        {"type": "translation", "translation": translation},
    ]


_CHANNEL_COLORS = {1: ["FFFFFF"], 3: ["FF0000", "00FF00", "0000FF"]}
_CHANNEL_COLORS[4] = [*_CHANNEL_COLORS[3], "FFFFFF"]
_CHANNEL_LABELS = {1: ["gray"], 3: ["red", "green", "blue"], 4: ["red", "green", "blue", "alpha"]}


def _ngff_attrs(
    name: str, datasets: list[dict], mpp: float | None, n_channels: int, n_native: int, dtype
) -> dict:
    """NGFF 0.4 ``multiscales`` (axes with types and units) and ``omero`` rendering settings, so
    that OMERO-style viewers composite the channels back into the RGB image."""
    unit = {"unit": "micrometer"} if mpp else {}
    multiscale = {
        "version": "0.4",
        "name": name,
        "axes": [
            {"name": "c", "type": "channel"},
            {"name": "y", "type": "space", **unit},
            {"name": "x", "type": "space", **unit},
        ],
        "datasets": datasets,
    }
    if n_native == 1 and len(datasets) > 1:
        multiscale["type"] = "mean"  # every coarser level is our 2 x 2 mean
        multiscale["metadata"] = {"method": "napari_pathviz.io.pyramid.downsample_2x"}
    top = float(np.iinfo(dtype).max) if np.dtype(dtype).kind in "ui" else 1.0
    colors = _CHANNEL_COLORS.get(n_channels, ["FFFFFF"] * n_channels)
    labels = _CHANNEL_LABELS.get(n_channels, [f"c{i}" for i in range(n_channels)])
    channels = [
        {
            "label": label,
            "color": color,
            "active": True,
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
            "window": {"min": 0.0, "max": top, "start": 0.0, "end": top},
        }
        for label, color in zip(labels, colors, strict=True)
    ]
    model = "color" if n_channels >= 3 else "greyscale"
    omero = {"name": name, "version": "0.4", "channels": channels, "rdefs": {"model": model}}
    return {"multiscales": [multiscale], "omero": omero}
