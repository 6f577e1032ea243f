"""The files the hostile-input suite feeds to ``pathviz``: one good project (the demo slide, its
patch table, embeddings, the demo model) and, beside it, every kind of broken, mismatched or
hostile file a user can hand us. Built once per test module; no test may change any of them."""

from __future__ import annotations

import json
import pickle
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd


def build_workspace(root: Path) -> dict[str, str]:
    """Writes the workspace under ``root`` and returns placeholder name -> path."""
    from napari_pathviz._demo import ensure_demo_data

    demo = ensure_demo_data(root / "demo")
    paths: dict[str, Path] = {"slide": demo["slide"], "patches": demo["patches"]}
    table = pd.read_parquet(demo["patches"])
    paths.update(_tables(root, table))
    paths.update(_slides(root))
    paths.update(_embeddings(root, table))
    paths.update(_models(root))
    paths.update(_misc(root))
    paths.update(_field_files(root))
    return {name: str(path) for name, path in paths.items()}


def _tables(root: Path, table: pd.DataFrame) -> dict[str, Path]:
    t = root / "tables"
    t.mkdir()
    out = {}

    def csv(name: str, frame: pd.DataFrame) -> None:
        out[name] = t / f"{name}.csv"
        frame.to_csv(out[name], index=False)

    csv("csv", table)
    csv("no_xy", table.drop(columns=["x"]))
    neg = table.copy()
    neg.loc[3, "x"] = -64
    csv("negative", neg)
    csv("fractional", table.assign(x=table["x"].astype(float) + 0.5))
    csv("text_coords", table.assign(x="left"))
    far = table.copy()
    far.loc[5, "x"] = 10**7
    csv("outside", far)
    csv("other_slide", table.assign(ID="another_slide"))
    csv("header_only", table.iloc[:0])
    csv("one_row", table.iloc[:1])
    csv("predictions", table.assign(prob_tumour=np.linspace(0, 1, len(table))))
    csv("mixed_sizes", table.assign(patch_size=np.where(np.arange(len(table)) % 2, 64, 32)))
    out["garbage_parquet"] = t / "garbage.parquet"
    out["garbage_parquet"].write_text("this is not parquet\n")
    out["db"] = t / "patch_info.db"
    with sqlite3.connect(out["db"]) as con:
        table.to_sql("64", con, index=True)
    return out


def _slides(root: Path) -> dict[str, Path]:
    import tifffile
    import zarr

    s = root / "slides"
    s.mkdir()
    out = {"empty_dir": s / "empty_dir", "not_a_slide": s / "scan.svs"}
    out["empty_dir"].mkdir()
    out["not_a_slide"].write_bytes(b"II*\x00 not really a tiff" * 10)
    out["zero"] = s / "zero.zarr"
    zarr.create_array(str(out["zero"]), shape=(0, 0, 3), chunks=(1, 1, 3), dtype="uint8")
    out["huge"] = s / "huge.zarr"
    zarr.create_array(
        str(out["huge"]), shape=(10**9, 10**9, 3), chunks=(1024, 1024, 3), dtype="uint8"
    )
    image = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    out["strips"] = s / "strips.tif"
    tifffile.imwrite(out["strips"], image, photometric="rgb")
    out["zero_tile"] = s / "zero_tile.tif"
    tifffile.imwrite(out["zero_tile"], image, tile=(256, 256), photometric="rgb")
    with tifffile.TiffFile(out["zero_tile"], mode="r+b") as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        counts = list(tag.value)
        counts[1] = 0
        tag.overwrite(counts)
    out["missing_chunk"] = _small_ome_zarr(s / "missing_chunk.ome.zarr", image)
    _level0_chunks(out["missing_chunk"])[0].unlink()
    out["corrupt_chunk"] = _small_ome_zarr(s / "corrupt_chunk.ome.zarr", image)
    _level0_chunks(out["corrupt_chunk"])[0].write_bytes(b"\x00garbage" * 7)
    return out


