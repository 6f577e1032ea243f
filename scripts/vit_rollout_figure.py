"""README figure docs/vit_rollout.png: attention rollout (Abnar & Zuidema 2020) and Chefer et
al.'s gradient-weighted relevance (2021) of a tiny ViT on the demo slide, every patch.

The ViT (napari_pathviz.vit.PatchViT: 32 px input, 8 px patches, dim 32, 2 blocks of
nn.MultiheadAttention, a class token) is trained here, seeded, on the demo patches in seconds
on a CPU (napari_pathviz.vit.train_demo_vit); its inputs are made as the CLI makes them from its
model card (64 px patches resized to 32, the demo normalisation), so the maps are what
``pathviz gradcam --method rollout`` / ``--method chefer`` store for the same patches (see
tests/test_vit.py::test_cli_explains_the_trained_vit).

    .venv/bin/python scripts/vit_rollout_figure.py [--out docs/vit_rollout.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/vit_rollout.png")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    import torch

    from napari_pathviz._demo import ANNOTATIONS, load_demo
    from napari_pathviz.attribution import attribute
    from napari_pathviz.inference import read_patch_batch
    from napari_pathviz.models import ModelSpec
    from napari_pathviz.vit import demo_vit_card, train_demo_vit

    torch.set_num_threads(1)  # batches this small: one thread is much faster on a busy CPU
    started = time.perf_counter()
    model, accuracy = train_demo_vit(epochs=args.epochs, seed=0)
    print(f"trained in {time.perf_counter() - started:.1f} s; held-out accuracy {accuracy:.3f}")
    card = demo_vit_card(model)
    slide, table = load_demo(with_predictions=False)
    df = table.df.reset_index(drop=True)
    spec = ModelSpec(None, "", input_size=card["input_size"], mean=card["mean"], std=card["std"])
    x = spec.preprocess(read_patch_batch(slide, df))
    maps = {}
    for method in ("rollout", "chefer"):
        started = time.perf_counter()
        result = attribute(model, x, method)  # chefer: for the predicted class
        maps[method] = result.maps
        print(f"{method}: {len(x)} patches in {time.perf_counter() - started:.1f} s")
    predicted = np.asarray(ANNOTATIONS)[result.logits.argmax(1)]
    for name in ANNOTATIONS:
        chosen = predicted == name
        print(
            f"  predicted {name:13s} ({chosen.sum():3d} patches): mean token value, rollout "
            f"{maps['rollout'][chosen].mean():.4f}, chefer {maps['chefer'][chosen].mean():.4f}"
        )
    figure(slide, df, maps, args.out)
    print(args.out)


def _canvas(slide, df, maps: np.ndarray, scale: int) -> np.ndarray:
    """The per-patch maps placed on the slide at 1/``scale`` of level 0 (NaN off the patches)."""
    canvas = np.full((slide.height // scale, slide.width // scale), np.nan, np.float32)
    side = maps.shape[1]
    for (x, y, size), pixel_map in zip(df[["x", "y", "patch_size"]].to_numpy(), maps, strict=True):
        step = size // scale
        block = pixel_map if side == step else _resize(pixel_map, step)
        canvas[y // scale : y // scale + step, x // scale : x // scale + step] = block
    return canvas


def _resize(pixel_map: np.ndarray, side: int) -> np.ndarray:
    index = np.arange(side) * pixel_map.shape[0] // side
    return pixel_map[np.ix_(index, index)]


def figure(slide, df, maps: dict, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = int(df["patch_size"].iloc[0]) // next(iter(maps.values())).shape[1]
    image = np.asarray(slide.levels[0][::scale, ::scale].compute())
    # detail: 768 level-0 pixels around the middle of the DAB-positive patches
    positive = df[df["annotation"] == "dab_positive"]
    cy, cx = (int(positive[c].median()) // scale for c in ("y", "x"))
    half = 384 // scale
    cy = min(max(cy, half), image.shape[0] - half)
    cx = min(max(cx, half), image.shape[1] - half)
    crop = (slice(cy - half, cy + half), slice(cx - half, cx + half))
    titles = {
        "rollout": "attention rollout (class token -> patches)",
        "chefer": "Chefer relevance (predicted class)",
    }
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.6), dpi=70)
    for row, region in enumerate(((slice(None), slice(None)), crop)):
        axes[row, 0].imshow(image[region])
        axes[row, 0].set_title("demo slide" + (" (detail)" if row else ""), fontsize=10)
        for col, (method, values) in enumerate(maps.items(), start=1):
            canvas = _canvas(slide, df, values, scale)
            low, top = (float(np.nanpercentile(canvas, q)) for q in (1, 99.5))
            ax = axes[row, col]
            ax.imshow(image[region])
            shown = ax.imshow(
                canvas[region], cmap="magma", vmin=low, vmax=top, alpha=0.6, interpolation="nearest"
            )
            ax.set_title(titles[method] + (" (detail)" if row else ""), fontsize=10)
            if row == 0:
                fig.colorbar(shown, ax=ax, fraction=0.04, pad=0.02)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(
        "Tiny ViT (2 blocks, 4x4 tokens of 8 px on 32 px inputs, trained on the demo patches): "
        "per-token maps over each 64 px patch",
        fontsize=11,
    )
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    _to_palette(out)


def _to_palette(path) -> None:
    """256 colours: the PNG shrinks 2.5x, and a heatmap over tissue loses nothing visible."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    rgb.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


if __name__ == "__main__":
    main()
