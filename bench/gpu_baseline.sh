#!/usr/bin/env bash
# The eager reference's per-step, per-stage latency at the released size on one GPU: the `full`
# preset with deterministic random weights (no download), 3 steps, 1 warm-up run, 2 measured runs,
# under (a) the authors' precision policy (fp32 weights, fp16 autocast: --dtype auto, docs/precision.md#dtype-policy)
# and (b) fp16 weights (--dtype fp16). About 2-4 minutes per policy on one H100, model
# construction included; each policy is capped at BENCH_TIMEOUT seconds so one cannot starve the other.
#
#   bash bench/gpu_baseline.sh            # from the repository root, on the GPU host
#
# Writes bench/results/latency_full_<dtype>_<gpu>.{json,txt,png} and upserts bench/results/latency.csv,
# and copies them to $OUT when that is set (the device `run` tool brings $OUT back).
# Python packages: torch with CUDA must be installed. diffusers and transformers are installed from
# the wheels in $ORT3D_WHEELS (default .whl/) when they are not importable; see bench/README.md.
# Extra arguments go to every bench/latency.py call (e.g. --backends eager,eager-triton).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
WHEELS=${ORT3D_WHEELS:-.whl}
SITE=${ORT3D_SITE:-/tmp/ort3d-site}
TIMEOUT=${BENCH_TIMEOUT:-240}
export PYTHONUNBUFFERED=1

importable() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

# 1. Third-party packages missing from the image, from carried wheels (no network there).
missing=()
for module in diffusers transformers; do
  importable "$module" || missing+=("$module")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu_baseline: ${missing[*]} not installed and no wheels in $WHEELS/ (see bench/README.md)" >&2
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  for module in "${missing[@]}"; do
    importable "$module" || { echo "gpu_baseline: $module still not importable after installing $WHEELS/*.whl" >&2; exit 2; }
  done
fi

# 2. ort3d itself: the repository's folders mapped onto the ort3d namespace (as pyproject.toml
#    does) when it is not installed, so nothing has to be built on the GPU host.
if ! importable ort3d.runtime.pipeline; then
  src=/tmp/ort3d-src/ort3d
  mkdir -p "$src"
  for folder in models kernels export runtime; do
    ln -sfn "$PWD/$folder" "$src/$folder"
  done
  export PYTHONPATH="/tmp/ort3d-src${PYTHONPATH:+:$PYTHONPATH}"
  importable ort3d.runtime.pipeline || { "$PYTHON" -c "import ort3d.runtime.pipeline"; exit 2; }
fi

"$PYTHON" - <<'EOF' || exit 2
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_baseline: no CUDA device is visible to PyTorch")
print(f"gpu_baseline: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
EOF
gpu=$("$PYTHON" -c "import re, torch; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")

mkdir -p bench/results
status=0
for dtype in auto fp16; do
  stem="bench/results/latency_full_${dtype}_${gpu}"
  echo "gpu_baseline: --dtype $dtype -> $stem.*"
  set +e
  timeout "$TIMEOUT" "$PYTHON" bench/latency.py --preset full --device cuda --dtype "$dtype" \
    --steps 3 --warmup 1 --repeats 2 --json "$stem.json" --csv bench/results/latency.csv \
    --plot "$stem.png" "$@" 2>&1 | tee "$stem.txt"
  code=${PIPESTATUS[0]}
  set -e
  [ "$code" -eq 0 ] || { echo "gpu_baseline: --dtype $dtype exited with $code" >&2; status=1; }
done

if [ -n "${OUT:-}" ]; then
  cp bench/results/latency.csv "$OUT"/ 2>/dev/null || true
  cp bench/results/latency_full_*_"${gpu}".* "$OUT"/ 2>/dev/null || true
fi
exit $status
