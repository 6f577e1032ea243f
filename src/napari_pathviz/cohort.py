"""A cohort of slides through the model on dask.distributed: one task per slide chunk.

The client plans and records; the workers do everything that touches a slide or the model
(:mod:`napari_pathviz.cohort_tasks`). Workers are sent paths and options, never a Slide, a dask
array or an open file: each task opens its slide itself, with every option the single-slide
``pathviz extract`` takes (:class:`SlideOptions`), so a slide's table is the one that command
writes for it. Each slide is first *planned* on a worker (opened, its level chosen, its rows of
the table validated or a tissue grid made), then split into chunks of patches, each a task that
loads the model in its worker (once per worker process: models never travel through the
scheduler) and runs :func:`napari_pathviz.inference.extract` with its own resumable results
store; a last task per slide joins the parts, in row order, into the slide's table.

Names: a slide's work is keyed by :func:`slide_key`, its ID (file name without suffixes) plus 8
hex digits of a hash of its resolved path, so ``a/s.svs``, ``b/s.svs`` and ``s.part1.svs`` never
share a file: ``{out}/{key}.parquet`` is its table, ``{out}/stores/{key}/`` its work folder, and
``{out}/summary.csv`` maps each slide to its table.

A slide that fails (missing or unreadable file, a bad row of its patches, a chunk raising, a
worker dying) is reported in the summary with a one-line error and the others go on. A slide
whose table exists from the same job (model, options, its rows, the slide file's size and
time) is skipped on the next run; an interrupted slide resumes from its stores. On the local
cluster, workers' stderr (log lines, tracebacks) goes to ``{out}/workers.log``, never to the
terminal. ``out`` and the slides must be visible to the workers under the same paths (always so
with the local cluster; a shared filesystem for a remote one).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .errors import PathvizError

LIST_SUFFIXES = (".txt",)
SUMMARY_COLUMNS = ("slide", "ID", "output", "status", "level", "patches", "seconds", "error")
WORKER_LOG = "workers.log"


@dataclass(frozen=True)
class SlideOptions:
    """Every option of the single-slide ``pathviz extract`` that shapes a slide's job; sent
    with each slide's path so that a cohort slide gets exactly what the single command gives."""

    layout: str = "auto"
    level: int = 0
    target_mpp: float | None = None
    patch_size: int | None = None
    min_tissue: float = 0.5
    batch_size: int = 64
    read_threads: int = 2
    device: str = "auto"
    bf16: bool = False
    embeddings: bool = True
    allow_missing_tiles: bool = False  # patches on tiles a TIFF lacks: refused, or marked

    def check(self) -> None:
        """The one-line errors the single command gives for these options, before any work."""
        from .io.zarr_io import LAYOUTS

        if self.layout not in LAYOUTS:
            raise PathvizError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        positive = {"--batch-size": self.batch_size}  # --workers 0 reads in one thread, as alone
        if self.patch_size is not None:
            positive["--patch-size"] = self.patch_size
        for option, value in positive.items():
            if value < 1:
                raise PathvizError(f"{option} must be positive, got {value}")
        if self.level < 0:
            raise PathvizError(f"--level must be 0 or more, got {self.level}")
        if self.target_mpp is not None and not self.target_mpp > 0:
            raise PathvizError(f"--target-mpp must be positive, got {self.target_mpp}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise PathvizError(f"--min-tissue must be between 0 and 1, got {self.min_tissue}")

    def job(self) -> dict:
        """The options that change a number of a slide's table (the skip check compares them)."""
        numbers = asdict(self)
        del numbers["read_threads"], numbers["device"]
        if not self.allow_missing_tiles:  # as before the option existed: old tables still match
            del numbers["allow_missing_tiles"]
        return numbers


# --------------------------------------------------------------------------- finding the slides


def find_cohort_slides(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """The slides of a cohort: each source is a slide (file, or zarr folder), a folder holding
    slides (not searched further down; a ``*.zarr`` folder is one slide), or a ``.txt`` file
    listing such paths one per line (blank lines and ``#`` comments skipped; relative paths are
    relative to the list's folder). Absolute, sorted, without duplicates. A slide that does not
    exist is kept (its job reports it); a missing folder or list is an error."""
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
    missing = not path.exists()
    if missing and not path.name.lower().endswith(_slide_suffixes()):
        raise PathvizError(f"{path}: no such file or directory{where}")
    path = Path(os.path.abspath(path))  # not resolved: a symlink's name is the slide's ID
    if missing or _is_slide(path):  # a missing slide fails alone, in the summary
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
    class_names: tuple[str, ...] | None = None  # None: the model card's
    card: str | None = None  # None: the card beside the weights, if any

    def __post_init__(self):
        self.path = str(Path(self.path).expanduser().absolute())
        if self.card is not None:
            self.card = str(Path(self.card).expanduser().absolute())
        if self.factory_kwargs is not None:
            self.factory_kwargs = dict(self.factory_kwargs)
        self.mean = tuple(float(v) for v in self.mean) if self.mean is not None else None
        self.std = tuple(float(v) for v in self.std) if self.std is not None else None
        if self.class_names is not None:
            self.class_names = tuple(str(n) for n in self.class_names)

    def load(self):
        """The :class:`~napari_pathviz.models.ModelSpec` (loaded now, on the CPU)."""
        from .models import load_model

        return load_model(**asdict(self))

    def cache_key(self) -> str:
        """Changes with the recipe, with the model file's content (a hash of its bytes,
        recomputed when the file's size, times or inode change) and with its model card's
        fields (a card edited beside the same weights changes the numbers too)."""
        from .model_card import find_card
        from .store import file_digest

        try:
            version = file_digest(self.path)
        except OSError:
            version = None
        card = find_card(self.path, self.card)
        fields = card.as_dict() if card is not None else None
        return json.dumps([asdict(self), version, fields], sort_keys=True, default=str)


# --------------------------------------------------------------------------- names and jobs


def slide_key(path: str | os.PathLike) -> str:
    """The name of a slide's table and work folder: its ID and 8 hex digits of a hash of its
    resolved path, so that two slides never share one (``a/s.svs`` and ``b/s.svs``; ``s.svs``
    and ``s.part1.svs``), and the same file keeps its name from run to run."""
    from .slide import slide_id_from_path

    digest = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:8]
    return f"{slide_id_from_path(path)}-{digest}"


def _slide_job(recipe: ModelRecipe, options: SlideOptions, slide: Path, rows) -> str:
    """What a slide's table depends on: the model, the options, its rows and the slide file."""
    import pandas as pd

    rows_hash = None
    if rows is not None:
        hashed = pd.util.hash_pandas_object(rows, index=False).to_numpy()
        rows_hash = hashlib.sha1(hashed.tobytes() + repr(list(rows.columns)).encode()).hexdigest()
    try:
        stat = os.stat(slide)
        version = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        version = None
    return json.dumps(
        [recipe.cache_key(), options.job(), rows_hash, str(slide), version], default=str
    )


def _table_job(path: Path) -> str | None:
    """The job recorded in a slide's table, or None (no table, or not one of ours)."""
    from .cohort_tasks import JOB_METADATA

    try:
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
    except Exception:
        return None
    job = metadata.get(JOB_METADATA)
    return job.decode() if job is not None else None


def _parquet_rows(path: Path) -> int | None:
    try:
        import pyarrow.parquet as pq

        return int(pq.read_metadata(path).num_rows)
    except Exception:
        return None


def _rows_by_slide(patches, options: SlideOptions, slides: list[Path], ids: list[str]):
    """(rows of each slide ID, the table's name), read on the client; each slide's rows are
    validated by its own job, so that one bad row fails its slide only."""
    from .io.tables import read_table

    source = str(patches)
    raw = read_table(patches, options.patch_size)
    missing = [c for c in ("x", "y") if c not in raw.columns]
    if missing:
        raise PathvizError(f"{source}: no {' or '.join(missing)} column")
    if "ID" not in raw.columns:
        if len(slides) > 1:
            raise PathvizError(
                f"{source}: no ID column; a cohort's patch table names each row's slide"
            )
        return {ids[0]: raw}, source
    # Each slide's rows keep the table's index: its errors then name the table's row numbers.
    return dict(iter(raw.groupby(raw["ID"].astype(str), sort=False))), source


# --------------------------------------------------------------------------- the run


def run_cohort(
    slides: Iterable[str | os.PathLike],
    recipe: ModelRecipe,
    out_dir: str | os.PathLike,
    *,
    patches: str | os.PathLike | None = None,
    options: SlideOptions | None = None,
    chunk_size: int | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    keep_stores: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    **option_values,
):
    """Runs the model on every slide of a cohort; returns the summary (one row a slide, the
    columns of :data:`SUMMARY_COLUMNS`; status done/skipped/failed), also written to
    ``{out_dir}/summary.csv``.

    ``options`` (or its fields as keywords: ``level=1, target_mpp=0.5, ...``) are the
    single-slide command's options, applied to each slide. ``patches``: a patch table (CSV,
    Parquet, PathFlowAI SQLite) whose ``ID`` column names each row's slide; None: a tissue grid
    per slide. ``chunk_size`` patches make one task (None: a slide is one task). ``scheduler``:
    the address of a running dask scheduler; None: a local cluster of ``n_workers`` processes
    (default: one per GPU, else one) closed at the end. ``progress(slides finished, slides,
    message)``. A slide's table is ``{out_dir}/{slide_key}.parquet`` (the summary's ``output``);
    ``{out_dir}/stores/{slide_key}/`` holds the resumable results of an unfinished slide
    (removed once it is done, unless ``keep_stores``).
    """
    from .cohort_run import Book, Run, cluster_client, gpu_count
    from .slide import slide_id_from_path

    options = replace(options or SlideOptions(), **option_values)
    options.check()
    if chunk_size is not None and chunk_size < 1:
        raise PathvizError(f"--chunk-size must be positive, got {chunk_size}")
    if threads_per_worker < 1 or (n_workers is not None and n_workers < 1):
        raise PathvizError("--n-workers and --threads-per-worker must be positive")
    slides = list(dict.fromkeys(Path(s).expanduser().absolute() for s in slides))
    if not slides:
        raise PathvizError("the cohort has no slides")
    keys = {s: slide_key(s) for s in slides}
    by_key: dict[str, Path] = {}
    for slide in slides:  # one per file: two names of it that resolve alike are one slide
        by_key.setdefault(keys[slide], slide)
    slides = list(by_key.values())
    ids = [slide_id_from_path(s) for s in slides]
    rows_of: dict[str, Any] = {}
    source = ""
    if patches is not None:
        rows_of, source = _rows_by_slide(patches, options, slides, ids)

    out = Path(out_dir).expanduser().absolute()
    (out / "stores").mkdir(parents=True, exist_ok=True)
    book = Book(slides, ids, keys, progress)
    todo = _plan_todo(book, recipe, options, out, rows_of, source)
    if todo:
        local = not scheduler
        if local and n_workers is None:
            n_workers = max(1, gpu_count()) if options.device != "cpu" else 1
        workers = n_workers or 1
        torch_threads = max(1, (os.cpu_count() or 1) // (workers * threads_per_worker))
        run = Run(recipe, options, out, source, chunk_size, keep_stores, local, torch_threads)
        with cluster_client(scheduler, workers, threads_per_worker, out / WORKER_LOG) as client:
            run.on(client, todo, book)
    return _write_summary(book.rows(), out)


def _write_summary(rows: list[dict], out: Path):
    import pandas as pd

    from .io.atomic import atomic_file

    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    for column in ("level", "patches"):
        summary[column] = summary[column].astype("Int64")
    summary["seconds"] = summary["seconds"].astype(float).round(3)
    with atomic_file(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    return summary


def _plan_todo(book, recipe, options, out: Path, rows_of: dict, source: str) -> list:
    """(slide, rows, table path, job) of each slide to run; the others are recorded as skipped
    (their table is from this very job) or failed (no rows, or an ID two slides share)."""
    by_id: dict[str, list[Path]] = {}
    for slide in book.slides:
        by_id.setdefault(book.records[slide]["ID"], []).append(slide)
    todo = []
    for slide in book.slides:
        slide_id = book.records[slide]["ID"]
        rows = rows_of.get(slide_id) if source else None
        table = out / f"{book.keys[slide]}.parquet"
        job = _slide_job(recipe, options, slide, rows)
        if source and len(by_id[slide_id]) > 1:
            others = " and ".join(str(s) for s in by_id[slide_id] if s != slide)
            book.finish(
                slide,
                "failed",
                error=f"{slide}: slide ID {slide_id!r} also names {others}, so the rows of "
                f"{source} cannot say whose they are; rename one of the slides",
            )
        elif source and rows is None:
            problem = (
                f"{source} has no patches for slide ID {slide_id!r}"
                if slide.exists()
                else "no such file or directory"
            )
            book.finish(slide, "failed", error=f"{slide}: {problem}")
        elif table.exists() and _table_job(table) == job:
            book.finish(slide, "skipped", patches=_parquet_rows(table), seconds=0.0)
        else:
            todo.append((slide, rows, table, job))
    return todo
