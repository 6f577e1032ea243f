"""Benchmark: random 224 x 224 patches from level 0, through Slide vs plain zarr/tifffile slicing.

Claim under test: "Reading random 224 x 224 patches from level 0 through our Slide: at least 80%
of the rate of reading the same regions with plain zarr/tifffile slicing."

Builds in a temporary folder, from one 8192 x 8192 RGB image (skimage's immunohistochemistry
sample tiled with random flips/rotations plus mild noise, so that it compresses like tissue):

* ``slide.ome.zarr``: OME-Zarr written by ``io.zarr_io.write_ome_zarr`` from
  ``io.pyramid.lazy_levels`` (chunks 512, Blosc-zstd);
* ``slide.tif``: pyramidal tiled TIFF written by tifffile (256 x 256 JPEG tiles, coarser levels in
  SubIFDs);
* ``S1.zarr`` (informational): a PathFlowAI-style single zarr array stored (x, y, C), here
  8192 high x 6144 wide, opened with ``layout="xyc"``.

For each, N seeded random top-lefts; "pathviz" is ``open_slide(path).read_region(y, x, 224, 224)``,
"plain" is slicing the same store directly (``zarr.open(path)["0"][y:y+224, x:x+224]``;
``zarr.open(tifffile.imread(path, aszarr=True))["0"][...]``; for x-y-C the transposed slice).
Each format is read once to warm caches and compare pixels, then ROUNDS timed rounds over all
points, the two readers alternating every BLOCK patches; the best round of each gives patches/s
(the ratio of median rounds is printed too). Also printed: what pathviz's missing-chunk check
(a stat per chunk, on by default for zarr) costs per patch.
Target: pathviz / plain >= 0.8 for the zarr and TIFF slides.

Run: /work/main/.venv/bin/python bench/read_patches.py [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr
from numcodecs import Blosc
from skimage.data import immunohistochemistry

from napari_pathviz.io.pyramid import lazy_levels
from napari_pathviz.io.zarr_io import write_ome_zarr
from napari_pathviz.slide import open_slide

SIZE = 8192
XYC_WIDTH = 6144
PATCH = 224
N = 1000
ROUNDS = 5
BLOCK = 100
TARGET = 0.8
SEED = 1234

Reader = Callable[[int, int], np.ndarray]


def make_image(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Tissue-like RGB: the 512 x 512 IHC sample tiled with random flips/rotations, plus noise."""
    rng = np.random.default_rng(seed)
    tile = immunohistochemistry()
    t = tile.shape[0]
    image = np.empty((size, size, 3), np.uint8)
    for y in range(0, size, t):
        for x in range(0, size, t):
            variant = np.rot90(tile, rng.integers(4))
            if rng.integers(2):
                variant = variant[:, ::-1]
            image[y : y + t, x : x + t] = variant
    noise = rng.integers(-3, 4, image.shape, dtype=np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_tiff(image: np.ndarray, path: Path) -> int:
    """Pyramidal tiled JPEG TIFF, coarser levels in SubIFDs; returns the number of levels."""
    levels = [np.asarray(lv) for lv in lazy_levels(da.from_array(image, chunks=1024))]
    opts = {
        "tile": (256, 256),
        "compression": "jpeg",
        "compressionargs": {"level": 90},
        "photometric": "rgb",
    }
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, **opts)
        for lv in levels[1:]:
            tif.write(lv, subfiletype=1, **opts)
    return len(levels)


def write_xyc(image: np.ndarray, path: Path) -> None:
    """PathFlowAI's layout: one array, axes (x, y, C)."""
    xyc = np.ascontiguousarray(image.transpose(1, 0, 2))
    arr = zarr.create_array(
        str(path),
        shape=xyc.shape,
        chunks=(512, 512, 3),
        dtype=np.uint8,
        zarr_format=2,
        compressors=Blosc(cname="lz4", clevel=5),
    )
    arr[:] = xyc


