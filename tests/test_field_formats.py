"""Other tools' patch and feature files: CLAM, TRIDENT and WSInfer HDF5, CLAM/TRIDENT .pt
tensors, WSInfer's CSV and GeoJSON. Each file is written here the way its tool writes it
(dataset names, dtypes and attributes read from the tools' sources)."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest

from napari_pathviz.cli import main
from napari_pathviz.embedding import load_embeddings
from napari_pathviz.errors import PathvizError
from napari_pathviz.io.embeddings import read_embeddings
from napari_pathviz.patches import load_patches

# A 3 x 4 grid of 512-pixel level-0 patches (256 px at CLAM's patch_level 1, downsample 2).
GRID = np.array([(x, y) for y in (0, 512, 1024) for x in (0, 512, 1024, 1536)], dtype=np.int32)


def write_clam_patches(path, coords=GRID, name=None):
    """As CLAM's WholeSlideImage.process_contour + save_hdf5 write patches/{slide}.h5."""
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("coords", data=coords, maxshape=(None, 2), chunks=(4, 2))
        dset.attrs.update(
            {
                "patch_size": 256,
                "patch_level": 1,
                "downsample": np.array([2.0, 2.0]),
                "downsampled_level_dim": np.array([1000, 800]),
                "level_dim": np.array([1000, 800]),
                "name": name or path.stem,
                "save_path": str(path.parent),
            }
        )
    return path


def write_clam_features(path, coords, features):
    """As CLAM's extract_features_fp.py writes h5_files/{slide}.h5: no attributes at all."""
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features.astype(np.float32))
        f.create_dataset("coords", data=coords.astype(np.int32))
    return path


def write_trident_coords(path, coords, *, width=2048, height=1536, features=None):
    """As TRIDENT's IO.coords_to_h5 (20x patches of 256 on a 40x slide: 512 at level 0)."""
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("coords", data=coords.astype(np.int64))
        dset.attrs.update(
            {
                "patch_size": 256,
                "patch_size_level0": 512,
                "level0_magnification": 40,
                "target_magnification": 20,
                "overlap": 0,
                "name": "slideA",
                "savetodir": "None",
                "level0_width": width,
                "level0_height": height,
            }
        )
        if features is not None:
            f.create_dataset("features", data=features.astype(np.float32))
    return path


@pytest.fixture
def features():
    return np.random.default_rng(0).normal(size=(len(GRID), 6)).astype(np.float32)


def test_clam_patch_file_is_a_table_in_level0_pixels(tmp_path):
    table = load_patches(write_clam_patches(tmp_path / "slideA.h5"))
    df = table.df
    assert list(df["ID"].unique()) == ["slideA"]
    assert df["patch_size"].unique().tolist() == [512]  # 256 at level 1 x downsample 2
    np.testing.assert_array_equal(df[["x", "y"]].to_numpy(), GRID)


def test_trident_and_wsinfer_patch_sizes(tmp_path):
    trident = load_patches(write_trident_coords(tmp_path / "t.h5", GRID))
    assert trident.df["patch_size"].unique().tolist() == [512]
    with h5py.File(tmp_path / "w.h5", "w") as f:  # WSInfer's patchlib
        dset = f.create_dataset("/coords", data=GRID, compression="gzip")
        dset.attrs.update({"patch_size": 350, "patch_level": 0, "patch_spacing_um_px": 0.5})
    assert load_patches(tmp_path / "w.h5").df["patch_size"].unique().tolist() == [350]


def test_clam_features_join_the_patches_by_coordinates(tmp_path, features):
    patches = load_patches(write_clam_patches(tmp_path / "slideA.h5"))
    order = np.random.default_rng(1).permutation(len(GRID))  # features in another order
    feats = tmp_path / "h5_files"
    feats.mkdir()
    write_clam_features(feats / "slideA.h5", GRID[order], features[order])
    es = load_embeddings(feats / "slideA.h5", patches=patches)
    assert len(es) == len(GRID) and es.report.n_unmatched_patches == 0
    for i, row in es.table.df.iterrows():  # each vector sits beside its own patch
        k = int(np.flatnonzero((GRID[:, 0] == row["x"]) & (GRID[:, 1] == row["y"]))[0])
        np.testing.assert_array_equal(es.features[i], features[k])
    assert es.table.df["patch_size"].unique().tolist() == [512]