def _small_ome_zarr(path: Path, image: np.ndarray) -> Path:
    import dask.array as da

    from napari_pathviz.io.pyramid import lazy_levels
    from napari_pathviz.io.zarr_io import write_ome_zarr

    levels = lazy_levels(da.from_array(image, chunks=(256, 256, 3)), min_size=200)
    return Path(write_ome_zarr(levels, path, n_native=1, mpp=0.5, chunk=256))


def _level0_chunks(path: Path) -> list[Path]:
    names = {".zarray", ".zattrs", ".zgroup", "zarr.json", ".zmetadata"}
    return sorted(p for p in (path / "0").rglob("*") if p.is_file() and p.name not in names)


def _embeddings(root: Path, table: pd.DataFrame) -> dict[str, Path]:
    e = root / "embeddings"
    e.mkdir()
    rng = np.random.default_rng(1)
    keys = table[["ID", "x", "y", "patch_size"]].reset_index(drop=True)
    features = rng.normal(size=(len(table), 16)).astype(np.float32)
    frame = pd.concat([keys, pd.DataFrame(features).add_prefix("feat_")], axis=1)
    out = {name: e / f"{name}.parquet" for name in ("emb", "huge_values", "all_nan", "no_feat")}
    frame.to_parquet(out["emb"])
    frame.assign(**{f"feat_{j}": features[:, j] * 1e38 for j in range(16)}).to_parquet(
        out["huge_values"]
    )
    frame.assign(**{f"feat_{j}": np.nan for j in range(16)}).to_parquet(out["all_nan"])
    keys.to_parquet(out["no_feat"])
    out["text_feat"] = e / "text_feat.csv"
    frame.assign(feat_3="high").to_csv(out["text_feat"], index=False)
    out["npy"] = e / "emb.npy"
    np.save(out["npy"], features)
    out["object_npz"] = e / "object.npz"
    np.savez(out["object_npz"], features=np.array([[1, "a"], [2, None]], dtype=object))
    out["ragged_npz"] = e / "ragged.npz"
    np.savez(
        out["ragged_npz"],
        features=features[:10],
        ID=np.array(["demo_ihc"] * 5),
        x=np.arange(5),
        y=np.arange(5),
        patch_size=np.full(5, 64),
    )
    out["pkl"] = e / "embeddings.pkl"
    out["pkl"].write_bytes(pickle.dumps({"embeddings": frame, "patch_info": keys}))
    out["existing_html"] = e / "existing.html"
    out["existing_html"].write_text("<html>an earlier result</html>")
    return out


def _models(root: Path) -> dict[str, Path]:
    from importlib import resources

    import torch

    import zoo
    from napari_pathviz._demo_model import build_demo_model

    m = root / "models"
    m.mkdir()
    out = {"weights": m / "demo_weights.pt"}
    shutil.copyfile(resources.files("napari_pathviz") / "data" / "demo_model.pt", out["weights"])
    model = build_demo_model().eval()
    out["garbage_model"] = m / "garbage.pt"
    out["garbage_model"].write_bytes(np.random.default_rng(2).bytes(4096))
    out["pickled_model"] = m / "whole_model.pt"  # a whole pickled module: code, to be trusted
    torch.save(zoo.plain_maxpool_cnn(), out["pickled_model"])
    out["scripted_model"] = m / "scripted.pt"
    torch.jit.save(torch.jit.script(model), out["scripted_model"])
    out["wrong_keys"] = m / "wrong_keys.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, out["wrong_keys"])
    # Cards naming code that is not a registered architecture (PIL.__main__ prints a report
    # when imported): refused by name, nothing imported.
    out["foreign_card"] = m / "foreign_card.json"
    out["foreign_card"].write_text(json.dumps({"factory": "PIL.__main__:Net"}))
    stage = {"factory": "napari_pathviz.mil:GatedAttentionMIL", "weights": "demo_weights.pt"}
    out["foreign_two_stage"] = m / "foreign_two_stage.json"
    out["foreign_two_stage"].write_text(
        json.dumps({"encoder": {**stage, "factory": "PIL.__main__:Net"}, "head": stage})
    )
    return out


