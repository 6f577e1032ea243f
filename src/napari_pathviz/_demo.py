"""Demo data built offline and deterministically from a real tissue image.

scikit-image ships a real immunohistochemistry (IHC) image: hematoxylin-counterstained tissue with
DAB (brown) marking the positive cells. We enlarge it 2x and cut it into distinct fragments,
turned at random and laid on glass (_demo_slide.py; nothing mirrored, no pixel used twice), and
label every 64-pixel patch by what covers it, from the HED stain deconvolution: background
(glass), dab_negative or dab_positive tissue, as PathFlowAI's coverage columns do. The slide is
written as an OME-Zarr pyramid through the package's own writer, and the patch table as Parquet.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._demo_slide import DEMO_SHAPE as DEMO_SHAPE  # re-exported: tests and callers read it here

DEMO_VERSION = 2  # bumped whenever the demo data change, so cached copies are rebuilt
DEMO_SLIDE_ID = "demo_ihc"
DEMO_PATCH_SIZE = 64
ANNOTATIONS = ("background", "dab_negative", "dab_positive")


# The file that marks a folder as the demo's own: the demo writes (and replaces) files only in a
# folder that is empty or holds this marker, so a user's patches.parquet is never overwritten.
DEMO_MARKER = ".pathviz-demo"


def demo_dir() -> Path:
    """Where the demo files are cached: $PATHVIZ_DEMO_DIR, else demo-vN under the cache root
    ($PATHVIZ_CACHE_DIR, else ~/.cache/napari-pathviz)."""
    from .store import cache_root

    base = os.environ.get("PATHVIZ_DEMO_DIR")
    if base:
        return Path(base)
    return cache_root() / f"demo-v{DEMO_VERSION}"


def claim_demo_dir(directory: Path, owned: bool = False) -> None:
    """Makes ``directory`` the demo's own (creating it and its marker), or refuses in one line
    when it holds anything the demo did not make. ``owned``: the default cache folder, which is
    the plugin's even without a marker (caches built before the marker existed)."""
    from .errors import PathvizError

    if directory.exists() and not directory.is_dir():
        raise PathvizError(f"demo data folder {directory} is a file, not a folder")
    marker = directory / DEMO_MARKER
    if marker.is_file():
        return
    if not owned and directory.is_dir() and any(directory.iterdir()):
        raise PathvizError(
            f"demo data folder {directory} holds files the demo did not make (no {DEMO_MARKER} "
            "marker); give an empty or new folder"
        )
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text("napari-pathviz demo data; the demo may replace any file in this folder\n")


def demo_image() -> tuple[np.ndarray, np.ndarray]:
    """The demo slide (H x W x 3 uint8) and its per-pixel class map (0 glass, 1 DAB-, 2 DAB+):
    distinct, turned fragments of the IHC image on glass, labelled from the stain."""
    from ._demo_slide import build_demo_slide

    return build_demo_slide()


def demo_patch_table(classes: np.ndarray, patch_size: int = DEMO_PATCH_SIZE) -> pd.DataFrame:
    """PathFlowAI-style rows: ID, x, y, patch_size, annotation, one coverage column per class.

    Patches of bare glass are left out (as PathFlowAI's preprocessing does); patches at the
    tissue edge are kept so that background removal has something to remove.
    """
    h, w = classes.shape
    ny, nx = h // patch_size, w // patch_size
    grid = classes[: ny * patch_size, : nx * patch_size].reshape(ny, patch_size, nx, patch_size)
    cover = np.stack([(grid == k).mean(axis=(1, 3)) for k in range(len(ANNOTATIONS))], axis=-1)
    iy, ix = np.nonzero(cover[..., 0] < 0.98)
    rows = pd.DataFrame(
        {
            "ID": DEMO_SLIDE_ID,
            "x": (ix * patch_size).astype(np.int64),
            "y": (iy * patch_size).astype(np.int64),
            "patch_size": np.int64(patch_size),
        }
    )
    fractions = cover[iy, ix]
    rows["annotation"] = np.asarray(ANNOTATIONS)[fractions.argmax(axis=1)]
    for k, name in enumerate(ANNOTATIONS):
        rows[name] = fractions[:, k].round(4)
    return rows


def _say(step, text: str) -> None:
    if step is not None:
        step(text)


