"""Batch-effect score: how strongly an embedding separates the groups of a slide-level column
(site, scanner, stain batch), measured by k-nearest-neighbour purity.

What is computed, exactly:

- For each query patch i (every patch, or ``sample`` of them drawn at random; every patch is
  always in the index), its k nearest neighbours among all *other* patches: exact Euclidean
  k-NN (scikit-learn ``NearestNeighbors``: a k-d tree up to 15 dimensions, e.g. UMAP
  coordinates; blocked brute force above). ``purity_i`` is the fraction of them in i's group.
- ``purity`` is the mean of ``purity_i``. ``expected`` is its mean under random labels: with
  the group labels permuted over the patches, i's k neighbours are a random draw from the other
  n - 1 patches, so its expected same-group fraction is ``(n_g - 1) / (n - 1)`` for a patch of
  group g (about ``sum_g p_g^2`` averaged over patches). The **score** is
  ``(purity - expected) / (1 - expected)``: 0 when the groups are as mixed as random labels,
  1 when every neighbour is from the patch's own group (negative: more mixed than random).
- Per group: the same three numbers over the queries of that group (expected ``(n_g-1)/(n-1)``).
- ``within`` (a patch or slide-level column such as diagnosis): neighbours are searched among
  the patches of the query's own class only, and the expectation is the class's own
  ``(n_cg - 1) / (n_c - 1)``, so that groups that differ because their biology differs (one
  site sees more tumour) are not counted as bias. A class holding one group says nothing about
  mixing and is left out (listed with no score).

This is the neighbourhood batch-composition idea of kBET (Büttner et al., "A test metric for
assessing single-cell RNA-seq batch correction", Nature Methods 16:43-49, 2019), which tests
each neighbourhood's batch frequencies against the global ones with a chi-squared test, and of
iLISI (Korsunsky et al., "Fast, sensitive and accurate integration of single-cell data with
Harmony", Nature Methods 16:1289-1296, 2019), the inverse Simpson index of the batch labels in a
perplexity-weighted neighbourhood. We implement neither statistic: we report the plain,
unweighted same-group fraction of the k nearest neighbours, its exact expectation under
permuted labels and the normalised score above (kBET's per-class use, within cell types, is the
model for ``within``).

Scale: the query sample (default: all patches up to 20,000, else 20,000 drawn at random)
bounds the work; the index always holds every patch, so each purity is exact for its query.
The mean's standard error with 20,000 queries is at most 0.5 / sqrt(20,000) = 0.0035.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import PathvizError

DEFAULT_SAMPLE = 20_000
PCA_FIT_ROWS = 50_000
SPACES = ("features", "umap")


@dataclass
class BatchScore:
    """The score of one grouping; ``groups`` (and ``classes`` with ``within``) hold the same
    numbers per group (per class), ``query_index``/``query_purity`` each query's purity."""

    column: str
    k: int
    space: str
    n_points: int
    n_queries: int
    purity: float
    expected: float
    score: float
    groups: pd.DataFrame
    within: str | None = None
    classes: pd.DataFrame | None = None
    n_unlabelled: int = 0
    query_index: np.ndarray | None = None
    query_purity: np.ndarray | None = None

    def as_line(self) -> str:
        """The one-line summary the CLI prints."""
        scope = f", within {self.within}" if self.within else ""
        return (
            f"batch effect of {self.column}{scope}: score {self.score:.3f} "
            f"(kNN purity {self.purity:.3f} vs {self.expected:.3f} expected under random "
            f"labels; k={self.k}, {self.space}, {self.n_queries} of {self.n_points} patches; "
            "0 = mixed as random, 1 = separated)"
        )

    def group_lines(self) -> list[str]:
        """One line per group (and per class with ``within``)."""
        out = [
            f"  {self.column}={r.group}: score {r.score:.3f} (purity {r.purity:.3f}, "
            f"expected {r.expected:.3f}, {r.patches} patches)"
            for r in self.groups.itertuples()
        ]
        if self.classes is not None:
            for r in self.classes.itertuples():
                what = (
                    f"score {r.score:.3f} (purity {r.purity:.3f}, expected {r.expected:.3f})"
                    if np.isfinite(r.score)
                    else f"one {self.column} only, no score"
                )
                out.append(f"  {self.within}={r.cls}: {what}, {r.patches} patches")
        return out


def _normalised(purity, expected):
    purity, expected = np.asarray(purity, float), np.asarray(expected, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected < 1, (purity - expected) / (1 - expected), np.nan)


