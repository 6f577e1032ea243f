"""Attributions (``pathviz shapley-plot`` / ``gradcam``) of the top patches of a cohort, on
dask.distributed like ``pathviz extract`` (see :mod:`napari_pathviz.cohort`).

The patches explained are the N with the highest value of a column (e.g. ``prob_dab_positive``
of the cohort's prediction tables): of each slide (``per_slide``, chosen on the slide's worker
exactly as the single-slide ``--top N COL`` chooses them: no overlapping tiles, no flipped or
turned copies) or of the whole cohort (ranked on the client over every slide's table; no two
overlapping tiles of one slide). Each slide is one task: its worker opens the slide from its
path, loads the model once per process (:func:`~napari_pathviz.cohort_tasks.borrow_model`) and
runs :func:`napari_pathviz.attribution.stored.explain` into the slide's own store,
``{out}/stores/{slide_key}-{job}.zarr``, named by everything its maps depend on (model file and
card, slide, patches, method and options): a rerun reopens the same store and recomputes
nothing that is finished. A slide that fails (missing file, bad rows, the model raising) is one
line of ``{out}/summary.csv`` and the others go on. Written: ``{out}/{slide_key}.png`` (the
slide's gallery), ``{out}/cohort.png`` (the top patches across slides, labelled with slide ID),
``{out}/cohort_top.csv`` (which patches those are; :mod:`napari_pathviz.cohort_explain_gallery`) and ``{out}/summary.csv``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .cohort_tasks import Failed, borrow_model, reporting
from .errors import PathvizError

SUMMARY_COLUMNS = (
    "slide",
    "ID",
    "status",
    "patches",
    "computed",
    "resumed",
    "seconds",
    "gallery",
    "store",
    "error",
)
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
_DIGEST_LOCK = threading.Lock()


@dataclass(frozen=True)
class ExplainSettings:
    """What a slide's task needs besides its path and rows: the single-slide command's options
    (as the engine takes them) and the choice of patches."""

    method: str
    column: str
    top: int
    per_slide: bool = True
    target: str = "predicted"
    output: str = "none"  # the engine's output: none (logit), sigmoid or softmax
    options: dict = field(default_factory=dict)  # method options (n_samples, layer, ...)
    seed: int = 0
    background_size: int = 32  # references drawn per slide (gradient, deep)
    chunk_size: int = 16
    layout: str = "auto"
    patch_size: int | None = None
    device: str = "auto"
    per_patch_scale: bool = False
    label_output: str = "none"

    def job(self) -> dict:
        """The settings that change a number of the maps (names a slide's store)."""
        numbers = asdict(self)
        for display in ("device", "per_patch_scale", "label_output", "layout"):
            numbers.pop(display)
        numbers["options"] = {k: v for k, v in self.options.items() if k != "batch_size"}
        # rollout's defaults (the paper's) left out: stores made before the options resume
        if numbers["options"].get("head_fusion") == "mean":
            numbers["options"].pop("head_fusion")
        if numbers["options"].get("discard_ratio") == 0:
            numbers["options"].pop("discard_ratio")
        return numbers


# --------------------------------------------------------------------------- inputs


def is_cohort_source(sources: list[str]) -> bool:
    """Several slides, a folder of slides, a .txt list or a slides table (ID, path)."""
    from .io.zarr_io import is_zarr_path

    if len(sources) > 1:
        return True
    source = Path(sources[0])
    suffix = source.suffix.lower()
    if suffix == ".txt" or suffix in TABLE_SUFFIXES:
        return True
    return source.is_dir() and not is_zarr_path(source)


def cohort_slides(sources: list[str]) -> list[tuple[str, Path]]:
    """(ID, path) of each slide: from a slides table's ID and path columns, else the slides
    ``pathviz extract`` finds (ID: the file name without suffixes)."""
    from .cohort import find_cohort_slides
    from .slide import slide_id_from_path

    if len(sources) == 1 and Path(sources[0]).suffix.lower() in TABLE_SUFFIXES:
        from .cohort_data import read_slides_table

        table = read_slides_table(sources[0])
        missing = [i for i, p in zip(table.frame["ID"], table.frame["path"], strict=True) if not p]
        if missing:
            raise PathvizError(f"{sources[0]}: no path for slide {missing[0]!r}")
        return [
            (str(i), Path(p)) for i, p in zip(table.frame["ID"], table.frame["path"], strict=True)
        ]
    return [(slide_id_from_path(p), p) for p in find_cohort_slides(sources)]


def read_cohort_rows(source: str, column: str, patch_size: int | None = None) -> dict:
    """{slide ID: its rows (ID, x, y, patch_size and ``column``)} from the output folder of
    ``pathviz extract`` on a cohort (its summary.csv names each slide's table; only those
    columns are read) or from one table with an ID column."""
    import pandas as pd

    from .io.tables import read_table

    keep = ["ID", "x", "y", "patch_size", column]
    folder = Path(source)
    if folder.is_dir() and (folder / "summary.csv").is_file():
        summary = pd.read_csv(folder / "summary.csv", dtype={"ID": str, "output": str})
        frames = []
        for slide_id, output in zip(summary["ID"], summary["output"], strict=True):
            if isinstance(output, str) and output and (folder / output).is_file():
                frame = _read_columns(folder / output, keep)
                frame["ID"] = str(slide_id)
                frames.append(frame)
        if not frames:
            raise PathvizError(f"{source}: summary.csv names no finished slide table")
        raw = pd.concat(frames, ignore_index=True)
    else:
        raw = read_table(source, patch_size)
    missing = [c for c in ("ID", "x", "y") if c not in raw.columns]
    if missing:
        raise PathvizError(
            f"{source}: no {' or '.join(missing)} column (a cohort's table names each "
            "row's slide in ID)"
        )
    column_values(raw, column, source)  # up front: not once per slide
    raw = raw[[c for c in keep if c in raw.columns]]  # what travels to the workers
    return {str(k): v for k, v in raw.groupby(raw["ID"].astype(str), sort=False)}


def _read_columns(path: Path, columns: list[str]):
    """The columns of a Parquet table that it has (column projection: no features read)."""
    import pandas as pd
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path).names)
    return pd.read_parquet(path, columns=[c for c in columns if c in names])


