"""README figure docs/plugins_menu_1440x900.png: the window as napari's Plugins menu leaves it at
1440 x 900 with all six PathViz widgets open (one tab group on the right), on the demo sample
(File > Open Sample), the Embedding explorer's tab in front with its UMAP.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/plugins_menu_figure.py \
        [--out docs/plugins_menu_1440x900.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

MENU_NAMES = (  # napari.yaml's display names, in the Plugins menu's order
    "Slide & patches",
    "Embedding explorer",
    "Model inference",
    "Attributions",
    "Cohort explorer",
    "QuPath annotations",
)
SCREEN = (1440, 900)


def wait(app, done, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the viewer did not get there in time")
        app.processEvents()
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/plugins_menu_1440x900.png")
    args = parser.parse_args()

    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    app = QApplication.instance()
    viewer.open_sample("napari-pathviz", "demo")
    docks = {
        name: viewer.window.add_plugin_dock_widget("napari-pathviz", name) for name in MENU_NAMES
    }
    for _ in range(10):  # each dock joins the tab group, in front, on its first showing
        app.processEvents()
    explorer_dock, explorer = docks["Embedding explorer"]
    explorer_dock.raise_()
    done = f"UMAP of {len(viewer.layers[-1].data)} patches"
    wait(app, lambda: explorer.status.value == done)  # the shown explorer runs the UMAP
    explorer.color_by.value = "annotation"
    for _ in range(40):  # let Qt lay out and the canvases draw
        app.processEvents()
        time.sleep(0.05)
    frame = window.frameGeometry()
    print(
        f"window {frame.width()} x {frame.height()}, canvas {viewer.window._qt_viewer.canvas.native.size()}"
    )
    shot = viewer.screenshot(canvas_only=False, flash=False)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # 256 colours: a third of the bytes, no visible change to a screenshot of flat widgets.
    image = Image.fromarray(np.asarray(shot)[..., :3])
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