def _neighbour_purity(points: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int):
    """Same-label fraction of each query's k nearest other points (exact, Euclidean)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + 1).fit(points)
    _, neighbours = index.kneighbors(points[queries])
    # The query itself is among its k + 1 nearest (a duplicate point may come first): drop it,
    # or the farthest when a duplicate crowded it out.
    is_self = neighbours == queries[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")
    neighbours = np.take_along_axis(neighbours, order, axis=1)[:, :k]
    return (labels[neighbours] == labels[queries][:, None]).mean(axis=1)


def _codes(values, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, names) of a labelling; -1 where it is missing."""
    series = pd.Series(np.asarray(values, dtype=object))
    missing = series.isna().to_numpy()
    codes, names = pd.factorize(series.astype(str).where(~missing), sort=True)
    codes[missing] = -1
    if not len(names):
        raise PathvizError(f"{name}: no patch has a value")
    return codes, np.asarray(names, dtype=object)


def _pick_queries(n: int, sample: int | None, rng) -> np.ndarray:
    size = min(n, DEFAULT_SAMPLE) if sample is None else int(sample)
    if size < 1:
        raise PathvizError(f"sample must be positive, got {sample}")
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def knn_purity(
    embedding,
    groups,
    k: int = 15,
    within=None,
    sample: int | None = None,
    random_state: int | None = 0,
    *,
    column: str = "group",
    within_column: str | None = None,
    space: str = "embedding",
) -> BatchScore:
    """The kNN-purity batch-effect score of ``groups`` (one label per row of ``embedding``);
    see the module docstring for the definition and reference. ``within``: one class label per
    row (e.g. diagnosis): neighbours are searched within the query's class. ``sample`` query
    patches (None: all up to 20,000, else 20,000 at random); every patch is in the index.
    Patches without a group (or class) are left out (``n_unlabelled``). ``column``,
    ``within_column`` and ``space`` only name things in the report."""
    points = np.ascontiguousarray(np.asarray(embedding, dtype=np.float32))
    if points.ndim != 2 or len(points) != len(groups):
        raise PathvizError(
            f"the embedding ({points.shape}) and the {column} labels ({len(groups)}) differ"
        )
    if k < 1:
        raise PathvizError(f"k must be positive, got {k}")
    group_codes, group_names = _codes(groups, column)
    labelled = group_codes >= 0
    class_codes, class_names = np.zeros(len(points), dtype=np.int64), np.array(["all"], object)
    if within is not None:
        if len(within) != len(points):
            raise PathvizError(f"{within_column}: {len(within)} labels for {len(points)} patches")
        class_codes, class_names = _codes(within, within_column or "within")
        labelled &= class_codes >= 0
    keep = np.flatnonzero(labelled)
    points, group_codes, class_codes = points[keep], group_codes[keep], class_codes[keep]
    if len(np.unique(group_codes)) < 2:
        raise PathvizError(f"{column}: one group only ({group_names[0]}), nothing to compare")
    _refuse_k_beyond_a_group(k, group_codes, class_codes, group_names, class_names, column, within)
    rng = np.random.default_rng(random_state)
    queries = _pick_queries(len(points), sample, rng)
    parts = [
        _class_part(points, group_codes, class_codes == c, queries, k)
        for c in range(len(class_names))
    ]
    sizes = np.bincount(group_codes, minlength=len(group_names))
    score = _assemble(
        parts,
        sizes,
        group_names,
        class_names,
        column,
        within_column if within is not None else None,
        k,
        space,
        len(points),
        len(groups) - len(points),
    )
    score.query_index = keep[score.query_index]  # rows of the caller's embedding
    return score


def check_k(k: int, groups, within=None, *, column: str = "group") -> None:
    """:func:`knn_purity`'s refusal of a ``k`` no smaller than some group, from the labels
    alone (cheap: the CLI checks it before a UMAP of minutes)."""
    group_codes, group_names = _codes(groups, column)
    labelled = group_codes >= 0
    class_codes, class_names = np.zeros(len(group_codes), dtype=np.int64), np.array(["all"])
    if within is not None and len(within) == len(group_codes):
        class_codes, class_names = _codes(within, "within")
        labelled &= class_codes >= 0
    _refuse_k_beyond_a_group(
        k, group_codes[labelled], class_codes[labelled], group_names, class_names, column, within
    )


def _refuse_k_beyond_a_group(k, group_codes, class_codes, group_names, class_names, column, within):
    """A patch of a group of n_g patches has at most n_g - 1 neighbours of its own group: with
    k >= n_g even a fully separated group scores below 1, and with k >= n - 1 every patch is
    everyone's neighbour and the score is exactly 0, "mixed as random", whatever the embedding.
    Refused, naming the smallest group (within each class that is scored)."""
    for c in range(len(class_names)):
        counts = np.bincount(group_codes[class_codes == c], minlength=len(group_names))
        present = np.flatnonzero(counts)
        if len(present) < 2:
            continue  # a class holding one group is not scored
        smallest = present[np.argmin(counts[present])]
        size = int(counts[smallest])
        if k >= size:
            where = f" within {class_names[c]}" if within is not None else ""
            raise PathvizError(
                f"--batch-k {k}: {column} group {group_names[smallest]!r}{where} has only "
                f"{size} patches; k must be smaller than every group (at most {size - 1}), or "
                "the score cannot tell separated groups from mixed ones"
            )


