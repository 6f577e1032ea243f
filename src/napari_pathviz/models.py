"""Loading a patch classifier safely, and the preprocessing that belongs to it.

Safe without trust (data): weights in safetensors, or a state dict read with
``torch.load(weights_only=True)``, with the architecture typed by the user (``--factory
package.module:factory`` and keyword arguments) or named by the model card beside the weights
(:mod:`.model_card`): a registered architecture (:mod:`.architectures`), anything else only with
``trust_model``. Code, loaded ONLY when the user trusts the file
(``trust_model``): pickles (PathFlowAI's extracted model ``dict(model=..., transform_opts=...)``,
any pickled module) and TorchScript archives. :mod:`._model_files` reads each kind.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._model_files import import_factory as import_factory  # re-exported
from .errors import PathvizError, PathvizWarning
from .model_card import ACTIVATIONS, EXPLAINED_OUTPUTS, RESIZE_MODES, find_card, refuse_two_stage


def pixels_to_unit(patches: np.ndarray, device: str = "cpu"):
    """(N, H, W, C) patches -> (N, 3, H, W) float32 tensor in [0, 1], scaled by their dtype.

    uint8 is divided by 255 and uint16 by 65535 (its full range: 12-bit data stored in uint16
    comes out dark; convert such a slide to uint8 first); float is taken as it is when every
    value lies in [0, 1]. Anything else is refused: feeding, say, 0-255 floats to a model
    trained on [0, 1] inputs silently turns every prediction. Every path from patches to a
    model input goes through here.
    """
    import torch

    patches = np.asarray(patches)
    divisor = _DTYPE_RANGE.get(patches.dtype)
    if divisor is None and patches.dtype.kind == "f":
        low, high = (float(patches.min()), float(patches.max())) if patches.size else (0, 0)
        if not (low >= 0.0 and high <= 1.0):  # also false for NaN
            raise PathvizError(
                f"the slide's pixels are {patches.dtype} with values from {low:g} to {high:g}; "
                "float slides must lie in [0, 1] (uint8 and uint16 are scaled by their range)"
            )
        divisor = 1.0
    if divisor is None:
        raise PathvizError(
            f"the slide's pixels are {patches.dtype}; models take uint8, uint16 or float "
            "slides in [0, 1]: convert the slide"
        )
    x = torch.from_numpy(np.ascontiguousarray(patches[..., :3])).to(device)
    x = x.permute(0, 3, 1, 2).float()
    return x.div_(divisor) if divisor != 1.0 else x


_DTYPE_RANGE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


@dataclass
class ModelSpec:
    """A model with its preprocessing: what turns uint8 patches into the model's outputs."""

    model: Any
    source: str
    input_size: int | None = None  # square side the model takes; None: as read
    resize_mode: str = "resize"  # "resize" (bilinear) or "crop" (centre)
    channel_order: str = "RGB"
    mean: tuple[float, ...] | None = None  # on [0, 1] inputs
    std: tuple[float, ...] | None = None
    activation: str = "auto"  # auto: softmax for several outputs, sigmoid for one
    feature_layer: str | None = None  # a module name; None: the input of the last Linear
    metadata: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None  # one per output, from the card or options
    mpp: float | None = None  # microns per pixel the model was trained at
    explained_output: str | None = None  # "logit", "sigmoid" or "softmax", as the card says

    @property
    def scripted(self) -> bool:
        import torch

        return isinstance(self.model, torch.jit.ScriptModule)

    def preprocess(self, patches: np.ndarray, device: str = "cpu"):
        """(N, H, W, 3) patches -> (N, 3, S, S) float tensor on ``device``, normalised.

        Pixels are first brought to [0, 1] by the slide's dtype (:func:`pixels_to_unit`)."""
        import torch
        import torch.nn.functional as F

        x = pixels_to_unit(patches, device)
        if self.channel_order == "BGR":
            x = x.flip(1)
        size = self.input_size
        if size and (x.shape[2] != size or x.shape[3] != size):
            if self.resize_mode == "crop":
                top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
                if top < 0 or left < 0:
                    raise PathvizError(
                        f"--input-size {size} is larger than the patches "
                        f"({x.shape[2]} px) and crop cannot enlarge them"
                    )
                x = x[:, :, top : top + size, left : left + size]
            else:
                x = F.interpolate(
                    x,
                    size=(size, size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=x.shape[2] > size,
                )
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=device, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(
                self.std or (1.0,) * len(self.mean), device=device, dtype=x.dtype
            ).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def probabilities(self, logits):
        """The model's outputs after its activation (as PathFlowAI's -p none/sigmoid/softmax)."""
        import torch

        activation = self.activation
        if activation == "auto":
            activation = "softmax" if logits.shape[1] > 1 else "sigmoid"
        if activation == "softmax":
            return torch.softmax(logits.float(), dim=1)
        if activation == "sigmoid":
            return torch.sigmoid(logits.float())
        return logits.float()

    def normalisation_warning(self) -> str | None:
        """One line when no normalisation is known (no mean from options, card or PathFlowAI's
        transform_opts): patches then reach the model as RGB on [0, 1], which a model trained
        on normalised patches turns into confident nonsense (the demo model: one class at
        p 0.93-1.00 for every patch). None when a mean is known."""
        if self.mean is not None:
            return None
        card = self.metadata.get("card")
        where = f"the model card {card} has no mean/std" if card else "no model card"
        return (
            f"{self.source}: no normalisation known ({where}, no --mean/--std): patches reach "
            "the model as RGB on [0, 1]; give the mean/std it was trained with (a model that "
            "normalises itself: mean 0 0 0, std 1 1 1)"
        )

    def class_label(self, index) -> str:
        """Output ``index`` as shown: its class name, or ``class <i>`` without names."""
        from .classes import class_label

        return class_label(self.class_names, index)

    def hookable_model(self, purpose: str):
        """The model, for work that hooks or traces its layers (embeddings, Grad-CAM,
        DeepLIFT); a TorchScript model has no such layers and is refused in one line."""
        if self.scripted:
            raise PathvizError(
                f"{self.source}: a TorchScript model has no hookable layers, so {purpose} "
                "cannot use it; load its weights (state dict or safetensors) with --factory"
            )
        return self.model

    def feature_module(self):
        """(module, "input" or "output") whose tensor is the embedding."""
        from torch import nn

        modules = dict(self.hookable_model("embeddings").named_modules())
        if self.feature_layer:
            if self.feature_layer not in modules:
                names = [n for n in modules if n][:12]
                raise PathvizError(
                    f"--feature-layer {self.feature_layer!r} is not a module of "
                    f"the model (some are: {', '.join(names)})"
                )
            return modules[self.feature_layer], "output"
        linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
        if not linears:
            raise PathvizError(
                f"{self.source}: the model has no Linear layer; name the feature "
                "layer with --feature-layer"
            )
        return linears[-1], "input"


def load_model(
    path: str | os.PathLike,
    *,
    card: str | os.PathLike | None = None,
    factory: str | None = None,
    factory_kwargs: dict | None = None,
    trust_model: bool = False,
    input_size: int | None = None,
    resize_mode: str | None = None,
    channel_order: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    activation: str | None = None,
    feature_layer: str | None = None,
    class_names: tuple[str, ...] | None = None,
    mpp: float | None = None,
    explained_output: str | None = None,
    trust_pickle: bool | None = None,
) -> ModelSpec:
    """Loads a model file into a :class:`ModelSpec` (eval mode, on the CPU).

    The model card (``card``, else one found beside the weights: see :mod:`.model_card`) fills
    every option left None; PathFlowAI's ``transform_opts`` fill what the card leaves open.
    Pickles and TorchScript archives are code and load only with ``trust_model``;
    ``trust_pickle`` is its former name."""
    if trust_pickle is not None:
        warnings.warn(
            "load_model(trust_pickle=...) is now trust_model=", DeprecationWarning, stacklevel=2
        )
        trust_model = trust_model or trust_pickle
    path = str(path)
    _check_file(path)
    model_card = find_card(path, card)
    refuse_two_stage(path, model_card)  # they run through slide_level, not as one module
    given = {
        "input_size": input_size,
        "resize_mode": resize_mode,
        "channel_order": channel_order,
        "mean": _tuple(mean),
        "std": _tuple(std),
        "activation": activation,
        "feature_layer": feature_layer,
        "class_names": tuple(class_names) if class_names is not None else None,
        "mpp": mpp,
        "explained_output": explained_output,
    }
    options = {k: v if v is not None else getattr(model_card, k, None) for k, v in given.items()}
    _check_options(options)
    model, metadata = _read_model(path, model_card, factory, factory_kwargs, trust_model)
    if model_card is not None:
        metadata["card"] = model_card.source
        metadata["card_fields"] = model_card.as_dict()
    if "transform_opts" in metadata:  # PathFlowAI's extracted model (even with empty opts)
        _fill_from_transform_opts(options, metadata["transform_opts"])
    model.eval()  # PathFlowAI's shapley_plot left models in train mode: batch norm then drifts
    spec = _spec(model, path, options, metadata)
    unknown = spec.normalisation_warning()
    if unknown:  # never silent: unnormalised patches give confident nonsense
        warnings.warn(unknown, PathvizWarning, stacklevel=2)
    return spec


def _spec(model, path: str, options: dict, metadata: dict) -> ModelSpec:
    """The spec of the options as resolved (given, else card, else transform_opts)."""
    return ModelSpec(
        model=model,
        source=path,
        input_size=options["input_size"],
        resize_mode=options["resize_mode"] or "resize",
        channel_order=options["channel_order"] or "RGB",
        mean=options["mean"],
        std=options["std"],
        activation=options["activation"] or "auto",
        feature_layer=options["feature_layer"],
        metadata=metadata,
        class_names=options["class_names"],
        mpp=options["mpp"],
        explained_output=options["explained_output"],
    )


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise PathvizError(f"{path}: no such file or directory")
    if not os.path.isfile(path):
        raise PathvizError(f"{path}: is a folder, not a model file")
    if not os.access(path, os.R_OK):
        raise PathvizError(f"{path}: not readable (permission denied)")


# What PathFlowAI's get_data_transforms normalises with when transform_opts give no mean/std
# (its statistics of lung adenocarcinoma resections).
PATHFLOWAI_DEFAULT_MEAN = (0.7, 0.6, 0.7)
PATHFLOWAI_DEFAULT_STD = (0.15, 0.15, 0.15)


def _fill_from_transform_opts(options: dict, opts: dict) -> None:
    """PathFlowAI's transform_opts fill what options and card left open, as its test-time
    transform does: ``Resize((patch_size, patch_size))`` (``patch_size`` is the resized side;
    ``resize`` is only a flag), ``Normalize(mean, std)`` with ``user_transforms['normalization']``
    first and PathFlowAI's own defaults when neither gives them."""
    norm = (opts.get("user_transforms") or {}).get("normalization") or {}
    mean = _tuple(norm.get("mean")) or _tuple(opts.get("mean")) or PATHFLOWAI_DEFAULT_MEAN
    std = _tuple(norm.get("std")) or _tuple(opts.get("std")) or PATHFLOWAI_DEFAULT_STD
    options["mean"] = options["mean"] or mean
    options["std"] = options["std"] or std
    size = opts.get("patch_size")
    is_size = isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0
    if not options["input_size"] and is_size:
        options["input_size"] = int(size)


def _check_options(options: dict) -> None:
    if (options["activation"] or "auto") not in ACTIVATIONS:
        raise PathvizError(f"--activation must be one of {', '.join(ACTIVATIONS)}")
    if (options["resize_mode"] or "resize") not in RESIZE_MODES:
        raise PathvizError(f"--resize-mode must be one of {', '.join(RESIZE_MODES)}")
    if (options["channel_order"] or "RGB") not in ("RGB", "BGR"):
        raise PathvizError("--channel-order must be RGB or BGR")
    explained = options["explained_output"]
    if explained is not None and explained not in EXPLAINED_OUTPUTS:
        raise PathvizError(f"explained output must be one of {', '.join(EXPLAINED_OUTPUTS)}")
    names = options["class_names"]
    if names is not None and (not names or len(set(names)) != len(names)):
        raise PathvizError("class names must be distinct and at least one")
    std = options["std"]
    if std is not None and not all(np.isfinite(v) and v > 0 for v in std):
        raise PathvizError(f"--std must be positive numbers (inputs are divided by it), got {std}")
    size = options["input_size"]
    if size is not None and not 0 < size <= 16384:
        raise PathvizError(f"--input-size must be between 1 and 16384 px, got {size}")


def _read_model(path: str, card, factory, factory_kwargs, trust: bool):
    """(module, metadata: its kind, and the factory with its kwargs or PathFlowAI's
    transform_opts): the file read by its kind; only pickles and TorchScript (code) need
    ``trust``."""
    from . import _model_files as files

    kind = files.file_kind(path)
    if kind == "torchscript":
        if factory:
            raise PathvizError(
                f"{path}: is a TorchScript archive (code, architecture included), not weights "
                f"for --factory {factory}; drop --factory and pass --trust-model only if you "
                "trust its origin"
            )
        return files.load_torchscript(path, trust), {"kind": "TorchScript"}
    card_factory = getattr(card, "factory", None)
    if factory:  # typed by the user: their choice (a registered alias stands for its target)
        target = files.user_factory(factory)
        if factory_kwargs is None:  # the card's, when it names the same architecture
            same = card_factory is not None and files.user_factory(card_factory) == target
            factory_kwargs = (card.factory_kwargs or {}) if same else {}
        state = files.read_weights(path, kind)
        return _built(path, kind, target, factory_kwargs, state, "--factory")
    held = None if kind == "safetensors" else files.probe_torch_file(path, kind)
    if card_factory and (kind == "safetensors" or files.is_state_dict(held)):
        label = f"{card.source}: factory"
        # Resolved by name before anything is imported: a card's author chose it, not the user.
        target = files.card_factory(card_factory, label, trust)
        state = files.read_weights(path, kind) if held is None else files.state_dict_of(held)
        kwargs = (card.factory_kwargs or {}) if factory_kwargs is None else factory_kwargs
        return _built(path, kind, target, kwargs, state, label)
    if kind == "safetensors":
        raise PathvizError(
            f"{path}: safetensors holds weights only; give the architecture with --factory "
            "package.module:function or a model card beside it"
        )
    if held is not None:
        if files.is_state_dict(held):
            raise PathvizError(
                f"{path}: a state dict; give its architecture with "
                "--factory package.module:function (or a model card beside it)"
            )
        raise PathvizError(f"{path}: not a model ({type(held).__name__})")
    model, opts = files.load_pickle(path, kind, trust)
    if opts is None:
        return model, {"kind": "pickle"}
    return model, {"kind": "PathFlowAI extracted model", "transform_opts": opts}


def _built(path, kind, factory, kwargs, state, label):
    from ._model_files import build_from_state_dict

    model = build_from_state_dict(path, factory, dict(kwargs), state, label)
    described = "safetensors" if kind == "safetensors" else "state dict"
    return model, {"kind": f"{described} + factory", "factory": factory, "factory_kwargs": kwargs}


def _tuple(value) -> tuple[float, ...] | None:
    if value is None:
        return None
    return tuple(float(v) for v in np.atleast_1d(value))


def check_model(spec: ModelSpec, patch_size: int, device: str = "cpu") -> int:
    """Runs two blank patches through the model; returns its number of outputs, or raises
    naming what the model rejected."""
    import torch

    blank = np.full((2, patch_size, patch_size, 3), 128, np.uint8)
    try:
        with torch.inference_mode():
            out = spec.model.to(device)(spec.preprocess(blank, device))
    except PathvizError:
        raise
    except Exception as exc:
        size = spec.input_size or patch_size
        raise PathvizError(
            f"{spec.source}: the model rejects {size} x {size} inputs "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PathvizError(
            f"{spec.source}: the model's output must be (patches, classes), found {shape}"
        )
    if spec.class_names is not None and len(spec.class_names) != out.shape[1]:
        where = spec.metadata.get("card") or "the class names given"
        raise PathvizError(
            f"{where}: {len(spec.class_names)} class names for a model with "
            f"{out.shape[1]} outputs ({spec.source})"
        )
    return int(out.shape[1])