def _misc(root: Path) -> dict[str, Path]:
    from PIL import Image

    x = root / "misc"
    x.mkdir()
    out = {"bad_npy": x / "bad_background.npy", "png": x / "picture.png"}
    np.save(out["bad_npy"], np.zeros((3, 10, 10), dtype=np.float32))
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(out["png"])
    out["existing_png"] = x / "existing.png"
    shutil.copyfile(out["png"], out["existing_png"])
    out["not_json"] = x / "kwargs.txt"
    out["not_json"].write_text("{n_classes: 3")
    return out


def _field_files(root: Path) -> dict[str, Path]:
    """Other tools' files gone wrong: CLAM/TRIDENT HDF5, WSInfer CSV, GeoJSON."""
    import json

    import h5py

    d = root / "field"
    d.mkdir()
    out = {name: d / f"{name}.h5" for name in ("h5_nocoords", "h5_mismatch", "h5_outside")}
    coords = np.array([[0, 0], [64, 0], [0, 64]], dtype=np.int32)
    with h5py.File(out["h5_nocoords"], "w") as f:
        f.create_dataset("features", data=np.zeros((3, 4), dtype=np.float32))
    with h5py.File(out["h5_mismatch"], "w") as f:
        f.create_dataset("features", data=np.zeros((2, 4), dtype=np.float32))
        f.create_dataset("coords", data=coords)
    with h5py.File(out["h5_outside"], "w") as f:  # the demo slide's patches, one far outside
        dset = f.create_dataset("coords", data=coords + np.array([[0, 0], [0, 0], [10**6, 0]]))
        dset.attrs.update({"patch_size": 64, "patch_level": 0, "name": "demo_ihc"})
    out["h5_hollow"] = d / "h5_hollow.h5"  # a few KB declaring 400 GB of features, none stored
    with h5py.File(out["h5_hollow"], "w") as f:
        f.create_dataset("features", shape=(10**8, 1024), chunks=(1024, 64), dtype="f4")
        f.create_dataset("coords", shape=(10**8, 2), chunks=(4096, 2), dtype="i8")
    out.update(_damaged_stores(d))
    out["bad_safetensors"] = d / "bad_header.safetensors"  # its JSON header cut short
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'
    out["bad_safetensors"].write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    out["oblong"] = d / "oblong.csv"
    out["oblong"].write_text("minx,miny,width,height,prob_Tumor\n0,0,64,64,0.5\n64,0,64,32,0.5\n")
    out["geo_feature"] = d / "geo_feature.geojson"
    square = [[[0, 0], [64, 0], [64, 64], [0, 64], [0, 0]]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square}}
    out["geo_feature"].write_text(json.dumps(feature))
    out["geo_deep"] = d / "geo_deep.geojson"  # coordinates nested 50000 arrays deep
    deep = "[" * 50_000 + "]" * 50_000
    out["geo_deep"].write_text('{"type": "FeatureCollection", "features": [' + deep + "]}")
    return out


def _damaged_stores(d: Path) -> dict[str, Path]:
    """Results stores as a crash or another program leaves them: ``done/zarr.json`` cut short,
    and an array of pickled objects (zarr v2, which would unpickle it on reading)."""
    import json

    import zarr

    out = {"damaged_store": d / "damaged_store.zarr", "pickled_store": d / "pickled_store.zarr"}
    for path in out.values():
        root = zarr.open_group(str(path), mode="w", attributes={"job": "0" * 32, "ready": True})
        root.create_array("done", shape=(2,), chunks=(2,), dtype="bool", fill_value=False)
        root["done"][0] = True
    done = out["damaged_store"] / "done" / "zarr.json"
    done.write_text(done.read_text()[:40])
    shutil.rmtree(out["pickled_store"] / "done")
    (out["pickled_store"] / "done").mkdir()
    zarray = {"zarr_format": 2, "shape": [2], "chunks": [2], "dtype": "|O", "order": "C",
              "compressor": None, "fill_value": None, "filters": [{"id": "pickle"}]}  # fmt: skip
    (out["pickled_store"] / "done" / ".zarray").write_text(json.dumps(zarray))
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root``: what a command must leave untouched."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
