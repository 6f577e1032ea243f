"""shapley-plot and gradcam over a cohort (several slides, a folder or list of slides, or a slides
table): the top N patches of each slide (--per-slide) or of the cohort, on dask.distributed
(:mod:`napari_pathviz.cohort_explain`); -o is then an output folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import PathvizError
from ._common import progress_bar, recipe_from_args, report_failed_slides, step


def add_cohort_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--per-slide",
        action="store_true",
        help="cohort: explain the --top N patches of each slide (default: of the whole cohort)",
    )
    p.add_argument(
        "--scheduler",
        help="cohort: address of an existing dask cluster (default: a LocalCluster here)",
    )
    p.add_argument("--n-workers", type=int, help="cohort: LocalCluster workers (default 1)")


def is_cohort_args(args: argparse.Namespace) -> bool:
    from ..cohort_explain import is_cohort_source

    slides = args.slide if isinstance(args.slide, list) else [args.slide]
    return is_cohort_source(slides)


def guarded_paths(args, labels, inputs, collections, outputs, resumable):
    """In cohort mode -o is a resumable folder; its summary, galleries and stores must not be
    inputs, and the slides (each, and their folders) are inputs."""
    from ..cohort import WORKER_LOG, slide_key
    from ..cohort_explain import cohort_slides
    from ._guards import refuse_folder_holding

    slide_label = labels.get("slide", "--slide")
    out_label = labels.get("out", "-o/--out")
    slides = [path for _id, path in cohort_slides(args.slide)]
    inputs = [i for i in inputs if i[0] != slide_label] + [(slide_label, str(s)) for s in slides]
    collections = collections + [
        (slide_label, s) for s in args.slide if Path(s).is_dir() and Path(s) not in slides
    ]
    folder = Path(args.out)
    written = ["summary.csv", "cohort.png", "cohort_top.csv", WORKER_LOG, "stores"]
    written += [f"{slide_key(s)}.png" for s in slides]
    resumable = resumable + [(out_label, str(folder / name)) for name in written]
    refuse_folder_holding(out_label, folder, inputs + collections, slide_label)
    return inputs, collections, [], resumable


def _refuse_single_slide_options(args: argparse.Namespace) -> None:
    if not args.top:
        raise PathvizError("a cohort needs --top N COL (the patches to explain)")
    given = [
        option
        for option, value in (
            ("--ids", args.ids),
            ("--slide-id", args.slide_id),
            ("--attributions-out", args.attributions_out),
            ("--background", getattr(args, "background", None)),
        )
        if value
    ]
    if given:
        raise PathvizError(
            f"{given[0]}: not for a cohort (each slide has its own rows and store under -o)"
        )


def cmd_explain_cohort(args: argparse.Namespace) -> int:
    """Every slide is explained by a task of its own; a failed slide is one stderr line and a
    row of summary.csv, the others go on. Exit 0 when every slide is done, 2 when any failed."""
    from ..cohort_explain import ExplainSettings, cohort_slides, explain_cohort, read_cohort_rows
    from .attributions import _top_count, background_size, engine_output, method_options

    _refuse_single_slide_options(args)
    count = _top_count(args.top[0])
    if not args.patches:
        raise PathvizError("--patches: a cohort needs its prediction tables or a patch table")
    slides = cohort_slides(args.slide)
    step(f"reading {args.patches}")
    rows_of = read_cohort_rows(args.patches, args.top[1], args.patch_size)
    options = method_options(args)
    seed = options.pop("seed", args.seed)
    settings = ExplainSettings(
        method=args.method,
        column=args.top[1],
        top=count,
        per_slide=args.per_slide,
        target=args.target,
        output=engine_output(args),
        options=options,
        seed=seed,
        background_size=background_size(args),
        chunk_size=args.chunk_size,
        layout=args.layout,
        patch_size=args.patch_size,
        device=args.device,
        per_patch_scale=args.per_patch_scale,
        label_output=args.pred_out,
    )
    with progress_bar("slides", f"{args.method} on {len(slides)} slides") as progress:
        summary = explain_cohort(
            slides,
            rows_of,
            args.patches,
            recipe_from_args(args),
            settings,
            args.out,
            scheduler=args.scheduler,
            n_workers=args.n_workers,
            progress=lambda done, total, _message: progress(done, total),
        )
    print(summary.drop(columns=["store"]).to_string(index=False))
    out = Path(args.out).expanduser().absolute()
    if (out / "cohort.png").exists():
        print(out / "cohort.png")
    return report_failed_slides(args.command, summary, args.out)
