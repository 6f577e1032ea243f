"""k-NN preservation (issue 21 item 4): the metric against a brute-force numpy computation, and
``pathviz plot-embeddings`` saying when its layout is sampled, reporting the figure beside
trustworthiness in its summary, and fitting every patch with --full-fit.

The CLI tests lower embedding_large's automatic threshold (200,000 patches) to 300 so that 600
patches take the sampled path in seconds; the console script (a fresh process) checks refusals.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from napari_pathviz import embedding_large
from napari_pathviz.cli import main
from napari_pathviz.embedding import embedding_quality, knn_preservation
from napari_pathviz.errors import PathvizError

N, DIMS, LOWERED = 600, 16, 300


def brute_force_preservation(features, layout, k, rows) -> float:
    """The definition written out: all pairwise distances in numpy, the point itself excluded."""

    def nearest(points):
        points = np.asarray(points, np.float64)
        d = ((points[rows, None, :] - points[None, :, :]) ** 2).sum(-1)
        d[np.arange(len(rows)), rows] = np.inf
        return np.argsort(d, axis=1, kind="stable")[:, :k]

    high, low = nearest(features), nearest(layout)
    kept = [len(set(a) & set(b)) for a, b in zip(high, low, strict=True)]
    return float(np.mean(kept) / k)  # integer counts first: the same float, summed exactly


def related_pair(n: int, seed: int = 1):
    """Features and a 2-D layout that keeps some of their structure (a noisy projection)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 4))
    layout = features[:, :2] + 0.2 * rng.normal(size=(n, 2))
    return features, layout


@pytest.mark.parametrize("k", [15, 5])
def test_knn_preservation_equals_brute_force(k):
    features, layout = related_pair(400)
    got = knn_preservation(features, layout, k=k)
    expected = brute_force_preservation(features, layout, k, np.arange(400))
    assert got == expected
    assert 0.1 < got < 0.9  # neither trivial end: the test can tell a wrong neighbour set


@pytest.mark.parametrize("k", [15, 5])
def test_knn_preservation_queries_a_subset_among_all_points(k):
    features, layout = related_pair(3000, seed=2)
    got = knn_preservation(features, layout, k=k, queries=500, seed=4)
    rows = np.sort(np.random.default_rng(4).choice(3000, size=500, replace=False))
    assert got == brute_force_preservation(features, layout, k, rows)
    # Neighbours among the 500 queries only would be another (larger) figure.
    assert got != brute_force_preservation(features[rows], layout[rows], k, np.arange(500))


def test_knn_preservation_ends():
    features, layout = related_pair(300)
    assert knn_preservation(features, features, k=15) == 1.0
    shuffled = layout[np.random.default_rng(0).permutation(300)]
    assert knn_preservation(features, shuffled, k=15) < 0.15  # chance: 15 / 299
    with pytest.raises(PathvizError, match="k must be between 1 and 299"):
        knn_preservation(features, layout, k=300)
    with pytest.raises(PathvizError, match="300 feature rows but 299 layout rows"):
        knn_preservation(features, layout[:-1])


def test_embedding_quality_reports_the_same_figure():
    features, layout = related_pair(1000, seed=3)
    q = embedding_quality(features, layout, k=15, sample=200, seed=0)
    rows = np.random.default_rng(0).choice(1000, size=200, replace=False)
    assert q["knn_preservation"] == brute_force_preservation(features, layout, 15, rows)


