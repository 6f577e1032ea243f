"""A private folder for numba's compile cache.

numba's cache index files (``*.nbi``) are pickles, loaded whenever a cached kernel is looked up:
whoever can write the cache folder can run code in every process that imports umap. The folder
pathviz uses (``$NUMBA_CACHE_DIR`` if set, else ``numba-<uid>`` under the cache root) is
therefore created with mode 0700, and used only when it is a folder owned by the user, writable
by nobody else, inside a parent where others cannot replace it (not world-writable, or sticky like
/tmp). Otherwise a :class:`PathvizWarning` says why, and this process compiles into
a fresh private temporary folder instead (slower first fits, nothing foreign read).
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path

from .errors import PathvizWarning


def numba_cache_dir() -> str:
    """The folder numba should cache in: checked, created 0700 if missing."""
    from .store import cache_root

    configured = os.environ.get("NUMBA_CACHE_DIR")
    uid = getattr(os, "getuid", lambda: None)()
    folder = Path(configured) if configured else cache_root() / f"numba-{uid}"
    if uid is None:  # no POSIX owners or modes to check (Windows)
        return str(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        problem = unsafe_folder(folder, uid)
    except OSError as exc:
        problem = f"cannot be created ({exc.strerror or exc})"
    if problem is None:
        return str(folder)
    fresh = tempfile.mkdtemp(prefix="pathviz-numba-")  # 0700, ours
    warnings.warn(
        f"{folder}: numba's cache folder {problem}, and numba's cache files are pickles that "
        f"run code when read; it is not used (kernels compile into {fresh} instead)",
        PathvizWarning,
        stacklevel=3,
    )
    return fresh


def unsafe_folder(folder: Path, uid: int) -> str | None:
    """Why ``folder`` is not safe to load pickles from, or None when it is."""
    info = os.stat(folder)  # follows a link: what matters is the folder written to
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    if info.st_uid != uid:
        return f"is owned by user {info.st_uid}, not by you ({uid})"
    if info.st_mode & 0o022:
        return f"is writable by other users (mode {stat.S_IMODE(info.st_mode):o})"
    parent = os.stat(folder.resolve().parent)
    if parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
        return "lies in a world-writable folder (anyone could replace it)"
    return None


def configure_numba_cache() -> str:
    """Points numba (imported or not yet) at :func:`numba_cache_dir`; returns the folder."""
    folder = numba_cache_dir()
    os.environ["NUMBA_CACHE_DIR"] = folder
    if "numba" in sys.modules:  # numba read the environment when imported: tell it directly
        from numba.core import config

        config.CACHE_DIR = folder
    return folder
