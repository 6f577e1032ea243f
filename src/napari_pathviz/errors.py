"""The one error type users see: a one-line message naming the file, row or parameter at fault."""


class PathvizError(ValueError):
    """Bad input. ``str(err)`` is a complete one-line message meant for the user.

    The CLI prints it and exits with status 2; the GUI shows it as a napari notification.
    """

    def __init__(self, message: str):
        # One line, always: multi-line library errors are folded so that CLI output and
        # notifications stay readable.
        super().__init__(" ".join(str(message).split()))


class PathvizWarning(UserWarning):
    """Something was dropped or could not be matched; the work went on."""


class Cancelled(Exception):
    """Raised inside a long computation when its caller asked it to stop."""
