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


def level_pages(source: PyramidSource) -> list[list[Any]]:
    """The TIFF pages (IFDs) holding each level of a slide opened by :func:`open_tiff`."""
    series = source.metadata["tifffile"].series[0]
    return [list(level.pages) for level in series.levels]


def tile_position(keyframe: Any, index: int) -> str:
    """Where tile (or strip) ``index`` of a page lies, in that level's pixels."""
    if keyframe.is_tiled:
        across = -(-keyframe.imagewidth // keyframe.tilewidth)
        down = -(-keyframe.imagelength // keyframe.tilelength)
        plane, within = divmod(index, across * down)
        row, col = divmod(within, across)
        where = f"tile {index} at x={col * keyframe.tilewidth}, y={row * keyframe.tilelength}"
        return where + (f", sample plane {plane}" if plane else "")
    rows = keyframe.rowsperstrip or keyframe.imagelength
    strips = -(-keyframe.imagelength // rows)
    plane, strip = divmod(index, strips)
    return f"strip {index} at y={strip * rows}" + (f", sample plane {plane}" if plane else "")


def tile_table_faults(source: PyramidSource) -> list[str]:
    """Tiles whose offset or byte count in the file's tables is zero (tifffile reads such a
    tile as blank, with no error), or that run past the end of the file: one entry each."""
    tif = source.metadata["tifffile"]
    file_size = tif.filehandle.size
    faults = []
    for level, pages in enumerate(level_pages(source)):
        for page in pages:
            counts, offsets = page.databytecounts, page.dataoffsets
            for i, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
                if count == 0 or offset == 0:
                    what = "byte count 0" if count == 0 else "offset 0"
                    problem = f"is empty ({what})"
                elif offset + count > file_size:
                    problem = f"runs past the end of the file ({offset} + {count} > {file_size})"
                else:
                    continue
                faults.append(f"level {level}: {tile_position(page.keyframe, i)} {problem}")
    return faults


def missing_tiles(source: PyramidSource, level: int) -> list[tuple[str, tuple[int, ...]]]:
    """The tiles of native ``level`` whose offset or byte count is zero (tifffile reads them
    as blank, with no error): (description, (y0, y1, x0, x1) in that level's pixels) each.
    From the tile tables alone, nothing decoded; cached on the source."""
    cache = source.metadata.setdefault("missing_tiles", {})
    if level in cache:
        return cache[level]
    found = []
    for page in level_pages(source)[level]:
        key = page.keyframe
        if not key.is_tiled:
            continue
        across = -(-key.imagewidth // key.tilewidth)
        down = -(-key.imagelength // key.tilelength)
        for i, (offset, count) in enumerate(
            zip(page.dataoffsets, page.databytecounts, strict=True)
        ):
            if offset and count:
                continue
            row, col = divmod(i % (across * down), across)
            y0, x0 = row * key.tilelength, col * key.tilewidth
            what = (
                f"{tile_position(key, i)} is missing ({'byte count' if not count else 'offset'} 0)"
            )
            found.append((what, (y0, y0 + key.tilelength, x0, x0 + key.tilewidth)))
    cache[level] = found
    return found


def decode_every_tile(source: PyramidSource, progress=None) -> int:
    """Decodes every tile of every level and compares its decoded shape with the shape the
    page's tags promise; raises naming the first bad tile; returns the tiles decoded.

    JPEG cannot detect every flipped bit: most decode to a tile of the right size with wrong
    pixels. This finds tiles that do not decode, decode to another size, or (JPEG) lack the
    end-of-image marker that a cut-off tile loses.
    """
    tif = source.metadata["tifffile"]
    fh = tif.filehandle
    pages = [(level, page) for level, ps in enumerate(level_pages(source)) for page in ps]
    total = sum(len(page.dataoffsets) for _, page in pages)
    done = 0
    for level, page in pages:
        key = page.keyframe
        args = {"_fullsize": False}
        if int(key.compression) in (6, 7, 34892, 33007):  # the JPEG flavours
            args.update(jpegtables=page.jpegtables, jpegheader=key.jpegheader)
        # A JPEG tile is a whole JPEG stream ending in an EOI marker; NDPI strips are not.
        ends_marked = int(key.compression) == 7 and not tif.is_ndpi
        for data, index in fh.read_segments(page.dataoffsets, page.databytecounts, lock=fh.lock):
            where = f"{source.path}: level {level}: {tile_position(key, index)}"
            if not data:
                raise PathvizError(f"{where} is empty")
            if ends_marked and not bytes(data[-64:]).rstrip(b"\x00").endswith(b"\xff\xd9"):
                # libjpeg decodes a cut-off tile without an error, greying the rest.
                raise PathvizError(f"{where} is truncated (its JPEG data has no end marker)")
            try:
                decoded, _, expected = key.decode(data, index, **args)
            except Exception as exc:
                raise PathvizError(
                    f"{where} does not decode ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'})"
                ) from exc
            shape = None if decoded is None else tuple(decoded.shape)
            if shape != tuple(expected):
                raise PathvizError(f"{where} decodes to shape {shape}, expected {tuple(expected)}")
            done += 1
            if progress is not None and (done % 64 == 0 or done == total):
                progress(done, total)
    return done
