"""Running one long job of a dock widget off the GUI thread, with Run/Cancel buttons.

A job is ``job(progress, cancelled)``: it calls ``progress(*values)`` from its thread (delivered
to the widget on the GUI thread through a Qt signal) and checks ``cancelled()`` between steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal


class _ProgressSignal(QObject):
    # Emitted from the worker thread; Qt queues the call to the GUI thread.
    changed = Signal(tuple)


class JobRunner:
    def __init__(self, run_button, cancel_button, on_progress: Callable, on_error: Callable):
        self.run_button, self.cancel_button = run_button, cancel_button
        self.on_progress, self.on_error = on_progress, on_error
        self.worker: Any = None
        self.cancel_requested = False
        self.closed = False
        self._signal: _ProgressSignal | None = None
        # Closing the viewer deletes the dock's Qt widgets while a job may still run, and in an
        # event loop that stays alive (IPython, Jupyter) its late progress and result would
        # raise on deleted objects: the job is cancelled instead, and its signals go nowhere.
        native = getattr(run_button, "native", None)
        if native is not None:
            native.destroyed.connect(self._widget_closed)

    def start(self, job: Callable, on_done: Callable) -> None:
        from napari.qt.threading import create_worker

        self.cancel_requested = False
        signal = _ProgressSignal()
        signal.changed.connect(self._live(lambda values: self.on_progress(*values)))
        # napari's task-status manager keeps every worker for the life of its window; the
        # worker reaches the job (and the data the job holds) only through `held`, emptied when
        # the job ends, so a long session does not keep every past job's inputs and results.
        held = {
            "job": job,
            "progress": lambda *values: signal.changed.emit(values),
            "done": on_done,
        }

        def run():
            return held["job"](held["progress"], lambda: self.cancel_requested)

        def finished():
            held.clear()
            if not self.closed:
                self._set_running(False)

        # Errors go to on_error; connecting it here also stops the worker re-raising them.
        self.worker = create_worker(
            run,
            _connect={
                "returned": self._live(lambda result: held["done"](result)),
                "errored": self._live(self.on_error),
                "finished": finished,
            },
            _start_thread=False,
        )
        self._signal = signal  # kept alive while the job runs
        self._set_running(True)
        self.worker.start()

    def cancel(self) -> None:
        self.cancel_requested = True

    def _widget_closed(self, *_args) -> None:
        self.closed = self.cancel_requested = True

    def _live(self, callback: Callable) -> Callable:
        """``callback``, skipped once the widget is gone."""

        def call(*args):
            if not self.closed:
                callback(*args)

        return call

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
