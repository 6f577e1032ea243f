"""Dock widget "Attributions": explain selected (or top-N) patches with SHAP expected gradients,
DeepLIFT, Grad-CAM or Grad-CAM++ off the GUI thread, and lay the maps over the slide as one
lazy layer per method, on one shared symmetric red/blue scale transparent at zero."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from .._layers import META_COLOR_BY, META_SLIDE
from ..attribution import METHODS
from ..errors import PathvizError
from ._jobs import JobRunner
from ._lookup import layer_with
from ._model_form import ModelForm
from ._notify import report_error

if TYPE_CHECKING:
    import napari

LAYER_PREFIX = "attributions: "
META_ATTRIBUTION = "pathviz_attribution"


def diverging_colormap():
    """Blue (negative), transparent at zero, red (positive)."""
    from napari.utils import Colormap

    return Colormap(
        colors=[[0.0, 0.35, 0.9, 1.0], [1.0, 1.0, 1.0, 0.0], [0.9, 0.05, 0.1, 1.0]],
        name="pathviz_red_blue",
        interpolation="linear",
    )


class AttributionWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = viewer
        self.form = ModelForm()
        self.method = ComboBox(label="Method", choices=list(METHODS), value="gradient")
        self.target = LineEdit(
            label="Target", value="predicted", tooltip="predicted, or a class index"
        )
        self.output = ComboBox(
            label="Explain",
            choices=["none", "sigmoid", "softmax"],
            value="none",
            tooltip="the logit, or a probability",
        )
        self.n_samples = SpinBox(label="Samples", value=400, min=1, max=100_000)
        self.smoothing = FloatSpinBox(label="Smoothing", value=0.0, min=0.0, max=10.0, step=0.05)
        self.n_background = SpinBox(
            label="Background",
            value=32,
            min=2,
            max=10_000,
            tooltip="random patches of the slide used as references",
        )
        self.layer_name = LineEdit(label="CAM layer", tooltip="blank: the last conv block")
        self.batch_size = SpinBox(label="Batch size", value=256, min=1, max=100_000)
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto")
        self.which = ComboBox(label="Patches", choices=["selection", "top N"], value="selection")
        self.top_n = SpinBox(label="N", value=8, min=1, max=100_000)
        self.top_column = ComboBox(label="By column", choices=self._numeric_columns, nullable=True)
        self.per_patch = CheckBox(text="Scale each patch on its own", value=False)
        self.opacity = FloatSpinBox(label="Opacity", value=0.7, min=0.0, max=1.0, step=0.05)
        self.run_button = PushButton(text="Explain")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=100)
        self.status = Label(value="")
        self.gallery_path = LineEdit(label="Gallery PNG")
        self.gallery_button = PushButton(text="Export gallery")
        self._jobs = JobRunner(
            self.run_button, self.cancel_button, self._show_progress, self._report
        )
        self._last = None  # (result, images, titles) of the last run, for the gallery
        self.extend(
            [
                *self.form.widgets,
                self.method,
                self.target,
                self.output,
                self.n_samples,
                self.smoothing,
                self.n_background,
                self.layer_name,
                self.batch_size,
                self.device,
                self.which,
                self.top_n,
                self.top_column,
                self.per_patch,
                self.opacity,
                Container(
                    widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
                ),
                self.progress,
                self.status,
                self.gallery_path,
                self.gallery_button,
            ]
        )
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.gallery_button.changed.connect(self.export_gallery)
        self.opacity.changed.connect(self._set_opacity)
        viewer.layers.events.inserted.connect(lambda _e: self.top_column.reset_choices())

    # -- inputs --------------------------------------------------------------------------------
    def _layer_with(self, key: str):
        return layer_with(self._viewer, key)

    def _numeric_columns(self, _widget=None) -> list[str]:
        layer = self._layer_with(META_COLOR_BY) if hasattr(self, "_viewer") else None
        if layer is None:
            return []
        return [str(c) for c in layer.features.columns if layer.features[c].dtype.kind in "fiu"]

    def chosen_rows(self, layer) -> np.ndarray:
        if self.which.value == "selection":
            rows = np.sort(np.fromiter(layer.selected_data, np.int64))
            if not len(rows):
                raise PathvizError(
                    "Attributions: select patches first (on the slide or in the "
                    "embedding scatter), or choose 'top N'"
                )
            return rows
        column = self.top_column.value
        if not column:
            raise PathvizError("Attributions: choose the column for 'top N'")
        values = layer.features[column].to_numpy(float)
        return np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")[: self.top_n.value]

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._start()
        except PathvizError as err:
            report_error(self.status, err)

    def _start(self) -> None:
        slide_layer, layer = self._layer_with(META_SLIDE), self._layer_with(META_COLOR_BY)
        if slide_layer is None or layer is None:
            raise PathvizError("Attributions: open a slide and its patches first")
        rows = self.chosen_rows(layer)
        target = self.target.value.strip() or "predicted"
        if target != "predicted":
            try:
                target = int(target)
            except ValueError:
                raise PathvizError(
                    f"Target: 'predicted' or a class index, not {target!r}"
                ) from None
        options = {"batch_size": self.batch_size.value}
        if self.method.value == "gradient":
            options.update(n_samples=self.n_samples.value, local_smoothing=self.smoothing.value)
        elif self.method.value in ("gradcam", "gradcampp"):
            options["layer"] = self.layer_name.value.strip() or None
        job = _AttributionJob(
            self.form.arguments(),
            slide_layer.metadata[META_SLIDE],
            layer.features,
            rows,
            self.method.value,
            target,
            self.output.value,
            self.n_background.value,
            self.device.value,
            options,
        )
        self.status.value = f"explaining {len(rows)} patches…"
        self._jobs.start(job.run, lambda result: self._done(result, layer, slide_layer))

    def cancel(self) -> None:
        self._jobs.cancel()
        self.status.value = "cancelling…"

    def _show_progress(self, done: int, total: int) -> None:
        self.progress.value = int(100 * done / max(total, 1))

    def _report(self, err: Exception) -> None:
        report_error(self.status, err)

    # -- results -------------------------------------------------------------------------------
    def _done(self, outcome, layer, slide_layer) -> None:
        from ..attribution.gallery import shared_limit
        from ..attribution.layer import attribution_pyramid

        result, rows, images = outcome
        features = layer.features
        maps = result.maps
        if self.per_patch.value:  # a display choice: each patch on its own [-1, 1]
            maps = maps / np.array([shared_limit(m[None]) for m in maps])[:, None, None]
        slide = slide_layer.metadata[META_SLIDE]
        levels = attribution_pyramid(
            maps,
            features["x"].to_numpy()[rows],
            features["y"].to_numpy()[rows],
            features["patch_size"].to_numpy()[rows],
            [lv.shape[:2] for lv in slide.levels],
        )
        limit = 1.0 if self.per_patch.value else shared_limit(result.maps)
        name = f"{LAYER_PREFIX}{result.method}"
        if name in self._viewer.layers:
            self._viewer.layers.remove(name)
        heat = self._viewer.add_image(
            levels,
            multiscale=True,
            name=name,
            colormap=diverging_colormap(),
            contrast_limits=(-limit, limit),
            opacity=self.opacity.value,
            scale=tuple(slide_layer.scale[:2]),
            blending="translucent",
        )
        heat.metadata[META_ATTRIBUTION] = {
            "rows": rows,
            "targets": result.targets,
            "completeness_error": result.completeness_error,
        }
        if hasattr(heat, "colorbar"):
            heat.colorbar.visible = True
        # The explained class and its probability beside each patch, as features columns.
        target_prob = (
            result.probabilities[np.arange(len(rows)), result.targets]
            if result.probabilities.shape[1] > 1
            else result.probabilities[:, 0]
        )
        features = features.copy()
        for column, values in (
            (f"{result.method}_target", result.targets),
            (f"{result.method}_probability", target_prob),
        ):
            full = np.full(len(features), np.nan)
            full[rows] = values
            features[column] = full
        layer.features = features
        titles = [f"x={features['x'].iat[r]} y={features['y'].iat[r]}" for r in rows]
        self._last = (result, images, titles)
        message = f"{result.method}: {len(rows)} patches"
        if result.completeness_error is not None:
            message += f", completeness error median {np.median(result.completeness_error):.3f}"
        self.status.value = message
        self.progress.value = 100

    def _set_opacity(self, value: float) -> None:
        for ly in self._viewer.layers:
            if META_ATTRIBUTION in ly.metadata:
                ly.opacity = value

    def export_gallery(self) -> None:
        from ..attribution.gallery import render_gallery

        try:
            if self._last is None:
                raise PathvizError("Gallery: explain some patches first")
            path = self.gallery_path.value.strip()
            if not path:
                raise PathvizError("Gallery PNG: give a file path first")
            result, images, titles = self._last
            render_gallery(
                images, result, path, titles=titles, per_patch_scale=self.per_patch.value
            )
            self.status.value = f"wrote {path}"
        except PathvizError as err:
            report_error(self.status, err)


class _AttributionJob:
    """One Explain, in a worker thread: load the model, read patches and references, attribute."""

    def __init__(
        self,
        model_args,
        slide,
        features,
        rows,
        method,
        target,
        output,
        n_background,
        device,
        options,
    ):
        self.model_args, self.slide, self.features, self.rows = model_args, slide, features, rows
        self.method, self.target, self.output = method, target, output
        self.n_background, self.device, self.options = n_background, device, options

    def run(self, progress, cancelled):
        from ..attribution import attribute
        from ..inference import read_patch_batch, resolve_device
        from ..models import load_model

        args = dict(self.model_args)
        spec = load_model(args.pop("path"), **args)
        device = resolve_device(self.device)
        model = spec.model.to(device).eval()
        images = read_patch_batch(self.slide, self.features.iloc[self.rows])
        inputs = spec.preprocess(images, device)
        background = None
        if self.method in ("gradient", "deep"):
            rest = np.setdiff1d(np.arange(len(self.features)), self.rows)
            pool = rest if len(rest) >= 2 else np.arange(len(self.features))
            picks = np.random.default_rng(0).choice(
                pool, size=min(self.n_background, len(pool)), replace=False
            )
            background = spec.preprocess(
                read_patch_batch(self.slide, self.features.iloc[picks]), device
            )
        options = dict(self.options)
        if self.method in ("gradient", "deep"):
            options.update(progress=progress, cancelled=cancelled)
        if self.method == "deep":
            options["batch_size"] = max(1, min(options["batch_size"], 16))
        result = attribute(
            model,
            inputs,
            self.method,
            background=background,
            target=self.target,
            output=self.output,
            **options,
        )
        return result, self.rows, images
