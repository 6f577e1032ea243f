"""UMAP's sub-steps, each reported as a named stage of ``progress(fraction, stage)``.

umap-learn's ``UMAP.fit`` runs four long steps without a word: the nearest-neighbour search
(NN-descent; with numba's compilation the bulk of a 100k-patch run), the fuzzy simplicial set, the
spectral initialisation of the layout and the optimisation epochs (the only step with a tqdm bar).
To name them without changing a single coordinate:

- the neighbours are searched before ``fit`` with umap-learn's own ``nearest_neighbors``, called
  with the arguments ``fit`` would use and the *same* random-state object, which ``fit`` then
  receives already advanced (NN-descent draws from it, the layout draws next): the layout equals
  ``UMAP(random_state=seed).fit_transform`` bit for bit (tests/test_progress.py checks it);
- ``fit`` then starts with the fuzzy simplicial set, and calls ``_fit_embed_data`` (umap-learn's
  hook for subclasses) for the layout: the subclass below reports the spectral initialisation
  there, and the epoch bar, written to a file of ours, reports the epochs.

NN-descent reports nothing unless verbose, and then prints (from numba, through ``sys.stdout``) a
line when it builds its random-projection trees and one per iteration: :class:`NeighbourLines`
turns those lines into progress within the neighbours stage (the search stops once its graph
settles, mostly after a few of at most log2(N) iterations, hence the estimate in
:func:`iteration_share`).

Under 4,096 patches umap-learn computes all pairwise distances instead of NN-descent (exact, and
fast): neighbours and fuzzy set are then one stage, and the layout is left to ``fit`` as before.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable

from .errors import Cancelled

# The stages in order, and the share of the progress bar each ends at, after the times measured
# for 50,000 patches x 384 features (seeded, so single-threaded; 2 busy cores): PCA 10 s,
# NN-descent 203 s, fuzzy set 1 s, spectral init 4 s, 200 epochs 95 s.
STAGES = ("PCA", "nearest neighbours", "fuzzy simplicial set", "spectral init", "epochs")
STAGE_END = {
    "PCA": 0.03,
    "nearest neighbours": 0.62,
    "fuzzy simplicial set": 0.64,
    "spectral init": 0.67,
    "epochs": 1.0,
}
SMALL_DATA = 4096  # umap-learn's threshold for exact, all-pairs neighbours
# umap-learn searches with angular random-projection trees for these metrics (UMAP.fit does the same).
_ANGULAR = ("cosine", "correlation", "dice", "jaccard", "ll_dirichlet", "hellinger")


def stage_start(name: str) -> float:
    index = STAGES.index(name)
    return 0.0 if index == 0 else STAGE_END[STAGES[index - 1]]


class StageReporter:
    """Calls ``progress(fraction, "<stage>: <detail>")`` with fractions that never go back, and
    raises :class:`Cancelled` when ``cancelled()`` says so (checked at every report)."""

    def __init__(self, progress, cancelled):
        self.progress, self.cancelled = progress, cancelled
        self.fraction = 0.0

    def check(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise Cancelled("UMAP cancelled")

    def report(self, fraction: float, stage: str) -> None:
        self.check()
        self.fraction = max(self.fraction, min(1.0, fraction))
        if self.progress is not None:
            self.progress(self.fraction, stage)

    def begin(self, name: str, detail: str = "") -> None:
        self.report(stage_start(name), f"{name}: {detail}" if detail else name)

    def within(self, name: str, fraction: float, detail: str) -> None:
        """Progress ``fraction`` (0..1) through stage ``name``. Never raises :class:`Cancelled`
        (it is called from inside numba's print, which would swallow it): the next stage
        checks."""
        start, end = stage_start(name), STAGE_END[name]
        self.fraction = max(self.fraction, min(1.0, start + (end - start) * fraction))
        if self.progress is not None:
            self.progress(self.fraction, f"{name}: {detail}")

    def epochs_stream(self) -> EpochStream:
        return EpochStream(self, stage_start("epochs"), STAGE_END["epochs"])


class EpochStream:
    """A file for umap-learn's tqdm epoch bar: turns "n/total" into progress (tqdm writes every
    ``mininterval``, inside umap's epoch loop, so a cancel stops the loop there too)."""

    _count = re.compile(r"(\d+)/(\d+)")

    def __init__(self, reporter: StageReporter, start: float, end: float):
        self.reporter, self.start, self.end = reporter, start, end
        self.stopped = False

    def write(self, text: str) -> None:
        if self.stopped:
            return  # the bar's last redraws (close, garbage collection) after a cancel
        try:
            self.reporter.check()
            match = self._count.findall(text)
            if match:
                done, total = (int(v) for v in match[-1])
                if total:
                    fraction = self.start + (self.end - self.start) * done / total
                    self.reporter.report(fraction, f"epochs: {done}/{total}")
        except Cancelled:
            self.stopped = True
            _release_lock_of_tqdm_refresh()
            raise

    def flush(self) -> None:
        pass


def _release_lock_of_tqdm_refresh() -> None:
    """tqdm's ``refresh`` takes tqdm's process-wide write lock and releases it without
    try/finally, so an exception raised from a bar's file inside it leaves the lock held, and
    every later tqdm bar of the process waits forever (seen: the next UMAP in the GUI hung).
    Called before raising from :meth:`EpochStream.write`: releases the lock when the write
    comes from a locking ``refresh``; a ``with`` block (``close``) releases it by itself."""
    tqdm_std = os.path.join("tqdm", "std.py")
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_filename.endswith(tqdm_std):
            if code.co_name == "refresh":
                if not frame.f_locals.get("nolock", False):
                    frame.f_locals["self"]._lock.release()
                return
            if code.co_name in ("close", "clear", "__exit__", "__enter__"):
                return
        frame = frame.f_back


def reporting_umap(umap, on_layout: Callable[[], None]):
    """``umap.UMAP`` that calls ``on_layout()`` when the fuzzy set is done and the layout (spectral
    initialisation, then the epochs) begins."""

    class ReportingUMAP(umap.UMAP):
        def _fit_embed_data(self, X, n_epochs, init, random_state, **kwargs):
            on_layout()
            return super()._fit_embed_data(X, n_epochs, init, random_state, **kwargs)

    return ReportingUMAP


def searches_alone(umap, metric: str) -> bool:
    """Whether the neighbour search can run before ``fit`` exactly as ``fit`` would run it: for
    a metric pynndescent knows by name (else ``fit`` searches, inside its graph step)."""
    return metric in umap.umap_.pynn_named_distances


def nndescent_neighbours(
    data,
    n_neighbors: int,
    metric: str,
    random_state: int | None,
    progress: Callable[[float, str], None] | None = None,
):
    """umap-learn's neighbour search with the arguments ``UMAP.fit`` passes it: returns
    ((indices, distances, index), random_state object) for ``UMAP(precomputed_knn=...,
    random_state=...)``. With a seed umap-learn runs single-threaded (n_jobs 1), else n_jobs -1;
    without one, both draw from numpy's global state, as ``fit`` alone would.
    ``progress(fraction, detail)``: how far the search is (see :class:`NeighbourLines`);
    reporting changes nothing in the result."""
    from sklearn.utils import check_random_state
    from umap.umap_ import nearest_neighbors

    state = check_random_state(random_state)
    lines = NeighbourLines(progress, sys.stdout) if progress is not None else None
    with contextlib.redirect_stdout(lines) if lines else contextlib.nullcontext():
        found = nearest_neighbors(
            data,
            n_neighbors,
            metric,
            {},
            metric in _ANGULAR,
            state,
            True,  # low_memory: UMAP's default
            use_pynndescent=True,
            n_jobs=1 if random_state is not None else -1,
            verbose=lines is not None,
        )
    return found, (state if random_state is not None else None)


FOREST_SHARE = 0.15  # of the neighbours stage: the random-projection trees (measured ~10-20%)


def iteration_share(iteration: int, most: int) -> float:
    """The estimated share of NN-descent's iterations done when ``iteration`` (1-based) of at
    most ``most`` begins. Each iteration finds fewer updates than the one before and the search
    mostly stops at a third to a half of ``most``: the estimate halves what is left at every
    iteration, and never reaches 1 before the search ends."""
    return (1.0 - 0.6 ** (iteration - 1)) * min(1.0, 3.0 * iteration / max(most, 1))


class NeighbourLines:
    """``sys.stdout`` while a verbose NN-descent runs: its lines become ``progress(fraction
    within the search, detail)``; any other line goes on to ``passthrough``."""

    _forest = re.compile(r"Building RP forest with (\d+) trees")
    _iteration = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
    _own = re.compile(
        r"Finding Nearest Neighbors|Finished Nearest Neighbor|NN descent for|Stopping threshold"
    )

    def __init__(self, progress: Callable[[float, str], None], passthrough):
        self.progress, self.passthrough = progress, passthrough
        self._buffer = ""

    def write(self, text: str) -> int:
        # numba prints a line in pieces (each item, the spaces, the newline): whole lines only
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        if match := self._forest.search(line):
            self.progress(0.0, f"random projection trees ({match.group(1)})")
        elif match := self._iteration.match(line):
            done, most = int(match.group(1)), int(match.group(2))
            share = FOREST_SHARE + (1.0 - FOREST_SHARE) * iteration_share(done, most)
            self.progress(share, f"NN-descent iteration {done} (at most {most})")
        elif line.strip() and not self._own.search(line):
            self.passthrough.write(line + "\n")

    def flush(self) -> None:
        pass
