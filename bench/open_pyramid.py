"""Benchmark: open a 100,000 x 100,000 RGB pyramid and add it to a napari viewer.

Claim under test: "Opening a 100,000 x 100,000 RGB pyramid and adding it to a napari viewer
takes under 1 s; report the time and the number of chunks read."

The pyramid is synthetic and lazy: an OME-Zarr (NGFF 0.4, zarr format 2) group with levels
100000, 50000, ... down to <= 512 px, chunks 512 x 512 x 3 uint8 (y, x, c), Blosc-zstd as
``write_ome_zarr`` compresses. Metadata is real; every chunk key (about 51,000 of them) is served on read
from one of two pre-encoded chunks, and every chunk read is counted. Nothing but metadata is
ever stored.

Measured, per trial (the viewer is created once beforehand and not timed):

* open: metadata only, through pathviz's OME-Zarr reader (``io.zarr_io._open_ome``, what
  ``open_slide`` runs for a path, with the default missing-chunk check on) and
  ``slide.slide_from_source``;
* add + first draw: ``viewer.add_image`` with the kwargs of ``_layers.slide_layer_data`` (what
  the npe2 reader hands napari), then Qt events until the canvas has drawn once;
* chunks read in each phase; then (untimed, informational) Qt events for a further second, to
  see what napari reads once it settles on its display level.

napari runs with a temporary settings file and a 1280 x 900 window, so the canvas size (which
decides the level shown, and so the chunks read) is the same every run and nothing is saved to ~.

Anchor, in the same run and alternating with ours: ``dask.array.from_zarr`` of each level and
``viewer.add_image(levels, multiscale=True, rgb=True, contrast_limits=(0, 255))``.
Target: open + add + first draw < 1 s (worst trial).

Run: xvfb-run -a /work/main/.venv/bin/python bench/open_pyramid.py
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, MutableMapping
from typing import Any

import dask.array as da
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.storage import MemoryStore

from napari_pathviz._layers import slide_layer_data
from napari_pathviz.io.zarr_io import _open_ome
from napari_pathviz.slide import slide_from_source

SIZE = 100_000
CHUNK = 512
MIN_LEVEL = 512
TARGET_S = 1.0
TRIALS = 3
SETTLE_S = 1.0
WINDOW = (1280, 900)  # napari main window, px
LABEL = "memory://synthetic-100k.ome.zarr"  # what the slide is called; nothing is on disk
_CHUNK_KEY = re.compile(r"^(\d+)/(\d+)/(\d+)/(\d+)$")  # level/y/x/c, v2 keys with "/"


def _array_kwargs() -> dict[str, Any]:
    """Array settings of the y, x, c layout ``write_ome_zarr`` wrote before it moved to NGFF's
    c, y, x (same codec; the reader opens both)."""
    return {
        "chunks": (CHUNK, CHUNK, 3),
        "dtype": np.uint8,
        "fill_value": 0,
        "compressors": Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE),
        "chunk_key_encoding": {"name": "v2", "separator": "/"},
    }


def level_shapes() -> list[tuple[int, int, int]]:
    shapes = [(SIZE, SIZE, 3)]
    while max(shapes[-1][:2]) > MIN_LEVEL:
        h, w, _ = shapes[-1]
        shapes.append((h // 2, w // 2, 3))
    return shapes


def encoded_chunks() -> list[Any]:
    """Two encoded 512 x 512 x 3 chunks (light and darker tissue-like texture)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:CHUNK, 0:CHUNK]
    base = 40 * np.sin(yy / 23.0) * np.cos(xx / 31.0)
    out = []
    for shade in (225, 170):
        noise = rng.normal(0, 6, (CHUNK, CHUNK, 3))
        tint = np.array([0, -35, -10]) if shade < 200 else np.array([0, -10, -5])
        pixels = np.clip(shade + base[..., None] + noise + tint, 0, 255).astype(np.uint8)
        tmp = MemoryStore()
        arr = zarr.create_array(tmp, name="0", shape=pixels.shape, zarr_format=2, **_array_kwargs())
        arr[:] = pixels
        out.append(tmp._store_dict["0/0/0/0"])
    return out


