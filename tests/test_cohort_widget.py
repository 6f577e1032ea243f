"""The cohort explorer in a real viewer: a 3-slide cohort (SVS, OME-Zarr, PathFlowAI zarr) plus
a slide whose file is gone and patches whose ID the slides table lacks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_svs
from napari_pathviz._widgets._cohort_slides import camera_of

HEIGHT, WIDTH, SIZE = 1000, 1400, 128
SLIDES = {"scan": (0.0, "A"), "ome": (3.0, "B"), "pfa": (6.0, "B"), "gone": (9.0, "A")}
ORPHAN = ("orphan", 12.0)
D = 8


def _crop(image: np.ndarray, k: int) -> np.ndarray:
    """A different view of the tissue per slide (rolled), HEIGHT x WIDTH."""
    return np.ascontiguousarray(np.roll(image, (97 * k, 131 * k), axis=(0, 1))[:HEIGHT, :WIDTH])


def _write_ome_zarr(path: Path, image: np.ndarray) -> Path:
    import dask.array as da

    from napari_pathviz.io.pyramid import lazy_levels
    from napari_pathviz.io.zarr_io import write_ome_zarr

    levels = lazy_levels(da.from_array(image, chunks=(128, 128, 3)), min_size=200)
    return write_ome_zarr(levels, path, n_native=len(levels), mpp=0.5, chunk=128)


def _write_pathflowai(folder: Path, slide_id: str, image: np.ndarray, rows: pd.DataFrame) -> Path:
    """{ID}.zarr stored (x, y, C) beside the patch database that names it (PathFlowAI's)."""
    import zarr

    transposed = np.ascontiguousarray(image.transpose(1, 0, 2))
    path = folder / f"{slide_id}.zarr"
    arr = zarr.create_array(
        str(path), shape=transposed.shape, chunks=(128, 128, 3), dtype="uint8", zarr_format=2
    )
    arr[:] = transposed
    with sqlite3.connect(folder / "patch_info.db") as con:
        rows.to_sql(str(SIZE), con, index=True)
    return path


def _patches(slide_id: str, offset: float, site_shift: float, rng) -> pd.DataFrame:
    """The 128 px grid of one slide with features (a site shift in feature 0) and coordinates:
    umap_0 = offset + x/1000, umap_1 = y/1000 (+5 for the lower half of the slide)."""
    ys, xs = np.meshgrid(
        np.arange(0, HEIGHT - SIZE + 1, SIZE), np.arange(0, WIDTH - SIZE + 1, SIZE)
    )
    df = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "patch_size": SIZE})
    df["annotation"] = np.where(df["x"] > WIDTH / 2, "tumor", "stroma")
    feats = rng.normal(0, 1, (len(df), D)).astype(np.float32)
    feats[:, 0] += site_shift
    for j in range(D):
        df[f"feat_{j}"] = feats[:, j]
    df["umap_0"] = offset + df["x"] / 1000
    df["umap_1"] = df["y"] / 1000 + np.where(df["y"] >= 500, 5.0, 0.0)
    return df


@pytest.fixture
def cohort(tmp_path, tissue_rgb) -> dict:
    rng = np.random.default_rng(0)
    emb = tmp_path / "embeddings"
    emb.mkdir()
    frames = {}
    for slide_id, (offset, site) in [*SLIDES.items(), (ORPHAN[0], (ORPHAN[1], "A"))]:
        frames[slide_id] = _patches(slide_id, offset, 6.0 if site == "B" else 0.0, rng)
        frames[slide_id].to_parquet(emb / f"{slide_id}.parquet")
    slides = tmp_path / "slides"
    slides.mkdir()
    write_svs(slides / "scan.svs", _crop(tissue_rgb, 1))
    _write_ome_zarr(slides / "ome.ome.zarr", _crop(tissue_rgb, 2))
    pfa_rows = frames["pfa"][["x", "y", "patch_size", "annotation"]].assign(ID="pfa")
    _write_pathflowai(slides, "pfa", _crop(tissue_rgb, 3), pfa_rows)
    table = tmp_path / "slides.csv"
    pd.DataFrame(
        {
            "ID": list(SLIDES),
            "path": [
                "slides/scan.svs",
                "slides/ome.ome.zarr",
                "slides/pfa.zarr",
                "slides/gone.svs",
            ],
            "site": [site for _o, site in SLIDES.values()],
            "split": ["train", "test", "test", "train"],
        }
    ).to_csv(table, index=False)
    return {"embeddings": emb, "table": table, "frames": frames}


