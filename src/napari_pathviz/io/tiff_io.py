"""Scanner files through tifffile: Aperio SVS, pyramidal TIFF, OME-TIFF, NDPI.

Every resolution level of the file's main series becomes a pyramid level; chunks follow the
file's tiles, decoded on demand (JPEG tiles need imagecodecs).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from typing import Any

from ..errors import PathvizError
from .source import CheckedArray, PyramidSource

TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".ome.tif", ".ome.tiff", ".btf", ".scn", ".bif")
# Compressions tifffile decodes without imagecodecs (zlib and packbits are in Python's stdlib or
# tifffile itself); every other codec, JPEG included, needs imagecodecs.
_BUILTIN_CODECS = {1, 8, 32946, 32773}
_UNIT_TO_MICRONS = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def is_tiff_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(TIFF_SUFFIXES)


def open_tiff(path: str | os.PathLike, allow_untiled: bool = False) -> PyramidSource:
    """Opens the main image series of a TIFF-based slide lazily; reads tags only."""
    import tifffile
    import zarr

    path = str(path)
    if not os.path.exists(path):
        raise PathvizError(f"{path}: no such file or directory")
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise PathvizError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    if not tif.series:
        raise PathvizError(f"{path}: TIFF holds no image series")
    series = tif.series[0]
    page = series.keyframe
    if not page.is_tiled and not allow_untiled:
        raise PathvizError(
            f"{path}: TIFF is not tiled (stored in strips), so regions cannot be read lazily; "
            "convert it with `pathviz convert --allow-untiled`"
        )
    _require_codec(path, page.compression)

    store = series.aszarr()
    node = zarr.open(store, mode="r")
    if isinstance(node, zarr.Array):
        arrays = [node]
    else:
        arrays = [node[str(i)] for i in range(len(series.levels))]
    axes = _axes(series.axes, path)
    fmt = "svs" if tif.is_svs else "ome-tiff" if tif.is_ome else "ndpi" if tif.is_ndpi else "tiff"
    checked = [CheckedArray(a, path, i) for i, a in enumerate(arrays)]
    return PyramidSource(
        path,
        checked,
        axes,
        f"tiff:{fmt}",
        mpp=_mpp(tif, page),
        metadata={"tifffile": tif, "store": store},
    )


def _require_codec(path: str, compression: Any) -> None:
    code = int(compression)
    if code in _BUILTIN_CODECS:
        return
    try:
        import imagecodecs  # noqa: F401
    except ImportError as exc:
        name = getattr(compression, "name", str(code))
        raise PathvizError(
            f"{path}: tiles are {name}-compressed and decoding them needs the imagecodecs "
            "package: pip install imagecodecs"
        ) from exc


def _axes(series_axes: str, path: str) -> str:
    # tifffile calls the colour samples axis 'S'; OME files may carry singleton T/Z/C axes.
    axes = series_axes.lower().replace("s", "c")
    if not {"y", "x"} <= set(axes) or any(a not in "tczyxq" for a in axes):
        raise PathvizError(f"{path}: unsupported TIFF axes {series_axes!r}")
    return axes


def _mpp(tif: Any, page: Any) -> float | None:
    """Microns per pixel at level 0, where the file says it."""
    if tif.is_svs:
        match = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
        if match:
            return float(match.group(1))
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pixels = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            size = pixels.get("PhysicalSizeX")
            if size is not None:
                unit = pixels.get("PhysicalSizeXUnit", "µm")
                return float(size) * _UNIT_TO_MICRONS.get(unit, 1.0)
        except (ET.ParseError, StopIteration, ValueError):
            pass
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if num and den:
            per_unit = num / den
            microns = {2: 25400.0, 3: 10000.0}.get(unit)
            if microns:
                mpp = microns / per_unit
                # Files without a real calibration often carry 72 dpi (353 µm/px): not a scan.
                if 0.01 <= mpp <= 100:
                    return mpp
    return None