def _class_part(points, group_codes, members: np.ndarray, queries: np.ndarray, k: int) -> dict:
    """Query purity and expectation within one class (all patches when there is no ``within``)."""
    member_index = np.flatnonzero(members)
    local = np.searchsorted(member_index, queries[members[queries]])  # queries of this class
    labels = group_codes[member_index]
    counts = np.bincount(labels, minlength=group_codes.max() + 1)
    n = len(member_index)
    part = {"queries": member_index[local], "labels": labels[local], "n": n}
    part["groups"] = int((counts > 0).sum())
    if part["groups"] < 2 or n < 2 or not len(local):
        part["purity"] = np.full(len(local), np.nan)
        part["expected"] = np.full(len(local), np.nan)
        return part
    part["purity"] = _neighbour_purity(points[member_index], labels, local, min(k, n - 1))
    part["expected"] = (counts[labels[local]] - 1) / (n - 1)
    return part


def _assemble(parts, sizes, group_names, class_names, column, within, k, space, n, n_unlabelled):
    used = [p for p in parts if len(p["purity"]) and np.isfinite(p["purity"]).all()]
    if not used:
        raise PathvizError(
            f"--batch-within {within}: every class holds a single {column}; nothing to compare"
        )
    purity = np.concatenate([p["purity"] for p in used])
    expected = np.concatenate([p["expected"] for p in used])
    labels = np.concatenate([p["labels"] for p in used])
    queries = np.concatenate([p["queries"] for p in used])
    order = np.argsort(queries, kind="stable")
    groups = _table(labels, purity, expected, len(group_names))
    groups.insert(0, "group", group_names)
    groups["patches"] = sizes
    classes = None
    if within is not None:
        classes = pd.DataFrame(
            {
                "cls": class_names,
                "patches": [p["n"] for p in parts],
                "groups": [p["groups"] for p in parts],
                "purity": [np.mean(p["purity"]) if len(p["purity"]) else np.nan for p in parts],
                "expected": [
                    np.mean(p["expected"]) if len(p["expected"]) else np.nan for p in parts
                ],
            }
        )
        classes["score"] = _normalised(classes["purity"], classes["expected"])
    P, E = float(purity.mean()), float(expected.mean())
    return BatchScore(
        column=column,
        k=k,
        space=space,
        n_points=n,
        n_queries=len(purity),
        purity=P,
        expected=E,
        score=float(_normalised(P, E)),
        groups=groups,
        within=within,
        classes=classes,
        n_unlabelled=n_unlabelled,
        query_index=queries[order],
        query_purity=purity[order],
    )


def _table(labels, purity, expected, n_groups) -> pd.DataFrame:
    counts = np.bincount(labels, minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.bincount(labels, weights=purity, minlength=n_groups) / counts
        e = np.bincount(labels, weights=expected, minlength=n_groups) / counts
    return pd.DataFrame({"purity": p, "expected": e, "score": _normalised(p, e)})


def batch_space(features: np.ndarray, coords: np.ndarray | None, space: str = "features"):
    """(points, description) for the score. ``features`` (the default): the embedding
    features, PCA-reduced to 50 dimensions above 50 (as for the UMAP; exact k-NN stays
    affordable at 1M patches); ``umap``: the UMAP coordinates, a picture whose distances move
    with n_neighbors, min_dist and the seed, so the default is the features a classifier sees
    (kBET and LISI are computed there too)."""
    if space not in SPACES:
        raise PathvizError(f"--batch-space must be one of {', '.join(SPACES)}, got {space!r}")
    if space == "umap":
        if coords is None:
            raise PathvizError("--batch-space umap: no UMAP coordinates")
        return np.asarray(coords, dtype=np.float32), f"UMAP {coords.shape[1]}-D"
    from .embedding import PCA_DIMENSIONS

    if features.shape[1] > PCA_DIMENSIONS:
        reduced = _pca(features, PCA_DIMENSIONS)
        return reduced, f"features (PCA {features.shape[1]} -> {PCA_DIMENSIONS})"
    return features, f"features ({features.shape[1]}-D)"


def _pca(features: np.ndarray, dims: int, fit_rows: int = PCA_FIT_ROWS) -> np.ndarray:
    """PCA fitted on at most ``fit_rows`` random rows (the components of 1M patches are
    those of 50,000 to well within the noise, at a small fraction of the time), then applied
    to every row in blocks, float32 out."""
    from sklearn.decomposition import PCA

    fit = features
    if len(features) > fit_rows:
        rows = np.random.default_rng(0).choice(len(features), fit_rows, replace=False)
        fit = features[np.sort(rows)]
    pca = PCA(n_components=dims, svd_solver="randomized", random_state=0).fit(fit)
    out = np.empty((len(features), dims), dtype=np.float32)
    for start in range(0, len(features), 65_536):
        out[start : start + 65_536] = pca.transform(features[start : start + 65_536])
    return out
