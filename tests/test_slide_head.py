"""A two-stage card's head alone on features computed before (`pathviz extract --features`): the
same attention, contributions and slide prediction as the encoder's run on the same patches, from
CLAM/TRIDENT .h5, CLAM's pt_files/ + h5_files/, and a folder of slides; bad input in one line;
the table opened in napari shows the slide-level heatmaps."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from napari_pathviz.cli import main

FEATURES = "--features"


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """The demo MIL model trained here, and its encoder's run over the demo slide (`pathviz
    extract` with the card: the reference), with the features it wrote."""
    from napari_pathviz._demo import ensure_demo_data, load_demo
    from napari_pathviz._demo_mil import save_demo_mil, train_demo_mil
    from napari_pathviz.inference import read_patch_batch

    slide, table = load_demo(with_predictions=False)
    df = table.df.reset_index(drop=True)
    positive = (df["annotation"] == "dab_positive").to_numpy()
    encoder, head = train_demo_mil(read_patch_batch(slide, df), positive)
    folder = tmp_path_factory.mktemp("head")
    card = save_demo_mil(encoder, head, folder / "model")
    paths = ensure_demo_data()
    out = folder / "encoder.parquet"
    argv = ["extract", "--slide", str(paths["slide"]), "--patches", str(paths["patches"])]
    assert main([*argv, "-m", str(card), "-o", str(out)]) == 0
    return card, paths, pd.read_parquet(out), folder


def _write_clam(path, df: pd.DataFrame, with_size: bool = True):
    """A CLAM/TRIDENT feature file: coords (x, y) and features; the patch size in the coords'
    attributes as TRIDENT writes it, or none (CLAM's extract_features_fp.py)."""
    features = df[[c for c in df.columns if c.startswith("feat_")]].to_numpy(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        coords = f.create_dataset("coords", data=df[["x", "y"]].to_numpy(np.int64))
        if with_size:
            size = int(df["patch_size"].iloc[0])
            coords.attrs.update({"patch_size": size, "patch_size_level0": size})
    return path


def _head_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c == "attention" or c.startswith(("contribution_", "grad"))]


def test_the_head_on_clam_features_equals_the_encoders_run(encoded, tmp_path, capsys):
    card, paths, reference, _ = encoded
    h5 = _write_clam(tmp_path / "demo.h5", reference)
    out = tmp_path / "head.parquet"
    assert main(["extract", "-m", str(card), FEATURES, str(h5), "-o", str(out)]) == 0
    assert "slide demo: dab_positive" in capsys.readouterr().err  # the file names the slide
    ours = pd.read_parquet(out)
    assert list(ours[["x", "y", "patch_size"]].itertuples(index=False)) == list(
        reference[["x", "y", "patch_size"]].itertuples(index=False)
    )
    for column in _head_columns(reference):
        np.testing.assert_allclose(ours[column], reference[column], atol=1e-5, err_msg=column)
    head = json.loads((tmp_path / "head.slide.json").read_text())
    assert head["prediction"] == "dab_positive"
    assert head["n_patches"] == len(reference)
    # Attention x patch logit adds up to the slide logit here too.
    for name, logit in head["logits"].items():
        assert ours[f"contribution_{name}"].sum() == pytest.approx(logit, abs=1e-4)
    argv = ["extract", "-m", str(card), FEATURES, str(h5), "-o", str(out), "--overwrite"]
    assert main([*argv, "--slide-id", "demo_ihc"]) == 0
    assert (pd.read_parquet(out)["ID"] == "demo_ihc").all()
    assert json.loads((tmp_path / "head.slide.json").read_text())["slide"] == "demo_ihc"


def test_the_head_runs_without_the_encoders_weights(encoded, tmp_path):
    card, _, reference, _ = encoded
    copy = tmp_path / "card"
    shutil.copytree(card.parent, copy)
    encoder_weights = json.loads((copy / card.name).read_text())["encoder"]["weights"]
    (copy / encoder_weights).unlink()
    h5 = _write_clam(tmp_path / "demo.h5", reference)
    out = tmp_path / "head.csv"
    assert main(["extract", "-m", str(copy / card.name), FEATURES, str(h5), "-o", str(out)]) == 0
    np.testing.assert_allclose(pd.read_csv(out)["attention"], reference["attention"], atol=1e-5)


def test_a_folder_of_slides_gives_a_table_and_a_prediction_per_slide(encoded, tmp_path, capsys):
    """CLAM's layout (pt_files/ with h5_files/ beside for the coordinates) and a failing slide:
    its row says why, the others are done, exit 2."""
    card, _, reference, _ = encoded
    h5_dir, pt_dir = tmp_path / "h5_files", tmp_path / "pt_files"
    h5_dir.mkdir()
    pt_dir.mkdir()
    positive = reference["attention"].to_numpy() > np.quantile(reference["attention"], 0.8)
    bags = {"slide_a": reference, "slide_b": reference[~positive].reset_index(drop=True)}
    for name, df in bags.items():
        _write_clam(h5_dir / f"{name}.h5", df, with_size=False)
        features = df[[c for c in df.columns if c.startswith("feat_")]].to_numpy(np.float32)
        torch.save(torch.from_numpy(features), pt_dir / f"{name}.pt")
    torch.save(torch.zeros(3, 5), pt_dir / "slide_c.pt")  # wrong width, and no coordinates
    out = tmp_path / "out"
    argv = ["extract", "-m", str(card), FEATURES, str(pt_dir), "-o", str(out)]
    assert main([*argv, "--patch-size", "224"]) == 2
    err = capsys.readouterr().err
    assert "slide_c.pt" in err and "1 of 3 slides failed" in err
    summary = pd.read_csv(out / "summary.csv").set_index("file")
    assert list(summary["status"]) == ["done", "done", "failed"]
    a, b = (json.loads((out / f"{s}.slide.json").read_text()) for s in ("slide_a", "slide_b"))
    assert a["prediction"] == "dab_positive" and a["slide"] == "slide_a"
    assert b["probabilities"]["dab_positive"] < a["probabilities"]["dab_positive"]
    table = pd.read_parquet(out / "slide_a.parquet")
    np.testing.assert_allclose(table["attention"], reference["attention"], atol=1e-5)
    assert (table["patch_size"] == 224).all()  # CLAM's files do not tell it: --patch-size
    # A rerun refuses to replace what is done unless told.
    assert main([*argv, "--patch-size", "224"]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case, expected",
    [
        ("width", "features of size 5, but the head"),
        ("nan", "demo.h5: row 3: a feature is NaN or infinite"),
        ("not_two_stage", "is not a two-stage model card"),
        ("explain", "--explain-top: pixels need the encoder"),
        ("outside", "lies outside the slide"),
        ("no_size", "give the patch size (--patch-size)"),
    ],
)
def test_bad_input_is_one_line(encoded, tmp_path, capsys, case, expected):
    card, paths, reference, _ = encoded
    h5 = _write_clam(tmp_path / "demo.h5", reference)
    argv = ["extract", "-m", str(card), FEATURES, str(h5), "-o", str(tmp_path / "o.csv")]
    if case == "width":
        with h5py.File(h5, "r+") as f:
            del f["features"]
            f.create_dataset("features", data=np.zeros((len(reference), 5), np.float32))
    elif case == "nan":
        with h5py.File(h5, "r+") as f:
            f["features"][3, 1] = np.nan
    elif case == "not_two_stage":
        from napari_pathviz._demo_model import build_demo_model

        weights = tmp_path / "patch_model.pt"
        torch.save(build_demo_model().state_dict(), weights)
        argv[2] = str(weights)
    elif case == "explain":
        argv += ["--explain-top", "2"]
    elif case == "outside":
        with h5py.File(h5, "r+") as f:
            f["coords"][0] = (10**6, 0)
        argv += ["--slide", str(paths["slide"])]
    elif case == "no_size":
        _write_clam(h5, reference, with_size=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "o.csv").exists()


def test_the_table_opened_in_napari_shows_the_slide_prediction(
    encoded, tmp_path, make_napari_viewer
):
    from napari_pathviz._widgets._slide_level import META_SLIDE_LEVEL
    from napari_pathviz._widgets.loader import SlideLoaderWidget

    card, paths, reference, _ = encoded
    h5 = _write_clam(tmp_path / "demo.h5", reference)
    out = tmp_path / "head.parquet"
    argv = ["extract", "-m", str(card), FEATURES, str(h5), "-o", str(out)]
    assert main([*argv, "--slide-id", "demo_ihc"]) == 0  # the file is demo.h5
    viewer = make_napari_viewer()
    widget = SlideLoaderWidget(viewer)
    widget.slide_path.value = str(paths["slide"])
    widget.open_slide()
    widget.table_path.value = str(out)
    widget.load_patches()
    heat = [layer for layer in viewer.layers if META_SLIDE_LEVEL in layer.metadata]
    assert [layer.metadata[META_SLIDE_LEVEL] for layer in heat] == [
        "attention",
        "contribution_dab_positive",
    ]
    assert all("slide: dab_positive" in layer.name for layer in heat)
    # The attention map holds the table's values, one pixel per patch.
    finite = heat[0].data[np.isfinite(heat[0].data)]
    np.testing.assert_allclose(np.sort(finite), np.sort(reference["attention"]), atol=1e-5)
    assert "slide: dab_positive" in widget.status.value


def test_extract_without_slide_or_features_says_what_is_missing(encoded, tmp_path, capsys):
    card = encoded[0]
    assert main(["extract", "-m", str(card), "-o", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "pathviz extract: error: --slide is required (but with --features and a two-stage card)"
    ]
