"""The ``pathviz`` command: the headless face of the plugin.

Every command is a thin layer over the core, one module per command family. Bad input ends with
one line on stderr and exit status 2; nothing here imports napari unless the demo opens a window.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import warnings
from collections.abc import Sequence

from .. import __version__
from ..errors import PathvizError, PathvizWarning
from . import attributions, demo, embeddings, inference, qupath, slides
from ._common import EXIT_BAD_INPUT, add_progress_option, configure_progress
from ._guards import check_numbers, claimed_outputs, install

__all__ = ["EXIT_BAD_INPUT", "build_parser", "main"]


class OneLineParser(argparse.ArgumentParser):
    """argparse's refusals (a bad choice, a missing or malformed option) as our one line on
    stderr and exit 2, without the usage block: the same shape as every other bad input."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every option's default, as ``(default: X)``; left out where there is
    nothing to say (no default, a flag that is off) or the help already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
        ):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pathviz",
        formatter_class=DefaultsHelpFormatter,
        description="See what a patch classifier sees on a whole-slide image (headless tools of "
        "the napari-pathviz plugin).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for family in (demo, slides, embeddings, inference, attributions, qupath):
        family.add_parsers(sub)
    for command in sub.choices.values():
        command.formatter_class = DefaultsHelpFormatter
        add_progress_option(command)
    install(sub)  # --overwrite, --verbose and the output guard's option names
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    configure_progress(args.command, getattr(args, "progress", "auto"))
    try:
        with warnings.catch_warnings(), _quiet_library_logs(verbose):
            warnings.showwarning = _one_line_warnings(args.command, verbose)
            check_numbers(args)
            # Before any computation: outputs never replace inputs; each output is claimed.
            with claimed_outputs(args):
                return int(args.func(args) or 0)
    except PathvizError as err:
        print(f"pathviz {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # a file system refusal the writers did not name themselves
        print(f"pathviz {args.command}: error: {_os_error_line(err, args)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"pathviz {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line_warnings(command: str, verbose: bool):
    """Our warnings as one stderr line each; other libraries' (tifffile, torch, umap, zarr)
    only with --verbose, as Python prints them: for a bad input, our one line is all."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PathvizWarning):
            print(f"pathviz {command}: warning: {message}", file=sys.stderr)
        elif verbose:
            default(message, category, filename, lineno, file, line)

    return show


class _quiet_library_logs:
    """Other libraries' log records (tifffile logs a damaged file's faults as warnings, and
    Python prints those on stderr when no handler is set) are dropped unless --verbose."""

    def __init__(self, verbose: bool):
        self.verbose = verbose

    def __enter__(self):
        self.previous = logging.root.manager.disable
        if not self.verbose:
            logging.disable(logging.CRITICAL)
        return self

    def __exit__(self, *exc) -> None:
        logging.disable(self.previous)


def _os_error_line(err: OSError, args: argparse.Namespace) -> str:
    """The file an OSError names; a full disk met by a writer that names no file (zarr's chunk
    writes in a results store) names the command's outputs."""
    reason = err.strerror or str(err)
    if err.filename is not None:
        return f"{err.filename}: {reason}"
    if err.errno == errno.ENOSPC:
        outputs = [str(getattr(args, d)) for d in _OUTPUT_DESTS if getattr(args, d, None)]
        return f"cannot write {' and '.join(outputs) or 'the output'}: no space left on the device"
    return f"a file: {reason}"


_OUTPUT_DESTS = ("out", "attributions_out", "store")


if __name__ == "__main__":
    sys.exit(main())
