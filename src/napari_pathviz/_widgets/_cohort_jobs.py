"""The cohort explorer's work off the GUI thread: loading a cohort (slides table, embeddings,
UMAP or given coordinates) and the batch-effect score. Each is a ``job(progress, cancelled)``
for ``_jobs.JobRunner``; no Qt here."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import Cancelled, PathvizError


@dataclass
class LoadedCohort:
    """``frame`` row i is the patch of ``features[i]`` and ``coords[i]``; it has the patch
    columns, the slide-level columns and ``linkable``."""

    frame: pd.DataFrame
    features: np.ndarray
    coords: np.ndarray
    slide_columns: list[str]
    paths: dict[str, str | None]
    messages: list[str] = field(default_factory=list)
    computed: bool = True  # False: the coordinates came with the embeddings
    sample_size: int | None = None  # the UMAP was fitted on this many patches, the rest placed


def coordinate_columns(columns) -> list[str]:
    """umap_0, umap_1 (, umap_2) when the embeddings carry them."""
    found = sorted(
        (str(c) for c in columns if re.fullmatch(r"umap_\d+", str(c))), key=lambda c: int(c[5:])
    )
    return found[:2] if len(found) >= 2 else []


@dataclass
class LoadJob:
    embeddings: str
    slides_table: str
    slides_dir: str | None
    trust_pickle: bool
    use_given_coords: bool
    seed: int | None
    n_neighbors: int = 15
    full_fit: bool = False  # fit UMAP on every patch, not on a sample above 200,000

    def run(self, progress, cancelled) -> LoadedCohort:
        from ..cohort_data import attach_slides, load_cohort_embeddings, read_slides_table
        from ..embedding_large import fit_sample_size

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            progress(0.0, "reading the slides table")
            slides = read_slides_table(self.slides_table, self.slides_dir)
            progress(0.02, "reading the embeddings")
            emb = load_cohort_embeddings(self.embeddings, trust_pickle=self.trust_pickle)
            if cancelled():
                raise Cancelled("cancelled")
            frame, _report = attach_slides(emb.rows, slides)
        messages = list(dict.fromkeys(str(w.message) for w in caught))
        given = coordinate_columns(frame.columns) if self.use_given_coords else []
        sample_size = None
        if given:
            coords = frame[given].to_numpy(np.float32)
            if not np.isfinite(coords).all():
                raise PathvizError(f"{self.embeddings}: {given[0]}/{given[1]} have empty values")
        else:
            coords = self._umap(emb.features, progress, cancelled)
            sample_size = fit_sample_size(self._params().fit_sample, len(coords))
        renamed = {c: f"slide_{c}" for c in slides.slide_columns if f"slide_{c}" in frame.columns}
        slide_columns = [renamed.get(c, c) for c in slides.slide_columns]
        paths = dict(zip(slides.frame["ID"], slides.frame["path"], strict=True))
        return LoadedCohort(
            frame,
            emb.features,
            coords,
            slide_columns,
            paths,
            messages,
            computed=not given,
            sample_size=sample_size,
        )

    def _params(self):
        from ..embedding import UMAPParams

        return UMAPParams(
            n_neighbors=self.n_neighbors,
            random_state=self.seed,
            fit_sample=0 if self.full_fit else None,
        )

    def _umap(self, features, progress, cancelled) -> np.ndarray:
        from ..embedding import umap_embed

        params = self._params()

        def scaled(fraction, stage):  # the first 5% went to reading
            progress(0.05 + 0.95 * fraction, stage)

        return umap_embed(features, params, progress=scaled, cancelled=cancelled)


@dataclass
class ScoreJob:
    features: np.ndarray
    groups: pd.Series
    column: str
    within: pd.Series | None
    within_column: str | None
    k: int = 15

    def run(self, progress, cancelled):
        from ..batch_effect import batch_space, knn_purity

        progress(0.0, f"batch effect of {self.column}: PCA")
        points, space = batch_space(self.features, None, "features")
        if cancelled():
            raise Cancelled("cancelled")
        progress(0.3, f"batch effect of {self.column}: nearest neighbours")
        return knn_purity(
            points,
            self.groups.to_numpy(),
            k=self.k,
            within=None if self.within is None else self.within.to_numpy(),
            column=self.column,
            within_column=self.within_column,
            space=space,
        )
