"""UMAP in a child process, its progress, first look and result streamed back.

numba's long kernels (NN-descent, the optimisation epochs) hold the GIL: run in a thread of the
napari process they freeze the GUI for seconds at a time. A child process has a GIL of its own;
the calling thread only waits on a pipe, so the GUI thread never waits for it.

- The child is a fresh interpreter (``python -c``: forking a process that has Qt loaded is
  unsafe, and multiprocessing's "spawn" would re-run the parent's main script, which in a napari
  script without a ``__main__`` guard opens a second viewer). It imports umap at once (numba's
  cached kernels load for seconds) while the caller is still reading the features. Messages
  are pickles on the child's stdin and stdout; its prints go to stderr.
- The features go through a temporary ``.npy`` file, private to the user, that the child maps
  read-only: no pickled copy of a 200 MB matrix travels through the pipe.
- The child runs :func:`.embedding.umap_embed` (same cache, same result as in the calling
  process for the same seed) and sends back ``("progress", fraction, stage)``, ``("first look",
  note, coords)`` and ``("done", coords)`` or ``("error", exception)``.
- numba caches in the folder :mod:`._numba_cache` checks; the child inherits it through
  ``NUMBA_CACHE_DIR``, set here before it starts.
- Stopping (a cancel, an error, the caller going away) kills the child and waits for it, and
  removes the temporary folder: nothing is left behind. A child whose parent died exits too.
- A child that finished its job is kept, idle, for the next one (:func:`umap_embed_in_child`):
  numba cannot cache NN-descent (it takes a function as an argument), so every new child
  compiles it again, 15 s on two cores; a kept child compiles it once per session. At most one
  child is kept, and it is stopped when this process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .errors import Cancelled, PathvizError

PROCESS_NAME = "pathviz-umap"
POLL_S = 0.05  # how often the waiting thread looks for a cancel
STOP_WAIT_S = 5.0  # how long a killed child may take to be reaped
NICENESS = 10  # the child yields the cores to the GUI when both want them


@dataclass(frozen=True)
class Update:
    """One message from the child: progress, or a layout with it (``coords``): the first look
    (``final`` False, fitted on a sample) or the result (``final`` True)."""

    fraction: float
    stage: str
    coords: np.ndarray | None = None
    final: bool = False


class UmapProcess:
    """One child process, for one UMAP after another. Start it early (the child loads umap
    meanwhile), then iterate :meth:`run`; :meth:`stop` (or leaving the ``with`` block) kills it
    if still alive."""

    def __init__(self) -> None:
        import subprocess
        import sys

        # numba's checked folder is handed on in NUMBA_CACHE_DIR; a kept child serves only
        # callers whose surroundings are still those it started in
        self.started_in = _surroundings()
        self._folder = tempfile.mkdtemp(prefix="pathviz-umap-")  # mode 0700
        env = dict(os.environ)
        # the package's own folder first: the child finds this copy of it, installed or not
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,  # the child's messages; its prints go to stderr
            env=env,
        )
        self._messages: queue.Queue = queue.Queue()
        self._jobs = 0
        threading.Thread(target=self._read, daemon=True, name=f"{PROCESS_NAME}-read").start()
        _RUNNING.add(self)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def __enter__(self) -> UmapProcess:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def _read(self) -> None:
        """Reads the child's messages into a queue (blocking reads, the GIL released); None
        when the child has gone."""
        stream = self.process.stdout
        try:
            while True:
                self._messages.put(pickle.load(stream))
        except Exception:  # noqa: BLE001 (EOF, a broken pipe, a torn message: it has gone)
            self._messages.put(None)

    def run(
        self,
        features: np.ndarray,
        params,
        *,
        knn: str = "auto",
        use_cache: bool = True,
        first_look: bool = True,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[Update]:
        """The updates of the child's :func:`umap_embed`, ending with the result (``final``).

        Raises the child's error, :class:`Cancelled` as soon as ``cancelled()`` says so (the
        child is killed), or a PathvizError when the child dies."""
        # A new file for each job: the child may still map the last one.
        self._jobs += 1
        path = os.path.join(self._folder, f"features-{self._jobs}.npy")
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self._folder, f"features-{self._jobs - 1}.npy"))
        # np.save writes a contiguous array with the GIL released (numpy's tofile).
        np.save(path, np.ascontiguousarray(features, dtype=np.float32))
        try:
            pickle.dump(("job", path, params, knn, use_cache, first_look), self.process.stdin)
            self.process.stdin.flush()
        except OSError:
            raise self._died() from None
        fraction = 0.0
        while True:
            if cancelled is not None and cancelled():
                self.stop()
                raise Cancelled("UMAP cancelled")
            try:
                message = self._messages.get(timeout=POLL_S)  # waits with the GIL released
            except queue.Empty:
                continue
            if message is None:
                raise self._died()
            kind = message[0]
            if kind == "progress":
                fraction = message[1]
                yield Update(fraction, message[2])
            elif kind == "first look":
                yield Update(fraction, message[1], message[2])
            elif kind == "done":
                with contextlib.suppress(OSError):
                    os.remove(path)  # the child's mapping of it, if any, outlives the name
                yield Update(1.0, "done", message[1], final=True)
                return
            else:  # "error"
                raise message[1]

    def _died(self) -> PathvizError:
        code = self.process.wait(STOP_WAIT_S)
        return PathvizError(
            f"UMAP: its worker process ended unexpectedly (exit code {code}; out of memory?)"
        )

    def stop(self) -> None:
        """Kills the child if it still runs, waits for it and removes the temporary files."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(Exception):
            self.process.wait(STOP_WAIT_S)  # waitpid, with the GIL released
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        shutil.rmtree(self._folder, ignore_errors=True)
        _RUNNING.discard(self)
        global _IDLE
        if _IDLE is self:
            _IDLE = None


