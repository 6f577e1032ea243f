"""The cohort's data: slides tables (paths, slide folders, bad tables), cohort embeddings from
every source (extract cohort folder, per-slide Parquets, one Parquet, PathFlowAI's pickle) and
the patches linked to their slides."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from napari_pathviz.cohort import SUMMARY_COLUMNS
from napari_pathviz.cohort_data import (
    attach_slides,
    load_cohort_embeddings,
    read_slides_table,
)
from napari_pathviz.errors import PathvizError, PathvizWarning

D = 6


def _slide_rows(slide_id: str, n: int, seed: int, with_id: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "x": np.arange(n) * 64,
            "y": np.full(n, 128),
            "patch_size": 64,
            "y_pred": rng.choice(["tumour", "normal"], n),
            "prob_tumour": rng.random(n),
        }
    )
    if with_id:
        df.insert(0, "ID", slide_id)
    feats = rng.normal(size=(n, D)).astype(np.float32)
    return pd.concat([df, pd.DataFrame(feats, columns=[f"feat_{j}" for j in range(D)])], axis=1)


@pytest.fixture
def three_slides():
    return {
        "s1": _slide_rows("s1", 5, 1),
        "s2": _slide_rows("s2", 7, 2),
        "007": _slide_rows("007", 3, 3),
    }


def _features(df: pd.DataFrame) -> np.ndarray:
    return df[[f"feat_{j}" for j in range(D)]].to_numpy(np.float32)


# --------------------------------------------------------------------------- slides table


def test_slides_table_paths_relative_absolute_and_from_a_folder(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "c.svs").write_bytes(b"")
    (slides / "d.zarr").mkdir()
    table = tmp_path / "tables" / "slides.csv"
    table.parent.mkdir()
    table.write_text(
        "ID,path,site,diagnosis\n"
        "a,../slides/a.svs,A,tumour\n"
        f"b,{tmp_path}/elsewhere/b.tif,B,normal\n"
        "c,,A,normal\n"
        "d,,B,tumour\n"
    )
    st = read_slides_table(table, slides_dir=slides)
    assert st.ids == ["a", "b", "c", "d"]
    assert st.frame["path"].tolist() == [
        str(slides / "a.svs"),
        str(tmp_path / "elsewhere" / "b.tif"),
        str(slides / "c.svs"),
        str(slides / "d.zarr"),
    ]
    assert st.slide_columns == ["site", "diagnosis"]
    assert st.path_of("c") == str(slides / "c.svs") and st.path_of("zz") is None


def test_slides_table_without_path_column_resolves_by_id_and_counts_the_missing(tmp_path):
    (tmp_path / "007.svs").write_bytes(b"")
    table = tmp_path / "slides.parquet"
    pd.DataFrame({"ID": ["007", "008"], "site": ["A", "B"]}).to_parquet(table)
    with pytest.warns(PathvizWarning, match=r"1 of 2 slides have no file in .*\(008\)"):
        st = read_slides_table(table, slides_dir=tmp_path)
    assert st.frame["path"].tolist() == [str(tmp_path / "007.svs"), None]


def test_ids_stay_text(tmp_path):
    table = tmp_path / "slides.csv"
    table.write_text("ID,path\n007,a.svs\n10,b.svs\n")
    assert read_slides_table(table).ids == ["007", "10"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("slide,path\na,a.svs\n", "no ID column"),
        ("ID,site\na,A\n", "no path column"),
        ("ID,path\na,a.svs\nb,b.svs\na,c.svs\nb,d.svs\n", "duplicate slide IDs: a, b"),
        ("ID,path\na,a.svs\n,b.svs\n", "row 2: empty ID"),
    ],
)
def test_bad_slides_tables_are_one_line_naming_the_file(tmp_path, content, fragment):
    table = tmp_path / "slides.csv"
    table.write_text(content)
    with pytest.raises(PathvizError, match=fragment) as err:
        read_slides_table(table)
    assert str(table) in str(err.value) and "\n" not in str(err.value)


def test_two_files_of_one_id_in_the_slides_folder_are_named(tmp_path):
    (tmp_path / "a.svs").write_bytes(b"")
    (tmp_path / "a.tif").write_bytes(b"")
    table = tmp_path / "slides.csv"
    table.write_text("ID\na\n")
    with pytest.raises(PathvizError, match=r"two slides of ID 'a' \(a.svs, a.tif\)"):
        read_slides_table(table, slides_dir=tmp_path)


# --------------------------------------------------------------------------- embeddings


def test_extract_cohort_folder(tmp_path, three_slides):
    rows = []
    for slide_id, df in three_slides.items():
        df.to_parquet(tmp_path / f"{slide_id}-0123abcd.parquet")
        rows.append(
            [
                f"/data/{slide_id}.svs",
                slide_id,
                f"{slide_id}-0123abcd.parquet",
                "done",
                0,
                len(df),
                1.0,
                None,
            ]
        )
    rows.append(["/data/bad.svs", "bad", None, "failed", None, None, 0.1, "bad.svs: boom"])
    pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).to_csv(tmp_path / "summary.csv", index=False)
    with pytest.warns(PathvizWarning, match="1 of 4 slides failed"):
        ce = load_cohort_embeddings(tmp_path, columns=["y_pred"])
    expected = pd.concat(three_slides.values(), ignore_index=True)
    assert ce.features.dtype == np.float32 and ce.features.flags.c_contiguous
    np.testing.assert_array_equal(ce.features, _features(expected))
    assert list(ce.rows.columns) == ["ID", "x", "y", "patch_size", "y_pred"]  # projected
    assert ce.rows["ID"].tolist() == expected["ID"].tolist()
    assert ce.rows["y_pred"].tolist() == expected["y_pred"].tolist()


def test_folder_of_per_slide_parquets_takes_the_id_from_the_name(tmp_path, three_slides):
    for slide_id, df in three_slides.items():
        df.drop(columns="ID").to_parquet(tmp_path / f"{slide_id}.parquet")
    ce = load_cohort_embeddings(tmp_path)
    order = sorted(three_slides)  # files are read in name order
    expected = pd.concat([three_slides[s] for s in order], ignore_index=True)
    np.testing.assert_array_equal(ce.features, _features(expected))
    assert ce.rows["ID"].tolist() == expected["ID"].tolist()
    assert "prob_tumour" in ce.rows.columns and "feat_0" not in ce.rows.columns


def test_one_parquet_with_id_drops_non_finite_rows(tmp_path, three_slides):
    df = pd.concat(three_slides.values(), ignore_index=True)
    df.loc[3, "feat_2"] = np.nan
    df.loc[9, "feat_0"] = np.inf
    df.to_parquet(tmp_path / "all.parquet")
    with pytest.warns(PathvizWarning, match="dropped 2 patches with NaN or infinite"):
        ce = load_cohort_embeddings(tmp_path / "all.parquet")
    keep = np.ones(len(df), bool)
    keep[[3, 9]] = False
    np.testing.assert_array_equal(ce.features, _features(df)[keep])
    assert ce.rows["x"].tolist() == df["x"][keep].tolist()


def test_parquet_without_id_and_mismatched_widths_are_refused(tmp_path, three_slides):
    one = tmp_path / "one.parquet"
    three_slides["s1"].drop(columns="ID").to_parquet(one)
    with pytest.raises(PathvizError, match="one.parquet: no ID column"):
        load_cohort_embeddings(one)
    folder = tmp_path / "cohort"
    folder.mkdir()
    three_slides["s1"].to_parquet(folder / "a.parquet")
    three_slides["s2"].drop(columns="feat_5").to_parquet(folder / "b.parquet")
    with pytest.raises(PathvizError, match="b.parquet: 5 features, but .*a.parquet has 6"):
        load_cohort_embeddings(folder)
    with pytest.raises(PathvizError, match="no column nothing"):
        load_cohort_embeddings(folder / "a.parquet", columns=["nothing"])


def test_pathflowai_pickle(tmp_path, three_slides):
    import torch

    df = pd.concat(three_slides.values(), ignore_index=True)
    emb = pd.DataFrame(_features(df), columns=list(range(D)))
    emb["ID"] = df["ID"]
    info = df[["ID", "x", "y", "patch_size", "y_pred"]]
    path = tmp_path / "embeddings.pkl"
    torch.save({"embeddings": emb, "patch_info": info}, path)
    with pytest.raises(PathvizError, match="pickle"):
        load_cohort_embeddings(path)
    ce = load_cohort_embeddings(path, trust_pickle=True)
    np.testing.assert_array_equal(ce.features, _features(df))
    assert ce.rows["ID"].tolist() == df["ID"].tolist()


# --------------------------------------------------------------------------- linking


def test_attach_slides_links_counts_and_warns(tmp_path, three_slides):
    table = tmp_path / "slides.csv"
    table.write_text("ID,path,site,y_pred\ns1,s1.svs,A,x\n007,,B,y\nlonely,l.svs,A,z\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PathvizWarning)  # 007 has no path: counted below
        st = read_slides_table(table)
    rows = pd.concat(three_slides.values(), ignore_index=True).drop(
        columns=[f"feat_{j}" for j in range(D)]
    )
    with pytest.warns(PathvizWarning) as caught:
        linked, report = attach_slides(rows, st)
    lines = [str(w.message) for w in caught]
    assert any(
        "7 of 15 patches, from 1 slides, have an ID the slides table lacks (s2)" in m for m in lines
    )
    assert any("1 slides have no patches in the embeddings (lonely)" in m for m in lines)
    assert report.renamed == {"y_pred": "slide_y_pred"}
    assert len(linked) == len(rows) and linked["y_pred"].tolist() == rows["y_pred"].tolist()
    site = linked["site"].tolist()
    assert site[:5] == ["A"] * 5 and all(pd.isna(s) for s in site[5:12]) and site[12:] == ["B"] * 3
    # s1: in the table with a file; s2: not in the table; 007: in it, but no file known.
    assert linked["linkable"].tolist() == [True] * 5 + [False] * 10
    assert report.n_linked == 5 and report.n_patches_missing == 7 and report.no_path_ids == ["007"]


# --------------------------------------------------------------------------- the CLI


def test_plot_embeddings_over_a_cohort_with_slides_and_batch_score(tmp_path, monkeypatch):
    """A folder of per-slide Parquets, a slides table missing one slide, -a naming a
    slide-level column, the batch score over all patches and within diagnosis."""
    import io
    import re
    from contextlib import redirect_stderr, redirect_stdout

    from napari_pathviz._numba_cache import numba_cache_dir
    from napari_pathviz.cli import main

    # umap-learn's compiled kernels from the user's cache (minutes to compile afresh on a
    # shared 2-core machine); the UMAP results in a fresh one.
    monkeypatch.setenv("NUMBA_CACHE_DIR", numba_cache_dir())
    monkeypatch.setenv("PATHVIZ_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cohort"
    folder.mkdir()
    sites = {"s1": "A", "s2": "A", "s3": "B", "s4": "B", "s5": None}
    for i, (slide_id, site) in enumerate(sites.items()):
        df = _slide_rows(slide_id, 40, i)
        if site == "B":  # the site shift, in the first feature
            df["feat_0"] += 6.0
        df.to_parquet(folder / f"{slide_id}.parquet")
    table = tmp_path / "slides.csv"
    table.write_text(
        "ID,path,site,diagnosis\n"
        "s1,s1.svs,A,tumour\ns2,s2.svs,A,normal\ns3,s3.svs,B,tumour\ns4,s4.svs,B,normal\n"
    )
    out, err = io.StringIO(), io.StringIO()
    args = ["plot-embeddings", "-i", folder, "-o", tmp_path / "u.html", "--slides", table]
    args += ["-a", "site", "--batch-score", "site", "--batch-within", "diagnosis"]
    args += ["--components", "2", "--random-state", "0", "--progress", "off"]
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    assert code == 0, err.getvalue()
    assert "40 of 200 patches, from 1 slides, have an ID the slides table lacks (s5)" in (
        err.getvalue()
    )
    lines = out.getvalue().splitlines()
    overall = next(line for line in lines if line.startswith("batch effect of site: score"))
    within = next(line for line in lines if line.startswith("batch effect of site, within"))
    score = float(re.search(r"score (-?[\d.]+)", overall).group(1))
    assert score > 0.5 and "160 of 160 patches" in overall  # s5's patches have no site
    assert (
        "within diagnosis" in within
        and float(re.search(r"score (-?[\d.]+)", within).group(1)) > 0.5
    )
    html = (tmp_path / "u.html").read_text()
    names = re.findall(r'"name":"([^"]+)"', html)
    assert {"A", "B", "(none)"} <= set(names)  # one trace (legend entry) per site
    assert "s3 x=0 y=128 size=64" in html and f"batch score site {score:.2f}" in html


def test_large_row_groups_are_read_a_few_columns_at_a_time(tmp_path, monkeypatch):
    """A file written as one big row group is decoded in column blocks (a budget of 600 values
    here: 5 of the 12 feature columns per read), with the same matrix and the NaN rows dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import napari_pathviz.cohort_data as cohort_data

    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 12)).astype(np.float32)
    features[[7, 50], 3] = np.nan
    table = {"ID": ["s1"] * 60 + ["s2"] * 60, "x": np.arange(120) * 64, "y": np.zeros(120)}
    table.update({"patch_size": np.full(120, 64), "label": np.arange(120) % 3})
    table.update({str(j): features[:, j] for j in range(12)})
    path = tmp_path / "one_group.parquet"
    pq.write_table(pa.table(table), path, row_group_size=1000)
    assert pq.ParquetFile(path).num_row_groups == 1
    reads = []
    original = pq.ParquetFile.read_row_group

    def counted(self, i, columns=None, **kwargs):
        reads.append(len(columns))
        return original(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(cohort_data, "_COLUMN_VALUES", 600)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    with pytest.warns(PathvizWarning, match="2"):
        cohort = load_cohort_embeddings(path)
    keep = np.ones(120, bool)
    keep[[7, 50]] = False
    np.testing.assert_array_equal(cohort.features, features[keep])
    assert cohort.rows["label"].tolist() == (np.arange(120) % 3)[keep].tolist()
    assert reads == [5, 5, 2]
