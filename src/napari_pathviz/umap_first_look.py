"""A first look at a UMAP within seconds, while the full fit runs.

A full UMAP of 100,000 patches takes a minute or more on a laptop's CPU. Before it, when asked
(``umap_embed(first_look=...)``), a layout of every patch is made from a small sample, as the
cohort path does (:mod:`.embedding_large`), but cheaper where it must be quick:

1. PCA to at most 50 dimensions, fitted on :data:`FIRST_LOOK_SIZE` sampled patches (whatever the
   PCA setting: only this preview is computed in the reduced space), every patch projected;
2. umap-learn's layout of the sample (200 epochs), on its exact neighbours found as in 3.;
3. every other patch placed at the weighted mean of its ``n_neighbors`` nearest sampled patches
   (the start umap-learn's ``transform`` gives a point), found by brute force in blocks with one
   matrix product each: no index query, which numba would compile anew in every process and
   which took most of ``transform``'s time (18 s per 100,000 patches).

The first look is shown as such, and replaced by the full fit: the result does not depend on it.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ._umap_stages import StageReporter
from .embedding_large import _pca_projection, part_of, sample_rows

FIRST_LOOK_ABOVE = 10_000  # a full fit of fewer patches takes seconds: no first look
FIRST_LOOK_SIZE = 4_000  # sampled patches (below umap-learn's 4,096: exact neighbours, no index)
FIRST_LOOK_SHARE = 0.1  # of the progress bar
FIT_SHARE = 0.7  # of the first look's share: the sample's fit (the placing takes the rest)
BLOCK = 8_192  # patches placed per matrix product (BLOCK x FIRST_LOOK_SIZE float32 distances)
SAMPLE_EPOCHS = 200  # umap-learn gives a few thousand points 500; a preview needs fewer


def first_look_size(n_samples: int, fit_on: int | None) -> int | None:
    """How many patches a first look is fitted on, or None when none is worth showing: few
    patches (the full fit is quick), or a fit on a sample already (``fit_on``)."""
    if n_samples < FIRST_LOOK_ABOVE or fit_on is not None:
        return None
    return FIRST_LOOK_SIZE


def show_first_look(features: np.ndarray, params, stages: StageReporter, show) -> StageReporter:
    """Makes the first look of ``features`` and passes it to ``show(coords, note)``; it takes
    the first :data:`FIRST_LOOK_SHARE` of the progress bar. Returns the reporter of the full
    fit, which takes the rest."""
    look = part_of(stages, 0.0, FIRST_LOOK_SHARE, "first look")
    coords = first_look(features, params, look)
    n, size = len(features), min(FIRST_LOOK_SIZE, len(features))
    show(
        coords,
        f"first look: UMAP of {size:,} sampled patches, the other {n - size:,} placed among "
        "them; the full UMAP follows",
    )
    return part_of(stages, FIRST_LOOK_SHARE, 1.0, "full UMAP")


def first_look(features: np.ndarray, params, stages: StageReporter) -> np.ndarray:
    """The first look's coordinates (N x n_components, float32); see the module docstring."""
    from concurrent.futures import ThreadPoolExecutor

    size = min(FIRST_LOOK_SIZE, len(features))
    rows = sample_rows(len(features), size, params.random_state)
    data = _pca_projection(features, rows, dataclasses.replace(params, pca="auto"), stages)
    sample = _comparable(np.asarray(data[rows], np.float32), params.metric)
    layout = _fit_sample(sample, params, part_of(stages, 0.0, FIT_SHARE, ""))
    coords = np.empty((len(features), params.n_components), np.float32)
    coords[rows] = layout
    rest = np.setdiff1d(np.arange(len(features)), rows, assume_unique=True)
    stages.report(FIT_SHARE, f"placing the other {len(rest):,} patches")

    def place(start: int) -> int:
        block = rest[start : start + BLOCK]
        near, weights = _nearest(_comparable(data[block], params.metric), sample, params)
        coords[block] = np.einsum("bk,bkc->bc", weights, layout[near])
        return len(block)

    # numpy's matrix product and partition release the GIL: blocks in parallel, leaving a core
    # to the GUI
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) - 1)) as pool:
        for placed in pool.map(place, range(0, len(rest), BLOCK)):
            done += placed
            stages.report(
                FIT_SHARE + (1.0 - FIT_SHARE) * done / len(rest),
                f"placed {done:,} of {len(rest):,} other patches",
            )
    return coords


def _fit_sample(sample: np.ndarray, params, stages: StageReporter) -> np.ndarray:
    """umap-learn's layout of the sample, on its exact neighbours found here (umap-learn's own
    all-pairs path for a few thousand points took 10 s; numba cannot cache NN-descent)."""
    import warnings

    from ._umap_backends import _import_umap

    stages.begin("nearest neighbours", f"exact, {len(sample):,} sampled patches")
    umap = _import_umap()
    near, _ = _nearest(sample, sample, params)  # each point is its own nearest: umap expects it
    dist = np.sqrt(np.maximum(((sample[:, None, :] - sample[near]) ** 2).sum(axis=2), 0.0))
    order = np.argsort(dist, axis=1, kind="stable")
    near, dist = np.take_along_axis(near, order, 1), np.take_along_axis(dist, order, 1)
    stages.begin("fuzzy simplicial set")
    reducer = umap.UMAP(
        n_components=params.n_components,
        n_neighbors=near.shape[1],
        min_dist=params.min_dist,
        random_state=params.random_state,
        n_epochs=SAMPLE_EPOCHS,
        precomputed_knn=(near.astype(np.int32), dist.astype(np.float32), None),
        force_approximation_algorithm=True,  # else under 4,096 points it computes all pairs
        tqdm_kwds={"file": stages.epochs_stream(), "disable": False, "mininterval": 0.1},
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        return reducer.fit(sample).embedding_.astype(np.float32)


def _comparable(points: np.ndarray, metric: str) -> np.ndarray:
    """Points whose euclidean distances rank neighbours as ``metric`` does: unit vectors for
    cosine, centred unit vectors for correlation. Other metrics are ranked as euclidean (a
    preview; the full fit uses the metric itself)."""
    points = np.asarray(points, np.float32)
    if metric == "correlation":
        points = points - points.mean(axis=1, keepdims=True)
    if metric in ("cosine", "correlation"):
        norms = np.linalg.norm(points, axis=1, keepdims=True)
        points = points / np.maximum(norms, np.finfo(np.float32).tiny)
    return points


def _nearest(block: np.ndarray, sample: np.ndarray, params) -> tuple[np.ndarray, np.ndarray]:
    """Indices of each block row's ``n_neighbors`` nearest sample rows, and weights summing to
    1 per row that fall off with the distance beyond the nearest (as UMAP's memberships do)."""
    k = min(params.n_neighbors, len(sample))
    # |a - b|^2 = |a|^2 - 2 a.b + |b|^2: one matrix product per block
    d2 = (block * block).sum(axis=1)[:, None] - 2.0 * block @ sample.T
    d2 += (sample * sample).sum(axis=1)[None, :]
    near = np.argpartition(d2, k - 1, axis=1)[:, :k]
    dist = np.sqrt(np.maximum(np.take_along_axis(d2, near, axis=1), 0.0))
    gap = dist - dist.min(axis=1, keepdims=True)
    scale = np.maximum(gap.mean(axis=1, keepdims=True), 1e-12)
    weights = np.exp(-gap / scale)
    return near, (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
