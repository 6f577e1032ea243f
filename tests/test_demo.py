"""Demo data and demo model: deterministic, offline, and carrying a real signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_pathviz._demo import (
    ANNOTATIONS,
    DEMO_SHAPE,
    ensure_demo_data,
    load_demo,
)


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def test_demo_data_is_deterministic(tmp_path, demo):
    slide, table = demo
    again = ensure_demo_data(tmp_path / "again")
    other = pd.read_parquet(again["patches"])
    pd.testing.assert_frame_equal(other, table.df[other.columns], check_dtype=False)
    from napari_pathviz.slide import open_slide

    np.testing.assert_array_equal(
        open_slide(again["slide"]).levels[0].compute(), slide.levels[0].compute()
    )


def test_demo_slide_is_a_pyramid_with_labelled_patches(demo):
    slide, table = demo
    assert slide.shape == (*DEMO_SHAPE, 3) and len(slide.levels) >= 3 and slide.mpp == 0.5
    df = table.df
    assert set(df["annotation"]) == set(ANNOTATIONS)
    coverage = df[list(ANNOTATIONS)].to_numpy()
    np.testing.assert_allclose(coverage.sum(axis=1), 1.0, atol=1e-3)
    assert (df["annotation"] == np.asarray(ANNOTATIONS)[coverage.argmax(axis=1)]).all()


def test_labels_mean_what_they_say(demo):
    """DAB-positive patches are browner (higher DAB optical density) than DAB-negative ones,
    and background patches are the least saturated: the labels come from the stain."""
    from skimage.color import rgb2hed, rgb2hsv

    from napari_pathviz._demo_model import read_patches

    slide, table = demo
    patches = read_patches(slide, table)
    dab = rgb2hed(patches.reshape(-1, 64, 3)).reshape(patches.shape)[..., 2].mean(axis=(1, 2))
    sat = rgb2hsv(patches.reshape(-1, 64, 3)).reshape(patches.shape)[..., 1].mean(axis=(1, 2))
    label = table.df["annotation"].to_numpy()
    assert dab[label == "dab_positive"].mean() > 1.5 * dab[label == "dab_negative"].mean()
    assert sat[label == "background"].mean() < sat[label != "background"].mean()


def test_shipped_model_predicts_the_labels(demo):
    slide, table = demo
    df = table.df
    assert {f"prob_{a}" for a in ANNOTATIONS} <= set(df.columns)
    probs = df[[f"prob_{a}" for a in ANNOTATIONS]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    assert (df["y_pred"] == df["annotation"]).mean() >= 0.9


def test_demo_model_reuses_an_inplace_relu(demo):
    """Shaped like torchvision's BasicBlock: one in-place ReLU module runs twice per forward."""
    import torch

    from napari_pathviz._demo_model import load_demo_model

    model = load_demo_model()
    relu = model.layer1.relu
    assert isinstance(relu, torch.nn.ReLU) and relu.inplace
    calls = []
    relu.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(torch.zeros(2, 3, 64, 64))
    assert len(calls) == 2


def test_training_from_scratch_learns(demo):
    from napari_pathviz._demo_model import demo_labels, predict_demo, train_demo_model

    slide, table = demo
    model = train_demo_model(slide, table, epochs=3, seed=1)
    accuracy = (predict_demo(slide, table, model).argmax(1) == demo_labels(table)).mean()
    chance = table.df["annotation"].value_counts(normalize=True).max()
    assert accuracy > chance + 0.1
