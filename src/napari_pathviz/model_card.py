"""The model card: a small JSON file that describes a model once, beside its weights.

A card says what the weights alone cannot: the architecture (``factory`` and ``factory_kwargs``),
the input size, the resolution the model was trained at (``mpp``), the normalisation, the class
names and which output is explained. Every command and widget reads it through
:func:`napari_pathviz.models.load_model`; options given there (CLI flags, widget fields) override
it. A card is data: it is parsed as JSON and checked field by field, never executed. Its factory
is a registered architecture (:mod:`napari_pathviz.architectures`: by alias, such as
``demo_model``, or by its exact ``module:attr``); any other is imported only with the user's
consent (:func:`napari_pathviz._model_files.card_factory`).

Where a card is looked for, first found wins: the ``card`` given explicitly; ``<weights stem>.json``
beside the weights; ``model_card.json`` in the same folder; a ``model_card`` entry in a safetensors
header's ``__metadata__``, or an ``extra/model_card.json`` inside a TorchScript archive (both read
as bytes, without loading the model).

Example (the demo model's, ``data/demo_model.json``)::

    {"factory": "napari_pathviz._demo_model:build_demo_model", "factory_kwargs": {"n_classes": 3},
     "input_size": null, "mpp": 0.5, "mean": [0.8, 0.72, 0.7], "std": [0.15, 0.18, 0.18],
     "class_names": ["background", "dab_negative", "dab_positive"], "activation": "softmax",
     "explained_output": "logit"}

A two-stage model (a patch encoder, then a slide-level head over the bag of patch features:
:mod:`napari_pathviz.mil`) has an ``encoder`` and a ``head``, each with its own factory, keyword
arguments and weights (a path relative to the card); the encoder carries the preprocessing, the
head the class names, and ``feature_dim`` the size of the features between them (checked
against both when loaded: :mod:`napari_pathviz.slide_level`)::

    {"name": "demo gated-attention MIL", "feature_dim": 32,
     "encoder": {"factory": "my_models.encoders:PatchEncoder", "factory_kwargs": {"dim": 32},
                 "weights": "encoder.safetensors", "input_size": 64,
                 "mean": [0.8, 0.72, 0.7], "std": [0.15, 0.18, 0.18]},
     "head": {"factory": "napari_pathviz.mil:GatedAttentionMIL",
              "factory_kwargs": {"in_dim": 32, "hidden": 32, "n_classes": 2},
              "weights": "head.safetensors", "class_names": ["negative", "positive"]}}
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import PathvizError

CARD_NAME = "model_card.json"
EMBEDDED_KEY = "model_card"  # safetensors __metadata__ key; TorchScript extra file stem
ACTIVATIONS = ("auto", "none", "sigmoid", "softmax")
RESIZE_MODES = ("resize", "crop")
CHANNEL_ORDERS = ("RGB", "BGR")
EXPLAINED_OUTPUTS = ("logit", "sigmoid", "softmax")  # as shapley-plot --explain-output
MAX_INPUT_SIZE = 16384
MAX_CARD_BYTES = 1 << 20  # a card is a few hundred bytes; a megabyte is not a card
MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own limit


@dataclass(frozen=True)
class ModelCard:
    """A validated card; ``source`` is where it was read (a file, or ``weights[model_card]``)."""

    source: str
    name: str | None = None
    description: str | None = None
    factory: str | None = None
    factory_kwargs: dict[str, Any] | None = None
    input_size: int | None = None
    resize_mode: str | None = None
    channel_order: str | None = None
    mpp: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    activation: str | None = None
    explained_output: str | None = None
    feature_layer: str | None = None
    # Two-stage models (see TWO_STAGE_EXAMPLE): the patch encoder's and the slide-level head's
    # own fields, and the size of the features the one hands the other.
    encoder: dict[str, Any] | None = None
    head: dict[str, Any] | None = None
    feature_dim: int | None = None

    @property
    def two_stage(self) -> bool:
        return self.head is not None

    def as_dict(self) -> dict[str, Any]:
        """The card's fields (without ``source``), as JSON-able values."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "source" and value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def find_card(weights: str | os.PathLike, card: str | os.PathLike | None = None):
    """The card of a weights file (see the module docstring for where it is looked for), or
    None. An explicit ``card`` that does not exist is an error."""
    if card is not None:
        if not os.path.isfile(card):
            raise PathvizError(f"--model-card {card}: no such file")
        return read_card(card)
    weights = Path(weights)
    for candidate in (weights.with_suffix(".json"), weights.with_name(CARD_NAME)):
        if candidate != weights and candidate.is_file():
            return read_card(candidate)
    return embedded_card(weights)


