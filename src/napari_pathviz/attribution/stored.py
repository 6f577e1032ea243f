"""Attributions of many patches, chunk by chunk, each finished chunk written to a zarr store.

Nothing computed is lost: a cancel or a crash keeps every finished chunk, and a rerun of the same
job (same model weights, patches, background, method and options) resumes at the first
unfinished one. The chunking and each chunk's random seed belong to the job, so a resumed run
gives the same maps as an uninterrupted one.

Store layout (one zarr group): ``maps`` (rows, H, W) and, where the method has them,
``per_channel`` (rows, C, H, W), chunked one chunk of rows per zarr chunk; per row ``patch``
(index of the explained patch), ``target``, ``logits``, ``probabilities``,
``completeness_error``, ``output_delta``; ``done`` (one flag per chunk); attrs ``job`` (the
job's hash), ``method``, ``output``, ``n_patches`` and ``keys`` (the patches' ID/x/y/patch_size
when given). A row is one (patch, explained class) pair: one per patch, or one per class and
patch with target "each".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import Cancelled, PathvizError
from ..store import array_key, model_digest, open_job_store
from . import attribute
from ._target import NonFiniteOutput, forward_batched
from .result import AttributionResult

EACH = "each"
# 2: keyed by model_digest (weights and architecture); 3: our own DeepLIFT rules, shap's
# smoothing estimator, Grad-CAM before in-place changes: older stores hold other numbers
STORE_VERSION = 3


def explain(
    model,
    inputs,
    method: str,
    *,
    background=None,
    target="predicted",
    output: str = "none",
    store: str | os.PathLike | None = None,
    keys: pd.DataFrame | None = None,
    chunk_size: int = 16,
    seed: int = 0,
    keep_per_channel: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    **options,
) -> AttributionResult:
    """:func:`attribute` over ``inputs`` in chunks of ``chunk_size`` rows, each chunk stored
    in ``store`` (a zarr folder; in memory when None) as soon as it is finished.

    ``store`` "auto" means a folder of the user's results cache named by the job's hash.
    ``target``: "predicted", a class index, one index per patch, or "each" (every class of
    every patch; the result then has one row per (patch, class)). ``progress(done, total)``
    counts rows. ``keep_per_channel`` False stores only the channel-summed maps (a third of
    the space for RGB). Raises :class:`Cancelled` between chunks (and, where the method allows,
    inside one) with every finished chunk kept.
    """
    import torch

    if chunk_size < 1:
        raise PathvizError(f"--chunk-size must be positive, got {chunk_size}")
    if len(inputs) == 0:
        raise PathvizError("no patches to explain (the selection is empty)")
    _check_options(method, background, output, options)  # before a store exists
    if "eps" in options:  # Grad-CAM++'s denominator term: refused before a store exists too
        from .gradcam import checked_eps

        options["eps"] = checked_eps(options["eps"], method == "gradcampp")
    patch_of_row, target_of_row = _rows(model, inputs, target)
    n_rows = len(patch_of_row)
    n_chunks = -(-n_rows // chunk_size)
    job = _job_key(
        model,
        inputs,
        background,
        method,
        target,
        output,
        {**options, "keep_per_channel": keep_per_channel},
        chunk_size,
        seed,
        keys,
    )
    if store == "auto":  # the user's results cache: a rerun of the same job resumes
        from ..store import cache_root

        store = cache_root() / "attributions" / f"{job}.zarr"
    opened = _open_store(store, job, n_chunks)
    root = opened.root
    try:
        root.attrs.update(method=method, output=output, n_patches=len(inputs), n_rows=n_rows)
        if keys is not None:
            root.attrs["keys"] = _keys_json(keys, len(inputs))
        done = root["done"][:]
        finished_rows = sum(_chunk_len(c, chunk_size, n_rows) for c in np.flatnonzero(done))
        if progress is not None:
            progress(finished_rows, n_rows)
        metadata: dict = {}
        for c in np.flatnonzero(~done):
            if cancelled is not None and cancelled():
                raise Cancelled("attribution cancelled; finished chunks are kept")
            rows = slice(c * chunk_size, c * chunk_size + _chunk_len(c, chunk_size, n_rows))
            chunk_options = dict(options)
            if method == "gradient":
                chunk_options["seed"] = _chunk_seed(seed, c)
            chunk_options["cancelled"] = cancelled  # every method checks it between its batches
            if progress is not None:
                size, base = rows.stop - rows.start, finished_rows
                chunk_options["progress"] = lambda d, t, size=size, base=base: progress(
                    base + int(size * d / max(t, 1)), n_rows
                )
            index = patch_of_row[rows]
            chunk_inputs = inputs[torch.as_tensor(index, device=inputs.device)]
            try:
                result = _attribute_backing_off(
                    options,
                    chunk_options,
                    model,
                    chunk_inputs,
                    method,
                    background=background,
                    target=target_of_row if isinstance(target_of_row, str) else target_of_row[rows],
                    output=output,
                )
            except Cancelled:
                raise Cancelled("attribution cancelled; finished chunks are kept") from None
            except NonFiniteOutput as exc:
                raise _non_finite_patches(model, chunk_inputs, index, keys, exc) from None
            except PathvizError:
                raise
            except Exception as exc:  # the user's model: one line, finished chunks kept
                raise _chunk_failure(exc, c, len(done), index, keys, store) from exc
            if not keep_per_channel:
                result.per_channel = None
            _write_chunk(root, rows, index, result, n_rows, chunk_size)
            root["done"][c] = True
            finished_rows += rows.stop - rows.start
            metadata = result.metadata
            if progress is not None:
                progress(finished_rows, n_rows)
        result = _result_from(root, method, in_memory=True)
        result.metadata = {**root.attrs.get("metadata", {}), **metadata, "store": _where(store)}
        return result
    finally:
        opened.release()  # the store's lock


def open_attributions(path: str | os.PathLike) -> tuple[AttributionResult, pd.DataFrame | None]:
    """A finished store as a result whose ``maps`` (and ``per_channel``) stay on disk, read
    lazily, and the explained patches' keys (None when the store has none)."""
    import zarr

    from ..store import check_store_metadata

    path = Path(path)
    if not path.is_dir():
        raise PathvizError(f"{path}: no attributions store (a folder written by pathviz)")
    check_store_metadata(path, str(path), "attributions")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise PathvizError(f"{path}: not an attributions store ({exc})") from None
    if "job" not in root.attrs or "done" not in root:
        raise PathvizError(f"{path}: not an attributions store (no job or done flags)")
    done = root["done"][:]
    if not done.all() or "maps" not in root:
        raise PathvizError(
            f"{path}: unfinished ({int(done.sum())} of {len(done)} chunks done); "
            "rerun the same command to finish it"
        )
    result = _result_from(root, root.attrs["method"], in_memory=False)
    keys = root.attrs.get("keys")
    return result, (pd.DataFrame(keys) if keys else None)


