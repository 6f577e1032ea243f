"""A model carries its preprocessing and class names, and the names reach every output: the demo
weights run with their card alone (no --mean/--std) through the CLI and the core, flags override
the card, a model without any normalisation says so, columns are prob_<class> with y_pred the
class name, predicting a table again replaces its predictions (never prob_0 beside
prob_background), heatmaps show the explained class, and labels name the classes."""

from __future__ import annotations

import shutil
import sqlite3
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from napari_pathviz._demo import ensure_demo_data, load_demo
from napari_pathviz._demo_model import MEAN, STD, run_demo_model
from napari_pathviz.classes import (
    class_label,
    default_heatmap_column,
    merge_predictions,
    prediction_frame,
    resolve_target,
)
from napari_pathviz.cli import main
from napari_pathviz.errors import PathvizError
from napari_pathviz.heatmap import default_column, patch_value_grid
from napari_pathviz.inference import extract
from napari_pathviz.models import load_model
from napari_pathviz.patches import KEY_COLUMNS, PatchTable

NAMES = ["background", "dab_negative", "dab_positive"]
PROBS = [f"prob_{n}" for n in NAMES]
FACTORY = "napari_pathviz._demo_model:build_demo_model"


def _weights() -> str:
    return str(resources.files("napari_pathviz") / "data" / "demo_model.pt")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo slide and every 10th of its patches (a few dozen: the CLI runs stay quick)."""
    paths = ensure_demo_data()
    slide, table = load_demo(with_predictions=False)
    rows = table.df.iloc[::10].reset_index(drop=True)
    folder = tmp_path_factory.mktemp("classes")
    csv = folder / "patches.csv"
    rows.to_csv(csv, index=False)
    return {"slide": slide, "slide_path": str(paths["slide"]), "csv": str(csv), "rows": rows}


@pytest.fixture(scope="module")
def bare_weights(tmp_path_factory):
    """The demo weights copied where no model card lies beside them."""
    path = tmp_path_factory.mktemp("bare") / "weights.pt"
    shutil.copy(_weights(), path)
    return str(path)


def _extract(demo, out, *extra):
    argv = ["extract", "--slide", demo["slide_path"], "--patches", demo["csv"], "-o", str(out)]
    return main([*argv, "--device", "cpu", "--no-embeddings", *map(str, extra)])


# --- the card: found, used, overridden -----------------------------------------------------


def test_demo_weights_find_their_card():
    spec = load_model(_weights())
    assert spec.metadata["card"].endswith("demo_model.json")
    assert spec.mean == pytest.approx(MEAN) and spec.std == pytest.approx(STD)
    assert spec.class_names == tuple(NAMES)
    assert spec.normalisation_warning() is None
    assert [spec.class_label(i) for i in range(3)] == NAMES


def test_cli_extract_names_the_columns_and_normalises_by_the_card(demo, tmp_path, capsys):
    out = tmp_path / "pred.parquet"
    assert _extract(demo, out, "-m", _weights()) == 0
    assert "normalisation" not in capsys.readouterr().err
    df = pd.read_parquet(out)
    assert list(df.columns) == [*KEY_COLUMNS, *PROBS, "y_pred", "y_pred_index"]
    probs = df[PROBS].to_numpy()
    # The card's mean/std were used: the demo model's own preprocessing gives the same numbers.
    expected, _ = run_demo_model(demo["slide"], PatchTable(demo["rows"], "rows"))
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert all(isinstance(v, str) for v in df["y_pred"])
    assert df["y_pred"].tolist() == [NAMES[i] for i in expected.argmax(axis=1)]
    np.testing.assert_array_equal(df["y_pred_index"], expected.argmax(axis=1))
    # Its predictions agree with the demo's annotations: normalisation matters.
    assert (df["y_pred"] == demo["rows"]["annotation"]).mean() >= 0.8


def test_cli_flags_override_the_card(demo, tmp_path, capsys):
    out = tmp_path / "renamed.csv"
    assert _extract(demo, out, "-m", _weights(), "--class-names", "glass", "neg", "pos") == 0
    df = pd.read_csv(out)
    assert [c for c in df.columns if c.startswith("prob_")] == [
        "prob_glass",
        "prob_neg",
        "prob_pos",
    ]
    assert set(df["y_pred"]) <= {"glass", "neg", "pos"}
    # --mean/--std replace the card's: the numbers are those of a model fed raw [0, 1] RGB.
    raw = tmp_path / "raw.parquet"
    assert _extract(demo, raw, "-m", _weights(), "--mean", 0, 0, 0, "--std", 1, 1, 1) == 0
    spec = load_model(_weights(), mean=(0, 0, 0), std=(1, 1, 1))
    core = extract(demo["slide"], PatchTable(demo["rows"], "rows"), spec, embeddings=False)
    got = pd.read_parquet(raw)[PROBS].to_numpy()
    np.testing.assert_allclose(got, core[PROBS].to_numpy(), atol=1e-6)
    carded = pd.read_csv(out)[["prob_glass", "prob_neg", "prob_pos"]].to_numpy()
    assert np.abs(got - carded).max() > 0.3  # without the card's normalisation: other numbers
    # As many names as outputs, or one line naming the mismatch.
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    assert _extract(demo, bad, "-m", _weights(), "--class-names", "a", "b") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 class names for a model with 3 outputs" in err[0]
    assert not bad.exists()


def test_weights_without_card_or_mean_warn_in_one_line(demo, bare_weights, tmp_path, capsys):
    out = tmp_path / "bare.parquet"
    kwargs = '{"n_classes": 3}'
    argv = ["-m", bare_weights, "--factory", FACTORY, "--factory-kwargs", kwargs]
    assert _extract(demo, out, *argv) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "normalisation" in x]
    assert line.startswith("pathviz extract: warning: ") and bare_weights in line
    assert "no model card" in line and "--mean/--std" in line
    # No names known: prob_<i>, and y_pred the index.
    df = pd.read_parquet(out)
    assert [c for c in df.columns if c.startswith("prob_")] == ["prob_0", "prob_1", "prob_2"]
    assert df["y_pred"].dtype == np.int64
    # Given the normalisation, no warning.
    out2 = tmp_path / "bare2.parquet"
    norm = ["--mean", *MEAN, "--std", *STD]
    assert _extract(demo, out2, "-m", bare_weights, "--factory", FACTORY, *norm) == 0
    assert "normalisation" not in capsys.readouterr().err


def test_cohort_recipe_carries_class_names_and_the_warning(bare_weights):
    from napari_pathviz.cli import build_parser
    from napari_pathviz.cli._common import recipe_from_args
    from napari_pathviz.cohort import ModelRecipe
    from napari_pathviz.cohort_tasks import check_recipe

    argv = ["extract", "-m", _weights(), "--slide", "a", "b", "-o", "out"]
    args = build_parser().parse_args([*argv, "--class-names", "glass", "neg", "pos"])
    assert recipe_from_args(args).class_names == ("glass", "neg", "pos")
    assert recipe_from_args(build_parser().parse_args(argv)).class_names is None  # the card's

    named = ModelRecipe(path=_weights(), class_names=["glass", "neg", "pos"])
    assert named.load().class_names == ("glass", "neg", "pos")
    assert check_recipe(named) == {"kind": "state dict + factory", "warning": None}
    bare = ModelRecipe(path=bare_weights, factory=FACTORY)
    with pytest.warns(UserWarning, match="no normalisation known"):
        outcome = check_recipe(bare)
    assert "no normalisation known" in outcome["warning"]


# --- predicting a table again --------------------------------------------------------------


def test_rerun_replaces_predictions_without_duplicates(demo, tmp_path):
    table = PatchTable(demo["rows"], "rows")
    spec = load_model(_weights())
    first = extract(demo["slide"], table, spec, embeddings=False)
    # A table that already holds the predictions, as the demo's patches layer does.
    features = demo["rows"].merge(first, on=list(KEY_COLUMNS))
    features["y_pred"] = "stale"  # what a rerun must replace, not keep beside
    again = extract(demo["slide"], table, spec, embeddings=False)
    merged, found = merge_predictions(features, again, "patches")
    assert found == len(features)
    assert list(merged.columns).count("y_pred") == 1
    assert not any(c in merged.columns for c in ("prob_0", "prob_1", "prob_2"))
    assert [c for c in merged.columns if c.startswith("prob_")] == PROBS
    assert merged["y_pred"].tolist() == first["y_pred"].tolist()  # names, not floats
    assert merged["y_pred_index"].dtype == np.int64
    assert "annotation" in merged.columns  # other columns stay
    # A model without class names would add prob_0..2 beside them: refused, saying why.
    nameless = load_model(demo_bare_copy(tmp_path), factory=FACTORY, mean=MEAN, std=STD)
    other = extract(demo["slide"], table, nameless, embeddings=False)
    with pytest.raises(PathvizError, match=r"prob_background.*prob_0.*--class-names"):
        merge_predictions(features, other, "patches")
    # Named as the table names them, it replaces them.
    renamed = load_model(
        demo_bare_copy(tmp_path), factory=FACTORY, mean=MEAN, std=STD, class_names=NAMES
    )
    merged, _ = merge_predictions(
        features, extract(demo["slide"], table, renamed, embeddings=False), "patches"
    )
    np.testing.assert_allclose(merged[PROBS].to_numpy(), first[PROBS].to_numpy(), atol=1e-6)


def demo_bare_copy(tmp_path) -> str:
    path = tmp_path / "nameless" / "w.pt"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        shutil.copy(_weights(), path)
    return str(path)


def test_partial_rerun_keeps_types():
    features = pd.DataFrame(
        {"ID": "s", "x": [0, 64, 128], "y": 0, "patch_size": 64, "prob_a": 0.1, "prob_b": 0.9}
    )
    features["y_pred"] = "b"
    result = pd.concat(
        [
            features[list(KEY_COLUMNS)].iloc[:2].reset_index(drop=True),
            prediction_frame(np.array([[0.8, 0.2], [0.3, 0.7]]), ["a", "b"]),
        ],
        axis=1,
    )
    merged, found = merge_predictions(features, result, "t")
    assert found == 2
    assert merged["y_pred"].iloc[:2].tolist() == ["a", "b"] and pd.isna(merged["y_pred"].iloc[2])
    np.testing.assert_allclose(merged["prob_a"].to_numpy()[:2], [0.8, 0.3])
    assert np.isnan(merged["prob_a"].iloc[2])


def test_db_output_keeps_pathflowai_pred_columns(demo, tmp_path):
    out = tmp_path / "predictions.db"
    assert _extract(demo, out, "-m", _weights()) == 0
    with sqlite3.connect(out) as con:
        (name,) = [r[0] for r in con.execute("SELECT name FROM sqlite_master")]
        df = pd.read_sql_query(f'SELECT * FROM "{name}"', con)
    assert list(df.columns[:6]) == ["index", "ID", "x", "y", "patch_size", "annotation"]
    for i, column in enumerate(PROBS):
        np.testing.assert_allclose(df[f"{i}_pred"], df[column])
    assert set(df["y_pred"]) <= set(NAMES) and df["y_pred_index"].dtype == np.int64
    # Predicted again, PathFlowAI's columns go with the other stale predictions.
    from napari_pathviz.io.tables import read_table

    back = read_table(out)
    result = back[[*KEY_COLUMNS, *PROBS, "y_pred", "y_pred_index"]]
    merged, _ = merge_predictions(back, result, str(out))
    assert not any(c.endswith("_pred") and c[0].isdigit() for c in merged.columns)


# --- heatmaps and labels -------------------------------------------------------------------


def test_heatmap_defaults_to_the_explained_class(demo):
    assert default_heatmap_column(PROBS, NAMES) == "prob_dab_positive"
    shuffled = ["prob_dab_positive", "annotation", "prob_background", "prob_dab_negative"]
    assert default_column(shuffled, NAMES) == "prob_dab_positive"
    assert default_column(["prob_0", "prob_1", "prob_2"]) == "prob_2"
    assert default_column(["annotation"]) is None
    df = demo["rows"].copy()
    df["prob_dab_positive"] = np.linspace(0, 1, len(df))
    df["prob_background"] = 0.5
    grid = patch_value_grid(PatchTable(df, "t"), None, NAMES)
    values = grid.image[np.isfinite(grid.image)]
    assert values.max() == pytest.approx(1.0) and values.min() == pytest.approx(0.0)


def test_class_labels_and_targets():
    assert class_label(NAMES, 2) == "dab_positive"
    assert class_label(None, 2) == "class 2"
    assert class_label(NAMES, 7) == "class 7"
    assert resolve_target("dab_positive", NAMES) == 2
    assert resolve_target("1", NAMES) == 1 and resolve_target("each", NAMES) == "each"
    with pytest.raises(PathvizError, match="background, dab_negative, dab_positive"):
        resolve_target("tumour", NAMES)


def test_gallery_titles_name_the_classes():
    from napari_pathviz.attribution.gallery import gallery_figure
    from napari_pathviz.attribution.result import AttributionResult

    # Two patches, every class of each explained (target "each": a row per patch and class).
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    result = AttributionResult(
        method="gradcam",
        maps=rng.normal(size=(6, 16, 16)),
        targets=np.array([0, 1, 2, 0, 1, 2]),
        logits=logits,
        probabilities=probabilities,
        patch_index=np.array([0, 0, 0, 1, 1, 1]),
        metadata={"class_names": NAMES},  # as the widget's job records them
    )
    images = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    titles = [ax.get_title() for ax in gallery_figure(images, result).axes]
    for k, name in enumerate(NAMES):
        assert f"{name}: p={probabilities[k, k]:.2f}" in titles
        assert sum(t.startswith(f"{name}: p=") for t in titles) == 2
    result.metadata["class_names"] = None
    titles = [ax.get_title() for ax in gallery_figure(images, result).axes]
    assert sum(t.startswith("class 2: p=") for t in titles) == 2


# --- napari: the widget's warning and the attribution labels ---------------------------------


def test_widget_says_when_no_normalisation_is_known(
    make_napari_viewer, qtbot, notifications, bare_weights
):
    pytest.importorskip("napari")
    from napari_pathviz._widgets.inference import InferenceWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-pathviz", "demo")
    patches = viewer.layers[-1]
    patches.features = patches.features.drop(
        columns=[c for c in patches.features.columns if c.startswith("prob_") or c == "y_pred"]
    )
    widget = InferenceWidget(viewer)
    widget.model_path.value = bare_weights
    widget.factory.value = FACTORY
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert "WARNING" in widget.status.value and "no normalisation known" in widget.status.value
    assert any("no normalisation known" in m and bare_weights in m for m in notifications)
    # Nameless: prob_<i>, and the heatmap shows the last class.
    assert [c for c in patches.features.columns if c.startswith("prob_")] == [
        "prob_0",
        "prob_1",
        "prob_2",
    ]
    assert widget.heatmap_column.value == "prob_2"


def test_attribution_labels_and_layers_name_the_classes(make_napari_viewer):
    pytest.importorskip("napari")
    from types import SimpleNamespace

    from napari_pathviz._widgets._attribution_layers import _show_labels
    from napari_pathviz.attribution.result import AttributionResult

    viewer = make_napari_viewer()
    probabilities = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    result = AttributionResult(
        method="gradcam",
        maps=np.zeros((2, 8, 8)),
        targets=np.array([2, 0]),
        logits=np.log(probabilities),
        probabilities=probabilities,
        metadata={"class_names": NAMES},
    )
    keys = pd.DataFrame({"x": [0, 64], "y": [0, 0], "patch_size": [64, 64]})
    _show_labels(viewer, result, keys, SimpleNamespace(scale=(1.0, 1.0)))
    labels = viewer.layers[-1]
    assert list(labels.text.values) == ["dab_positive: p=0.70", "background: p=0.60"]
    result.metadata["class_names"] = None
    _show_labels(viewer, result, keys, SimpleNamespace(scale=(1.0, 1.0)))
    assert list(viewer.layers[-1].text.values) == ["class 2: p=0.70", "class 0: p=0.60"]
