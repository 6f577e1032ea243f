"""pathviz extract with a two-stage model (patch encoder + slide-level head): the encoder on every
patch, the head on the slide; the patch table gets the head's per-patch columns and the slide
prediction goes beside it (OUT's name + .slide.json)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import PathvizError
from ._common import load_table_for, progress_bar


def two_stage_card_of(args: argparse.Namespace):
    """The two-stage model card named by -m / --model-card, else None (a patch classifier)."""
    from ..slide_level import two_stage_card

    return two_stage_card(args.model, args.model_card)


def extract_two_stage(args: argparse.Namespace, card) -> int:
    from ..io.tables import write_table
    from ..slide import open_slide
    from ..slide_level import (
        extract_slide,
        load_two_stage,
        slide_prediction_path,
        write_slide_prediction,
    )
    from ..tissue import tissue_grid
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
    if json_path.exists() and not args.overwrite:
        raise PathvizError(f"{json_path}: exists (the slide prediction); pass --overwrite")
    model = load_two_stage(card, weights=args.model, trust_model=args.trust_model)
    slide = open_slide(args.slide[0], args.layout)
    if args.target_mpp is not None:
        args.level = slide.level_for_mpp(args.target_mpp)
    if args.patches:
        table = load_table_for(slide, args.patches, args.patch_size, args.slide_id)
    else:
        table = tissue_grid(slide, args.patch_size or 224, None, args.min_tissue)
    with progress_bar("patches") as progress:
        result, prediction = extract_slide(
            slide,
            table,
            model,
            store=args.store or f"{args.out}.store.zarr",
            batch_size=args.batch_size,
            device=args.device,
            workers=args.workers,
            level=args.level,
            bf16=args.bf16,
            embeddings=not args.no_embeddings,
            progress=lambda done, total, _rate: progress(done, total),
        )
    print(write_table(result, args.out, overwrite=args.overwrite))
    slide_id = str(table.df["ID"].iloc[0]) if "ID" in table.df else Path(args.slide[0]).name
    write_slide_prediction(json_path, prediction, slide_id, card.source)
    print(json_path)
    probability = prediction.summary()["probabilities"]
    shown = ", ".join(f"{name} {p:.3f}" for name, p in probability.items())
    print(f"slide {slide_id}: {prediction.predicted} ({shown})", file=sys.stderr)
    return 0
