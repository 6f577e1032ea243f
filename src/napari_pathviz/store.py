"""Results on disk, keyed by content: computed arrays, and the resumable stores of long jobs.

Reopening a result is a file read; a crash mid-write never leaves a half file under a valid key
(writes go to a temporary name, then rename). Keys are hashes of what a result depends on: the
input arrays' bytes, the model's weights and architecture (:func:`model_digest`), the slide's
identity (:func:`slide_digest`) and every option that changes a number. A resumable store
(:func:`open_job_store`) records its job's key when it is created and is locked
(:class:`~napari_pathviz.store_lock.StoreLock`) while it is written.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PathvizError
from .store_lock import LOCK_NAME, StoreLock


def cache_root() -> Path:
    """$PATHVIZ_CACHE_DIR, else ~/.cache/napari-pathviz."""
    base = os.environ.get("PATHVIZ_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "napari-pathviz"


def array_key(*arrays: np.ndarray, **params) -> str:
    """A stable hash of arrays (dtype, shape, bytes) and JSON-able parameters."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


class ResultsStore:
    """Arrays by (kind, key) under one folder: ``{root}/{kind}/{key}.npy``."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else cache_root() / "results"

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.npy"

    def get(self, kind: str, key: str) -> np.ndarray | None:
        path = self.path(kind, key)
        if not path.exists():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed, not trusted

    def put(self, kind: str, key: str, array: np.ndarray) -> Path:
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per writer: two threads or processes never write one temporary file.
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp.npy")
        try:
            np.save(tmp, np.asarray(array))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


# --------------------------------------------------------------------------- content digests

# Per-object caches: id -> (weak reference, signature, digest). A hit needs the same object
# (the weak reference) and, for models, weights that were not modified since (the signature).
_MODEL_DIGESTS: dict[int, tuple[Any, Any, str]] = {}
_SLIDE_DIGESTS: dict[int, tuple[Any, str]] = {}
_FILE_DIGESTS: dict[tuple, str] = {}
_CLASS_SOURCES: dict[type, str] = {}

SLIDE_SAMPLE_PIXELS = 2048 * 2048  # a stored level up to this size is hashed whole
SLIDE_WINDOW = 256  # else five windows of it (corners and centre), and level 0's centre


def model_digest(model) -> str:
    """A hash of a torch model's weights and buffers (every state_dict tensor's name, dtype,
    shape and bytes) and of its architecture (:func:`_architecture`). Cached per model object
    while no tensor is modified in place or replaced (torch's version counters tell)."""
    state = model.state_dict()
    try:
        signature = tuple(
            (name, t.data_ptr(), t._version, str(t.dtype), tuple(t.shape))
            for name, t in state.items()
        )
    except RuntimeError:  # inference tensors keep no version counter: hash every time
        signature = None
    cached = _MODEL_DIGESTS.get(id(model))
    if signature is not None and cached and cached[0]() is model and cached[1] == signature:
        return cached[2]
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in state.items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    digest.update(_architecture(model).encode())
    value = digest.hexdigest()
    if signature is not None:
        if not (cached and cached[0]() is model):
            weakref.finalize(model, _MODEL_DIGESTS.pop, id(model), None)
        _MODEL_DIGESTS[id(model)] = (weakref.ref(model), signature, value)
    return value


def _tensor_bytes(tensor) -> memoryview:
    import torch

    t = tensor.detach()
    if t.is_quantized:
        t = t.dequantize()
    t = t.to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def _architecture(model) -> str:
    """Every module's name, class, plain settings (kernel sizes, flags, slopes...) and, for
    classes outside torch, the class's source: two factories (or factory keyword arguments)
    that build different computations from the same weights give different strings."""
    parts = []
    for name, module in model.named_modules():
        cls = type(module)
        parts.append(f"{name}:{cls.__module__}.{cls.__qualname__}")
        for key, value in sorted(vars(module).items()):
            if not key.startswith("_") and isinstance(value, (bool, int, float, str, tuple)):
                parts.append(f"  {key}={value!r}")
        code = getattr(module, "code", None)  # TorchScript: the compiled forward
        if isinstance(code, str):
            parts.append(code)
        elif not cls.__module__.startswith("torch."):
            parts.append(_class_source(cls))
    return "\n".join(parts)


# inspect.getsource parses with the ast module, which CPython 3.11 does not make safe across
# threads (seen as "SystemError: AST constructor recursion depth mismatch" in a dask worker with
# two threads hashing a model at once): one thread reads sources at a time.
_SOURCE_LOCK = threading.Lock()


def _class_source(cls: type) -> str:
    with _SOURCE_LOCK:
        return _class_source_locked(cls)


def _class_source_locked(cls: type) -> str:
    if cls not in _CLASS_SOURCES:
        sources = []
        for klass in cls.__mro__:
            if klass.__module__.startswith(("torch.", "builtins")):
                continue
            try:
                sources.append(inspect.getsource(klass))
            except (OSError, TypeError):
                sources.append(klass.__qualname__)
        _CLASS_SOURCES[cls] = "\n".join(sources)
    return _CLASS_SOURCES[cls]


def file_digest(path: str | os.PathLike) -> str:
    """A hash of a file's bytes; rehashed whenever the file's inode, size, mtime or ctime
    change (ctime cannot be set back by a copy that keeps times, unlike mtime)."""
    stat = os.stat(path)
    signature = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size)
    signature += (stat.st_mtime_ns, stat.st_ctime_ns)
    if signature not in _FILE_DIGESTS:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _FILE_DIGESTS[signature] = digest.hexdigest()
    return _FILE_DIGESTS[signature]