def _load(make_napari_viewer, qtbot, cohort, use_given=True):
    from napari_pathviz._widgets.cohort import CohortWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    widget = CohortWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.embeddings_folder.value = str(cohort["embeddings"])
    widget.slides_table_path.value = str(cohort["table"])
    widget.use_given.value = use_given
    widget.load_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.frame is not None, timeout=180_000)
    qtbot.waitUntil(lambda: widget.load_button.enabled, timeout=10_000)
    return viewer, widget


def _box_around(points: np.ndarray, pad: float = 6.0) -> list[tuple[float, float]]:
    lo, hi = points.min(axis=0) - pad, points.max(axis=0) + pad
    return [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]


def _click(canvas, pos) -> None:
    canvas.events.mouse_press(pos=pos, button=1, modifiers=())
    canvas.events.mouse_release(pos=pos, button=1, modifiers=())


def test_cohort_load_colour_filter_lasso_and_open(make_napari_viewer, qtbot, cohort, notifications):
    viewer, widget = _load(make_napari_viewer, qtbot, cohort)
    frame = widget.frame
    n_per_slide = len(cohort["frames"]["scan"])  # 70 patches: 10 x 7
    assert len(frame) == 5 * n_per_slide  # the orphan ID's patches are kept ...
    assert not frame.loc[frame["ID"] == "orphan", "linkable"].any()  # ... but not linkable
    assert any("1 slides" in m and f"{n_per_slide} of" in m for m in notifications)
    assert len(widget.scatter.coords) == len(frame)
    assert "given coordinates" in widget.status.value

    # Colour by site: one colour per site, a legend naming both.
    widget.color_by.value = "site"
    colours, site = widget.scatter.colors, frame["site"].to_numpy()
    a, b = site == "A", site == "B"
    assert np.allclose(colours[a], colours[a][0]) and np.allclose(colours[b], colours[b][0])
    assert not np.allclose(colours[a][0], colours[b][0])
    assert "site" in widget.legend.value and "A" in widget.legend.value

    # Filter split == test: only ome and pfa shown, coordinates unchanged.
    widget.filter_column.value = "split"
    widget.filter_value.value = "test"
    assert set(frame["ID"].iloc[widget.shown]) == {"ome", "pfa"}
    assert np.array_equal(widget.scatter.coords, widget.coords[widget.shown])
    widget.filter_column.value = None
    assert len(widget.shown) == len(frame)

    # Lasso the upper halves of scan and ome (umap_1 < 0.5, umap_0 < 4.4).
    target = np.flatnonzero(
        frame["ID"].isin(["scan", "ome"]).to_numpy() & (frame["y"] < 500).to_numpy()
    )
    qtbot.wait(50)
    screen = widget.scatter.screen_positions()
    widget.scatter.select_polygon(_box_around(screen[target]))
    assert sorted(widget.selection) == sorted(target)
    assert widget.table.counts() == {"scan": 40, "ome": 40}

    # A row click opens that slide with its selected patches selected.
    widget.table.click_row("ome")
    shown = widget.slides.opened["ome"]
    assert "ome" in viewer.layers and "ome patches" in viewer.layers
    picked = shown.rows[sorted(shown.points.selected_data)]
    assert sorted(picked) == sorted(target[frame["ID"].to_numpy()[target] == "ome"])

    # Side by side: a click on a pfa point opens pfa right of ome, centred on that patch.
    widget.layout_choice.value = "side by side"
    widget.mode.value = "pan"  # a click (no drag) in pan mode picks a point
    row = int(np.flatnonzero((frame["ID"] == "pfa").to_numpy() & (frame["x"] == 512).to_numpy())[3])
    qtbot.wait(50)
    _click(widget.scatter.canvas, widget.scatter.screen_positions()[row])
    pfa = widget.slides.opened["pfa"]
    assert "ome" in widget.slides.opened  # still open beside it
    assert pfa.offset_x == pytest.approx(WIDTH * 1.05)
    assert tuple(viewer.layers["pfa"].translate) == (0.0, pytest.approx(WIDTH * 1.05))
    assert list(pfa.rows[sorted(pfa.points.selected_data)]) == [row]
    centre_y, centre_x = camera_of(viewer).center[-2:]
    assert centre_y == pytest.approx(frame["y"].iat[row] + (SIZE - 1) / 2)  # pixel centres
    assert centre_x == pytest.approx(frame["x"].iat[row] + (SIZE - 1) / 2 + WIDTH * 1.05)
    # The slide's pixels there are the PathFlowAI array read (x, y, C) -> (y, x, C).
    assert viewer.layers["pfa"].data[0].shape[:2] == (HEIGHT, WIDTH)

    # A selection made on the slide highlights its points in the scatter.
    pfa.points.selected_data = {0, 1, 2}
    assert sorted(widget.shown[widget.scatter.selected]) == sorted(pfa.rows[[0, 1, 2]])

    _broken_and_orphan_points(widget, notifications)


