"""Slide commands: info, check, patches, convert, render, plot-predictions."""

from __future__ import annotations

import argparse

from ..errors import PathvizError
from ..io.zarr_io import LAYOUTS
from ._common import (
    add_slide_id_option,
    add_slide_options,
    load_table_for,
    open_slide_from_args,
    progress_bar,
    step,
)


def add_parsers(sub) -> None:
    p = sub.add_parser("info", help="describe a slide: format, levels, chunks, microns per pixel")
    add_slide_options(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "check",
        help="read every stored chunk of a slide; report the first fault",
        description="Reads every chunk of every stored level; in a TIFF also finds tiles whose "
        "offset or byte count is 0 or that run past the end of the file. JPEG cannot detect "
        "every flipped bit: such a tile decodes to wrong pixels.",
    )
    add_slide_options(p)
    p.add_argument(
        "--decode-all",
        action="store_true",
        help="TIFF: decode every tile with tifffile and compare its decoded shape with the "
        "tags' (and that each JPEG tile ends in its end marker, which a cut-off tile lacks)",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "patches",
        help="generate a patch grid over the tissue of a slide",
        description="Detects tissue on a low-resolution level (Otsu on HSV "
        "saturation) and writes the patches that cover enough of it.",
    )
    add_slide_options(p)
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
    add_slide_options(p)
    p.add_argument("out", help="output .zarr folder (must not exist)")
    p.add_argument("--chunk", type=int, default=512, help="chunk side in pixels (64 or more)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "render", help="PNG of a slide thumbnail with its patches coloured by a column"
    )
    add_slide_options(p)
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

    p = sub.add_parser(
        "plot-predictions",
        help="PNG of the slide thumbnail with a prediction heatmap blended (PathFlowAI's "
        "plot_predictions)",
    )
    p.add_argument("--slide", required=True, help="slide file or folder")
    p.add_argument("-p", "--predictions", required=True, help="table from pathviz extract")
    p.add_argument("--column", default=None, help="column to show (default: the last prob_*)")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="stored axis order of zarrs")
    add_slide_id_option(p)
    p.set_defaults(func=cmd_plot_predictions)


def cmd_info(args: argparse.Namespace) -> int:
    print(open_slide_from_args(args).describe())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..slide_check import check_slide

    slide = open_slide_from_args(args)
    with progress_bar("chunks", f"reading every chunk of {args.slide}") as progress:
        n = check_slide(slide, progress=progress, decode_all=args.decode_all)
    decoded = args.decode_all and slide.source.format.startswith("tiff")
    what = "tiles decoded" if decoded else "chunks read"
    print(f"{args.slide}: {n} {what}, all present and readable")
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    from ..io.tables import write_table
    from ..tissue import tissue_grid

    slide = open_slide_from_args(args)
    step(f"tissue grid of {args.patch_size} px patches on {slide.slide_id}")
    table = tissue_grid(slide, args.patch_size, args.stride, args.min_tissue)
    write_table(table.df, args.out, overwrite=args.overwrite)
    print(f"{args.out}: {len(table)} patches of {args.patch_size} px on {slide.slide_id}")
    return 0


MIN_CHUNK = 64


def cmd_convert(args: argparse.Namespace) -> int:
    from ..io.atomic import atomic_folder
    from ..io.zarr_io import write_ome_zarr

    slide = open_slide_from_args(args)
    if args.chunk < MIN_CHUNK:  # smaller chunks: each a file, the writing 100x slower
        raise PathvizError(f"--chunk must be at least {MIN_CHUNK}, got {args.chunk}")
    # Built aside and swapped in at the end: --overwrite keeps the old pyramid until then.
    with (
        progress_bar("chunks", f"writing the OME-Zarr pyramid {args.out}") as progress,
        atomic_folder(args.out, overwrite=args.overwrite) as tmp,
    ):
        write_ome_zarr(
            slide.levels,
            tmp,
            n_native=slide.n_native,
            mpp=slide.mpp,
            chunk=args.chunk,
            name=slide.slide_id,
            progress=progress,
        )
    print(f"{args.out}: {len(slide.levels)} levels, {slide.width} x {slide.height} px")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from ..render import render_slide_with_patches

    slide = open_slide_from_args(args)
    table = None
    if args.patches:
        table = load_table_for(slide, args.patches, args.patch_size, args.slide_id)
    step(f"drawing {slide.slide_id}" + (f" and {len(table)} patches" if table is not None else ""))
    out = render_slide_with_patches(
        slide, table, args.out, color_by=args.color_by, max_size=args.max_size
    )
    print(out)
    return 0


def cmd_plot_predictions(args: argparse.Namespace) -> int:
    from ..io.tables import read_table
    from ..patches import patches_for_slide
    from ..render import render_slide_with_patches
    from ..slide import open_slide

    slide = open_slide(args.slide, args.layout)
    df = read_table(args.predictions)
    probs = [c for c in df.columns if str(c).startswith("prob_")]
    column = args.column or (probs[-1] if probs else None)
    if column is None:
        raise PathvizError(
            f"{args.predictions}: no prob_* column to plot; name one with --column "
            f"(columns: {', '.join(map(str, df.columns))})"
        )
    if column not in df.columns:
        raise PathvizError(
            f"{args.predictions}: no column {column!r} to plot "
            f"(prob_* columns: {', '.join(probs) or 'none'})"
        )
    # Only this slide's rows: a table of other slides is refused naming the IDs it holds.
    table = patches_for_slide(df, args.predictions, slide, slide_id=args.slide_id)
    out = render_slide_with_patches(
        slide,
        table,
        args.out,
        color_by=column,
        alpha=args.alpha,
        title=f"{slide.slide_id}: {column} of {len(table)} patches",
    )
    print(out)
    return 0
