"""Reading model files by kind, and which kinds need the user's trust.

Data, read without trust:
- safetensors: a JSON header and raw tensor bytes; nothing in it is executed.
- a state dict saved by ``torch.save``, read with ``torch.load(weights_only=True)`` (torch >= 2.6:
  an unpickler that builds tensors and plain containers only, and refuses TorchScript archives).
Both need the architecture (a factory), named by the user (``--factory``: their choice) or by
the model card (a registered architecture only, unless the user consents: :func:`card_factory`).

Code, read only with trust (``--trust-model``):
- a pickle (``torch.save`` of a whole module, PathFlowAI's extracted model, ``pickle.dump``):
  unpickling calls whatever the file names.
- a TorchScript archive: its ``__setstate__`` runs inside ``torch.jit.load`` and its ``forward``
  runs on every batch; both can call ``torch.from_file(path, shared=True)`` and so write any
  file. An archive is recognised by its entries (``constants.pkl``, ``code/``) without loading.
"""

from __future__ import annotations

import importlib
import pickle
import warnings
import zipfile

from .errors import PathvizError

TRUST_BOX = "Trust this model's code"  # the widgets' checkbox (_widgets/_model_form.py)
TRUST_HINT = f"pass --trust-model (or tick {TRUST_BOX!r} in the GUI) only if you trust its origin"
SAFE_WEIGHTS_ONLY_TORCH = (2, 6)  # torch.load(weights_only=True) could run code before 2.6


def file_kind(path: str) -> str:
    """ "safetensors", "torchscript", "torch zip" (torch.save), "pickle" or "unknown", from the
    file's first bytes and zip entries; nothing is unpickled or loaded."""
    from .model_card import safetensors_header

    if safetensors_header(path) is not None:
        return "safetensors"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "unknown"
        if any(_is_torchscript_entry(name) for name in names):
            return "torchscript"
        return "torch zip"
    with open(path, "rb") as f:
        head = f.read(2)
    # Protocol 2+ pickles start with PROTO n; torch.save's legacy format is such a pickle.
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def _is_torchscript_entry(name: str) -> bool:
    parts = name.split("/")
    return parts[-1] == "constants.pkl" or "code" in parts[:-1]


def load_torchscript(path: str, trust: bool):
    import torch

    if not trust:
        raise PathvizError(
            f"{path}: is a TorchScript archive, which is code (it can write files when "
            f"loaded or run); {TRUST_HINT}"
        )
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise PathvizError(
            f"{path}: not a loadable TorchScript model ({_first_line(exc)})"
        ) from exc


def read_weights(path: str, kind: str) -> dict:
    """Tensors by name from a safetensors file or a weights-only torch file (data, no code)."""
    import torch

    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as exc:
            raise PathvizError(
                f"{path}: not a readable safetensors file ({_first_line(exc)})"
            ) from exc
    damage = safetensors_damage(path) if kind == "unknown" else None
    if damage:  # not "not a state dict readable without unpickling code": say what it is
        raise PathvizError(f"{path}: the safetensors header is damaged ({damage})")
    _require_safe_weights_only(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only met an object: the file is code
        raise PathvizError(
            f"{path}: not plain weights: it holds pickled objects, which run code when loaded; "
            "pass --trust-model only if you trust its origin"
        ) from exc
    except Exception as exc:
        raise PathvizError(
            f"{path}: not a state dict readable without unpickling code ({type(exc).__name__})"
        ) from exc
    if not isinstance(state, dict):
        raise PathvizError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state_dict_of(state)


def safetensors_damage(path: str) -> str | None:
    """What is wrong with the header of a file that is named or starts like a safetensors
    file (8-byte length, then JSON) but whose header cannot be read; None for other files."""
    import json
    import os
    import struct

    from .model_card import MAX_SAFETENSORS_HEADER

    with open(path, "rb") as f:
        head = f.read(9)
    named = path.lower().endswith(".safetensors")
    if len(head) < 9 or not (named or head[8:9] == b"{"):
        return "shorter than its 8-byte header length" if named else None
    (length,) = struct.unpack("<Q", head[:8])
    size = os.path.getsize(path)
    if length > min(MAX_SAFETENSORS_HEADER, size - 8):
        return f"it declares a {length}-byte header in a {size}-byte file"
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"not valid JSON: {exc}"
    return None if isinstance(header, dict) else "not a JSON object"


def state_dict_of(obj: dict) -> dict:
    """The weights of a state dict, or of a checkpoint nesting them under "state_dict"."""
    if isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]  # Lightning-style checkpoints
    return obj


def is_state_dict(obj) -> bool:
    """A (possibly nested) non-empty mapping of names to tensors."""
    import torch

    if not isinstance(obj, dict):
        return False
    obj = state_dict_of(obj)
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _require_safe_weights_only(path: str) -> None:
    import torch

    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < SAFE_WEIGHTS_ONLY_TORCH:
        raise PathvizError(
            f"{path}: torch {torch.__version__} cannot read weights safely "
            "(weights_only could run code before torch 2.6); upgrade torch or use safetensors"
        )


def build_from_state_dict(
    path: str, factory: str, kwargs: dict, state: dict, label: str, adapt=None
):
    """``factory(**kwargs)`` with ``state`` loaded strictly; ``label`` names the factory's
    origin in messages (``--factory`` or the card's field). ``adapt(model, state)``, when
    given, returns the state to load into the built model (a known layout's keys renamed)."""
    build = import_factory(factory, label)
    try:
        model = build(**kwargs)
    except Exception as exc:
        raise PathvizError(
            f"{label} {factory}: building the model failed ({type(exc).__name__}: {exc})"
        ) from exc
    if not hasattr(model, "load_state_dict"):
        raise PathvizError(f"{label} {factory}: built {type(model).__name__}, not a torch model")
    if adapt is not None:
        state = adapt(model, state)
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
            else _first_line(exc)
        )
        raise PathvizError(f"{path}: the state dict does not fit {factory}: {detail}") from exc
    problems = [
        f"{what} keys {', '.join(keys[:5])}" + (" ..." if len(keys) > 5 else "")
        for what, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys))
        if keys
    ]
    if problems:
        raise PathvizError(f"{path}: the state dict does not fit {factory}: " + "; ".join(problems))
    return model


def import_factory(spec: str, label: str = "--factory"):
    """``package.module:function`` -> the callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise PathvizError(f"{label} {spec!r}: expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PathvizError(
            f"{label} {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc})"
        ) from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise PathvizError(f"{label} {spec!r}: {module_name} has no {attr}")
    if not callable(factory):
        raise PathvizError(f"{label} {spec!r}: {attr} is not callable")
    return factory


def user_factory(spec: str) -> str:
    """The ``module:attr`` of a factory the user typed (``--factory``, the widget's Factory
    field): a registered alias stands for its target; anything else is the user's choice."""
    from .architectures import resolve

    found = resolve(spec)
    return found.target if found is not None else spec


def card_factory(spec: str, where: str, trust: bool, typed: bool = True) -> str:
    """The ``module:attr`` to import for a factory a model card names; ``where`` names it in
    messages (``card.json: factory``). Decided by name, before anything is imported.

    A card travels with downloaded weights, so its author, not the user, chose the factory, and
    importing a module runs it. Without consent (``trust``) a card may name only a registered
    architecture (:mod:`.architectures`); anything else is refused naming the card and the
    module. ``typed``: whether the user may consent by typing the factory (``--factory``; not
    for a two-stage card, whose stages name their own)."""
    from .architectures import resolve, unregistered_hint

    found = resolve(spec)
    if found is not None:
        return found.target
    if trust:
        return spec
    module = spec.partition(":")[0]
    confirm = (
        f"--factory {spec} or --trust-model (widgets: the Factory field or {TRUST_BOX!r})"
        if typed
        else f"--trust-model (widgets: {TRUST_BOX!r})"
    )
    raise PathvizError(
        f"{where} {spec!r} is not a registered architecture{unregistered_hint(spec)}, and its "
        f"module {module} was not imported for it; register it (README: Safety) or, only if you trust "
        f"it, confirm it with {confirm}"
    )


def load_pickle(path: str, kind: str, trust: bool):
    """(module, transform_opts or None) from a pickle of a whole model, only when trusted."""
    import pickle

    import torch
    from torch import nn

    if not trust:
        raise PathvizError(f"{path}: is a pickle, which can run code when loaded; {TRUST_HINT}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        if kind != "pickle" or "magic number" not in str(exc):
            raise PathvizError(f"{path}: cannot load ({_first_line(exc)})") from exc
        obj = None  # a plain pickle.dump, not torch.save's format
    if obj is None:
        try:
            with open(path, "rb") as f:
                obj = pickle.load(f)  # noqa: S301 - the user trusts this file
        except Exception as exc:
            raise PathvizError(f"{path}: cannot load ({_first_line(exc)})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        return obj["model"], dict(obj.get("transform_opts") or {})
    if isinstance(obj, nn.Module):
        return obj, None
    raise PathvizError(f"{path}: the pickle holds {type(obj).__name__}, not a model")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def probe_torch_file(path: str, kind: str):
    """What a torch.save (or pickle) file holds, read as data only; None when reading it needs
    code (a pickled model), which :func:`load_pickle` reads with trust."""
    import pickle

    import torch

    _require_safe_weights_only(path)
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol 4": noise before the one line that says what it is.
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # A pickle of a module fails on its classes ("Unsupported global"), a plain pickle
        # (protocol 4+) on its opcodes; anything else that fails (a truncated file, a pickle of
        # no torch file) is not a model file, and must not be called one to trust.
        unpickling = isinstance(exc, pickle.UnpicklingError)
        if unpickling and ("Unsupported global" in str(exc) or kind in ("torch zip", "pickle")):
            return None
        lines = [ln.strip()[:120] for ln in str(exc).splitlines() if "Unsupported" in ln]
        lines += ["not a torch file" if unpickling else _first_line(exc)]
        reason = lines[0]
        raise PathvizError(f"{path}: not a model file ({reason})") from exc
