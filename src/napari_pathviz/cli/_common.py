"""What the ``pathviz`` commands share: slide and model options, opening a slide, loading a patch
table for it, the progress bar and integer parsing of options."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from ..errors import PathvizError
from ..io.zarr_io import LAYOUTS

EXIT_BAD_INPUT = 2


def seed_value(text: str) -> int:
    """argparse type of a random seed: a whole number from 0 to 2**32 - 1, the range numpy's
    and umap-learn's generators take (a negative seed was a ValueError traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be from 0 to {2**32 - 1}, got {value}")
    return value


def add_slide_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("slide", help="slide file or folder (zarr, OME-Zarr, SVS, TIFF, OME-TIFF, NDPI)")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="stored axis order of a single zarr array; xyc = PathFlowAI's {ID}.zarr "
        "(default: auto)",
    )
    p.add_argument(
        "--allow-untiled",
        action="store_true",
        help="read a TIFF stored in strips (slow: whole strips are decoded)",
    )
    p.add_argument(
        "--allow-missing-chunks",
        action="store_true",
        help="read missing zarr chunks as blank instead of failing",
    )


def open_slide_from_args(args: argparse.Namespace):
    from ..slide import open_slide

    return open_slide(
        args.slide,
        args.layout,
        allow_untiled=args.allow_untiled,
        allow_missing_chunks=args.allow_missing_chunks,
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-m",
        "--model",
        required=True,
        help="weights (safetensors or a state dict) with --factory or a model card beside "
        "them; TorchScript or a pickle only with --trust-model",
    )
    p.add_argument(
        "--model-card",
        metavar="JSON",
        help="model card to use (default: <weights>.json or model_card.json beside the weights)",
    )
    p.add_argument(
        "--factory",
        help="architecture for the weights: package.module:function or a registered "
        "architecture's name; typing it allows importing it (default: the card's)",
    )
    p.add_argument(
        "--factory-kwargs", help="JSON keyword arguments of --factory (default: the card's)"
    )
    p.add_argument(
        "--trust-model",
        "--trust-pickle",
        dest="trust_model",
        action="store_true",
        help="allow a pickled (PathFlowAI's) or TorchScript model, or a model card's factory "
        "that is not a registered architecture: all are code, and can read and write any "
        "file when loaded or run",
    )
    p.add_argument("--input-size", type=int, help="resize (or crop) patches to this side")
    p.add_argument(
        "--resize-mode", choices=("resize", "crop"), help="default: the card's, else resize"
    )
    p.add_argument("--channel-order", choices=("RGB", "BGR"), help="default: the card's, else RGB")
    p.add_argument("--mean", type=float, nargs=3, help="normalisation mean on [0, 1] inputs")
    p.add_argument("--std", type=float, nargs=3, help="normalisation std")
    p.add_argument(
        "--activation",
        choices=("auto", "none", "sigmoid", "softmax"),
        help="output activation (default: the card's, else auto: softmax, sigmoid for 1 output)",
    )
    p.add_argument(
        "--feature-layer",
        help="module whose output is the embedding (default: the input of the last Linear)",
    )
    p.add_argument(
        "--class-names",
        nargs="+",
        metavar="NAME",
        help="one name per model output, in order: columns prob_NAME, y_pred NAME "
        "(default: the card's, else prob_0, prob_1, ...)",
    )


def recipe_from_args(args: argparse.Namespace):
    """The model options as a picklable recipe (cohort workers load the model themselves).
    Options left out are None, so that the model card fills them."""
    import json

    from ..cohort import ModelRecipe

    kwargs = None
    if args.factory_kwargs is not None:
        try:
            kwargs = json.loads(args.factory_kwargs)
        except json.JSONDecodeError as exc:
            raise PathvizError(f"--factory-kwargs is not JSON: {exc}") from None
        if not isinstance(kwargs, dict):
            raise PathvizError("--factory-kwargs must be a JSON object")
    return ModelRecipe(
        path=args.model,
        factory=args.factory,
        factory_kwargs=kwargs,
        trust_model=args.trust_model,
        input_size=args.input_size,
        resize_mode=args.resize_mode,
        channel_order=args.channel_order,
        mean=tuple(args.mean) if args.mean else None,
        std=tuple(args.std) if args.std else None,
        activation=args.activation,
        feature_layer=args.feature_layer,
        class_names=tuple(args.class_names) if getattr(args, "class_names", None) else None,
        card=args.model_card,
    )


