"""What `pathviz extract` does with its options before a model runs, shared by the patch
classifier's path (cli/inference.py) and the two-stage model's (cli/slide_level.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ._common import load_table_for


def open_slide_and_table(args: argparse.Namespace):
    """The one slide, with --target-mpp turned into --level, and its patches: --patches, or a
    tissue grid of --patch-size."""
    from ..slide import open_slide
    from ..tissue import tissue_grid

    slide = open_slide(args.slide[0], args.layout)
    if args.target_mpp is not None:
        args.level = slide.level_for_mpp(args.target_mpp)
    if args.patches:
        table = load_table_for(slide, args.patches, args.patch_size, args.slide_id)
    else:
        table = tissue_grid(slide, args.patch_size or 224, None, args.min_tissue)
    return slide, table


def extract_kwargs(args: argparse.Namespace, bar: Callable[[int, int], None]) -> dict:
    """The keyword arguments of inference.extract (and slide_level.extract_slide) from extract's
    options; `bar` gets (done, total)."""
    return {
        "store": args.store or f"{args.out}.store.zarr",
        "batch_size": args.batch_size,
        "device": args.device,
        "workers": args.workers,
        "level": args.level,
        "bf16": args.bf16,
        "embeddings": not args.no_embeddings,
        "allow_missing_tiles": args.allow_missing_tiles,
        "progress": lambda done, total, _rate: bar(done, total),
    }
