"""Patch embeddings joined to their patches, background removal, UMAP and its quality.

UMAP runs on umap-learn. Above 50 dimensions the features are first reduced by PCA (as umap-learn's
authors advise): the nearest-neighbour search, most of UMAP's time, then works on 50 dimensions
instead of hundreds. With CUDA, the exact k-NN graph is computed on the GPU with torch and handed to
umap-learn as ``precomputed_knn``. Results are cached in the results store, keyed by the features
and every parameter, so reopening is a file read.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from . import embedding_large as large
from ._umap_backends import _import_umap, _umap_versions, cuda_available, torch_knn
from ._umap_stages import (
    SMALL_DATA,
    StageReporter,
    nndescent_neighbours,
    reporting_umap,
    searches_alone,
)
from .errors import PathvizError, PathvizWarning
from .io.embeddings import RawEmbeddings, read_embeddings
from .patches import KEY_COLUMNS, PatchTable
from .store import ResultsStore, array_key
from .umap_first_look import first_look_size, show_first_look

PCA_DIMENSIONS = 50
UMAP_VERSION = 1  # bump when the computation changes, so cached results are not reused


@dataclass
class JoinReport:
    source: str
    n_read: int = 0
    n_nonfinite: int = 0
    n_duplicates: int = 0
    n_unmatched_embeddings: int = 0
    n_unmatched_patches: int = 0
    n_kept: int = 0

    def messages(self) -> list[str]:
        out = []
        if self.n_nonfinite:
            out.append(f"{self.source}: dropped {self.n_nonfinite} rows with NaN or inf features")
        if self.n_duplicates:
            out.append(
                f"{self.source}: dropped {self.n_duplicates} rows with a duplicate patch key "
                "(kept the first)"
            )
        if self.n_unmatched_embeddings:
            out.append(
                f"{self.source}: {self.n_unmatched_embeddings} embedding rows match no "
                "patch in the table"
            )
        if self.n_unmatched_patches:
            out.append(f"{self.source}: {self.n_unmatched_patches} patches have no embedding")
        return out


@dataclass
class EmbeddingSet:
    """Embeddings with their patches: ``table.df`` row i describes ``features[i]``."""

    table: PatchTable
    features: np.ndarray
    report: JoinReport = field(default_factory=lambda: JoinReport("<embeddings>"))

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, keep: np.ndarray) -> EmbeddingSet:
        keep = np.asarray(keep)
        df = self.table.df[keep].reset_index(drop=True)
        return EmbeddingSet(PatchTable(df, self.table.source), self.features[keep], self.report)


def load_embeddings(
    path: str | os.PathLike,
    *,
    keys: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    patches: PatchTable | None = None,
    slide_id: str | None = None,
    patch_size: int | None = None,
) -> EmbeddingSet:
    """Reads embeddings and joins them to ``patches`` (or to their own key columns).

    ``patch_size`` serves key tables without a patch_size column. Rows with NaN/inf features,
    duplicate keys and unmatched rows are dropped and reported (``report.messages()``, also
    emitted as PathvizWarning); an empty result is an error.
    """
    raw = read_embeddings(path, keys=keys, trust_pickle=trust_pickle)
    result = join_embeddings(raw, patches, slide_id=slide_id, patch_size=patch_size)
    for message in result.report.messages():
        warnings.warn(message, PathvizWarning, stacklevel=2)
    return result


def join_embeddings(
    raw: RawEmbeddings,
    patches: PatchTable | None = None,
    slide_id: str | None = None,
    patch_size: int | None = None,
) -> EmbeddingSet:
    report = JoinReport(raw.source, n_read=len(raw.features))
    rows = raw.rows.reset_index(drop=True)
    features = raw.features
    finite = np.isfinite(features).all(axis=1)
    report.n_nonfinite = int((~finite).sum())
    if len(features) and not finite.any():
        raise PathvizError(
            f"{raw.source}: all {len(features)} embedding rows have NaN or infinite features"
        )
    rows, features = rows[finite].reset_index(drop=True), features[finite]
    _refuse_overflowing(features, raw.source)

    missing = [c for c in ("x", "y") if c not in rows.columns]
    if missing:
        raise PathvizError(
            f"{raw.source}: embeddings have no patch key column(s) "
            f"{', '.join(missing)} (columns: {', '.join(map(str, rows.columns))})"
        )
    own = PatchTable.from_frame(
        rows,
        raw.source,
        patch_size=None if "patch_size" in rows.columns else patch_size or _size_of(patches),
        slide_id=None,
    ).df
    if slide_id is not None:
        keep = (own["ID"] == str(slide_id)).to_numpy()
        if not keep.any():
            raise PathvizError(f"{raw.source}: no embeddings for slide ID {slide_id!r}")
        own, features = own[keep].reset_index(drop=True), features[keep]

    key = list(KEY_COLUMNS)
    duplicated = own.duplicated(subset=key, keep="first").to_numpy()
    report.n_duplicates = int(duplicated.sum())
    own, features = own[~duplicated].reset_index(drop=True), features[~duplicated]

    if patches is None:
        table = PatchTable(own, raw.source)
    else:
        their = patches.df
        if slide_id is not None:
            their = their[their["ID"] == str(slide_id)]
        their = their.drop_duplicates(subset=key, keep="first")
        own = own.assign(_row=np.arange(len(own)))
        extra = [c for c in own.columns if c not in their.columns or c in key]
        merged = their.merge(own[extra], on=key, how="inner", sort=False)
        merged = merged.sort_values("_row", kind="stable").reset_index(drop=True)
        report.n_unmatched_embeddings = len(own) - len(merged)
        report.n_unmatched_patches = len(their) - len(merged)
        features = features[merged.pop("_row").to_numpy()]
        table = PatchTable(merged, raw.source)
    report.n_kept = len(features)
    if not len(features):
        raise PathvizError(
            f"{raw.source}: no embedding row matches a patch "
            "(compare the ID, x, y and patch_size columns of both tables)"
        )
    return EmbeddingSet(table, features, report)


def _refuse_overflowing(features: np.ndarray, source: str) -> None:
    """Distances are computed in float32: a squared distance between features this large
    overflows to inf, and PCA and UMAP fail deep inside. Refused, naming the size."""
    if not features.size:
        return
    peak = float(np.abs(features).max())
    limit = float(np.sqrt(np.finfo(np.float32).max / features.shape[1])) / 4
    if peak > limit:
        raise PathvizError(
            f"{source}: features reach {peak:.3g} in magnitude, too large for float32 distances "
            f"(at most {limit:.3g} with {features.shape[1]} features); rescale them"
        )


def _size_of(patches: PatchTable | None) -> int | None:
    if patches is None:
        return None
    sizes = np.unique(patches.patch_sizes)
    return int(sizes[0]) if len(sizes) == 1 else None


def remove_background(es: EmbeddingSet, column: str, max_area: float) -> EmbeddingSet:
    """PathFlowAI's -rb/-ma: keep a patch when its ``column`` coverage is <= 1 - max_area."""
    if column not in es.table.df.columns:
        raise PathvizError(
            f"--remove_background_annotation: no column {column!r} "
            f"(columns: {', '.join(map(str, es.table.df.columns))})"
        )
    if not 0.0 <= max_area <= 1.0:
        raise PathvizError(f"--max_background_area must be between 0 and 1, got {max_area}")
    coverage = pd.to_numeric(es.table.df[column], errors="coerce").to_numpy()
    keep = coverage <= 1.0 - max_area
    if not keep.any():
        raise PathvizError(f"background removal by {column!r} <= {1 - max_area:g} keeps no patch")
    return es.subset(keep)


