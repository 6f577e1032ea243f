"""Two-stage models in the "Model inference" widget: when the model's card has a slide-level head,
the job runs encoder and head (:mod:`napari_pathviz.slide_level`), and the result shows as two
heatmap layers over the slide (the head's attention, and each patch's contribution to the
predicted class's slide logit), named with the slide prediction, which also goes to the
viewer's status bar."""

from __future__ import annotations

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
