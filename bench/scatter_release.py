"""Section (c) of scatter_bench.py: mouse release -> selection drawn on the slide, at 100,000
and 1,000,000 patches (issue 11 item 5). See scatter_bench.py's docstring; run that script
(``--release-only`` for this section alone)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from scatter_bench import (
    GRID,
    PATCH,
    DrawCounter,
    check_highlight,
    circle,
    gl_finish,
    lasso_coords,
    load,
    ms_stats,
    patch_frame,
    process_events,
    timed,
)

from napari_pathviz._layers import patches_layer_data
from napari_pathviz._widgets.embedding import HIGHLIGHT_LAYER, EmbeddingWidget
from napari_pathviz.patches import PatchTable

RELEASE_SIZES = (100_000, 1_000_000)
RELEASE_REPEATS = {100_000: 7, 1_000_000: 3}
RELEASE_TARGET_MS = {100_000: 150.0, 1_000_000: 400.0}


def press_and_move(canvas: Any, path: np.ndarray) -> Any:
    """A left-button press and drag along ``path`` through vispy's events; the release is
    left to the caller, to time it."""
    press = canvas.events.mouse_press(pos=tuple(path[0]), button=1, modifiers=())
    for pos in path[1:]:
        canvas.events.mouse_move(
            pos=tuple(pos), button=1, buttons=[1], press_event=press, modifiers=()
        )
    return press


def quiet(*canvases: Any) -> None:
    """Lets earlier frames finish, so llvmpipe's threads do not compete with the timed step."""
    process_events(0.3)
    for canvas in canvases:
        gl_finish(canvas)


def empty_redraws(counter: DrawCounter, repeats: int) -> tuple[list[float], list[float]]:
    """napari canvas frames with nothing changed: ``update()``, Qt events, draw, glFinish.
    Wall times and process CPU times (all threads: llvmpipe rasterises in its own)."""
    times, cpu = [], []
    for _ in range(repeats):
        quiet(counter.canvas)
        draws = counter.draws
        c0, t0 = time.process_time(), time.perf_counter()
        counter.canvas.update()
        counter.wait(draws)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def timed_release(
    canvas: Any, press: Any, pos: np.ndarray, slide: DrawCounter
) -> tuple[float, float]:
    """From the mouse release until the napari canvas has drawn the result (and glFinish):
    wall time and process CPU time."""
    draws = slide.draws
    c0, t0 = time.process_time(), time.perf_counter()
    canvas.events.mouse_release(pos=tuple(pos), button=1, press_event=press, modifiers=())
    slide.wait(draws)
    return time.perf_counter() - t0, time.process_time() - c0


def add_patches(viewer: Any, widget: EmbeddingWidget, n: int, n_lasso: int) -> tuple:
    """A fresh patches layer of n rows (replacing earlier ones) with UMAP-like coordinates;
    returns the layer, the rows of the lasso cluster and the setup times."""
    from napari.layers import Layer

    for layer in [ly for ly in viewer.layers if ly.name != "slide (stand-in)"]:
        viewer.layers.remove(layer)
    grid = int(np.ceil(np.sqrt(n)))
    df = patch_frame(n, grid)
    t_layer, layer = timed(
        lambda: viewer.add_layer(Layer.create(*patches_layer_data(PatchTable.from_frame(df))))
    )
    coords, lasso_rows = lasso_coords(n, n_lasso)
    t_coords, _ = timed(lambda: widget.write_coords_to_layer(layer, layer.features, coords))
    return layer, lasso_rows, t_layer, t_coords


