"""The widgets' job runner: napari's task-status manager keeps every worker for the life of its
window, so a finished job must leave nothing of its own (inputs, results) reachable from it."""

from __future__ import annotations

import gc
import weakref

import numpy as np
from magicgui.widgets import PushButton

from napari_pathviz._widgets._jobs import JobRunner


def _job_holding(data: np.ndarray):
    """A job whose closure is the only holder of ``data``, and a weak reference to it."""

    def job(report, cancelled):
        report(1, 2)
        return data.sum() + (0 if cancelled() else 1)

    return job, weakref.ref(data)


def test_a_finished_job_keeps_neither_its_inputs_nor_its_result(make_napari_viewer, qtbot):
    make_napari_viewer()  # napari registers workers with the current viewer's window
    progress, results = [], []
    errors = []
    runner = JobRunner(PushButton(), PushButton(), lambda *v: progress.append(v), errors.append)
    job, data_ref = _job_holding(np.ones(1000))
    runner.start(job, results.append)
    worker = runner.worker
    del job
    qtbot.waitUntil(lambda: bool(errors) or not runner.cancel_button.enabled, timeout=10_000)
    assert not errors
    qtbot.waitUntil(lambda: bool(results), timeout=10_000)
    assert results == [1001.0]
    assert progress == [(1, 2)]
    assert runner.run_button.enabled
    gc.collect()
    assert worker is runner.worker  # still there, as napari's task list holds it
    assert data_ref() is None