def add_slide_id_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--slide-id",
        help="the slide's ID in the table's ID column, when the table names it otherwise "
        "(default: the slide's file name without suffixes)",
    )


def load_table_for(slide, path: str, patch_size: int | None, slide_id: str | None):
    from ..io.tables import read_table
    from ..patches import patches_for_slide

    return patches_for_slide(
        read_table(path, patch_size), path, slide, patch_size=patch_size, slide_id=slide_id
    )


# How progress shows on stderr (--progress, or $PATHVIZ_PROGRESS): "auto" = step lines and tqdm
# bars on a terminal, nothing when stderr is a file or a pipe (logs and scripts keep the one-line
# errors and warnings); "lines" = one line per step, also into a file; "bar" = lines and bars
# always; "off" = nothing.
PROGRESS_MODES = ("auto", "lines", "bar", "off")
_progress = {"command": "pathviz", "mode": "auto"}


def add_progress_option(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default=os.environ.get("PATHVIZ_PROGRESS", "auto"),
        help="progress on stderr: step lines and bars on a terminal (auto), step lines also "
        "into a file or pipe (lines), lines and bars always (bar), or none (off); "
        "also $PATHVIZ_PROGRESS",
    )


def configure_progress(command: str, mode: str) -> None:
    _progress.update(command=command, mode=mode if mode in PROGRESS_MODES else "auto")


def _shows(what: str) -> bool:
    mode = _progress["mode"]
    if mode == "auto":
        return sys.stderr.isatty()
    return mode == "bar" if what == "bar" else mode in ("lines", "bar")


def step(text: str) -> None:
    """Announces a step on stderr: ``pathviz <command>: <text>``."""
    if _shows("line"):
        from tqdm import tqdm

        # tqdm.write: a bar being drawn is cleared for the line and redrawn below it.
        tqdm.write(f"pathviz {_progress['command']}: {text}", file=sys.stderr)


@contextmanager
def progress_bar(unit: str, desc: str | None = None):
    """Yields a progress(done, total) callback drawing a tqdm bar on stderr; ``desc`` is
    announced as a step. The bar is cleared on exit, also on error, so an error stays the one
    line after the steps."""
    from tqdm import tqdm

    if desc:
        step(desc)
    bars: list = []

    def progress(done: int, total: int, stage: str | None = None) -> None:
        if not bars:
            bars.append(
                tqdm(
                    total=total,
                    unit=unit,
                    desc=desc,
                    file=sys.stderr,
                    leave=False,
                    disable=not _shows("bar"),
                    # a percentage has no rate worth showing
                    bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]" if unit == "%" else None,
                )
            )
        if stage is not None:
            bars[0].set_description(f"{desc}: {stage}" if desc else stage, refresh=False)
        bars[0].update(done - bars[0].n)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


@contextmanager
def stage_progress(desc: str):
    """Yields a progress(fraction, stage) callback (the core's UMAP signature): a step line per
    new stage ("epochs: 12/500" is stage "epochs") and a percent bar showing the stage."""
    with progress_bar("%", desc) as bar:
        seen: list[str] = []

        def progress(fraction: float, stage: str) -> None:
            name = stage.split(":")[0]
            if name not in seen:
                seen.append(name)
                step(f"{desc}: {stage}")
            bar(round(100 * fraction), 100, name)

        yield progress


def report_failed_slides(command: str, summary, out) -> int:
    """A cohort run's end: one stderr line per failed slide and one counting them (the others
    are done, summary.csv says which); EXIT_BAD_INPUT when any failed, else 0."""
    failed = summary[summary["status"] == "failed"]
    for error in failed["error"]:
        print(f"pathviz {command}: failed: {error}", file=sys.stderr)
    if not len(failed):
        return 0
    where = Path(out).expanduser().absolute() / "summary.csv"
    print(
        f"pathviz {command}: error: {len(failed)} of {len(summary)} slides failed "
        f"(the others are done; see {where})",
        file=sys.stderr,
    )
    return EXIT_BAD_INPUT