def _default_batch(method: str, device) -> int:
    """The batch size a method runs with when none is given."""
    if method == "gradient":
        from .gradients import default_batch_size

        return default_batch_size(device)
    if method == "deep":
        from .deeplift import DEFAULT_BATCH_SIZE

        return DEFAULT_BATCH_SIZE
    from .gradcam import DEFAULT_BATCH_SIZE

    return DEFAULT_BATCH_SIZE


def _attribute_backing_off(options: dict, chunk_options: dict, model, inputs, method, **kwargs):
    """attribute() on one chunk; on device out-of-memory the batch size is halved (for this
    chunk and the ones after it: ``options`` is updated) and the chunk computed again."""
    import warnings

    import torch

    from ..errors import PathvizWarning

    while True:
        try:
            return attribute(model, inputs, method, **kwargs, **chunk_options)
        except torch.OutOfMemoryError:
            batch = chunk_options.get("batch_size") or _default_batch(method, inputs.device)
            if batch <= 1:
                raise PathvizError("out of device memory even with one patch per batch") from None
            if inputs.device.type == "cuda":
                torch.cuda.empty_cache()
            options["batch_size"] = chunk_options["batch_size"] = max(1, batch // 2)
            warnings.warn(
                f"out of device memory: batch size lowered to {batch // 2}",
                PathvizWarning,
                stacklevel=2,
            )


def _non_finite_patches(model, chunk_inputs, index, keys, error) -> PathvizError:
    """The error naming which explained patches (by key when known) the model gives NaN or
    infinity for; the chunk is run again because a method's batches hide their offsets. When
    the chunk's own outputs are finite, the references were at fault."""
    import torch

    from ..patches import describe_patches

    try:
        with torch.no_grad():
            forward_batched(model, chunk_inputs, 16)
    except NonFiniteOutput as exc:
        patches = index[exc.rows]
        named = (
            describe_patches(keys, patches)
            if keys is not None
            else "rows " + ", ".join(map(str, patches[:3]))
        )
        return PathvizError(
            f"the model's output is NaN or infinite for {len(patches)} explained patches "
            f"({named}); check the model and its inputs"
        )
    return PathvizError(f"{error} among the background (reference) patches")


def _chunk_failure(exc, chunk, n_chunks, index, keys, store) -> PathvizError:
    from ..patches import describe_patches

    patches = describe_patches(keys, index) if keys is not None else f"rows {index[0]}-{index[-1]}"
    return PathvizError(
        f"the model failed on chunk {chunk + 1} of {n_chunks} (patches {patches}): "
        f"{type(exc).__name__}: {str(exc).strip() or 'no message'}; finished chunks are kept "
        f"in {_where(store) or 'the results cache'}, a rerun resumes from there"
    )


def _rows(model, inputs, target):
    """(patch of each row, target of each row or the string "predicted")."""
    n = len(inputs)
    if isinstance(target, str) and target == EACH:
        import torch

        from ._target import forward_checked

        with torch.no_grad():
            n_classes = forward_checked(model.eval(), inputs[:1]).shape[1]
        return np.repeat(np.arange(n), n_classes), np.tile(np.arange(n_classes), n)
    if isinstance(target, str):
        return np.arange(n), target
    targets = np.broadcast_to(np.asarray(target, np.int64), (n,)).copy()
    import torch

    from ._target import forward_checked

    with torch.no_grad():  # a class out of range is refused before the store is created
        k = forward_checked(model.eval(), inputs[:1]).shape[1]
    bad = targets[(targets < 0) | (targets >= k)]
    if bad.size:
        raise PathvizError(
            f"target class {bad[0]} is out of range: the model has {k} outputs (0-{k - 1})"
        )
    return np.arange(n), targets


def _check_options(method: str, background, output: str, options: dict) -> None:
    """The choices :func:`attribute` would refuse at the first chunk, refused up front."""
    from . import METHODS
    from ._target import OUTPUTS
    from .rollout import check_rollout_options

    if method == "rollout":
        check_rollout_options(options.get("head_fusion", "mean"), options.get("discard_ratio", 0.0))

    if method not in METHODS:
        raise PathvizError(f"-mth/--method must be one of {', '.join(METHODS)}, got {method!r}")
    if method in ("gradient", "deep") and background is None:
        raise PathvizError(f"method {method!r} needs background patches (references)")
    if output not in OUTPUTS:
        raise PathvizError(f"-p/--output must be one of {', '.join(OUTPUTS)}, got {output!r}")


def _chunk_len(c: int, chunk_size: int, n_rows: int) -> int:
    return min(chunk_size, n_rows - c * chunk_size)


def _chunk_seed(seed: int, chunk: int) -> int:
    """A seed of its own for each chunk, so that a resumed chunk draws what it drew before."""
    return int(np.random.SeedSequence([seed, int(chunk)]).generate_state(1)[0])


def _job_key(model, inputs, background, method, target, output, options, chunk_size, seed, keys):
    """What a store's content depends on: the weights, the input and background tensors (as
    the model sees them), the method and every option that changes a number."""
    arrays = [inputs.detach().float().cpu().numpy()]
    if background is not None:
        arrays.append(background.detach().float().cpu().numpy())
    settings = {k: v for k, v in options.items() if not callable(v)}
    settings.pop("batch_size", None)  # batch size changes speed, not results
    if settings.get("eps") == 0:  # Grad-CAM++'s default: stores made before the option resume
        settings.pop("eps")
    # rollout's defaults (the paper's): stores made before the options resume
    if settings.get("head_fusion") == "mean":
        settings.pop("head_fusion")
    if settings.get("discard_ratio") == 0:
        settings.pop("discard_ratio")
    return array_key(
        *arrays,
        version=STORE_VERSION,
        model=model_digest(model),  # weights, buffers and architecture
        method=method,
        target=target if isinstance(target, str) else np.asarray(target).tolist(),
        output=output,
        options=settings,
        chunk_size=chunk_size,
        seed=seed,
        keys=None if keys is None else _keys_json(keys, len(inputs)),
    )


def _keys_json(keys: pd.DataFrame, n: int) -> dict:
    columns = [c for c in ("ID", "x", "y", "patch_size") if c in keys.columns]
    if len(keys) != n:
        raise PathvizError(f"attribution keys: {len(keys)} rows for {n} patches")
    return {
        c: keys[c].astype(str).tolist() if c == "ID" else keys[c].astype(int).tolist()
        for c in columns
    }


def _open_store(path, job: str, n_chunks: int):
    """The job's store, locked until released: reopened when it holds the same job."""

    def setup(root) -> None:
        root.create_array("done", shape=(n_chunks,), chunks=(n_chunks,), dtype="bool", fill_value=0)

    return open_job_store(
        path,
        job,
        option="--attributions-out",
        kind="attributions",
        differs="other model, patches, background, method or options",
        setup=setup,
    )


def _write_chunk(root, rows: slice, index, result: AttributionResult, n_rows, chunk_size):
    """Creates the arrays at the first finished chunk (their shapes come from the method) and
    writes this chunk's rows into them."""
    arrays = {
        "maps": np.asarray(result.maps, np.float32),
        "logits": np.asarray(result.logits, np.float32),
        "probabilities": np.asarray(result.probabilities, np.float32),
        "patch": np.asarray(index, np.int64),
        "target": np.asarray(result.targets, np.int64),
        "completeness_error": _or_nan(result.completeness_error, len(index)),
        "output_delta": _or_nan(result.output_delta, len(index)),
    }
    if result.per_channel is not None:
        arrays["per_channel"] = np.asarray(result.per_channel, np.float32)
    for name, values in arrays.items():
        if name not in root:
            root.create_array(
                name,
                shape=(n_rows, *values.shape[1:]),
                chunks=(chunk_size, *values.shape[1:]),
                dtype=values.dtype,
                fill_value=np.nan if values.dtype.kind == "f" else 0,
            )
        root[name][rows] = values
    if "metadata" not in root.attrs:
        root.attrs["metadata"] = _jsonable(result.metadata)


def _or_nan(values, n: int) -> np.ndarray:
    return np.full(n, np.nan, np.float32) if values is None else np.asarray(values, np.float32)


def _jsonable(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool, type(None)))}


def _result_from(root, method: str, in_memory: bool) -> AttributionResult:
    def load(name):
        if name not in root:
            return None
        return root[name][:] if in_memory or name not in ("maps", "per_channel") else root[name]

    error = load("completeness_error")
    delta = load("output_delta")
    return AttributionResult(
        method=method,
        maps=load("maps"),
        targets=load("target"),
        logits=load("logits"),
        probabilities=load("probabilities"),
        per_channel=load("per_channel"),
        completeness_error=None if error is None or np.isnan(error).all() else error,
        output_delta=None if delta is None or np.isnan(delta).all() else delta,
        patch_index=load("patch"),
        metadata=dict(root.attrs.get("metadata", {})),
    )


def _where(store) -> str | None:
    return None if store is None else str(store)
