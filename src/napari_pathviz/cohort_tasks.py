"""What the workers of a cohort run (see :mod:`napari_pathviz.cohort`): plan a slide, run the
model on a chunk of its patches, join the chunks into the slide's table.

Every task opens its slide itself from the path with the options it was sent: no Slide, dask
array or open file ever travels between processes (a tifffile handle cannot be pickled), and
the dask graphs a task builds (the lazily built levels of a single-level slide) are computed in
the task's own process, never handed to the cluster's scheduler. Every failure comes back as a
:class:`Failed` result, a one-line message, so that workers log no traceback per bad slide.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from distributed.diagnostics.plugin import WorkerPlugin

from .errors import PathvizError

if TYPE_CHECKING:
    from .cohort import ModelRecipe, SlideOptions

DEFAULT_PATCH_SIZE = 224


# --------------------------------------------------------------------------- failures


@dataclass
class Failed:
    """What a task returns when it fails: a result, not an exception, so that the worker logs
    no "Compute Failed" traceback and the client reports one line."""

    message: str


def one_line(exc: BaseException) -> str:
    if isinstance(exc, PathvizError):
        return str(exc)
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def reporting(task):
    """Runs a task with dask computed in its own process and turns any error into
    :class:`Failed`; an unexpected error's traceback goes to the worker's stderr (its log)."""

    @functools.wraps(task)
    def run(*args, **kwargs):
        try:
            with _local_dask():
                return task(*args, **kwargs)
        except PathvizError as exc:
            return Failed(one_line(exc))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            return Failed(one_line(exc))

    return run


# Tasks of one worker process share its dask config: the first to start sets the local threaded
# scheduler and the last to end restores the worker's own, so concurrent tasks never race.
_DASK_LOCK = threading.Lock()
_DASK_STATE: dict = {"depth": 0, "restore": None}


@contextmanager
def _local_dask():
    """dask computations of this task run here: a worker's default scheduler is its cluster,
    which would have to pickle the graph, open file handles and all."""
    import dask

    with _DASK_LOCK:
        if _DASK_STATE["depth"] == 0:
            _DASK_STATE["restore"] = dask.config.set(scheduler="threads")
        _DASK_STATE["depth"] += 1
    try:
        yield
    finally:
        with _DASK_LOCK:
            _DASK_STATE["depth"] -= 1
            if _DASK_STATE["depth"] == 0:
                _DASK_STATE["restore"].__exit__(None, None, None)


# --------------------------------------------------------------------------- the model, per worker

# Idle loaded models of this process, per recipe: a task takes one (loading it on first use) and
# gives it back, so concurrent threads of a worker never share a model (extract hooks into it).
_MODELS: dict[str, list] = {}
_MODELS_LOCK = threading.Lock()


@contextmanager
def borrow_model(recipe: ModelRecipe):
    key = recipe.cache_key()
    with _MODELS_LOCK:
        idle = _MODELS.get(key)
        spec = idle.pop() if idle else None
    if spec is None:
        spec = recipe.load()
    try:
        yield spec
    finally:
        with _MODELS_LOCK:
            for other in [k for k in _MODELS if k != key]:
                del _MODELS[other]  # an older version of the file, or another job's model
            _MODELS.setdefault(key, []).append(spec)


@reporting
def check_recipe(recipe: ModelRecipe) -> dict:
    """Loads the model in a worker (kept for its first chunk): a bad recipe fails once, up front.
    Returns its kind and what the user must hear once (no normalisation known), since a
    worker's own warnings go to its log."""
    with borrow_model(recipe) as spec:
        return {
            "kind": str(spec.metadata.get("kind", "")),
            "warning": spec.normalisation_warning(),
        }


# --------------------------------------------------------------------------- the tasks


def _open(path: str, options: SlideOptions):
    from .slide import open_slide

    return open_slide(path, options.layout)


@reporting
def plan_slide(path: str, rows, source: str, options: SlideOptions):
    """(patch rows, level, seconds) of one slide, as the single-slide command chooses them: the
    level (``target_mpp`` wins over ``level``), the slide's rows of the table (validated here, so
    that a bad row fails its slide only) or a tissue grid."""
    from .patches import patches_for_slide
    from .tissue import tissue_grid

    started = time.perf_counter()
    slide = _open(path, options)
    level = options.level
    if options.target_mpp is not None:
        level = slide.level_for_mpp(options.target_mpp)
    if not 0 <= level < len(slide.levels):
        raise PathvizError(
            f"{path}: --level {level}: the slide has levels 0-{len(slide.levels) - 1}"
        )
    if rows is None:
        size = options.patch_size or DEFAULT_PATCH_SIZE
        table = tissue_grid(slide, size, None, options.min_tissue)
        if not len(table):
            raise PathvizError(
                f"{path}: no {size} px patch has a tissue fraction >= {options.min_tissue:g}"
            )
    else:
        try:
            table = patches_for_slide(
                rows.reset_index(drop=True), source, slide, patch_size=options.patch_size
            )
        except PathvizError as exc:
            raise PathvizError(_row_of_table(str(exc), rows.index)) from None
        sizes = sorted({int(s) for s in table.patch_sizes})
        if len(sizes) > 1:
            raise PathvizError(
                f"{source}: slide {slide.slide_id} has patches of several sizes "
                f"({', '.join(map(str, sizes))}); choose one with --patch-size"
            )
    return table.df, level, time.perf_counter() - started


