"""The ``pathviz`` command: the headless face of the plugin.

Every command is a thin layer over the core, one module per command family. Bad input ends with
one line on stderr and exit status 2; nothing here imports napari unless the demo opens a window.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .. import __version__
from ..errors import PathvizError, PathvizWarning
from . import attributions, demo, embeddings, inference, slides
from ._common import EXIT_BAD_INPUT

__all__ = ["EXIT_BAD_INPUT", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pathviz",
        description="See what a patch classifier sees on a whole-slide image (headless tools of "
        "the napari-pathviz plugin).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for family in (demo, slides, embeddings, inference, attributions):
        family.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(args.command)
            return int(args.func(args) or 0)
    except PathvizError as err:
        print(f"pathviz {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"pathviz {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line_warnings(command: str):
    """Our warnings as one stderr line each; other libraries' as Python prints them."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PathvizWarning):
            print(f"pathviz {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


if __name__ == "__main__":
    sys.exit(main())
