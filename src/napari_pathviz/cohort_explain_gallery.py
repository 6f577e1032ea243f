"""The cohort's gallery of a cohort attribution run (:mod:`napari_pathviz.cohort_explain`): the
explained patches of every slide, ranked by the chosen column, on one shared colour scale,
each titled with its slide ID and position, and a table of which patches those are."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import PathvizWarning

COHORT_GALLERY_MAX = 48  # patches in the cohort gallery when each slide gives its own top N


def cohort_gallery(
    explained: dict, column: str, top: int, per_slide: bool, out: Path, **gallery_options
) -> None:
    """``cohort.png``: the explained patches of every slide ranked by the column (the cohort's
    top N, or at most :data:`COHORT_GALLERY_MAX` of the slides' picks), one shared scale,
    each titled with its slide ID; ``cohort_top.csv`` lists them."""
    import pandas as pd

    from .attribution.gallery import render_gallery
    from .io.atomic import atomic_file

    if not explained:
        return
    keys = pd.concat([e["keys"] for e in explained.values()], ignore_index=True)
    values = pd.to_numeric(keys[column], errors="coerce").to_numpy(float)
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    order = order[: top if not per_slide else COHORT_GALLERY_MAX]
    listed = keys.iloc[order][[c for c in ("ID", "x", "y", "patch_size", column) if c in keys]]
    if len({e["images"].shape[1:] for e in explained.values()}) > 1:
        warnings.warn(
            "the slides' patches differ in size: no cohort.png (cohort_top.csv lists the "
            "patches; each slide has its own gallery)",
            PathvizWarning,
            stacklevel=2,
        )
    else:
        images = np.concatenate([e["images"] for e in explained.values()])[order]
        titles = [
            f"{i} x={x} y={y}" for i, x, y in listed[["ID", "x", "y"]].itertuples(index=False)
        ]
        result = _select_patches([e["result"] for e in explained.values()], order)
        class_names = next(iter(explained.values()))["class_names"]
        render_gallery(
            images,
            result,
            out / "cohort.png",
            titles=titles,
            class_names=class_names,
            **gallery_options,
        )
    with atomic_file(out / "cohort_top.csv") as tmp:
        listed.to_csv(tmp, index=False)


def _select_patches(results: list, order: np.ndarray):
    """One AttributionResult of the chosen patches (positions over the slides' patches, in
    order): their rows (several per patch with target "each"), renumbered 0..len(order)-1."""
    from .attribution.result import AttributionResult

    patch, rows, offset = [], [], 0
    for result in results:
        patch.append(result.patch_of_rows() + offset)
        offset += len(np.unique(result.patch_of_rows()))
    patch = np.concatenate(patch)
    for k, p in enumerate(order):
        rows.extend((r, k) for r in np.flatnonzero(patch == p))
    index = np.asarray([r for r, _ in rows])

    def stack(name):
        values = [getattr(r, name) for r in results]
        if any(v is None for v in values):
            return None
        return np.concatenate([np.asarray(v) for v in values])[index]

    return AttributionResult(
        method=results[0].method,
        maps=stack("maps"),
        targets=stack("targets"),
        logits=stack("logits"),
        probabilities=stack("probabilities"),
        completeness_error=stack("completeness_error"),
        output_delta=stack("output_delta"),
        patch_index=np.asarray([k for _, k in rows]),
    )
