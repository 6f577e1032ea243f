"""UMAP's backends: umap-learn imported with its numba kernels cached on disk, the exact torch
k-NN, and the facts a cached layout is keyed by (library versions). Split from
:mod:`.embedding`, which re-exports these names."""

from __future__ import annotations

import warnings

import numpy as np


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _umap_versions() -> dict[str, str | None]:
    """Versions of the libraries whose numbers a cached layout holds (read without importing
    them: importing umap compiles numba kernels)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("umap-learn", "pynndescent", "scikit-learn"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def torch_knn(data: np.ndarray, k: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray, None]:
    """Exact euclidean k-NN (each point its own first neighbour, as umap-learn expects), in
    blocks on the GPU when CUDA is available, else on the CPU."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    points = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(device)
    norms = (points * points).sum(dim=1)
    # int32, as umap-learn's own search returns: numba then reuses the kernels it compiled.
    indices = np.empty((len(data), k), np.int32)
    distances = np.empty((len(data), k), np.float32)
    with torch.inference_mode():
        for start in range(0, len(points), batch):
            block = points[start : start + batch]
            # |a-b|^2 = |a|^2 + |b|^2 - 2ab: one matrix product per block.
            d2 = norms[start : start + batch, None] + norms[None, :] - 2.0 * block @ points.T
            d2[
                torch.arange(len(block), device=device),
                torch.arange(start, start + len(block), device=device),
            ] = -1.0
            _, idx = torch.topk(d2, k, dim=1, largest=False)
            # The expansion above loses precision for close pairs: recompute the k distances
            # directly (k is small), and order by them.
            exact = (block[:, None, :] - points[idx]).pow(2).sum(dim=2).sqrt()
            exact[:, 0] = 0.0  # the point itself
            exact, order = torch.sort(exact, dim=1, stable=True)  # self stays first
            idx = torch.gather(idx, 1, order)
            indices[start : start + len(block)] = idx.cpu().numpy()
            distances[start : start + len(block)] = exact.cpu().numpy()
    return indices, distances, None


def _import_umap():
    """umap-learn, with its numba kernels cached on disk across processes.

    Numba compiles umap-learn's kernels on first use in every process (~10-20 s) and caches only
    functions declared ``cache=True``, which most of umap-learn's are not. While umap is first
    imported, ``numba.njit``/``numba.jit`` default to ``cache=True`` and the cache lives in a
    persistent folder, so a second process loads the machine code instead of compiling it
    (measured: 13.7 s -> 5.6 s for a first fit of 3,000 points on 2 cores). numba's cache index
    files are pickles: the folder is a private, checked one (:mod:`._numba_cache`).
    """
    import sys

    from ._numba_cache import configure_numba_cache

    configure_numba_cache()
    if "umap" in sys.modules:
        return sys.modules["umap"]
    import numba
    from numba.core.errors import NumbaWarning

    # Kernels that numba cannot cache (closures built at run time) just compile as before.
    warnings.filterwarnings("ignore", message=".*[Cc]annot cache.*", category=NumbaWarning)
    original = numba.njit, numba.jit

    def caching(decorator):
        def wrapper(*args, **kwargs):
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return decorator(cache=True)(args[0])
            kwargs.setdefault("cache", True)
            return decorator(*args, **kwargs)

        return wrapper

    numba.njit, numba.jit = caching(original[0]), caching(original[1])
    try:
        import umap
    finally:
        numba.njit, numba.jit = original
    return umap
