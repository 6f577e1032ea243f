"""PathFlowAI's commands keep PathFlowAI's meaning and defaults: -p labels the maps (shap explains
the raw output there), -nn is 8, gradient references are two batches; what is explained has its
own option, and a map that does not add up is reported."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pathviz.attribution import attribute
from napari_pathviz.attribution.gallery import label_probabilities
from napari_pathviz.attribution.stored import open_attributions
from napari_pathviz.cli import build_parser, main
from napari_pathviz.cli.attributions import background_size, engine_output


def _args(*argv):
    return build_parser().parse_args(list(map(str, argv)))


_EXPLAIN = ["-m", "w.pt", "--slide", "s", "--patches", "t.csv", "-o", "o.png"]


def test_pathflowai_defaults():
    embed = _args("plot-embeddings", "-i", "e.parquet", "-o", "o.html")
    mosaic = _args("plot-image-umap-embeddings", "-e", "e.parquet", "-i", "s", "-o", "o.png")
    assert embed.n_neighbors == 8 and mosaic.n_neighbors == 8
    gradient = _args("shapley-plot", *_EXPLAIN, "-bs", "5", "-mth", "gradient")
    deep = _args("shapley-plot", *_EXPLAIN, "-bs", "5", "-mth", "deep")
    assert background_size(gradient) == 10 and background_size(deep) == 5
    # -p is PathFlowAI's label choice; the explained output defaults to the logit, as shap's.
    labelled = _args("shapley-plot", *_EXPLAIN, "-p", "softmax")
    assert labelled.pred_out == "softmax" and engine_output(labelled) == "none"
    explained = _args("shapley-plot", *_EXPLAIN, "--explain-output", "softmax")
    assert explained.pred_out == "none" and engine_output(explained) == "softmax"


def test_label_probabilities_follow_p():
    import zoo

    result = attribute(zoo.resnet_style(), zoo.inputs(3), "gradcam")
    logits = np.asarray(result.logits, dtype=np.float64)
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(label_probabilities(result, "softmax"), soft, rtol=1e-6)
    np.testing.assert_allclose(label_probabilities(result, "sigmoid"), 1 / (1 + np.exp(-logits)))
    np.testing.assert_array_equal(label_probabilities(result, "none"), result.probabilities)


@pytest.fixture
def demo_command(tmp_path):
    from importlib import resources

    import pandas as pd

    from napari_pathviz._demo import ensure_demo_data

    paths = ensure_demo_data()
    # The demo weights' model card names the architecture and the normalisation.
    weights = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
    # A glass patch and a DAB-positive one: the model tells them apart by several logits.
    labels = pd.read_parquet(paths["patches"])["annotation"]
    ids = [labels.eq(name).to_numpy().argmax() for name in ("background", "dab_positive")]
    return [
        "-m",
        weights,
        "--slide",
        paths["slide"],
        "--patches",
        paths["patches"],
        "--ids",
        *map(str, ids),
        "-bs",
        "3",
        "--device",
        "cpu",
    ]


def _explain(command, tmp_path, name, *extra):
    code = main(
        [
            "shapley-plot",
            *map(str, command),
            "-o",
            str(tmp_path / f"{name}.png"),
            "--attributions-out",
            str(tmp_path / f"{name}.zarr"),
            *extra,
        ]
    )
    assert code == 0
    return open_attributions(tmp_path / f"{name}.zarr")[0]


def test_p_changes_labels_not_maps(demo_command, tmp_path):
    plain = _explain(demo_command, tmp_path, "plain", "-mth", "deep")
    labelled = _explain(demo_command, tmp_path, "labelled", "-mth", "deep", "-p", "softmax")
    np.testing.assert_array_equal(plain.maps, labelled.maps)
    # The logit is explained: the maps add up to the logit difference, not a probability's.
    np.testing.assert_allclose(
        np.asarray(plain.maps).reshape(2, -1).sum(1), plain.output_delta, rtol=1e-4, atol=1e-5
    )
    assert np.abs(plain.output_delta).max() > 1.0  # a logit difference, not a probability's
    assert (tmp_path / "labelled.png").stat().st_size > 10_000


def test_explain_output_softmax_explains_the_probability(demo_command, tmp_path):
    soft = _explain(demo_command, tmp_path, "soft", "-mth", "deep", "--explain-output", "softmax")
    assert np.all(np.abs(soft.output_delta) <= 1.0)
    np.testing.assert_allclose(
        np.asarray(soft.maps).reshape(2, -1).sum(1), soft.output_delta, rtol=1e-4, atol=1e-6
    )


def test_incomplete_maps_are_reported(demo_command, tmp_path, capsys):
    # Two expected-gradients samples cannot add up to the output change: the user is told.
    _explain(demo_command, tmp_path, "few", "-mth", "gradient", "-ns", "2")
    err = capsys.readouterr().err
    assert "maps incomplete: their attributions miss f(x) - E f(background) by more than 5%" in err
    assert err.count("\n") == err.count("pathviz shapley-plot: warning:")  # one line each
