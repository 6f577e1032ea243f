"""README figure docs/mil_attention.png: a gated-attention MIL model's attention, its patches'
contributions to the slide logit, and pixels-to-slide maps of the most attended patches, on the
demo slide. Also prints the completeness of the pixels-to-slide maps at several sample counts.

The model is trained here, seeded (napari_pathviz._demo_mil: a small conv encoder + gated
attention head, bags of demo patches, positive when any patch is DAB-positive), saved as
safetensors + a two-stage card and loaded back through that card, so the figure shows what
`pathviz extract -m mil_model.json` computes.

    .venv/bin/python scripts/mil_attention_figure.py [--out docs/mil_attention.png]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/mil_attention.png")
    parser.add_argument("--top", type=int, default=4, help="patches explained down to pixels")
    parser.add_argument("--samples", type=int, nargs="+", default=[50, 100, 200, 400, 1000])
    args = parser.parse_args()

    import torch

    from napari_pathviz._demo import load_demo
    from napari_pathviz._demo_mil import save_demo_mil, train_demo_mil
    from napari_pathviz.inference import read_patch_batch
    from napari_pathviz.model_card import read_card
    from napari_pathviz.slide_level import explain_bag, extract_slide, load_two_stage

    torch.manual_seed(0)
    slide, table = load_demo(with_predictions=False)
    df = table.df.reset_index(drop=True)
    patches = read_patch_batch(slide, df)
    encoder, head = train_demo_mil(patches, (df["annotation"] == "dab_positive").to_numpy())
    with tempfile.TemporaryDirectory() as folder:
        card = save_demo_mil(encoder, head, folder)
        model = load_two_stage(read_card(card))
        result, prediction = extract_slide(
            slide, table, model, store=Path(folder) / "store.zarr", device="cpu"
        )
    print("slide prediction:", prediction.summary())
    by_class = df.groupby("annotation").size()
    share = result.groupby(df["annotation"])["attention"].sum()
    print(
        "attention share by annotation:", share.round(3).to_dict(), "patches:", by_class.to_dict()
    )

    def read(rows):
        return patches[rows]

    print("pixels to slide, completeness error (|sum map - delta| / |delta|) per sample count:")
    explained = None
    for n in args.samples:
        started = time.perf_counter()
        explained_n = explain_bag(
            model, prediction.features, prediction, read, k=args.top, n_samples=n
        )
        seconds = time.perf_counter() - started
        errors = explained_n.completeness_error
        print(
            f"  {n:5d} samples: mean {errors.mean():.2%}, max {errors.max():.2%} "
            f"({seconds:.1f} s for {args.top} patches on the CPU)"
        )
        if n == 400 or explained is None:
            explained = explained_n
    figure(slide, df, result, prediction, explained, patches, args.out)
    print(args.out)


def figure(slide, df, result, prediction, explained, patches, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_pathviz.heatmap import patch_value_grid
    from napari_pathviz.patches import PatchTable

    thumb, ds = slide.thumbnail(700)
    table = PatchTable(result, "mil")
    name = prediction.predicted
    p = prediction.summary()["probabilities"][name]
    fig = plt.figure(figsize=(12.5, 5.2), dpi=90)
    grid = fig.add_gridspec(
        2, 2 + len(explained.maps) // 2, width_ratios=[3, 3] + [1.2] * (len(explained.maps) // 2)
    )
    panels = [("attention", "magma", False), (f"contribution_{name}", "RdBu_r", True)]
    for i, (column, cmap, signed) in enumerate(panels):
        ax = fig.add_subplot(grid[:, i])
        ax.imshow(thumb)
        g = patch_value_grid(table, column)
        top = float(np.nanmax(np.abs(g.image)))
        h, w = g.image.shape
        extent = (
            np.array(
                [g.origin[1], g.origin[1] + w * g.stride, g.origin[0] + h * g.stride, g.origin[0]]
            )
            / ds
        )
        shown = ax.imshow(
            g.image,
            cmap=cmap,
            vmin=-top if signed else 0,
            vmax=top,
            extent=extent - 0.5,
            alpha=0.75,
            interpolation="nearest",
        )
        fig.colorbar(shown, ax=ax, fraction=0.035, pad=0.02)
        ax.set_title(f"{column}\n(slide: {name}, p = {p:.2f})", fontsize=10)
        ax.set_axis_off()
        if i == 0:
            for r in explained.patch_index:
                x, y, s = (df.loc[r, c] / ds for c in ("x", "y", "patch_size"))
                ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), s, s, fill=False, ec="cyan", lw=1.2))
    limit = float(np.abs(explained.maps).max())
    for j, (row, pixel_map) in enumerate(zip(explained.patch_index, explained.maps, strict=True)):
        ax = fig.add_subplot(grid[j % 2, 2 + j // 2])
        ax.imshow(patches[row], extent=(0, 1, 1, 0))
        ax.imshow(
            pixel_map, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.55, extent=(0, 1, 1, 0)
        )
        ax.set_title(
            f"attention {result.loc[row, 'attention']:.3f}\nsum {pixel_map.sum():+.2f} "
            f"(error {explained.completeness_error[j]:.1%})",
            fontsize=8,
        )
        ax.set_axis_off()
    fig.suptitle(
        "Gated-attention MIL on the demo slide: attention; attention x patch logit (sums to the "
        "slide logit);\npixels to slide for the most attended patches (cyan): expected gradients "
        f"of the slide logit, {explained.metadata['n_samples']} samples, map sum = slide logit "
        "- E[logit with a baseline patch in its place]",
        fontsize=10,
    )
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


if __name__ == "__main__":
    main()
