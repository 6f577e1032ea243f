"""The ``pathviz`` command: the headless face of the plugin.

Every command is a thin layer over the core. Bad input ends with one line on stderr and exit
status 2; nothing here imports napari unless the demo opens a window.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .errors import PathvizError
from .io.zarr_io import LAYOUTS

EXIT_BAD_INPUT = 2


def _add_slide_options(p: argparse.ArgumentParser) -> None:
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


def _open(args: argparse.Namespace):
    from .slide import open_slide

    return open_slide(
        args.slide,
        args.layout,
        allow_untiled=args.allow_untiled,
        allow_missing_chunks=args.allow_missing_chunks,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pathviz",
        description="See what a patch classifier sees on a whole-slide image (headless tools of "
        "the napari-pathviz plugin).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "demo",
        help="run the demo: napari with the demo slide, or files headless",
        description="Builds the demo data (a real IHC image with labelled patches "
        "and a small trained model) and opens it in napari; without a "
        "display, or with --headless, writes figures and tables.",
    )
    p.add_argument("--headless", action="store_true", help="write files instead of opening napari")
    p.add_argument("--out", default="pathviz-demo", help="output folder for headless results")
    p.add_argument(
        "--screenshot", metavar="PNG", help="open napari, save a screenshot of the window and exit"
    )
    p.add_argument("--data-dir", help="where the demo data are built (default: user cache)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="describe a slide: format, levels, chunks, microns per pixel")
    _add_slide_options(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("check", help="read every stored chunk of a slide; report the first fault")
    _add_slide_options(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "patches",
        help="generate a patch grid over the tissue of a slide",
        description="Detects tissue on a low-resolution level (Otsu on HSV "
        "saturation) and writes the patches that cover enough of it.",
    )
    _add_slide_options(p)
    p.add_argument("-o", "--out", required=True, help="output table (.parquet, .csv, .db)")
    p.add_argument("--patch-size", type=int, default=224, help="patch side in level-0 pixels")
    p.add_argument("--stride", type=int, help="grid spacing (default: the patch size)")
    p.add_argument(
        "--min-tissue",
        type=float,
        default=0.5,
        help="keep patches whose tissue fraction is at least this (0-1)",
    )
    p.set_defaults(func=cmd_patches)

    p = sub.add_parser("convert", help="convert a slide to a chunked, compressed OME-Zarr pyramid")
    _add_slide_options(p)
    p.add_argument("out", help="output .zarr folder (must not exist)")
    p.add_argument("--chunk", type=int, default=512, help="chunk side in pixels")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "render", help="PNG of a slide thumbnail with its patches coloured by a column"
    )
    _add_slide_options(p)
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p.add_argument("--patches", help="patch table (.parquet, .csv, PathFlowAI .db)")
    p.add_argument("--patch-size", type=int, help="patch size (chooses a PathFlowAI db table)")
    p.add_argument(
        "--slide-id",
        help="keep this slide's rows (default: the slide's basename when the table has it)",
    )
    p.add_argument("--color-by", help="column to colour patches by")
    p.add_argument("--max-size", type=int, default=1600, help="thumbnail size in pixels")
    p.set_defaults(func=cmd_render)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PathvizError as err:
        print(f"pathviz {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"pathviz {args.command}: interrupted", file=sys.stderr)
        return 130


def cmd_info(args: argparse.Namespace) -> int:
    print(_open(args).describe())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .slide_check import check_slide

    slide = _open(args)
    with _progress_bar("chunks") as progress:
        n = check_slide(slide, progress=progress)
    print(f"{args.slide}: {n} chunks read, all present and readable")
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    from .io.tables import write_table
    from .tissue import tissue_grid

    slide = _open(args)
    table = tissue_grid(slide, args.patch_size, args.stride, args.min_tissue)
    write_table(table.df, args.out)
    print(f"{args.out}: {len(table)} patches of {args.patch_size} px on {slide.slide_id}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .io.zarr_io import write_ome_zarr

    slide = _open(args)
    if args.chunk < 16:
        raise PathvizError(f"--chunk must be at least 16, got {args.chunk}")
    with _progress_bar("chunks") as progress:
        write_ome_zarr(
            slide.levels,
            args.out,
            n_native=slide.n_native,
            mpp=slide.mpp,
            chunk=args.chunk,
            name=slide.slide_id,
            progress=progress,
        )
    print(f"{args.out}: {len(slide.levels)} levels, {slide.width} x {slide.height} px")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .render import render_slide_with_patches

    slide = _open(args)
    table = None
    if args.patches:
        table = _load_table_for(slide, args.patches, args.patch_size, args.slide_id)
    out = render_slide_with_patches(
        slide, table, args.out, color_by=args.color_by, max_size=args.max_size
    )
    print(out)
    return 0


def _load_table_for(slide, path: str, patch_size: int | None, slide_id: str | None):
    from .io.tables import read_table
    from .patches import patches_for_slide

    return patches_for_slide(
        read_table(path, patch_size), path, slide, patch_size=patch_size, slide_id=slide_id
    )


@contextmanager
def _progress_bar(unit: str):
    """Yields a progress(done, total) callback drawing a tqdm bar on stderr; the bar is cleared
    on exit, also on error, so an error stays the one line on stderr."""
    from tqdm import tqdm

    bars: list = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit=unit, file=sys.stderr, leave=False))
        bars[0].update(done - bars[0].n)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import load_demo

    slide, table = load_demo(args.data_dir)
    if args.headless or (not args.screenshot and not _has_display()):
        if not args.headless:
            print(
                "pathviz demo: no display found; writing the demo's results instead "
                f"(to {args.out})",
                file=sys.stderr,
            )
        for path in write_demo_outputs(slide, table, Path(args.out)):
            print(path)
        return 0
    from ._demo_viewer import open_demo_viewer

    return open_demo_viewer(slide, table, screenshot=args.screenshot)


def write_demo_outputs(slide, table, out: Path) -> list[Path]:
    """Headless demo: the patch table (with predictions when torch is there) and figures."""
    from .io.tables import write_table
    from .render import render_slide_with_patches

    out.mkdir(parents=True, exist_ok=True)
    written = [
        write_table(table.df, out / "patches.csv"),
        render_slide_with_patches(
            slide, table, out / "slide_patches_annotation.png", color_by="annotation"
        ),
    ]
    if "prob_dab_positive" in table.df.columns:
        written.append(
            render_slide_with_patches(
                slide, table, out / "slide_patches_prediction.png", color_by="prob_dab_positive"
            )
        )
    return written


if __name__ == "__main__":
    sys.exit(main())
