"""The explorer's UMAP never freezes the GUI (issue 17 item 5), in a real viewer under Xvfb with
the widget opened as napari opens it: a 10 ms timer on the GUI thread keeps ticking through a
whole run (at most a quarter of it in gaps over 100 ms; the stall figures are the bench's), the
bar moves during the neighbour search, a first look (fitted on a sample) shows before the full
fit replaces it and keeps a lasso made on it, and Cancel kills the child."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari")

from napari_pathviz._layers import patches_layer_data  # noqa: E402
from napari_pathviz.patches import PatchTable  # noqa: E402
from napari_pathviz.umap_first_look import FIRST_LOOK_ABOVE  # noqa: E402
from napari_pathviz.umap_process import running_pids  # noqa: E402

PLUGIN = "napari-pathviz"
N = max(FIRST_LOOK_ABOVE, 12_000)  # a first look, NN-descent: several seconds of work
DIMS = 32
# What this test checks is a behaviour, not a speed: the UMAP does not hold the GUI thread (run
# in-process, numba held the GIL for 77 of a run's 86 s). How long the longest stall is, against
# the 100 ms target, is measured by bench/umap_gui_stall.py, not asserted here.
SLOW_TICK_S = 0.1  # a gap longer than this counts as time the GUI could not answer
BLOCKED_SHARE_BOUND = 0.25  # of the run; in-process it was 0.9
DRAW_WINDOW_S = 2.0  # after a layout is written: its frames, not measured here (see the bench)


@pytest.fixture
def explorer(make_napari_viewer, tmp_path):
    """A viewer with N patches, their embeddings file (5 clusters) and the explorer opened
    from the plugin, seeded."""
    rng = np.random.default_rng(0)
    keys = pd.DataFrame(
        {"ID": "s1", "x": np.arange(N) % 120 * 64, "y": np.arange(N) // 120 * 64, "patch_size": 64}
    )
    centres = rng.normal(0, 6, (5, DIMS))
    labels = rng.integers(0, 5, N)
    feats = (centres[labels] + rng.normal(0, 1, (N, DIMS))).astype(np.float32)
    path = tmp_path / "embeddings.parquet"
    columns = pd.DataFrame(feats, columns=[f"feat_{j}" for j in range(DIMS)])
    pd.concat([keys, columns], axis=1).to_parquet(path, index=False)

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1300, 1000)
    from napari.layers import Layer

    table = PatchTable.from_frame(keys.assign(label=labels.astype(str)), slide_id="s1")
    layer = viewer.add_layer(Layer.create(*patches_layer_data(table)))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Embedding explorer")
    widget.embeddings_path.value = str(path)
    widget.seed.value = 0
    return viewer, widget, layer


class Ticks:
    """A 10 ms timer on the GUI thread: the longest gap between its ticks is the longest time
    the GUI thread could not answer."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.times: list[float] = []
        self.paused: list[tuple[float, float]] = []  # spans not measured (the user's own work)
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))
        self.timer.start()

    def pause(self) -> None:
        self.paused.append((time.perf_counter(), np.inf))

    def resume(self) -> None:
        self.paused[-1] = (self.paused[-1][0], time.perf_counter())

    def gaps(self) -> np.ndarray:
        """Seconds between consecutive ticks; 0 for gaps that overlap a pause."""
        times = np.asarray(self.times)
        gaps = np.diff(times)
        for start, end in self.paused:
            gaps[(times[1:] >= start) & (times[:-1] <= end)] = 0.0
        return gaps

    def blocked_share(self) -> float:
        """The share of the measured time spent in gaps longer than SLOW_TICK_S."""
        self.timer.stop()
        gaps = self.gaps()
        measured = gaps.sum()
        return float(gaps[gaps > SLOW_TICK_S].sum() / measured) if measured else 1.0

    def where(self, seen: list[tuple[float, int, str]]) -> str:
        """The longest gaps and the status shown when each began (a failure's diagnosis)."""
        times, gaps = np.asarray(self.times), self.gaps()
        out = []
        for i in np.argsort(gaps)[::-1][:4]:
            before = [text for t, _, text in seen if t <= times[i]]
            after = [text for t, _, text in seen if t > times[i]]
            out.append(f"{1000 * gaps[i]:.0f} ms after {before[-1:]!r}, before {after[:1]!r}")
        return "; ".join(out)


