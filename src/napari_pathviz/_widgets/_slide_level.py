"""Two-stage models in the "Model inference" widget: when the model's card has a slide-level head,
the job runs encoder and head (:mod:`napari_pathviz.slide_level`), and the result shows as two
heatmap layers over the slide (the head's attention, and each patch's contribution to the
predicted class's slide logit), named with the slide prediction, which also goes to the
viewer's status bar."""

from __future__ import annotations

import dataclasses

import numpy as np

META_SLIDE_LEVEL = "pathviz_slide_level"


def run_two_stage(model_args: dict, slide, table, progress, cancelled, **extract_options):
    """The patch table of a two-stage model's run (its ``attrs["slide_prediction"]``: the
    slide prediction), or None when ``model_args`` name a patch classifier."""
    from ..slide_level import extract_slide, load_two_stage, two_stage_card

    card = two_stage_card(model_args["path"], model_args.get("card"))
    if card is None:
        return None
    model = load_two_stage(
        card, weights=model_args["path"], trust_model=bool(model_args.get("trust_model"))
    )
    result, prediction = extract_slide(
        slide, table, model, progress=progress, cancelled=cancelled, **extract_options
    )
    result.attrs["slide_prediction"] = {
        **prediction.summary(),
        "class_names": list(model.class_names),
    }
    return result


def show_two_stage_result(viewer, layer, result) -> str:
    """The head's columns of ``result`` into the patches layer's features (matched by patch;
    the same columns of an earlier run replaced, the layer's patch predictions kept: a slide
    prediction is not one of theirs), then :func:`show_slide_level`. Returns the status line."""
    from ..patches import KEY_COLUMNS, match_rows

    new = [str(c) for c in result.columns if c not in KEY_COLUMNS]
    features = layer.features.drop(columns=[c for c in new if c in layer.features.columns])
    where = match_rows(features, result)
    found = where >= 0
    for column in new:
        values = np.full(len(features), np.nan)
        values[found] = result[column].to_numpy()[where[found]]
        features[column] = values
    layer.features = features
    summary = result.attrs["slide_prediction"]
    show_slide_level(viewer, layer, summary)
    return f"{slide_label(summary)}; attention and contributions for {int(found.sum())} patches"


def slide_label(summary: dict) -> str:
    """ "slide: <class> (p = 0.97)"."""
    p = summary["probabilities"].get(summary["prediction"])
    return f"slide: {summary['prediction']}" + (f" (p = {p:.2f})" if p is not None else "")


def show_slide_level(viewer, layer, summary: dict) -> list:
    """Heatmaps of ``attention`` and ``contribution_<predicted class>`` from the patches layer's
    features, named with the slide prediction (the layers of an earlier run are replaced);
    the prediction also goes to the viewer's status. Returns the layers added."""
    from ._attribution_layers import diverging_colormap

    for old in [lyr for lyr in viewer.layers if META_SLIDE_LEVEL in lyr.metadata]:
        viewer.layers.remove(old)
    label = slide_label(summary)
    added = []
    columns = [("attention", "magma", False)]
    if f"contribution_{summary['prediction']}" in layer.features.columns:
        columns.append((f"contribution_{summary['prediction']}", diverging_colormap(), True))
    for column, colormap, signed in columns:
        added.append(_patch_heatmap(viewer, layer, column, f"{column} — {label}", colormap, signed))
    for heat in added:
        heat.metadata["pathviz_slide_prediction"] = summary
    shown = ", ".join(f"{name} {p:.3f}" for name, p in summary["probabilities"].items())
    viewer.status = f"{label}; probabilities: {shown}"
    return added


def _patch_heatmap(viewer, layer, column: str, name: str, colormap, signed: bool):
    """One pixel per patch (:func:`napari_pathviz.heatmap.patch_value_grid`), placed on the
    patches as the widget's prediction heatmap is; signed values get limits symmetric about 0."""
    from ..heatmap import patch_value_grid
    from ..patches import PatchTable

    grid = patch_value_grid(PatchTable(layer.features, layer.name), column)
    finite = grid.image[np.isfinite(grid.image)]
    top = float(np.abs(finite).max()) if finite.size else 0.0
    top = top or 1.0
    heat = viewer.add_image(
        grid.image,
        name=name,
        colormap=colormap,
        opacity=0.6,
        scale=np.asarray(grid.scale) * np.asarray(layer.scale[-2:]),
        translate=np.asarray(grid.translate) * np.asarray(layer.scale[-2:]),
        contrast_limits=(-top, top) if signed else (0.0, top),
        interpolation2d="nearest",
        blending="translucent",
    )
    heat.metadata[META_SLIDE_LEVEL] = column
    heat.metadata["pathviz_heatmap_of"] = column
    if hasattr(heat, "colorbar"):
        heat.colorbar.visible = True
    return heat


EXPLAIN_METHOD = "pixels to slide"  # the attribution layers' method name (apart from patch maps)


