"""Dock widget "Attributions": explain selected (or top-N) patches with SHAP expected gradients,
DeepLIFT, Grad-CAM or Grad-CAM++ off the GUI thread, and lay the maps over the slide as one
lazy layer per method, on one shared symmetric red/blue scale transparent at zero.

Each run is written chunk by chunk to a store in the results cache, so Cancel keeps what is
finished and pressing Explain again resumes; a store written by ``pathviz shapley-plot`` or
``gradcam`` can be opened onto the slide."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from .._layers import META_SLIDE
from ..attribution import METHODS
from ..attribution.gradcam import checked_eps
from ..attribution.references import random_reference_rows
from ..errors import PathvizError
from ._attribution_job import AttributionJob
from ._attribution_layers import (
    DEFAULT_SMOOTHING,
    add_result_columns,
    set_opacity,
    show_attributions,
)
from ._compact import (
    add_section,
    collapsed_section,
    narrow,
    path_field,
    path_text,
    row,
    special_value_text,
    status_label,
)
from ._dock_layout import join_pathviz_tabs
from ._jobs import JobRunner
from ._lookup import layer_with
from ._model_form import ModelForm
from ._model_in_use import model_in_use
from ._notify import report_error, report_warnings
from ._patches_in_use import follow, patches_combo, patches_in_use
from ._rollout_fields import RolloutFields

if TYPE_CHECKING:
    import napari


class AttributionWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        join_pathviz_tabs(self.native)  # opened beside another PathViz dock: a tab
        self._viewer = viewer
        self.form = ModelForm(model_in_use(viewer))  # the same model as in Model inference
        self._make_method_fields()
        self._make_run_fields()
        self._lay_out()
        self._connect()

    def _make_method_fields(self) -> None:
        """How to explain: method, target, output, samples, backgrounds, batch, device."""
        self.method = ComboBox(label="Method", choices=list(METHODS), value="gradient")
        self.rollout = RolloutFields()  # head fusion, discard ratio: shown for rollout
        self.target = LineEdit(
            label="Target",
            value="predicted",
            tooltip="predicted, each (every class: one layer per class), a class name or index",
        )
        self.output = ComboBox(
            label="Explain",
            choices=[
                ("none: the logit", "none"),
                ("sigmoid probability", "sigmoid"),
                ("softmax probability", "softmax"),
            ],
            value="none",
            tooltip="what the maps explain: none = the raw model output (logit); sigmoid or "
            "softmax = that probability",
        )
        self.n_samples = SpinBox(label="Samples", value=400, min=1, max=100_000)
        self.smoothing = FloatSpinBox(
            label="Smoothing",
            value=0.0,
            min=0.0,
            max=10.0,
            step=0.05,
            tooltip="gradient: local smoothing of the samples; 0 = none",
        )
        special_value_text(self.smoothing, "0 = none")
        self.background_from = ComboBox(
            label="Background",
            choices=["random patches", "kept selection", "file"],
            value="random patches",
            tooltip="references of gradient and deep: random patches of the slide, a selection "
            "kept with the button below, or a patch table / .npy of images",
        )
        self.n_background = SpinBox(label="Random patches", value=32, min=2, max=10_000)
        self.keep_background = PushButton(text="Keep selection as background")
        self.background_file = path_field(
            "Background file", tooltip="a patch table or a .npy of images"
        )
        self.layer_name = LineEdit(label="CAM layer", tooltip="blank: the last conv block")
        self.gradcampp_eps = LineEdit(
            label="Grad-CAM++ eps",
            value="0",
            tooltip="added to Grad-CAM++'s alpha denominator: 0 = the paper's eq. 19; 1e-6 "
            "gives pytorch-grad-cam's maps (as the CLI's --gradcampp-eps)",
        )
        self.batch_size = SpinBox(
            label="Batch size",
            value=0,
            min=0,
            max=100_000,
            tooltip="model inputs per pass, halved on out-of-memory; 0 = auto (gradient: "
            "256 samples on a GPU, 64 on the CPU)",
        )
        special_value_text(self.batch_size, "0 = auto")
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto")
        self.precision = ComboBox(
            label="Precision",
            choices=["float32", "bfloat16"],
            value="float32",
            tooltip="bfloat16 autocast on CUDA (gradient)",
        )

    def _make_run_fields(self) -> None:
        """What to explain and the run: the patches in use, the rows, Explain, the outputs."""
        self.in_use = patches_in_use(self._viewer)
        self.patches_layer_choice = patches_combo(self.in_use)
        self.which = ComboBox(
            label="Explain rows",
            choices=["selection", "top N"],
            value="selection",
            tooltip="the patches selected on the slide or in the scatter, or the top N by a column",
        )
        self.top_n = SpinBox(label="N", value=8, min=1, max=100_000)
        self.top_column = ComboBox(label="By column", choices=self._numeric_columns, nullable=True)
        self.per_patch = CheckBox(text="Scale each patch on its own", value=False)
        self.map_smoothing = FloatSpinBox(
            label="Map smoothing (px)",
            value=DEFAULT_SMOOTHING,
            min=0.0,
            max=10.0,
            step=0.5,
            tooltip="Gaussian sigma applied to each map on its own (0 = none); about 1.5 px "
            "turns expected gradients' dot lattice into structure; each map keeps its sum",
        )
        self.opacity = FloatSpinBox(label="Opacity", value=0.7, min=0.0, max=1.0, step=0.05)
        self.run_button = PushButton(text="Explain")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=100)
        self.status = status_label()
        self.gallery_path = path_field("Gallery PNG", mode="w", filter="*.png")
        self.gallery_button = PushButton(text="Export gallery")
        self.show_gallery_button = PushButton(text="Show gallery")
        self._gallery_view = None
        self.store_path = path_field(
            "Attributions store", mode="d", tooltip="a .zarr folder from pathviz shapley-plot"
        )
        self.open_store_button = PushButton(text="Open store on the slide")
        self._jobs = JobRunner(
            self.run_button, self.cancel_button, self._show_progress, self._report
        )
        self._top_row = row(self.top_n, self.top_column, label="Top N")
        self._last = None  # (result, images, titles) of the last run, for the gallery
        self._kept_background: np.ndarray | None = None

    def _lay_out(self) -> None:
        """Essential controls first; the rest in closed sections."""
        self.extend(
            [
                self.patches_layer_choice,
                *self.form.essential,
                self.method,
                *self.rollout.widgets,
                self.which,
                self._top_row,
                row(self.run_button, self.cancel_button),
                self.progress,
                self.status,
                row(self.show_gallery_button, self.gallery_button),
            ]
        )
        self.advanced, _ = collapsed_section(
            "Advanced: target, samples, background, trust",
            [
                self.target,
                self.output,
                self.n_samples,
                self.smoothing,
                self.background_from,
                self.n_background,
                self.keep_background,
                self.background_file,
                self.layer_name,
                self.gradcampp_eps,
                self.batch_size,
                self.device,
                self.precision,
                self.per_patch,
                self.map_smoothing,
                self.opacity,
                *self.form.advanced,
            ],
        )
        self.files, _ = collapsed_section(
            "Files: gallery PNG, stored maps",
            [self.gallery_path, self.store_path, self.open_store_button],
        )
        add_section(self, self.advanced)
        add_section(self, self.files)
        narrow(self.native)

    def _connect(self) -> None:
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.gallery_button.changed.connect(self.export_gallery)
        self.show_gallery_button.changed.connect(self.show_gallery)
        self.keep_background.changed.connect(self.keep_selection_as_background)
        self.open_store_button.changed.connect(self.open_store)
        self.opacity.changed.connect(lambda value: set_opacity(self._viewer, value))
        self.which.changed.connect(self._show_top_fields)
        self._show_top_fields()
        self.method.changed.connect(self.rollout.show_for)
        self.rollout.show_for(self.method.value)
        for signal in (self.in_use.changed, self.in_use.columns_changed):
            follow(signal, self._refresh_top_columns)

    # -- inputs --------------------------------------------------------------------------------
    def _layer_with(self, key: str):
        return layer_with(self._viewer, key)

    def _show_top_fields(self, _value=None) -> None:
        self._top_row.visible = self.which.value == "top N"

    def _refresh_top_columns(self, _event=None) -> None:
        with self.top_column.changed.blocked():
            self.top_column.reset_choices()

    def patches_layer(self):
        """The patches layer in use (shared by every PathViz widget of this viewer)."""
        return self.in_use.layer

    def _numeric_columns(self, _widget=None) -> list[str]:
        layer = self.patches_layer() if hasattr(self, "in_use") else None
        if layer is None:
            return []
        return [str(c) for c in layer.features.columns if layer.features[c].dtype.kind in "fiu"]

    def chosen_rows(self, layer) -> np.ndarray:
        if self.which.value == "selection":
            rows = self.in_use.selected_rows()
            if not len(rows):
                raise PathvizError(
                    f"Attributions: select patches first (of {layer.name!r}, on the slide or "
                    "in the embedding scatter), or choose 'top N'"
                )
            return rows
        column = self.top_column.value
        if not column:
            raise PathvizError("Attributions: choose the column for 'top N'")
        values = layer.features[column].to_numpy(float)
        ranked = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
        if not {"x", "y", "patch_size"} <= set(layer.features.columns):
            return ranked[: self.top_n.value]
        # As the CLI's --top: patches from different places, not neighbouring tiles of one
        # spot (images are not compared here: that would read patches on the GUI thread).
        from ..attribution.gallery import distinct_rows

        return np.asarray(distinct_rows(layer.features, ranked, self.top_n.value), dtype=int)

    def keep_selection_as_background(self) -> None:
        rows = self.in_use.selected_rows()
        if len(rows) < 2:
            report_error(self.status, PathvizError("Background: select at least two patches"))
            return
        self._kept_background = rows
        self.background_from.value = "kept selection"
        self.status.value = f"background: {len(rows)} kept patches"

    def _target(self):
        target = self.target.value.strip() or "predicted"
        if target in ("predicted", "each"):
            return target
        return target  # a class name or index: resolved by the job, which knows the classes

    def _background(self, features, rows) -> tuple[str, object]:
        """How the job gets its references: ("rows", table rows) or ("file", path)."""
        source = self.background_from.value
        if source == "kept selection":
            if self._kept_background is None:
                raise PathvizError("Background: keep a selection first, or choose another source")
            return "rows", self._kept_background
        if source == "file":
            path = path_text(self.background_file)
            if not path:
                raise PathvizError("Background file: give a patch table or a .npy of images")
            return "file", path
        picks = random_reference_rows(
            len(features),
            rows,
            self.n_background.value,
            np.random.default_rng(0),
            source="the patches layer",
            remedy="choose a background file or a kept selection, or explain fewer patches",
        )
        return "rows", np.sort(picks)

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._start()
        except PathvizError as err:
            report_error(self.status, err)

    def _start(self) -> None:
        slide_layer, layer = self._layer_with(META_SLIDE), self.patches_layer()
        if slide_layer is None or layer is None:
            raise PathvizError("Attributions: open a slide and its patches first")
        rows = self.chosen_rows(layer)
        method = self.method.value
        options = {"batch_size": self.batch_size.value} if self.batch_size.value else {}
        if method == "gradient":
            options.update(
                n_samples=self.n_samples.value,
                local_smoothing=self.smoothing.value,
                bf16=self.precision.value == "bfloat16",
            )
        elif method == "deep":
            options["batch_size"] = min(self.batch_size.value or 8, 16)  # x references
        else:
            options["layer"] = self.layer_name.value.strip() or None
        if method == "gradcampp":
            eps = self.gradcampp_eps.value.strip() or "0"
            options["eps"] = checked_eps(eps, plus_plus=True, name="Grad-CAM++ eps")
        if method == "rollout":
            options.update(self.rollout.options())
        job = AttributionJob(
            self.form.arguments(),
            slide_layer.metadata[META_SLIDE],
            layer.features,
            rows,
            method,
            self._target(),
            self.output.value,
            self._background(layer.features, rows) if method in ("gradient", "deep") else None,
            self.device.value,
            options,
            load=self.form.shared.load,
        )
        self.status.value = f"explaining {len(rows)} patches…"
        self._jobs.start(job.run, lambda result: self._done(result, layer, slide_layer))

    def cancel(self) -> None:
        self._jobs.cancel()
        self.status.value = "cancelling… (finished chunks are kept: Explain resumes)"

    def _show_progress(self, done: int, total: int) -> None:
        self.progress.value = int(100 * done / max(total, 1))

    def _report(self, err: Exception) -> None:
        report_error(self.status, err)

    # -- results -------------------------------------------------------------------------------
    def _done(self, outcome, layer, slide_layer) -> None:
        result, rows, images, warning = outcome
        keys = layer.features.iloc[rows]
        self._show(result, keys, slide_layer, patch_rows=rows)
        layer.features = add_result_columns(layer.features, result, rows)
        titles = [f"x={x} y={y}" for x, y in zip(keys["x"], keys["y"], strict=True)]
        self._last = (result, images, titles)
        message = f"{result.method}: {len(rows)} patches"
        if result.completeness_error is not None:
            message += f", completeness error median {np.median(result.completeness_error):.3f}"
        unnormalised, note = warning
        if note:
            message += f" ({note})"
        # Each warning (incomplete maps, no normalisation known) is a napari notification too.
        report_warnings(self.status, message, [result.completeness_warning(), unnormalised])
        self.progress.value = 100

    def _show(self, result, keys, slide_layer, patch_rows=None) -> None:
        show_attributions(
            self._viewer,
            result,
            keys,
            slide_layer,
            opacity=self.opacity.value,
            per_patch_scale=self.per_patch.value,
            patch_rows=patch_rows,
            smoothing=self.map_smoothing.value,
        )

    def open_store(self) -> None:
        """Lays a finished store (e.g. from pathviz shapley-plot) on the open slide."""
        from ..attribution.stored import open_attributions

        try:
            slide_layer = self._layer_with(META_SLIDE)
            if slide_layer is None:
                raise PathvizError("Attributions store: open its slide first")
            path = path_text(self.store_path)
            if not path:
                raise PathvizError("Attributions store: give the store folder first")
            result, keys = open_attributions(path)
            if keys is None or not {"x", "y", "patch_size"} <= set(keys.columns):
                raise PathvizError(f"{path}: the store has no patch coordinates to place it by")
            self._show(result, keys, slide_layer)
            self.status.value = f"{path}: {keys.shape[0]} patches ({result.method})"
        except PathvizError as err:
            report_error(self.status, err)

    def show_gallery(self) -> None:
        """The last run's gallery in a scrollable dock beside the viewer."""
        from ..attribution.gallery import gallery_image
        from ._gallery_view import show_gallery

        if self._last is None:
            report_error(self.status, PathvizError("Gallery: explain some patches first"))
            return
        result, images, titles = self._last
        rgba = gallery_image(images, result, titles=titles, per_patch_scale=self.per_patch.value)
        self._gallery_view = show_gallery(self._viewer, rgba, self._gallery_view)

    def export_gallery(self) -> None:
        from ..attribution.gallery import render_gallery

        try:
            if self._last is None:
                raise PathvizError("Gallery: explain some patches first")
            path = path_text(self.gallery_path)
            if not path:
                raise PathvizError("Gallery PNG: give a file path first")
            result, images, titles = self._last
            render_gallery(
                images, result, path, titles=titles, per_patch_scale=self.per_patch.value
            )
            self.status.value = f"wrote {path}"
        except PathvizError as err:
            report_error(self.status, err)
