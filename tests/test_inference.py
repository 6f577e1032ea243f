"""Batched inference: the demo model end to end, predictions aligned with their patches, resume
from a results store after a crash, lower pyramid levels, and bad inputs."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from torch import nn

from napari_pathviz._demo import load_demo
from napari_pathviz._demo_model import MEAN, STD, WEIGHTS, demo_labels, run_demo_model
from napari_pathviz.errors import Cancelled, PathvizError
from napari_pathviz.inference import extract, read_patch_batch
from napari_pathviz.models import load_model
from napari_pathviz.patches import KEY_COLUMNS, PatchTable
from napari_pathviz.slide import open_slide

# --- the demo ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(demo_data_dir):
    return load_demo(with_predictions=False)


def test_extract_demo_matches_the_demo_model(demo):
    slide, table = demo
    with resources.as_file(resources.files("napari_pathviz") / "data" / WEIGHTS) as weights:
        spec = load_model(
            weights, factory="napari_pathviz._demo_model:build_demo_model", mean=MEAN, std=STD
        )
        seen = []
        result = extract(
            slide,
            table,
            spec,
            batch_size=100,  # does not divide the demo's patch count (asserted below)
            device="cpu",
            workers=2,
            progress=lambda done, total, rate: seen.append((done, total, rate)),
        )
    n = len(table)
    probs, feats = run_demo_model(slide, table)
    # The model card beside the weights names the classes: prob_<name>, y_pred the name.
    names = ["background", "dab_negative", "dab_positive"]
    prob_columns = [f"prob_{name}" for name in names]
    assert list(result.columns) == [
        *KEY_COLUMNS,
        *prob_columns,
        "y_pred",
        "y_pred_index",
        *(f"feat_{j}" for j in range(64)),
    ]
    assert len(result) == n
    pd.testing.assert_frame_equal(
        result[list(KEY_COLUMNS)], table.df[list(KEY_COLUMNS)].reset_index(drop=True)
    )
    got_probs = result[prob_columns].to_numpy()
    np.testing.assert_allclose(got_probs, probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_probs.sum(axis=1), 1.0, atol=1e-5)
    got_feats = result[[f"feat_{j}" for j in range(64)]].to_numpy()
    np.testing.assert_allclose(got_feats, feats, rtol=1e-5, atol=1e-5)
    assert result["y_pred_index"].dtype == np.int64
    np.testing.assert_array_equal(result["y_pred_index"].to_numpy(), probs.argmax(axis=1))
    assert result["y_pred"].tolist() == [names[i] for i in probs.argmax(axis=1)]
    accuracy = (result["y_pred_index"].to_numpy() == demo_labels(table)).mean()
    assert accuracy >= 0.9, accuracy
    # Progress: one call per batch, counting up to all patches.
    assert n % 100 != 0  # a last, partial batch
    assert [d for d, _, _ in seen] == [min(100 * (i + 1), n) for i in range(-(-n // 100))]
    assert all(total == n and rate > 0 for _, total, rate in seen)


# --- a slide whose pixels say where they are -----------------------------------------------

P = 16  # patch size
NY, NX = 10, 13  # grid of patches: not square, so swapped axes show


def _codes(rows, cols) -> np.ndarray:
    """(..., 3) uint8 code of the patch at grid (row, col): R from the row, G from the column,
    B from both."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    return np.stack([10 + 20 * rows, 5 + 15 * cols, (3 * rows + 7 * cols) % 256], -1).astype(
        np.uint8
    )


@pytest.fixture(scope="module")
def coded_slide(tmp_path_factory):
    """An OME-Zarr pyramid whose every patch is filled with the code of its grid position."""
    import dask.array as da

    from napari_pathviz.io.pyramid import lazy_levels
    from napari_pathviz.io.zarr_io import write_ome_zarr

    rows, cols = np.meshgrid(np.arange(NY), np.arange(NX), indexing="ij")
    image = np.repeat(np.repeat(_codes(rows, cols), P, axis=0), P, axis=1)
    path = tmp_path_factory.mktemp("coded") / "coded.ome.zarr"
    levels = lazy_levels(da.from_array(image, chunks=(48, 48, 3)), min_size=40)
    write_ome_zarr(levels, path, n_native=1, chunk=48)
    slide = open_slide(path)
    assert (slide.height, slide.width) == (NY * P, NX * P)
    assert slide.downsamples == [1.0, 2.0, 4.0, 8.0]
    return slide


