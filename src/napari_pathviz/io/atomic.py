"""Atomic output files and folders: written under a hidden temporary name in the same folder,
then renamed over the output in one step.

A failure (full disk, a value the format cannot hold, Ctrl-C) leaves the previous output as it
was and no temporary file behind; a reader never sees half a file. The temporary name lives in
the output's own folder because a rename is atomic only within one file system. File system
errors become one-line :class:`PathvizError`\\ s naming the output path.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from ..errors import PathvizError


def write_error(path: str | os.PathLike, exc: OSError) -> PathvizError:
    """``cannot write PATH: reason`` for an OSError met while writing ``path``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    return PathvizError(f"cannot write {path}: {reason}")


def temporary_sibling(path: Path, tag: str = "partial") -> Path:
    """A hidden name next to ``path`` that keeps its suffix, so that writers which choose the
    format by suffix (matplotlib, PIL, numpy) still choose the right one. It carries the
    writer's pid, so that a later write can tell a killed writer's leftover
    (:func:`remove_stale_partials`)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def partial_folder(path: Path) -> Path:
    """A hidden sibling folder to build ``path`` in, named as :func:`temporary_sibling` does."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")


_PARTIAL_PID = re.compile(r"\.partial-(\d+)-[0-9a-f]{8}")


def remove_stale_partials(path: Path) -> None:
    """Removes the hidden partial files and folders a killed writer of ``path`` left beside it
    (kill -9 runs no cleanup): those whose every writer pid is no longer running. A live
    writer's are kept."""
    prefix = f"{path.name.lstrip('.')}.partial-"
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.lstrip(".").startswith(prefix)):
            continue
        pids = [int(pid) for pid in _PARTIAL_PID.findall(entry.name)]
        if pids and not any(_running(pid) for pid in pids):
            _remove(Path(entry.path))


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or one we cannot ask about: keep its files
    return True


def make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    if not path.parent.is_dir():  # mkdir's exist_ok accepts a symlink to a file
        raise PathvizError(f"cannot write {path}: {path.parent} is not a folder")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write ``path``'s new content to; on a clean exit the
    temporary file is flushed to disk and renamed over ``path``, on an error it is removed
    and ``path`` keeps its previous content.

    >>> with atomic_file("table.parquet") as tmp:
    ...     df.to_parquet(tmp)
    """
    path = Path(path)
    if path.is_dir():
        raise PathvizError(f"cannot write {path}: it is a folder")
    make_parent(path)
    remove_stale_partials(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise PathvizError(f"cannot write {path}: the writer produced no file")
        _flush_to_disk(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        _remove(tmp)


@contextmanager
def atomic_folder(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a hidden sibling folder to build ``path`` in (e.g. a zarr store); on a clean
    exit it is renamed to ``path``, on an error it is removed.

    An existing ``path`` is an error unless ``overwrite``; then it is moved aside, the new
    folder renamed in, and the old one deleted: a failure at any step leaves the old folder.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise PathvizError(f"{path}: already exists; pass --overwrite to replace it")
    make_parent(path)
    remove_stale_partials(path)
    partial = partial_folder(path)
    try:
        yield partial
        if not partial.exists():
            raise PathvizError(f"cannot write {path}: the writer produced nothing")
        _swap_in(partial, path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        _remove(partial)


def save_figure(figure, out: str | os.PathLike) -> Path:
    """Saves a matplotlib figure atomically, in the format its suffix names."""
    with atomic_file(out) as tmp:
        figure.savefig(tmp)
    return Path(out)


def save_image(image, out: str | os.PathLike) -> Path:
    """Saves an (h, w[, c]) uint8 array atomically with Pillow, in the format its suffix names."""
    from PIL import Image

    with atomic_file(out) as tmp:
        Image.fromarray(image).save(tmp)
    return Path(out)


def _swap_in(partial: Path, path: Path) -> None:
    if not path.exists():
        partial.rename(path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    path.rename(old)
    try:
        partial.rename(path)
    except BaseException:
        old.rename(path)
        raise
    _remove(old)


def _flush_to_disk(tmp: Path) -> None:
    """fsync, so that a crash after the rename cannot leave an empty file under the name."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink(missing_ok=True)
