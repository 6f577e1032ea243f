"""The kNN-purity batch-effect score on synthetic cohorts with and without an injected site
shift, with site confounded with diagnosis, and against a brute-force numpy computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_pathviz.batch_effect import batch_space, check_k, knn_purity
from napari_pathviz.errors import PathvizError


def _cohort(n=3000, shift=0.0, confounded=False, seed=0):
    """Two diagnoses (the biology: far apart in feature space), three sites; ``shift`` moves
    each site's patches along its own direction; ``confounded``: site A sees mostly tumour."""
    rng = np.random.default_rng(seed)
    diagnosis = rng.choice(["tumour", "normal"], n)
    if confounded:  # A: 90% tumour, B: 90% normal
        site = np.where(rng.random(n) < 0.9, diagnosis == "tumour", diagnosis != "tumour")
        site = np.where(site, "A", "B")
    else:
        site = rng.choice(["A", "B", "C"], n)
    x = rng.normal(size=(n, 10)).astype(np.float32)
    x[:, 0] += np.where(diagnosis == "tumour", 8.0, 0.0)
    for j, s in enumerate(["A", "B", "C"]):
        x[site == s, 1 + j] += shift
    return x, site, diagnosis


def test_no_shift_scores_about_zero():
    x, site, _ = _cohort()
    score = knn_purity(x, site, k=15, column="site")
    assert abs(score.score) < 0.05
    # Three equal sites: expected purity (n_g - 1)/(n - 1) is about 1/3.
    assert score.expected == pytest.approx(1 / 3, abs=0.02)
    assert score.purity == pytest.approx(score.expected, abs=0.02)
    assert len(score.groups) == 3 and (score.groups["score"].abs() < 0.08).all()
    assert score.groups["patches"].sum() == 3000


def test_site_shift_scores_high_and_names_itself():
    x, site, _ = _cohort(shift=4.0)
    score = knn_purity(x, site, k=15, column="site", space="test space")
    assert score.score > 0.5 and score.purity > 0.7
    line = score.as_line()
    assert "\n" not in line and line.startswith("batch effect of site: score ")
    assert f"{score.score:.3f}" in line and "k=15" in line and "test space" in line
    assert len(score.group_lines()) == 3 and all("site=" in g for g in score.group_lines())


def test_site_confounded_with_diagnosis_is_high_overall_and_zero_within():
    x, site, diagnosis = _cohort(confounded=True)
    overall = knn_purity(x, site, column="site")
    within = knn_purity(x, site, within=diagnosis, column="site", within_column="diagnosis")
    assert overall.score > 0.5
    assert abs(within.score) < 0.05
    assert within.within == "diagnosis" and "within diagnosis" in within.as_line()
    assert set(within.classes["cls"]) == {"normal", "tumour"}
    assert (within.classes["score"].abs() < 0.08).all()
    # Within a class, the expectation is the class's own site mix (90/10): 0.9^2 + 0.1^2.
    assert within.expected == pytest.approx(0.82, abs=0.02)


def test_a_real_shift_is_still_found_within_class():
    x, site, diagnosis = _cohort(shift=4.0, seed=1)
    within = knn_purity(x, site, within=diagnosis, column="site", within_column="diagnosis")
    assert within.score > 0.5


def _brute_force(x, labels, k, classes=None):
    """Every point's same-label fraction of its k nearest other points, by full distances."""
    n = len(x)
    classes = np.zeros(n, int) if classes is None else classes
    d = ((x[:, None, :].astype(float) - x[None, :, :]) ** 2).sum(-1)
    d[np.arange(n), np.arange(n)] = np.inf
    d[classes[:, None] != classes[None, :]] = np.inf
    nearest = np.argsort(d, axis=1)[:, :k]
    purity = (labels[nearest] == labels[:, None]).mean(1)
    same_class = classes[:, None] == classes[None, :]
    n_c = same_class.sum(1)
    n_cg = (same_class & (labels[:, None] == labels[None, :])).sum(1)
    return purity, (n_cg - 1) / (n_c - 1)


def test_purity_equals_a_brute_force_computation():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 4)).astype(np.float32)
    labels = rng.choice(np.array(["a", "b", "c"]), 80, p=[0.5, 0.3, 0.2])
    score = knn_purity(x, labels, k=7)
    purity, expected = _brute_force(x, labels, 7)
    np.testing.assert_array_equal(score.query_index, np.arange(80))
    np.testing.assert_allclose(score.query_purity, purity)
    assert score.purity == pytest.approx(purity.mean())
    assert score.expected == pytest.approx(expected.mean())
    assert score.score == pytest.approx((purity.mean() - expected.mean()) / (1 - expected.mean()))
    for row in score.groups.itertuples():
        assert row.purity == pytest.approx(purity[labels == row.group].mean())

    classes = rng.choice(np.array(["x", "y"]), 80)
    within = knn_purity(x, labels, k=5, within=classes)
    purity, expected = _brute_force(x, labels, 5, np.unique(classes, return_inverse=True)[1])
    np.testing.assert_allclose(within.query_purity, purity)
    assert within.expected == pytest.approx(expected.mean())