def running_pids() -> list[int]:
    """Process ids of the UMAP children started here, not stopped, and working on a job (not
    the one kept idle for the next job: :func:`idle_pid`)."""
    return [child.process.pid for child in list(_RUNNING) if child is not _IDLE]


def idle_pid() -> int | None:
    """Process id of the child kept for the next UMAP, if one is."""
    return None if _IDLE is None else _IDLE.process.pid


def stop_idle() -> None:
    """Stops the child kept for the next UMAP (at exit, or to free its memory)."""
    if _IDLE is not None:
        _IDLE.stop()


@contextlib.contextmanager
def kept_child() -> Iterator[UmapProcess]:
    """A child for one job: the idle one if it is still alive, else a new one. Kept idle for
    the next job when the block ends normally; stopped when it raises (a cancel, an error)."""
    global _IDLE
    child, _IDLE = _IDLE, None
    if child is not None and not (child.alive and child.started_in == _surroundings()):
        child.stop()  # gone, or started where the caches or the temporary folder were others
        child = None
    child = child or UmapProcess()
    try:
        yield child
    except BaseException:
        child.stop()
        raise
    if child.alive and _IDLE is None:
        _IDLE = child
    else:
        child.stop()


def _surroundings() -> tuple:
    """What a child takes from this process when it starts and keeps: the environment (the
    results cache's and numba's folders among it) and the temporary folder."""
    from ._numba_cache import configure_numba_cache

    configure_numba_cache()
    return tuple(sorted(os.environ.items())), tempfile.gettempdir()


_RUNNING: set[UmapProcess] = set()
_IDLE: UmapProcess | None = None
atexit.register(stop_idle)
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# -c, not multiprocessing's spawn: spawn re-runs the parent's main script in the child, and a
# napari script without an ``if __name__ == "__main__"`` guard would open a second viewer there.
_CHILD_CODE = "import sys; from napari_pathviz.umap_process import child_main; child_main()"


def umap_embed_in_child(
    features: np.ndarray,
    params,
    *,
    knn: str = "auto",
    use_cache: bool = True,
    progress: Callable[[float, str], None] | None = None,
    first_look: Callable[[np.ndarray, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> np.ndarray:
    """:func:`.embedding.umap_embed` computed in a child process: the same coordinates, with
    ``progress(fraction, stage)`` and ``first_look(coords, note)`` called in this thread. The
    child that computed them is kept for the next call; one that failed or was cancelled is
    stopped."""
    with kept_child() as child:
        for update in child.run(
            features,
            params,
            knn=knn,
            use_cache=use_cache,
            first_look=first_look is not None,
            cancelled=cancelled,
        ):
            if update.final:
                return update.coords
            if update.coords is not None:
                first_look(update.coords, update.stage)
            elif progress is not None:
                progress(update.fraction, update.stage)
    raise PathvizError("UMAP: its worker process sent no result")  # not reached


# -- in the child --------------------------------------------------------------------------------


def child_main() -> None:
    """The child: takes jobs from stdin, one after another, and sends their messages on stdout
    (see the module docstring). Anything else printed goes to stderr."""
    import sys

    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # numba's and C's prints too
    sys.stdout = sys.stderr
    _lower_priority()
    _exit_with_parent(int(sys.argv[1]))

    def send(*message) -> None:
        pickle.dump(message, channel, protocol=pickle.HIGHEST_PROTOCOL)
        channel.flush()

    from .embedding import _import_umap

    _import_umap()  # numba's kernels load while the parent reads the features
    while True:
        try:
            _, path, params, knn, use_cache, first_look = pickle.load(sys.stdin.buffer)
        except (EOFError, OSError, KeyboardInterrupt):
            return  # the parent stopped, or went away, before sending a job
        if not _run_job(send, path, params, knn, use_cache, first_look):
            return


def _run_job(send, path, params, knn, use_cache, first_look) -> bool:
    """Runs one job, its messages through ``send``; False when the parent has gone."""
    from .embedding import umap_embed

    try:
        coords = umap_embed(
            np.load(path, mmap_mode="r"),
            params,
            knn=knn,
            use_cache=use_cache,
            progress=lambda fraction, stage: send("progress", fraction, stage),
            first_look=(lambda coords, note: send("first look", note, coords))
            if first_look
            else None,
        )
        send("done", coords)
    except OSError:
        return False  # the parent has gone
    except Exception as exc:  # noqa: BLE001 (each error goes back whole, to be shown there)
        try:
            send("error", _picklable(exc))
        except OSError:
            return False
    return True


def _picklable(exc: Exception) -> Exception:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return PathvizError(f"UMAP: {type(exc).__name__}: {exc}")


def _lower_priority() -> None:
    with contextlib.suppress(AttributeError, OSError):  # no nice() on this platform
        os.nice(NICENESS)


def _exit_with_parent(parent_pid: int) -> None:
    """A thread that ends this process when its parent has gone (killed without a chance to
    stop it): then the child is handed to another parent process."""
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    if hasattr(os, "getppid"):
        threading.Thread(target=watch, daemon=True, name="pathviz-umap-watch").start()
