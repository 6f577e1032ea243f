#!/usr/bin/env bash
# All GPU benchmarks and the GPU-relevant tests in one device call, results under $OUT.
#
# Before the call, here (once per checkout; needs the network, not the device):
#   bash bench/fetch_gpu_wheels.sh        # .whl/: the 14 wheels the H200 image lacks, ~38 MiB
# The device call (the `run` tool of /work/.library/device/README.md):
#   run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=600)
# It ends by itself after at most GPU_DEADLINE seconds (default 540): each step has its own
# limit (`timeout`) and no step starts past the deadline, so the call stays inside 10 minutes.
# A step that fails or times out is recorded in steps.txt and the next one runs.
#
# Files under $OUT (7, flat; the tool brings back at most 8, each < 16 MiB):
#   steps.txt        one line per step: name, exit status (124: timed out), seconds, wall clock
#   env.txt          install log, nvidia-smi, CPU/memory, python/torch/CUDA and package versions
#   dmon.log         `nvidia-smi dmon` every second for the whole run (GPU utilisation, clocks)
#   extract.log      bench/extract_bench.py (ResNet-18-like on CUDA), 14 and 4 read workers
#   attribution.log  bench/attribution_bench.py --part gpu (ours vs shap on CUDA, 60x target)
#   umap.log         bench/umap_bench.py, 100k x 512, 1 round, ours on NN-descent + GPU path
#   pytest.log       tests/test_inference.py test_embeddings.py test_attribution.py
#                    test_models.py (the rest need napari/Qt, or distributed, or no GPU)
#
# Dry run here (no GPU, .venv's python, no wheel install, tiny sizes), to check the script:
#   GPU_DRY=1 OUT=/tmp/gpuout bash bench/gpu.sh
# A shorter rerun of some steps only (names: extract attribution umap pytest), e.g.
#   run(command="GPU_STEPS='umap pytest' GPU_DEADLINE=300 bash bench/gpu.sh", carry=[".whl"],
#       timeout_s=360)
# Expected on the H200 (estimate, never run yet): about 6-7 minutes for all steps, plus 1-2
# minutes to start the machine, out of a 15-minute device budget: a full rerun does not fit.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=${GPU_DRY:-0}
DEADLINE=${GPU_DEADLINE:-540}
if [[ $DRY == 1 ]]; then
  OUT=${OUT:-/tmp/gpuout}
  PY=$ROOT/.venv/bin/python
else
  PY=python3
fi
if [[ -z "${OUT:-}" ]]; then
  echo "OUT is not set (the device tool sets it; for a dry run: GPU_DRY=1 OUT=/tmp/gpuout)" >&2
  exit 2
fi
mkdir -p "$OUT"
rm -f "$OUT"/{steps.txt,env.txt,dmon.log,extract.log,attribution.log,umap.log,pytest.log}
SECONDS=0

want() { [[ -z "${GPU_STEPS:-}" || " $GPU_STEPS " == *" $1 "* ]]; }

step() { # step NAME LIMIT_S LOG COMMAND...: runs COMMAND under timeout, output appended to LOG
  local name=$1 limit=$2 log=$OUT/$3 t0=$SECONDS left rc
  shift 3
  left=$((DEADLINE - SECONDS - 5))
  if ((left < 15)); then
    printf '%-18s skipped: %ds left of GPU_DEADLINE=%s\n' "$name" "$left" "$DEADLINE" |
      tee -a "$OUT/steps.txt"
    return
  fi
  ((limit > left)) && limit=$left
  echo "=== $name ($(date -u +%T), limit ${limit}s): $*" >>"$log"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  printf '%-18s rc=%-4s %4ds  (started %ds into the run, limit %ds)  %s\n' \
    "$name" "$rc" $((SECONDS - t0)) "$t0" "$limit" "$(basename "$log")" | tee -a "$OUT/steps.txt"
}

# 1. Wheels -> /tmp/site (the README's install line); the package itself from src.
if [[ $DRY == 1 ]]; then
  echo "dry run: $PY, no wheel install" >"$OUT/env.txt"
  export PYTHONPATH=$ROOT/src