def bench_release(viewer: Any, widget: EmbeddingWidget, n: int) -> dict[str, Any]:
    """Lasso (10 % of the points) and clear, each timed from the mouse release until the napari
    canvas has drawn it; and an empty redraw of the same canvas, for the ratio."""
    napari_canvas = viewer.window._qt_viewer.canvas._scene_canvas
    slide = DrawCounter(napari_canvas)
    scatter = widget.scatter
    scatter_draws = DrawCounter(scatter.canvas)
    n_lasso = n // 10
    layer, lasso_rows, t_layer, t_coords = add_patches(viewer, widget, n, n_lasso)
    viewer.layers.selection.active = layer  # where a user works, and the harder case
    draws = slide.draws
    viewer.reset_view()
    slide.wait(draws)
    screen = scatter.screen_positions()
    in_cluster = np.isin(widget.rows, lasso_rows)
    centre = screen[in_cluster].mean(axis=0)
    radius = np.linalg.norm(screen[in_cluster] - centre, axis=1).max() + 3.0
    lasso = circle(centre, radius)
    clear = np.array([(2.0, 2.0), (12.0, 2.0), (12.0, 12.0), (2.0, 12.0)])
    assert not ((screen >= 2) & (screen <= 12)).all(axis=1).any(), "clear corner is not empty"
    empty, empty_cpu = empty_redraws(slide, 5)
    selects, clears, scatter_after, cpu = [], [], [], {"lasso": [], "clear": []}
    early = []  # scatter frames painted before the slide's frame was done
    for _ in range(RELEASE_REPEATS[n]):
        for poly, times in ((lasso, selects), (clear, clears)):
            press = press_and_move(scatter.canvas, poly)
            quiet(scatter.canvas, napari_canvas)
            t0 = time.perf_counter()
            since = scatter_draws.draws
            wall, cpu_s = timed_release(scatter.canvas, press, poly[-1], slide)
            if scatter_draws.draws > since:
                early.append(scatter_draws.last - t0)
            times.append(wall)
            cpu["lasso" if poly is lasso else "clear"].append(cpu_s)
            if poly is lasso:
                check_highlight(viewer, layer, lasso_rows)
                scatter_draws.wait(since)
                scatter_after.append(scatter_draws.last - t0)
            else:
                highlight = viewer.layers[HIGHLIGHT_LAYER]
                assert not highlight.visible, "clear left outlines"
    # The selection reaches layer.selected_data when something needs it (here: asked for).
    press = press_and_move(scatter.canvas, lasso)
    scatter.canvas.events.mouse_release(pos=tuple(lasso[-1]), button=1, press_event=press)
    quiet(scatter.canvas, napari_canvas)
    t_flush, _ = timed(widget.flush_selection)
    selected = np.sort(np.fromiter(layer.selected_data, np.int64))
    assert np.array_equal(selected, lasso_rows), "layer.selected_data is not the lasso's rows"
    slide.disconnect()
    scatter_draws.disconnect()
    return {
        "n": n,
        "n_lasso": n_lasso,
        "add_layer": t_layer,
        "write_coords": t_coords,
        "empty": ms_stats(empty),
        "empty_cpu": ms_stats(empty_cpu),
        "select_cpu": ms_stats(cpu["lasso"]),
        "clear_cpu": ms_stats(cpu["clear"]),
        "select": ms_stats(selects),
        "clear": ms_stats(clears),
        "scatter_drawn": ms_stats(scatter_after),
        "flush": t_flush * 1e3,
        "scatter_first": len(early),
        "repeats": 2 * RELEASE_REPEATS[n],
    }


def print_release(r: dict[str, Any]) -> None:
    e, s, c = r["empty"]["median"], r["select"]["median"], r["clear"]["median"]
    target = RELEASE_TARGET_MS[r["n"]]
    print(
        f"  {r['n']:>9,} patches, lasso of {r['n_lasso']:,}: add layer {r['add_layer']:.1f} s, "
        f"write_coords_to_layer {r['write_coords']:.1f} s"
    )
    print(f"    empty redraw of the napari canvas: median {e:.0f} ms (min {r['empty']['min']:.0f})")
    for name, v in (("lasso", r["select"]), ("clear", r["clear"])):
        print(
            f"    release -> {name} drawn on the slide: median {v['median']:.0f} ms, min "
            f"{v['min']:.0f}, max {v['max']:.0f}; ratio to the empty redraw "
            f"{v['median'] / e:.2f}"
        )
    ec = r["empty_cpu"]["median"]
    print(
        f"    process CPU time (all threads): empty redraw {ec:.0f} ms, lasso "
        f"{r['select_cpu']['median']:.0f} ms (ratio {r['select_cpu']['median'] / ec:.2f}), "
        f"clear {r['clear_cpu']['median']:.0f} ms (ratio {r['clear_cpu']['median'] / ec:.2f})"
    )
    print(
        f"    scatter canvas redrawn {r['scatter_drawn']['median']:.0f} ms after the release; "
        f"layer.selected_data set on demand in {r['flush']:.0f} ms; the scatter painted "
        f"before the slide's frame was done in {r['scatter_first']} of {r['repeats']} releases"
    )
    verdict = "PASS" if max(s, c) < target else "FAIL"
    print(f"    target < {target:g} ms (absolute, llvmpipe): {verdict}")


def run_release(viewer: Any, widget: EmbeddingWidget, sizes: tuple[int, ...]) -> None:
    print("\n(c) mouse release -> selection drawn on the slide (napari canvas, glFinish)")
    if "slide (stand-in)" not in viewer.layers:
        thumb = np.random.default_rng(3).integers(180, 240, (512, 512, 3), dtype=np.uint8)
        viewer.add_image(thumb, name="slide (stand-in)", rgb=True, scale=(GRID * PATCH / 512,) * 2)
    for n in sizes:
        print_release(bench_release(viewer, widget, n))
        print(f"    load average: {load()}")
