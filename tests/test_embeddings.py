"""Embeddings: every reader, the join to a patch table, background removal, UMAP (cached, with PCA
and the torch k-NN path), its quality, the image mosaic and the plot's colours.

UMAP runs are few and small: numba compiles umap-learn once per process (~20 s here), after
which a run on 600 points takes well under a second.
"""

from __future__ import annotations

import pickle
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_pathviz.embedding import (
    EmbeddingSet,
    JoinReport,
    UMAPParams,
    embedding_quality,
    join_embeddings,
    load_embeddings,
    pca_dimensions,
    remove_background,
    torch_knn,
    umap_embed,
)
from napari_pathviz.embedding_plot import colour_values, plot_embeddings_html
from napari_pathviz.errors import Cancelled, PathvizError, PathvizWarning
from napari_pathviz.io.embeddings import RawEmbeddings, read_embeddings
from napari_pathviz.mosaic import find_slides, umap_mosaic
from napari_pathviz.patches import PatchTable
from napari_pathviz.store import ResultsStore

N_FEATURES = 12


def patch_rows(n: int, slide_id: str = "case01", size: int = 64) -> pd.DataFrame:
    """n patches on a grid, with an annotation and a coverage column."""
    idx = np.arange(n)
    return pd.DataFrame(
        {
            "ID": slide_id,
            "x": (idx % 5) * size,
            "y": (idx // 5) * size,
            "patch_size": size,
            "annotation": np.where(idx % 2 == 0, "tumor", "stroma"),
            "tumor": np.round(idx / max(n - 1, 1), 3),
        }
    )


def features_for(n: int, d: int = N_FEATURES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


# --- readers ------------------------------------------------------------------------------------


def test_parquet_with_feat_columns_in_numeric_order(tmp_path):
    rows, feats = patch_rows(7), features_for(7)
    table = rows.copy()
    # Written out of order: feat_10 must come after feat_9, not after feat_1.
    for j in [11, 3, 10, 0, 1, 2, 4, 5, 6, 7, 8, 9]:
        table[f"feat_{j}"] = feats[:, j]
    path = tmp_path / "emb.parquet"
    table.to_parquet(path, index=False)
    raw = read_embeddings(path)
    assert raw.features.dtype == np.float32 and raw.features.shape == (7, N_FEATURES)
    np.testing.assert_array_equal(raw.features, feats)
    pd.testing.assert_frame_equal(raw.rows, rows)
    assert raw.source == str(path)


def test_csv_with_integer_named_columns(tmp_path):
    rows, feats = patch_rows(6), features_for(6)
    table = pd.concat([rows, pd.DataFrame(feats)], axis=1)  # columns 0, 1, ... -> "0", "1", ...
    path = tmp_path / "emb.csv"
    table.to_csv(path, index=False)
    assert pd.read_csv(path).columns[-1] == str(N_FEATURES - 1)
    raw = read_embeddings(path)
    np.testing.assert_allclose(raw.features, feats, rtol=1e-6)
    assert list(raw.rows.columns) == list(rows.columns)
    assert raw.rows["x"].tolist() == rows["x"].tolist()


def test_npy_with_key_table(tmp_path):
    rows, feats = patch_rows(9), features_for(9)
    np.save(tmp_path / "emb.npy", feats.astype(np.float64))
    rows.to_csv(tmp_path / "keys.csv", index=False)
    raw = read_embeddings(tmp_path / "emb.npy", keys=tmp_path / "keys.csv")
    assert raw.features.dtype == np.float32
    np.testing.assert_array_equal(raw.features, feats)
    assert raw.rows[["x", "y", "patch_size"]].to_numpy().tolist() == (
        rows[["x", "y", "patch_size"]].to_numpy().tolist()
    )


def test_npz_with_key_arrays(tmp_path):
    rows, feats = patch_rows(8), features_for(8)
    path = tmp_path / "emb.npz"
    np.savez(
        path,
        embeddings=feats,
        ID=rows["ID"].to_numpy().astype(str),
        x=rows["x"].to_numpy(),
        y=rows["y"].to_numpy(),
        patch_size=rows["patch_size"].to_numpy(),
    )
    raw = read_embeddings(path)
    assert list(raw.rows.columns) == ["ID", "x", "y", "patch_size"]
    assert raw.rows["ID"].tolist() == ["case01"] * 8
    assert raw.rows["y"].tolist() == rows["y"].tolist()
    np.testing.assert_array_equal(raw.features, feats)


def test_npz_named_features_needs_keys(tmp_path):
    path = tmp_path / "bare.npz"
    np.savez(path, features=features_for(4))
    with pytest.raises(PathvizError, match=r"bare\.npz: a bare array has no patch keys.*--keys"):
        read_embeddings(path)
    np.savez(tmp_path / "other.npz", vectors=features_for(4))
    with pytest.raises(PathvizError, match="no 'embeddings' or 'features' array"):
        read_embeddings(tmp_path / "other.npz")


def write_pathflowai_pickle(path: Path, info: pd.DataFrame, feats: np.ndarray, with_info=True):
    """PathFlowAI's embeddings.pkl: integer-named feature columns then 'ID'; each row labelled by
    every patch_info column as "col:value" lines; patch_info beside it."""
    import torch

    emb = pd.DataFrame(feats)
    emb["ID"] = info["ID"].to_numpy()
    emb.index = ["\n".join(f"{c}:{v}" for c, v in row.items()) for _, row in info.iterrows()]
    data = {"embeddings": emb}
    if with_info is True:
        data["patch_info"] = info
    elif with_info is not False:
        data["patch_info"] = with_info
    torch.save(data, path)
    return path


def pathflowai_info(n: int, slide_id: str = "case01") -> pd.DataFrame:
    info = patch_rows(n, slide_id)
    info.insert(0, "index", np.arange(n) + 100)  # PathFlowAI keeps pandas' index as a column
    return info


def test_pathflowai_pickle_with_patch_info(tmp_path):
    info, feats = pathflowai_info(10), features_for(10)
    path = write_pathflowai_pickle(tmp_path / "embeddings.pkl", info, feats)
    raw = read_embeddings(path, trust_pickle=True)
    np.testing.assert_array_equal(raw.features, feats)
    pd.testing.assert_frame_equal(raw.rows, info.drop(columns="index"))


def test_pathflowai_pickle_without_patch_info_parses_the_index(tmp_path):
    info, feats = pathflowai_info(10), features_for(10)
    path = write_pathflowai_pickle(tmp_path / "embeddings.pkl", info, feats, with_info=False)
    raw = read_embeddings(path, trust_pickle=True)
    np.testing.assert_array_equal(raw.features, feats)
    expected = info.drop(columns="index")
    assert set(raw.rows.columns) == set(expected.columns)
    for col in expected.columns:
        assert raw.rows[col].tolist() == expected[col].tolist(), col
    # A patch_info that does not match the rows is not trusted either: the index is parsed.
    path = write_pathflowai_pickle(
        tmp_path / "short.pkl", info, feats, with_info=info.iloc[:-1].assign(x=-1)
    )
    raw = read_embeddings(path, trust_pickle=True)
    assert raw.rows["x"].tolist() == info["x"].tolist()


def test_pathflowai_pickle_keeps_a_numeric_looking_slide_id(tmp_path):
    info, feats = pathflowai_info(5, slide_id="001"), features_for(5)
    path = write_pathflowai_pickle(tmp_path / "embeddings.pkl", info, feats, with_info=False)
    raw = read_embeddings(path, trust_pickle=True)
    assert raw.rows["ID"].astype(str).tolist() == ["001"] * 5


class _WritesAFile:
    """Unpickling this creates a file: proof of whether a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "was_unpickled"
    path = tmp_path / "embeddings.pkl"
    path.write_bytes(pickle.dumps(_WritesAFile(marker)))
    with pytest.raises(PathvizError) as err:
        read_embeddings(path)
    message = str(err.value)
    assert message.startswith(f"{path}: is a pickle") and "--trust-pickle" in message
    assert "\n" not in message
    assert not marker.exists()
    # Trusted but not PathFlowAI's dict: a clear error, not a crash.
    import torch

    torch.save([1, 2, 3], tmp_path / "list.pkl")
    with pytest.raises(PathvizError, match=r"list\.pkl: expected PathFlowAI's dict"):
        read_embeddings(tmp_path / "list.pkl", trust_pickle=True)


def test_plain_pickle_of_the_same_dict_is_read(tmp_path):
    info, feats = pathflowai_info(4), features_for(4)
    emb = pd.DataFrame(feats)
    emb["ID"] = info["ID"].to_numpy()
    path = tmp_path / "embeddings.pkl"
    pd.to_pickle({"embeddings": emb, "patch_info": info}, path)
    raw = read_embeddings(path, trust_pickle=True)
    np.testing.assert_array_equal(raw.features, feats)


@pytest.mark.parametrize("shape", [(12,), (3, 4, 5)])
def test_npy_of_wrong_dimensions(tmp_path, shape):
    path = tmp_path / "emb.npy"
    np.save(path, np.zeros(shape, np.float32))
    patch_rows(3).to_csv(tmp_path / "keys.csv", index=False)
    with pytest.raises(
        PathvizError, match=r"emb\.npy: embeddings must be a 2-D .*" + re.escape(str(shape))
    ):
        read_embeddings(path, keys=tmp_path / "keys.csv")


def test_npy_needs_keys_and_matching_rows(tmp_path):
    path = tmp_path / "emb.npy"
    np.save(path, features_for(5))
    with pytest.raises(PathvizError, match=r"emb\.npy: a bare array has no patch keys.*--keys"):
        read_embeddings(path)
    patch_rows(4).to_csv(tmp_path / "keys.csv", index=False)
    with pytest.raises(PathvizError, match=r"emb\.npy: 5 embedding rows but 4 key rows in .*keys"):
        read_embeddings(path, keys=tmp_path / "keys.csv")


def test_object_npy_is_not_unpickled(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(PathvizError, match=r"objects\.npy: cannot read array without unpickling"):
        read_embeddings(path, keys=tmp_path / "unused.csv")


def test_non_numeric_feature_names_row_and_column(tmp_path):
    path = tmp_path / "emb.csv"
    path.write_text(
        "ID,x,y,patch_size,0,1\ns,0,0,64,0.5,1.5\ns,64,0,64,0.1,0.2\ns,128,0,64,2,abc\n"
    )
    with pytest.raises(PathvizError) as err:
        read_embeddings(path)
    assert str(err.value) == f"{path}: row 2: feature 1 is not a number ('abc')"


def test_unreadable_inputs(tmp_path):
    with pytest.raises(PathvizError, match=r"missing\.parquet: no such file or directory"):
        read_embeddings(tmp_path / "missing.parquet")
    (tmp_path / "emb.txt").write_text("1 2 3\n")
    with pytest.raises(PathvizError, match=r"emb\.txt: not an embeddings format"):
        read_embeddings(tmp_path / "emb.txt")
    patch_rows(3).to_csv(tmp_path / "nofeat.csv", index=False)
    with pytest.raises(PathvizError, match=r"nofeat\.csv: no feature columns"):
        read_embeddings(tmp_path / "nofeat.csv")


# --- join ---------------------------------------------------------------------------------------


def test_join_report_and_attribute_order(tmp_path):
    keys = pd.DataFrame(
        {
            "ID": "s1",
            "x": [0, 64, 128, 192, 256, 64, 320, 999 * 64],
            "y": 0,
            "patch_size": 64,
        }
    )
    feats = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)
    feats[2, 1] = np.nan
    feats[3, 0] = np.inf
    # Row 5 repeats row 1's key (first kept); row 7 is no patch in the table.
    table = keys.copy()
    for j in range(4):
        table[f"feat_{j}"] = feats[:, j]
    path = tmp_path / "emb.parquet"
    table.to_parquet(path, index=False)
    # The patch table: the four matching patches in another order, and two without embedding.
    patch_x = [320, 256, 0, 64, 640, 704]
    patches = PatchTable.from_frame(
        pd.DataFrame(
            {"ID": "s1", "x": patch_x, "y": 0, "patch_size": 64, "tumor": np.array(patch_x) / 1000}
        ),
        "patches.csv",
    )
    with pytest.warns(PathvizWarning) as record:
        es = load_embeddings(path, patches=patches)
    report = es.report
    assert (report.n_read, report.n_nonfinite, report.n_duplicates) == (8, 2, 1)
    assert (report.n_unmatched_embeddings, report.n_unmatched_patches, report.n_kept) == (1, 2, 4)
    messages = [str(w.message) for w in record]
    assert messages == report.messages()
    assert any("dropped 2 rows with NaN or inf" in m for m in messages)
    assert any("dropped 1 rows with a duplicate patch key" in m for m in messages)
    assert any("1 embedding rows match no patch" in m for m in messages)
    assert any("2 patches have no embedding" in m for m in messages)
    assert all(m.startswith(str(path)) for m in messages)
    # Embeddings' order, features and attributes aligned row by row.
    assert es.table.df["x"].tolist() == [0, 64, 256, 320]
    np.testing.assert_array_equal(es.features, feats[[0, 1, 4, 6]])
    np.testing.assert_allclose(es.table.df["tumor"], es.table.df["x"] / 1000)
    assert len(es) == 4


def test_join_without_patch_table_and_without_patch_size(tmp_path):
    # A key table without patch_size takes the patch table's one size.
    keys = patch_rows(6).drop(columns=["patch_size", "annotation", "tumor"])
    np.save(tmp_path / "emb.npy", features_for(6))
    keys.to_csv(tmp_path / "keys.csv", index=False)
    raw = read_embeddings(tmp_path / "emb.npy", keys=tmp_path / "keys.csv")
    with pytest.raises(PathvizError, match=r"no patch_size column"):
        join_embeddings(raw)
    es = join_embeddings(raw, PatchTable.from_frame(patch_rows(6), "p.csv"))
    assert es.table.df["patch_size"].tolist() == [64] * 6
    assert es.table.df["annotation"].tolist() == patch_rows(6)["annotation"].tolist()
    assert es.report.messages() == []


def test_join_by_slide_and_errors():
    rows = pd.concat([patch_rows(4, "a"), patch_rows(3, "b")], ignore_index=True)
    raw = RawEmbeddings(rows, features_for(7), "emb.parquet")
    es = join_embeddings(raw, slide_id="b")
    assert es.table.df["ID"].tolist() == ["b"] * 3
    np.testing.assert_array_equal(es.features, raw.features[4:])
    with pytest.raises(PathvizError, match="emb.parquet: no embeddings for slide ID 'c'"):
        join_embeddings(raw, slide_id="c")
    other = PatchTable.from_frame(patch_rows(4, "elsewhere"), "p.csv")
    with pytest.raises(PathvizError, match="emb.parquet: no embedding row matches a patch"):
        join_embeddings(raw, other)
    no_keys = RawEmbeddings(rows.drop(columns="y"), raw.features, "emb.parquet")
    with pytest.raises(
        PathvizError, match=r"emb.parquet: embeddings have no patch key column\(s\) y"
    ):
        join_embeddings(no_keys)


# --- background removal -------------------------------------------------------------------------


@pytest.fixture
def coverage_set() -> EmbeddingSet:
    rows = patch_rows(8)
    rows["background"] = [0.0, 0.04, 0.05, 0.06, 0.5, 0.95, 1.0, np.nan]
    return join_embeddings(RawEmbeddings(rows, features_for(8), "emb.parquet"))


@pytest.mark.parametrize(
    ("max_area", "kept"),
    [(0.95, [0, 1, 2]), (0.5, [0, 1, 2, 3, 4]), (0.0, [0, 1, 2, 3, 4, 5, 6]), (1.0, [0])],
)
def test_remove_background_keeps_coverage_at_most_one_minus_max_area(coverage_set, max_area, kept):
    es = remove_background(coverage_set, "background", max_area)
    np.testing.assert_array_equal(es.features, coverage_set.features[kept])
    assert es.table.df["x"].tolist() == coverage_set.table.df["x"].iloc[kept].tolist()
    assert (es.table.df["background"] <= 1 - max_area).all()


def test_remove_background_errors(coverage_set):
    with pytest.raises(PathvizError, match="--remove_background_annotation: no column 'glass'"):
        remove_background(coverage_set, "glass", 0.5)
    for bad in (-0.1, 1.5):
        with pytest.raises(PathvizError, match="--max_background_area must be between 0 and 1"):
            remove_background(coverage_set, "background", bad)
    all_glass = coverage_set.subset(np.array([False] * 6 + [True, False]))
    with pytest.raises(PathvizError, match="keeps no patch"):
        remove_background(all_glass, "background", 0.5)


# --- UMAP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """UMAP's results (and numba's cache) go to a temporary folder, not the user's cache."""
    path = tmp_path_factory.mktemp("pathviz-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATHVIZ_CACHE_DIR", str(path))
        mp.setenv("NUMBA_CACHE_DIR", str(path / "numba"))  # else set for good on first import
        yield path


@pytest.fixture(scope="module")
def clusters() -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated clusters of 200 points in 60 dimensions, each a noisy 2-D sheet."""
    rng = np.random.default_rng(7)
    d = 60
    blocks = []
    for _ in range(3):
        centre = rng.normal(size=d)
        centre *= 12 / np.linalg.norm(centre)
        sheet = rng.uniform(-1, 1, (200, 2)) @ (rng.normal(size=(2, d)) / np.sqrt(2))
        blocks.append(centre + sheet + rng.normal(0, 0.05, (200, d)))
    return np.concatenate(blocks).astype(np.float32), np.repeat([0, 1, 2], 200)


@pytest.fixture(scope="module")
def first_umap(cache_dir, clusters, tmp_path_factory):
    store = ResultsStore(tmp_path_factory.mktemp("store"))
    stages = []
    coords = umap_embed(
        clusters[0],
        UMAPParams(n_neighbors=15, random_state=0),
        knn="nndescent",
        store=store,
        progress=lambda fraction, stage: stages.append((fraction, stage)),
    )
    return coords, stages, store


def knn_accuracy(coords: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(5), coords, labels, cv=5).mean())


def test_umap_separates_clusters(first_umap, clusters):
    from sklearn.metrics import silhouette_score

    coords, stages, _ = first_umap
    assert coords.shape == (600, 2) and coords.dtype == np.float32
    assert np.isfinite(coords).all()
    assert knn_accuracy(coords, clusters[1]) >= 0.95
    assert silhouette_score(coords, clusters[1]) > 0.5


def test_umap_reports_pca_and_progress(first_umap):
    _, stages, _ = first_umap
    names = [s for _, s in stages]
    assert names[0] == "PCA: 60 to 50 dimensions"  # 60 features > 50: reduced first
    assert any(n.startswith("epochs: ") for n in names)
    assert names[-1] == "done" and stages[-1][0] == 1.0
    fractions = [f for f, _ in stages]
    assert fractions == sorted(fractions)


def test_pca_dimensions():
    assert pca_dimensions(UMAPParams(), 64) == 50
    assert pca_dimensions(UMAPParams(), 50) is None
    assert pca_dimensions(UMAPParams(), 12) is None
    assert pca_dimensions(UMAPParams(pca=10), 64) == 10
    assert pca_dimensions(UMAPParams(pca=100), 64) == 64
    for off in (None, 0, "off"):
        assert pca_dimensions(UMAPParams(pca=off), 64) is None


def test_umap_cache_returns_the_same_coordinates(first_umap, clusters):
    coords, _, store = first_umap
    files = list((store.root / "umap").glob("*.npy"))
    assert any(np.array_equal(np.load(f), coords) for f in files)
    stages = []
    start = time.perf_counter()
    again = umap_embed(
        clusters[0],
        UMAPParams(n_neighbors=15, random_state=0),
        knn="nndescent",
        store=store,
        progress=lambda fraction, stage: stages.append(stage),
    )
    assert time.perf_counter() - start < 1.0
    assert np.array_equal(again, coords)
    assert stages == ["loaded from cache"]


def test_umap_parameters_are_part_of_the_key(first_umap, clusters):
    _, _, store = first_umap
    before = {p.name for p in (store.root / "umap").glob("*.npy")}
    coords = umap_embed(
        clusters[0], UMAPParams(n_neighbors=10, random_state=0), knn="nndescent", store=store
    )
    after = {p.name for p in (store.root / "umap").glob("*.npy")}
    assert len(after - before) == 1
    np.testing.assert_array_equal(np.load(store.root / "umap" / (after - before).pop()), coords)


def test_torch_knn_path_separates_clusters(first_umap, clusters):
    _, _, store = first_umap
    before = {p.name for p in (store.root / "umap").glob("*.npy")}
    stages = []
    coords = umap_embed(
        clusters[0],
        UMAPParams(n_neighbors=15, random_state=0),
        knn="torch",
        store=store,
        progress=lambda fraction, stage: stages.append(stage),
    )
    assert "nearest neighbours: exact, torch, 15 each" in stages
    # Same parameters, another k-NN backend: its own cache entry.
    assert len({p.name for p in (store.root / "umap").glob("*.npy")} - before) == 1
    assert knn_accuracy(coords, clusters[1]) >= 0.95


def test_embedding_quality_tells_good_from_random(first_umap, clusters):
    coords, _, _ = first_umap
    good = embedding_quality(clusters[0], coords)
    random = embedding_quality(
        clusters[0], np.random.default_rng(0).normal(size=coords.shape).astype(np.float32)
    )
    for q in (good, random):
        assert 0.0 <= q["trustworthiness"] <= 1.0 and 0.0 <= q["knn_preservation"] <= 1.0
        assert (q["k"], q["sample"]) == (15, 600)
    assert good["trustworthiness"] > 0.9
    assert random["trustworthiness"] < 0.7
    assert good["knn_preservation"] > random["knn_preservation"] + 0.3
    assert embedding_quality(clusters[0], coords, sample=100)["sample"] == 100


def test_embedding_quality_on_few_patches():
    rng = np.random.default_rng(0)
    q = embedding_quality(rng.normal(size=(20, 5)), rng.normal(size=(20, 2)))
    assert 0.0 <= q["trustworthiness"] <= 1.0 and q["k"] < 10
    with pytest.raises(PathvizError, match="needs at least 6 patches"):
        embedding_quality(rng.normal(size=(4, 5)), rng.normal(size=(4, 2)))


def test_umap_cancellation(cache_dir, clusters, tmp_path):
    store = ResultsStore(tmp_path / "store")
    with pytest.raises(Cancelled):
        umap_embed(
            clusters[0][:300], UMAPParams(n_neighbors=10), store=store, cancelled=lambda: True
        )
    # Asked to stop only once the epochs run: the epoch loop stops too.
    stages = []

    def cancelled() -> bool:
        return any(stage.startswith("epochs") for stage in stages)

    with pytest.raises(Cancelled):
        umap_embed(
            clusters[0][:300],
            UMAPParams(n_neighbors=10, random_state=1),
            knn="nndescent",
            store=store,
            cancelled=cancelled,
            progress=lambda fraction, stage: stages.append(stage),
        )
    assert "spectral init" in stages and "done" not in stages
    assert [s for s in stages if s.startswith("epochs")] == ["epochs: 0/500"]
    assert not (store.root / "umap").exists()  # nothing half-done is cached
    # tqdm's process-wide lock is free again: another thread (the next UMAP in the GUI) can
    # take it; a cancel that left it held made every later bar wait forever.
    import threading

    from tqdm import tqdm

    taken = []

    def take() -> None:
        lock = tqdm.get_lock()
        got = lock.locks[0].acquire(timeout=5)
        taken.append(got)
        if got:
            lock.locks[0].release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    assert taken == [True]


@pytest.mark.parametrize(
    ("params", "knn", "message"),
    [
        (UMAPParams(n_components=4), "auto", "--components must be 2 or 3, got 4"),
        (UMAPParams(n_neighbors=20), "auto", "needs more than 20 patches; 20 given"),
        (UMAPParams(n_neighbors=1), "auto", "--n_neighbors must be at least 2"),
        (UMAPParams(min_dist=1.5), "auto", "--min_dist must be between 0 and 1"),
        (UMAPParams(n_neighbors=5), "faiss", "knn must be 'auto', 'torch' or 'nndescent'"),
        (UMAPParams(n_neighbors=5, metric="cosine"), "torch", "euclidean metric only"),
    ],
)
def test_umap_bad_parameters(tmp_path, params, knn, message):
    with pytest.raises(PathvizError, match=message):
        umap_embed(features_for(20), params, knn=knn, store=ResultsStore(tmp_path))
    assert not (tmp_path / "umap").exists()


@pytest.mark.parametrize("batch", [4096, 64])
def test_torch_knn_matches_exact_neighbours(batch):
    from sklearn.neighbors import NearestNeighbors

    data = np.random.default_rng(3).normal(size=(300, 8)).astype(np.float32)
    indices, distances, index = torch_knn(data, 6, batch=batch)
    assert index is None and indices.shape == distances.shape == (300, 6)
    exact_d, exact_i = NearestNeighbors(n_neighbors=6).fit(data).kneighbors(data)
    assert (indices[:, 0] == np.arange(300)).all() and (distances[:, 0] == 0).all()
    np.testing.assert_array_equal(indices, exact_i)
    np.testing.assert_allclose(distances, exact_d, rtol=1e-3, atol=1e-3)


# --- mosaic -------------------------------------------------------------------------------------

COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 200, 40),
    "blue": (30, 40, 210),
    "yellow": (230, 220, 30),
}
# Level-0 (x, y) of each colour's 64-pixel patch on a 256 x 256 grey slide.
PLACES = {"red": (0, 0), "green": (128, 0), "blue": (0, 128), "yellow": (128, 128)}


@pytest.fixture(scope="module")
def colour_slides(tmp_path_factory) -> Path:
    """A folder holding case7.zarr: four solid patches of distinct colours on grey."""
    import dask.array as da

    from napari_pathviz.io.pyramid import lazy_levels
    from napari_pathviz.io.zarr_io import write_ome_zarr

    image = np.full((256, 256, 3), 128, np.uint8)
    for name, (x, y) in PLACES.items():
        image[y : y + 64, x : x + 64] = COLOURS[name]
    folder = tmp_path_factory.mktemp("slides")
    levels = lazy_levels(da.from_array(image, chunks=(128, 128, 3)), min_size=64)
    write_ome_zarr(levels, folder / "case7.zarr", n_native=1, chunk=128)
    return folder


def colour_table(names, **columns) -> PatchTable:
    df = pd.DataFrame(
        {
            "ID": "case7",
            "x": [PLACES[n][0] for n in names],
            "y": [PLACES[n][1] for n in names],
            "patch_size": 64,
            "name": names,
            **columns,
        }
    )
    return PatchTable.from_frame(df, "colours.csv")


def test_mosaic_draws_each_patch_at_its_coordinates(colour_slides):
    slides = find_slides(colour_slides, ["case7"])
    names = ["red", "green", "blue", "yellow"]
    # red: largest UMAP x; green: largest y; blue: smallest of both; yellow: the middle.
    coords = np.array([[10, 5], [0, 10], [0, 0], [5, 5]], np.float32)
    mosaic = umap_mosaic(slides, colour_table(names), coords, zoom=0.5, canvas=256)
    image, t = mosaic.image, mosaic.thumb
    assert image.shape == (256, 256, 3) and t == 32
    expected = {"red": (112, 224), "green": (0, 0), "blue": (224, 0), "yellow": (112, 112)}
    assert mosaic.origins.tolist() == [list(expected[n]) for n in names]
    for name, (r, c) in expected.items():
        np.testing.assert_array_equal(
            image[r : r + t, c : c + t], np.broadcast_to(COLOURS[name], (t, t, 3)), err_msg=name
        )
    # The right edge holds the patch with the largest UMAP x; empty canvas is white.
    np.testing.assert_array_equal(image[112:144, -1], np.broadcast_to(COLOURS["red"], (32, 3)))
    assert (image[0:32, 224:256] == 255).all() and (image[150:220, 40:100] == 255).all()


@pytest.mark.parametrize(
    ("sort", "on_top", "order"),
    [
        ({}, "green", [0, 1, 2]),
        ({"sort_col": "score"}, "red", [1, 0, 2]),
        ({"sort_col": "score", "sort_mode": "desc"}, "green", [2, 0, 1]),
    ],
)
def test_mosaic_sort_order_sets_what_is_on_top(colour_slides, sort, on_top, order):
    slides = find_slides(colour_slides, ["case7"])
    table = colour_table(["red", "green", "blue"], score=[2.0, 1.0, 3.0])
    coords = np.array([[0, 0], [0, 0], [1, 1]], np.float32)  # red and green overlap
    mosaic = umap_mosaic(slides, table, coords, zoom=0.5, canvas=128, **sort)
    assert mosaic.order.tolist() == order
    r, c = mosaic.origins[0]
    assert (r, c) == (96, 0)
    np.testing.assert_array_equal(mosaic.image[r + 16, c + 16], COLOURS[on_top])


def test_find_slides(colour_slides, tmp_path):
    slides = find_slides(colour_slides, ["case7", "case7"])
    assert list(slides) == ["case7"] and slides["case7"].shape == (256, 256, 3)
    with pytest.raises(PathvizError) as err:
        find_slides(colour_slides, ["case7", "case9"])
    assert str(err.value).startswith(f"{colour_slides}: no slide file for ID 'case9'")
    # One slide serves the table's one ID, whatever its file is called.
    assert list(find_slides(colour_slides / "case7.zarr", ["renamed"])) == ["renamed"]
    with pytest.raises(PathvizError, match="one slide given but the patches come from 2 slides"):
        find_slides(colour_slides / "case7.zarr", ["a", "b"])
    with pytest.raises(PathvizError, match="nowhere: no such file or directory"):
        find_slides(tmp_path / "nowhere", ["case7"])


def test_mosaic_errors(colour_slides):
    slides = find_slides(colour_slides, ["case7"])
    table = colour_table(["red", "green"])
    coords = np.array([[0, 0], [1, 1]], np.float32)
    with pytest.raises(PathvizError, match="2-D coordinates for 2 patches, got shape \\(3, 2\\)"):
        umap_mosaic(slides, table, np.zeros((3, 2)))
    with pytest.raises(PathvizError, match="--zoom must be in"):
        umap_mosaic(slides, table, coords, zoom=5)
    with pytest.raises(PathvizError, match="do not fit a 64 px canvas"):
        umap_mosaic(slides, table, coords, zoom=1, canvas=64)
    with pytest.raises(PathvizError, match="--sort_col: no column 'nope'"):
        umap_mosaic(slides, table, coords, sort_col="nope")
    with pytest.raises(PathvizError, match="no slide for patch ID 'case7'"):
        umap_mosaic({}, table, coords)


# --- plot colours -------------------------------------------------------------------------------


@pytest.fixture
def attributes() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ID": [3, 3, 4],
            "x": [0, 64, 0],
            "y": 0,
            "patch_size": 64,
            "tumor": [0.1, 0.9, 0.5],
            "stroma": [0.9, 0.05, np.nan],
            "normal": [0.0, 0.05, 0.3],
            "label": ["a", "b", "a"],
        }
    )


def test_colour_values(attributes):
    values, categorical, title = colour_values(attributes, None)
    assert values.tolist() == ["3", "3", "4"] and categorical and title == "ID"
    assert colour_values(attributes, [])[2] == "ID"
    values, categorical, title = colour_values(attributes, ["tumor"])
    assert values.tolist() == [0.1, 0.9, 0.5] and not categorical and title == "tumor"
    assert colour_values(attributes, ["label"])[1] is True
    values, categorical, title = colour_values(attributes, ["tumor", "stroma", "normal"])
    assert values.tolist() == ["stroma", "tumor", "tumor"]  # NaN never wins
    assert categorical and title == "argmax(tumor, stroma, normal)"
    with pytest.raises(PathvizError, match=r"-a/--annotations: no column\(s\) nope, gone"):
        colour_values(attributes, ["tumor", "nope", "gone"])


def test_plot_3d_with_a_colorbar(attributes, tmp_path):
    coords = np.arange(9, dtype=np.float32).reshape(3, 3)
    out = plot_embeddings_html(attributes, coords, tmp_path / "sub" / "u.html", ["tumor"])
    html = out.read_text()
    assert '"type":"scatter3d"' in html and '"colorbar"' in html
    assert "3 x=64 y=0 size=64" in html and "UMAP of patch embeddings (3 patches)" in html


def test_join_report_without_drops_has_no_messages():
    assert JoinReport("emb.csv", n_read=3, n_kept=3).messages() == []