class SyntheticChunks(MutableMapping):
    """A MemoryStore's dict: metadata kept as written, every chunk key made up on read.

    ``reads`` counts chunk reads per level; ``exists`` counts chunk existence checks.
    """

    def __init__(self, meta: dict[str, Any], chunks: list[Any]):
        self.meta = dict(meta)
        self.chunks = chunks
        self.reads: Counter[int] = Counter()
        self.exists = 0
        self._lock = threading.Lock()

    def __getitem__(self, key: str) -> Any:
        if key in self.meta:
            return self.meta[key]
        m = _CHUNK_KEY.match(key)
        if m is None or not self.chunks:
            raise KeyError(key)
        with self._lock:
            self.reads[int(m.group(1))] += 1
        return self.chunks[(int(m.group(2)) + int(m.group(3))) % len(self.chunks)]

    def __contains__(self, key: object) -> bool:
        if key in self.meta:
            return True
        if isinstance(key, str) and self.chunks and _CHUNK_KEY.match(key):
            with self._lock:
                self.exists += 1
            return True
        return False

    def __setitem__(self, key: str, value: Any) -> None:
        self.meta[key] = value

    def __delitem__(self, key: str) -> None:
        del self.meta[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.meta)

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def n_reads(self) -> int:
        return sum(self.reads.values())


def build_metadata() -> dict[str, Any]:
    """The OME-Zarr metadata keys of the synthetic pyramid (no chunk is written)."""
    mapping = SyntheticChunks({}, [])
    group = zarr.open_group(MemoryStore(mapping), mode="w", zarr_format=2)
    datasets = []
    for i, shape in enumerate(level_shapes()):
        group.create_array(str(i), shape=shape, **_array_kwargs())
        factor = SIZE / shape[0]
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [0.25 * factor, 0.25 * factor, 1.0]}
                ],
            }
        )
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "synthetic-100k",
            "axes": [
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
                {"name": "c", "type": "channel"},
            ],
            "datasets": datasets,
            "type": "mean",
        }
    ]
    return dict(mapping.meta)


def open_ours(store: MemoryStore) -> tuple[Any, dict, str]:
    """What ``open_slide(path)`` + the npe2 reader do, given a store instead of a path."""
    group = zarr.open(store, mode="r")
    ms = dict(group.attrs)["multiscales"][0]
    source = _open_ome(group, LABEL, ms, "auto", check=True)
    return slide_layer_data(slide_from_source(source))


def open_plain(store: MemoryStore) -> tuple[Any, dict, str]:
    """The anchor: dask.array.from_zarr per level, napari's own multiscale image."""
    group = zarr.open(store, mode="r")
    ms = dict(group.attrs)["multiscales"][0]
    levels = [da.from_zarr(group[ds["path"]]) for ds in ms["datasets"]]
    return levels, {"multiscale": True, "rgb": True, "contrast_limits": (0, 255)}, "image"