def _grid_table(order=None, source="grid.csv") -> PatchTable:
    rows, cols = np.divmod(np.arange(NY * NX), NX)
    if order is not None:
        rows, cols = rows[order], cols[order]
    df = pd.DataFrame({"ID": "coded", "x": cols * P, "y": rows * P, "patch_size": P})
    return PatchTable(df, source)


def _expected(table: PatchTable) -> np.ndarray:
    """The code of each row's patch, as the model should see it: a float in [0, 1]."""
    df = table.df
    return _codes(df["y"] // P, df["x"] // P).astype(np.float64) / 255.0


class _Means(nn.Sequential):
    """Outputs the mean colour of its input: pooled means, then an identity Linear (so the
    embedding, the Linear's input, is the mean colour too)."""

    def __init__(self):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
        with torch.no_grad():
            self[2].weight.copy_(torch.eye(3))
            self[2].bias.zero_()


@pytest.fixture(scope="module")
def means_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("means") / "means.pt"
    torch.save(_Means(), path)
    return path


def _means_spec(path, **kwargs):
    return load_model(path, trust_model=True, activation="none", **kwargs)


def _check_aligned(result: pd.DataFrame, table: PatchTable, embeddings: bool = True) -> None:
    expected = _expected(table)
    pd.testing.assert_frame_equal(
        result[list(KEY_COLUMNS)], table.df[list(KEY_COLUMNS)].reset_index(drop=True)
    )
    probs = result[["prob_0", "prob_1", "prob_2"]].to_numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_array_equal(np.rint(probs * 255), np.rint(expected * 255))
    np.testing.assert_array_equal(result["y_pred"].to_numpy(), expected.argmax(axis=1))
    if embeddings:
        np.testing.assert_allclose(result[["feat_0", "feat_1", "feat_2"]], expected, atol=1e-6)


@pytest.mark.parametrize(("batch_size", "workers"), [(7, 3), (1, 1), (12, 0), (500, 2)])
def test_outputs_are_aligned_with_their_patches(coded_slide, means_model_path, batch_size, workers):
    """Rows in random order; batch sizes that do not divide the 130 patches, a single batch,
    one patch a batch; reads prefetched by several threads."""
    order = np.random.default_rng(batch_size).permutation(NY * NX)
    table = _grid_table(order)
    spec = _means_spec(means_model_path)
    result = extract(coded_slide, table, spec, batch_size=batch_size, workers=workers, device="cpu")
    assert list(result.columns[-3:]) == ["feat_0", "feat_1", "feat_2"]
    _check_aligned(result, table)


def test_alignment_without_embeddings(coded_slide, means_model_path):
    table = _grid_table(np.arange(NY * NX)[::-1])
    result = extract(
        coded_slide, table, _means_spec(means_model_path), batch_size=9, embeddings=False
    )
    assert not any(c.startswith("feat_") for c in result.columns)
    _check_aligned(result, table, embeddings=False)


def test_single_output_model(coded_slide, tmp_path):
    """One output: a sigmoid by default, and y_pred is whether it passes 0.5."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[10.0, 0.0, 0.0]]))
        model[2].bias.fill_(-4.0)  # logit = 10 * red - 4: positive for red > 0.4 (rows 5 on)
    path = tmp_path / "one.pt"
    torch.save(model, path)
    table = _grid_table(np.random.default_rng(2).permutation(NY * NX))
    result = extract(coded_slide, table, load_model(path, trust_model=True), batch_size=16)
    assert [c for c in result.columns if c.startswith("prob_")] == ["prob_0"]
    red = _expected(table)[:, 0]
    np.testing.assert_allclose(result["prob_0"], 1 / (1 + np.exp(-(10 * red - 4))), rtol=1e-5)
    positive = (table.df["y"] // P >= 5).astype(np.int64).to_numpy()
    np.testing.assert_array_equal(result["y_pred"], positive)  # no names: the index
    np.testing.assert_array_equal(result["y_pred_index"], positive)
    # Named, its one class is y_pred above 0.5, "not <name>" below.
    spec = load_model(path, trust_model=True, class_names=("red",))
    named = extract(coded_slide, table, spec, batch_size=16)
    assert [c for c in named.columns if c.startswith("prob_")] == ["prob_red"]
    assert named["y_pred"].tolist() == ["red" if p else "not red" for p in positive]


# --- lower levels --------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_read_patch_batch_at_lower_levels(coded_slide, level):
    table = _grid_table(np.random.default_rng(level).permutation(NY * NX)[:20])
    batch = read_patch_batch(coded_slide, table.df, level)
    side = P // 2**level
    assert batch.shape == (20, side, side, 3) and batch.dtype == np.uint8
    codes = np.rint(_expected(table) * 255).astype(np.uint8)
    # Every pixel of every patch is its own patch's code: no offset, no neighbour bleeding in.
    np.testing.assert_array_equal(batch, np.broadcast_to(codes[:, None, None], batch.shape))


@pytest.mark.parametrize("level", [1, 2])
def test_extract_at_lower_level(coded_slide, means_model_path, level):
    table = _grid_table(np.random.default_rng(5).permutation(NY * NX))
    sizes = []
    spec = _means_spec(means_model_path)
    handle = spec.model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape))
    try:
        result = extract(coded_slide, table, spec, batch_size=32, level=level, device="cpu")
    finally:
        handle.remove()
    side = P // 2**level
    assert all(tuple(s[2:]) == (side, side) for s in sizes)
    _check_aligned(result, table)


# --- resume --------------------------------------------------------------------------------


class _Recorder:
    """Counts the model's forward calls and the patches each computed (decoded from outputs)."""

    def __init__(self, model: nn.Module):
        self.calls: list[int] = []
        self.outputs: list[np.ndarray] = []
        self.handle = model.register_forward_hook(self)

    def __call__(self, _module, inputs, output):
        self.calls.append(int(inputs[0].shape[0]))
        self.outputs.append(np.rint(output.detach().numpy() * 255).astype(np.int64))

    def remove(self):
        self.handle.remove()


def _cancel_after(k: int):
    checks = []

    def cancelled() -> bool:
        checks.append(None)
        return len(checks) > k

    return cancelled


def test_resume_after_a_crash(coded_slide, means_model_path, tmp_path):
    n, bs, k = NY * NX, 12, 4  # 11 batches, the last of 10 patches; a crash after 4
    table = _grid_table(np.random.default_rng(11).permutation(n))
    codes = np.rint(_expected(table) * 255).astype(np.int64)
    store = tmp_path / "results.zarr"
    spec = _means_spec(means_model_path)
    rec = _Recorder(spec.model)
    try:
        with pytest.raises(Cancelled, match="finished batches are kept"):
            extract(
                coded_slide, table, spec, store=store, batch_size=bs, cancelled=_cancel_after(k)
            )
        # check_model's two blank patches, _feature_dim's one patch, then k batches.
        assert rec.calls == [2, 1] + [bs] * k
        root = zarr.open_group(str(store), mode="r")
        np.testing.assert_array_equal(root["done"][:], [True] * k + [False] * (11 - k))
        probs = root["probs"][:]
        np.testing.assert_allclose(probs[: k * bs], codes[: k * bs] / 255, atol=1e-6)
        assert np.isnan(probs[k * bs :]).all()

        rec.calls.clear()
        rec.outputs.clear()
        seen = []
        resumed = extract(
            coded_slide,
            table,
            spec,
            store=store,
            batch_size=bs,
            progress=lambda done, total, _rate: seen.append((done, total)),
        )
        # Only the 7 unfinished batches are computed (after the two probes) ...
        assert rec.calls == [2, 1] + [bs] * (11 - k - 1) + [n - 10 * bs]
        # ... and they are exactly the patches of rows k * bs onwards, in order.
        np.testing.assert_array_equal(np.concatenate(rec.outputs[2:]), codes[k * bs :])
        assert seen[0] == ((k + 1) * bs, n) and seen[-1] == (n, n) and len(seen) == 11 - k
        assert zarr.open_group(str(store), mode="r")["done"][:].all()

        # A finished store: nothing but the probes runs again.
        rec.calls.clear()
        again = extract(coded_slide, table, spec, store=store, batch_size=bs)
        assert rec.calls == [2, 1]
    finally:
        rec.remove()
    full = extract(coded_slide, table, _means_spec(means_model_path), batch_size=bs)
    pd.testing.assert_frame_equal(resumed, full)
    pd.testing.assert_frame_equal(again, full)
    _check_aligned(full, table)


def test_store_of_another_job_is_refused(coded_slide, means_model_path, tmp_path):
    store = tmp_path / "results.zarr"
    table = _grid_table()
    extract(coded_slide, table, _means_spec(means_model_path), store=store, batch_size=50)
    others = [
        (_grid_table(np.arange(100)), _means_spec(means_model_path)),  # other patches
        (table, _means_spec(means_model_path, input_size=8)),  # other preprocessing
        (table, load_model(means_model_path, trust_model=True, activation="sigmoid")),
    ]
    for other_table, spec in others:
        with pytest.raises(PathvizError, match="holds results of another job") as err:
            extract(coded_slide, other_table, spec, store=store, batch_size=50)
        assert str(store) in str(err.value)


@pytest.mark.parametrize("resume_batch_size", [24, 10])
def test_resume_with_another_batch_size(coded_slide, means_model_path, tmp_path, resume_batch_size):
    table = _grid_table()
    store = tmp_path / "results.zarr"
    spec = _means_spec(means_model_path)
    with pytest.raises(Cancelled):
        extract(coded_slide, table, spec, store=store, batch_size=12, cancelled=_cancel_after(4))
    full = extract(coded_slide, table, spec, batch_size=12)
    try:
        resumed = extract(coded_slide, table, spec, store=store, batch_size=resume_batch_size)
    except PathvizError:
        return  # refusing the store with a clear message would be fine too
    pd.testing.assert_frame_equal(resumed, full)


def test_store_without_embeddings_then_with(coded_slide, means_model_path, tmp_path):
    table = _grid_table()
    store = tmp_path / "results.zarr"
    spec = _means_spec(means_model_path)
    extract(coded_slide, table, spec, store=store, batch_size=50, embeddings=False)
    try:
        result = extract(coded_slide, table, spec, store=store, batch_size=50)
    except PathvizError:
        return
    _check_aligned(result, table)


def test_store_path_that_is_a_file(coded_slide, means_model_path, tmp_path):
    store = tmp_path / "results.txt"
    store.write_text("not a store")
    with pytest.raises(PathvizError, match="results.txt"):
        extract(coded_slide, _grid_table(), _means_spec(means_model_path), store=store)


# --- bad inputs ----------------------------------------------------------------------------


def test_bad_inputs(coded_slide, means_model_path):
    spec = _means_spec(means_model_path)
    table = _grid_table()
    for bs in (0, -3):
        with pytest.raises(PathvizError, match=f"--batch-size must be positive, got {bs}"):
            extract(coded_slide, table, spec, batch_size=bs)
    for level in (4, -1):
        with pytest.raises(PathvizError, match=f"--level {level}: the slide has levels 0-3"):
            extract(coded_slide, table, spec, level=level)
    empty = PatchTable(table.df.iloc[:0], "empty.csv")
    with pytest.raises(PathvizError, match="empty.csv: no patches to run the model on"):
        extract(coded_slide, empty, spec)
    outside = table.df.copy()
    outside.loc[5, "x"] = NX * P - P // 2  # half over the right edge
    with pytest.raises(PathvizError, match="row 5: patch x=200, y=0, size 16 lies outside"):
        extract(coded_slide, PatchTable(outside, "outside.csv"), spec)
    with pytest.raises(PathvizError, match="--device must be auto, cpu or cuda"):
        extract(coded_slide, table, spec, device="tpu")
    mixed = pd.concat(
        [table.df.iloc[:3], table.df.iloc[3:6].assign(patch_size=2 * P)], ignore_index=True
    )
    # Refused up front (before any store exists), even when every batch holds one size.
    for bs in (6, 3):
        with pytest.raises(PathvizError, match=r"mixed.csv: patches of different sizes \(16, 32"):
            extract(coded_slide, PatchTable(mixed, "mixed.csv"), spec, batch_size=bs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda(coded_slide, means_model_path, device):
    with pytest.raises(PathvizError, match=f"--device {device}: CUDA is not available"):
        extract(coded_slide, _grid_table(), _means_spec(means_model_path), device=device)
