"""pathviz extract: predictions and embeddings of a model for every patch of a slide or of a
cohort of slides."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import PathvizError
from ..io.zarr_io import LAYOUTS
from ._common import (
    add_model_options,
    add_slide_id_option,
    progress_bar,
    recipe_from_args,
    report_failed_slides,
    step,
)
from ._extract_args import extract_kwargs, open_slide_and_table
from ._guards import refuse_existing_db_tables
from .slide_level import add_two_stage_options


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "extract",
        help="predictions and embeddings of a model for every patch of a slide",
        description="Reads every patch (from --patches, or a tissue grid), runs the model in "
        "batches (reads prefetched in threads; GPU when there) and writes one row per patch: "
        "ID, x, y, patch_size, prob_CLASS (one per class name of the model card or "
        "--class-names; prob_0, prob_1, ... without), y_pred (the class name), y_pred_index, "
        "feat_{j}. Finished batches are kept in the results store (--store), so a rerun resumes.",
    )
    add_model_options(p)
    p.add_argument(
        "--slide",
        nargs="+",
        help="a slide; or, for a cohort, several slides, a folder of slides, or a "
        ".txt file listing them (then -o is an output folder). Required, but with --features",
    )
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="stored axis order of zarrs")
    p.add_argument("--patches", help="patch table (default: a tissue grid of --patch-size)")
    add_slide_id_option(p)
    p.add_argument(
        "--patch-size",
        type=int,
        help="tissue-grid patch size (default 224); with --patches, keeps that size",
    )
    p.add_argument("--min-tissue", type=float, default=0.5, help="tissue grid threshold")
    p.add_argument("-o", "--out", required=True, help="output table (.parquet or .csv)")
    p.add_argument("--store", help="results store for resuming (default: OUT + .store.zarr)")
    p.add_argument("--batch-size", type=int, default=64, help="patches per model call")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--workers", type=int, default=2, help="threads reading patches ahead")
    p.add_argument("--level", type=int, default=0, help="pyramid level to read patches from")
    p.add_argument(
        "--target-mpp",
        type=float,
        help="read from the level closest to this many microns per pixel (needs the "
        "slide's own calibration); overrides --level",
    )
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast on the GPU")
    p.add_argument("--no-embeddings", action="store_true", help="predictions only")
    p.add_argument(
        "--allow-missing-tiles",
        action="store_true",
        help="run on patches over TIFF tiles the file does not hold (offset or byte count 0), "
        "read as blank, and mark them True in a column missing_tiles (default: refused)",
    )
    p.add_argument(
        "--scheduler",
        help="cohort: address of an existing dask cluster "
        "(default: a LocalCluster on this machine)",
    )
    p.add_argument(
        "--n-workers",
        type=int,
        help="cohort: LocalCluster workers (default: one per GPU, else one)",
    )
    p.add_argument("--chunk-size", type=int, help="cohort: patches per task (default: a slide)")
    p.add_argument(
        "--keep-stores",
        action="store_true",
        help="cohort: keep each slide's results store after its table is written",
    )
    add_two_stage_options(p)  # --explain-top etc.: cli/slide_level.py
    p.set_defaults(func=cmd_extract)


def cmd_extract(args: argparse.Namespace) -> int:
    from ..inference import extract
    from ..io.tables import write_table
    from .slide_level import extract_two_stage, two_stage_card_of

    card = two_stage_card_of(args)
    if args.features:  # the head alone on features computed before: cli/slide_head.py
        from .slide_head import head_on_features

        if card is None:
            raise PathvizError(
                f"--features: {args.model} is not a two-stage model card; the features need a "
                "slide-level head to run on"
            )
        return head_on_features(args, card)
    if not args.slide:
        raise PathvizError("--slide is required (but with --features and a two-stage card)")
    if card is not None:  # encoder + slide-level head: cli/slide_level.py
        return extract_two_stage(args, card)
    if is_cohort(args.slide):
        return extract_cohort(args)
    step(f"loading the model {args.model}")
    spec = recipe_from_args(args).load()
    slide, table = open_slide_and_table(args)
    # A .db output's tables are named by patch size, known only now: checked before the model runs.
    refuse_existing_db_tables(args.out, table.df["patch_size"].unique(), args.overwrite)
    with progress_bar("patches", f"the model on {len(table)} patches of {slide.slide_id}") as bar:
        result = extract(slide, table, spec, **extract_kwargs(args, bar))
    print(write_table(result, args.out, overwrite=args.overwrite))
    return 0


def is_cohort(sources: list[str]) -> bool:
    from ..io.zarr_io import is_zarr_path

    if not sources:
        return False
    if len(sources) > 1:
        return True
    source = Path(sources[0])
    return source.suffix.lower() == ".txt" or (source.is_dir() and not is_zarr_path(source))


def extract_cohort(args: argparse.Namespace) -> int:
    """Every slide gets the single-slide options; a slide that fails is one stderr line and a
    row of summary.csv, and the others go on. Exit 0 when every slide is done (or skipped, its
    table being from the same job), 2 when any failed: the summary and the other slides' tables
    are written all the same, and a rerun does only what is missing."""
    from ..cohort import SlideOptions, find_cohort_slides, run_cohort

    slides = find_cohort_slides(args.slide)
    recipe = recipe_from_args(args)
    options = SlideOptions(
        layout=args.layout,
        level=args.level,
        target_mpp=args.target_mpp,
        patch_size=args.patch_size,
        min_tissue=args.min_tissue,
        batch_size=args.batch_size,
        read_threads=args.workers,
        device=args.device,
        bf16=args.bf16,
        embeddings=not args.no_embeddings,
        allow_missing_tiles=args.allow_missing_tiles,
    )
    with progress_bar("slides", f"the model on {len(slides)} slides") as progress:
        summary = run_cohort(
            slides,
            recipe,
            args.out,
            patches=args.patches,
            options=options,
            chunk_size=args.chunk_size,
            scheduler=args.scheduler,
            n_workers=args.n_workers,
            keep_stores=args.keep_stores,
            progress=lambda done, total, _message: progress(done, total),
        )
    print(summary.to_string(index=False))
    if args.allow_missing_tiles:
        warn_missing_tiles(summary, Path(args.out))
    return report_failed_slides("extract", summary, args.out)


def warn_missing_tiles(summary, folder: Path) -> None:
    """The workers' warnings go to their log: the patches read from missing tiles are counted
    again here, from each finished table's missing_tiles column, one stderr line a slide."""
    import warnings

    import pandas as pd

    from ..errors import PathvizWarning

    for row in summary.itertuples():
        if row.status not in ("done", "skipped") or not isinstance(row.output, str):
            continue
        try:
            marked = pd.read_parquet(folder / row.output, columns=["missing_tiles"])
        except (OSError, ValueError, KeyError):
            continue
        count = int(marked["missing_tiles"].sum())
        if count:
            warnings.warn(
                f"{row.slide}: {count} of {len(marked)} patches lie on missing tiles, read as "
                "blank: marked True in the column 'missing_tiles'",
                PathvizWarning,
                stacklevel=2,
            )
