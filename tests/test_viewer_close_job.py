"""Closing the viewer while a widget's job runs, in an event loop that stays alive (IPython,
Jupyter), cancels the job and ends it quietly (issue 18, item 10): its late progress and result
raised on the deleted Qt widgets, one traceback per progress step."""

from __future__ import annotations

import threading
import time

import pytest

from napari_pathviz.errors import Cancelled

PLUGIN = "napari-pathviz"
STEPS = 100

# dock widget -> the progress values its runner's on_progress takes at step i
WIDGETS = {
    "Embedding explorer": lambda i: (i / STEPS, f"UMAP: step {i}"),
    "Model inference": lambda i: (i, STEPS, 20.0),
    "Attributions": lambda i: (i, STEPS),
}


@pytest.mark.parametrize("name", list(WIDGETS))
def test_closing_the_viewer_cancels_the_job_without_a_traceback(
    make_napari_viewer, qtbot, name, monkeypatch
):
    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    runner = widget._jobs
    steps_run, results = [], []

    def job(progress, cancelled):
        """A long job as the widgets run them: a step at a time, reporting, cancellable."""
        for i in range(STEPS):
            if cancelled():
                raise Cancelled("cancelled")
            progress(*WIDGETS[name](i))
            steps_run.append(i)
            time.sleep(0.05)
        return "finished"

    with qtbot.capture_exceptions() as exceptions:
        runner.start(job, results.append)
        qtbot.waitUntil(lambda: len(steps_run) >= 3, timeout=10_000)
        viewer.close()
        # The event loop goes on, as IPython's and Jupyter's do: the job's signals arrive.
        qtbot.waitUntil(lambda: not runner.worker.is_running, timeout=10_000)
        qtbot.wait(500)
    assert exceptions == [] and thread_errors == []
    assert runner.closed and len(steps_run) < STEPS  # cancelled, not run to the end
    assert results == []
