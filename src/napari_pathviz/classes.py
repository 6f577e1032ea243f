"""Class names: what a model's outputs are called in columns, labels and layer names.

A model's class names come from its model card (or ``--class-names``); every column, label and
layer name is made here, so that they say ``dab_positive``, not ``2``. Without names (a bare
model), outputs are called by their index: ``prob_0``, ``class 0``.

A prediction table has one ``prob_<class>`` column per output (the model's probabilities, in
output order), ``y_pred`` (the predicted class: its name, or its index when no names are known)
and ``y_pred_index`` (the predicted output, an integer). PathFlowAI's ``predictions.db`` calls the
probabilities ``{i}_pred``: those are written beside ``prob_<class>`` in a ``.db``
(:func:`with_pathflowai_columns`) and count as predictions when a table is predicted again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .errors import PathvizError

PROB_PREFIX = "prob_"
PRED_COLUMN = "y_pred"
PRED_INDEX_COLUMN = "y_pred_index"
_PATHFLOWAI_PROB = re.compile(r"^\d+_pred$")  # PathFlowAI's predictions.db: 0_pred, 1_pred, ...


def output_names(class_names: Sequence[str] | None, n_outputs: int) -> tuple[str, ...]:
    """The name of each output: the class names when they fit, else the indices as text."""
    if class_names is not None and len(class_names) == n_outputs:
        return tuple(str(n) for n in class_names)
    return tuple(str(i) for i in range(n_outputs))


def prob_columns(class_names: Sequence[str] | None, n_outputs: int) -> list[str]:
    """``prob_<class name>`` per output (``prob_<i>`` when no names are known)."""
    return [f"{PROB_PREFIX}{name}" for name in output_names(class_names, n_outputs)]


def class_label(class_names: Sequence[str] | None, index) -> str:
    """How a class is shown: its name, or ``class <i>`` when the model has no names."""
    i = int(index)
    if class_names is not None and 0 <= i < len(class_names):
        return str(class_names[i])
    return f"class {i}"


def class_labels(class_names: Sequence[str] | None, indices) -> np.ndarray:
    """:func:`class_label` of each index, as an object array of strings."""
    return np.array([class_label(class_names, i) for i in np.asarray(indices)], dtype=object)


def explained_class(class_names: Sequence[str] | None, n_outputs: int) -> int:
    """The class shown by default (heatmap, sort order): the last output, by the convention
    that the positive class comes last (``[negative, positive]``; the demo's
    ``dab_positive``)."""
    return max(0, n_outputs - 1)


def prediction_frame(
    probs: np.ndarray, class_names: Sequence[str] | None, activation: str = "auto"
) -> pd.DataFrame:
    """``prob_<class>`` columns, ``y_pred`` (class name, or index without names) and
    ``y_pred_index`` of (N, outputs) model outputs. One output splits at 0.5 (a probability)
    or at 0 (a raw logit, activation "none"): its name when above, ``not <name>`` below."""
    probs = np.asarray(probs)
    n_outputs = probs.shape[1]
    out = pd.DataFrame(
        {col: probs[:, i] for i, col in enumerate(prob_columns(class_names, n_outputs))}
    )
    if n_outputs > 1:
        index = probs.argmax(axis=1).astype(np.int64)
    else:
        threshold = 0.0 if activation == "none" else 0.5
        index = (probs[:, 0] > threshold).astype(np.int64)
    known = class_names is not None and len(class_names) == n_outputs
    if known and n_outputs > 1:
        pred = np.asarray(class_names, dtype=object)[index]
    elif known:
        name = str(class_names[0])
        pred = np.where(index == 1, name, f"not {name}").astype(object)
    else:
        pred = index
    out[PRED_COLUMN] = pred
    out[PRED_INDEX_COLUMN] = index
    return out


def is_prediction_column(column) -> bool:
    """A column a prediction run writes (and so replaces): ``prob_*``, ``y_pred``,
    ``y_pred_index`` and PathFlowAI's ``{i}_pred``."""
    name = str(column)
    return (
        name.startswith(PROB_PREFIX)
        or name in (PRED_COLUMN, PRED_INDEX_COLUMN)
        or bool(_PATHFLOWAI_PROB.match(name))
    )


