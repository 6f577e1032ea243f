"""The README's figure for rollout's options: how close jacobgil/vit-explain's default maps
(head fusion max, discard ratio 0.9) are to ours (mean, 0, Abnar & Zuidema's), as Pearson r of
each patch's token values, on the test suite's ViTs: the two zoo ViTs (random weights, 64
random inputs) and a PatchViT trained on the demo patches (every demo patch, as the CLI makes
its inputs from the model card).

    .venv/bin/python scripts/rollout_vit_explain_agreement.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def correlations(model, x) -> tuple[np.ndarray, int]:
    """Pearson r per patch, and how many of vit-explain's maps are flat (every patch token's
    path discarded: all 0), which have no r."""
    from napari_pathviz.attribution import attribute

    ours = attribute(model, x, "rollout")
    theirs = attribute(model, x, "rollout", head_fusion="max", discard_ratio=0.9).maps
    pixels = ours.maps.shape[-1] // int(ours.metadata["token_grid"].split("x")[1])
    a, b = (m[:, ::pixels, ::pixels].reshape(len(m), -1) for m in (ours.maps, theirs))
    flat = b.std(axis=1) == 0
    r = [np.corrcoef(u, v)[0, 1] for u, v in zip(a[~flat], b[~flat], strict=True)]
    return np.array(r), int(flat.sum())


def report(name: str, r: np.ndarray, flat: int) -> None:
    q1, median, q3 = np.percentile(r, [25, 50, 75])
    print(
        f"{name:26s} n={len(r) + flat:4d}  median r {median:.2f}  quartiles {q1:.2f}-{q3:.2f}  "
        f"range {r.min():.2f} to {r.max():.2f}  flat (all 0) in theirs: {flat}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="as tests/test_vit.py's ViT")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import zoo
    from napari_pathviz._demo import load_demo
    from napari_pathviz.inference import read_patch_batch
    from napari_pathviz.models import ModelSpec
    from napari_pathviz.vit import demo_vit_card, train_demo_vit

    torch.set_num_threads(1)
    for name, build in zoo.VISION_TRANSFORMERS.items():
        report(name, *correlations(build(), zoo.inputs(64, seed=11)))
    model, accuracy = train_demo_vit(epochs=args.epochs, seed=0)
    card = demo_vit_card(model)
    slide, table = load_demo(with_predictions=False)
    spec = ModelSpec(None, "", input_size=card["input_size"], mean=card["mean"], std=card["std"])
    x = spec.preprocess(read_patch_batch(slide, table.df.reset_index(drop=True)))
    report(f"demo PatchViT (acc {accuracy:.2f})", *correlations(model, x))


if __name__ == "__main__":
    main()
