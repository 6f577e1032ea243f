"""UMAP of very many patches: fit on a random sample, place the rest with umap-learn's ``transform``.

A full UMAP fit of a 1,000,000-patch cohort spends most of its time in the nearest-neighbour
search and the epochs over all points. Above :data:`FIT_SAMPLE_ABOVE` patches (unless
``UMAPParams.fit_sample`` says otherwise), :func:`umap_embed` instead

1. fits PCA (when it applies) on the sample and projects every patch with it;
2. fits UMAP on :data:`FIT_SAMPLE_SIZE` patches drawn without replacement (seeded by
   ``random_state``, 0 when it is None, so the same patches are drawn every time);
3. places every other patch with ``UMAP.transform`` in chunks of :data:`TRANSFORM_CHUNK`:
   its neighbours among the sample are found in the NN-descent search index of the fit, it starts
   at their weighted mean and moves for :data:`TRANSFORM_EPOCHS` epochs against the fixed sample
   layout. Each chunk is placed independently of the others (umap-learn reseeds every call with
   ``transform_seed``), so the result does not depend on how far a cancelled run had got.

The sample is always fitted with NN-descent: the exact torch k-NN builds no search index, and
``transform`` needs one. Progress: the fit takes the first half of the bar (its own stages), the
chunks the second half.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._umap_stages import StageReporter

FIT_SAMPLE_ABOVE = 200_000  # auto: more patches than this are fitted on a sample
FIT_SAMPLE_SIZE = 100_000  # auto: the sample's size
TRANSFORM_CHUNK = 50_000  # patches placed per transform call (one progress step each)
TRANSFORM_EPOCHS = 30  # umap-learn's own default for transforming more than 10,000 points
FIT_SHARE = 0.5  # share of the progress bar the sample fit takes


def check_fit_sample(fit_sample: int | None, n_neighbors: int) -> None:
    from .errors import PathvizError

    if fit_sample is not None and fit_sample != 0 and fit_sample <= n_neighbors:
        raise PathvizError(
            f"--fit-sample must be 0 (always a full fit) or more than --n_neighbors "
            f"({n_neighbors}), got {fit_sample}"
        )


def fit_sample_size(fit_sample: int | None, n_samples: int) -> int | None:
    """How many patches UMAP is fitted on, or None for a full fit.

    ``fit_sample`` None: automatic, :data:`FIT_SAMPLE_SIZE` above :data:`FIT_SAMPLE_ABOVE`
    patches; 0: always a full fit; N: fit on N patches whenever there are more than N.
    """
    if fit_sample is None:
        return FIT_SAMPLE_SIZE if n_samples > FIT_SAMPLE_ABOVE else None
    if fit_sample == 0 or n_samples <= fit_sample:
        return None
    return int(fit_sample)


def sample_rows(n_samples: int, size: int, random_state: int | None) -> np.ndarray:
    """Sorted row indices of the fit sample: the same rows for the same seed (0 when None)."""
    rng = np.random.default_rng(0 if random_state is None else random_state)
    return np.sort(rng.choice(n_samples, size=size, replace=False))


def umap_fit_sample_transform(
    features: np.ndarray, params, size: int, stages: StageReporter
) -> np.ndarray:
    """UMAP coordinates (N x n_components, float32) from a fit on ``size`` sampled rows and
    ``transform`` of the rest (see the module docstring)."""
    from .embedding import _fit_umap

    rows = sample_rows(len(features), size, params.random_state)
    fit_stages = part_of(stages, 0.0, FIT_SHARE, f"fit on {size:,} sampled")
    data = _pca_projection(features, rows, params, fit_stages)
    reducer = _fit_umap(data[rows], params, "nndescent", fit_stages)
    return _place_the_rest(data, rows, reducer, stages)


def _pca_projection(features, rows, params, stages: StageReporter) -> np.ndarray:
    """Features projected on the PCA of the sampled rows (the features themselves when PCA
    does not apply), float32, in blocks so that no float64 copy of all rows is made."""
    from .embedding import pca_dimensions

    dims = pca_dimensions(params, features.shape[1])
    if dims is None or dims >= features.shape[1]:
        return features
    from sklearn.decomposition import PCA

    stages.begin("PCA", f"{features.shape[1]} to {dims} dimensions, fitted on the sample")
    pca = PCA(
        n_components=dims,
        svd_solver="randomized",
        random_state=0 if params.random_state is None else params.random_state,
    ).fit(features[rows])
    out = np.empty((len(features), dims), np.float32)
    for start in range(0, len(features), TRANSFORM_CHUNK):
        block = features[start : start + TRANSFORM_CHUNK]
        out[start : start + len(block)] = pca.transform(block)
    return out


def _place_the_rest(data, rows, reducer, stages: StageReporter) -> np.ndarray:
    coords = np.empty((len(data), reducer.n_components), np.float32)
    coords[rows] = reducer.embedding_
    rest = np.setdiff1d(np.arange(len(data)), rows, assume_unique=True)
    # transform runs n_epochs // 3 epochs; fixed here so that a small last chunk gets as many
    # epochs as the others (umap-learn gives chunks of up to 10,000 points 100).
    reducer.n_epochs = 3 * TRANSFORM_EPOCHS
    reducer.tqdm_kwds = {"disable": True}  # the fit's epoch bar reports into the fit's stages
    total = len(rest)
    stages.report(FIT_SHARE, f"transform: 0/{total:,} patches")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        for start in range(0, total, TRANSFORM_CHUNK):
            chunk = rest[start : start + TRANSFORM_CHUNK]
            coords[chunk] = reducer.transform(data[chunk])
            done = start + len(chunk)
            fraction = FIT_SHARE + (1.0 - FIT_SHARE) * done / total
            stages.report(fraction, f"transform: {done:,}/{total:,} patches")
    return coords


def part_of(stages: StageReporter, start: float, end: float, label: str) -> StageReporter:
    """A reporter for a part of the work: its 0..1 on ``start..end`` of ``stages``, its stages
    named "<label>: <stage>" (as they are without a label), the same cancel flag."""
    part = StageReporter(_scaled(stages, start, end, label), None)
    part.check = stages.check
    return part


def _scaled(stages: StageReporter, start: float, end: float, label: str):
    """A progress callback mapping a sub-task's 0..1 onto ``start..end`` of ``stages``."""

    def progress(fraction: float, stage: str) -> None:
        stages.report(start + (end - start) * fraction, f"{label}: {stage}" if label else stage)

    return progress