def _broken_and_orphan_points(widget, notifications) -> None:
    """A click on the gone slide's point and on an orphan's: notifications; then a row of the
    table still opens its slide."""
    frame = widget.frame
    # The broken slide: a notification; the rest keeps working.
    gone_row = int(np.flatnonzero((frame["ID"] == "gone").to_numpy())[0])
    _click(widget.scatter.canvas, widget.scatter.screen_positions()[gone_row])
    assert any("gone" in m and "no such file" in m for m in notifications)
    assert "gone" not in widget.slides.opened
    orphan_row = int(np.flatnonzero((frame["ID"] == "orphan").to_numpy())[0])
    widget.open_point(orphan_row)
    assert any("orphan" in m and "not in the slides table" in m for m in notifications)
    widget.table.click_row("scan")
    assert (
        "scan" in widget.slides.opened
        and len(widget.slides.opened["scan"].points.selected_data) == 40
    )


def test_cohort_mosaic_reads_one_patch_per_cell(make_napari_viewer, qtbot, cohort, monkeypatch):
    from napari_pathviz.slide import Slide

    reads = []
    original = Slide.read_region

    def counted(self, *args, **kwargs):
        reads.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Slide, "read_region", counted)
    viewer, widget = _load(make_napari_viewer, qtbot, cohort)
    widget.mosaic_grid.value = 6
    widget.mosaic_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.mosaic is not None, timeout=60_000)
    mosaic = widget.mosaic
    assert len(np.unique(mosaic.cells)) == len(mosaic.cells) <= 36
    ids = widget.frame["ID"].to_numpy()[mosaic.picks]
    readable = int(np.isin(ids, ["scan", "ome", "pfa"]).sum())
    assert mosaic.reads == readable == len(reads)  # one read per cell, none for the gone slide
    assert 0 < readable < len(widget.frame) / 10
    assert set(mosaic.failed_slides) >= {"gone"}
    assert viewer.layers["cohort mosaic"].data.shape == (6 * 48, 6 * 48, 3)


def test_cohort_batch_score_and_umap(make_napari_viewer, qtbot, cohort):
    viewer, widget = _load(make_napari_viewer, qtbot, cohort, use_given=False)
    assert "UMAP" in widget.status.value
    assert widget.coords.shape == (len(widget.frame), 2) and np.isfinite(widget.coords).all()
    widget.score_column.value = "site"
    widget.score_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.score is not None, timeout=60_000)
    # The B slides carry a shift of 6 in one feature: the site separates the embedding.
    assert widget.score.score > 0.8
    assert widget.score_line.value.startswith("batch effect of site: score")
    # Within the annotation the shift is still there.
    widget.score = None
    widget.score_within.value = "annotation"
    widget.score_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.score is not None, timeout=60_000)
    assert widget.score.within == "annotation" and widget.score.score > 0.8


def test_cohort_bad_slides_table_is_one_line(make_napari_viewer, qtbot, cohort, notifications):
    from napari_pathviz._widgets.cohort import CohortWidget

    viewer = make_napari_viewer()
    widget = CohortWidget(viewer)
    bad = cohort["table"].with_name("dup.csv")
    table = pd.read_csv(cohort["table"])
    pd.concat([table, table.iloc[[1]]]).to_csv(bad, index=False)
    widget.embeddings_path.value = str(cohort["embeddings"])  # a folder typed in the field
    widget.slides_table_path.value = str(bad)
    widget.load_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.load_button.enabled and "duplicate" in widget.status.value)
    assert widget.status.value == f"{bad}: duplicate slide IDs: ome"
    assert any(m == widget.status.value for m in notifications)
    assert widget.frame is None
    # The fixed table loads in the same widget.
    widget.slides_table_path.value = str(cohort["table"])
    widget.load_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.frame is not None, timeout=60_000)
    assert len(widget.frame) == 350
