"""Dock widget "Model inference": run a patch classifier over the open slide's patches, off the GUI
thread, then show a prediction heatmap over the slide and add the predictions to the patches
layer's features (so the other widgets colour and select by them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    ProgressBar,
    PushButton,
    SpinBox,
)

from .._layers import META_SLIDE
from ..errors import PathvizError
from ..patches import KEY_COLUMNS
from ._compact import add_section, collapsed_section, narrow, row, status_label
from ._dock_layout import join_pathviz_tabs
from ._jobs import JobRunner
from ._lookup import layer_with
from ._model_form import ModelForm
from ._model_in_use import model_in_use
from ._notify import report_error, report_warnings
from ._patches_in_use import follow, patches_combo, patches_in_use
from ._slide_level import TopAttendedExplainer

if TYPE_CHECKING:
    import napari

HEATMAP_SUFFIX = " heatmap"


class InferenceWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        join_pathviz_tabs(self.native)  # opened beside another PathViz dock: a tab
        self._viewer = viewer
        self.form = ModelForm(model_in_use(viewer))  # the same model as in Attributions
        # The fields by name, as the demo and the tests reach them.
        self.model_path, self.factory = self.form.model_path, self.form.factory
        self.mean, self.std = self.form.mean, self.form.std
        self.in_use = patches_in_use(viewer)
        self.patches_layer_choice = patches_combo(self.in_use)
        self.batch_size = SpinBox(label="Batch size", value=64, min=1, max=4096)
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto")
        self.level = SpinBox(label="Level", value=0, min=0, max=20)
        self.embeddings = CheckBox(text="Also embeddings (feat_*)", value=False)
        self.run_button = PushButton(text="Run model")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=100)
        self.status = status_label()
        self._jobs = JobRunner(
            self.run_button, self.cancel_button, self._show_progress, self._report
        )
        self.heatmap_column = ComboBox(label="Heatmap of", choices=self._prob_columns)
        self._refresh_heatmap_choices(choose_default=True)
        # Two-stage (MIL) models: pixels to slide for the top-attended patches (_slide_level.py).
        self.slide_explain = TopAttendedExplainer(self)
        self.extend(
            [
                self.patches_layer_choice,
                *self.form.essential,
                row(self.run_button, self.cancel_button),
                self.progress,
                self.status,
                self.heatmap_column,
            ]
        )
        self.slide_explain_section, _ = collapsed_section(
            "Two-stage (MIL) models: explain top K attended (pixels)", self.slide_explain.widgets
        )
        add_section(self, self.slide_explain_section)
        self.advanced, _ = collapsed_section(
            "Advanced: trust, model card overrides, batch, device",
            [*self.form.advanced, self.batch_size, self.device, self.level, self.embeddings],
        )
        add_section(self, self.advanced)
        narrow(self.native)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.heatmap_column.changed.connect(self._show_heatmap)
        follow(self.in_use.changed, self._refresh_heatmap_choices)
        follow(self.in_use.columns_changed, self._refresh_heatmap_choices)

    # -- layers --------------------------------------------------------------------------------
    def _layer_with(self, key: str):
        return layer_with(self._viewer, key)

    def patches_layer(self):
        """The patches layer in use (shared by every PathViz widget of this viewer)."""
        return self.in_use.layer

    def _refresh_heatmap_choices(self, _event=None, *, choose_default: bool = False) -> None:
        from ..classes import default_heatmap_column

        with self.heatmap_column.changed.blocked():
            previous = self.heatmap_column.value
            self.heatmap_column.reset_choices()
            choices = self.heatmap_column.choices
            if choices and (choose_default or previous not in choices):  # not the first
                self.heatmap_column.value = default_heatmap_column(choices)

    def _prob_columns(self, _widget=None) -> list[str]:
        layer = self.patches_layer() if hasattr(self, "in_use") else None
        if layer is None:
            return []
        return [str(c) for c in layer.features.columns if str(c).startswith("prob_")]

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._start()
        except PathvizError as err:
            report_error(self.status, err)

    def _start(self) -> None:
        from ..patches import PatchTable

        slide_layer, layer = self._layer_with(META_SLIDE), self.patches_layer()
        if slide_layer is None or layer is None:
            raise PathvizError("Model inference: open a slide and its patches first")
        slide = slide_layer.metadata[META_SLIDE]
        table = PatchTable(layer.features[list(KEY_COLUMNS)].reset_index(drop=True), layer.name)
        job = _InferenceJob(
            self.form.arguments(),
            slide,
            table,
            self.batch_size.value,
            self.device.value,
            self.level.value,
            self.embeddings.value,
            load=self.form.shared.load,
        )
        self.status.value = "running the model…"
        self._jobs.start(job.run, lambda result: self._done(result, layer))

    def cancel(self) -> None:
        self._jobs.cancel()
        self.status.value = "cancelling…"

    def _show_progress(self, done: int, total: int, rate: float) -> None:
        self.progress.value = int(100 * done / max(total, 1))
        self.status.value = f"{done}/{total} patches, {rate:.0f} patches/s"

    def _report(self, err: Exception) -> None:
        report_error(self.status, err)

    def _done(self, result, layer) -> None:
        """Predictions into the layer's features (earlier predictions of the same classes
        replaced, of other classes refused), then the heatmap of the explained class."""
        from ..classes import default_heatmap_column, merge_predictions

        if result.attrs.get("slide_prediction"):  # a two-stage model: _slide_level.py
            from ._slide_level import show_two_stage_result

            self.status.value = show_two_stage_result(self._viewer, layer, result)
            self.progress.value = 100
            return
        try:
            features, found = merge_predictions(layer.features, result, layer.name)
        except PathvizError as err:
            report_error(self.status, err)
            return
        layer.features = features
        # No normalisation known: said in the status and as a notification, not silent.
        report_warnings(
            self.status, f"predictions for {found} patches", [result.attrs.get("warning")]
        )
        self.progress.value = 100
        self.heatmap_column.reset_choices()
        column = default_heatmap_column(
            self.heatmap_column.choices, result.attrs.get("class_names")
        )
        if column:
            with self.heatmap_column.changed.blocked():
                self.heatmap_column.value = column
            self._show_heatmap(column)

    def _show_heatmap(self, column: str | None) -> None:
        try:
            self.show_heatmap(column)
        except PathvizError as err:
            report_error(self.status, err)

    def show_heatmap(self, column: str | None):
        """An image layer with one pixel per patch, aligned with the slide, with a colour key
        titled with the column."""
        from ..heatmap import patch_value_grid
        from ..patches import PatchTable
        from ._colour_keys import show_key

        layer = self.patches_layer()
        if layer is None or not column:
            return None
        grid = patch_value_grid(PatchTable(layer.features, layer.name), column)
        name = f"{layer.name}{HEATMAP_SUFFIX}"
        scale = np.asarray(grid.scale) * np.asarray(layer.scale[-2:])
        translate = np.asarray(grid.translate) * np.asarray(layer.scale[-2:])
        finite = grid.image[np.isfinite(grid.image)]
        limits = (
            (0.0, 1.0)
            if finite.size and finite.min() >= 0 and finite.max() <= 1
            else ((float(finite.min()), float(finite.max()) + 1e-6) if finite.size else (0.0, 1.0))
        )
        if name in self._viewer.layers:
            heat = self._viewer.layers[name]
            heat.data, heat.scale, heat.translate = grid.image, scale, translate
            heat.contrast_limits = limits
        else:
            heat = self._viewer.add_image(
                grid.image,
                name=name,
                colormap="viridis",
                opacity=0.5,
                scale=scale,
                translate=translate,
                contrast_limits=limits,
                interpolation2d="nearest",
            )
        heat.metadata["pathviz_heatmap_of"] = column
        # Its colour key, titled with the column, stacked with the attribution methods' keys.
        show_key(self._viewer, name, column, "viridis", limits, [heat], scale=layer.scale[-2:])
        return heat


class _InferenceJob:
    """One Run, in a worker thread: load the model there (it may be slow), then extract."""

    def __init__(self, model_args, slide, table, batch_size, device, level, embeddings, load=None):
        self.model_args, self.slide, self.table = model_args, slide, table
        self.batch_size, self.device, self.level = batch_size, device, level
        self.embeddings = embeddings
        self.load = load  # the viewer's model in use (loaded once), else load_model

    def run(self, progress, cancelled):
        from ..inference import extract
        from ..models import load_model
        from ._slide_level import run_two_stage

        options = {"batch_size": self.batch_size, "device": self.device, "level": self.level}
        options["embeddings"] = self.embeddings
        two_stage = run_two_stage(
            self.model_args, self.slide, self.table, progress, cancelled, **options
        )
        if two_stage is not None:  # encoder + slide-level head (a two-stage model card)
            return two_stage
        spec = self.load(self.model_args) if self.load else load_model(**self.model_args)
        result = extract(
            self.slide,
            self.table,
            spec,
            batch_size=self.batch_size,
            device=self.device,
            level=self.level,
            embeddings=self.embeddings,
            progress=progress,
            cancelled=cancelled,
        )
        result.attrs["warning"] = spec.normalisation_warning()
        return result
