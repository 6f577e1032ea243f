"""UMAP fitted on a sample and the rest transformed (embedding_large), on 3,000-5,000 clustered
points with the automatic threshold lowered: which path runs, determinism, quality against the full
fit, progress and the cache key."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pathviz import embedding_large
from napari_pathviz.embedding import UMAPParams, embedding_quality, umap_embed
from napari_pathviz.errors import PathvizError
from napari_pathviz.store import ResultsStore

N, DIMS, CLUSTERS = 5_000, 64, 8
ABOVE, SAMPLE, CHUNK = 3_000, 2_500, 1_000  # lowered automatic threshold, sample, chunk


def clustered(n: int = N, dims: int = DIMS, seed: int = 3) -> np.ndarray:
    """Gaussian clusters of unequal spread in a 10-D subspace plus noise in every dimension."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dims, 10)))
    centers = rng.normal(0.0, 4.0, (CLUSTERS, 10))
    labels = rng.integers(0, CLUSTERS, n)
    spread = rng.uniform(0.5, 1.5, CLUSTERS)[labels, None]
    latent = centers[labels] + spread * rng.standard_normal((n, 10))
    return (latent @ basis.T + 0.1 * rng.standard_normal((n, dims))).astype(np.float32)


class Progress:
    def __init__(self):
        self.calls: list[tuple[float, str]] = []

    def __call__(self, fraction: float, stage: str) -> None:
        self.calls.append((fraction, stage))

    def stages(self) -> list[str]:
        return [stage for _, stage in self.calls]

    def transformed(self) -> bool:
        return any(stage.startswith("transform") for stage in self.stages())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every UMAP the tests look at, computed once (each costs seconds on 2 cores)."""
    features = clustered()
    root = tmp_path_factory.mktemp("umap-large")
    auto_store, explicit_store = ResultsStore(root / "auto"), ResultsStore(root / "explicit")
    out = {"features": features, "explicit_store": explicit_store}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(embedding_large, "FIT_SAMPLE_ABOVE", ABOVE)
        mp.setattr(embedding_large, "FIT_SAMPLE_SIZE", SAMPLE)
        mp.setattr(embedding_large, "TRANSFORM_CHUNK", CHUNK)
        seeded = UMAPParams(random_state=0)
        for name, data, params, store in (
            ("below", features[:ABOVE], seeded, auto_store),
            ("above", features, seeded, auto_store),
            ("full", features, UMAPParams(random_state=0, fit_sample=0), auto_store),
            ("sample_2500", features, UMAPParams(random_state=0, fit_sample=2500), explicit_store),
            ("sample_2000", features, UMAPParams(random_state=0, fit_sample=2000), explicit_store),
        ):
            progress = Progress()
            coords = umap_embed(data, params, knn="nndescent", store=store, progress=progress)
            out[name] = (coords, progress)
    return out


def test_fit_sample_size_rules(monkeypatch):
    monkeypatch.setattr(embedding_large, "FIT_SAMPLE_ABOVE", 1000)
    monkeypatch.setattr(embedding_large, "FIT_SAMPLE_SIZE", 400)
    size = embedding_large.fit_sample_size
    assert size(None, 1000) is None and size(None, 1001) == 400  # automatic, above 1,000
    assert size(0, 10**7) is None  # 0: always the full fit
    assert size(500, 500) is None and size(500, 501) == 500  # N: fit on N when there are more
    rows = embedding_large.sample_rows(1001, 400, 7)
    assert len(np.unique(rows)) == 400 and np.array_equal(rows, np.sort(rows))
    assert np.array_equal(rows, embedding_large.sample_rows(1001, 400, 7))
    assert not np.array_equal(rows, embedding_large.sample_rows(1001, 400, 8))


def test_default_threshold_is_the_documented_one():
    assert embedding_large.FIT_SAMPLE_ABOVE == 200_000
    assert embedding_large.fit_sample_size(None, 200_000) is None
    assert embedding_large.fit_sample_size(None, 1_000_000) == embedding_large.FIT_SAMPLE_SIZE


def test_sample_path_taken_above_the_threshold_only(runs):
    below, below_progress = runs["below"]
    above, above_progress = runs["above"]
    assert below.shape == (ABOVE, 2) and above.shape == (N, 2)
    assert not below_progress.transformed()
    assert above_progress.transformed()
    assert any(f"fit on {SAMPLE:,} sampled" in s for s in above_progress.stages())
    assert not runs["full"][1].transformed()
    assert np.isfinite(above).all() and above.dtype == np.float32


def test_sample_rows_keep_their_fitted_place_and_the_rest_lands_among_them(runs):
    coords = runs["above"][0]
    rows = embedding_large.sample_rows(N, SAMPLE, 0)
    rest = np.setdiff1d(np.arange(N), rows)
    # transformed points lie within the span of the fitted layout, not somewhere far off
    low, high = coords[rows].min(axis=0), coords[rows].max(axis=0)
    margin = 0.1 * (high - low)
    inside = ((coords[rest] >= low - margin) & (coords[rest] <= high + margin)).all(axis=1)
    assert inside.mean() > 0.99


def test_deterministic_with_a_seed(runs):
    # The automatic run and an explicit fit_sample of the same size draw the same sample with the
    # same seed: the same numbers, though cached under different keys.
    assert np.array_equal(runs["above"][0], runs["sample_2500"][0])


def test_trustworthiness_close_to_the_full_fit(runs):
    features = runs["features"]
    full = embedding_quality(features, runs["full"][0], k=15, sample=2000, seed=0)
    sampled = embedding_quality(features, runs["above"][0], k=15, sample=2000, seed=0)
    assert full["trustworthiness"] > 0.9  # the data have structure the full fit finds
    assert sampled["trustworthiness"] >= full["trustworthiness"] - 0.02


def test_progress_names_the_fit_and_every_transform_chunk(runs):
    calls = runs["above"][1].calls
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    rest = N - SAMPLE
    chunks = [s for s in runs["above"][1].stages() if s.startswith("transform: ")]
    expected = [
        f"transform: {min(done, rest):,}/{rest:,} patches" for done in (0, 1000, 2000, 3000)
    ]
    assert chunks == expected
    fit = [f for f, s in calls if s.startswith("fit on")]
    assert fit and max(fit) <= embedding_large.FIT_SHARE
    assert any("epochs" in s for s in runs["above"][1].stages())


def test_cache_key_includes_the_sample_size(runs):
    store = runs["explicit_store"]
    cached = sorted((store.root / "umap").glob("*.npy"))
    assert len(cached) == 2  # fit_sample 2,500 and 2,000: two keys
    assert not np.array_equal(runs["sample_2500"][0], runs["sample_2000"][0])
    progress = Progress()
    again = umap_embed(
        runs["features"],
        UMAPParams(random_state=0, fit_sample=2000),
        store=store,
        knn="nndescent",
        progress=progress,
    )
    assert progress.stages() == ["loaded from cache"]
    assert np.array_equal(again, runs["sample_2000"][0])


def test_fit_sample_too_small_is_one_line():
    with pytest.raises(PathvizError, match="--fit-sample must be 0"):
        umap_embed(clustered(200), UMAPParams(fit_sample=10), use_cache=False)
