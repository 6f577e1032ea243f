"""Dock widget "Cohort explorer": one scatter holding every patch of a study, linked to any of
its slides.

Load a cohort (embeddings of many slides + a slides table), UMAP it off the GUI thread (or use
the umap_* columns the embeddings carry), colour by any patch or slide-level column, filter by a
slide-level column (points hidden, no recomputation), lasso to get a per-slide count table
(click a row: that slide opens with the selected patches selected), click a point to open its
slide centred on the patch, select on an open slide to see its points in the scatter, draw an
image mosaic (one patch per grid cell, read lazily) and a kNN-purity batch-effect score.

State: ``frame`` (one row per patch), ``features``, ``coords``; the scatter shows the rows
``shown`` (the filter's), so scatter point i is cohort row ``shown[i]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, Label, ProgressBar, PushButton, SpinBox
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..errors import Cancelled, PathvizError
from ._cohort_slides import LAYOUTS, CohortSlides
from ._cohort_table import SlideCountTable, as_categories, category_colours, legend_html, plain
from ._compact import DOCK_WIDTH, collapsed_section, path_field, path_text, row, status_label
from ._dock_layout import join_pathviz_tabs
from ._jobs import JobRunner
from ._notify import notify_warnings, report_error
from .scatter import MODES, ScatterCanvas

if TYPE_CHECKING:
    import napari

MOSAIC_LAYER = "cohort mosaic"
ALL = "(all)"
HIDDEN_COLUMNS = ("x", "y", "patch_size", "linkable")


def _let_combos_shrink(widget: QWidget) -> None:
    """Column names and choices can be long: a combo box as wide as its longest item made the
    dock 398 px wide. They take the width the dock gives and elide what does not fit."""
    from qtpy.QtWidgets import QComboBox

    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(1)


class CohortWidget(QWidget):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        join_pathviz_tabs(self)  # opened beside another PathViz dock: a tab
        self._viewer = viewer
        self.frame = None
        self.features = np.zeros((0, 0), np.float32)
        self.coords = np.zeros((0, 2), np.float32)
        self.shown = np.zeros(0, np.int64)
        self.slide_columns: list[str] = []
        self.paths: dict = {}
        self.selection = np.zeros(0, np.int64)  # cohort rows of the last lasso
        self.score = None
        self.mosaic = None
        self.slides = CohortSlides(viewer, self._slide_selection_changed)
        self._build()
        self._layout()
        self._connect()

    # -- building --------------------------------------------------------------------------------
    def _build(self) -> None:
        self.embeddings_path = path_field(
            "Embeddings",
            mode="r",
            tooltip="PathFlowAI embeddings.pkl, one Parquet with ID, or (folder field below) a "
            "pathviz extract cohort folder / folder of per-slide Parquets",
        )
        self.embeddings_folder = path_field("or folder", mode="d")
        self.slides_table_path = path_field("Slides table", tooltip="CSV/Parquet: ID, path, ...")
        self.slides_dir = path_field("Slides folder", mode="d", tooltip="finds slides by ID")
        self.trust_pickle = CheckBox(text="Trust this pickle (it can run code)", value=False)
        self.use_given = CheckBox(
            text="Use given umap_0/umap_1",
            value=True,
            tooltip="use the embeddings' own umap_0/umap_1 columns if present",
        )
        self.seed = SpinBox(label="UMAP seed (-1 = none)", value=0, min=-1, max=2**31 - 1)
        self.full_fit = CheckBox(
            text="Full UMAP fit (slow)",
            value=False,
            tooltip="above 200,000 patches UMAP is fitted on a 100,000-patch sample and the "
            "rest placed, which keeps about half of each patch's true nearest neighbours that "
            "a full fit keeps; tick to fit every patch",
        )
        self.load_button = PushButton(text="Load cohort")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=100)
        self.status = status_label()
        self.color_by = ComboBox(label="Colour by", choices=self._colour_choices)
        self.legend = Label(value="")
        self.filter_column = ComboBox(
            label="Filter", choices=self._slide_choices, nullable=True, tooltip="slide column"
        )
        self.filter_value = ComboBox(label="equal to", choices=self._filter_values)
        self.score_column = ComboBox(
            label="Batch", choices=self._slide_choices, tooltip="the column whose groups to score"
        )
        self.score_within = ComboBox(
            label="within",
            choices=self._colour_choices,
            nullable=True,
            tooltip="score within each class of this column (e.g. diagnosis), so biology is "
            "not counted as bias",
        )
        self.score_button = PushButton(text="Score")
        self.score_line = Label(value="")
        self.score_line.native.setWordWrap(True)
        self.mode = ComboBox(label="Mouse", choices=list(MODES), value="lasso")
        self.layout_choice = ComboBox(label="Open", choices=list(LAYOUTS), value=LAYOUTS[0])
        self.mosaic_grid = SpinBox(label="Mosaic cells/side", value=24, min=2, max=200)
        self.mosaic_button = PushButton(text="Image mosaic")
        self.scatter = ScatterCanvas()
        # 180: the tallest PathViz dock, it still fits a 1440 x 900 window with a wrapped status
        self.scatter.native.setMinimumHeight(180)
        self.scatter.set_mode("lasso")
        self.table = SlideCountTable(self._open_from_table)
        runner = (self.progress_to, self._report)
        self._load_job = JobRunner(self.load_button, self.cancel_button, *runner)
        self._score_job = JobRunner(self.score_button, self.cancel_button, *runner)
        self._mosaic_job = JobRunner(self.mosaic_button, self.cancel_button, *runner)

    def _layout(self) -> None:
        advanced, _ = collapsed_section(
            "Advanced: folder, pickle, UMAP",
            [self.embeddings_folder, self.trust_pickle, self.use_given, self.seed, self.full_fit],
        )
        top = Container(
            widgets=[
                self.embeddings_path,
                self.slides_table_path,
                self.slides_dir,
                row(self.load_button, self.cancel_button),
                self.progress,
                self.status,
            ]
        )
        top.native.layout().addWidget(advanced)
        view = Container(
            widgets=[
                self.color_by,
                self.legend,
                row(self.filter_column, self.filter_value, label="Filter"),
                row(self.score_column, self.score_within, self.score_button, label="Batch score"),
                self.score_line,
                row(self.mode, self.layout_choice, label="Mouse, open"),
            ]
        )
        below = Container(widgets=[row(self.mosaic_grid, self.mosaic_button)])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        for widget in (top.native, view.native):
            layout.addWidget(widget)
        layout.addWidget(self.scatter.native, stretch=2)
        layout.addWidget(self.table.native, stretch=1)
        layout.addWidget(below.native)
        _let_combos_shrink(self)
        # As narrow as the other PathViz docks: the slide canvas keeps half a laptop's window.
        self.setMaximumWidth(DOCK_WIDTH)

    def _connect(self) -> None:
        self.load_button.changed.connect(self.load)
        self.cancel_button.changed.connect(self.cancel)
        self.color_by.changed.connect(self._recolour)
        self.filter_column.changed.connect(self._filter_column_changed)
        self.filter_value.changed.connect(self.apply_filter)
        self.score_button.changed.connect(self.run_score)
        self.mosaic_button.changed.connect(self.show_mosaic)
        self.mode.changed.connect(self.scatter.set_mode)
        self.layout_choice.changed.connect(lambda v: setattr(self.slides, "layout", v))
        self.scatter.on_select = self.select_indices
        self.scatter.on_click = self.open_point
        self.scatter.on_hover = self._hover_text

    # -- choices ---------------------------------------------------------------------------------
    def _colour_choices(self, _widget=None) -> list[str]:
        if self.frame is None:
            return []
        columns = [str(c) for c in self.frame.columns if str(c) not in HIDDEN_COLUMNS]
        return [c for c in columns if not c.startswith("umap_")]

    def _slide_choices(self, _widget=None) -> list[str]:
        return ["ID", *self.slide_columns] if self.frame is not None else []

    def _filter_values(self, _widget=None) -> list[str]:
        column = getattr(self, "filter_column", None)
        if self.frame is None or column is None or not column.value:
            return [ALL]
        values = self.frame[column.value]
        if isinstance(values.dtype, pd.CategoricalDtype):
            return [ALL, *sorted(str(c) for c in values.cat.categories)]
        return [ALL, *sorted(values.dropna().astype(str).unique())]

    # -- loading ---------------------------------------------------------------------------------
    def load(self) -> None:
        from ._cohort_jobs import LoadJob

        if not self.load_button.enabled:
            return
        source = path_text(self.embeddings_path) or path_text(self.embeddings_folder)
        table = path_text(self.slides_table_path)
        if not source or not table:
            self._report(PathvizError("Cohort: give the embeddings and the slides table first"))
            return
        job = LoadJob(
            source,
            table,
            path_text(self.slides_dir) or None,
            self.trust_pickle.value,
            self.use_given.value,
            None if self.seed.value < 0 else self.seed.value,
            full_fit=self.full_fit.value,
        )
        self.status.value = "loading the cohort…"
        self._load_job.start(job.run, self.set_cohort)

    def set_cohort(self, cohort) -> None:
        """Shows a LoadedCohort (the load job's result)."""
        notify_warnings(cohort.messages)  # in the GUI's words
        self.slides.forget()
        self.frame = as_categories(cohort.frame)
        self.features, self.coords = cohort.features, cohort.coords
        self.slide_codes = self.frame["ID"].cat.codes.to_numpy()
        self.slide_names = [str(c) for c in self.frame["ID"].cat.categories]
        self.slide_columns, self.paths = cohort.slide_columns, cohort.paths
        self.selection = np.zeros(0, np.int64)
        self.table.set_slides(self.slide_codes, self.slide_names)
        self.table.show_counts(self.selection)
        with self.color_by.changed.blocked(), self.filter_column.changed.blocked():
            for widget in (self.color_by, self.filter_column, self.score_column, self.score_within):
                widget.reset_choices()
            self.filter_column.value = None
            self.filter_value.reset_choices()
            self.color_by.value = "ID"
        # Before the new points: setting a progress bar repaints the window at once, which with
        # software OpenGL and 1M points in the scatter takes seconds.
        self.progress.value = 100
        self.shown = np.arange(len(self.frame))
        self.scatter.set_data(self.coords, self._colours())
        n_slides = len(self.slide_names)
        how = "UMAP" if cohort.computed else "given coordinates"
        if cohort.sample_size is not None:
            how = (
                f"sampled UMAP: fitted on {cohort.sample_size:,} patches, the rest placed; "
                "tick Full UMAP fit to fit all"
            )
        self.status.value = f"{len(self.frame)} patches of {n_slides} slides ({how})"

    def cancel(self) -> None:
        for job in (self._load_job, self._score_job, self._mosaic_job):
            job.cancel()
        self.status.value = "cancelling…"

    def progress_to(self, fraction: float, stage: str) -> None:
        self.progress.value = int(round(100 * fraction))
        self.status.value = stage

    # -- colour and filter -----------------------------------------------------------------------
    def _colours(self) -> np.ndarray:
        from ..render import column_colors

        column = self.color_by.value
        if self.frame is None or not column:
            return np.tile(np.float32((0.6, 0.8, 1.0, 1.0)), (len(self.shown), 1))
        values = self.frame[column].iloc[self.shown]
        if isinstance(values.dtype, pd.CategoricalDtype):
            mapping = category_colours(values, column)
        else:
            mapping = column_colors(values.to_frame(column), column)
        self.legend.value = legend_html(mapping)
        return mapping.rgba

    def _recolour(self, _column=None) -> None:
        if self.frame is not None:
            self.scatter.set_colors(self._colours())

    def _filter_column_changed(self, _column=None) -> None:
        with self.filter_value.changed.blocked():
            self.filter_value.reset_choices()
            self.filter_value.value = ALL
        self.apply_filter()

    def apply_filter(self, _value=None) -> None:
        """Shows only the patches whose slide-level column equals the chosen value; the
        coordinates stay (no UMAP is recomputed)."""
        if self.frame is None:
            return
        column, value = self.filter_column.value, self.filter_value.value
        if not column or value in (None, ALL):
            self.shown = np.arange(len(self.frame))
        else:
            values = self.frame[column]
            if not isinstance(values.dtype, pd.CategoricalDtype):
                values = values.astype(str).where(values.notna())
            self.shown = np.flatnonzero((values == value).to_numpy(dtype=bool, na_value=False))
        self.scatter.set_data(self.coords[self.shown], self._colours())
        self.scatter.set_highlight(np.flatnonzero(np.isin(self.shown, self.selection)))
        self.status.value = f"{len(self.shown)} of {len(self.frame)} patches shown"

    # -- linking ---------------------------------------------------------------------------------
    def select_indices(self, indices, _additive: bool = False) -> None:
        """Scatter -> cohort: the lasso's points (scatter indices) become the selection and
        the per-slide count table shows them."""
        self.selection = self.shown[np.asarray(indices, np.int64)]
        self.table.show_counts(self.selection)

    def open_point(self, index: int) -> None:
        """A click on scatter point ``index``: its slide opens (if not open), centred on the
        patch, which is selected."""
        row_index = int(self.shown[index])
        self.open_slide(str(self.frame["ID"].iat[row_index]), [row_index], centre=row_index)

    def _open_from_table(self, slide_id: str) -> None:
        code = self.slide_names.index(slide_id)
        rows = self.selection[self.slide_codes[self.selection] == code]
        if self.open_slide(slide_id, rows) is not None:
            self._viewer.reset_view()  # the whole slide (slides, side by side), its selection on it

    def open_slide(self, slide_id: str, select_rows, centre: int | None = None):
        """Opens a slide of the cohort and selects the given cohort rows on it; a slide that
        does not open is a notification, and nothing else changes."""
        from napari.utils.notifications import show_error

        if self.frame is None:
            return None
        if slide_id not in self.paths:
            show_error(f"slide {slide_id}: not in the slides table; its patches cannot open it")
            return None
        members = np.flatnonzero(self.slide_codes == self.slide_names.index(slide_id))
        # One slide's patches share its slide-level values: colour them by a patch column.
        column = self.color_by.value
        patch_column = column if column not in ("ID", *self.slide_columns) else None
        try:
            shown = self.slides.open(
                slide_id,
                self.paths[slide_id],
                plain(self.frame.iloc[members]),
                members,
                patch_column,
            )
        except PathvizError as err:
            show_error(f"slide {slide_id}: {err}")
            self.status.value = f"slide {slide_id} did not open"
            return None
        layer_rows = shown.layer_rows(select_rows)
        self.slides.select(shown, layer_rows)
        if centre is not None:
            self.slides.centre_on(shown, int(shown.layer_rows([centre])[0]))
        self.status.value = f"{slide_id}: {len(layer_rows)} patches selected"
        return shown

    def _slide_selection_changed(self, shown) -> None:
        """Slide -> scatter: the patches selected on an open slide are highlighted."""
        picked = shown.rows[np.fromiter(shown.points.selected_data, np.int64)]
        self.scatter.set_highlight(np.flatnonzero(np.isin(self.shown, picked)))

    def _hover_text(self, index: int) -> str:
        row_ = self.frame.iloc[int(self.shown[index])]
        text = f"{row_['ID']}  x={row_['x']} y={row_['y']}"
        column = self.color_by.value
        if column and column != "ID":
            text += f"\n{column}: {row_[column]}"
        return text

    # -- score and mosaic ------------------------------------------------------------------------
    def run_score(self) -> None:
        from ._cohort_jobs import ScoreJob

        if self.frame is None or not self.score_column.value:
            self._report(PathvizError("Score: load a cohort first"))
            return
        rows = self.frame.iloc[self.shown]
        within = self.score_within.value
        job = ScoreJob(
            self.features[self.shown],
            rows[self.score_column.value],
            self.score_column.value,
            rows[within] if within else None,
            within,
        )
        self.score_line.value = "scoring…"
        self._score_job.start(job.run, self._score_done)

    def _score_done(self, score) -> None:
        self.score = score
        self.score_line.value = score.as_line()
        self.progress.value = 100
        self.status.value = f"scored {score.column} over {len(self.shown)} patches shown"

    def show_mosaic(self) -> None:
        from ._cohort_mosaic import cohort_mosaic

        if self.frame is None or not len(self.shown):
            self._report(PathvizError("Mosaic: load a cohort first"))
            return
        rows = self.frame.iloc[self.shown].reset_index(drop=True)
        coords, grid = self.coords[self.shown], self.mosaic_grid.value

        def opener(slide_id):
            return self.slides.slide(slide_id, self.paths.get(slide_id))

        def job(progress, cancelled):
            return cohort_mosaic(
                rows, coords, opener, grid=grid, progress=progress, cancelled=cancelled
            )

        self._mosaic_job.start(job, self._mosaic_done)

    def _mosaic_done(self, mosaic) -> None:
        from napari.utils.notifications import show_warning

        self.mosaic = mosaic
        for slide_id, err in mosaic.failed_slides.items():
            show_warning(f"mosaic: slide {slide_id} did not open ({err}); its cells are grey")
        if MOSAIC_LAYER in self._viewer.layers:
            self._viewer.layers.remove(MOSAIC_LAYER)
        # Left of the slides (they open at x >= 0), so neither hides the other.
        left = (0.0, -1.05 * mosaic.image.shape[1])
        self._viewer.add_image(mosaic.image, name=MOSAIC_LAYER, rgb=True, translate=left)
        self.progress.value = 100
        self.status.value = (
            f"mosaic: {mosaic.reads} patches read ({len(self.shown)} shown, "
            f"{mosaic.grid}x{mosaic.grid} cells, {len(mosaic.slides_opened)} slides)"
        )

    def _report(self, err: Exception) -> None:
        if isinstance(err, Cancelled):
            self.status.value = "cancelled"
            return
        report_error(self.status, err)