def run_main(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """600 patches of 16 features in 6 clusters, as an embeddings Parquet."""
    rng = np.random.default_rng(5)
    centers = rng.normal(0, 5, (6, DIMS))
    features = (centers[rng.integers(0, 6, N)] + rng.normal(size=(N, DIMS))).astype(np.float32)
    df = pd.DataFrame(features, columns=[str(j) for j in range(DIMS)])
    df.insert(0, "ID", "s1")
    df.insert(1, "x", (np.arange(N) % 30) * 64)
    df.insert(2, "y", (np.arange(N) // 30) * 64)
    df.insert(3, "patch_size", 64)
    path = tmp_path_factory.mktemp("cohort") / "emb.parquet"
    df.to_parquet(path)
    return path, features


def in_file_order(coords: pd.DataFrame) -> pd.DataFrame:
    """The written coordinates in the rows' order of the embeddings file (x, y give the row)."""
    row = coords["y"] // 64 * 30 + coords["x"] // 64
    return coords.set_index(row.to_numpy()).sort_index()[["umap_0", "umap_1"]]


@pytest.fixture(scope="module")
def runs(cohort, tmp_path_factory):
    """plot-embeddings on the 600 patches, with the sampling threshold lowered to 300: the
    automatic (sampled) layout and --full-fit, each with --summary and --quality."""
    path, _ = cohort
    out = tmp_path_factory.mktemp("runs")
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATHVIZ_CACHE_DIR", str(out / "cache"))
        mp.setattr(embedding_large, "FIT_SAMPLE_ABOVE", LOWERED)
        mp.setattr(embedding_large, "FIT_SAMPLE_SIZE", LOWERED)
        for name, extra in (("sampled", []), ("full", ["--full-fit"])):
            code, stdout, stderr = run_main(
                "plot-embeddings", "-i", path, "-o", out / f"{name}.html", "--components", "2", "-nn", "15",
                "--random-state", "0", "--quality", "--summary", out / f"{name}.json",
                "--coords-out", out / f"{name}.parquet", *extra,
            )  # fmt: skip
            assert code == 0, stderr
            results[name] = {
                "stdout": stdout,
                "stderr": stderr,
                "summary": json.loads((out / f"{name}.json").read_text()),
                "coords": in_file_order(pd.read_parquet(out / f"{name}.parquet")),
            }
    return results


def test_sampled_layout_says_so_and_reports_both_figures(runs, cohort):
    _, features = cohort
    run = runs["sampled"]
    summary = run["summary"]
    assert summary["sampled"] is True and summary["sample_size"] == LOWERED
    assert summary["patches"] == N and summary["k"] == 15
    coords = run["coords"].to_numpy()
    rows = np.random.default_rng(0).choice(N, size=N, replace=False)  # embedding_quality's rows
    expected = brute_force_preservation(features, coords, 15, rows)
    assert summary["knn_preservation"] == pytest.approx(expected, abs=1e-12)
    assert 0.5 < summary["trustworthiness"] <= 1.0
    assert f"the UMAP layout is sampled: fitted on {LOWERED:,} of {N:,} patches" in run["stderr"]
    assert "--full-fit fits every patch" in run["stderr"]
    line = run["stdout"].splitlines()[-2]
    assert f"k-NN preservation: {summary['knn_preservation']:.4f}" in line
    assert line.endswith(f"sampled layout, fitted on {LOWERED} of {N} patches")


def test_full_fit_fits_every_patch_as_umap_learn_does(runs, cohort):
    _, features = cohort
    run = runs["full"]
    assert run["summary"]["sampled"] is False and run["summary"]["sample_size"] is None
    assert "layout is sampled" not in run["stderr"]
    import umap

    plain = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, random_state=0)
    expected = plain.fit_transform(features)
    np.testing.assert_array_equal(run["coords"].to_numpy(), expected.astype(np.float32))
    assert not np.array_equal(runs["sampled"]["coords"].to_numpy(), run["coords"].to_numpy())


def test_full_fit_with_a_fit_sample_is_refused(cohort, tmp_path):
    path, _ = cohort
    out = tmp_path / "u.html"
    result = run_cli(
        "plot-embeddings", "-i", path, "-o", out, "--full-fit", "--fit-sample", "300",
        "--summary", tmp_path / "s.json",
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--full-fit" in lines[0] and "--fit-sample 300" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["input", "txt"])
def test_summary_never_replaces_the_input_nor_takes_another_format(cohort, tmp_path, target):
    path, _ = cohort
    before = path.read_bytes()
    summary = path if target == "input" else tmp_path / "s.txt"
    result = run_cli("plot-embeddings", "-i", path, "-o", tmp_path / "u.html", "--summary", summary)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--summary" in lines[0], result.stderr
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == []
