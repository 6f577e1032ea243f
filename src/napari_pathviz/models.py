"""Loading a patch classifier safely, and the preprocessing that belongs to it.

Sources: TorchScript files; a state dict plus an architecture given as ``package.module:factory``
(with keyword arguments); PathFlowAI's extracted-model pickle (``dict(model=..., transform_opts=...)``)
and any other pickle ONLY when the user trusts the file (pickles run code when loaded). Everything
else is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import PathvizError

ACTIVATIONS = ("auto", "none", "sigmoid", "softmax")
RESIZE_MODES = ("resize", "crop")


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

    @property
    def scripted(self) -> bool:
        import torch

        return isinstance(self.model, torch.jit.ScriptModule)

    def preprocess(self, patches: np.ndarray, device: str = "cpu"):
        """(N, H, W, 3) uint8 -> (N, 3, S, S) float tensor on ``device``, normalised."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(patches[..., :3])).to(device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
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

    def feature_module(self):
        """(module, "input" or "output") whose tensor is the embedding."""
        from torch import nn

        if self.scripted:
            raise PathvizError(
                f"{self.source}: a TorchScript model has no hookable layers; "
                "embeddings need a state dict + factory or a trusted pickle"
            )
        modules = dict(self.model.named_modules())
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


def import_factory(spec: str):
    """``package.module:function`` -> the callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise PathvizError(f"--factory {spec!r}: expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PathvizError(
            f"--factory {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc})"
        ) from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise PathvizError(f"--factory {spec!r}: {module_name} has no {attr}")
    if not callable(factory):
        raise PathvizError(f"--factory {spec!r}: {attr} is not callable")
    return factory


def load_model(
    path: str | os.PathLike,
    *,
    factory: str | None = None,
    factory_kwargs: dict | None = None,
    trust_pickle: bool = False,
    input_size: int | None = None,
    resize_mode: str = "resize",
    channel_order: str = "RGB",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    activation: str = "auto",
    feature_layer: str | None = None,
) -> ModelSpec:
    """Loads a model file into a :class:`ModelSpec` (eval mode, on the CPU)."""
    import torch

    path = str(path)
    if not os.path.exists(path):
        raise PathvizError(f"{path}: no such file or directory")
    if activation not in ACTIVATIONS:
        raise PathvizError(f"--activation must be one of {', '.join(ACTIVATIONS)}")
    if resize_mode not in RESIZE_MODES:
        raise PathvizError(f"--resize-mode must be one of {', '.join(RESIZE_MODES)}")
    if channel_order not in ("RGB", "BGR"):
        raise PathvizError("--channel-order must be RGB or BGR")
    metadata: dict[str, Any] = {}
    if factory:
        model = _from_state_dict(path, factory, factory_kwargs or {})
        kind = "state dict + factory"
    elif _is_torchscript(path):
        try:
            model = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise PathvizError(f"{path}: not a loadable TorchScript model ({exc})") from exc
        kind = "TorchScript"
    else:
        model, opts = _from_torch_file(path, trust_pickle)
        kind = "pickle" if opts is None else "PathFlowAI extracted model"
        if opts:
            metadata["transform_opts"] = opts
            mean = mean or _tuple(opts.get("mean"))
            std = std or _tuple(opts.get("std"))
            size = opts.get("resize") or opts.get("patch_size")
            input_size = input_size or (
                int(size) if isinstance(size, (int, float)) and size else None
            )
    metadata["kind"] = kind
    model.eval()  # PathFlowAI's shapley_plot left models in train mode: batch norm then drifts
    return ModelSpec(
        model,
        path,
        input_size,
        resize_mode,
        channel_order,
        mean,
        std,
        activation,
        feature_layer,
        metadata,
    )


def _tuple(value) -> tuple[float, ...] | None:
    if value is None:
        return None
    return tuple(float(v) for v in np.atleast_1d(value))


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in z.namelist())


def _from_state_dict(path: str, factory: str, kwargs: dict):
    import torch

    build = import_factory(factory)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PathvizError(
            f"{path}: not a state dict readable without unpickling code ({type(exc).__name__})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PathvizError(f"{path}: expected a state dict, found {type(state).__name__}")
    try:
        model = build(**kwargs)
    except Exception as exc:
        raise PathvizError(
            f"--factory {factory}: building the model failed ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit raise even when not strict
        mismatched = [
            line.strip().removeprefix("size mismatch for ").split(":")[0]
            for line in str(exc).splitlines()
            if "size mismatch for" in line
        ]
        detail = (
            f"tensors of other shapes: {', '.join(mismatched[:5])}"
            if mismatched
            else str(exc).splitlines()[0]
        )
        raise PathvizError(f"{path}: the state dict does not fit {factory}: {detail}") from exc
    problems = []
    if result.missing_keys:
        problems.append(
            f"missing keys {', '.join(result.missing_keys[:5])}"
            + (" ..." if len(result.missing_keys) > 5 else "")
        )
    if result.unexpected_keys:
        problems.append(
            f"unexpected keys {', '.join(result.unexpected_keys[:5])}"
            + (" ..." if len(result.unexpected_keys) > 5 else "")
        )
    if problems:
        raise PathvizError(f"{path}: the state dict does not fit {factory}: " + "; ".join(problems))
    return model


def _from_torch_file(path: str, trust_pickle: bool):
    """(module, transform_opts or None) from a torch.save file."""
    import pickle

    import torch
    from torch import nn

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # A real pickle of a module fails on its classes ("Unsupported global"); anything else
        # that fails to unpickle is not a model file, and must not be called one to trust.
        if "Unsupported global" not in str(exc):
            lines = [ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln]
            reason = lines[0][:120] if lines else "not a torch file"
            raise PathvizError(f"{path}: not a model file ({reason})") from exc
        obj = None
    except Exception as exc:
        raise PathvizError(f"{path}: not a model file ({type(exc).__name__}: {exc})") from exc
    if obj is not None:
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise PathvizError(
                f"{path}: a state dict; give its architecture with "
                "--factory package.module:function"
            )
        raise PathvizError(f"{path}: not a model ({type(obj).__name__})")
    if not trust_pickle:
        raise PathvizError(
            f"{path}: is a pickle, which can run code when loaded; pass "
            "--trust-pickle (or confirm in the GUI) only if you trust its origin"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise PathvizError(f"{path}: cannot load ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        return obj["model"], dict(obj.get("transform_opts") or {})
    if isinstance(obj, nn.Module):
        return obj, None
    raise PathvizError(f"{path}: the pickle holds {type(obj).__name__}, not a model")


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
    return int(out.shape[1])