def test_pt_tensor_takes_its_coordinates_from_the_h5(tmp_path, features):
    import torch

    coords = write_clam_patches(tmp_path / "slideA.h5")
    torch.save(torch.from_numpy(features), tmp_path / "slideA.pt")
    raw = read_embeddings(tmp_path / "slideA.pt", keys=coords)
    np.testing.assert_array_equal(raw.features, features)
    np.testing.assert_array_equal(raw.rows[["x", "y"]].to_numpy(), GRID)
    with pytest.raises(PathvizError, match=r"slideA\.pt.*--keys"):
        read_embeddings(tmp_path / "slideA.pt")
    short = write_clam_patches(tmp_path / "short.h5", coords=GRID[:5])
    with pytest.raises(PathvizError, match=r"slideA\.pt: 12 feature rows but 5 coordinates"):
        read_embeddings(tmp_path / "slideA.pt", keys=short)


def test_trident_pt_holds_a_numpy_array(tmp_path, features):
    """TRIDENT's ``.pt`` is ``torch.save`` of a numpy array: read as data, not as code."""
    import torch

    coords = write_trident_coords(tmp_path / "slideA_patches.h5", GRID)
    torch.save(features.astype(np.float32), tmp_path / "slideA.pt")
    raw = read_embeddings(tmp_path / "slideA.pt", keys=coords)
    np.testing.assert_array_equal(raw.features, features)
    assert set(raw.rows["ID"]) == {"slideA"} and set(raw.rows["patch_size"]) == {512}
    # An object the pickle names is not data: left to the trusted-pickle path, refused there.
    torch.save({"features": features, "note": object()}, tmp_path / "objects.pt")
    with pytest.raises(PathvizError, match=r"objects\.pt: is a pickle"):
        read_embeddings(tmp_path / "objects.pt", keys=coords)


def test_trident_feature_file_carries_its_own_patch_size(tmp_path, features):
    path = write_trident_coords(tmp_path / "slideA.h5", GRID, features=features)
    es = load_embeddings(path)
    assert es.table.df["patch_size"].unique().tolist() == [512]
    np.testing.assert_array_equal(es.features, features)


def test_h5_without_coords_is_refused_naming_the_file(tmp_path, features):
    with h5py.File(tmp_path / "nocoords.h5", "w") as f:
        f.create_dataset("features", data=features)
    with pytest.raises(PathvizError, match=r"nocoords\.h5: no 'coords' dataset") as err:
        load_patches(tmp_path / "nocoords.h5")
    assert "\n" not in str(err.value)
    with pytest.raises(PathvizError, match=r"nocoords\.h5: no 'coords'"):
        read_embeddings(tmp_path / "nocoords.h5")


def test_features_of_another_length_are_refused(tmp_path, features):
    path = write_clam_features(tmp_path / "bad.h5", GRID, features[:-2])
    with pytest.raises(PathvizError, match=r"bad\.h5: 'features' has 10 rows but 'coords' has 12"):
        read_embeddings(path)


def test_coordinates_outside_the_slide_are_refused(tmp_path, pyramidal_tiff):
    # The test slide is 1400 x 1000: the grid's right and bottom patches lie outside it.
    path = write_clam_patches(tmp_path / "slideA.h5")
    with pytest.raises(PathvizError, match=r"slideA\.h5: row 2: .*outside the slide"):
        load_patches(path, slide_shape=(1000, 1400))
    # TRIDENT records the slide's size: refused without the slide.
    with pytest.raises(PathvizError, match=r"small\.h5: row 3: .*level0_width"):
        load_patches(write_trident_coords(tmp_path / "small.h5", GRID, width=1800))
    code = main(["annotate", str(path), "--slide", str(pyramidal_tiff)] + _annotate_args(tmp_path))
    assert code == 2


def _annotate_args(tmp_path):
    geo = tmp_path / "a.geojson"
    square = [[[0, 0], [600, 0], [600, 600], [0, 600], [0, 0]]]
    geo.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": square},
                        "properties": {"objectType": "annotation"},
                    }
                ],
            }
        )
    )
    return ["--geojson", str(geo), "-o", str(tmp_path / "out.csv")]


def test_clam_level_without_downsample_asks_for_the_size(tmp_path):
    with h5py.File(tmp_path / "lvl.h5", "w") as f:
        f.create_dataset("coords", data=GRID).attrs.update({"patch_size": 256, "patch_level": 2})
    with pytest.raises(PathvizError, match=r"lvl\.h5: .*patch_level 2.*--patch-size"):
        load_patches(tmp_path / "lvl.h5")