else
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no .whl/*.whl: run bench/fetch_gpu_wheels.sh here and name .whl in carry" |
      tee "$OUT/env.txt"
    exit 1
  fi
  t0=$SECONDS
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >"$OUT/env.txt" 2>&1
  rc=$?
  printf '%-18s rc=%-4s %4ds\n' install "$rc" $((SECONDS - t0)) | tee -a "$OUT/steps.txt"
  ((rc == 0)) || exit 1
  export PYTHONPATH=/tmp/site:$ROOT/src
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1

# GPU utilisation, clocks and memory every second while everything runs.
DMON=
if command -v nvidia-smi >/dev/null; then
  nvidia-smi dmon -o T -s pucm -d 1 >"$OUT/dmon.log" 2>&1 &
  DMON=$!
else
  echo "no nvidia-smi here" >"$OUT/dmon.log"
fi

# 2. The machine and the versions.
{
  echo "== $(date -u '+%F %T') $(uname -srm), $(nproc) CPUs"
  free -g 2>&1 | head -2
  command -v nvidia-smi >/dev/null && nvidia-smi 2>&1
  command -v nvidia-smi >/dev/null && nvidia-smi -q -d CLOCK 2>&1 | sed -n '/Max Clocks/,/^$/p'
} >>"$OUT/env.txt"
step env 90 env.txt "$PY" - <<'EOF'
import os, platform, sys
from importlib.metadata import PackageNotFoundError, version

print("python", sys.version.split()[0], sys.executable, "PYTHONPATH", os.environ.get("PYTHONPATH"))
names = ("torch numpy scipy scikit-learn scikit-image pandas pyarrow numba llvmlite umap-learn "
         "pynndescent zarr numcodecs dask tifffile imagecodecs shap captum matplotlib pillow "
         "pytest pytest-timeout plotly distributed").split()
for n in names:
    try:
        print(f"  {n} {version(n)}")
    except PackageNotFoundError:
        print(f"  {n} (not installed)")
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(),
      "available", torch.cuda.is_available(), "threads", torch.get_num_threads())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"  {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
          f"capability {p.major}.{p.minor}; allow_tf32 matmul {torch.backends.cuda.matmul.allow_tf32}"
          f", cudnn {torch.backends.cudnn.allow_tf32}")
import napari_pathviz, numba
print("napari_pathviz from", napari_pathviz.__file__, "numba threads", numba.config.NUMBA_NUM_THREADS)
EOF

# 3. Benchmarks (each prints its own PASS/FAIL lines at the end).
if [[ $DRY == 1 ]]; then
  EXTRACT=(--patches 64 --batch-size 16)
  ATTRIB=(--part gpu --device cpu --px 64 --samples 25 --batch-size 100)
  UMAP=(--n 6000 --dims 64 --repeats 1 --ours-knn nndescent)
  WORKERS=(2 1)
else
  EXTRACT=(--patches 1296 --batch-size 64) # 1296: every 224-px cell of the 8192 px slide
  ATTRIB=(--part gpu)
  UMAP=(--repeats 1 --ours-knn nndescent)
  WORKERS=(14 4)
fi
if want extract; then
  for w in "${WORKERS[@]}"; do
    step "extract-w$w" 90 extract.log "$PY" bench/extract_bench.py "${EXTRACT[@]}" --workers "$w"
  done
fi
want attribution && step attribution 120 attribution.log "$PY" bench/attribution_bench.py "${ATTRIB[@]}"
want umap && step umap 210 umap.log "$PY" bench/umap_bench.py "${UMAP[@]}"

# 4. Tests that run on CUDA without napari. run_cli starts `pathviz` from python's own bin/:
# give the image's python one that runs the CLI from src (a throwaway machine).
BIN=$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))')
if [[ ! -e $BIN/pathviz ]]; then
  printf '#!%s\nimport sys\nfrom napari_pathviz.cli import main\nsys.exit(main())\n' \
    "$("$PY" -c 'import sys; print(sys.executable)')" >"$BIN/pathviz" && chmod +x "$BIN/pathviz" ||
    echo "could not write $BIN/pathviz: the CLI tests will fail" >>"$OUT/pytest.log"
fi
TESTS=(tests/test_inference.py tests/test_embeddings.py tests/test_attribution.py tests/test_models.py)
PYTEST=(-p no:cacheprovider -v -rfEs --durations=15 --tb=short
  # pyproject's pydantic filter needs pydantic, which the image lacks; keep the other one.
  -o "filterwarnings=ignore::DeprecationWarning:pkg_resources.*")
if ! "$PY" -c 'import plotly' 2>/dev/null; then
  PYTEST+=(--deselect tests/test_embeddings.py::test_plot_3d_with_a_colorbar)
fi
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
  PYTEST+=(--timeout 120)
fi
if [[ $DRY == 1 ]]; then
  TESTS=(tests/test_embeddings.py tests/test_inference.py)
  PYTEST+=(-k "torch_knn or cuda or level")
fi
want pytest && step pytest 400 pytest.log "$PY" -m pytest "${TESTS[@]}" "${PYTEST[@]}"

if [[ -n $DMON ]]; then kill "$DMON" 2>/dev/null; fi
echo "total ${SECONDS}s" | tee -a "$OUT/steps.txt"
ls -l "$OUT"
