"""The slide-level head alone, on patch features computed before: CLAM/TRIDENT ``.h5`` (or a
``.pt`` tensor with its ``.h5``) and pathviz's own embedding tables. This is how CLAM users run
their heads: the encoder ran once, on a GPU, and wrote one feature file per slide.

Without the encoder there are no pixels to explain; attention, contributions and gradient x
feature are the same as :func:`napari_pathviz.slide_level.extract_slide` gives on the same
features (tested), and cost milliseconds per slide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import PathvizError
from .model_card import ModelCard
from .patches import KEY_COLUMNS, PatchTable
from .slide_level import SlidePrediction, TwoStageModel, check_head, slide_outputs


def load_head(card: ModelCard, *, trust_model: bool = False) -> TwoStageModel:
    """The head of a two-stage card on the CPU in eval mode, with its class names; the encoder
    is not built (its weights need not exist). ``feature_dim`` is the head's input size, else
    the card's."""
    from .mil import head_input_dim
    from .slide_level import build_head

    head, head_fields = build_head(card, trust_model)
    dim = head_input_dim(head) or card.feature_dim
    if dim is None:
        raise PathvizError(
            f"{card.source}: the head's input size is unknown; give the card a feature_dim"
        )
    if card.feature_dim is not None and card.feature_dim != dim:
        raise PathvizError(
            f"{card.source}: feature_dim {card.feature_dim} differs from the head's input size "
            f"({dim})"
        )
    names = check_head(card, head, head_fields, dim)
    return TwoStageModel(
        None, head, names, dim, card.source, head_fields.get("activation") or "auto"
    )


@dataclass
class HeadResult:
    """One slide's patch table (key columns, the head's per-patch columns, ``feat_{j}`` with
    embeddings) and its slide prediction."""

    table: pd.DataFrame
    prediction: SlidePrediction
    slide_id: str


def predict_features(
    model: TwoStageModel,
    rows: pd.DataFrame,
    features: np.ndarray,
    source: str | os.PathLike,
    *,
    patch_size: int | None = None,
    slide_shape: tuple[int, int] | None = None,
    embeddings: bool = False,
) -> HeadResult:
    """The head on one slide's bag: ``rows`` (ID, x, y[, patch_size]) and ``features`` (n, D)
    in the same order, as read from ``source``. ``patch_size`` fills a missing patch_size
    column (a CLAM file without the attributes that tell it); with ``slide_shape`` (height,
    width) every patch must lie inside the slide."""
    source = str(source)
    if features.ndim != 2 or features.shape[1] != model.feature_dim:
        raise PathvizError(
            f"{source}: features of size {features.shape[-1]}, but the head of "
            f"{model.source} takes {model.feature_dim}"
        )
    if not len(features):
        raise PathvizError(f"{source}: no patches (0 feature rows)")
    if len(features) != len(rows):
        raise PathvizError(
            f"{source}: {len(features)} feature rows for {len(rows)} patches; they must be the "
            "same patches"
        )
    if not np.isfinite(features).all():
        row = int(np.argwhere(~np.isfinite(features))[0, 0])
        raise PathvizError(f"{source}: row {row}: a feature is NaN or infinite")
    # Validated as any patch table (whole non-negative keys, an ID); nothing is filtered, so the
    # rows stay those of the features.
    size = None if "patch_size" in rows else patch_size
    table = PatchTable.from_frame(rows, source, patch_size=size)
    if slide_shape is not None:
        table.check_inside(*slide_shape)
    keys = table.df
    if keys["ID"].nunique() > 1:
        raise PathvizError(
            f"{source}: patches of {keys['ID'].nunique()} slides; a head reads one slide's bag"
        )
    prediction = slide_outputs(model, features)
    parts = [keys[list(KEY_COLUMNS)], prediction.columns()]
    if embeddings:
        parts.append(
            pd.DataFrame(features, columns=[f"feat_{j}" for j in range(features.shape[1])])
        )
    return HeadResult(pd.concat(parts, axis=1), prediction, str(keys["ID"].iloc[0]))


def read_slide_features(path: str | os.PathLike, keys: str | os.PathLike | None = None, model=None):
    """(rows, features) of one slide's feature file: a CLAM/TRIDENT ``.h5``; a ``.pt`` tensor,
    whose rows are the coords of the ``.h5`` beside it of the same name (or ``keys``); an
    embeddings table or array (:func:`napari_pathviz.io.embeddings.read_embeddings`). With
    ``model`` (a TwoStageModel), an ``.h5``'s width is checked against the head's from the
    file's header, before its features are read (in blocks, NaN refused block by block)."""
    from .io.embeddings import read_embeddings

    path = str(path)
    if model is not None and path.lower().endswith((".h5", ".hdf5")):
        from .io.clam_h5 import read_h5_features

        consumer = f"the head of {model.source}"
        return read_h5_features(path, model.feature_dim, consumer=consumer, finite=True)
    if keys is None and path.lower().endswith(".pt"):
        beside = [os.path.splitext(path)[0] + s for s in (".h5", ".hdf5")]
        beside += [
            os.path.join(os.path.dirname(os.path.dirname(path)), "h5_files", os.path.basename(b))
            for b in beside
        ]  # CLAM's layout: pt_files/ and h5_files/ side by side
        keys = next((b for b in beside if os.path.isfile(b)), None)
    raw = read_embeddings(path, keys=keys)
    return raw.rows, raw.features


FEATURE_SUFFIXES = (".h5", ".hdf5", ".pt", ".parquet", ".pq", ".csv", ".npz")


def find_feature_files(sources) -> list[str]:
    """Each source a feature file or a folder of them: its ``.h5`` files (TRIDENT; CLAM's
    h5_files/), else its ``.pt`` files (CLAM's pt_files/, their coords in h5_files/ beside),
    else its tables. Sorted, without duplicates; a folder with none is an error."""
    found: list[str] = []
    for source in map(str, sources):
        if not os.path.isdir(source):
            if not os.path.exists(source):
                raise PathvizError(f"{source}: no such file or directory")
            found.append(source)
            continue
        names = sorted(os.listdir(source))
        for group in ((".h5", ".hdf5"), (".pt",), (".parquet", ".pq", ".csv", ".npz")):
            picked = [n for n in names if n.lower().endswith(group) and not n.startswith(".")]
            if picked:
                found += [os.path.join(source, n) for n in picked]
                break
        else:
            raise PathvizError(f"{source}: no feature files ({', '.join(FEATURE_SUFFIXES)})")
    return sorted(dict.fromkeys(found))


def table_name(feature_file: str | os.PathLike) -> str:
    """The per-slide table a folder run writes for a feature file: its name up to the first dot,
    + .parquet (the .slide.json goes beside it)."""
    return os.path.basename(str(feature_file)).split(".")[0] + ".parquet"