def points(height: int, width: int, n: int = N, seed: int = SEED) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, height - PATCH + 1, n)
    xs = rng.integers(0, width - PATCH + 1, n)
    return [(int(y), int(x)) for y, x in zip(ys, xs, strict=True)]


def describe(slide, pts: list[tuple[int, int]]) -> None:
    cost = check_cost(slide, pts)
    check = "off" if cost is None else f"{cost * 1e6:.1f} us/patch"
    print(
        f"{slide.path}: pathviz format {slide.source.format!r}, stored axes "
        f"{slide.source.axes!r}, {slide.n_native} stored level(s) of {len(slide.levels)}; "
        f"missing-chunk check {check}"
    )


def timed_pass(read: Reader, pts: list[tuple[int, int]]) -> float:
    t0 = time.perf_counter()
    for y, x in pts:
        read(y, x)
    return time.perf_counter() - t0


def compare(
    name: str,
    ours: Reader,
    plain: Reader,
    pts: list[tuple[int, int]],
    target: float | None,
    profile: bool,
    truth: np.ndarray | None = None,
) -> dict:
    # warm-up pass (OS cache, codecs, zarr's event loop) and a pixel check on a few patches
    timed_pass(ours, pts)
    timed_pass(plain, pts)
    for y, x in pts[:10]:
        a, b = ours(y, x), plain(y, x)
        if a.shape != (PATCH, PATCH, 3) or not np.array_equal(a, b):
            raise AssertionError(f"{name}: patch at ({y}, {x}) differs: {a.shape} vs {b.shape}")
        if truth is not None and not np.array_equal(a, truth[y : y + PATCH, x : x + PATCH]):
            raise AssertionError(f"{name}: patch at ({y}, {x}) is not the image written")
    times = interleaved_rounds(ours, plain, pts)
    rate_ours = len(pts) / min(times["ours"])
    rate_plain = len(pts) / min(times["plain"])
    ratio = rate_ours / rate_plain
    median_ratio = statistics.median(times["plain"]) / statistics.median(times["ours"])
    verdict = (
        ""
        if target is None
        else (f" (target >= {target:g}) -> {'PASS' if ratio >= target else 'FAIL'}")
    )
    print(
        f"{name:34s} pathviz {rate_ours:7.1f} patches/s, plain {rate_plain:7.1f} patches/s, "
        f"ratio {ratio:.3f}{verdict}"
    )
    print(f"{'':34s} ratio of median rounds {median_ratio:.3f}")
    print(
        f"{'':34s} per-round s: pathviz {', '.join(f'{t:.3f}' for t in times['ours'])}; "
        f"plain {', '.join(f'{t:.3f}' for t in times['plain'])}"
    )
    if profile:
        for label, fn in (("pathviz", ours), ("plain", plain)):
            prof = cProfile.Profile()
            prof.runcall(timed_pass, fn, pts)
            print(f"--- cProfile {name} {label} (top 12 by own time)")
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return {
        "name": name,
        "ours": rate_ours,
        "plain": rate_plain,
        "ratio": ratio,
        "median_ratio": median_ratio,
        "target": target,
    }


def interleaved_rounds(ours: Reader, plain: Reader, pts: list[tuple[int, int]]) -> dict:
    """ROUNDS rounds over all points; within a round the readers alternate every BLOCK patches
    (and which goes first), so drifts in machine speed hit both alike. Seconds per round."""
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for r in range(ROUNDS):
        total = {"ours": 0.0, "plain": 0.0}
        for b, start in enumerate(range(0, len(pts), BLOCK)):
            block = pts[start : start + BLOCK]
            order = ("ours", "plain") if (r + b) % 2 == 0 else ("plain", "ours")
            for which in order:
                total[which] += timed_pass(ours if which == "ours" else plain, block)
        for which, t in total.items():
            times[which].append(t)
    return times