@dataclass(frozen=True)
class UMAPParams:
    n_components: int = 2
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    pca: int | str | None = "auto"  # "auto": to 50 dimensions above 50; an int; None: off
    random_state: int | None = None
    # None: fit on a sample above 200,000 patches; 0: always a full fit; N: fit on N patches
    # when there are more, transform the rest (see embedding_large)
    fit_sample: int | None = None

    def validate(self, n_samples: int) -> None:
        if self.n_components not in (2, 3):
            raise PathvizError(f"--components must be 2 or 3, got {self.n_components}")
        if self.n_neighbors < 2:
            raise PathvizError(f"--n_neighbors must be at least 2, got {self.n_neighbors}")
        if n_samples <= self.n_neighbors:
            raise PathvizError(
                f"UMAP with {self.n_neighbors} neighbours needs more than "
                f"{self.n_neighbors} patches; {n_samples} given"
            )
        if not 0.0 <= self.min_dist <= 1.0:
            raise PathvizError(f"--min_dist must be between 0 and 1, got {self.min_dist}")
        check_metric(self.metric)
        large.check_fit_sample(self.fit_sample, self.n_neighbors)


# The common metrics, known without importing umap (slow: numba); others are asked of umap.
_COMMON_METRICS = ("euclidean", "manhattan", "chebyshev", "minkowski", "cosine", "correlation")


