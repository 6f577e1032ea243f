"""README figure docs/cohort.png: the Cohort explorer on a synthetic 3-site cohort, coloured by
site, with the kNN-purity batch-effect score shown.

The cohort: the demo slide (napari_pathviz._demo) seen by three "sites", two slides each; each
site shifts the stain colours as a scanner or staining batch would (site A as scanned, site B
redder and paler, site C bluer and darker), and each slide is the demo slide turned or mirrored,
so slides differ in layout but not in tissue. The embeddings are the demo model's penultimate
layer on every patch (64 features), so the site shift reaches the embedding only through the
pixels. Slides are written as OME-Zarr, the slides table as CSV, the embeddings as one Parquet
per slide; the widget loads them, runs UMAP (seed 0), colours by site, scores site (and site
within annotation) and opens the slide of one point.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/cohort_figure.py \
        [--out docs/cohort.png] [--work /tmp/cohort_figure]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

# site: (per-channel gain, gamma); applied to the demo slide's RGB
SITES = {
    "A": ((1.0, 1.0, 1.0), 1.0),
    "B": ((1.10, 0.93, 0.95), 0.85),
    "C": ((0.92, 0.95, 1.08), 1.2),
}
VIEWS = (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: np.rot90(a, 2))


def shifted(image: np.ndarray, gain, gamma: float) -> np.ndarray:
    """A site's colour shift of an RGB uint8 image: per-channel gain, then a gamma."""
    x = image.astype(np.float32) / 255 * np.asarray(gain, np.float32)
    return (np.clip(x, 0, 1) ** gamma * 255).round().astype(np.uint8)


def write_cohort(work: Path) -> tuple[Path, Path]:
    import dask.array as da

    from napari_pathviz._demo import demo_image, demo_patch_table
    from napari_pathviz._demo_model import run_demo_model
    from napari_pathviz.io.pyramid import lazy_levels
    from napari_pathviz.io.zarr_io import write_ome_zarr
    from napari_pathviz.patches import PatchTable
    from napari_pathviz.slide import open_slide

    image, classes = demo_image()
    (work / "slides").mkdir(parents=True, exist_ok=True)
    (work / "embeddings").mkdir(exist_ok=True)
    table = []
    for s, (site, (gain, gamma)) in enumerate(SITES.items()):
        for k in range(2):
            view = VIEWS[(2 * s + k) % len(VIEWS)]
            slide_id = f"site{site}_{k + 1}"
            pixels = np.ascontiguousarray(view(shifted(image, gain, gamma)))
            path = work / "slides" / f"{slide_id}.ome.zarr"
            if not path.exists():
                levels = lazy_levels(da.from_array(pixels, chunks=(256, 256, 3)), min_size=256)
                write_ome_zarr(levels, path, n_native=1, mpp=0.5, chunk=256)
            rows = demo_patch_table(np.ascontiguousarray(view(classes))).assign(ID=slide_id)
            patches = PatchTable.from_frame(rows, slide_id)
            _probs, feats = run_demo_model(open_slide(path), patches)
            frame = patches.df.reset_index(drop=True)
            for j in range(feats.shape[1]):
                frame[f"feat_{j}"] = feats[:, j]
            frame.to_parquet(work / "embeddings" / f"{slide_id}.parquet")
            table.append({"ID": slide_id, "path": str(path), "site": site, "scanner": f"S{s}"})
    pd.DataFrame(table).to_csv(work / "slides.csv", index=False)
    return work / "embeddings", work / "slides.csv"


def wait(app, until, timeout: float = 600) -> None:
    started = time.perf_counter()
    while not until():
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - started > timeout:
            raise TimeoutError("the widget did not finish in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/cohort.png")
    parser.add_argument("--work", default="/tmp/cohort_figure")
    args = parser.parse_args()

    started = time.perf_counter()
    embeddings, slides_csv = write_cohort(Path(args.work))
    print(f"cohort written in {time.perf_counter() - started:.1f} s")

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_pathviz._widgets.cohort import CohortWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    widget = CohortWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Cohort explorer")
    app = QApplication.instance()
    widget.embeddings_path.value = str(embeddings)  # a folder typed in the field reads too
    widget.slides_table_path.value = str(slides_csv)
    widget.seed.value = 0
    started = time.perf_counter()
    widget.load_button.clicked.emit()
    wait(app, lambda: widget.frame is not None and widget.load_button.enabled)
    print(f"loaded + UMAP in {time.perf_counter() - started:.1f} s: {widget.status.value}")
    widget.color_by.value = "site"
    for within in ("annotation", None):
        widget.score = None
        widget.score_column.value = "site"
        widget.score_within.value = within
        widget.score_button.clicked.emit()
        wait(app, lambda: widget.score is not None and widget.score_button.enabled)
        print(widget.score.as_line())
    # A lasso over the densest third of the points, then open the top slide of the table.
    screen = widget.scatter.screen_positions()
    lo, hi = np.percentile(screen, [10, 45], axis=0)
    widget.scatter.select_rectangle(tuple(lo), tuple(hi))
    if widget.table.native.rowCount():
        widget.table.click_row(widget.table.native.item(0, 0).text())
    for _ in range(30):
        app.processEvents()
        time.sleep(0.05)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    from PIL import Image

    # 256 colours: a third of the bytes, no visible change to a screenshot of flat widgets.
    image = Image.fromarray(np.asarray(shot)[..., :3])
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
