"""Every long step shows progress: UMAP's sub-steps, the demo's steps, the CLI's steps and the
GUI demo loading into an open viewer (issue 11, item 4), and the CLI's help and one-line refusals
(item 8)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_pathviz._umap_stages import STAGES
from napari_pathviz.embedding import UMAPParams, _import_umap, pca_reduce, umap_embed
from napari_pathviz.store import ResultsStore


def _stage_names(reports: list[tuple[float, str]]) -> list[str]:
    """The stage of each report ("epochs: 12/500" -> "epochs"), consecutive repeats merged."""
    names: list[str] = []
    for _, stage in reports:
        name = stage.split(":")[0]
        if not names or names[-1] != name:
            names.append(name)
    return names


def test_umap_reports_its_five_stages_and_equals_plain_umap(tmp_path):
    """Above 4,096 patches umap-learn searches neighbours by NN-descent: that search runs as its
    own stage, and the layout is still umap-learn's, bit for bit."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (6, 60))
    features = (centres[rng.integers(0, 6, 4200)] + rng.normal(0, 1, (4200, 60))).astype(
        np.float32
    )
    reports: list[tuple[float, str]] = []
    coords = umap_embed(
        features,
        UMAPParams(random_state=0),
        knn="nndescent",
        store=ResultsStore(tmp_path / "store"),
        use_cache=False,
        progress=lambda fraction, stage: reports.append((fraction, stage)),
    )
    assert _stage_names(reports) == [*STAGES, "done"]
    assert reports[0] == (0.0, "PCA: 60 to 50 dimensions")
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    epochs = [s for _, s in reports if s.startswith("epochs")]
    assert epochs[0] == "epochs: 0/500" and epochs[-1] == "epochs: 500/500"
    assert len(epochs) > 3  # the bar moves during the epochs, not only at their ends

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _import_umap().UMAP(random_state=0).fit_transform(pca_reduce(features, 50, 0))
    np.testing.assert_array_equal(coords, plain.astype(np.float32))


def test_small_umap_names_its_stages_in_order(tmp_path):
    """Under 4,096 patches umap-learn's exact neighbours and fuzzy set are one step."""
    rng = np.random.default_rng(1)
    reports: list[tuple[float, str]] = []
    umap_embed(
        rng.normal(size=(300, 8)).astype(np.float32),
        UMAPParams(n_neighbors=10, random_state=0),
        knn="nndescent",
        store=ResultsStore(tmp_path / "store"),
        progress=lambda fraction, stage: reports.append((fraction, stage)),
    )
    assert _stage_names(reports) == ["nearest neighbours", "spectral init", "epochs", "done"]
    assert [f for f, _ in reports] == sorted(f for f, _ in reports)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
