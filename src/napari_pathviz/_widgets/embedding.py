"""Dock widget "Embedding explorer": UMAP of patch embeddings in a vispy scatter, linked both ways
to the patches on the slide.

State lives in the layers: the UMAP coordinates become ``umap_0``.. columns of the patches
layer's features (NaN where a patch has no embedding); the scatter shows the rows of the patches
layer in use (shared by every PathViz widget, see ``_patches_in_use``) that have coordinates.
The pieces: the run form (``_umap_form``), the selection linking (``_selection_link``), loading
coordinates, the mosaic and the exports (``_embedding_files``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from .._layers import META_COLOR_BY, META_SLIDE, patches_layer_data
from .._sample_data import META_EMBEDDINGS  # the embeddings file of a layer's patches
from ..errors import Cancelled, PathvizError
from ..render import column_colors
from ._compact import DOCK_WIDTH, path_text, row, status_label
from ._dock_layout import join_pathviz_tabs
from ._embedding_files import MOSAIC_LAYER, EmbeddingFiles
from ._jobs import JobRunner
from ._notify import notify_warnings, report_error
from ._patches_in_use import follow, patches_combo, patches_in_use
from ._selection_link import HIGHLIGHT_LAYER, SelectionLink
from ._umap_form import UmapForm, layer_embeddings
from .scatter import MODES, ScatterCanvas

if TYPE_CHECKING:
    import napari

__all__ = ["EmbeddingWidget", "HIGHLIGHT_LAYER", "MOSAIC_LAYER", "META_EMBEDDINGS"]

META_UMAP = "pathviz_umap"  # points-layer metadata: the UMAP parameters of its umap_* columns
EMPTY_HINT = "Run UMAP or load coordinates\n(Coordinates, mosaic, export below)"

SCATTER_MIN_HEIGHT = 300  # a UMAP scatter shorter than this shows no structure
STATUS_RUN_LINES = 3  # the status's height while UMAP runs (its progress steps fit in it)
PROGRESS_EVERY_S = 0.5  # the shortest time between two progress steps of the same stage shown


class EmbeddingWidget(EmbeddingFiles, SelectionLink, QWidget):
    """The explorer; the scatter <-> slide selection linking lives in ``SelectionLink``."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        join_pathviz_tabs(self)  # opened beside another PathViz dock: a tab
        self._viewer = viewer
        self._syncing = False  # re-entrancy guard between scatter and layer selections
        self._linked_layer = None
        self.rows = np.zeros(0, np.int64)  # scatter point i is row rows[i] of the patches layer
        self._pending_rows: np.ndarray | None = None  # a scatter selection not yet on the layer
        self._umap_layer = None  # the patches layer a UMAP run writes to
        self._last_step = ("", 0.0)  # the stage shown last, and when
        self.in_use = patches_in_use(viewer)
        # A lasso's selection reaches the layer lazily (see _selection_link); a widget that
        # reads the selection of the patches in use gets it put there first.
        self.in_use.add_pending_selection(self.flush_selection)

        self.umap_form = UmapForm(self._numeric_columns)
        for name in UmapForm.FIELDS:
            setattr(self, name, getattr(self.umap_form, name))
        self.patches_layer_choice = patches_combo(self.in_use)
        self.run_button = PushButton(text="Run UMAP")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=100)
        self.status = status_label()
        self._jobs = JobRunner(
            self.run_button, self.cancel_button, self._show_progress, self._report
        )
        self.color_by = ComboBox(label="Colour by", choices=self._feature_columns)
        self.mode = ComboBox(
            label="Mouse",
            choices=list(MODES),
            value="lasso",
            tooltip="lasso / rectangle select (Shift adds); pan to navigate",
        )
        self.centre_button = PushButton(
            text="Centre", tooltip="centre the slide on the patches selected in the scatter"
        )
        self.legend = Label(value="")
        self.legend.native.setWordWrap(True)  # every class shown in a narrow dock
        self.scatter = ScatterCanvas()
        self.scatter.native.setMinimumHeight(SCATTER_MIN_HEIGHT)
        self.scatter.set_mode("lasso")
        self.scatter.on_select = self._scatter_selected
        self.scatter.on_click = self.jump_to
        self.scatter.on_hover = self._hover_text
        self.hint = self._add_hint()
        self._layout(self._build_files_section(self._numeric_columns))

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.color_by.changed.connect(self._colour_picked)
        self.mode.changed.connect(self.scatter.set_mode)
        self.centre_button.changed.connect(self.centre_on_selection)
        follow(self.in_use.changed, self._in_use_changed)
        follow(self.in_use.columns_changed, self._refresh_choices)
        follow(self.in_use.color_changed, self._colour_from_state)
        self._in_use_changed(self.in_use.layer)

    def _layout(self, files_section) -> None:
        """Essential controls, the scatter (it takes the room), then what acts on its result;
        the collapsed sections open inside scroll areas, so the dock never outgrows the screen."""
        self.controls = Container(
            widgets=[
                self.patches_layer_choice,
                self.embeddings_path,
                row(self.run_button, self.cancel_button, self.progress),
            ]
        )
        self.controls.native.layout().addWidget(self.umap_form.advanced)
        self.mode.label = ""  # its choices say what it is: lasso, rectangle, pan
        view = Container(
            widgets=[self.color_by, self.mode, self.centre_button], layout="horizontal"
        )
        view.margins = (4, 0, 4, 0)
        self.actions = Container(widgets=[], labels=False)
        self.actions.native.layout().addWidget(files_section)
        self.legend.native.setContentsMargins(6, 0, 6, 0)
        self.status.native.setContentsMargins(6, 0, 6, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        # The least room each part takes: the controls with their sections closed (the explorer
        # has a full-height column of the workbench to itself), a scatter big enough to read a
        # UMAP in, the title of the files section; an opened section scrolls.
        self._controls_scroll = _scrolled(
            self.controls.native, self.controls.native.sizeHint().height()
        )
        layout.addWidget(self._controls_scroll)
        layout.addWidget(self.status.native)  # outside: a longer status never scrolls the Run row
        layout.addWidget(view.native)
        layout.addWidget(self.scatter.native, stretch=1)
        layout.addWidget(self.legend.native)
        layout.addWidget(_scrolled(self.actions.native, files_section.sizeHint().height() + 8))
        self.setMaximumWidth(DOCK_WIDTH)

    def _add_hint(self):
        """Grey text in the middle of the empty scatter, saying how to fill it."""
        from vispy import scene

        canvas = self.scatter.canvas
        hint = scene.visuals.Text(
            EMPTY_HINT, parent=canvas.scene, color="#a0a0a0", font_size=9, anchor_x="center"
        )

        def centre(_event=None) -> None:
            hint.pos = (canvas.size[0] / 2, canvas.size[1] / 2)

        canvas.events.resize.connect(centre)
        centre()
        return hint

    # -- the patches layer in use --------------------------------------------------------------
    def patches_layer(self):
        """The patches layer in use (shared by every PathViz widget of this viewer)."""
        return self.in_use.layer

    def _in_use_changed(self, layer) -> None:
        """Another patches layer in use: its coordinates in the scatter, or the empty hint."""
        self._refresh_choices()
        if layer is not None and _umap_columns(layer):
            self.show_layer(layer)
            return
        self.rows = np.zeros(0, np.int64)
        self.scatter.set_data(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32))
        self.legend.value = ""
        self.hint.visible = True
        if layer is None:
            return
        self._link(layer)
        embeddings = layer.metadata.get(META_EMBEDDINGS)
        if embeddings and not path_text(self.embeddings_path):
            self.embeddings_path.value = str(embeddings)
            # e.g. the demo sample: its embeddings in the scatter without a click, once the
            # explorer is on screen (a hidden one computes nothing).
            self._run_when_shown = True
            if self.isVisible():
                self.showEvent(None)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if event is not None:
            super().showEvent(event)
            self._fit_controls()
        if getattr(self, "_run_when_shown", False):
            self._run_when_shown = False
            self.run()

    def _fit_controls(self) -> None:
        """Styled on screen, the controls ask for more than when built: their scroll area grows
        to all of it (sections closed), so the Run rows never scroll."""
        from qtpy.QtCore import QTimer

        def fit() -> None:
            try:
                scroll = self._controls_scroll
                if not self.umap_form.advanced.isExpanded():
                    frame = scroll.height() - scroll.viewport().height()  # the theme's border
                    scroll.setMinimumHeight(self.controls.native.sizeHint().height() + frame)
            except RuntimeError:
                pass  # the widget was deleted first

        QTimer.singleShot(0, fit)  # once Qt has laid the new text out

    # -- choices -------------------------------------------------------------------------------
    def _feature_columns(self, _widget=None) -> list[str]:
        layer = self.patches_layer() if hasattr(self, "in_use") else None
        if layer is None:
            return []
        return [str(c) for c in layer.features.columns if not str(c).startswith("umap_")]

    def _numeric_columns(self, _widget=None) -> list[str]:
        layer = self.patches_layer() if hasattr(self, "in_use") else None
        if layer is None:
            return []
        return [
            str(c)
            for c in layer.features.columns
            if layer.features[c].dtype.kind in "fiu"
            and not str(c).startswith("umap_")
            and str(c) not in ("x", "y", "patch_size")
        ]

    def _refresh_choices(self, _event=None) -> None:
        # Refilling choices never recolours: only the user's pick of a colour column does.
        with self.color_by.changed.blocked():
            for widget in (self.color_by, self.background_column, self.sort_col):
                widget.reset_choices()
            if self.in_use.color_column in self.color_by.choices:  # the one colour column
                self.color_by.value = self.in_use.color_column

    # -- UMAP ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Loads the embeddings, joins them to the patches layer and runs UMAP off the GUI
        thread; the result lands in the layer's features and in the scatter."""
        from ..patches import PatchTable

        if not self.run_button.enabled:
            return  # a run is under way: Cancel it first
        path = path_text(self.embeddings_path)
        layer = self.patches_layer()
        if not path and layer is not None:  # no file: the layer's own feat_* columns
            path = layer_embeddings(layer.features, layer.name)
        if not path:  # neither a file nor feat_* columns
            self._report(
                PathvizError(
                    "Embeddings: give an embeddings file first, or run Model inference with "
                    "'Also embeddings' to put feat_* columns on the patches layer"
                )
            )
            return
        patches = (
            None
            if layer is None
            else PatchTable(
                layer.features.drop(
                    columns=[c for c in layer.features.columns if str(c).startswith("umap_")]
                ),
                layer.name,
            )
        )
        job = self.umap_form.job(path, patches)
        self._hold_status_height(True)
        self.status.value = "running UMAP…"
        self._umap_layer = layer  # where the first look and the result go
        self._jobs.start(job.run, self._umap_done)

    def cancel(self) -> None:
        self._jobs.cancel()
        self.status.value = "cancelling…"

    def _show_progress(self, fraction: float, stage: str, first_look=None) -> None:
        # Small steps within one stage (the epochs: ten a second) at most every
        # PROGRESS_EVERY_S: each repaint of a widget makes Qt compose the window with its GL
        # canvases again.
        now, step, value = time.monotonic(), stage.rsplit(":", 1)[0], int(round(100 * fraction))
        if (
            first_look is None
            and step == self._last_step[0]
            and now - self._last_step[1] < PROGRESS_EVERY_S
            and abs(value - self.progress.value) < 2
        ):
            return
        self._last_step = (step, now)
        self.progress.value = value
        self.status.value = stage
        if first_look is not None:
            self._show_umap(first_look.es, first_look.coords)
            self.status.value = stage  # e.g. "first look: UMAP of 4,000 sampled patches, ..."

    def _umap_done(self, result) -> None:
        es, coords, sample = result
        notify_warnings(es.report.messages())  # in the GUI's words
        self._show_umap(es, coords)
        self._umap_layer = None
        self._hold_status_height(False)
        self.status.value = f"UMAP of {len(coords)} patches" + (
            f", sampled: fitted on {sample:,}, the rest placed (tick Full UMAP fit to fit all)"
            if sample
            else ""
        )
        self.progress.value = 100

    def _hold_status_height(self, hold: bool) -> None:
        """During a run the status keeps the height of STATUS_RUN_LINES lines: each progress
        step that wrapped to another number of lines re-laid the dock out, and the canvases
        redrew (0.5-0.9 s each in software OpenGL at 100,000 points)."""
        label = self.status.native
        if hold:
            label.setFixedHeight(STATUS_RUN_LINES * label.fontMetrics().lineSpacing() + 4)
        else:
            label.setMinimumHeight(0)
            label.setMaximumHeight(16_777_215)  # Qt's QWIDGETSIZE_MAX

    def _show_umap(self, es, coords) -> None:
        """A run's layout (its first look, then the full result) in the layer and the scatter.
        Both have the same rows: a selection made in the first look stays selected."""
        layer = self._umap_layer
        if layer is None:
            layer = self._umap_layer = self._add_patches_layer(es.table)
        rows, selected, pending = self.rows, self.scatter.selected, self._pending_rows
        self.write_coords_to_layer(layer, es.table.df, coords)
        if len(selected) and np.array_equal(rows, self.rows):
            self.scatter.set_highlight(selected)
            if pending is not None:  # a lasso not yet put on the layer (see _selection_link)
                self._pending_rows = pending
                self._draw_highlight_layer(self._linked_layer, pending)

    def _add_patches_layer(self, table):
        """A patches layer for embeddings or coordinates given before any patches; it becomes
        the layer in use (there was none)."""
        from napari.layers import Layer

        slide_layer = next((ly for ly in self._viewer.layers if META_SLIDE in ly.metadata), None)
        scale = (1.0, 1.0) if slide_layer is None else tuple(slide_layer.scale[:2])
        layer = self._viewer.add_layer(
            Layer.create(*patches_layer_data(table, scale=scale, name="embedded patches"))
        )
        self.in_use.set(layer)
        return layer

    def write_coords_to_layer(self, layer, rows_df, coords: np.ndarray) -> None:
        """Stores UMAP coordinates as umap_* feature columns of the patches layer, and makes it
        the layer in use."""
        from ..patches import match_rows

        features = layer.features.drop(
            columns=[c for c in layer.features.columns if str(c).startswith("umap_")]
        )
        where = match_rows(rows_df, features)
        found = where >= 0
        for j in range(coords.shape[1]):
            column = np.full(len(features), np.nan, np.float32)
            column[where[found]] = coords[found, j]
            features[f"umap_{j}"] = column
        layer.features = features
        self.in_use.set(layer)  # shows it when it was not in use yet
        self.show_layer(layer)

    def show_layer(self, layer) -> None:
        """Fills the scatter from a patches layer's umap_* columns, coloured by the layer's own
        colour column, and links the selections."""
        columns = _umap_columns(layer)
        if not columns:
            raise PathvizError(f"layer {layer.name!r} has no UMAP coordinates yet: run UMAP")
        coords = layer.features[columns].to_numpy(dtype=np.float32)
        self.rows = np.flatnonzero(np.isfinite(coords).all(axis=1))
        self._link(layer)
        self._refresh_choices()
        column = layer.metadata.get(META_COLOR_BY)
        if column in self.color_by.choices:
            with self.color_by.changed.blocked():
                self.color_by.value = column
        colours = self._colours(layer, self.color_by.value)
        self.hint.visible = not len(self.rows)
        self.scatter.set_data(coords[self.rows], colours)
        self._layer_selection_changed()

    def _colours(self, layer, column) -> np.ndarray:
        if column is None or column not in layer.features.columns:
            return np.tile(np.float32((0.6, 0.8, 1.0, 1.0)), (len(self.rows), 1))
        mapping = column_colors(layer.features.iloc[self.rows], column)
        self.legend.value = _legend_html(mapping)
        return mapping.rgba

    def _colour_picked(self, column: str | None) -> None:
        """The user's colour column: the scatter's, and the slide's patches' for every widget."""
        self._recolour(column)
        try:
            self.in_use.set_color(column)
        except PathvizError as err:
            self._report(err)

    def _colour_from_state(self, column) -> None:
        """Another widget coloured the patches in use by ``column``: the scatter follows."""
        if column != self.color_by.value and column in self.color_by.choices:
            with self.color_by.changed.blocked():
                self.color_by.value = column
            self._recolour(column)

    def _recolour(self, column: str | None) -> None:
        layer = self._linked_layer
        if layer is not None and len(self.rows):
            self.scatter.set_colors(self._colours(layer, column))

    def _hover_text(self, index: int) -> str:
        layer = self._linked_layer
        if layer is None:
            return ""
        row = layer.features.iloc[self.rows[index]]
        text = f"{row['ID']}  x={row['x']} y={row['y']} size={row['patch_size']}"
        column = self.color_by.value
        if column and column in row.index:
            text += f"\n{column}: {row[column]}"
        return text

    def _report(self, err: Exception) -> None:
        from napari.utils.notifications import show_info

        if isinstance(err, Cancelled):
            show_info("UMAP cancelled")
        self._hold_status_height(False)
        report_error(self.status, err)


def _umap_columns(layer) -> list:
    return sorted(
        (c for c in layer.features.columns if str(c).startswith("umap_")),
        key=lambda c: int(str(c)[5:]),
    )


class _FittedScroll(QScrollArea):
    """A vertical scroll area that asks for its whole widget when there is room (Qt's own hint
    is a fixed guess) and yields down to ``least`` pixels of it, where a scroll bar shows."""

    def __init__(self, widget, least: int):
        super().__init__()
        self._least = least
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(widget)

    def _around(self, width: int, height: int) -> QSize:
        # the frame napari's stylesheet may still draw sits in the contents margins
        margins = self.contentsMargins()
        return QSize(
            width + margins.left() + margins.right(), height + margins.top() + margins.bottom()
        )

    def sizeHint(self) -> QSize:
        hint = self.widget().sizeHint()
        return self._around(hint.width(), hint.height())

    def minimumSizeHint(self) -> QSize:
        # as wide as the widget beside a scroll bar, so a shown bar covers none of it
        bar = self.verticalScrollBar().sizeHint().width()
        return self._around(self.widget().minimumSizeHint().width() + bar, self._least)


def _scrolled(widget, min_height: int) -> QScrollArea:
    """``widget`` in a frameless vertical scroll area, at least ``min_height`` tall and as tall
    as ``widget`` with its sections closed when there is room."""
    return _FittedScroll(widget, min_height)


def _legend_html(mapping) -> str:
    def swatch(rgba) -> str:
        r, g, b = (int(255 * c) for c in rgba[:3])
        return f"<span style='color:#{r:02x}{g:02x}{b:02x}'>■</span>"

    if mapping.kind == "categorical":
        # A swatch stays with its name when the legend wraps.
        items = [f"{swatch(c)}&nbsp;{name}" for name, c in list(mapping.categories.items())[:20]]
        return f"<b>{mapping.column}</b>: " + " ".join(items)
    from matplotlib import colormaps

    cmap = colormaps[mapping.colormap]
    ramp = "".join(swatch(cmap(v)) for v in np.linspace(0, 1, 12))
    lo, hi = mapping.limits
    return f"<b>{mapping.column}</b>: {lo:.3g} {ramp} {hi:.3g}"