def slide_digest(slide) -> str:
    """The slide's identity and a sample of its content, without reading the whole slide.

    Hashed: the format, stored axes and microns per pixel; the shape and dtype of every level;
    the file's size (for a folder, its zarr metadata files); and pixels: the coarsest stored
    level whole when it has at most :data:`SLIDE_SAMPLE_PIXELS` pixels (a scanner file's
    thumbnail-sized level), otherwise five :data:`SLIDE_WINDOW`-px windows of it (corners
    and centre), plus a window at the centre of level 0. Another slide under the same name
    differs in at least one of these unless it repeats those very pixels. Cached per object.
    """
    cached = _SLIDE_DIGESTS.get(id(slide))
    if cached and cached[0]() is slide:
        return cached[1]
    digest = hashlib.blake2b(digest_size=16)
    meta = {
        "format": getattr(slide.source, "format", None),
        "axes": getattr(slide.source, "axes", None),
        "mpp": slide.mpp,
        "n_native": slide.n_native,
        "levels": [[int(s) for s in level.shape] for level in slide.levels],
        "dtype": str(slide.levels[0].dtype),
        "files": _stored_files(Path(slide.path)),
    }
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for window in _sample_windows(slide):
        pixels = np.ascontiguousarray(slide.read_region(*window))
        digest.update(f"{window}{pixels.shape}".encode())
        digest.update(memoryview(pixels).cast("B"))
    value = digest.hexdigest()
    _SLIDE_DIGESTS[id(slide)] = (weakref.ref(slide), value)
    weakref.finalize(slide, _SLIDE_DIGESTS.pop, id(slide), None)
    return value


def _stored_files(path: Path) -> list:
    """A file's size; for a folder (zarr), the bytes of its metadata files, at the top and
    one folder down (a folder per level), found without listing the chunk files below."""
    if path.is_file():
        return [path.stat().st_size]
    names = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
    found = []
    with os.scandir(path) as entries:
        folders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    for sub in ["", *folders]:
        for name in names:
            meta = path / sub / name
            if meta.is_file():
                found.append([f"{sub}/{name}", meta.read_text(errors="replace")])
    return found