def check_cost(slide, pts: list[tuple[int, int]]) -> float | None:
    """Seconds per patch that pathviz's missing-chunk check (a stat per chunk) costs."""
    arr = slide.source.arrays[0]
    if getattr(arr, "_chunk_exists", None) is None:
        return None
    keys = []
    for y, x in pts:
        by_axis = {"y": slice(y, y + PATCH), "x": slice(x, x + PATCH), "c": slice(None)}
        keys.append(tuple(by_axis[a] for a in slide.source.axes))
    t0 = time.perf_counter()
    for key in keys:
        arr._raise_on_missing_chunk(key)
    return (time.perf_counter() - t0) / len(pts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="cProfile one pass of each reader")
    args = parser.parse_args()

    t0 = time.perf_counter()
    image = make_image()
    with tempfile.TemporaryDirectory(prefix="pathviz-bench-") as tmp:
        tmp = Path(tmp)
        zarr_path = write_ome_zarr(
            lazy_levels(da.from_array(image, chunks=512)), tmp / "slide.ome.zarr"
        )
        tiff_path = tmp / "slide.tif"
        n_tiff = write_tiff(image, tiff_path)
        xyc_path = tmp / "S1.zarr"
        write_xyc(image[:, :XYC_WIDTH], xyc_path)
        print(
            f"built {SIZE}x{SIZE}x3 slide as OME-Zarr ({len(zarr.open(zarr_path))} levels), "
            f"JPEG TIFF ({n_tiff} levels, {tiff_path.stat().st_size / 2**20:.1f} MiB) and x-y-C "
            f"zarr {XYC_WIDTH} wide, in {time.perf_counter() - t0:.1f} s; {N} random "
            f"{PATCH}x{PATCH} patches per format, best of {ROUNDS} rounds\n"
        )
        results = []
        print(
            "pixel checks: 10 patches per format equal between readers; zarr ones equal the image"
        )

        square = points(SIZE, SIZE)
        slide = open_slide(zarr_path)
        describe(slide, square)
        plain_z = zarr.open(str(zarr_path), mode="r")["0"]
        results.append(
            compare(
                "OME-Zarr (chunks 512, zstd)",
                lambda y, x: slide.read_region(y, x, PATCH, PATCH),
                lambda y, x: plain_z[y : y + PATCH, x : x + PATCH],
                points(SIZE, SIZE),
                TARGET,
                args.profile,
                truth=image,
            )
        )

        tslide = open_slide(tiff_path)
        describe(tslide, square)
        tiff_group = zarr.open(tifffile.imread(tiff_path, aszarr=True), mode="r")
        plain_t = tiff_group["0"] if isinstance(tiff_group, zarr.Group) else tiff_group
        results.append(
            compare(
                "pyramidal TIFF (JPEG 256 tiles)",
                lambda y, x: tslide.read_region(y, x, PATCH, PATCH),
                lambda y, x: plain_t[y : y + PATCH, x : x + PATCH],
                points(SIZE, SIZE),
                TARGET,
                args.profile,
            )
        )

        xslide = open_slide(xyc_path, layout="xyc")
        describe(xslide, points(SIZE, XYC_WIDTH))
        plain_x = zarr.open(str(xyc_path), mode="r")
        results.append(
            compare(
                "PathFlowAI x-y-C zarr (info)",
                lambda y, x: xslide.read_region(y, x, PATCH, PATCH),
                lambda y, x: plain_x[x : x + PATCH, y : y + PATCH].transpose(1, 0, 2),
                points(SIZE, XYC_WIDTH),
                None,
                args.profile,
                truth=image,
            )
        )

    print()
    for r in results:
        if r["target"] is not None:
            ok = r["ratio"] >= r["target"]
            print(
                f"read 224x224 patches, {r['name']}: ours/plain = {r['ratio']:.2f} "
                f"(target >= {r['target']:g}) -> {'PASS' if ok else 'FAIL'}"
            )
    print(f"total time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
