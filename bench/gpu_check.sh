#!/usr/bin/env bash
# THE script to run when a GPU is lent: everything ort3d measures on one GPU, in one go, time-boxed
# to under 8 minutes including its own set-up (bench/README.md, section gpu_check.sh).
#
#   bash bench/gpu_check.sh                 # on the GPU host, from anywhere in the repository
#   bash bench/gpu_check.sh --cpu-dry-run   # here: every step's command on the CPU, tiny sizes
#   bash bench/gpu_check.sh --host          # the setup, then only bench/host_check.py (C++ host)
#
# Steps, in order, each under `timeout` so that a failure or an overrun keeps the earlier results:
#   setup     versions; diffusers/plyfile from the carried wheels (.whl/, see bench/README.md) when
#             missing; ort3d itself (pip install --no-deps --no-build-isolation -e .)
#   gsplat    gsplat's CUDA extension built in the background (bench/gsplat_prebuild.py, niced,
#             its own time box) while the GPU steps run; gsplat is kept off the other steps'
#             import path so that none of them starts a second build
#   kernels   bench/kernels_check.py at full size: Triton vs torch parity and timings, CUDA-graph
#             replay of the whole feedback
#   tests     the CUDA tests: no host sync in the Triton render, graph capture/replay of the loop
#             (tests/kernels/test_triton_no_sync.py, tests/runtime/test_graph_backend.py, timing)
#   latency   bench/latency.py --preset full --backends eager,graph --steps 25: eager (the authors'
#             policy) vs graph, per-stage medians p20/p80, end to end, graph capture time, peak
#             memory, PSNR of the views vs eager
#   peer      once gsplat is built: kernels_check again with gsplat's stages timed beside Triton's
#   psnr3     the same two backends over 3 steps (views PSNR vs eager after 3 steps)
# Each step's time box is its own cap or the time left before the deadline (ORT3D_CHECK_SECONDS,
# default 470 s from the start), whichever is less; a step with under 30 s left is skipped.
#
# Results: $OUT (the device tool brings it back) or, without $OUT, bench/results/gpu_check/;
# named after the device: kernels_check-<gpu>-full.json, gpu_tests_<gpu>.txt,
# latency_full_auto_<gpu>.{json,txt,png}, latency.csv (bench/results/latency.csv with the GPU rows
# upserted), gsplat_prebuild_<gpu>.txt, gpu_check_<gpu>.txt (the step summary). Copy them into
# bench/results/ and commit. Exit status: 0 when every step that ran passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
SLOWER=1              # the dry run's time boxes are this many times longer (a small shared CPU)
ONLY=all              # --host: the setup, then only the C++ host's check (bench/host_check.py)
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) MODE=cpu; SLOWER=4 ;;
    --host) ONLY=host ;;
    *) echo "gpu_check: unknown argument ${arg}; use --cpu-dry-run and/or --host" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
WHEELS=${ORT3D_WHEELS:-.whl}
SITE=/tmp/ort3d-gpu-check-site          # diffusers, plyfile (when missing)
GSPLAT_SITE=/tmp/ort3d-gpu-check-gsplat # gsplat only, on the gsplat steps' import path
BUDGET=${ORT3D_CHECK_SECONDS:-$((470 * SLOWER))}   # every step must start and end before this
export PYTHONUNBUFFERED=1
STARTED=$(date +%s)

if [ "$MODE" = cpu ]; then
  R=${OUT:-/tmp/ort3d-gpu-check-dry-run}
else
  R=${OUT:-bench/results/gpu_check}
fi
mkdir -p "$R"
SUMMARY=$R/gpu_check.txt
: > "$SUMMARY"
status=0

say() { echo "gpu_check: $*" | tee -a "$SUMMARY"; }

# left CAP: the seconds a step may use: CAP, or what is left before the deadline (0: too little).
left() {
  local remaining=$((STARTED + BUDGET - $(date +%s)))
  if [ "$remaining" -lt 30 ]; then echo 0; elif [ "$remaining" -lt "$1" ]; then echo "$remaining"; else echo "$1"; fi
}

