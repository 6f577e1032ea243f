"""Reference (background) patches for expected gradients and DeepLIFT: random patches of the
slide other than the explained ones, or a user's choice given as a patch table or images."""

from __future__ import annotations

import numpy as np

from ..errors import PathvizError

MIN_REFERENCES = 2  # one reference patch is a single baseline, not a background distribution


def random_reference_rows(
    n_rows: int,
    explained: np.ndarray,
    count: int,
    rng: np.random.Generator,
    *,
    source: str = "the patch table",
    remedy: str = "give --background or more rows",
) -> np.ndarray:
    """``count`` rows of a table of ``n_rows`` drawn without replacement, never an explained
    row (PathFlowAI's default background). Fewer than two other rows is refused: a patch
    explained against itself gives all-zero maps that look like a finished result."""
    rest = np.setdiff1d(np.arange(n_rows), explained)
    if len(rest) < MIN_REFERENCES:
        raise PathvizError(
            f"too few background patches: {source} has {len(rest)} row(s) besides the "
            f"{len(np.unique(explained))} explained (at least {MIN_REFERENCES} needed); {remedy}"
        )
    return rng.choice(rest, size=min(count, len(rest)), replace=False)


def reference_images(path: str, slide, patch_size: int | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 references from a .npy of images, or read from ``slide`` at the
    patches of a table (CSV, Parquet or PathFlowAI SQLite)."""
    from ..inference import read_patch_batch
    from ..io.tables import read_table
    from ..patches import patches_for_slide

    if str(path).lower().endswith(".npy"):
        try:
            images = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PathvizError(f"background {path}: not a readable .npy ({exc})") from None
        if images.ndim != 4 or images.shape[-1] < 3 or images.dtype != np.uint8:
            raise PathvizError(
                f"background {path}: expected (N, H, W, 3) uint8 images, "
                f"found {images.dtype} {images.shape}"
            )
        return images[..., :3]
    table = patches_for_slide(read_table(path, patch_size), path, slide, patch_size=patch_size)
    return read_patch_batch(slide, table.df)


def check_same_size(references: np.ndarray, images: np.ndarray) -> None:
    if references.shape[1:] != images.shape[1:]:
        raise PathvizError(
            f"background: patches of {references.shape[1:3]} px, the explained ones are "
            f"{images.shape[1:3]} px"
        )
