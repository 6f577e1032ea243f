"""The client side of a cohort run (see :mod:`napari_pathviz.cohort`): the cluster, the
summary's book, and the loop that submits each slide's tasks and records how each one ends."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PathvizError, PathvizWarning

if TYPE_CHECKING:
    from .cohort import ModelRecipe, SlideOptions


# --------------------------------------------------------------------------- the cluster


@contextmanager
def cluster_client(scheduler: str | None, n_workers: int, threads: int, log: Path):
    """A client of the given scheduler, or of a local cluster whose log lines stay quiet and
    whose workers write their stderr to ``log``."""
    import dask

    # A slide's patch rows travel with its tasks; a big table is expected, not worth a warning.
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1TiB"}):
        yield from _client(scheduler, n_workers, threads, log)


def _client(scheduler: str | None, n_workers: int, threads: int, log: Path):
    from distributed import Client, LocalCluster
    from distributed.utils import silence_logging_cmgr

    from .cohort_tasks import WorkerLog

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
    # The scheduler and the nannies run in this process: their warnings (a worker restarted, a
    # slow shutdown) are the cluster's business, reported through each slide's status.
    with (
        silence_logging_cmgr(logging.CRITICAL),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=None,
            # Its health routes on any free port: never a warning that 8787 is taken.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(WorkerLog(str(log)))
        yield client


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def error_line(error: BaseException | str, slide: Path) -> str:
    from .cohort_tasks import one_line

    message = error if isinstance(error, str) else one_line(error)
    message = " ".join(message.split()) or "failed"
    if str(slide) not in message and slide.name not in message:
        message = f"{slide}: {message}"
    return message[:1000]


class Book:
    """The summary's rows, one per slide, and the progress callback as slides end."""

    def __init__(self, slides: list[Path], ids: list[str], keys: dict, progress):
        self.slides = slides
        self.records = {
            s: {
                "slide": str(s),
                "ID": i,
                "output": "",
                "status": "",
                "level": None,
                "patches": None,
                "seconds": None,
                "error": "",
            }
            for s, i in zip(slides, ids, strict=True)
        }
        self.keys = keys
        self.progress = progress
        self.finished = 0

    def finish(self, slide: Path, status: str, **values) -> None:
        record = self.records[slide]
        record.update(status=status, **values)
        if status != "failed":
            record["output"] = f"{self.keys[slide]}.parquet"
        self.finished += 1
        if self.progress is not None:
            detail = record["error"] if status == "failed" else f"{record['patches']} patches"
            if status == "done" and record["seconds"] is not None:
                detail += f", {record['seconds']:.1f} s"
            self.progress(self.finished, len(self.slides), f"{record['ID']}: {status} ({detail})")

    def rows(self) -> list[dict]:
        return [self.records[s] for s in self.slides]


@dataclass
class Run:
    """Submits each slide's plan, then its chunks and their join, recording each slide as it
    ends; a slide's failure cancels its own tasks only."""

    recipe: ModelRecipe
    options: SlideOptions
    out: Path
    source: str
    chunk_size: int | None
    keep_stores: bool
    local: bool
    torch_threads: int
    jobs: dict = field(default_factory=dict)  # future key -> (stage, slide)
    futures: dict = field(default_factory=dict)  # a slide's chunk and join futures
    planned: dict = field(default_factory=dict)  # slide -> (level, planning seconds)

    def on(self, client, todo: list, book: Book) -> None:
        from distributed import as_completed

        from .cohort_tasks import Failed, check_recipe, plan_slide

        self.client, self.pending = client, as_completed()
        try:
            outcome = client.submit(check_recipe, self.recipe, pure=False).result()
        except Exception as exc:
            outcome = Failed(error_line(exc, Path(self.recipe.path)))
        if isinstance(outcome, Failed):
            raise PathvizError(error_line(outcome.message, Path(self.recipe.path)))
        if isinstance(outcome, dict) and outcome.get("warning"):
            warnings.warn(outcome["warning"], PathvizWarning, stacklevel=1)
        tables = {}
        for slide, rows, table, job in todo:
            tables[slide] = (table, job)
            self._submit("plan", slide, plan_slide, str(slide), rows, self.source, self.options)
        ended: set[Path] = set()
        for future in self.pending:
            stage, slide = self.jobs.pop(future.key)
            if slide in ended:  # a sibling chunk failed first; this one was cancelled
                continue
            try:
                result = future.result()
            except Exception as exc:  # a worker died, or the task could not run
                result = Failed(error_line(exc, slide))
            if isinstance(result, Failed) or stage == "join":
                ended.add(slide)
                self._end(slide, result, book)
            elif stage == "plan":
                self._chunks(slide, result, *tables[slide])

    def _submit(self, stage: str, slide: Path, func, *args, **kwargs):
        future = self.client.submit(func, *args, **kwargs, pure=False)
        self.jobs[future.key] = (stage, slide)
        self.pending.add(future)
        return future

    def _chunks(self, slide: Path, planned, table: Path, job: str) -> None:
        from .cohort_tasks import assemble_slide, run_chunk

        rows, level, seconds = planned
        self.planned[slide] = (level, seconds)
        step = self.chunk_size or len(rows)
        bounds = [(a, min(a + step, len(rows))) for a in range(0, len(rows), step)]
        work = self.out / "stores" / table.stem
        work.mkdir(parents=True, exist_ok=True)
        stores = [str(work / f"part{k}.zarr") for k in range(len(bounds))]
        parts = [str(work / f"part{k}.parquet") for k in range(len(bounds))]
        chunks = [
            self._submit(
                "chunk",
                slide,
                run_chunk,
                str(slide),
                rows.iloc[a:b],
                self.source or str(slide),
                self.recipe,
                store,
                part,
                self.options,
                level,
                torch_threads=self.torch_threads if self.local else None,
                spread_gpus=self.local,
            )
            for (a, b), store, part in zip(bounds, stores, parts, strict=True)
        ]
        join = self._submit(
            "join",
            slide,
            assemble_slide,
            str(table),
            parts,
            str(work),
            self.keep_stores,
            job,
            *chunks,
        )
        self.futures[slide] = [*chunks, join]

    def _end(self, slide: Path, result, book: Book) -> None:
        from .cohort_tasks import Failed

        # Free the slide's workers. Only futures still held are cancelled (distributed asserts
        # when asked to cancel a key its client has released).
        unfinished = [f for f in self.futures.pop(slide, []) if not f.done()]
        if unfinished:
            self.client.cancel(unfinished)
        level, seconds = self.planned.pop(slide, (None, None))
        if isinstance(result, Failed):
            book.finish(
                slide,
                "failed",
                level=level,
                seconds=seconds,
                error=error_line(result.message, slide),
            )
        else:
            n, spent = result
            book.finish(slide, "done", level=level, patches=int(n), seconds=spent + seconds)
