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


def _optical_densities(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and DAB optical density per pixel (HED deconvolution, smoothed 2 px)."""
    from scipy import ndimage
    from skimage.color import rgb2hed

    hed = rgb2hed(patches.reshape(-1, patches.shape[2], 3)).reshape(patches.shape)
    smooth = [np.stack([ndimage.gaussian_filter(p, 2) for p in hed[..., k]]) for k in (0, 2)]
    return smooth[0], smooth[1]


def test_labels_agree_with_the_stain_per_patch(demo):
    """Every patch's label read back from its pixels: tissue is where hematoxylin or DAB is
    denser than glass (pale counterstained stroma included), DAB-positive where DAB is dense."""
    from napari_pathviz._demo_model import read_patches

    slide, table = demo
    patches = read_patches(slide, table)
    hematoxylin, dab = _optical_densities(patches)
    # Glass reads 0.0075 hematoxylin / 0.003 DAB; the palest stroma 0.010 / 0.009 and more.
    stained = ((hematoxylin > 0.0095) | (dab > 0.015)).mean(axis=(1, 2))
    label = table.df["annotation"].to_numpy()
    is_background = label == "background"
    assert ((stained > 0.5) == ~is_background).mean() >= 0.97
    # No patch that is mostly stained tissue is called background (pale stroma was, before).
    assert stained[is_background].max() < 0.6
    mean_dab = dab.mean(axis=(1, 2))
    positive, negative = mean_dab[label == "dab_positive"], mean_dab[label == "dab_negative"]
    assert positive.mean() > 1.5 * negative.mean()
    # Ranked by DAB density, a positive patch comes above a negative one in >= 97% of pairs.
    assert (positive[:, None] > negative[None, :]).mean() >= 0.97


def _closest_copy(patches: np.ndarray) -> np.ndarray:
    """For each patch, the smallest mean |difference| (grey levels, 4x4-pixel blocks) to any
    other patch under any of the 8 flips/rotations."""
    n, size = len(patches), patches.shape[1] // 4
    blocks = patches.astype(np.float32).reshape(n, size, 4, size, 4, 3).mean(axis=(2, 4))
    flat = blocks.reshape(n, -1)
    closest = np.full((n, n), np.inf, np.float32)
    for turns in range(4):
        for flip in (False, True):
            moved = np.rot90(blocks, turns, axes=(1, 2))
            moved = (moved[:, :, ::-1] if flip else moved).reshape(n, -1)
            diff = np.abs(flat[:, None, :] - moved[None, :, :]).mean(axis=2)
            closest = np.minimum(closest, diff)
    np.fill_diagonal(closest, np.inf)
    return closest.min(axis=1)


def test_no_patch_is_a_copy_or_mirror_of_another(demo):
    """The slide is cut from distinct pixels: no tissue patch equals another one flipped or
    turned (the mirror-tiled slide had every patch four times). Mostly-glass patches are left
    out: two views of bare glass differ only by sensor noise."""
    from napari_pathviz._demo_model import read_patches

    slide, table = demo
    tissue = table.df["background"].to_numpy() < 0.5
    patches = read_patches(slide, table)[tissue]
    assert len(patches) >= 100
    assert _closest_copy(patches).min() > 3.0
    # The check finds a copy when there is one: a mirrored, turned patch added to the set.
    planted = np.concatenate([patches, np.rot90(patches[:1, :, ::-1], 1, axes=(1, 2))])
    assert _closest_copy(planted)[-1] < 1.0


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