def test_sampled_queries_keep_every_point_in_the_index():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    labels = rng.choice(np.array(["a", "b"]), 400)
    full = knn_purity(x, labels, k=6)
    sampled = knn_purity(x, labels, k=6, sample=50, random_state=3)
    assert sampled.n_queries == 50 and sampled.n_points == 400
    # Each sampled query's purity is its purity among all 400 points.
    np.testing.assert_allclose(sampled.query_purity, full.query_purity[sampled.query_index])


def test_unlabelled_patches_are_left_out_and_one_group_is_refused():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 3))
    labels = np.array(["a", "b", None] * 20, dtype=object)
    score = knn_purity(x, labels, k=4)
    assert score.n_unlabelled == 20 and score.n_points == 40
    assert set(score.query_index) <= set(np.flatnonzero(labels != None))  # noqa: E711
    with pytest.raises(PathvizError, match="site: one group only"):
        knn_purity(x, ["a"] * 60, column="site")
    with pytest.raises(PathvizError, match="every class holds a single site"):
        knn_purity(x, labels, within=labels, column="site", within_column="site")


def test_batch_space_reduces_wide_features_and_takes_umap_coordinates():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(200, 64)).astype(np.float32)
    points, name = batch_space(features, None)
    assert points.shape == (200, 50) and "PCA 64 -> 50" in name
    coords = rng.normal(size=(200, 2))
    points, name = batch_space(features, coords, "umap")
    assert points.shape == (200, 2) and name == "UMAP 2-D"
    with pytest.raises(PathvizError, match="--batch-space"):
        batch_space(features, coords, "pixels")


def test_pca_fitted_on_a_sample_spans_the_full_fit():
    from sklearn.decomposition import PCA

    from napari_pathviz.batch_effect import _pca

    rng = np.random.default_rng(6)
    basis = rng.normal(size=(5, 64))
    features = (rng.normal(size=(4000, 5)) * [9, 7, 5, 4, 3]) @ basis
    features = (features + rng.normal(size=(4000, 64)) * 0.3).astype(np.float32)
    sampled = _pca(features, 5, fit_rows=500)
    full = PCA(n_components=5).fit_transform(features)
    for j in range(5):  # the same components, up to sign
        assert abs(np.corrcoef(sampled[:, j], full[:, j])[0, 1]) > 0.99


def test_k_not_smaller_than_a_group_is_refused():
    """Two groups far apart: a real batch effect. With k at least the smaller group's size its
    patches cannot have k neighbours of their own, and with k >= n - 1 every patch is everyone's
    neighbour: the score was exactly 0.000, 'mixed as random'. Refused, naming --batch-k."""
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(0, 1, (12, 3)), rng.normal(50, 1, (30, 3))])
    site = np.array(["small"] * 12 + ["big"] * 30)
    assert knn_purity(x, site, k=11, column="site").score == pytest.approx(1.0)
    for k in (12, 41, 100):
        with pytest.raises(PathvizError, match=r"--batch-k \d+: site group 'small' has only 12"):
            knn_purity(x, site, k=k, column="site")
        with pytest.raises(PathvizError, match="at most 11"):
            check_k(k, site, column="site")
    # Within a class, the groups of that class count: 'small' has 6 patches in class 'a'.
    cls = np.array((["a", "b"] * 6) + ["a"] * 15 + ["b"] * 15)
    assert knn_purity(x, site, k=5, within=cls, column="site").score == pytest.approx(1.0)
    with pytest.raises(PathvizError, match="'small' within a has only 6 patches"):
        knn_purity(x, site, k=6, within=cls, column="site")
    check_k(5, site, cls, column="site")  # accepted: below every group of every class


def test_plot_embeddings_refuses_a_batch_k_above_a_group_before_the_umap(tmp_path, capsys):
    from napari_pathviz._demo import ensure_demo_data
    from napari_pathviz.cli import main

    patches = ensure_demo_data()["patches"]
    keys = pd.read_parquet(patches)[["ID", "x", "y", "patch_size"]]
    features = np.random.default_rng(0).normal(size=(len(keys), 8)).astype(np.float32)
    emb = tmp_path / "emb.parquet"
    pd.concat([keys, pd.DataFrame(features).add_prefix("feat_")], axis=1).to_parquet(emb)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["plot-embeddings", "-i", str(emb), "--patches", str(patches), "-o", str(out / "u.html")]
    smallest = pd.read_parquet(patches)["annotation"].value_counts().min()
    code = main([*argv, "--batch-score", "annotation", "--batch-k", str(smallest), "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "--batch-k" in errors[0] and "annotation group" in errors[0]
    assert "UMAP" not in err  # refused before the UMAP started
    assert list(out.iterdir()) == []