def _sample_windows(slide) -> list[tuple[int, int, int, int, int]]:
    """(y, x, height, width, level) of the regions :func:`slide_digest` reads."""
    level = max(0, slide.n_native - 1)
    h, w = (int(s) for s in slide.levels[level].shape[:2])
    if h * w <= SLIDE_SAMPLE_PIXELS:
        windows = [(0, 0, h, w, level)]
    else:
        s = SLIDE_WINDOW
        corners = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)]
        windows = [(max(0, y), max(0, x), min(s, h), min(s, w), level) for y, x in corners]
    if level > 0:
        h0, w0 = slide.height, slide.width
        s = SLIDE_WINDOW
        windows.append((max(0, (h0 - s) // 2), max(0, (w0 - s) // 2), min(s, h0), min(s, w0), 0))
    return windows


# --------------------------------------------------------------------------- resumable job stores


@dataclass
class JobStore:
    """An open resumable store: its zarr group, whether it was reopened (holding finished work
    of the same job), and its lock, held until :meth:`release` (None in memory)."""

    root: Any
    reopened: bool
    lock: StoreLock | None = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def open_job_store(
    path,
    job: str,
    *,
    option: str,
    kind: str,
    differs: str,
    setup: Callable[[Any], None],
) -> JobStore:
    """The zarr group of a resumable job, locked for writing; in memory when ``path`` is None.

    A new store is created with ``attrs["job"]`` in its first write (zarr writes its metadata
    atomically), then ``setup(root)`` creates its arrays, then ``attrs["ready"]`` marks it
    complete. A store that holds the same job and is ready is reopened to resume. A store that
    holds no finished chunk (``done`` flags all false or absent) is re-initialised whatever job
    it names (a run that failed before finishing anything left nothing to keep). A store of
    another job with finished chunks, a file, and a folder that is not a pathviz store are
    refused, naming ``option`` and what ``differs`` between jobs. The caller must call
    :meth:`JobStore.release` when done writing (also on errors)."""
    import zarr

    if path is None:
        root = zarr.open_group(zarr.storage.MemoryStore(), mode="w", attributes={"job": job})
        setup(root)
        return JobStore(root, False)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PathvizError(f"{option} {path}: is a file, not a store folder")
    if path.is_dir() and not _looks_like_store(path):
        raise PathvizError(f"{option} {path}: not a store of pathviz {kind} (not a zarr folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PathvizError(f"{option} {path}: cannot create the store ({exc.strerror})") from None
    lock = StoreLock(path).acquire()
    try:
        root = _open_existing(path, option, kind)
        if root is not None and root.attrs.get("job") == job and root.attrs.get("ready"):
            return JobStore(root, True, lock)
        if root is not None and "job" not in root.attrs and not _unrecorded_store(path):
            raise PathvizError(
                f"{option} {path}: not a store of pathviz {kind} (a zarr of something else)"
            )
        if root is not None and _finished_chunks(root):
            if "job" not in root.attrs:
                raise PathvizError(
                    f"{path}: holds finished {kind} but no job record; "
                    f"remove it or choose another {option}"
                )
            raise PathvizError(
                f"{path}: holds {kind} of another job ({differs}); "
                f"remove it or choose another {option}"
            )
        _clear(path)
        root = zarr.open_group(str(path), mode="a", attributes={"job": job, "kind": kind})
        setup(root)
        root.attrs["ready"] = True
        return JobStore(root, False, lock)
    except BaseException:
        lock.release()
        raise


def _looks_like_store(path: Path) -> bool:
    """An empty folder, or one with zarr metadata (so that no user folder is ever cleared)."""
    names = {entry.name for entry in os.scandir(path)}
    return not names - {LOCK_NAME, LOCK_NAME + ".recover"} or bool(names & {"zarr.json", ".zgroup"})


def _open_existing(path: Path, option: str, kind: str):
    import zarr

    if not any(name.endswith(("zarr.json", ".zgroup")) for name in os.listdir(path)):
        return None
    check_store_metadata(path, f"{option} {path}", kind)
    try:
        return zarr.open_group(str(path), mode="a")
    except Exception as exc:
        raise PathvizError(f"{option} {path}: not a store of pathviz {kind} ({exc})") from None


# What a pathviz store's arrays hold: flags, indices and numbers. Any other type (an object
# array needs unpickling to read; zarr has no reader for a foreign type) is refused unread.
_NUMBER_TYPES = {"bool"} | {f"{k}{b}" for k in ("int", "uint") for b in (8, 16, 32, 64)}
_NUMBER_TYPES |= {"float16", "float32", "float64"}


def check_store_metadata(path: Path, where: str, kind: str) -> None:
    """Reads the metadata of a store's members (and the store's own) as plain JSON before zarr
    does, refusing in one line naming ``where`` a file that is damaged or an array of a type no
    pathviz store holds (a pickled object array, a foreign type)."""
    for meta_path in _metadata_files(path):
        member = meta_path.relative_to(path)
        try:
            meta = json.loads(meta_path.read_bytes())
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
            raise PathvizError(
                f"{where}: damaged store: {member} is unreadable ({reason}); "
                "remove the store or choose another"
            ) from None
        if not isinstance(meta, dict):
            raise PathvizError(f"{where}: damaged store: {member} is not a metadata object")
        dtype = _stored_type(meta, meta_path.name)
        if dtype is not None and dtype not in _NUMBER_TYPES:
            raise PathvizError(
                f"{where}: not a store of pathviz {kind}: {member.parent} holds {dtype!s:.40} "
                "values (pathviz stores hold numbers only; an object array would need unpickling)"
            )


def _metadata_files(path: Path) -> list[Path]:
    """zarr v3 and v2 metadata files of the store and its members (two levels: stores are flat)."""
    names = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
    found = [path / n for n in names if (path / n).is_file()]
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
            found += [Path(entry.path) / n for n in names if (Path(entry.path) / n).is_file()]
    return found


def _stored_type(meta: dict, name: str):
    """An array's element type in zarr v3 names (None for a group or attributes)."""
    if name == "zarr.json" and meta.get("node_type") == "array":
        dtype = meta.get("data_type")
        return dtype if isinstance(dtype, str) else json.dumps(dtype)
    if name == ".zarray":
        try:
            return np.dtype(meta.get("dtype")).name
        except (TypeError, ValueError):
            return str(meta.get("dtype"))
    return None


def _unrecorded_store(path: Path) -> bool:
    """A group without a job record that can only be a store of ours whose job was never
    recorded (stores made before the job was written first): empty, or holding ``done`` flags
    among arrays only. Anything else (a slide, a user's zarr) is never cleared. Read from the
    folder: zarr's member listing warns about the lock file."""
    members = [e for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]
    if not members:
        return True
    if "done" not in {e.name for e in members}:
        return False
    for member in members:
        try:
            meta = json.loads((Path(member.path) / "zarr.json").read_text())
        except (OSError, ValueError):
            return False
        if meta.get("node_type") != "array":
            return False
    return True


def _finished_chunks(root) -> int:
    if "done" not in root:
        return 0
    return int(np.count_nonzero(root["done"][:]))


def _clear(path: Path) -> None:
    """Removes everything in a store folder but its lock."""
    for entry in os.scandir(path):
        if entry.name.startswith(LOCK_NAME):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def remove_job_store(path: str | os.PathLike) -> None:
    """Deletes a store folder unless another process is writing it (then refused, as
    :class:`StoreLock` says)."""
    path = Path(path)
    if not path.is_dir():
        return
    with StoreLock(path):
        _clear(path)
        shutil.rmtree(path, ignore_errors=True)
