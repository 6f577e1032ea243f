#!/usr/bin/env bash
# Downloads into .whl/ (repo root, git-ignored through .git/info/exclude) the wheels that the
# lent H200 machine lacks for bench/gpu.sh: Python 3.12, manylinux x86_64, no dependencies
# resolved (each needed dependency is named here; the rest are in that machine's image, see
# /work/.library/device/KINDS.md). Versions are the ones in .venv (pip freeze), so the GPU run
# uses what the CPU results were measured with. Idempotent: wheels already there are kept,
# wheels of other packages or versions are removed, and the total size is printed.
#
#   bash bench/fetch_gpu_wheels.sh            # the set bench/gpu.sh needs (about 38 MiB)
#   WITH_PLOTLY=1 bash bench/fetch_gpu_wheels.sh   # + plotly (9.3 MiB; one test_embeddings test)
#   WITH_COHORT=1 bash bench/fetch_gpu_wheels.sh   # + distributed and its needs (tests/test_cohort.py)
#   (these options are remembered only in .whl's content: run without them to drop them again)
#
# The whole working tree that travels to the machine (these wheels included) must stay under
# 64 MiB; the tracked files are about 1.4 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

# name==version: the name as pip knows it. Needs already in the H200 image are not listed
# (numpy, scipy, scikit-learn, numba, llvmlite, joblib, pandas, tqdm, packaging, pyyaml, toolz,
# cloudpickle, fsspec, typing-extensions, matplotlib, narwhals, torch, ...).
PINS=(
  zarr==3.1.6             # needs donfig, google-crc32c, numcodecs (+ numpy, packaging, typing-extensions)
  numcodecs==0.16.6
  donfig==0.8.1.post1
  google-crc32c==1.9.0
  dask==2026.8.0          # needs partd (+ click, cloudpickle, fsspec, packaging, pyyaml, toolz)
  partd==1.4.2            # needs locket, toolz
  locket==1.0.0
  tifffile==2026.3.3      # the image has a tifffile of unknown version; ours reads zarr 3 stores
  imagecodecs==2026.3.6   # JPEG tiles (extract_bench's slide); 25 MiB, the smallest recent build
  umap-learn==0.5.12      # needs pynndescent (+ numba, scikit-learn, scipy, tqdm)
  pynndescent==0.7.0
  shap==0.51.0            # needs slicer (+ numba, pandas, cloudpickle, tqdm, ...)
  slicer==0.0.8
  captum==0.9.0           # (+ matplotlib, torch, tqdm)
)
if [[ "${WITH_PLOTLY:-0}" == 1 ]]; then
  PINS+=(plotly==7.1.0)   # needs narwhals, packaging (in the image)
fi
if [[ "${WITH_COHORT:-0}" == 1 ]]; then
  PINS+=(distributed==2026.8.0 tblib==3.2.2 zict==3.0.0 tornado==6.6.1)
fi
# Anything else, e.g. if env.txt shows the image's scikit-learn older than umap-learn's >= 1.6:
#   EXTRA_PINS="scikit-learn==1.9.1" bash bench/fetch_gpu_wheels.sh
read -r -a extra <<<"${EXTRA_PINS:-}"
PINS+=("${extra[@]}")

if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
mkdir -p .whl

# Warn when .venv has other versions than the pins (the pins are what the wheels will be).
if [[ -x .venv/bin/python ]]; then
  freeze=$(.venv/bin/python -m pip freeze 2>/dev/null | tr 'A-Z_' 'a-z-')
  for pin in "${PINS[@]}"; do
    name=${pin%%==*}
    have=$(grep -E "^${name}==" <<<"$freeze" || true)
    if [[ -n "$have" && "$have" != "$pin" ]]; then
      echo "note: .venv has $have, downloading $pin" >&2
    fi
  done
fi

"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 \
  -d .whl "${PINS[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

# Keep exactly one wheel per pin: a wheel's file name starts with name-version, the name with
# runs of -_. lowered to _ (google_crc32c-1.9.0-..., umap_learn-0.5.12-...).
prefixes=()
for pin in "${PINS[@]}"; do
  name=${pin%%==*}
  version=${pin##*==}
  norm=$(tr 'A-Z' 'a-z' <<<"$name" | sed -E 's/[-_.]+/_/g')
  prefixes+=("${norm}-${version}-")
done
for f in .whl/*; do
  base=$(basename "$f")
  lower=$(tr 'A-Z' 'a-z' <<<"$base")
  keep=0
  for p in "${prefixes[@]}"; do
    if [[ "$lower" == "$p"* && "$lower" == *.whl ]]; then keep=1; break; fi
  done
  if [[ $keep == 0 ]]; then
    echo "removing $f (not in the pinned set)"
    rm -rf -- "$f"
  fi
done
for p in "${prefixes[@]}"; do
  n=$(find .whl -maxdepth 1 -iname "${p}*.whl" | wc -l)
  if [[ $n != 1 ]]; then
    echo "error: $n wheels for ${p%-} in .whl" >&2
    exit 1
  fi
done

ls -l .whl | awk 'NR > 1 { printf "%10d  %s\n", $5, $9 }'
bytes=$(find .whl -maxdepth 1 -name '*.whl' -printf '%s\n' | awk '{ s += $1 } END { print s }')
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
awk -v b="$bytes" -v t="$tree" -v n="${#PINS[@]}" 'BEGIN {
  printf "%d wheels, %.1f MiB; working tree without them %.1f MiB; together %.1f MiB (limit 64)\n",
    n, b / 1048576, t / 1048576, (b + t) / 1048576 }'