def column_values(rows, column: str, source: str) -> np.ndarray:
    """The ranking column as numbers; NaN ranks last (never among the highest)."""
    import pandas as pd

    if column not in rows.columns:
        raise PathvizError(f"--top: no column {column!r} in {source}")
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(float)
    if np.isnan(values).all():
        raise PathvizError(f"--top: column {column!r} of {source} holds no numbers")
    return values


def cohort_top(rows_of: dict, column: str, count: int, source: str) -> dict:
    """{slide ID: (x, y) of its chosen patches}: the ``count`` highest values of ``column`` over
    every slide, no two overlapping or neighbouring tiles of one slide."""
    import pandas as pd

    from .attribution.gallery import distinct_rows

    frames = [r.assign(ID=str(i)) for i, r in rows_of.items()]
    every = pd.concat(frames, ignore_index=True)
    if "patch_size" not in every.columns:
        every["patch_size"] = 0
    values = column_values(every, column, source)
    ranked = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    chosen = every.iloc[distinct_rows(every, ranked, count)]
    return {
        str(i): list(zip(g["x"].astype(int), g["y"].astype(int), strict=True))
        for i, g in chosen.groupby("ID", sort=False)
    }


# --------------------------------------------------------------------------- the worker's task


def _model_inputs(spec, slide, df, chosen, settings: ExplainSettings):
    """(model on its device, images, model inputs, references or None), as the single-slide
    command makes them: the references are drawn with the same seed from the slide's rows."""
    from .attribution.references import check_same_size, random_reference_rows
    from .inference import read_patch_batch, resolve_device
    from .store import model_digest

    device = resolve_device(settings.device)
    model = spec.model.to(device).eval()
    with _DIGEST_LOCK:  # the store's key reads class sources with ast, unsafe in two threads
        model_digest(model)  # cached: explain() finds it done
    images = read_patch_batch(slide, df.iloc[chosen])
    inputs = spec.preprocess(images, device)
    background = None
    if settings.method in ("gradient", "deep"):
        rng = np.random.default_rng(settings.seed)
        picks = random_reference_rows(
            len(df),
            chosen,
            settings.background_size,
            rng,
            source=f"slide {slide.path}",
            remedy="explain fewer patches (--top) or give the slide more rows",
        )
        references = read_patch_batch(slide, df.iloc[picks])
        check_same_size(references, images)
        background = spec.preprocess(references, device)
    return model, images, inputs, background


