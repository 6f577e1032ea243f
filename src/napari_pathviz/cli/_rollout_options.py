"""Attention rollout's CLI options, --head-fusion and --discard-ratio (jacobgil/vit-explain's
--head_fusion and --discard_ratio), for the gradcam and sanity-check commands."""

from __future__ import annotations

import argparse

from ..errors import PathvizError


def add_rollout_options(p: argparse.ArgumentParser) -> None:
    """Attention rollout's head fusion and discard ratio (jacobgil/vit-explain's
    --head_fusion and --discard_ratio; our defaults are Abnar & Zuidema's)."""
    from ..attribution.rollout import HEAD_FUSIONS

    p.add_argument(
        "--head-fusion",
        choices=HEAD_FUSIONS,
        default="mean",
        help="rollout: how each layer's attention heads are fused: mean (default, Abnar & "
        "Zuidema), max or min (vit-explain's --head_fusion; its default is max)",
    )
    p.add_argument(
        "--discard-ratio",
        type=float,
        default=0.0,
        metavar="R",
        help="rollout: share (0 <= R < 1) of each layer's weakest fused attention set to 0 "
        "before the identity is added, the class token's attention to itself kept "
        "(vit-explain's --discard_ratio; its default is 0.9; default 0: none)",
    )


def rollout_options(args: argparse.Namespace) -> dict:
    """--head-fusion and --discard-ratio for rollout, checked; refused with another method
    unless left at their defaults (never silently ignored)."""
    from ..attribution.rollout import check_rollout_options

    fusion, ratio = getattr(args, "head_fusion", "mean"), getattr(args, "discard_ratio", 0.0)
    if args.method == "rollout":
        check_rollout_options(fusion, ratio)
        return {"head_fusion": fusion, "discard_ratio": ratio}
    if fusion != "mean" or ratio != 0.0:
        flag = "--head-fusion" if fusion != "mean" else "--discard-ratio"
        raise PathvizError(f"{flag} is for --method rollout, not {args.method}")
    return {}
