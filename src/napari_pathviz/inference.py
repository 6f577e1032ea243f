"""Predictions and embeddings for every patch of a slide: batched reads overlapped with the model.

Patches are read by a thread pool a few batches ahead of the model (reading is I/O and codec work
that releases the GIL), the model runs in large batches (on the GPU when there: channels_last,
optional bf16), and every finished batch is written to a results store (zarr) with a done flag,
so an interrupted job resumes without recomputing finished batches.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from .classes import prediction_frame
from .errors import Cancelled, PathvizError
from .models import ModelSpec, check_model
from .patches import KEY_COLUMNS, PatchTable, raise_on_non_finite
from .slide import Slide
from .slide_check import MISSING_TILES_COLUMN
from .store import array_key, model_digest, open_job_store, slide_digest


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PathvizError(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise PathvizError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def read_patch_batch(slide: Slide, df: pd.DataFrame, level: int = 0) -> np.ndarray:
    """(B, s, s, 3) uint8 patches of the table rows, read at ``level`` (s = size / downsample)."""
    ds = slide.downsamples[level]
    patches = []
    for x, y, p in zip(df["x"], df["y"], df["patch_size"], strict=True):
        side = max(1, round(p / ds))
        patches.append(slide.read_region(round(y / ds), round(x / ds), side, side, level)[..., :3])
    sizes = {patch.shape for patch in patches}
    if len(sizes) > 1:
        raise PathvizError(
            f"{slide.path}: patches of different sizes in one batch {sizes}; "
            "extract one patch size at a time"
        )
    return np.stack(patches)


STORE_VERSION = 2  # 2: keys by weights and slide content, not by the model file's name


def job_key(
    table: PatchTable,
    spec: ModelSpec,
    level: int,
    batch_size: int = 0,
    embeddings: bool = True,
    *,
    slide: Slide | None = None,
    bf16: bool = False,
) -> str:
    """What a results store's content and layout depend on: the patches (keys), the slide's
    identity and sampled content, the model's weights and architecture (not its file name or
    time), every preprocessing option, the level, bf16 (as it takes effect: on CUDA), the
    batch size (one done flag per batch) and whether embeddings are kept."""
    keys = table.df[list(KEY_COLUMNS)].astype(str).to_numpy().astype("U")
    meta = {k: v for k, v in spec.metadata.items() if k in ("factory", "factory_kwargs", "kind")}
    return array_key(
        np.ascontiguousarray(keys),
        version=STORE_VERSION,
        model=model_digest(spec.model),
        model_metadata=meta,
        slide=None if slide is None else slide_digest(slide),
        level=level,
        input_size=spec.input_size,
        resize_mode=spec.resize_mode,
        mean=spec.mean,
        std=spec.std,
        order=spec.channel_order,
        activation=spec.activation,
        feature_layer=spec.feature_layer,
        bf16=bool(bf16),
        batch_size=batch_size,
        embeddings=embeddings,
    )


def check_one_patch_size(slide: Slide, table: PatchTable, level: int = 0) -> None:
    """Refuses a table whose patches read at ``level`` would not all be one size (checked
    before a store is created, so that the corrected rerun finds no store of a failed job)."""
    ds = slide.downsamples[level]
    sides = sorted({max(1, round(int(p) / ds)) for p in table.df["patch_size"].unique()})
    if len(sides) > 1:
        sizes = sorted({int(p) for p in table.df["patch_size"].unique()})
        raise PathvizError(
            f"{table.source}: patches of different sizes ({', '.join(map(str, sizes))} px); "
            "extract one patch size at a time"
        )


def extract(
    slide: Slide,
    table: PatchTable,
    spec: ModelSpec,
    *,
    store: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str = "auto",
    workers: int = 2,
    level: int = 0,
    bf16: bool = False,
    embeddings: bool = True,
    allow_missing_tiles: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> pd.DataFrame:
    """Runs the model on every patch; returns the key columns, ``prob_<class name>`` (the
    model's class names, from its card or options; ``prob_<i>`` without), ``y_pred`` (the
    predicted class's name; its index without names), ``y_pred_index`` and ``feat_{j}`` (with
    ``embeddings``): :func:`napari_pathviz.classes.prediction_frame`.
    A patch on a TIFF tile the file does not hold is refused, or with ``allow_missing_tiles``
    read as blank and marked in a boolean ``missing_tiles`` column (and a warning).
    ``progress(done, total, patches_per_second)``."""
    import torch

    if batch_size < 1:
        raise PathvizError(f"--batch-size must be positive, got {batch_size}")
    if not 0 <= level < len(slide.levels):
        raise PathvizError(f"--level {level}: the slide has levels 0-{len(slide.levels) - 1}")
    if not len(table):
        raise PathvizError(f"{table.source}: no patches to run the model on")
    table.check_inside(slide.height, slide.width)
    check_one_patch_size(slide, table, level)
    df = table.df.reset_index(drop=True)
    on_missing_tiles = _patches_on_missing_tiles(slide, df, level, allow_missing_tiles)
    device = resolve_device(device)
    first = read_patch_batch(slide, df.iloc[:1], level)
    n_classes = check_model(spec, first.shape[1], device)
    model = spec.model.to(device).eval()
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    features: list = []
    hook = job = None
    if embeddings:
        module, where = spec.feature_module()
        hook = module.register_forward_hook(
            lambda _m, inputs, output: features.append(inputs[0] if where == "input" else output)
        )
    try:
        dim = _feature_dim(spec, first, device, features) if embeddings else 0
        n, n_batches = len(df), -(-len(df) // batch_size)
        key = job_key(
            table,
            spec,
            level,
            batch_size,
            embeddings,
            slide=slide,
            bf16=bf16 and device.startswith("cuda"),
        )
        job = _open_store(store, key, n, n_classes, dim, batch_size, n_batches)
        root = job.root
        done = root["done"][:]
        todo = [b for b in range(n_batches) if not done[b]]
        finished = int(done.sum())
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            ahead = max(2, 2 * workers)
            pending = {}

            def submit(j: int) -> None:
                if j < len(todo):
                    b = todo[j]
                    pending[j] = pool.submit(
                        read_patch_batch,
                        slide,
                        df.iloc[b * batch_size : (b + 1) * batch_size],
                        level,
                    )

            for j in range(ahead):
                submit(j)
            for j, b in enumerate(todo):
                if cancelled is not None and cancelled():
                    raise Cancelled("extraction cancelled; finished batches are kept")
                patches = pending.pop(j).result()
                submit(j + ahead)
                keys = df.iloc[b * batch_size : (b + 1) * batch_size]
                try:
                    probs, feats = _forward(spec, model, patches, device, bf16, features, keys)
                except (PathvizError, Cancelled):
                    raise
                except Exception as exc:  # the user's model: one line, finished batches kept
                    raise _batch_failure(exc, b, n_batches, keys, finished, store) from exc
                rows = slice(b * batch_size, b * batch_size + len(patches))
                root["probs"][rows] = probs
                if embeddings:
                    root["feats"][rows] = feats
                root["done"][b] = True
                finished += 1
                if progress is not None:
                    elapsed = time.perf_counter() - started
                    rate = (j + 1) * batch_size / elapsed if elapsed > 0 else 0.0
                    progress(min(finished * batch_size, n), n, rate)
        predictions = prediction_frame(root["probs"][:], spec.class_names, spec.activation)
        parts = [df[list(KEY_COLUMNS)].copy(), predictions]
        if embeddings:
            parts.append(pd.DataFrame(root["feats"][:], columns=[f"feat_{j}" for j in range(dim)]))
        result = pd.concat(parts, axis=1)
        if allow_missing_tiles:
            result[MISSING_TILES_COLUMN] = on_missing_tiles
        # What the columns are called, for the widget's heatmap and labels (pandas keeps
        # attrs through copies; a file does not, its column names say it).
        names = spec.class_names
        result.attrs["class_names"] = list(names) if names else None
        return result
    finally:
        if hook is not None:
            hook.remove()
        if job is not None:
            job.release()  # the store's lock


def _patches_on_missing_tiles(slide: Slide, df: pd.DataFrame, level: int, allow: bool):
    """The rows on tiles missing from a TIFF: refused (before any store exists), or, when
    allowed, a warning and the mask of the rows to mark."""
    import warnings

    from .errors import PathvizWarning
    from .slide_check import ALLOW_MISSING_TILES, patches_on_missing_tiles

    mask, first = patches_on_missing_tiles(slide, df, level)
    if first is None:
        return mask
    if not allow:
        raise PathvizError(
            f"{first}; such a tile reads as black. {ALLOW_MISSING_TILES} reads it as blank "
            f"and marks the rows in a column {MISSING_TILES_COLUMN!r}"
        )
    warnings.warn(
        f"{slide.path}: {int(mask.sum())} of {len(mask)} patches lie on missing tiles, read as "
        f"blank: marked True in the column {MISSING_TILES_COLUMN!r}",
        PathvizWarning,
        stacklevel=3,
    )
    return mask


def _batch_failure(exc, batch, n_batches, keys, finished, store) -> PathvizError:
    from .patches import describe_patches

    return PathvizError(
        f"the model failed on batch {batch + 1} of {n_batches} "
        f"(patches {describe_patches(keys, range(len(keys)), limit=1)}): "
        f"{type(exc).__name__}: {str(exc).strip() or 'no message'}; the {finished} finished "
        f"batches are kept in {store}, a rerun resumes from there"
    )


def _feature_dim(spec: ModelSpec, patch: np.ndarray, device: str, features: list) -> int:
    import torch

    with torch.inference_mode():
        spec.model(spec.preprocess(patch, device))
    dim = int(np.prod(features[-1].shape[1:]))
    features.clear()
    return dim


def _forward(spec, model, patches, device, bf16, features, keys):
    """Probabilities and features of one batch; ``keys`` (the batch's table rows) name the
    patches when the model's output is not finite (a NaN stored would pass as a result)."""
    import torch

    x = spec.preprocess(patches, device)
    if device.startswith("cuda"):
        x = x.contiguous(memory_format=torch.channels_last)
    with (
        torch.inference_mode(),
        torch.autocast(
            device_type="cuda", dtype=torch.bfloat16, enabled=bf16 and device.startswith("cuda")
        ),
    ):
        logits = model(x)
    raise_on_non_finite(logits.float().cpu().numpy(), keys, "output")
    probs = spec.probabilities(logits).cpu().numpy().astype(np.float32)
    feats = None
    if features:
        feats = features.pop().float().flatten(1).cpu().numpy()
        features.clear()
        raise_on_non_finite(feats, keys, "features (embedding)")
    return probs, feats


def _open_store(path, key, n, n_classes, dim, batch_size, n_batches):
    """The results store of this job, locked: reopened to resume when it holds the same job."""

    def setup(root) -> None:
        chunks = (batch_size, n_classes)
        root.create_array(
            "probs", shape=(n, n_classes), chunks=chunks, dtype="float32", fill_value=np.nan
        )
        if dim:
            root.create_array(
                "feats",
                shape=(n, dim),
                chunks=(batch_size, dim),
                dtype="float32",
                fill_value=np.nan,
            )
        root.create_array(
            "done", shape=(n_batches,), chunks=(max(1, n_batches),), dtype="bool", fill_value=False
        )

    return open_job_store(
        path,
        key,
        option="--store",
        kind="results",
        differs="other patches, slide, model weights, preprocessing, level, batch size or embeddings",
        setup=setup,
    )
