"""pathviz extract with a two-stage model (patch encoder + slide-level head): the encoder on every
patch, the head on the slide; the patch table gets the head's per-patch columns and the slide
prediction goes beside it (OUT's name + .slide.json)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import PathvizError
from ._common import progress_bar
from ._extract_args import extract_kwargs, open_slide_and_table


def add_two_stage_options(p: argparse.ArgumentParser) -> None:
    """extract's options for two-stage models (pixels to slide)."""
    p.add_argument(
        "--features",
        nargs="+",
        metavar="FILE",
        help="two-stage models: run only the head, on patch features computed before: "
        "CLAM/TRIDENT .h5 (coords + features), a .pt tensor (its coords from the .h5 of the "
        "same name beside it or in ../h5_files, or --keys), or an embeddings table. One file: "
        "-o is its table (--slide optional, to check the coordinates); several, or a folder: "
        "-o is a folder with a table and a .slide.json per slide and summary.csv",
    )
    p.add_argument("--keys", help="with --features: the key table or .h5 of a bare .pt tensor")
    p.add_argument(
        "--explain-top",
        type=int,
        default=0,
        metavar="K",
        help="two-stage models: expected gradients of the slide prediction down to the pixels "
        "of the K most attended patches, written to OUT's name + .pixels.npz (default 0: none)",
    )
    p.add_argument(
        "--explain-samples", type=int, default=400, help="expected-gradient samples per patch"
    )
    p.add_argument(
        "--explain-background",
        type=int,
        default=16,
        help="baseline patches (other patches of the slide, drawn at random)",
    )


def two_stage_card_of(args: argparse.Namespace):
    """The two-stage model card named by -m / --model-card, else None (a patch classifier)."""
    from ..slide_level import two_stage_card

    return two_stage_card(args.model, args.model_card)


def extract_two_stage(args: argparse.Namespace, card) -> int:
    from ..io.tables import write_table
    from ..slide_level import (
        extract_slide,
        load_two_stage,
        slide_prediction_path,
        write_slide_prediction,
    )
    from .inference import is_cohort

    if is_cohort(args.slide):
        raise PathvizError(
            f"{card.source}: a two-stage (slide-level) model runs on one slide at a time; "
            "pass one --slide"
        )
    if args.factory or args.factory_kwargs:
        raise PathvizError(
            f"--factory: {card.source} is a two-stage card; its encoder and head name their "
            "factories"
        )
    json_path = slide_prediction_path(args.out)
    pixels_path = json_path.with_name(json_path.name.replace(".slide.json", ".pixels.npz"))
    for path in [json_path] + ([pixels_path] if args.explain_top else []):
        if path.exists() and not args.overwrite:
            raise PathvizError(f"{path}: exists; pass --overwrite")
    if args.explain_top < 0 or args.explain_samples < 1 or args.explain_background < 1:
        raise PathvizError(
            "--explain-top must be >= 0, --explain-samples and --explain-background positive"
        )
    model = load_two_stage(card, weights=args.model, trust_model=args.trust_model)
    if model.head_layout:  # a public checkpoint layout, renamed: say which
        print(f"head weights: {model.head_layout}", file=sys.stderr)
    slide, table = open_slide_and_table(args)
    with progress_bar("patches") as bar:
        result, prediction = extract_slide(slide, table, model, **extract_kwargs(args, bar))
    print(write_table(result, args.out, overwrite=args.overwrite))
    slide_id = str(table.df["ID"].iloc[0]) if "ID" in table.df else Path(args.slide[0]).name
    write_slide_prediction(json_path, prediction, slide_id, card.source, model.head_layout)
    print(json_path)
    probability = prediction.summary()["probabilities"]
    shown = ", ".join(f"{name} {p:.3f}" for name, p in probability.items())
    print(f"slide {slide_id}: {prediction.predicted} ({shown})", file=sys.stderr)
    if args.explain_top:
        _explain(args, model, slide, table, prediction, pixels_path)
    return 0


def _explain(args, model, slide, table, prediction, path: Path) -> None:
    """Pixels to slide for the top-attended patches, into an .npz beside the table."""
    import numpy as np

    from ..inference import read_patch_batch, resolve_device
    from ..io.atomic import atomic_file
    from ..slide_level import explain_bag

    df = table.df.reset_index(drop=True)
    with progress_bar("patches explained") as progress:
        result = explain_bag(
            model,
            prediction.features,
            prediction,
            lambda rows: read_patch_batch(slide, df.iloc[rows], args.level),
            k=args.explain_top,
            n_samples=args.explain_samples,
            n_background=args.explain_background,
            device=resolve_device(args.device),
            progress=progress,
        )
    rows = result.patch_index
    with atomic_file(path) as tmp:
        np.savez_compressed(
            tmp,
            maps=result.maps.astype(np.float32),
            x=df["x"].to_numpy()[rows],
            y=df["y"].to_numpy()[rows],
            patch_size=df["patch_size"].to_numpy()[rows],
            attention=prediction.attention[rows],
            completeness_error=result.completeness_error,
            output_delta=result.output_delta,
            class_name=np.array(result.metadata["class_name"]),
            slide_logit=np.array(result.metadata["slide_logit"]),
        )
    print(path)
    worst = float(np.max(result.completeness_error))
    print(
        f"pixels to slide: {len(rows)} patches, logit of {result.metadata['class_name']}, "
        f"{args.explain_samples} samples; completeness error at most {worst:.2%}",
        file=sys.stderr,
    )
