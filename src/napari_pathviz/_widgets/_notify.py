"""How the dock widgets tell the user something went wrong: one line in the widget's status
label and the same line as a napari notification."""

from __future__ import annotations

from ..errors import Cancelled, PathvizError


def report_error(status, err: Exception) -> str:
    """Shows ``err`` (a PathvizError's own message, else its type and text); returns the line.

    A job the user cancelled is no error: the status says so, without a notification."""
    from napari.utils.notifications import show_error

    if isinstance(err, Cancelled):
        status.value = "cancelled"
        return status.value
    message = str(err) if isinstance(err, PathvizError) else f"{type(err).__name__}: {err}"
    status.value = message
    show_error(message)
    return message
