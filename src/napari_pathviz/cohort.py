"""A cohort of slides through the model on dask.distributed: one task per slide chunk.

The client plans and records; the workers do everything that touches a slide or the model. Each
slide is first *planned* on a worker (opened, its patches taken from the given table or a tissue
grid, checked), then split into chunks of patches, each a task that loads the model in its
worker (once per worker process: models never travel through the scheduler), runs
:func:`napari_pathviz.inference.extract` with its own resumable results store, and writes its
part; a last task per slide joins the parts, in row order, into ``{out_dir}/{ID}.parquet``.

A slide that fails (unreadable file, a chunk raising, a worker dying) is reported in the summary
and the others go on; a slide whose parquet exists is skipped on the next run, and an interrupted
slide resumes from its stores. ``out_dir`` and the slides must be visible to the workers under the
same paths (always so with the default local cluster; a shared filesystem for a remote one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import PathvizError

LIST_SUFFIXES = (".txt",)
SUMMARY_COLUMNS = ("slide", "ID", "status", "patches", "seconds", "error")
DEFAULT_PATCH_SIZE = 224


# --------------------------------------------------------------------------- failures


@dataclass
class _Failed:
    """What a task returns for an expected failure (a PathvizError): a result, not an exception,
    so that workers do not log a traceback for each unreadable slide. Other errors raise."""

    message: str


def _reporting(task):
    """Wraps a task so that its PathvizError comes back as :class:`_Failed`."""
    import functools

    @functools.wraps(task)
    def run(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except PathvizError as exc:
            return _Failed(str(exc))

    return run


# --------------------------------------------------------------------------- finding the slides


def find_cohort_slides(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """The slides of a cohort: each source is a slide (file, or zarr folder), a folder holding
    slides (not searched further down; a ``*.zarr`` folder is one slide), or a ``.txt`` file
    listing such paths one per line (blank lines and ``#`` comments skipped; relative paths are
    relative to the list's folder). Absolute, sorted, without duplicates."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: dict[str, Path] = {}
    for source in sources:
        for path in _expand(Path(source), via=None):
            found.setdefault(os.path.normcase(str(path)), path)
    if not found:
        names = ", ".join(str(s) for s in sources) or "(no sources)"
        raise PathvizError(f"{names}: no slides found ({', '.join(_slide_suffixes())})")
    return sorted(found.values(), key=lambda p: str(p))


def _slide_suffixes() -> tuple[str, ...]:
    from .mosaic import SLIDE_SUFFIXES

    return SLIDE_SUFFIXES


def _is_slide(path: Path) -> bool:
    name = path.name.lower()
    if path.is_dir():
        return name.endswith(".zarr") or any(
            (path / meta).exists() for meta in (".zattrs", ".zarray", ".zgroup", "zarr.json")
        )
    return name.endswith(_slide_suffixes())


def _expand(path: Path, via: Path | None) -> Iterator[Path]:
    where = f" (listed in {via})" if via else ""
    if not path.exists():
        raise PathvizError(f"{path}: no such file or directory{where}")
    path = Path(os.path.abspath(path))  # not resolved: a symlink's name is the slide's ID
    if _is_slide(path):
        yield path
    elif path.is_dir():
        for child in sorted(path.iterdir()):
            if not child.name.startswith(".") and _is_slide(child):
                yield child
    elif path.name.lower().endswith(LIST_SUFFIXES):
        if via is not None:
            raise PathvizError(f"{path}: a slide list inside a slide list{where}")
        for line in path.read_text().splitlines():
            entry = line.split("#", 1)[0].strip()
            if entry:
                listed = Path(entry).expanduser()
                yield from _expand(listed if listed.is_absolute() else path.parent / listed, path)
    else:
        raise PathvizError(
            f"{path}: not a slide ({', '.join(_slide_suffixes())}), a folder of slides "
            f"or a .txt list of slides{where}"
        )


# --------------------------------------------------------------------------- the model, per worker


@dataclass
class ModelRecipe:
    """How to load the model (:func:`napari_pathviz.models.load_model`'s arguments): what is
    sent to the workers, each of which loads the model itself."""

    path: str
    factory: str | None = None
    factory_kwargs: dict[str, Any] | None = None  # None: the model card's
    trust_model: bool = False  # pickles and TorchScript are code
    input_size: int | None = None
    resize_mode: str | None = None  # None: the model card's, else "resize"
    channel_order: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    activation: str | None = None
    feature_layer: str | None = None
    card: str | None = None  # None: the card beside the weights, if any

    def __post_init__(self):
        self.path = str(Path(self.path).expanduser().absolute())
        if self.card is not None:
            self.card = str(Path(self.card).expanduser().absolute())
        if self.factory_kwargs is not None:
            self.factory_kwargs = dict(self.factory_kwargs)
        self.mean = tuple(float(v) for v in self.mean) if self.mean is not None else None
        self.std = tuple(float(v) for v in self.std) if self.std is not None else None

    def load(self):
        """The :class:`~napari_pathviz.models.ModelSpec` (loaded now, on the CPU)."""
        from .models import load_model

        return load_model(**asdict(self))

    def cache_key(self) -> str:
        """Changes with the recipe and with the model file (size, modification time)."""
        try:
            stat = os.stat(self.path)
            version = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            version = None
        return json.dumps([asdict(self), version], sort_keys=True, default=str)


# Idle loaded models of this process, per recipe: a task takes one (loading it on first use) and
# gives it back, so concurrent threads of a worker never share a model (extract hooks into it).
_MODELS: dict[str, list] = {}
_MODELS_LOCK = threading.Lock()


@contextmanager
def _borrow_model(recipe: ModelRecipe):
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


@_reporting
def _check_recipe(recipe: ModelRecipe) -> str:
    """Loads the model in a worker (kept for its first chunk): a bad recipe fails once, up front."""
    with _borrow_model(recipe) as spec:
        return str(spec.metadata.get("kind", ""))


# --------------------------------------------------------------------------- the tasks


@_reporting
def _plan_slide(
    path: str,
    rows,
    source: str,
    patch_size: int | None,
    min_tissue: float,
    level: int,
):
    """(patch rows, seconds) of one slide: its rows of the table, or a tissue grid; checked."""
    from .patches import PatchTable
    from .slide import open_slide
    from .tissue import tissue_grid

    started = time.perf_counter()
    slide = open_slide(path)
    if not 0 <= level < len(slide.levels):
        raise PathvizError(
            f"{path}: --level {level}: the slide has levels 0-{len(slide.levels) - 1}"
        )
    if rows is None:
        size = patch_size or DEFAULT_PATCH_SIZE
        table = tissue_grid(slide, size, min_tissue=min_tissue)
        if not len(table):
            raise PathvizError(
                f"{path}: no {size} px patch has a tissue fraction >= {min_tissue:g}"
            )
    else:
        table = PatchTable(rows.reset_index(drop=True), source)
        table.check_inside(slide.height, slide.width)
        sizes = sorted({int(s) for s in table.patch_sizes})
        if len(sizes) > 1:
            raise PathvizError(
                f"{source}: slide {slide.slide_id} has patches of several sizes "
                f"({', '.join(map(str, sizes))}); choose one with --patch-size"
            )
    return table.df, time.perf_counter() - started


@_reporting
def _run_chunk(
    path: str,
    rows,
    source: str,
    recipe: ModelRecipe,
    store: str,
    part: str,
    *,
    batch_size: int,
    device: str,
    level: int,
    bf16: bool,
    embeddings: bool,
    torch_threads: int | None,
    spread_gpus: bool,
):
    """(patches, seconds) of one chunk of a slide, its results written to ``part``."""
    from .inference import extract
    from .patches import PatchTable
    from .slide import open_slide

    started = time.perf_counter()
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    slide = open_slide(path)
    table = PatchTable(rows.reset_index(drop=True), source)
    with _borrow_model(recipe) as spec:
        _drop_stale_store(store, table, spec, level, batch_size, embeddings)
        result = extract(
            slide,
            table,
            spec,
            store=store,
            batch_size=batch_size,
            device=_worker_device(device, spread_gpus),
            level=level,
            bf16=bf16,
            embeddings=embeddings,
        )
    _write_parquet(result, Path(part))
    return len(result), time.perf_counter() - started


@_reporting
def _assemble_slide(out: str, parts: list[str], stores: list[str], keep_stores: bool, *chunks):
    """(patches, seconds): the parts, in row order, as the slide's parquet; then tidies up."""
    import pandas as pd

    failed = [c for c in chunks if isinstance(c, _Failed)]
    if failed:
        return failed[0]
    started = time.perf_counter()
    out_path = Path(out)
    if len(parts) == 1:
        os.replace(parts[0], out_path)
    else:
        frames = [pd.read_parquet(p) for p in parts]
        _write_parquet(pd.concat(frames, ignore_index=True), out_path)
        for p in parts:
            Path(p).unlink(missing_ok=True)
    if not keep_stores:
        for s in stores:
            shutil.rmtree(s, ignore_errors=True)
        # and what runs with another chunk size left of this slide
        leftover = re.compile(rf"{re.escape(out_path.stem)}(\.part\d+)?\.(zarr|parquet)")
        for path in Path(stores[0]).parent.iterdir():
            if not leftover.fullmatch(path.name):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    n = sum(c[0] for c in chunks)
    return n, sum(c[1] for c in chunks) + time.perf_counter() - started


def _write_parquet(df, path: Path) -> None:
    """Written to a temporary name first: a parquet under its own name is always complete."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _drop_stale_store(
    store: str, table, spec, level: int, batch_size: int, embeddings: bool
) -> None:
    """A chunk store left by a run with other patches, chunking or model is removed: the
    cohort's stores are its own journal, not the user's files."""
    import zarr

    from .inference import job_key

    if not os.path.exists(store):
        return
    try:
        job = zarr.open_group(store, mode="r").attrs.get("job")
    except Exception:
        job = None
    if job != job_key(table, spec, level, batch_size, embeddings):
        shutil.rmtree(store)


def _worker_device(device: str, spread_gpus: bool) -> str:
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


# --------------------------------------------------------------------------- the client


@contextmanager
def _cluster_client(scheduler: str | None, n_workers: int, threads_per_worker: int):
    import logging

    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler)
        except (OSError, TimeoutError, ValueError) as exc:
            raise PathvizError(
                f"--scheduler {scheduler}: cannot connect ({type(exc).__name__}: {exc})"
            ) from exc
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def _error_line(exc: BaseException | _Failed, slide: Path) -> str:
    if isinstance(exc, _Failed):
        message = exc.message
    elif isinstance(exc, PathvizError):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    message = " ".join(message.split()) or type(exc).__name__
    if str(slide) not in message and slide.name not in message:
        message = f"{slide}: {message}"
    return message[:1000]


def _parquet_rows(path: Path) -> int | None:
    try:
        import pyarrow.parquet as pq

        return int(pq.read_metadata(path).num_rows)
    except Exception:
        return None


def run_cohort(
    slides: Iterable[str | os.PathLike],
    recipe: ModelRecipe,
    out_dir: str | os.PathLike,
    *,
    patches: str | os.PathLike | None = None,
    patch_size: int | None = None,
    min_tissue: float = 0.5,
    batch_size: int = 64,
    device: str = "auto",
    level: int = 0,
    bf16: bool = False,
    embeddings: bool = True,
    chunk_size: int | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    keep_stores: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
):
    """Runs the model on every slide of a cohort; returns the summary (one row a slide:
    slide, ID, status done/skipped/failed, patches, seconds, error), also written to
    ``{out_dir}/summary.csv``.

    ``patches``: a patch table (CSV, Parquet, PathFlowAI SQLite) whose ``ID`` column names each
    row's slide; None: a tissue grid of ``patch_size`` (default 224) patches with a tissue
    fraction >= ``min_tissue`` per slide. With a table, ``patch_size`` keeps the rows of that
    size (and chooses a SQLite table). ``chunk_size`` patches make one task (None: a slide is one
    task). ``scheduler``: the address of a running dask scheduler; None: a local cluster of
    ``n_workers`` processes (default: one per GPU, else one) that is closed at the end.
    ``progress(slides finished, slides, message)``. Per slide, ``{out_dir}/{ID}.parquet`` holds
    what :func:`~napari_pathviz.inference.extract` returns; ``{out_dir}/stores/`` holds the
    resumable results of unfinished slides (removed once a slide is done, unless
    ``keep_stores``).
    """
    import pandas as pd

    from .io.tables import read_table
    from .patches import PatchTable
    from .slide import slide_id_from_path

    slides = [Path(s).expanduser().absolute() for s in slides]
    if not slides:
        raise PathvizError("the cohort has no slides")
    if chunk_size is not None and chunk_size < 1:
        raise PathvizError(f"--chunk-size must be positive, got {chunk_size}")
    if batch_size < 1:
        raise PathvizError(f"--batch-size must be positive, got {batch_size}")
    if threads_per_worker < 1 or (n_workers is not None and n_workers < 1):
        raise PathvizError("--workers and --threads-per-worker must be positive")
    if not 0.0 <= min_tissue <= 1.0:
        raise PathvizError(f"--min-tissue must be between 0 and 1, got {min_tissue}")
    ids = [slide_id_from_path(s) for s in slides]
    seen: dict[str, Path] = {}
    for slide, slide_id in zip(slides, ids, strict=True):
        if slide_id in seen and seen[slide_id] != slide:
            raise PathvizError(
                f"{slide}: slide ID {slide_id!r} also belongs to {seen[slide_id]}; "
                "each slide of a cohort needs its own ID (file name)"
            )
        seen[slide_id] = slide
    slides = list(dict.fromkeys(slides))
    ids = [slide_id_from_path(s) for s in slides]

    rows_of: dict[str, Any] = {}
    source = ""
    if patches is not None:
        source = str(patches)
        raw = read_table(patches, patch_size)
        has_ids = "ID" in raw.columns
        if not has_ids and len(slides) > 1:
            raise PathvizError(
                f"{source}: no ID column; a cohort's patch table names each row's slide"
            )
        slide_id = None if has_ids else ids[0]
        df = PatchTable.from_frame(raw, source, patch_size=patch_size, slide_id=slide_id).df
        rows_of = {str(k): g.reset_index(drop=True) for k, g in df.groupby("ID", sort=False)}

    out = Path(out_dir).expanduser().absolute()
    stores_dir = out / "stores"
    stores_dir.mkdir(parents=True, exist_ok=True)
    records: dict[Path, dict] = {
        s: {"slide": str(s), "ID": i, "status": "", "patches": None, "seconds": None, "error": ""}
        for s, i in zip(slides, ids, strict=True)
    }
    finished = 0

    def finish(slide: Path, status: str, *, patches=None, seconds=None, error="") -> None:
        nonlocal finished
        records[slide].update(status=status, patches=patches, seconds=seconds, error=error)
        finished += 1
        if progress is not None:
            rec = records[slide]
            detail = error if status == "failed" else f"{patches} patches"
            if status == "done" and seconds is not None:
                detail += f", {seconds:.1f} s"
            progress(finished, len(slides), f"{rec['ID']}: {status} ({detail})")

    todo = []
    for slide, slide_id in zip(slides, ids, strict=True):
        final = out / f"{slide_id}.parquet"
        if final.exists():
            finish(slide, "skipped", patches=_parquet_rows(final), seconds=0.0, error="")
        elif patches is not None and slide_id not in rows_of:
            message = f"{slide}: {source} has no patches for slide ID {slide_id!r}"
            finish(slide, "failed", error=message)
        else:
            todo.append((slide, slide_id))

    if todo:
        local = not scheduler
        if local and n_workers is None:
            n_workers = max(1, _gpu_count()) if device != "cpu" else 1
        workers = n_workers or 1
        torch_threads = max(1, (os.cpu_count() or 1) // (workers * threads_per_worker))
        options = {
            "batch_size": batch_size,
            "device": device,
            "level": level,
            "bf16": bf16,
            "embeddings": embeddings,
            "torch_threads": torch_threads if local else None,
            "spread_gpus": local,
        }
        with _cluster_client(scheduler, workers, threads_per_worker) as client:
            _run_on(
                client,
                todo,
                rows_of,
                source,
                recipe,
                out,
                stores_dir,
                options,
                finish,
                patch_size=patch_size,
                min_tissue=min_tissue,
                chunk_size=chunk_size,
                keep_stores=keep_stores,
            )

    summary = pd.DataFrame([records[s] for s in slides], columns=list(SUMMARY_COLUMNS))
    summary["patches"] = summary["patches"].astype("Int64")
    summary["seconds"] = summary["seconds"].astype(float).round(3)
    summary.to_csv(out / "summary.csv", index=False)
    return summary


def _run_on(
    client,
    todo: list[tuple[Path, str]],
    rows_of: dict,
    source: str,
    recipe: ModelRecipe,
    out: Path,
    stores_dir: Path,
    options: dict,
    finish: Callable,
    *,
    patch_size: int | None,
    min_tissue: float,
    chunk_size: int | None,
    keep_stores: bool,
) -> None:
    """Plans every slide, then its chunks and their join, recording each slide as it ends."""
    from distributed import as_completed

    checked = client.submit(_check_recipe, recipe, pure=False)
    try:
        outcome = checked.result()
    except Exception as exc:
        raise PathvizError(
            f"{recipe.path}: the model does not load ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(outcome, _Failed):
        raise PathvizError(outcome.message)

    pending = as_completed()
    jobs: dict[str, tuple[str, Path]] = {}  # future key -> (stage, slide)
    futures: dict[Path, list] = {}  # a slide's chunk and join futures
    seconds: dict[Path, float] = {}  # its planning time
    ended: set[Path] = set()

    def submit(stage: str, slide: Path, func, *args, **kwargs):
        future = client.submit(func, *args, **kwargs, pure=False)
        jobs[future.key] = (stage, slide)
        pending.add(future)
        return future

    for slide, slide_id in todo:
        submit(
            "plan",
            slide,
            _plan_slide,
            str(slide),
            rows_of.get(slide_id),
            source,
            patch_size,
            min_tissue,
            options["level"],
        )

    slide_id_of = dict(todo)
    for future in pending:
        stage, slide = jobs.pop(future.key)
        if slide in ended:  # a sibling chunk failed first; this one was cancelled
            continue
        try:
            result = future.result()
        except Exception as exc:
            result = _Failed(_error_line(exc, slide))
        if isinstance(result, _Failed):
            ended.add(slide)
            # The slide has failed: free its workers. Only futures still held are cancelled
            # (distributed asserts when asked to cancel a key its client has released).
            unfinished = [f for f in futures.pop(slide, []) if not f.done()]
            if unfinished:
                client.cancel(unfinished)
            finish(
                slide, "failed", seconds=seconds.pop(slide, None), error=_error_line(result, slide)
            )
        elif stage == "plan":
            rows, seconds[slide] = result
            slide_id = slide_id_of[slide]
            step = chunk_size or len(rows)
            bounds = [(a, min(a + step, len(rows))) for a in range(0, len(rows), step)]
            stems = (
                [slide_id]
                if len(bounds) == 1
                else [f"{slide_id}.part{k}" for k in range(len(bounds))]
            )
            stores = [str(stores_dir / f"{stem}.zarr") for stem in stems]
            parts = [str(stores_dir / f"{stem}.parquet") for stem in stems]
            chunks = [
                submit(
                    "chunk",
                    slide,
                    _run_chunk,
                    str(slide),
                    rows.iloc[a:b],
                    source or str(slide),
                    recipe,
                    store,
                    part,
                    **options,
                )
                for (a, b), store, part in zip(bounds, stores, parts, strict=True)
            ]
            join = submit(
                "join",
                slide,
                _assemble_slide,
                str(out / f"{slide_id}.parquet"),
                parts,
                stores,
                keep_stores,
                *chunks,
            )
            futures[slide] = [*chunks, join]
        elif stage == "join":
            n, spent = result
            ended.add(slide)
            futures.pop(slide, None)
            finish(slide, "done", patches=int(n), seconds=spent + seconds.pop(slide, 0.0))