class DrawWatcher:
    def __init__(self, viewer: Any):
        from qtpy.QtWidgets import QApplication

        self.app = QApplication.instance()
        self.draws = 0
        self.last_draw = 0.0
        canvas = viewer.window._qt_viewer.canvas._scene_canvas
        canvas.events.draw.connect(self._on_draw, position="last")

    def _on_draw(self, event: Any) -> None:
        self.draws += 1
        self.last_draw = time.perf_counter()

    def wait_for_draw(self, since: int, timeout: float = 30.0) -> None:
        end = time.perf_counter() + timeout
        while self.draws <= since:
            self.app.processEvents()
            if time.perf_counter() > end:
                raise TimeoutError("the canvas never drew")

    def settle(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.app.processEvents()
            time.sleep(0.002)


def trial(
    viewer: Any, watcher: DrawWatcher, which: str, meta: dict, chunks: list, keep: list
) -> dict[str, Any]:
    mapping = SyntheticChunks(meta, chunks)
    store = MemoryStore(mapping, read_only=True)
    opener = open_ours if which == "pathviz" else open_plain
    t0 = time.perf_counter()
    data, kwargs, _ = opener(store)
    t1 = time.perf_counter()
    reads_open = mapping.n_reads
    draws = watcher.draws
    layer = viewer.add_image(data, **kwargs)
    t_added = time.perf_counter()
    watcher.wait_for_draw(draws)
    t2 = time.perf_counter()
    reads_first = mapping.n_reads - reads_open
    draws_first = watcher.draws
    watcher.settle(SETTLE_S)
    settled_at = watcher.last_draw - t0 if watcher.draws > draws_first else t2 - t0
    result = {
        "which": which,
        "open": t1 - t0,
        "add": t_added - t1,
        "add_draw": t2 - t1,
        "total": t2 - t0,
        "reads_open": reads_open,
        "reads_first": reads_first,
        "reads_settled": mapping.n_reads,
        "exists_checks": mapping.exists,
        "reads_by_level": dict(sorted(mapping.reads.items())),
        "data_level": layer.data_level,
        "settled_at": settled_at,
    }
    viewer.layers.remove(layer)
    watcher.settle(0.2)
    keep.append((mapping, store, data))  # keep ids/tokens unique so napari's dask cache misses
    return result


def warm_up(viewer: Any, watcher: DrawWatcher, chunks: list) -> None:
    """First GL draw, shader compilation and the Blosc decoder, so no trial pays for them."""
    arr = zarr.create_array(MemoryStore(), shape=(1024, 1024, 3), zarr_format=2, **_array_kwargs())
    arr[:] = 128
    levels = [da.from_zarr(arr), da.from_zarr(arr)[::2, ::2]]
    draws = watcher.draws
    layer = viewer.add_image(levels, multiscale=True, rgb=True, contrast_limits=(0, 255))
    watcher.wait_for_draw(draws)
    watcher.settle(0.3)
    viewer.layers.remove(layer)
    watcher.settle(0.2)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pathviz-bench-napari-") as cfg:
        # Fresh napari settings: no saved window geometry or plugin state changes the canvas
        # size (and so the level napari shows), and closing the viewer writes nothing to ~.
        os.environ["NAPARI_CONFIG"] = os.path.join(cfg, "settings.yaml")
        run()


def run() -> None:
    import napari

    t_build = time.perf_counter()
    meta = build_metadata()
    chunks = encoded_chunks()
    shapes = level_shapes()
    n_chunks = sum(-(-h // CHUNK) * -(-w // CHUNK) for h, w, _ in shapes)
    print(
        f"synthetic pyramid: {len(shapes)} levels {shapes[0][0]} .. {shapes[-1][0]} px, "
        f"{n_chunks} chunks of {CHUNK}x{CHUNK}x3 (none stored; built in "
        f"{time.perf_counter() - t_build:.2f} s)"
    )

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*WINDOW)
    watcher = DrawWatcher(viewer)
    warm_up(viewer, watcher, chunks)
    size = viewer.window._qt_viewer.canvas.size
    print(f"viewer canvas {size[1]} x {size[0]} px (viewer creation not timed)\n")

    keep: list = []
    results: dict[str, list[dict]] = {"pathviz": [], "plain dask": []}
    for i in range(TRIALS):
        order = ["pathviz", "plain dask"] if i % 2 == 0 else ["plain dask", "pathviz"]
        for which in order:
            r = trial(viewer, watcher, which, meta, chunks, keep)
            results[which].append(r)
            print(
                f"  trial {i + 1} {which:10s}: open {r['open'] * 1e3:7.1f} ms, "
                f"add+first draw {r['add_draw'] * 1e3:7.1f} ms (add_image "
                f"{r['add'] * 1e3:6.1f} ms), total {r['total'] * 1e3:7.1f} ms; chunks read "
                f"open {r['reads_open']}, add+draw {r['reads_first']}, after settling "
                f"{r['reads_settled']} {r['reads_by_level']} (level {r['data_level']}, "
                f"exists checks {r['exists_checks']})"
            )

    print()
    summary = {}
    for which, rs in results.items():
        s = {k: statistics.median(r[k] for r in rs) for k in ("open", "add_draw", "total")}
        s["worst"] = max(r["total"] for r in rs)
        s["reads_open"] = max(r["reads_open"] for r in rs)
        s["reads_first"] = max(r["reads_first"] for r in rs)
        s["reads_settled"] = max(r["reads_settled"] for r in rs)
        summary[which] = s
        print(
            f"{which:10s} median of {TRIALS}: open {s['open'] * 1e3:.1f} ms, add+first draw "
            f"{s['add_draw'] * 1e3:.1f} ms, total {s['total'] * 1e3:.1f} ms "
            f"(worst {s['worst'] * 1e3:.1f} ms); chunks read: open {s['reads_open']}, "
            f"add+first draw {s['reads_first']}, settled {s['reads_settled']}"
        )
    ours, plain = summary["pathviz"], summary["plain dask"]
    ok = ours["worst"] < TARGET_S
    print(
        f"\nopen+add {SIZE}x{SIZE} pyramid: {ours['total']:.3f} s median, {ours['worst']:.3f} s "
        f"worst (target < {TARGET_S:g} s), chunks read: {ours['reads_open'] + ours['reads_first']}"
        f" -> {'PASS' if ok else 'FAIL'}"
    )
    print(
        f"plain dask anchor: {plain['total']:.3f} s median, chunks read: "
        f"{plain['reads_open'] + plain['reads_first']}; time ratio pathviz/plain = "
        f"{ours['total'] / plain['total']:.2f}"
    )
    viewer.close()


if __name__ == "__main__":
    main()
