"""pathviz demo: napari with the demo slide, or the demo's figures and tables headless."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import PathvizError


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the demo: napari with the demo slide, or files headless",
        description="Builds the demo data (a real IHC image with labelled patches "
        "and a small trained model) and opens it in napari; without a "
        "display, or with --headless, writes figures and tables.",
    )
    p.add_argument("--headless", action="store_true", help="write files instead of opening napari")
    p.add_argument("--out", default="pathviz-demo", help="output folder for headless results")
    p.add_argument(
        "--screenshot", metavar="PNG", help="open napari, save a screenshot of the window and exit"
    )
    p.add_argument(
        "--data-dir",
        help="where the demo data are built: a new or empty folder, or one the demo made "
        "(default: demo-vN in the cache folder)",
    )
    p.set_defaults(func=cmd_demo)


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# Opens a Qt application and an OpenGL context, as napari's canvas needs, in a child process:
# where that fails, Qt aborts the whole process (exit 134), which no try/except can catch.
_PROBE = (
    "import sys\n"
    "from qtpy.QtGui import QOpenGLContext\n"
    "from qtpy.QtWidgets import QApplication\n"
    "app = QApplication(sys.argv[:1])\n"
    "sys.exit(0 if QOpenGLContext().create() else 3)\n"
)


def display_problem() -> str | None:
    """Why napari cannot open a window here, in words; None when it can."""
    import subprocess

    if not _has_display():
        return "no display found (DISPLAY and WAYLAND_DISPLAY are unset)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "the display did not answer within 60 s"
    if done.returncode == 3:
        return "the display offers no OpenGL context (napari's canvas needs one)"
    if done.returncode != 0:
        where = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or "the display"
        return f"Qt cannot open a window on {where}"
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    from .._demo import claim_demo_dir, load_demo
    from ._common import step

    if args.data_dir:  # before any window opens: a folder of the user's own is refused
        claim_demo_dir(Path(args.data_dir))

    problem = None if args.headless else display_problem()
    if args.screenshot and problem:
        raise PathvizError(
            f"--screenshot needs a window, but {problem}; run it under xvfb-run, "
            "or use --headless for the demo's files"
        )
    if args.headless or problem:
        if not args.headless:
            print(
                f"pathviz demo: {problem}; writing the demo's results instead (to {args.out})",
                file=sys.stderr,
            )
        slide, table = load_demo(args.data_dir, step=step)
        for path in write_demo_outputs(slide, table, Path(args.out)):
            print(path)
        return 0
    from .._demo_viewer import open_demo_viewer

    return open_demo_viewer(args.data_dir, args.screenshot, on_progress=_step_lines())


def _step_lines():
    """progress(fraction, message) printing each new step once (the UMAP's epochs once)."""
    from ._common import step

    shown: set[str] = set()

    def progress(_fraction: float, message: str) -> None:
        key = "UMAP: epochs" if message.startswith("UMAP: epochs") else message
        if key not in shown:
            shown.add(key)
            step(message)

    return progress


def write_demo_outputs(slide, table, out: Path) -> list[Path]:
    """Headless demo: the patch table (with predictions when torch is there) and figures."""
    from ..io.tables import write_table
    from ..render import render_slide_with_patches
    from ._common import step

    out.mkdir(parents=True, exist_ok=True)
    step(f"writing the patch table and the slide figures to {out}")
    written = [
        write_table(table.df, out / "patches.csv"),
        render_slide_with_patches(
            slide, table, out / "slide_patches_annotation.png", color_by="annotation"
        ),
    ]
    if "prob_dab_positive" in table.df.columns:
        written.append(
            render_slide_with_patches(
                slide, table, out / "slide_patches_prediction.png", color_by="prob_dab_positive"
            )
        )
        written.extend(_write_demo_embedding_outputs(slide, table, out))
        written.extend(_write_demo_attribution_outputs(slide, table, out))
    return written


def _write_demo_attribution_outputs(slide, table, out: Path) -> list[Path]:
    """A gallery per attribution method for a few demo patches (the most DAB-positive ones,
    explained against random background patches)."""
    import numpy as np

    from .._demo import ANNOTATIONS
    from .._demo_model import load_demo_model, read_patches, to_model_input
    from ..attribution import PIXEL_METHODS, attribute
    from ..attribution.gallery import distinct_rows, render_gallery
    from ..patches import PatchTable
    from ._common import step

    df = table.df
    # The most DAB-positive patches that show different tissue (no overlap, no mirror copy).
    ranked = np.argsort(-df["dab_positive"].to_numpy(), kind="stable")
    chosen = distinct_rows(df, ranked, 4)
    rest = np.setdiff1d(np.arange(len(df)), chosen)
    background = np.random.default_rng(0).choice(rest, 16, replace=False)
    images = read_patches(slide, PatchTable(df.iloc[chosen], table.source))
    inputs = to_model_input(images)
    reference = to_model_input(read_patches(slide, PatchTable(df.iloc[background], table.source)))
    model = load_demo_model()
    written = []
    for method in PIXEL_METHODS:  # the demo model is a CNN: no attention methods
        step(f"attributions: {method} on the {len(chosen)} most DAB-positive patches")
        result = attribute(model, inputs, method, background=reference)
        titles = [f"x={df['x'].iat[i]} y={df['y'].iat[i]}" for i in chosen]
        written.append(
            render_gallery(
                images,
                result,
                out / f"attributions_{method}.png",
                class_names=list(ANNOTATIONS),
                titles=titles,
            )
        )
    return written


def _write_demo_embedding_outputs(slide, table, out: Path) -> list[Path]:
    """What plot-embeddings and plot-image-umap-embeddings write, for the demo embeddings."""
    from .._demo import demo_umap
    from ..embedding_plot import plot_embeddings_html, write_coords
    from ..mosaic import render_mosaic, umap_mosaic
    from ._common import stage_progress, step

    with stage_progress("UMAP (3-D) of the demo embeddings") as progress:
        es, coords3 = demo_umap(table, n_components=3, progress=progress, step=step)
    step("writing the interactive UMAP plot and its coordinates")
    written = [
        plot_embeddings_html(es.table.df, coords3, out / "embeddings_umap.html", ["annotation"]),
        write_coords(es.table.df, coords3, out / "umap_coords.csv"),
    ]
    with stage_progress("UMAP (2-D) of the demo embeddings") as progress:
        es2, coords2 = demo_umap(table, n_components=2, progress=progress)
    step(f"drawing the {len(es2)} patches at their UMAP positions (mosaic)")
    mosaic = umap_mosaic(
        {slide.slide_id: slide},
        es2.table,
        coords2,
        zoom=0.5,
        canvas=1536,
        sort_col="prob_dab_positive",
        border=2,  # framed by annotation, with a legend: glass patches show on white
        color_by="annotation",
    )
    written.append(render_mosaic(mosaic, out / "umap_image_mosaic.png"))
    return written
