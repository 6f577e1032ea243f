"""Cohort-scale UMAP bench (``bench/umap_bench.py --n 1000000`` runs this): our fit on a sample +
transform vs umap-learn's full fit of every point, in one run, each in its own process.

Claims under test (issue 12, "Scale"): 1,000,000 x 512 float32 patch embeddings -> 2-D UMAP in at
most 0.25 of umap-learn's full-fit wall time, trustworthiness (k = 15, the same 2,000 rows of both
embeddings, against the 512-D features) within 0.01 of it; peak RSS of loading the cohort plus our
UMAP under 4 GB.

Steps:

1. The parent makes ``umap_bench.make_features(n, dims)`` (20 clusters in a 16-D subspace + noise),
   writes them as a cohort Parquet file (``ID`` = 500 slides, ``x``, ``y``, ``patch_size`` and one
   float32 column per feature, named "0".."511" as in PathFlowAI's embeddings), keeps the 2,000
   rows it will score, and frees the rest.
2. Child "ours" (a fresh process, so its peak RSS is its own): loads the Parquet through
   ``napari_pathviz.cohort_data.load_cohort_embeddings`` when that exists, else with pyarrow
   reading only the feature columns (column projection), row group by row group into one float32
   array; warms numba up on 12,000 of the rows (untimed); then times
   ``umap_embed(features, UMAPParams(n_components=2), use_cache=False)``, which above 200,000
   points fits on a 100,000-point sample and transforms the rest.
3. Child "plain": loads the same way, warms up on 5,000 rows (untimed), times
   ``umap.UMAP(n_components=2).fit_transform(features)`` (no PCA, all points).
4. The parent scores both with ``sklearn.manifold.trustworthiness(k=15)`` on the same 2,000 rows,
   and with ``napari_pathviz.embedding.knn_preservation(k=15)``: the share of each of those
   2,000 rows' 15 true nearest neighbours (exact, among all N points of the features) that are
   among its 15 nearest in the layout. Trustworthiness hardly moves when the layout is sampled;
   this is what the sample loses (issue 21 item 4).

``--fit-sample`` may name several sizes (comma-separated): "ours" runs once per size, against
one full fit of umap-learn.

Both children use random_state=None (umap-learn's parallel default), so numbers vary a little run
to run. Each child reports wall time, process CPU time (all threads; CPU / wall well under the
core count means the cores were shared with other work) and ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SLIDES = 500
ROW_GROUP = 100_000
SCORED = 2_000
RATIO_TARGET = 0.25
TRUST_TOLERANCE = 0.01
RSS_TARGET_GB = 4.0


def write_cohort(path: Path, features: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(features)
    slide = np.arange(n) * SLIDES // n
    within = np.arange(n) - np.searchsorted(slide, slide)
    side = int(np.ceil(np.sqrt(n / SLIDES)))
    names = [str(i) for i in range(features.shape[1])]
    writer = None
    for start in range(0, n, ROW_GROUP):
        stop = min(n, start + ROW_GROUP)
        columns = {
            "ID": pa.array([f"slide_{s:04d}" for s in slide[start:stop]]),
            "x": pa.array((within[start:stop] % side) * 224, pa.int32()),
            "y": pa.array((within[start:stop] // side) * 224, pa.int32()),
            "patch_size": pa.array(np.full(stop - start, 224, np.int32)),
        }
        for j, name in enumerate(names):
            columns[name] = pa.array(features[start:stop, j])
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def load_features(path: Path) -> tuple[np.ndarray, str]:
    """The feature matrix of the cohort file, and how it was read."""
    try:
        from napari_pathviz.cohort_data import load_cohort_embeddings
    except ImportError:
        load_cohort_embeddings = None
    if load_cohort_embeddings is not None:
        cohort = load_cohort_embeddings(path)
        features = getattr(cohort, "features", cohort)
        return np.asarray(features, np.float32), "napari_pathviz.cohort_data.load_cohort_embeddings"
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    names = [n for n in file.schema_arrow.names if n.isdigit()]
    out = np.empty((file.metadata.num_rows, len(names)), np.float32)
    row = 0
    for group in range(file.num_row_groups):
        table = file.read_row_group(group, columns=names)  # column projection
        for j, name in enumerate(names):
            out[row : row + table.num_rows, j] = table.column(name).to_numpy()
        row += table.num_rows
        del table
    return out, "pyarrow, feature columns only, row group by row group"


def child(kind: str, parquet: Path, out: Path, fit_sample: int | None) -> None:
    sys.stdout.reconfigure(line_buffering=True)
    t0 = time.perf_counter()
    features, how = load_features(parquet)
    t_load = time.perf_counter() - t0
    print(f"[{kind}] loaded {features.shape} via {how} in {t_load:.1f} s")
    from napari_pathviz.embedding import UMAPParams, _import_umap, umap_embed
    from napari_pathviz.store import ResultsStore

    umap = _import_umap()
    store = ResultsStore(out.parent / f"results-{kind}")
    params = UMAPParams(n_components=2, fit_sample=fit_sample)
    marks: list[tuple[str, float]] = []

    def progress(fraction: float, stage: str) -> None:
        name = stage.split(":")[0] if "epochs" not in stage else stage.rsplit(":", 1)[0]
        if not marks or marks[-1][0] != name:
            marks.append((name, time.perf_counter() - t_run))
            print(f"[{kind}] {time.perf_counter() - t_run:7.1f} s {fraction:.3f} {stage}")

    if kind == "ours":
        warm = UMAPParams(n_components=2, fit_sample=5_000)
        t = time.perf_counter()
        umap_embed(features[:12_000], warm, store=store, use_cache=False)
        print(f"[ours] warm-up (12,000 rows, fit on 5,000): {time.perf_counter() - t:.1f} s")
    else:
        t = time.perf_counter()
        umap.UMAP(n_components=2).fit_transform(features[:5_000])
        print(f"[plain] warm-up (5,000 rows): {time.perf_counter() - t:.1f} s")
    c0, t_run = time.process_time(), time.perf_counter()
    if kind == "ours":
        coords = umap_embed(features, params, store=store, use_cache=False, progress=progress)
    else:
        coords = umap.UMAP(n_components=2).fit_transform(features)
    wall, cpu = time.perf_counter() - t_run, time.process_time() - c0
    np.save(out, np.asarray(coords, np.float32))
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {"kind": kind, "wall": wall, "cpu": cpu, "load": t_load, "rss_gb": rss_gb, "how": how}
    print("RESULT " + json.dumps(result))


def run_child(kind: str, parquet: Path, out: Path, fit_sample: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--parquet", str(parquet), "--out", str(out)]
    if fit_sample is not None:
        cmd += ["--fit-sample", str(fit_sample)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    result = None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    if proc.wait() != 0 or result is None:
        raise SystemExit(f"{kind} child failed (exit {proc.returncode})")
    return result


def score(results: dict, parquet: Path, scored: np.ndarray, high: np.ndarray, tmp: Path) -> None:
    """Trustworthiness and k-NN preservation (k = 15) of every run's coordinates, on the same
    rows; the features are read again here (the children's RSS is their own)."""
    from sklearn.manifold import trustworthiness

    from napari_pathviz.embedding import knn_preservation

    features, _ = load_features(parquet)
    for name, result in results.items():
        coords = np.load(tmp / f"coords-{name}.npy")
        result["trust"] = float(trustworthiness(high, coords[scored], n_neighbors=15))
        result["knn"] = knn_preservation(features, coords, k=15, queries=scored)
        print(f"{name}: {json.dumps(result)}")


def cohort_main(n: int, dims: int, fit_sample, workdir: str | None) -> None:
    from umap_bench import CLUSTERS, make_features

    sys.stdout.reconfigure(line_buffering=True)
    tmp = Path(workdir or tempfile.mkdtemp(prefix="pathviz-umap-cohort-"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; work folder {tmp}"
    )
    t0 = time.perf_counter()
    features, _ = make_features(n, dims)
    parquet = tmp / "cohort.parquet"
    write_cohort(parquet, features)
    scored = np.random.default_rng(0).choice(n, size=SCORED, replace=False)
    high = features[scored].copy()
    del features
    size_gb = parquet.stat().st_size / 2**30
    print(
        f"data: {n:,} x {dims} float32, {CLUSTERS} clusters; {parquet} ({size_gb:.2f} GB) "
        f"written in {time.perf_counter() - t0:.1f} s"
    )
    sizes = [None] if fit_sample is None else [int(v) for v in str(fit_sample).split(",")]
    results = {}
    for size in sizes:
        name = "ours" if size is None else f"ours-{size}"
        results[name] = run_child("ours", parquet, tmp / f"coords-{name}.npy", size)
    results["plain"] = run_child("plain", parquet, tmp / "coords-plain.npy", None)
    score(results, parquet, scored, high, tmp)
    plain = results["plain"]
    for name, ours in results.items():
        if name != "plain":
            report(n, dims, name, ours, plain)


def report(n: int, dims: int, name: str, ours: dict, plain: dict) -> None:
    ratio = ours["wall"] / plain["wall"]
    diff = ours["trust"] - plain["trust"]
    print()
    print(
        f"UMAP {n:,} x {dims} -> 2-D, {name} (fit on a sample + transform) vs umap-learn full fit:"
    )
    print(
        f"  ours {ours['wall']:.1f} s wall ({ours['cpu']:.1f} s CPU), plain {plain['wall']:.1f} s "
        f"wall ({plain['cpu']:.1f} s CPU)"
    )
    print(
        f"  ratio ours/plain = {ratio:.3f} (CPU-time ratio {ours['cpu'] / plain['cpu']:.3f}; "
        f"target <= {RATIO_TARGET}) -> {'PASS' if ratio <= RATIO_TARGET else 'FAIL'}"
    )
    print(
        f"  trustworthiness (k=15, same {SCORED:,} rows): ours {ours['trust']:.4f}, plain "
        f"{plain['trust']:.4f}, ours - plain {diff:+.4f} (target within {TRUST_TOLERANCE}) -> "
        f"{'PASS' if abs(diff) <= TRUST_TOLERANCE or diff > 0 else 'FAIL'}"
    )
    print(
        f"  k-NN preservation (k=15, same {SCORED:,} rows, neighbours among all {n:,}): ours "
        f"{ours['knn']:.4f}, plain {plain['knn']:.4f} (ours / plain {ours['knn'] / plain['knn']:.2f})"
    )
    print(
        f"  peak RSS: load + ours {ours['rss_gb']:.2f} GB (target < {RSS_TARGET_GB:g}) -> "
        f"{'PASS' if ours['rss_gb'] < RSS_TARGET_GB else 'FAIL'}; load + plain "
        f"{plain['rss_gb']:.2f} GB; load {ours['load']:.1f} s ({ours['how']})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=["ours", "plain"], required=True)
    parser.add_argument("--parquet", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fit-sample", type=int, default=None)
    args = parser.parse_args()
    child(args.child, args.parquet, args.out, args.fit_sample)