def _choose(df, settings: ExplainSettings, chosen_xy, source: str, slide) -> np.ndarray:
    """Row positions of ``df`` to explain: the given (x, y), else the slide's top N chosen as
    the single-slide command chooses them."""
    from .attribution.gallery import distinct_rows
    from .inference import read_patch_batch

    if chosen_xy is not None:
        where = {(int(x), int(y)): i for i, (x, y) in enumerate(zip(df["x"], df["y"], strict=True))}
        return np.asarray([where[(int(x), int(y))] for x, y in chosen_xy], dtype=int)
    values = column_values(df, settings.column, source)
    ranked = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    return distinct_rows(
        df, ranked, settings.top, image_of=lambda i: read_patch_batch(slide, df.iloc[[i]])[0]
    )


def _store_name(path: str, recipe, settings: ExplainSettings, keys) -> str:
    """The slide's store: its key and a hash of what its maps depend on."""
    from .cohort import slide_key

    try:
        stat = os.stat(path)
        version = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        version = None
    text = json.dumps(
        [recipe.cache_key(), settings.job(), keys.to_dict("list"), version], default=str
    )
    return f"{slide_key(path)}-{hashlib.sha1(text.encode()).hexdigest()[:12]}.zarr"


@reporting
def explain_slide(path: str, slide_id: str, rows, source: str, recipe, settings, chosen_xy, out):
    """One slide's attributions into its store and its gallery; a dict for the summary and the
    cohort gallery (the explained images and maps)."""
    from .attribution.gallery import render_gallery
    from .attribution.stored import explain
    from .classes import resolve_target
    from .cohort import slide_key
    from .patches import patches_for_slide
    from .slide import open_slide

    started = time.perf_counter()
    slide = open_slide(path, settings.layout)
    table = patches_for_slide(
        rows.reset_index(drop=True),
        source,
        slide,
        patch_size=settings.patch_size,
        slide_id=slide_id,
    )
    df = table.df
    chosen = _choose(df, settings, chosen_xy, source, slide)
    if not len(chosen):
        raise PathvizError(f"{path}: no patches to explain")
    keys = df.iloc[chosen]
    store = Path(out) / "stores" / _store_name(path, recipe, settings, keys[["x", "y"]])
    with borrow_model(recipe) as spec:
        model, images, inputs, background = _model_inputs(spec, slide, df, chosen, settings)
        first: list[int] = []  # rows already in the store when it was opened
        result = explain(
            model,
            inputs,
            settings.method,
            background=background,
            target=resolve_target(settings.target, spec.class_names),
            output=settings.output,
            store=str(store),
            keys=keys,
            chunk_size=settings.chunk_size,
            seed=settings.seed,
            progress=lambda done, _total: first or first.append(done),
            **settings.options,
        )
        class_names = list(spec.class_names) if spec.class_names else None
    gallery = Path(out) / f"{slide_key(path)}.png"
    render_gallery(
        images,
        result,
        gallery,
        titles=[f"x={x} y={y}" for x, y in zip(keys["x"], keys["y"], strict=True)],
        per_patch_scale=settings.per_patch_scale,
        label_output=settings.label_output,
        class_names=class_names,
    )
    resumed = first[0] if first else 0
    return {
        "keys": keys.reset_index(drop=True),
        "images": images,
        "result": result,
        "class_names": class_names,
        "patches": len(keys),
        "computed": len(result) - resumed,
        "resumed": resumed,
        "seconds": time.perf_counter() - started,
        "gallery": str(gallery),
        "store": str(store),
    }


# --------------------------------------------------------------------------- the run