def _row_of_table(message: str, index) -> str:
    """A bad value's row counted among this slide's rows, as the table's own row number (the
    slide's rows keep the table's index): the row the user can find in the file."""
    import re

    def renumber(match):
        position = int(match.group(1))
        row = index[position] if position < len(index) else position
        return f"row {row}: {match.group(2)} "

    return re.sub(r"\brow (\d+): (x|y|patch_size) ", renumber, message, count=1)


@reporting
def run_chunk(
    path: str,
    rows,
    source: str,
    recipe: ModelRecipe,
    store: str,
    part: str,
    options: SlideOptions,
    level: int,
    *,
    torch_threads: int | None,
    spread_gpus: bool,
):
    """(patches, seconds) of one chunk of a slide, its results written to ``part``."""
    from .inference import extract
    from .patches import PatchTable

    started = time.perf_counter()
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    slide = _open(path, options)
    table = PatchTable(rows.reset_index(drop=True), source)
    with borrow_model(recipe) as spec:
        device = worker_device(options.device, spread_gpus)
        _drop_stale_store(store, table, spec, level, options, slide, device)
        result = extract(
            slide,
            table,
            spec,
            store=store,
            batch_size=options.batch_size,
            device=device,
            workers=options.read_threads,
            level=level,
            bf16=options.bf16,
            embeddings=options.embeddings,
            allow_missing_tiles=options.allow_missing_tiles,
        )
    write_parquet(result, Path(part))
    return len(result), time.perf_counter() - started


@reporting
def assemble_slide(out: str, parts: list[str], work: str, keep: bool, job: str, *chunks):
    """(patches, seconds): the parts, in row order, as the slide's table ``out`` (its job
    recorded in the file's metadata); then the slide's work folder is removed unless ``keep``."""
    import pandas as pd

    failed = [c for c in chunks if isinstance(c, Failed)]
    if failed:
        return failed[0]
    started = time.perf_counter()
    frames = [pd.read_parquet(p) for p in parts]
    table = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    write_parquet(table, Path(out), job=job)
    if keep:
        for p in parts:
            Path(p).unlink(missing_ok=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    n = sum(c[0] for c in chunks)
    return n, sum(c[1] for c in chunks) + time.perf_counter() - started


JOB_METADATA = b"pathviz_cohort_job"


def write_parquet(df, path: Path, job: str | None = None) -> None:
    """Written to a temporary name first: a parquet under its own name is always complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
        if job is not None:
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), JOB_METADATA: job.encode()}
            )
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _drop_stale_store(
    store: str, table, spec, level: int, options: SlideOptions, slide, device: str
) -> None:
    """A chunk store left by a run with other patches, chunking, slide or model is removed
    (unless another process is writing it): the cohort's stores are its own journal, not the
    user's files."""
    import zarr

    from .inference import job_key, resolve_device
    from .store import check_store_metadata, remove_job_store

    if not os.path.exists(store):
        return
    try:
        check_store_metadata(Path(store), str(store), "results")  # damaged: rebuilt, not refused
        job = zarr.open_group(store, mode="r").attrs.get("job")
    except Exception:
        job = None
    bf16 = options.bf16 and resolve_device(device).startswith("cuda")
    key = job_key(
        table, spec, level, options.batch_size, options.embeddings, slide=slide, bf16=bf16
    )
    if job != key:
        remove_job_store(store)


def worker_device(device: str, spread_gpus: bool) -> str:
    """``auto``/``cuda`` on a local cluster's worker N with several GPUs: GPU N (mod count)."""
    if not spread_gpus or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return device
    from distributed import get_worker

    try:
        index = int(get_worker().name)
    except (ValueError, TypeError):
        return device
    return f"cuda:{index % torch.cuda.device_count()}"


# --------------------------------------------------------------------------- quiet workers


class WorkerLog(WorkerPlugin):
    """A worker plugin for the cohort's own local cluster: the worker process's stderr (log
    lines, warnings, tracebacks, C libraries' messages) goes to ``path`` instead of the user's
    terminal, which the worker would otherwise share."""

    name = "pathviz-worker-log"

    def __init__(self, path: str):
        self.path = path

    def setup(self, worker) -> None:
        sys.stderr.flush()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.dup2(fd, 2)
        finally:
            os.close(fd)

    def teardown(self, worker) -> None:
        pass
