"""Resume stores serve nothing stale, are written by one process at a time, and a failed run
never blocks its corrected rerun.

Real files throughout: a JPEG pyramidal TIFF cut from a real tissue image, a tiny CNN saved as
a state dict and rebuilt by factories of this module, real second processes for the lock.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from torch import nn

from conftest import write_pyramidal_tiff
from napari_pathviz.attribution.stored import explain
from napari_pathviz.errors import Cancelled, PathvizError
from napari_pathviz.inference import extract, job_key
from napari_pathviz.models import load_model
from napari_pathviz.patches import PatchTable
from napari_pathviz.slide import open_slide
from napari_pathviz.store import model_digest, slide_digest
from napari_pathviz.store_lock import StoreLock

P = 32  # patch size
H, W = 256, 384  # the slide: 8 x 12 patches
FACTORY = f"{__name__}:tiny_net"
ANOTHER = "is being written by process"


class TinyNet(nn.Sequential):
    """Conv -> activation -> pooling -> 2 x 2 average -> Linear(16, 3). The pooling and the
    activation are factory choices that hold no weights: one state dict fits every choice."""

    def __init__(self, pool: str = "max", act: str = "relu"):
        super().__init__(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU() if act == "relu" else nn.GELU(),
            nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 3),
        )


def tiny_net(pool: str = "max", act: str = "relu") -> nn.Module:
    return TinyNet(pool, act)


def tiny_net_gelu() -> nn.Module:
    return TinyNet(act="gelu")


def _weights(seed: int) -> dict:
    torch.manual_seed(seed)
    return TinyNet().state_dict()


@pytest.fixture
def files(tmp_path, tissue_rgb):
    """The slide, its patch table and the model's weights, all written here."""
    slide = write_pyramidal_tiff(tmp_path / "slide.tif", tissue_rgb[200 : 200 + H, 300 : 300 + W])
    torch.save(_weights(0), tmp_path / "model.pt")
    rows, cols = np.divmod(np.arange((H // P) * (W // P)), W // P)
    table = pd.DataFrame({"ID": "slide", "x": cols * P, "y": rows * P, "patch_size": P})
    return {"slide": slide, "model": tmp_path / "model.pt", "table": table, "dir": tmp_path}


def _spec(files, **options):
    return load_model(files["model"], factory=options.pop("factory", FACTORY), **options)


def _run(files, store=None, table=None, **kwargs):
    table = PatchTable(files["table"] if table is None else table, "table.csv")
    spec_options = {
        k: kwargs.pop(k) for k in list(kwargs) if k not in ("level", "embeddings", "cancelled")
    }
    slide = open_slide(files["slide"])
    return extract(slide, table, _spec(files, **spec_options), store=store, batch_size=16, **kwargs)


def _numbers(result: pd.DataFrame) -> np.ndarray:
    return result.filter(regex=r"^(prob|feat)_").to_numpy()


# --- 5: every option that changes a number keys the store ---------------------------------

VARIANTS = {
    "input size": {"input_size": 16},
    "resize mode": {"input_size": 24, "resize_mode": "crop"},
    "mean/std": {"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)},
    "channel order": {"channel_order": "BGR"},
    "activation": {"activation": "sigmoid"},
    "feature layer": {"feature_layer": "2"},
    "factory": {"factory": f"{__name__}:tiny_net_gelu"},
    "factory kwargs": {"factory_kwargs": {"pool": "avg"}},
    "level": {"level": 1},
}
BASE = {"input_size": 24, "resize_mode": "resize"}  # so that crop differs from resize


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_option_changes_the_job(files, name):
    """A finished store of the base job; the same store with one option changed is refused
    as another job, and that option's own numbers differ (so serving the store would have
    been stale)."""
    store = files["dir"] / "results.zarr"
    base = _run(files, store, **BASE)
    variant = {**BASE, **VARIANTS[name]}
    with pytest.raises(PathvizError, match="holds results of another job") as err:
        _run(files, store, **variant)
    assert str(store) in str(err.value)
    fresh = _run(files, **variant)
    if name == "level":
        assert (fresh["x"] == base["x"]).all()  # same patches, read at another level
    numbers, before = _numbers(fresh), _numbers(base)
    assert numbers.shape != before.shape or not np.allclose(numbers, before, atol=1e-6), name
    # the store still holds the base job, which resumes (reads) unchanged
    pd.testing.assert_frame_equal(_run(files, store, **BASE), base)


def test_other_weights_of_the_same_size_and_time(files):
    """The model file rewritten with other weights, its size and mtime set back: refused."""
    store = files["dir"] / "results.zarr"
    _run(files, store)
    stat = os.stat(files["model"])
    torch.save(_weights(1), files["model"])
    os.utime(files["model"], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(files["model"]).st_size == stat.st_size
    with pytest.raises(PathvizError, match="holds results of another job"):
        _run(files, store)


def test_another_slide_of_the_same_name(files, tissue_rgb):
    """Another scan under the same name and of the same shape: refused."""
    store = files["dir"] / "results.zarr"
    first = open_slide(files["slide"])
    shapes, digest = [lv.shape for lv in first.levels], slide_digest(first)
    _run(files, store)
    other = tissue_rgb[500 : 500 + H, 700 : 700 + W]
    write_pyramidal_tiff(files["slide"], other)
    second = open_slide(files["slide"])
    assert [lv.shape for lv in second.levels] == shapes
    assert slide_digest(second) != digest
    with pytest.raises(PathvizError, match="holds results of another job"):
        _run(files, store)


def test_another_zarr_slide_with_identical_metadata(files, tissue_rgb):
    """An OME-Zarr rewritten with other pixels: every metadata file is byte-identical, so only
    the sampled pixels tell the two apart, and they do."""
    import dask.array as da

    from napari_pathviz.io.zarr_io import write_ome_zarr

    path = files["dir"] / "slide.ome.zarr"

    def write(image):
        shutil.rmtree(path, ignore_errors=True)
        levels = [da.from_array(image, chunks=(64, 64, 3))]
        write_ome_zarr(levels, path, n_native=1, mpp=0.5, chunk=64)

    write(tissue_rgb[:H, :W])
    first = slide_digest(open_slide(path))
    files = {**files, "slide": path}
    store = files["dir"] / "results.zarr"
    _run(files, store)
    write(tissue_rgb[H : 2 * H, W : 2 * W])
    assert slide_digest(open_slide(path)) != first
    with pytest.raises(PathvizError, match="holds results of another job"):
        _run(files, store)


def test_other_patches_and_layout_options(files):
    store = files["dir"] / "results.zarr"
    _run(files, store)
    with pytest.raises(PathvizError, match="another job"):
        _run(files, store, table=files["table"].iloc[::2])
    with pytest.raises(PathvizError, match="another job"):
        _run(files, store, embeddings=False)


def test_key_covers_bf16_and_in_place_weight_changes(files):
    """bf16 (effective on CUDA only, so tested on the key) and weights changed in place in
    the same model object (the per-object digest cache must notice)."""
    spec = _spec(files)
    slide = open_slide(files["slide"])
    table = PatchTable(files["table"], "table.csv")
    key = job_key(table, spec, 0, 16, slide=slide)
    assert job_key(table, spec, 0, 16, slide=slide) == key
    assert job_key(table, spec, 0, 16, slide=slide, bf16=True) != key
    before = model_digest(spec.model)
    with torch.no_grad():
        spec.model[0].bias[0] += 1e-3
    assert model_digest(spec.model) != before
    assert job_key(table, spec, 0, 16, slide=slide) != key


def _attribution_inputs(files):
    from napari_pathviz.inference import read_patch_batch

    slide = open_slide(files["slide"])
    patches = read_patch_batch(slide, files["table"].iloc[:6])
    return _spec(files).preprocess(patches)


ATTRIBUTION_VARIANTS = {
    "target": {"target": 2},
    "output": {"output": "softmax"},
    "samples": {"n_samples": 12},
    "smoothing": {"local_smoothing": 0.1},
    "seed": {"seed": 3},
    "background": {"background_rows": slice(2, 6)},
    "factory": {"factory": f"{__name__}:tiny_net_gelu"},
}


def test_attribution_store_keys(files):
    """Each option of an attribution job, the inputs' pixels and the model's factory change
    its key: the finished store is refused as another job, never served."""
    x = _attribution_inputs(files)
    store = files["dir"] / "maps.zarr"

    def run(**changes):
        model = _spec(files, factory=changes.pop("factory", FACTORY)).model
        background = x[changes.pop("background_rows", slice(0, 4))]
        options = {"n_samples": 8, "seed": 0, "target": 1, "chunk_size": 3, **changes}
        return explain(model, x, "gradient", background=background, store=store, **options)

    base = run()
    for name, changes in ATTRIBUTION_VARIANTS.items():
        with pytest.raises(PathvizError, match="holds attributions of another job"):
            run(**changes)
        assert name
    np.testing.assert_array_equal(run().maps, base.maps)  # the same job: served
    with pytest.raises(PathvizError, match="another job"):
        explain(
            _spec(files).model, x.flip(3), "gradient", background=x[:4], store=store, n_samples=8
        )


# --- 6: one writer at a time ----------------------------------------------------------------

_HOLDER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import pandas as pd
from napari_pathviz.inference import extract
from napari_pathviz.models import load_model
from napari_pathviz.patches import PatchTable
from napari_pathviz.slide import open_slide

flag = Path({flag!r})
def progress(done, total, rate):
    flag.with_suffix(".started").touch()
    while not flag.exists():  # hold the store until the test says go
        time.sleep(0.05)
spec = load_model({model!r}, factory={factory!r})
table = PatchTable(pd.read_csv({table!r}), "table.csv")
extract(open_slide({slide!r}), table, spec, store={store!r}, batch_size=16, progress=progress)
"""


def test_second_writer_is_refused_while_the_first_writes(files):
    """A real second process holds the store mid-job; this process is refused with the
    holder's pid; once the holder finishes, the rerun finds every batch done and matches."""
    store = files["dir"] / "results.zarr"
    files["table"].to_csv(files["dir"] / "table.csv", index=False)
    flag = files["dir"] / "go"
    script = _HOLDER.format(
        tests=str(Path(__file__).parent),
        flag=str(flag),
        model=str(files["model"]),
        factory="test_store_safety:tiny_net",
        table=str(files["dir"] / "table.csv"),
        slide=str(files["slide"]),
        store=str(store),
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not flag.with_suffix(".started").exists():
            assert holder.poll() is None, holder.stderr.read()
            assert time.time() < deadline
            time.sleep(0.05)
        with pytest.raises(PathvizError) as err:
            _run(files, store)
        message = str(err.value)
        assert message == (
            f"store {store} is being written by process {holder.pid}; "
            f"wait or remove {store}/.lock if that process is gone"
        )
        assert "\n" not in message
    finally:
        flag.touch()
        assert holder.wait(timeout=120) == 0, holder.stderr.read()
    assert not (store / ".lock").exists()
    assert zarr.open_group(str(store), mode="r")["done"][:].all()
    pd.testing.assert_frame_equal(_run(files, store), _run(files))


_CONTENDER = """
import sys, time
from pathlib import Path
from napari_pathviz.errors import PathvizError
from napari_pathviz.store_lock import StoreLock

folder, counter = Path(sys.argv[1]), Path(sys.argv[2])
got = refused = 0
while got < 15:
    try:
        with StoreLock(folder):
            n = int(counter.read_text())  # an unguarded read-modify-write: loses counts
            time.sleep(0.002)             # unless the lock excludes the others
            counter.write_text(str(n + 1))
        got += 1
    except PathvizError as exc:
        assert "is being written by process" in str(exc), exc
        refused += 1
print(got, refused)
"""


def test_lock_excludes_concurrent_processes(tmp_path):
    """Four real processes take the lock 15 times each around a read-modify-write of one
    counter: no count is lost, so no two ever held it at once; refusals did happen."""
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(tmp_path), str(counter)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert int(counter.read_text()) == 60
    refused = sum(int(out.split()[1]) for out, _ in outputs)
    assert refused > 0
    assert not (tmp_path / ".lock").exists()


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def _write_lock(store: Path, pid: int, host: str | None = None) -> None:
    store.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": host or socket.gethostname(), "token": "t"}
    (store / ".lock").write_text(json.dumps(record))


def test_stale_lock_of_a_dead_process_is_recovered(files):
    store = files["dir"] / "results.zarr"
    with pytest.raises(Cancelled):
        _run(files, store, cancelled=lambda: True)
    _write_lock(store, _dead_pid())  # as a kill -9 of the writer leaves it
    result = _run(files, store)
    assert not (store / ".lock").exists()
    pd.testing.assert_frame_equal(result, _run(files))


def test_lock_of_a_live_process_or_another_host_is_kept(files):
    store = files["dir"] / "results.zarr"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(store, sleeper.pid)
        with pytest.raises(PathvizError, match=f"being written by process {sleeper.pid};"):
            _run(files, store)
    finally:
        sleeper.kill()
        sleeper.wait()
    _write_lock(store, _dead_pid(), host="elsewhere.example")
    with pytest.raises(PathvizError, match="process .* on host elsewhere.example; wait or"):
        _run(files, store)
    assert json.loads((store / ".lock").read_text())["host"] == "elsewhere.example"


def test_lock_is_released_when_the_job_fails(files):
    store = files["dir"] / "results.zarr"
    with pytest.raises(Cancelled):
        _run(files, store, cancelled=lambda: True)
    assert not (store / ".lock").exists()
    with StoreLock(store):
        assert (store / ".lock").exists()
    assert not (store / ".lock").exists()


# --- 7: a failed run never blocks the corrected rerun -------------------------------------


def test_target_out_of_range_creates_no_store(files):
    x = _attribution_inputs(files)
    model = _spec(files).model
    store = files["dir"] / "maps.zarr"
    with pytest.raises(PathvizError, match="target class 7 is out of range: the model has 3"):
        explain(model, x, "gradient", background=x[:4], target=7, store=store, n_samples=8)
    assert not store.exists()
    for bad, match in [({"method": "bogus"}, "--method must be one of"), ({"output": "x"}, "-p")]:
        options = {"method": "gradient", **bad}
        with pytest.raises(PathvizError, match=match):
            explain(model, x, background=x[:4], target=1, store=store, n_samples=8, **options)
        assert not store.exists()
    result = explain(model, x, "gradient", background=x[:4], target=1, store=store, n_samples=8)
    assert result.maps.shape[0] == len(x) and (result.targets == 1).all()


def test_mixed_patch_sizes_create_no_store(files):
    store = files["dir"] / "results.zarr"
    mixed = files["table"].copy()
    mixed.loc[50:, "patch_size"] = 2 * P
    mixed = mixed[(mixed.x + mixed.patch_size <= W) & (mixed.y + mixed.patch_size <= H)]
    with pytest.raises(PathvizError, match=r"table.csv: patches of different sizes \(32, 64"):
        _run(files, store, table=mixed)
    assert not store.exists()
    pd.testing.assert_frame_equal(_run(files, store), _run(files))


def test_store_without_job_record_and_nothing_finished_is_reinitialised(files):
    """As a crash between creating the arrays and recording the job left it (the old order),
    or during setup (job recorded, not ready): the rerun starts afresh, silently."""
    full = _run(files)
    store = files["dir"] / "results.zarr"
    root = zarr.open_group(str(store), mode="w")
    root.create_array("probs", shape=(96, 3), chunks=(16, 3), dtype="float32", fill_value=0.5)
    root.create_array("done", shape=(6,), chunks=(6,), dtype="bool", fill_value=False)
    pd.testing.assert_frame_equal(_run(files, store), full)

    # The job recorded at creation, but its arrays half made (a crash during setup).
    key = job_key(
        PatchTable(files["table"], "table.csv"),
        _spec(files),
        0,
        16,
        slide=open_slide(files["slide"]),
    )
    root = zarr.open_group(str(store), mode="w", attributes={"job": key})
    root.create_array("probs", shape=(96, 3), chunks=(16, 3), dtype="float32", fill_value=0.5)
    pd.testing.assert_frame_equal(_run(files, store), full)
    assert zarr.open_group(str(store), mode="r").attrs["ready"] is True


def test_store_with_finished_chunks_but_no_job_record_is_refused(files):
    store = files["dir"] / "results.zarr"
    root = zarr.open_group(str(store), mode="w")
    root.create_array("done", shape=(6,), chunks=(6,), dtype="bool", fill_value=False)
    root["done"][0] = True
    with pytest.raises(PathvizError, match="holds finished results but no job record"):
        _run(files, store)


def test_failed_run_of_the_same_job_resumes(files):
    """A run stopped after two batches (here a cancel; a crash leaves the same store) resumes:
    the rerun computes only the rest and gives the uninterrupted numbers."""
    store = files["dir"] / "results.zarr"
    calls = []

    def cancel_after_two() -> bool:
        calls.append(None)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        _run(files, store, cancelled=cancel_after_two)
    done = zarr.open_group(str(store), mode="r")["done"][:]
    assert done.tolist() == [True, True, False, False, False, False]
    pd.testing.assert_frame_equal(_run(files, store), _run(files))


def test_a_zarr_of_something_else_is_never_cleared(files, tissue_rgb):
    """The slide itself (an OME-Zarr) given as the store: refused, not a byte changed."""
    import dask.array as da

    from napari_pathviz.io.zarr_io import write_ome_zarr

    path = files["dir"] / "slide.ome.zarr"
    write_ome_zarr([da.from_array(tissue_rgb[:H, :W], chunks=(64, 64, 3))], path, n_native=1)
    before = sorted((str(p), p.stat().st_size) for p in path.rglob("*"))
    with pytest.raises(PathvizError, match="not a store of pathviz results"):
        _run({**files, "slide": path}, path)
    assert sorted((str(p), p.stat().st_size) for p in path.rglob("*")) == before


def test_a_folder_that_is_not_a_store_is_never_cleared(files):
    folder = files["dir"] / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(PathvizError, match="not a store of pathviz results"):
        _run(files, folder)
    assert (folder / "notes.txt").read_text() == "keep me"
    assert not (folder / ".lock").exists()


def test_cli_corrected_rerun_after_a_refused_option(tmp_path):
    """The issue's runs, as a user types them: ``--target 7`` on the 3-class demo model and a
    table of mixed patch sizes fail with exit 2 and leave no store; the corrected commands
    then run into the same store paths."""
    from importlib import resources

    from conftest import run_cli
    from napari_pathviz._demo import ensure_demo_data
    from napari_pathviz.patches import load_patches

    paths = ensure_demo_data()
    weights = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
    model = ["-m", weights, "--factory", "napari_pathviz._demo_model:build_demo_model"]
    common = [*model, "--slide", paths["slide"], "--patches", paths["patches"]]
    maps = tmp_path / "maps.zarr"
    explain_args = ["shapley-plot", *common, "--ids", "0", "1", "-ns", "8", "-bs", "4"]
    explain_args += ["--attributions-out", maps, "-o", tmp_path / "s.png"]
    bad = run_cli(*explain_args, "--target", "7")
    assert bad.returncode == 2, bad.stderr
    assert "target class 7 is out of range" in bad.stderr.strip().splitlines()[-1]
    assert not maps.exists()
    good = run_cli(*explain_args, "--target", "1")
    assert good.returncode == 0, good.stderr

    table = load_patches(paths["patches"]).df.iloc[:40].copy()
    mixed = table.assign(patch_size=np.where(np.arange(40) < 20, table.patch_size, 32))
    mixed.to_csv(tmp_path / "mixed.csv", index=False)
    table.to_csv(tmp_path / "one.csv", index=False)
    store = tmp_path / "results.zarr"
    extract_args = ["extract", *model, "--slide", paths["slide"], "--store", store]
    bad = run_cli(*extract_args, "--patches", tmp_path / "mixed.csv", "-o", tmp_path / "r.csv")
    assert bad.returncode == 2, bad.stderr
    assert "patches of different sizes" in bad.stderr.strip().splitlines()[-1]
    assert not store.exists()
    good = run_cli(*extract_args, "--patches", tmp_path / "one.csv", "-o", tmp_path / "r.csv")
    assert good.returncode == 0, good.stderr
    assert len(pd.read_csv(tmp_path / "r.csv")) == 40