def _lasso_around(widget, rows: np.ndarray) -> None:
    """A real lasso (mouse press, moves, release on the scatter's canvas) around the scatter
    points of ``rows`` (a tight cluster), in screen pixels."""
    canvas = widget.scatter.canvas
    screen = widget.scatter.screen_positions()[rows]
    lo, hi = screen.min(axis=0) - 6, screen.max(axis=0) + 6
    path = [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]
    press = canvas.events.mouse_press(pos=path[0], button=1, modifiers=())
    for pos in path[1:]:
        canvas.events.mouse_move(pos=pos, button=1, buttons=[1], press_event=press, modifiers=())
    canvas.events.mouse_release(pos=path[-1], button=1, press_event=press, modifiers=())


def test_umap_run_never_blocks_the_gui_and_replaces_its_first_look(explorer, qtbot):
    viewer, widget, layer = explorer
    seen: list[tuple[float, int, str]] = []  # (time, bar value, status) after each step shown
    shows = widget._jobs.on_progress

    def show_and_note(*values) -> None:
        shows(*values)
        seen.append((time.perf_counter(), widget.progress.value, widget.status.value))

    widget._jobs.on_progress = show_and_note
    layouts: list[np.ndarray] = []  # the umap_* columns each time the layer's features change
    ticks = Ticks()

    def layout_written(_event) -> None:
        if "umap_0" in layer.features:
            layouts.append(layer.features[["umap_0", "umap_1"]].to_numpy())
            # drawing it (slide and scatter, one frame each) is measured by the bench, whose
            # renderer there, software GL on a shared CPU, takes 0.2-1.6 s a frame
            ticks.paused.append((time.perf_counter(), time.perf_counter() + DRAW_WINDOW_S))

    layer.events.features.connect(layout_written)
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: bool(layouts) or widget.run_button.enabled, timeout=240_000)
    # the first look is on screen while the full fit runs: lasso one of its clusters
    assert not widget.run_button.enabled  # the full fit still runs
    # (the lasso's own drawing on the slide is measured by bench/scatter_release.py, not here)
    ticks.pause()
    first = layouts[0][widget.rows]
    near = np.flatnonzero(np.linalg.norm(first - first[0], axis=1) < 0.5)
    _lasso_around(widget, near)
    lassoed = widget.scatter.selected.copy()
    qtbot.wait(1000)  # the slide draws the selection
    ticks.resume()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=240_000)
    blocked = ticks.blocked_share()

    assert widget.status.value == f"UMAP of {N} patches", widget.status.value
    assert blocked <= BLOCKED_SHARE_BOUND, (
        f"the GUI thread could not answer {blocked:.0%} of the run; longest: {ticks.where(seen)}"
    )
    # a first look, marked as such, then the full fit replacing it
    assert any(status.startswith("first look: UMAP of") for _, _, status in seen)
    assert len(layouts) == 2 and not np.allclose(layouts[0], layouts[1])
    final = layer.features[["umap_0", "umap_1"]].to_numpy()
    np.testing.assert_array_equal(layouts[1], final)
    np.testing.assert_array_equal(widget.scatter.coords[:, :2], final[widget.rows])
    # the bar moved during the neighbour search, not only at its ends
    searching = [v for _, v, s in seen if s.startswith("full UMAP: nearest neighbours")]
    assert len(set(searching)) >= 3 and searching == sorted(searching)
    # the lasso made on the first look is still the selection after the replacement
    assert len(lassoed) > 10
    np.testing.assert_array_equal(widget.scatter.selected, lassoed)
    layer_rows = widget.rows[lassoed]
    viewer.layers.selection.active = layer  # the layer gets the lasso when it is needed
    assert set(layer.selected_data) == set(layer_rows.tolist())


def test_cancel_kills_the_umap_child_and_the_explorer_stays_usable(explorer, qtbot, tmp_path):
    viewer, widget, layer = explorer
    widget.seed.value = 1  # not the other test's layout, which the results cache holds
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: bool(running_pids()), timeout=60_000)
    (pid,) = running_pids()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=60_000)  # the child works
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=10_000)  # promptly
    assert widget.status.value == "cancelled"
    assert not running_pids()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    assert not widget.cancel_button.enabled

    # usable: a second run (of 300 of the patches) runs to its end
    small = pd.read_parquet(widget.embeddings_path.value).iloc[:300]
    small.to_parquet(tmp_path / "small.parquet", index=False)
    widget.embeddings_path.value = str(tmp_path / "small.parquet")
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert widget.status.value == "UMAP of 300 patches", widget.status.value
    assert np.isfinite(layer.features["umap_0"].to_numpy()[:300]).all()
    assert not running_pids()