def ensure_demo_data(directory: str | os.PathLike | None = None, step=None) -> dict[str, Path]:
    """Builds the demo slide and patch table once (a few seconds) and returns their paths;
    ``step(text)`` hears each step of a build."""
    from .io.pyramid import lazy_levels
    from .io.tables import write_table
    from .io.zarr_io import write_ome_zarr

    owned = not directory and not os.environ.get("PATHVIZ_DEMO_DIR")
    directory = Path(directory) if directory else demo_dir()
    claim_demo_dir(directory, owned=owned)
    paths = {
        "slide": directory / f"{DEMO_SLIDE_ID}.ome.zarr",
        "patches": directory / "patches.parquet",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    import dask.array as da

    directory.mkdir(parents=True, exist_ok=True)
    _say(step, "building the demo image and its labels (first run only)")
    slide, classes = demo_image()
    # Write to a temporary name first: an interrupted build must not look complete.
    tmp_slide = directory / f".{DEMO_SLIDE_ID}.tmp.zarr"
    if tmp_slide.exists():
        import shutil

        shutil.rmtree(tmp_slide)
    _say(step, "writing the demo slide (OME-Zarr pyramid) and patch table")
    levels = lazy_levels(da.from_array(slide, chunks=(512, 512, 3)), min_size=600)
    write_ome_zarr(levels, tmp_slide, n_native=1, mpp=0.5, chunk=512, name=DEMO_SLIDE_ID)
    if paths["slide"].exists():
        import shutil

        shutil.rmtree(paths["slide"])
    tmp_slide.rename(paths["slide"])
    table = demo_patch_table(classes)
    tmp_table = directory / ".patches.tmp.parquet"
    write_table(table, tmp_table)
    tmp_table.rename(paths["patches"])
    return paths


def load_demo(directory: str | os.PathLike | None = None, with_predictions: bool = True, step=None):
    """The demo Slide and PatchTable; with torch installed, the table also carries the demo
    model's predictions: ``prob_{class}`` per class and ``y_pred`` (the predicted class)."""
    from .patches import load_patches
    from .slide import open_slide

    paths = ensure_demo_data(directory, step)
    slide = open_slide(paths["slide"])
    table = load_patches(
        paths["patches"], slide_id=DEMO_SLIDE_ID, slide_shape=(slide.height, slide.width)
    )
    if with_predictions:
        from ._demo_model import predict_demo

        _say(step, f"the demo model's predictions for {len(table)} patches")
        try:
            probs = predict_demo(slide, table)
        except ImportError:  # torch is optional; the demo still shows slide and patches
            return slide, table
        for k, name in enumerate(ANNOTATIONS):
            table.df[f"prob_{name}"] = probs[:, k].round(4)
        table.df["y_pred"] = np.asarray(ANNOTATIONS)[probs.argmax(axis=1)]
    return slide, table


def demo_embeddings_path(directory: str | os.PathLike | None = None, step=None) -> Path:
    """The demo's embeddings as a Parquet table (key columns + feat_0..feat_63), written once
    from the demo model's penultimate layer: the format ``pathviz extract`` writes."""
    owned = not directory and not os.environ.get("PATHVIZ_DEMO_DIR")
    directory = Path(directory) if directory else demo_dir()
    claim_demo_dir(directory, owned=owned)
    path = directory / "embeddings.parquet"
    if path.exists():
        return path
    from ._demo_model import run_demo_model
    from .io.tables import write_table
    from .patches import KEY_COLUMNS

    slide, table = load_demo(directory, with_predictions=False, step=step)
    _say(step, f"the demo model's embeddings of {len(table)} patches (first run only)")
    _, features = run_demo_model(slide, table)
    keys = table.df[list(KEY_COLUMNS)].reset_index(drop=True)
    feats = pd.DataFrame(features, columns=[f"feat_{j}" for j in range(features.shape[1])])
    tmp = directory / ".embeddings.tmp.parquet"
    write_table(pd.concat([keys, feats], axis=1), tmp)
    tmp.rename(path)
    return path


def demo_umap(
    table,
    n_components: int = 2,
    directory: str | os.PathLike | None = None,
    progress=None,
    step=None,
    cancelled=None,
):
    """The demo embeddings joined to ``table`` and their UMAP (seeded; cached after the first
    run): (EmbeddingSet, coordinates). ``progress(fraction, stage)`` hears the UMAP's stages."""
    from .embedding import UMAPParams, load_embeddings, umap_embed

    es = load_embeddings(demo_embeddings_path(directory, step), patches=table)
    coords = umap_embed(
        es.features,
        UMAPParams(n_components=n_components, random_state=0),
        progress=progress,
        cancelled=cancelled,
    )
    return es, coords
