"""Expected gradients and DeepLIFT compare each explained patch with background patches drawn
from the rest of its table. A table too small to leave two other rows used to fall back to all
rows, so a patch was explained against itself: all-zero maps reported as a perfect result.
Now the draw never holds an explained row, and too few others is refused in one line, before
any store or picture is written (CLI, Attributions widget, cohort)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import pytest

from napari_pathviz._demo import ensure_demo_data
from napari_pathviz.attribution.references import random_reference_rows
from napari_pathviz.cli import main
from napari_pathviz.errors import PathvizError


def test_the_draw_never_holds_an_explained_row():
    explained = np.array([0, 2, 4])
    for seed in range(50):
        picks = random_reference_rows(7, explained, 8, np.random.default_rng(seed))
        assert set(picks.tolist()) == {1, 3, 5, 6}  # all the others, and only them
    picks = random_reference_rows(100, explained, 8, np.random.default_rng(0))
    assert len(set(picks.tolist())) == 8 and not set(picks.tolist()) & {0, 2, 4}


@pytest.mark.parametrize(("rows", "explained"), [(1, [0]), (2, [0]), (3, [0, 1]), (3, [2, 0])])
def test_fewer_than_two_others_is_refused(rows, explained):
    with pytest.raises(PathvizError, match="too few background patches") as info:
        random_reference_rows(rows, np.array(explained), 8, np.random.default_rng(0))
    assert "--background" in str(info.value)


def _stores() -> set:
    from napari_pathviz.store import cache_root

    folder = cache_root() / "attributions"
    return set(folder.iterdir()) if folder.exists() else set()


def _explain_argv(table, out, method: str = "gradient") -> list[str]:
    weights = resources.files("napari_pathviz") / "data" / "demo_model.pt"
    demo = ensure_demo_data()
    return [
        "shapley-plot",
        "-m",
        str(weights),
        "--factory",
        "napari_pathviz._demo_model:build_demo_model",
        "--mean",
        *["0.8", "0.72", "0.7"],
        "--std",
        *["0.15", "0.18", "0.18"],
        "--slide",
        str(demo["slide"]),
        "--patches",
        str(table),
        "--device",
        "cpu",
        "-o",
        str(out / "maps.png"),
        "-mth",
        method,
        "--ids",
        "0",
        "-bs",
        "2",
        "-ns",
        "4",
    ]


@pytest.mark.parametrize("method", ["gradient", "deep"])
def test_shapley_plot_on_a_one_row_table_writes_nothing(tmp_path, capsys, method):
    table = tmp_path / "one_row.csv"
    pd.read_parquet(ensure_demo_data()["patches"]).iloc[:1].to_csv(table, index=False)
    out = tmp_path / "out"
    out.mkdir()
    stores = _stores()
    argv = _explain_argv(table, out, method) + ["--attributions-out", str(out / "maps.zarr")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "too few background patches" in errors[0] and "one_row.csv" in errors[0]
    assert list(out.iterdir()) == []  # no picture, no store
    assert _stores() == stores  # nor a store in the results cache


def test_a_cohort_slide_with_too_few_rows_is_refused():
    """The cohort explainer draws each slide's background from that slide's rows: a slide of
    one patch fails (one line naming the slide) instead of giving zero maps."""
    from napari_pathviz.cohort import ModelRecipe
    from napari_pathviz.cohort_explain import ExplainSettings, _model_inputs
    from napari_pathviz.slide import open_slide

    demo = ensure_demo_data()
    slide = open_slide(str(demo["slide"]))
    df = pd.read_parquet(demo["patches"]).iloc[:1].reset_index(drop=True)
    spec = ModelRecipe(path=str(resources.files("napari_pathviz") / "data" / "demo_model.pt"))
    settings = ExplainSettings(method="deep", column="dab_positive", top=1, device="cpu")
    with pytest.raises(PathvizError, match="too few background patches") as info:
        _model_inputs(spec.load(), slide, df, np.array([0]), settings)
    assert "demo_ihc" in str(info.value)


def test_the_attributions_widget_refuses_in_a_notification(make_napari_viewer, notifications):
    """Every patch but one selected: the widget's random background would be that one patch;
    the user is told in a notification, and no job, layer or store follows."""
    pytest.importorskip("napari")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-pathviz", "demo")
    patches = viewer.layers[-1]
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-pathviz", "Attributions")
    widget.form.prefill_demo()
    patches.selected_data = set(range(len(patches.features) - 1))
    viewer.layers.selection.active = patches
    layers, stores = [layer.name for layer in viewer.layers], _stores()
    widget.run_button.clicked.emit()
    assert any("too few background patches" in m for m in notifications), notifications
    assert "too few background patches" in widget.status.value
    assert widget.run_button.enabled  # nothing started
    assert [layer.name for layer in viewer.layers] == layers
    assert _stores() == stores
