"""Two-stage models: a patch encoder on every patch, then a slide-level head over the bag.

:func:`load_two_stage` builds both stages from a two-stage model card (:mod:`.model_card`), as
data (safetensors or a weights-only state dict, each factory checked as a card's factory is),
and checks that the encoder's output size is the head's input size. :func:`extract_slide` runs
the encoder over the slide's patches through :func:`napari_pathviz.inference.extract` (batched
reads, resumable store) and the head on the bag; :func:`slide_outputs` gives the slide
prediction and, per patch, the attention, the attention-weighted patch logit (whose sum over
the patches is the slide logit) and gradient x feature.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import PathvizError
from .model_card import ModelCard, find_card, read_card
from .models import ModelSpec
from .patches import KEY_COLUMNS


@dataclass
class TwoStageModel:
    """A patch encoder (with its preprocessing) and a slide-level head, with the head's class
    names; ``feature_dim`` is the size of the features between them. ``encoder`` is None for a
    head run on precomputed features (:mod:`.slide_head`)."""

    encoder: ModelSpec | None
    head: Any
    class_names: tuple[str, ...]
    feature_dim: int
    source: str
    activation: str = "auto"

    @property
    def head_layout(self) -> str | None:
        """The public checkpoint layout the head's weights were recognised in (CLAM_SB's
        attention_net.2, ...: :mod:`.mil_layouts`), else None."""
        return getattr(self.head, "checkpoint_layout", None)

    def probabilities(self, logits) -> np.ndarray:
        """Slide probabilities from slide logits (softmax for several classes, else sigmoid)."""
        logits = np.asarray(logits, np.float64)
        activation = self.activation
        if activation == "auto":
            activation = "softmax" if logits.shape[-1] > 1 else "sigmoid"
        if activation == "softmax":
            e = np.exp(logits - logits.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        if activation == "sigmoid":
            return 1 / (1 + np.exp(-logits))
        return logits


def two_stage_card(model: str | os.PathLike, card: str | os.PathLike | None = None):
    """The two-stage card for ``-m MODEL [--model-card CARD]``, or None when the model is a
    single-stage one. MODEL may be the card itself (a .json file)."""
    if card is None and str(model).lower().endswith(".json") and os.path.isfile(model):
        found = read_card(model)
    else:
        found = find_card(model, card)
    return found if found is not None and found.two_stage else None


def _stage_path(card: ModelCard, stage: dict, given: str | None, name: str) -> str:
    """A stage's weights: the card's path (relative to the card's folder), else ``given``."""
    if stage.get("weights"):
        source = card.source
        base = Path(source.split("[")[0]).parent if source.endswith("]") else Path(source).parent
        path = Path(stage["weights"]).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise PathvizError(f"{card.source}: {name} weights {stage['weights']}: no such file")
        return str(path)
    if given is None:
        raise PathvizError(f"{card.source}: the {name} has no 'weights' (a path beside the card)")
    return str(given)


def _build_stage(card: ModelCard, stage: dict, path: str, name: str, trust: bool):
    from . import _model_files as files
    from .mil_layouts import adapt_checkpoint

    kind = files.file_kind(path)
    if kind in ("torchscript", "unknown"):
        raise PathvizError(
            f"{path}: the {name} of a two-stage model must be weights (safetensors or a state "
            f"dict), found {'a TorchScript archive' if kind == 'torchscript' else 'neither'}"
        )
    label = f"{card.source}: {name} factory"
    factory = files.card_factory(stage["factory"], label, trust, typed=False)  # before importing
    state = files.read_weights(path, kind)
    model = files.build_from_state_dict(
        path, factory, dict(stage.get("factory_kwargs") or {}), state, label, adapt_checkpoint
    )
    return model.eval()


def load_two_stage(
    card: ModelCard, *, weights: str | None = None, trust_model: bool = False
) -> TwoStageModel:
    """Both stages of a two-stage card, on the CPU in eval mode; ``weights`` stands for the
    encoder's when the card gives none (``-m encoder.safetensors`` with the card beside it)."""
    if not card.two_stage:
        raise PathvizError(f"{card.source}: not a two-stage model card (no 'head')")
    enc = card.encoder
    if weights is not None and str(weights).lower().endswith(".json"):
        weights = None
    encoder = _build_stage(
        card, enc, _stage_path(card, enc, weights, "encoder"), "encoder", trust_model
    )
    head, head_fields = build_head(card, trust_model)
    spec = ModelSpec(
        model=encoder,
        source=f"{card.source} (encoder)",
        input_size=enc.get("input_size"),
        resize_mode=enc.get("resize_mode") or "resize",
        channel_order=enc.get("channel_order") or "RGB",
        mean=tuple(enc["mean"]) if enc.get("mean") else None,
        std=tuple(enc["std"]) if enc.get("std") else None,
        activation="none",  # the encoder's outputs are features, taken as they are
        mpp=enc.get("mpp"),
        metadata={"kind": "two-stage encoder", "factory": enc["factory"],
                  "factory_kwargs": enc.get("factory_kwargs") or {}},
    )  # fmt: skip
    dim = check_feature_sizes(card, spec, head)
    names = check_head(card, head, head_fields, dim)
    return TwoStageModel(
        spec, head, names, dim, card.source, head_fields.get("activation") or "auto"
    )


def build_head(card: ModelCard, trust_model: bool = False):
    """The head of a two-stage card, built from its weights (on the CPU, in eval mode), and the
    card's head fields."""
    if not card.two_stage:
        raise PathvizError(f"{card.source}: not a two-stage model card (no 'head')")
    fields = card.head
    path = _stage_path(card, fields, None, "head")
    return _build_stage(card, fields, path, "head", trust_model), fields


def check_head(card: ModelCard, head, head_fields: dict, dim: int) -> tuple[str, ...]:
    """The head's class names (the head's, else the card's, else class_<k>), checked against
    its output size on a bag of ``dim``-long features."""
    names = head_fields.get("class_names") or card.class_names
    n_classes = _head_outputs(card, head, dim)
    if names is None:
        names = tuple(f"class_{k}" for k in range(n_classes))
    if len(names) != n_classes:
        raise PathvizError(
            f"{card.source}: {len(names)} class names for a head with {n_classes} outputs"
        )
    return tuple(names)


def check_feature_sizes(card: ModelCard, encoder: ModelSpec, head, patch_size: int = 0) -> int:
    """The feature size, checked three ways: the encoder's output on a zero patch (of the
    card's input size, else ``patch_size``, else 224), the head's input size, the card's
    ``feature_dim``; any two that differ raise one line naming both."""
    import torch

    from .mil import head_input_dim

    side = encoder.input_size or patch_size or 224
    device = next((p.device for p in encoder.model.parameters()), torch.device("cpu"))
    out = _probe(
        encoder.model,
        torch.zeros(1, 3, side, side, device=device),
        ndim=2,
        rejects=f"{card.source}: the encoder rejects {side} x {side} patches",
        must_return=f"{card.source}: the encoder must return (patches, features)",
    )
    produced, taken = int(out.shape[1]), head_input_dim(head)
    if taken is not None and taken != produced:
        raise PathvizError(
            f"{card.source}: the encoder's output size ({produced}) differs from the head's "
            f"input size ({taken})"
        )
    if card.feature_dim is not None and card.feature_dim != produced:
        raise PathvizError(
            f"{card.source}: feature_dim {card.feature_dim} differs from the encoder's output "
            f"size ({produced})"
        )
    return produced


def _head_outputs(card: ModelCard, head, dim: int) -> int:
    import torch

    logits = _probe(
        head,
        torch.zeros(3, dim),
        ndim=1,
        rejects=f"{card.source}: the head rejects a bag of {dim}-long features",
        must_return=f"{card.source}: the head must return one slide's logits (classes,) for a "
        "bag (patches, features)",
    )
    return int(logits.shape[0])


def _probe(module, dummy, ndim: int, rejects: str, must_return: str):
    """``module(dummy)`` without gradients; an exception, or an output that is not a tensor of
    ``ndim`` dimensions, is one line: ``rejects (the error)`` or ``must_return, got shape``."""
    import torch

    try:
        with torch.no_grad():
            out = module(dummy)
    except Exception as exc:
        raise PathvizError(
            f"{rejects} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != ndim:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PathvizError(f"{must_return}, got {shape}")
    return out


@dataclass
class SlidePrediction:
    """The head's view of one slide: logits and probabilities per class, the predicted class,
    and per patch (rows in the bag's order) the attention, the head's patch logits, their
    attention-weighted contributions to the slide logit, and gradient x feature."""

    class_names: tuple[str, ...]
    logits: np.ndarray  # (classes,)
    probabilities: np.ndarray  # (classes,)
    attention: np.ndarray | None  # (n,), sums to 1; None for a head without attention
    patch_logits: np.ndarray | None  # (n, classes)
    contributions: np.ndarray | None  # (n, classes): attention x patch logit
    grad_x_feature: np.ndarray  # (n, classes): d logit_c / d h_i . h_i
    features: np.ndarray | None = None  # (n, D): the bag, as the head saw it
    # (n, classes): each class's own attention, for a head with one per class (CLAM_MB); then
    # ``attention`` is the predicted class's and contributions use each class's.
    class_attention: np.ndarray | None = None

    @property
    def predicted(self) -> str:
        return self.class_names[int(np.argmax(self.logits))] if len(self.logits) > 1 else (
            self.class_names[0] if self.probabilities[0] > 0.5 else f"not {self.class_names[0]}"
        )  # fmt: skip

    def summary(self) -> dict:
        """The slide prediction as JSON-able values."""
        return {
            "prediction": self.predicted,
            "probabilities": dict(
                zip(self.class_names, map(float, self.probabilities), strict=True)
            ),
            "logits": dict(zip(self.class_names, map(float, self.logits), strict=True)),
            "n_patches": len(self.grad_x_feature),
        }

    def columns(self) -> pd.DataFrame:
        """The per-patch columns: attention, patch_logit_<class>, contribution_<class>,
        gradxfeat_<class>."""
        out = {}
        if self.attention is not None:
            out["attention"] = self.attention
        if self.class_attention is not None:
            for k, name in enumerate(self.class_names):
                out[f"attention_{name}"] = self.class_attention[:, k]
        for k, name in enumerate(self.class_names):
            if self.patch_logits is not None:
                out[f"patch_logit_{name}"] = self.patch_logits[:, k]
            if self.contributions is not None:
                out[f"contribution_{name}"] = self.contributions[:, k]
            out[f"gradxfeat_{name}"] = self.grad_x_feature[:, k]
        return pd.DataFrame(out)


def slide_outputs(model: TwoStageModel, features) -> SlidePrediction:
    """The head on the bag ``features`` (n, D): see :class:`SlidePrediction`. Contributions
    need a head with ``attend`` and ``patch_logits`` (:mod:`.mil`); gradient x feature works on
    any head."""
    import torch

    head = model.head
    h = torch.tensor(np.asarray(features, np.float32)).requires_grad_(True)  # a copy
    logits = head(h)
    grads = [torch.autograd.grad(logits[k], h, retain_graph=True)[0] for k in range(len(logits))]
    grad_x_feature = torch.stack([(g * h).sum(dim=1) for g in grads], dim=1)
    attention = patch_logits = contributions = class_attention = None
    with torch.no_grad():
        if hasattr(head, "attend") and hasattr(head, "patch_logits"):
            attention = head.attend(h)[0]
            patch_logits = head.patch_logits(h)
            weights = attention.unsqueeze(1)
            if hasattr(head, "class_attention"):  # one attention per class (CLAM_MB)
                class_attention = weights = head.class_attention(h)[0].T
            contributions = weights * patch_logits
        elif hasattr(head, "attend") and hasattr(head, "contributions"):  # DSMIL
            attention = head.attend(h)[0]
            class_attention = head.class_attention(h)[0].T
            contributions = head.contributions(h)

    def numpy(t):
        return None if t is None else t.detach().double().numpy()

    logits_np = numpy(logits)
    return SlidePrediction(
        model.class_names,
        logits_np,
        model.probabilities(logits_np),
        numpy(attention),
        numpy(patch_logits),
        numpy(contributions),
        numpy(grad_x_feature),
        np.asarray(features, np.float32),
        numpy(class_attention),
    )


def extract_slide(
    slide,
    table,
    model: TwoStageModel,
    *,
    embeddings: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    **extract_options,
) -> tuple[pd.DataFrame, SlidePrediction]:
    """The encoder on every patch (through :func:`.inference.extract`, its options passed on:
    store, batch_size, device, workers, level, bf16), then the head on the slide's bag.
    Returns the patch table (key columns, the head's columns, ``feat_{j}`` with
    ``embeddings``) and the slide prediction."""
    from .inference import extract

    check_feature_sizes(
        ModelCard(source=model.source, feature_dim=model.feature_dim),
        model.encoder,
        model.head,
        int(table.df["patch_size"].iloc[0]) if len(table) else 0,
    )
    encoded = extract(
        slide,
        table,
        model.encoder,
        embeddings=False,
        progress=progress,
        cancelled=cancelled,
        **extract_options,
    )
    # The encoder's outputs come back as prob_<i> (it has no class names, activation "none"):
    # features, in order; the argmax columns (y_pred*) mean nothing here.
    outputs = [f"prob_{j}" for j in range(model.feature_dim)]
    missing = [c for c in outputs if c not in encoded.columns]
    if missing:
        raise PathvizError(f"{model.source}: the encoder's outputs lack {missing[0]}")
    features = encoded[outputs].to_numpy(np.float32)
    prediction = slide_outputs(model, features)
    parts = [encoded[list(KEY_COLUMNS)], prediction.columns()]
    if "missing_tiles" in encoded.columns:  # --allow-missing-tiles: the rows read as blank
        parts.append(encoded[["missing_tiles"]])
    if embeddings:
        parts.append(
            pd.DataFrame(features, columns=[f"feat_{j}" for j in range(features.shape[1])])
        )
    return pd.concat(parts, axis=1), prediction


def slide_prediction_path(out: str | os.PathLike) -> Path:
    """Where the slide prediction goes beside the patch table: OUT without suffix + .slide.json."""
    out = Path(out)
    return out.with_name(out.name.split(".")[0] + ".slide.json")


def write_slide_prediction(
    path, prediction: SlidePrediction, slide_id: str, model: str, head_layout: str | None = None
) -> Path:
    """The slide prediction as a small JSON file, written atomically; ``head_layout``: the
    public checkpoint layout the head's weights were recognised in (:mod:`.mil_layouts`)."""
    from .io.atomic import atomic_file

    path = Path(path)
    record = {"slide": slide_id, "model": model, **prediction.summary()}
    if head_layout:
        record["head_layout"] = head_layout
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_slide_prediction_beside(table: str | os.PathLike) -> dict | None:
    """The slide prediction written beside a patch table (:func:`write_slide_prediction`), or
    None when there is none; a file that is not one is one line naming it."""
    path = slide_prediction_path(table)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        probabilities = {str(k): float(v) for k, v in record["probabilities"].items()}
        prediction = str(record["prediction"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PathvizError(
            f"{path}: not a slide prediction (needs 'prediction' and 'probabilities'; "
            f"{type(exc).__name__})"
        ) from exc
    return {**record, "prediction": prediction, "probabilities": probabilities}


def explain_top_patches(
    model: TwoStageModel,
    patches: np.ndarray,
    *,
    k: int = 4,
    target: int | str = "predicted",
    n_samples: int = 400,
    n_background: int = 16,
    seed: int = 0,
    device: str = "cpu",
):
    """Pixels to slide for the ``k`` most attended of a slide's (n, H, W, 3) ``patches``:
    (SlidePrediction, AttributionResult); see :func:`explain_bag`."""
    import torch

    encoder = model.encoder
    encoder.model.to(device)
    model.head.to(device)
    with torch.no_grad():
        features = torch.cat(
            [encoder.model(encoder.preprocess(patches[i : i + 256], device))
             for i in range(0, len(patches), 256)]
        )  # fmt: skip
    prediction = slide_outputs(model, features.cpu().numpy())
    result = explain_bag(
        model, features, prediction, lambda rows: patches[rows], k=k, target=target,
        n_samples=n_samples, n_background=n_background, seed=seed, device=device,
    )  # fmt: skip
    return prediction, result


def explain_bag(
    model: TwoStageModel,
    features,
    prediction: SlidePrediction,
    read: Callable[[np.ndarray], np.ndarray],
    *,
    k: int = 4,
    target: int | str = "predicted",
    n_samples: int = 400,
    n_background: int = 16,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
):
    """Expected gradients of the slide logit down to the pixels of the ``k`` most attended
    patches of the bag (:func:`.attribution.slide_level.explain_slide_pixels`).
    ``read(rows)`` gives the (m, H, W, 3) patches of those bag rows; the baselines are
    ``n_background`` other patches of the slide, drawn at random (seeded). ``cancelled()``
    is checked between sample batches (raises :class:`.errors.Cancelled`)."""
    from .attribution.slide_level import explain_slide_pixels, top_attended

    if prediction.attention is None:
        raise PathvizError(f"{model.source}: the head has no attention to pick the top patches by")
    rows = top_attended(prediction.attention, k)
    others = np.setdiff1d(np.arange(len(prediction.attention)), rows)
    if not len(others):
        others = np.arange(len(prediction.attention))
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(others, min(n_background, len(others)), replace=False))
    encoder = model.encoder
    encoder.model.to(device)
    model.head.to(device)
    return explain_slide_pixels(
        model,
        encoder.preprocess(read(rows), device),
        features,
        rows,
        encoder.preprocess(read(pick), device),
        target=target,
        n_samples=n_samples,
        seed=seed,
        progress=progress,
        cancelled=cancelled,
    )