# run_step NAME CAP_S LOG COMMAND...: the command under timeout (CAP_S, or less near the
# deadline), its output in LOG and on stdout.
run_step() {
  local name=$1 cap=$2 log=$3; shift 3
  local limit begin end code
  limit=$(left $((cap * SLOWER)))
  if [ "$limit" -eq 0 ]; then
    say "[$name] skipped: no time left before the ${BUDGET}s deadline"; status=1; return 1
  fi
  begin=$(date +%s)
  say "[$name] start (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
  code=${PIPESTATUS[0]}
  end=$(date +%s)
  case $code in
    0) say "[$name] ok in $((end - begin))s" ;;
    124|137) say "[$name] TIMED OUT after ${limit}s"; status=1 ;;
    *) say "[$name] FAILED (exit $code) after $((end - begin))s"; status=1 ;;
  esac
  return "$code"
}

importable() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------- setup
"$PYTHON" - > "$R/env.txt" 2>&1 <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError:
    print("triton: not installed")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"{p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
          f"{p.multi_processor_count} SMs")
EOF
tee -a "$SUMMARY" < "$R/env.txt"
if [ "$MODE" = gpu ]; then
  if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA device is visible to PyTorch (use --cpu-dry-run without a GPU)"; exit 1
  fi
  GPU=$("$PYTHON" -c "import re, torch; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
else
  GPU=cpu-dry-run
fi
mv "$SUMMARY" "$R/gpu_check_$GPU.txt"; SUMMARY=$R/gpu_check_$GPU.txt
mv "$R/env.txt" "$R/env_$GPU.txt"

# Carried wheels: installed into their own folder. On the GPU image the modules it lacks are put
# on the import path; in the dry run (everything installed here) the wheels are only installed,
# to check that they install.
PIP_INSTALL=("$PYTHON" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile
             --no-cache-dir --upgrade)
missing=()
for module in diffusers plyfile; do importable "$module" || missing+=("$module"); done
if compgen -G "$WHEELS/diffusers-*.whl" > /dev/null; then
  rm -rf "$SITE"
  run_step wheels 120 "$R/setup_wheels.log" "${PIP_INSTALL[@]}" --target "$SITE" \
    "$WHEELS"/diffusers-*.whl "$WHEELS"/plyfile-*.whl
  if [ ${#missing[@]} -gt 0 ]; then export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; fi
elif [ ${#missing[@]} -gt 0 ]; then
  say "${missing[*]} not installed and no wheels in $WHEELS/ (bench/README.md says how to fill it)"; exit 1
fi
for module in diffusers plyfile; do
  importable "$module" || { say "$module is not importable after the wheels"; exit 1; }
done
if ! (cd /tmp && importable ort3d.runtime.pipeline); then
  run_step install 120 "$R/setup_install.log" "$PYTHON" -m pip install -q --root-user-action=ignore \
    --no-deps --no-build-isolation -e . || exit 1
fi

# ------------------------------------------------------------------------ the C++ host, alone
if [ "$ONLY" = host ]; then
  run_step host 420 "$R/host_check_$GPU.log" "$PYTHON" bench/host_check.py --device "${MODE/gpu/cuda}" \
    --out "$R"
  say "done in $(($(date +%s) - STARTED))s; results in $R"
  exit $status
fi

# --------------------------------------------------------------------- gsplat, in the background
gsplat_pid=
GSPLAT_PATH="$GSPLAT_SITE${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS/gsplat-*.whl" > /dev/null \
    && rm -rf "$GSPLAT_SITE" && "${PIP_INSTALL[@]}" --target "$GSPLAT_SITE" "$WHEELS"/gsplat-*.whl; then
  say "[gsplat] building its CUDA extension in the background (bench/gsplat_prebuild.py, nice 19)"
  # Its own process group (setsid), ended with the check; the build's compilers run at the
  # lowest priority so that the timed steps keep their CPU.
  env PYTHONPATH="$GSPLAT_PATH" MAX_JOBS="${MAX_JOBS:-8}" setsid bash -c '
    begin=$(date +%s)
    timeout --kill-after=10 "$2" nice -n 19 "$0" bench/gsplat_prebuild.py > "$1" 2>&1
    echo "exit $? after $(($(date +%s) - begin))s" >> "$1"' \
    "$PYTHON" "$R/gsplat_prebuild_$GPU.txt" "$BUDGET" &
  gsplat_pid=$!
else
  say "[gsplat] no gsplat wheel in $WHEELS/: no gsplat peer row"
fi

# ---------------------------------------------------------------------------------- GPU steps
if [ "$MODE" = gpu ]; then
  SIZE=full
  DEVICE=(--device cuda)
  KERNELS=(--runs 30 --warmup 5)
  PRESET=(--steps 25 --warmup 1 --repeats 2)
  PRESET3=(--steps 3 --warmup 1 --repeats 1)
  PEER=(--runs 20 --warmup 5 --no-sweep)
else
  SIZE=tiny
  DEVICE=(--device cpu)
  KERNELS=(--runs 1 --warmup 0 --no-sweep)
  PRESET=(--steps 2 --warmup 1 --repeats 1 --threads 2)
  PRESET3=(--steps 3 --warmup 0 --repeats 1 --threads 2)
  PEER=(--runs 1 --warmup 0 --no-sweep)
fi

run_step kernels 120 "$R/kernels_check_$GPU.txt" "$PYTHON" bench/kernels_check.py "${DEVICE[@]}" \
  --size "$SIZE" "${KERNELS[@]}" --out "$R/kernels_check-$GPU-$SIZE.json"

run_step tests 120 "$R/gpu_tests_$GPU.txt" \
  "$PYTHON" -m pytest -q -rs -p no:cacheprovider -k "cuda or gpu or capture" \
  tests/kernels/test_triton_no_sync.py tests/runtime/test_graph_backend.py tests/runtime/test_timing.py

cp bench/results/latency.csv "$R/latency.csv" 2>/dev/null
stem=$R/latency_${SIZE}_auto_$GPU
run_step latency 260 "$stem.txt" "$PYTHON" bench/latency.py "${DEVICE[@]}" --preset "$SIZE" \
  "${PRESET[@]}" --dtype auto --backends eager,graph \
  --json "$stem.json" --csv "$R/latency.csv" --plot "$stem.png"

if [ -n "$gsplat_pid" ]; then
  wait_s=$(left $((150 * SLOWER)))
  if [ "$wait_s" -eq 0 ] || ! timeout "$wait_s" tail --pid="$gsplat_pid" -f /dev/null; then
    say "[peer] gsplat's extension was not built within the check's time: no peer row"
  elif ! grep -q "^exit 0 " "$R/gsplat_prebuild_$GPU.txt"; then
    say "[peer] gsplat is not usable here: $(head -n 1 "$R/gsplat_prebuild_$GPU.txt")"
  else
    run_step peer 120 "$R/kernels_check_gsplat_$GPU.txt" env PYTHONPATH="$GSPLAT_PATH" \
      "$PYTHON" bench/kernels_check.py "${DEVICE[@]}" --size "$SIZE" "${PEER[@]}" \
      --out "$R/kernels_check-$GPU-$SIZE-gsplat.json"
  fi
fi
run_step psnr3 120 "$R/latency_${SIZE}_auto_3steps_$GPU.txt" \
  "$PYTHON" bench/latency.py "${DEVICE[@]}" --preset "$SIZE" "${PRESET3[@]}" --dtype auto --backends eager,graph \
  --json "$R/latency_${SIZE}_auto_3steps_$GPU.json"

[ -n "$gsplat_pid" ] && kill -- -"$gsplat_pid" 2>/dev/null
say "done in $(($(date +%s) - STARTED))s; results in $R"
exit $status
