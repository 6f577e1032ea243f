"""How the dock widgets tell the user something: the widget's status line (wrapped, whole
text in its tooltip) and, for every error and warning, a napari notification too, worded with
the GUI's field names, not the CLI flags the core's messages name."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .._model_files import TRUST_BOX
from ..errors import Cancelled, PathvizError

TRUST_MODEL = repr(TRUST_BOX)  # the model form's checkbox, quoted: "Trust this model's code"
TRUST_PICKLE = "'Trust this pickle'"
# Whole phrases first (a flag with its verb or value), then single flags. Each pattern is
# matched where a flag starts: not inside a word or a path.
_PHRASES: list[tuple[str, str]] = [
    # The core's own GUI hint, "--factory X or --trust-model (widgets: ...)": keep the hint.
    (r"--[\w-]+(?: [^\s()]+)?(?: or --[\w-]+)? \(widgets: ([^)]*)\)", r"\1"),
    (r"pass --trust-model \(or tick (\"[^\"]*\"|'[^']*') in the GUI\)", r"tick \1"),
    (r"(pass --[\w-]+) \(or (?:confirm|tick)[^)]* in the GUI\)", r"\1"),
    (r"(?:pass|with) --trust-model", f"tick {TRUST_MODEL}"),
    (r"\(or --trust-model\)", f"(or tick {TRUST_MODEL})"),
    (r"(?:pass|with) --trust-pickle", f"tick {TRUST_PICKLE}"),
    (
        r"(?:with )?--factory package\.module:function",
        "as package.module:function in the Factory field",
    ),
    (r"drop --factory", "clear the Factory field"),
    (r"(?:with|for) --factory (\S+?)([;,)]|$| )", r"with \1 in the Factory field\2"),
    (r"with --factory", "in the Factory field"),
    (r"pass (?:overwrite \()?--overwrite\)? to replace it", "choose another file, or delete it"),
    (r"--class-names or the model card", "the model card's class names"),
]
FLAG_FIELDS = {
    "factory": "the Factory field",
    "factory-kwargs": "Factory kwargs",
    "trust-model": TRUST_MODEL,
    "trust-pickle": TRUST_PICKLE,
    "model-card": "the model card",
    "class-names": "the model card's class names",
    "mean": "Mean",
    "std": "Std",
    "input-size": "Input size",
    "batch_size": "Batch size",
    "batch-size": "Batch size",
    "method": "Method",
    "output": "Target",
    "n_samples": "Samples",
    "samples-per-batch": "Samples",
    "device": "Device",
    "level": "Level",
    "top": "Top N",
    "min-coverage": "Min coverage",
    "as": "Export as",
    "patch-size": "Patch size",
    "min-tissue": "Min tissue",
    "components": "Components",
    "max_background_area": "Max bg area",
    "keys": "the key table",
    "layout": "Layout",
}
# A flag where a word starts ("-bs/--batch_size", "--mean/--std"), never inside a path.
_FLAG = re.compile(r"(?<![\w./-])(?:-\w+/)?--([A-Za-z][\w-]*)(?:/--([A-Za-z][\w-]*))?")


def gui_wording(message: str) -> str:
    """``message`` with the CLI flags it names replaced by the GUI fields that set the same
    thing ("--factory" -> "the Factory field"); a flag without a field becomes plain words. A
    command quoted in backticks (`pathviz convert --allow-untiled`) is left whole: it is one
    to run."""
    parts = message.split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        for pattern, replacement in _PHRASES:
            parts[i] = re.sub(pattern, replacement, parts[i])
        parts[i] = _FLAG.sub(lambda m: "/".join(_field(f) for f in m.groups() if f), parts[i])
    return "`".join(parts)


def _field(flag: str) -> str:
    return FLAG_FIELDS.get(flag, flag.replace("_", " ").replace("-", " "))


def report_error(status, err: Exception) -> str:
    """Shows ``err`` (a PathvizError's own message, else its type and text) in the status and
    as a napari error notification, in the GUI's words; returns the line.

    A job the user cancelled is no error: the status says so, without a notification."""
    from napari.utils.notifications import show_error

    if isinstance(err, Cancelled):
        status.value = "cancelled"
        return status.value
    message = str(err) if isinstance(err, PathvizError) else f"{type(err).__name__}: {err}"
    message = gui_wording(message)
    status.value = message
    show_error(message)
    return message


def report_warnings(status, line: str, warnings: Iterable[str | None]) -> str:
    """Shows ``line`` in the status with each warning after it ("; WARNING: ..."), and each
    warning as a napari warning notification too: a warning never hides in a status line
    alone. Empty warnings are skipped. Returns the status line."""
    shown = [gui_wording(w) for w in warnings if w]
    status.value = line + "".join(f"; WARNING: {w}" for w in shown)
    notify_warnings(shown)
    return status.value


def notify_warnings(warnings: Iterable[str | None]) -> None:
    """Each (non-empty) warning as a napari warning notification, in the GUI's words."""
    from napari.utils.notifications import show_warning

    for warning in warnings:
        if warning:
            show_warning(gui_wording(warning))
