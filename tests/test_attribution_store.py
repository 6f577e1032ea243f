"""Attributions written chunk by chunk to a zarr store: nothing finished is lost on a cancel, a
rerun resumes without recomputing finished chunks and gives the uninterrupted run's maps, and
target "each" explains every class of every patch."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from napari_pathviz.attribution import attribute
from napari_pathviz.attribution.stored import explain, open_attributions
from napari_pathviz.errors import Cancelled, PathvizError


@pytest.fixture(scope="module")
def demo():
    from napari_pathviz._demo import load_demo
    from napari_pathviz._demo_model import load_demo_model, read_patches, to_model_input

    slide, table = load_demo(with_predictions=False)
    x = to_model_input(read_patches(slide, table))
    return load_demo_model(), x[:7], x[40:48], table.df.iloc[:7]


class Counting(nn.Module):
    """Counts the patches the wrapped model is run on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, 0

    def forward(self, x):
        self.seen += len(x)
        return self.model(x)


class CancelAfterRows:
    """A progress callback and a cancel flag: asks to cancel once ``rows`` rows are done,
    as a user pressing Cancel part-way."""

    def __init__(self, rows: int):
        self.rows, self.done = rows, 0

    def progress(self, done: int, _total: int) -> None:
        self.done = done

    def cancelled(self) -> bool:
        return self.done >= self.rows