def refuse_two_stage(model: str | os.PathLike, card: ModelCard | None) -> None:
    """Patch-level work (predictions of patches, attributions of a patch classifier) given a
    two-stage model (``-m`` a two-stage card, or weights whose card is one): one line saying
    where such a model runs, instead of "not a model file"."""
    if card is None and str(model).lower().endswith(".json") and os.path.isfile(model):
        try:
            card = read_card(model)
        except PathvizError:
            return  # not a card: the model loader says what the file is
    if card is not None and card.two_stage:
        raise PathvizError(
            f"{card.source}: a two-stage model (patch encoder + slide-level head) runs with "
            "pathviz extract (or the Model inference widget), and its slide prediction is "
            "explained with extract --explain-top; this command takes a patch classifier"
        )


def read_card(path: str | os.PathLike) -> ModelCard:
    """Reads and validates a card file; a bad one raises naming the file and the field."""
    path = str(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_CARD_BYTES:
            raise PathvizError(f"{path}: a model card of {size} bytes is too large to be one")
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise PathvizError(f"{path}: cannot read the model card ({exc.strerror or exc})") from exc
    return parse_card(text, path)


def parse_card(text: bytes | str, source: str) -> ModelCard:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PathvizError(f"{source}: the model card is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PathvizError(f"{source}: a model card is a JSON object, found {type(data).__name__}")
    unknown = sorted(set(data) - set(_CHECKS))
    if unknown:
        raise PathvizError(
            f"{source}: unknown model card field {unknown[0]!r} (known: {', '.join(_CHECKS)})"
        )
    values = {}
    for name, value in data.items():
        if value is None:
            continue
        try:
            values[name] = _CHECKS[name](value)
        except _Invalid as bad:
            raise PathvizError(f"{source}: model card field {name!r} {bad}") from None
    if values.get("std") is not None and values.get("mean") is None:
        raise PathvizError(f"{source}: model card field 'std' is given without 'mean'")
    if (values.get("encoder") is None) != (values.get("head") is None):
        missing = "encoder" if values.get("encoder") is None else "head"
        raise PathvizError(
            f"{source}: a two-stage model card needs both 'encoder' and 'head'; "
            f"{missing!r} is missing"
        )
    return ModelCard(source=source, **values)


def embedded_card(weights: str | os.PathLike) -> ModelCard | None:
    """A card stored inside a safetensors header or a TorchScript archive, read as bytes."""
    path = str(weights)
    header = safetensors_header(path)
    if header is not None:
        text = (header.get("__metadata__") or {}).get(EMBEDDED_KEY)
        return parse_card(text, f"{path}[{EMBEDDED_KEY}]") if isinstance(text, str) else None
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            parts = info.filename.split("/")
            if parts[-2:] == ["extra", CARD_NAME] and info.file_size <= MAX_CARD_BYTES:
                return parse_card(archive.read(info), f"{path}[{CARD_NAME}]")
    return None


def safetensors_header(path: str) -> dict | None:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), or None
    when the file is not one. Reads only the header."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= min(MAX_SAFETENSORS_HEADER, os.path.getsize(path) - 8):
                return None
            raw = f.read(length)
    except OSError:
        return None
    if not raw.startswith(b"{"):
        return None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return header if isinstance(header, dict) else None


# --------------------------------------------------------------------------- field checks


class _Invalid(Exception):
    """What is wrong with one field's value (completed into a message naming card and field)."""


def _text(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("must be a non-empty string")
    return value


_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # an entry point's name


def _factory(value) -> str:
    """A registered architecture's name or ``package.module:function``; whether it may be
    imported is decided when the model is loaded (``_model_files.card_factory``)."""
    module, sep, attr = _text(value).partition(":")
    if sep and module and attr:
        return value
    if not sep and _ALIAS.fullmatch(value):
        return value
    raise _Invalid(
        f"must be a registered architecture's name or package.module:function, got {value!r}"
    )


def _kwargs(value) -> dict:
    if not isinstance(value, dict):
        raise _Invalid("must be a JSON object of keyword arguments")
    return value


def _input_size(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INPUT_SIZE:
        raise _Invalid(
            f"must be a whole number of pixels from 1 to {MAX_INPUT_SIZE}, got {value!r}"
        )
    return value


def _mpp(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
        raise _Invalid(f"must be microns per pixel, above 0 and at most 100, got {value!r}")
    return float(value)


def _channels(positive: bool):
    def check(value) -> tuple[float, ...]:
        ok = isinstance(value, list) and len(value) == 3
        ok = ok and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
        if not ok or (positive and min(value) <= 0):
            kind = "positive numbers" if positive else "numbers"
            raise _Invalid(f"must be a list of 3 {kind} (R, G, B on [0, 1] inputs), got {value!r}")
        return tuple(float(v) for v in value)

    return check


def _class_names(value) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid("must be a non-empty list of strings")
    names = tuple(_text(v).strip() if isinstance(v, str) else None for v in value)
    if None in names or "" in names:
        raise _Invalid("must be a non-empty list of non-empty strings")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise _Invalid(f"names {repeated[0]!r} twice")
    return names


def _one_of(choices: tuple[str, ...]):
    def check(value) -> str:
        if value not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _whole(low: int, high: int):
    def check(value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Invalid(f"must be a whole number from {low} to {high}, got {value!r}")
        return value

    return check


# A stage's own fields: the encoder is preprocessed like a patch classifier; the head has the
# class names. ``weights`` is a path, relative to the card's folder.
_ENCODER_FIELDS = (
    "factory", "factory_kwargs", "weights", "input_size", "resize_mode", "channel_order",
    "mpp", "mean", "std",
)  # fmt: skip
_HEAD_FIELDS = ("factory", "factory_kwargs", "weights", "class_names", "activation")


def _stage(allowed: tuple[str, ...]):
    def check(value) -> dict:
        if not isinstance(value, dict):
            raise _Invalid("must be a JSON object (factory, factory_kwargs, weights, ...)")
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise _Invalid(f"has unknown field {unknown[0]!r} (known: {', '.join(allowed)})")
        if value.get("factory") is None:
            raise _Invalid("needs a 'factory' (package.module:Class)")
        out = {}
        for name, item in value.items():
            if item is None:
                continue
            try:
                out[name] = (_text if name == "weights" else _CHECKS[name])(item)
            except _Invalid as bad:
                raise _Invalid(f"field {name!r} {bad}") from None
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        if out.get("std") is not None and out.get("mean") is None:
            raise _Invalid("gives 'std' without 'mean'")
        return out

    return check


_CHECKS = {
    "name": _text,
    "description": _text,
    "factory": _factory,
    "factory_kwargs": _kwargs,
    "input_size": _input_size,
    "resize_mode": _one_of(RESIZE_MODES),
    "channel_order": _one_of(CHANNEL_ORDERS),
    "mpp": _mpp,
    "mean": _channels(positive=False),
    "std": _channels(positive=True),
    "class_names": _class_names,
    "activation": _one_of(ACTIVATIONS),
    "explained_output": _one_of(EXPLAINED_OUTPUTS),
    "feature_layer": _text,
    "encoder": _stage(_ENCODER_FIELDS),
    "head": _stage(_HEAD_FIELDS),
    "feature_dim": _whole(1, 1 << 20),
}