def explain_cohort(
    slides: list[tuple[str, Path]],
    rows_of: dict,
    source: str,
    recipe,
    settings: ExplainSettings,
    out_dir: str | os.PathLike,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
):
    """Explains the top patches of every slide (or of the cohort) on a dask cluster; returns
    the summary (one row a slide, :data:`SUMMARY_COLUMNS`), also ``{out}/summary.csv``."""
    from .cohort import WORKER_LOG
    from .cohort_explain_gallery import cohort_gallery
    from .cohort_run import cluster_client

    if settings.top < 1:
        raise PathvizError(f"--top N COL: N must be at least 1, got {settings.top}")
    out = Path(out_dir).expanduser().absolute()
    (out / "stores").mkdir(parents=True, exist_ok=True)
    records = {i: _record(p, i) for i, p in slides}
    chosen_of = (
        None if settings.per_slide else cohort_top(rows_of, settings.column, settings.top, source)
    )
    todo = []
    for slide_id, path in slides:
        if slide_id not in rows_of:
            problem = (
                f"{source} has no rows for slide ID {slide_id!r}"
                if path.exists()
                else ("no such file or directory")
            )
            records[slide_id].update(status="failed", error=f"{path}: {problem}")
        elif chosen_of is not None and slide_id not in chosen_of:
            records[slide_id].update(status="none", patches=0)  # none of the cohort's top N
        else:
            todo.append((slide_id, path))
    explained = {}
    if todo:
        with cluster_client(scheduler, n_workers or 1, 1, out / WORKER_LOG) as client:
            explained = _run(
                client, todo, rows_of, source, recipe, settings, chosen_of, out, records, progress
            )
    summary = _write_summary(records, out)
    cohort_gallery(
        explained,
        settings.column,
        settings.top,
        settings.per_slide,
        out,
        per_patch_scale=settings.per_patch_scale,
        label_output=settings.label_output,
    )
    return summary


def _record(path: Path, slide_id: str) -> dict:
    row = dict.fromkeys(SUMMARY_COLUMNS, None)
    row.update(slide=str(path), ID=slide_id, status="", error="", gallery="", store="")
    return row


def _run(client, todo, rows_of, source, recipe, settings, chosen_of, out, records, progress):
    """Submits one task per slide and records each as it ends; returns {ID: result dict}."""
    from distributed import as_completed

    from .cohort_run import error_line
    from .cohort_tasks import check_recipe

    try:
        outcome = client.submit(check_recipe, recipe, pure=False).result()
    except Exception as exc:
        outcome = Failed(str(exc))
    if isinstance(outcome, Failed):
        raise PathvizError(error_line(outcome.message, Path(recipe.path)))
    if isinstance(outcome, dict) and outcome.get("warning"):  # a worker's warnings go to its log
        import warnings

        from .errors import PathvizWarning

        warnings.warn(outcome["warning"], PathvizWarning, stacklevel=2)
    slide_of, futures = {}, []
    for slide_id, path in todo:
        chosen = None if chosen_of is None else chosen_of[slide_id]
        future = client.submit(
            explain_slide,
            str(path),
            slide_id,
            rows_of[slide_id],
            source,
            recipe,
            settings,
            chosen,
            str(out),
            pure=False,
        )
        slide_of[future.key] = (slide_id, path)
        futures.append(future)
    explained = {}
    for finished, future in enumerate(as_completed(futures), 1):
        slide_id, path = slide_of[future.key]
        try:
            result = future.result()
        except Exception as exc:  # a worker died, or the task could not run
            result = Failed(str(exc))
        record = records[slide_id]
        if isinstance(result, Failed):
            record.update(status="failed", error=error_line(result.message, path))
        else:
            explained[slide_id] = result
            record.update(
                status="done",
                **{
                    k: result[k]
                    for k in ("patches", "computed", "resumed", "seconds", "gallery", "store")
                },
            )
        if progress is not None:
            progress(finished, len(todo), f"{slide_id}: {record['status']}")
    return explained


def _write_summary(records: dict, out: Path):
    import pandas as pd

    from .io.atomic import atomic_file

    summary = pd.DataFrame(list(records.values()), columns=list(SUMMARY_COLUMNS))
    for column in ("patches", "computed", "resumed"):
        summary[column] = summary[column].astype("Int64")
    summary["seconds"] = summary["seconds"].astype(float).round(3)
    with atomic_file(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    return summary