def check_metric(metric: str) -> None:
    """A metric umap-learn knows by name, else a one-line error listing them."""
    if metric in _COMMON_METRICS:
        return
    from umap.distances import named_distances

    if metric not in named_distances:
        raise PathvizError(
            f"--metric: unknown metric {metric!r} (e.g. {', '.join(_COMMON_METRICS)}; "
            "see umap-learn's list)"
        )


def pca_dimensions(params: UMAPParams, n_features: int) -> int | None:
    if params.pca == "auto":
        return PCA_DIMENSIONS if n_features > PCA_DIMENSIONS else None
    if params.pca in (None, 0, "off", "none"):
        return None
    return min(int(params.pca), n_features)


def umap_embed(
    features: np.ndarray,
    params: UMAPParams = UMAPParams(),
    *,
    knn: str = "auto",
    store: ResultsStore | None = None,
    use_cache: bool = True,
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    first_look: Callable[[np.ndarray, str], None] | None = None,
) -> np.ndarray:
    """UMAP coordinates (N x n_components, float32) of ``features``.

    ``knn``: "nndescent" (umap-learn's own, CPU), "torch" (exact k-NN in torch: on the GPU when
    CUDA is there, else on the CPU, for testing that path), or "auto" (torch on CUDA, else
    nndescent). ``progress(fraction, stage)`` is called between stages and epochs;
    ``cancelled()`` is checked there and stops the work with :class:`Cancelled`.
    ``first_look(coords, note)``, if given, receives a quick layout fitted on a sample before a
    full fit of 10,000 patches or more (:mod:`.umap_first_look`); the result does not depend
    on it.
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    params.validate(len(features))
    if knn == "auto":
        knn = "torch" if cuda_available() and params.metric == "euclidean" else "nndescent"
    if knn not in ("torch", "nndescent"):
        raise PathvizError(f"knn must be 'auto', 'torch' or 'nndescent', got {knn!r}")
    if knn == "torch" and params.metric != "euclidean":
        raise PathvizError(
            f"the torch k-NN supports the euclidean metric only, not {params.metric}"
        )
    store = store or ResultsStore()
    sample = large.fit_sample_size(params.fit_sample, len(features))
    # The k-NN backend is part of the key: exact and approximate graphs give different layouts;
    # so are the versions of the libraries that compute the layout.
    key = array_key(
        features,
        version=UMAP_VERSION,
        knn=knn,
        libraries=_umap_versions(),
        **asdict(params),
        **({"fit_on": sample, "transform": large.TRANSFORM_EPOCHS} if sample else {}),
    )
    if use_cache:
        cached = store.get("umap", key)
        if cached is not None and cached.shape == (len(features), params.n_components):
            StageReporter(progress, None).report(1.0, "loaded from cache")
            return cached

    stages = StageReporter(progress, cancelled)
    if first_look is not None and first_look_size(len(features), sample):
        stages = show_first_look(features, params, stages, first_look)
    if sample is not None:
        coords = large.umap_fit_sample_transform(features, params, sample, stages)
        store.put("umap", key, coords)
        stages.report(1.0, "done")
        return coords
    data = features
    dims = pca_dimensions(params, features.shape[1])
    if dims is not None and dims < features.shape[1]:
        stages.begin("PCA", f"{features.shape[1]} to {dims} dimensions")
        data = pca_reduce(features, dims, params.random_state)
    coords = _fit_umap(data, params, knn, stages).embedding_.astype(np.float32)
    store.put("umap", key, coords)
    stages.report(1.0, "done")
    return coords


def _fit_umap(data: np.ndarray, params: UMAPParams, knn: str, stages: StageReporter):
    """umap-learn's fit, each sub-step reported (see :mod:`._umap_stages`); the fitted
    reducer (its ``embedding_`` is what ``fit_transform`` returns)."""
    precomputed, random_state = (None, None, None), params.random_state
    # umap is imported inside the neighbours stage: its first import loads (or, on a first run,
    # compiles) numba kernels, seconds to minutes.
    if knn == "torch":
        stages.begin("nearest neighbours", f"exact, torch, {params.n_neighbors} each")
        umap = _import_umap()
        precomputed = torch_knn(data, params.n_neighbors)
        stages.begin("fuzzy simplicial set")
    elif len(data) >= SMALL_DATA:
        stages.begin("nearest neighbours", f"NN-descent, {params.n_neighbors} each")
        umap = _import_umap()
        if searches_alone(umap, params.metric):
            precomputed, random_state = nndescent_neighbours(
                data,
                params.n_neighbors,
                params.metric,
                params.random_state,
                lambda share, detail: stages.within("nearest neighbours", share, detail),
            )
            stages.begin("fuzzy simplicial set")
    else:
        stages.begin("nearest neighbours", "exact (all pairs), with the fuzzy simplicial set")
        umap = _import_umap()
    reducer = reporting_umap(umap, lambda: stages.begin("spectral init"))(
        n_components=params.n_components,
        n_neighbors=params.n_neighbors,
        min_dist=params.min_dist,
        metric=params.metric,
        random_state=random_state,
        precomputed_knn=precomputed,
        tqdm_kwds={
            "file": stages.epochs_stream(),
            "disable": False,
            "mininterval": 0.1,
            "ascii": True,
        },
    )
    with warnings.catch_warnings():
        # umap-learn warns that n_jobs is 1 with random_state, and about a precomputed graph
        # without a search index (the sample fit of embedding_large keeps NN-descent's index):
        # both are expected here.
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        return reducer.fit(data)


def pca_reduce(features: np.ndarray, dims: int, random_state: int | None = None) -> np.ndarray:
    from sklearn.decomposition import PCA

    pca = PCA(
        n_components=dims,
        svd_solver="randomized",
        random_state=0 if random_state is None else random_state,
    )
    return pca.fit_transform(features).astype(np.float32)


def embedding_quality(
    features: np.ndarray, coords: np.ndarray, k: int = 15, sample: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Trustworthiness (k neighbours) and k-NN preservation of an embedding, on a subsample.

    Trustworthiness is computed among the ``sample`` rows; k-NN preservation
    (:func:`knn_preservation`) queries the same rows but finds their neighbours among all points.
    """
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(features), size=min(sample, len(features)), replace=False)
    high, low = features[idx], coords[idx]
    if len(idx) < 6:
        raise PathvizError(f"embedding quality needs at least 6 patches, got {len(idx)}")
    k = min(k, (len(idx) - 1) // 2)  # trustworthiness needs k < n / 2
    trust = float(trustworthiness(high, low, n_neighbors=k))
    return {
        "trustworthiness": trust,
        "knn_preservation": knn_preservation(features, coords, k=k, queries=idx),
        "k": k,
        "sample": len(idx),
    }


KNN_QUERIES = 2_000  # query points of knn_preservation on a large set (neighbours: all points)


def knn_preservation(
    features: np.ndarray,
    layout: np.ndarray,
    k: int = 15,
    queries: int | np.ndarray = KNN_QUERIES,
    seed: int = 0,
) -> float:
    """Mean over query points of |k nearest neighbours in ``features`` & k nearest in ``layout``|
    / k, the point itself excluded; exact (sklearn's NearestNeighbors, euclidean).

    The neighbours are found among all N points; only the queries are a subset: ``queries``
    rows drawn with ``np.random.default_rng(seed)`` (every row when N <= queries), or the row
    indices themselves. Trustworthiness can stay near 1 while this halves: it only penalises
    layout neighbours that are far apart in feature space, not true neighbours that were lost.
    """
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    if len(layout) != n:
        raise PathvizError(f"knn_preservation: {n} feature rows but {len(layout)} layout rows")
    if not 1 <= k < n:
        raise PathvizError(f"knn_preservation: k must be between 1 and {n - 1}, got {k}")
    if isinstance(queries, (int, np.integer)):
        rows = np.arange(n) if n <= queries else _query_rows(n, int(queries), seed)
    else:
        rows = np.asarray(queries)
    near_high = _neighbours_of(NearestNeighbors(n_neighbors=k + 1).fit(features), features, rows)
    near_low = _neighbours_of(NearestNeighbors(n_neighbors=k + 1).fit(layout), layout, rows)
    kept = [len(set(a[:k]) & set(b[:k])) for a, b in zip(near_high, near_low, strict=True)]
    return float(np.mean(kept) / k)


def _query_rows(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _neighbours_of(index, points: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """Each row's k nearest others (k + 1 found, the row itself dropped; when a duplicate
    hides it, the farthest of the k + 1 is dropped instead)."""
    found = index.kneighbors(points[rows], return_distance=False)
    return [
        near[near != row] if row in near else near[:-1]
        for row, near in zip(rows, found, strict=True)
    ]