@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_resume_recomputes_nothing_finished_and_matches(demo, tmp_path, method):
    model, x, background, keys = demo
    options = {"n_samples": 24, "batch_size": 64} if method == "gradient" else {}
    common = dict(background=background, chunk_size=3, keys=keys, seed=5, **options)
    whole = explain(model, x, method, store=tmp_path / "whole.zarr", **common)

    counting = Counting(model)
    with pytest.raises(Cancelled, match="finished chunks are kept"):
        stop = CancelAfterRows(3)
        explain(
            counting,
            x,
            method,
            store=tmp_path / "cut.zarr",
            progress=stop.progress,
            cancelled=stop.cancelled,
            **common,
        )
    first_run = counting.seen
    assert first_run > 0
    counting.seen = 0
    resumed = explain(counting, x, method, store=tmp_path / "cut.zarr", **common)
    # 7 patches in chunks of 3: the first chunk was kept, only the last two ran again.
    explained_again = counting.seen
    counting.seen = 0
    explain(counting, x, method, store=tmp_path / "fresh.zarr", **common)
    whole_cost = counting.seen
    assert 0 < explained_again < whole_cost
    np.testing.assert_allclose(explained_again / whole_cost, 4 / 7, atol=0.1)
    np.testing.assert_allclose(resumed.maps, whole.maps, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(resumed.targets, whole.targets)
    # A finished store reopens lazily with the patches' keys.
    stored, stored_keys = open_attributions(tmp_path / "cut.zarr")
    assert not isinstance(stored.maps, np.ndarray)  # read from disk on demand
    np.testing.assert_allclose(stored.maps[2], whole.maps[2], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(stored_keys["x"], keys["x"])
    # Rerunning a finished job computes nothing.
    counting.seen = 0
    explain(counting, x, method, store=tmp_path / "cut.zarr", **common)
    assert counting.seen == 0


def test_a_store_of_another_job_is_refused(demo, tmp_path):
    model, x, background, _ = demo
    explain(model, x[:2], "gradient", background=background, n_samples=8, store=tmp_path / "s")
    with pytest.raises(PathvizError, match="holds attributions of another job"):
        explain(model, x[:2], "gradient", background=background, n_samples=9, store=tmp_path / "s")
    (tmp_path / "half").mkdir()
    with pytest.raises(PathvizError, match="not an attributions store"):
        open_attributions(tmp_path / "half")


def test_unfinished_store_cannot_be_opened_as_finished(demo, tmp_path):
    model, x, _, _ = demo
    with pytest.raises(Cancelled):
        stop = CancelAfterRows(4)
        explain(
            model,
            x,
            "gradcam",
            store=tmp_path / "s",
            chunk_size=2,
            progress=stop.progress,
            cancelled=stop.cancelled,
        )
    with pytest.raises(PathvizError, match=r"unfinished \(2 of 4 chunks done\); rerun"):
        open_attributions(tmp_path / "s")


@pytest.mark.parametrize("method", ["deep", "gradcampp"])
def test_each_class_is_every_class_of_every_patch(demo, method):
    model, x, background, _ = demo
    each = explain(model, x[:3], method, background=background[:4], target="each", chunk_size=4)
    n_classes = each.logits.shape[1]
    assert n_classes == 3
    np.testing.assert_array_equal(each.patch_of_rows(), np.repeat(np.arange(3), n_classes))
    np.testing.assert_array_equal(each.targets, np.tile(np.arange(n_classes), 3))
    for k in range(n_classes):
        single = attribute(model, x[:3], method, background=background[:4], target=k)
        rows = np.flatnonzero(each.targets == k)
        np.testing.assert_allclose(each.maps[rows], single.maps, rtol=1e-4, atol=1e-6)
    # Different classes have different maps (the test could not pass with one map repeated).
    assert not np.allclose(each.maps[0], each.maps[1])


def test_progress_counts_rows_to_the_end(demo):
    model, x, background, _ = demo
    seen = []
    explain(
        model,
        x,
        "gradient",
        background=background,
        n_samples=8,
        chunk_size=2,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (7, 7)
    assert all(total == 7 for _, total in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_channels_last_gives_the_same_maps(demo):
    from napari_pathviz._demo_model import load_demo_model

    model, x, background, _ = demo

    plain = attribute(model, x[:2], "gradient", background=background, n_samples=16)
    last = attribute(
        load_demo_model(),
        x[:2],
        "gradient",
        background=background,
        n_samples=16,
        channels_last=True,
    )
    np.testing.assert_allclose(last.maps, plain.maps, rtol=1e-3, atol=1e-5)
    assert last.metadata["channels_last"] is True


@pytest.mark.parametrize("method", ["gradcam", "deep"])
def test_out_of_memory_halves_the_batch_for_every_method(demo, method):
    from napari_pathviz.errors import PathvizWarning
    from test_attribution import MemoryCapped

    model, x, background, _ = demo
    references = background[:2]
    reference = explain(model, x, method, background=references, batch_size=8)
    capped = MemoryCapped(model, cap=6 if method == "gradcam" else 11)
    # Grad-CAM's forward sees 7 patches (> 6), then 4. DeepLIFT's sees every (patch,
    # reference) pair of its batch: 7 x 2 = 14 (> 11), then 4 x 2 = 8.
    with pytest.warns(PathvizWarning, match="batch size lowered to 4") as caught:
        result = explain(capped, x, method, background=references, batch_size=8, chunk_size=7)
    lowered = [str(w.message) for w in caught if issubclass(w.category, PathvizWarning)]
    assert lowered[-1].endswith("4")
    np.testing.assert_allclose(result.maps, reference.maps, rtol=1e-4, atol=1e-6)
    with pytest.raises(PathvizError, match="out of device memory even with one patch"):
        explain(MemoryCapped(model, cap=0), x[:1], "gradcam", batch_size=1)


def test_per_channel_maps_are_stored_unless_declined(demo, tmp_path):
    import zarr

    model, x, background, _ = demo
    kept = explain(model, x[:2], "deep", background=background[:3], store=tmp_path / "all")
    assert kept.per_channel.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(kept.per_channel.sum(axis=1), kept.maps, rtol=1e-5, atol=1e-6)
    assert "per_channel" in zarr.open_group(str(tmp_path / "all"), mode="r")
    summed = explain(
        model,
        x[:2],
        "deep",
        background=background[:3],
        store=tmp_path / "sum",
        keep_per_channel=False,
    )
    assert summed.per_channel is None
    assert "per_channel" not in zarr.open_group(str(tmp_path / "sum"), mode="r")
    np.testing.assert_allclose(summed.maps, kept.maps, rtol=1e-5, atol=1e-7)


def test_grad_cam_pp_eps_is_part_of_the_store_key(demo, tmp_path):
    """--gradcampp-eps changes the maps, so a store of one eps is never resumed as another's;
    eps 0 (the default) keys as before the option existed, so those stores still resume."""
    model, x, _, keys = demo
    common = {"keys": keys, "chunk_size": 4}
    with_eps = explain(model, x, "gradcampp", store=tmp_path / "eps.zarr", eps=1e-6, **common)
    np.testing.assert_allclose(
        with_eps.maps, attribute(model, x, "gradcampp", eps=1e-6).maps, rtol=1e-5, atol=1e-8
    )
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "eps.zarr").rglob("*"))
    with pytest.raises(PathvizError, match="other model, patches, background, method or options"):
        explain(model, x, "gradcampp", store=tmp_path / "eps.zarr", **common)
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "eps.zarr").rglob("*")) == before
    counting = Counting(model)
    paper = explain(counting, x, "gradcampp", store=tmp_path / "paper.zarr", **common)
    assert not np.allclose(paper.maps, with_eps.maps, rtol=1e-3)  # the option changes numbers
    first_run, counting.seen = counting.seen, 0
    again = explain(counting, x, "gradcampp", store=tmp_path / "paper.zarr", eps=0.0, **common)
    assert counting.seen < first_run  # eps 0 reopened the store made without the option
    np.testing.assert_array_equal(again.maps, paper.maps)
    with pytest.raises(PathvizError, match="--gradcampp-eps must be 0 or more"):
        explain(model, x, "gradcampp", store=tmp_path / "negative.zarr", eps=-1e-6, **common)
    assert not (tmp_path / "negative.zarr").exists()