# --- WSInfer ---------------------------------------------------------------------------------

WSINFER_CSV = """minx,miny,width,height,prob_Other,prob_Tumor
0,0,350,350,0.95,0.05
350,0,350,350,0.20,0.80
0,350,350,350,0.60,0.40
"""


def test_wsinfer_csv_is_a_patch_table(tmp_path):
    (tmp_path / "slideB.csv").write_text(WSINFER_CSV)
    df = load_patches(tmp_path / "slideB.csv").df
    assert df[["x", "y", "patch_size"]].to_numpy().tolist() == [
        [0, 0, 350],
        [350, 0, 350],
        [0, 350, 350],
    ]
    assert df["prob_Tumor"].tolist() == [0.05, 0.80, 0.40]
    assert "height" not in df.columns and set(df["ID"]) == {"slideB"}


def test_wsinfer_csv_with_oblong_patches_is_refused(tmp_path):
    (tmp_path / "oblong.csv").write_text(WSINFER_CSV.replace("350,0,350,350", "350,0,350,300"))
    with pytest.raises(PathvizError, match=r"oblong\.csv: row 1: width 350 differs from height"):
        load_patches(tmp_path / "oblong.csv")


def _wsinfer_geojson(csv_text: str) -> dict:
    """As wsinfer/write_geojson.py turns its CSV into tiles."""
    df = pd.read_csv(pd.io.common.StringIO(csv_text))
    features = []
    for row in df.itertuples():
        maxx, maxy = row.minx + row.width, row.miny + row.height
        ring = [[maxx, row.miny], [maxx, maxy], [row.minx, maxy], [row.minx, row.miny]]
        features.append(
            {
                "type": "Feature",
                "id": f"tile-{row.Index}",
                "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]},
                "properties": {
                    "isLocked": True,
                    "measurements": {"prob_Other": row.prob_Other, "prob_Tumor": row.prob_Tumor},
                    "objectType": "tile",
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def test_wsinfer_geojson_reads_like_its_csv(tmp_path):
    (tmp_path / "slideB.csv").write_text(WSINFER_CSV)
    (tmp_path / "slideB.geojson").write_text(json.dumps(_wsinfer_geojson(WSINFER_CSV)))
    from_csv = load_patches(tmp_path / "slideB.csv").df
    from_geojson = load_patches(tmp_path / "slideB.geojson").df
    columns = ["ID", "x", "y", "patch_size", "prob_Other", "prob_Tumor"]
    pd.testing.assert_frame_equal(from_geojson[columns], from_csv[columns], check_dtype=False)


def test_cli_plots_clam_features(tmp_path, features):
    """``pathviz plot-embeddings`` takes a CLAM feature .h5 with its patch file, unchanged."""
    patches = write_clam_patches(tmp_path / "slideA.h5")
    feats = tmp_path / "h5_files"
    feats.mkdir()
    write_clam_features(feats / "slideA.h5", GRID, features)
    out = tmp_path / "coords.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [
                "plot-embeddings",
                "-i",
                str(feats / "slideA.h5"),
                "--patches",
                str(patches),
                "-o",
                str(tmp_path / "umap.html"),
                "--coords-out",
                str(out),
                "-nn",
                "3",
                "--random-state",
                "0",
            ]
        )
    assert code == 0
    coords = pd.read_csv(out)
    assert len(coords) == len(GRID) and set(coords["patch_size"]) == {512}


def test_wsinfer_csv_and_clam_h5_draw_on_the_slide(tmp_path, pyramidal_tiff):
    """WSInfer's {slide}.csv is a predictions table and CLAM's {slide}.h5 a patch table for the
    commands that draw on the slide, unchanged (the test slide is "slide", 1400 x 1000)."""
    (tmp_path / "slide.csv").write_text(WSINFER_CSV)
    png = tmp_path / "pred.png"
    argv = ["plot-predictions", "--slide", str(pyramidal_tiff), "-p", str(tmp_path / "slide.csv")]
    assert main([*argv, "-o", str(png)]) == 0 and png.stat().st_size > 0
    patches = write_clam_patches(
        tmp_path / "slide.h5", coords=GRID[(GRID[:, 0] < 800) & (GRID[:, 1] == 0)]
    )
    out = tmp_path / "render.png"
    assert main(["render", str(pyramidal_tiff), "--patches", str(patches), "-o", str(out)]) == 0
    assert out.stat().st_size > 0
