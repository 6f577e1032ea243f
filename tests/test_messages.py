"""Nothing cut, nothing silent: in a real napari viewer, with the widgets opened as napari's
Plugins menu opens them, a long warning wraps in the widget's status line (its whole text also
in the tooltip) and is a napari warning notification too; GUI errors name the GUI's fields,
not the CLI's flags."""

from __future__ import annotations

import html
import re

import pytest

from napari_pathviz._widgets._notify import gui_wording
from napari_pathviz.errors import PathvizError

PLUGIN = "napari-pathviz"


# -- wording (no viewer) ---------------------------------------------------------------------


def _core_error(call) -> str:
    with pytest.raises(PathvizError) as caught:
        call()
    return str(caught.value)


def test_core_errors_are_worded_with_gui_fields(tmp_path):
    """Real messages of the core, each naming CLI flags, read in the GUI's words."""
    from napari_pathviz.attribution.gradients import expected_gradients
    from napari_pathviz.inference import resolve_device
    from napari_pathviz.models import load_model

    weights = tmp_path / "weights.safetensors"
    _save_weights(weights)
    messages = [
        _core_error(lambda: load_model(str(weights))),  # weights without architecture
        _core_error(lambda: resolve_device("tpu")),
        _core_error(lambda: expected_gradients(None, None, None, n_samples=0)),
    ]
    assert all("--" in m for m in messages), messages  # the CLI's words, as the core says
    worded = [gui_wording(m) for m in messages]
    for message in worded:
        assert not re.search(r"(?<![\w.])--?[a-z]", message), message
    assert "Factory field" in worded[0]
    assert worded[1].startswith("Device must be")
    assert worded[2].startswith("Samples must be positive")
    # A command to run, quoted, stays whole; a path is left alone, flags in it or not.
    quoted = "x.tif: not tiled; convert it with `pathviz convert --allow-untiled`"
    assert gui_wording(quoted) == quoted
    assert gui_wording("/data/--odd/x.svs: no such file") == "/data/--odd/x.svs: no such file"


def _save_weights(path) -> None:
    from safetensors.torch import save_file

    from zoo import plain_maxpool_cnn

    model = plain_maxpool_cnn()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


# -- in a viewer -----------------------------------------------------------------------------

napari = pytest.importorskip("napari")


@pytest.fixture
def shown():
    """(severity, message) of each napari notification."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def collect(event):
        seen.append((str(event.severity), str(event.message)))

    notification_manager.notification_ready.connect(collect)
    yield seen
    notification_manager.notification_ready.disconnect(collect)


def _wrapped_whole(label, text: str) -> bool:
    """Whether ``label`` (a Qt label) shows all of ``text``: the text wrapped to the label's
    width fits its height, and the label is no wider than its dock allows."""
    from qtpy.QtCore import QRect, Qt

    metrics = label.fontMetrics()
    needed = metrics.boundingRect(
        QRect(0, 0, label.width(), 100_000), int(Qt.TextFlag.TextWordWrap), text
    )
    return (
        label.wordWrap() and needed.height() <= label.height() and needed.width() <= label.width()
    )


def test_incomplete_maps_wrap_in_the_status_and_are_notified(make_napari_viewer, qtbot, shown):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1440, 900)
    viewer.open_sample(PLUGIN, "demo")
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Attributions")
    widget.form.prefill_demo()
    patches = viewer.layers[-1]
    patches.selected_data = {0, 60, 125, 190, 249}
    viewer.layers.selection.active = patches
    widget.n_samples.value = 1  # one sample per patch: expected gradients miss f(x) - E f
    widget.n_background.value = 2
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    qtbot.wait(50)  # the dock lays the new text out
    status = widget.status
    text = status.value
    assert "; WARNING: " in text and "maps incomplete" in text, text
    warnings = [m for severity, m in shown if severity == "warning"]
    assert any("maps incomplete" in m for m in warnings), shown
    label = status.native
    line = label.fontMetrics().height()
    assert label.height() >= 2 * line  # wrapped onto several lines, not cut at one
    assert label.width() <= dock.width()
    assert _wrapped_whole(label, text), (label.width(), label.height(), text)
    assert html.unescape(re.sub("<[^>]+>", "", label.toolTip())) == text


def test_gui_error_names_the_factory_field_not_a_flag(make_napari_viewer, qtbot, shown, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "demo")
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Model inference")
    weights = tmp_path / "weights.safetensors"
    _save_weights(weights)  # weights without a model card: the architecture is missing
    widget.form.model_path.value = str(weights)
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    errors = [m for severity, m in shown if severity == "error"]
    assert len(errors) == 1 and "safetensors holds weights only" in errors[0], shown
    assert "Factory field" in errors[0] and "--" not in errors[0], errors
    assert widget.status.value == errors[0]