def replaceable_predictions(features: pd.DataFrame, new: Sequence[str], source: str) -> list[str]:
    """The prediction columns of ``features`` that new predictions (columns ``new``) replace.

    Earlier predictions of the same classes (the same ``prob_*`` names) are replaced whole,
    with ``y_pred``, ``y_pred_index`` and PathFlowAI's ``{i}_pred``, so that no stale or
    duplicate column (``prob_0`` beside ``prob_background``, a float ``y_pred`` over a named
    one) is left. Probabilities of other classes are refused in one line: they are another
    model's, and mixing the two would pass one's ``y_pred`` for the other's."""
    old_probs = [str(c) for c in features.columns if str(c).startswith(PROB_PREFIX)]
    new_probs = [c for c in new if c.startswith(PROB_PREFIX)]
    if old_probs and set(old_probs) != set(new_probs):
        hint = (
            "name the model's classes as they are (--class-names or the model card)"
            if all(c[len(PROB_PREFIX) :].isdigit() for c in new_probs)
            else "load the patches without those columns to predict them with this model"
        )
        raise PathvizError(
            f"{source}: already holds predictions of other classes "
            f"({', '.join(old_probs)}); this model's are {', '.join(new_probs)}: {hint}"
        )
    return [str(c) for c in features.columns if is_prediction_column(c) and str(c) not in new]


def merge_predictions(
    features: pd.DataFrame, result: pd.DataFrame, source: str
) -> tuple[pd.DataFrame, int]:
    """``features`` with the prediction (and other non-key) columns of ``result`` matched by
    patch (``match_rows``); earlier predictions are replaced, as
    :func:`replaceable_predictions` says. Unmatched rows get NaN (or None for text columns).
    Returns (features, rows matched)."""
    from .patches import KEY_COLUMNS, match_rows

    new = [str(c) for c in result.columns if c not in KEY_COLUMNS]
    stale = replaceable_predictions(features, new, source)
    features = features.drop(columns=[c for c in features.columns if c in new or c in stale])
    where = match_rows(features, result)
    found = where >= 0
    for column in new:
        values = result[column].to_numpy()
        if found.all():  # every patch predicted: the column keeps its type (int, text)
            features[column] = values[where]
            continue
        if values.dtype.kind in "biuf":
            full = np.full(
                len(features), np.nan, np.float32 if values.dtype == np.float32 else float
            )
        else:
            full = np.full(len(features), None, dtype=object)
        full[found] = values[where[found]]
        features[column] = full
    return features, int(found.sum())


def default_heatmap_column(columns: Sequence[str], class_names: Sequence[str] | None = None):
    """The probability column shown first: the explained class's (the last class), found by
    name when the names are known; else the last ``prob_*`` column; None when there is none."""
    probs = [str(c) for c in columns if str(c).startswith(PROB_PREFIX)]
    if not probs:
        return None
    if class_names:
        wanted = f"{PROB_PREFIX}{class_names[explained_class(class_names, len(class_names))]}"
        if wanted in probs:
            return wanted
    return probs[-1]


def with_pathflowai_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with PathFlowAI's ``{i}_pred`` probability columns (its ``predictions.db``
    names, which its ``plot_predictions -ac 1_pred`` reads) added after the ``prob_*`` ones,
    in output order, when it has ``prob_*`` columns and no ``{i}_pred`` yet."""
    probs = [c for c in df.columns if str(c).startswith(PROB_PREFIX)]
    if not probs or any(_PATHFLOWAI_PROB.match(str(c)) for c in df.columns):
        return df
    df = df.copy()
    at = list(df.columns).index(probs[-1]) + 1
    for i, column in enumerate(probs):
        df.insert(at + i, f"{i}_pred", pd.to_numeric(df[column], errors="coerce"))
    return df


def resolve_target(target, class_names: Sequence[str] | None, option: str = "--target"):
    """What to explain: "predicted", "each", or an output index given as an int, its digits or
    its class name; anything else is refused naming the classes."""
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return int(target)
    text = str(target).strip() or "predicted"
    if text in ("predicted", "each"):
        return text
    if class_names and text in class_names:
        return list(class_names).index(text)
    try:
        return int(text)
    except ValueError:
        classes = f"one of the model's classes ({', '.join(class_names)}), " if class_names else ""
        raise PathvizError(
            f"{option} must be {classes}predicted, each or an output index, got {text!r}"
        ) from None