class TopAttendedExplainer:
    """The "Explain top K attended (pixels)" control of the Model inference widget
    (``owner``): in a worker thread, the two-stage model on the patches in use (the encoder
    on every patch: the attention needs the whole bag), then expected gradients of the slide
    logit down to the pixels of the K most attended patches
    (:func:`napari_pathviz.slide_level.explain_bag`, the other patches' features fixed),
    shown as attribution layers on those patches with the completeness in the status."""

    def __init__(self, owner):
        from magicgui.widgets import PushButton, SpinBox

        from ._compact import row
        from ._jobs import JobRunner

        self.owner = owner
        self.last_result = None
        self.k = SpinBox(label="Top K attended", value=4, min=1, max=256)
        self.samples = SpinBox(label="Samples", value=400, min=10, max=100_000, step=50)
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.explain_button = PushButton(text="Explain top K attended (pixels)")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        tip = "two-stage (encoder + attention head) models: expected gradients of the slide logit"
        self.explain_button.tooltip = tip
        self._jobs = JobRunner(
            self.explain_button, self.cancel_button, self._show_progress, self._report
        )
        self.explain_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.widgets = [
            self.k,
            self.samples,
            self.seed,
            row(self.explain_button, self.cancel_button),
        ]

    def run(self) -> None:
        from ..errors import PathvizError
        from ._notify import report_error

        try:
            self._start()
        except PathvizError as err:
            report_error(self.owner.status, err)

    def _start(self) -> None:
        from .._layers import META_SLIDE
        from ..errors import PathvizError
        from ..patches import KEY_COLUMNS, PatchTable

        owner = self.owner
        slide_layer, layer = owner._layer_with(META_SLIDE), owner.patches_layer()
        if slide_layer is None or layer is None:
            raise PathvizError("Explain top K attended: open a slide and its patches first")
        table = PatchTable(layer.features[list(KEY_COLUMNS)].reset_index(drop=True), layer.name)
        job = _ExplainJob(
            owner.form.arguments(),
            slide_layer.metadata[META_SLIDE],
            table,
            {"k": self.k.value, "n_samples": self.samples.value, "seed": self.seed.value},
            {"batch_size": owner.batch_size.value, "level": owner.level.value},
            owner.device.value,
        )
        owner.status.value = f"explaining the top {self.k.value} attended patches…"
        self._jobs.start(job.run, lambda outcome: self._done(outcome, layer, slide_layer))

    def cancel(self) -> None:
        self._jobs.cancel()
        self.owner.status.value = "cancelling…"

    def _show_progress(self, stage: str, done: int, total: int) -> None:
        self.owner.progress.value = int(100 * done / max(total, 1))
        self.owner.status.value = f"{stage}: {done}/{total}"

    def _report(self, err: Exception) -> None:
        from ._notify import report_error

        report_error(self.owner.status, err)

    def _done(self, outcome, layer, slide_layer) -> list:
        """The maps as attribution layers on their patches; completeness in the status."""
        from ._attribution_layers import show_attributions
        from ._notify import notify_warnings

        result, summary = outcome
        self.last_result = result  # rows = the patches layer's rows (patch_index)
        rows = np.asarray(result.patch_index)
        shown = dataclasses.replace(result, method=EXPLAIN_METHOD, patch_index=None)
        layers = show_attributions(
            self.owner._viewer,
            shown,
            layer.features.iloc[rows],
            slide_layer,
            opacity=0.7,
            per_patch_scale=False,
            patch_rows=rows,
        )
        self.owner.status.value = self.status_line(result, summary)
        # Incomplete maps: in the status line and as a notification, never silent.
        notify_warnings([result.completeness_warning()])
        self.owner.progress.value = 100
        return layers

    @staticmethod
    def status_line(result, summary: dict) -> str:
        """ "slide: <class> (p = ..); pixels to slide for K patches, completeness error ..."""
        errors = np.asarray(result.completeness_error, dtype=np.float64)
        line = (
            f"{slide_label(summary)}; pixels to slide ({result.metadata['class_name']} logit) "
            f"for the top {len(result)} attended patches, completeness error median "
            f"{np.median(errors):.3f}, max {np.max(errors):.3f}"
        )
        incomplete = result.completeness_warning()
        return line + (f"; WARNING: {incomplete}" if incomplete else "")


class _ExplainJob:
    """One Explain, in a worker thread: load the two-stage model, encode the bag, explain."""

    def __init__(self, model_args, slide, table, explain: dict, extract: dict, device: str):
        self.model_args, self.slide, self.table = model_args, slide, table
        self.explain, self.extract, self.device = explain, extract, device

    def run(self, progress, cancelled):
        from ..errors import Cancelled, PathvizError
        from ..inference import read_patch_batch, resolve_device
        from ..slide_level import explain_bag, extract_slide, load_two_stage, two_stage_card

        args = self.model_args
        card = two_stage_card(args["path"], args.get("card"))
        if card is None:
            raise PathvizError(
                f"{args['path']}: Explain top K attended needs a two-stage model card "
                "(encoder + attention head)"
            )
        model = load_two_stage(
            card, weights=args["path"], trust_model=bool(args.get("trust_model"))
        )
        device = resolve_device(self.device)
        _, prediction = extract_slide(
            self.slide, self.table, model, embeddings=False, device=device,
            progress=lambda done, total, _rate: progress("encoding", done, total),
            cancelled=cancelled, **self.extract,
        )  # fmt: skip
        if cancelled():
            raise Cancelled("explanation cancelled")
        df, level = self.table.df.reset_index(drop=True), self.extract["level"]
        result = explain_bag(
            model, prediction.features, prediction,
            lambda rows: read_patch_batch(self.slide, df.iloc[rows], level), device=device,
            progress=lambda done, total: progress("explaining", done, total),
            cancelled=cancelled, **self.explain,
        )  # fmt: skip
        result.metadata["class_names"] = list(model.class_names)
        return result, {**prediction.summary(), "class_names": list(model.class_names)}
