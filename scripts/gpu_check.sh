#!/usr/bin/env bash
# The GPU check: KETCHUP's update measured at the paper's sizes, and the distill verb run on CUDA.
#
#   scripts/gpu_check.sh [OUT_DIR]          on a machine with one NVIDIA GPU: about 7 minutes
#   KETCHUP_GPU_CHECK_TOY=1 scripts/gpu_check.sh [OUT_DIR]
#                                           the same steps on tiny models, on any machine (a CPU:
#                                           about 2 minutes), to try the script before a GPU run
#   scripts/gpu_check.sh fetch [WHEEL_DIR]  download the wheels it installs into WHEEL_DIR (.whl)
#
# Run from the repository root. No network is needed: what the machine's Python cannot import of
# scripts/gpu_wheels.txt is installed from the wheels in $KETCHUP_WHEELS (default .whl/, made by
# `scripts/gpu_check.sh fetch`; the exact pip command is in that file), into /tmp/site, with
#     pip install --no-index --no-deps --target /tmp/site WHEELS
# and ketchup runs from the checkout (PYTHONPATH=src, `python -m ketchup`): no build backend.
#
# Steps (docs/performance.md, "On a GPU", says what each prints):
#   0. the machine: GPU, driver, torch and CUDA; whether ketchup's CLI imports with the image's
#      packages alone; the wheels installed;
#   1. `ketchup bench --gpu --repeats 2 --batch-seconds 4`: KETCHUP's update (K = 4) at
#      flan-t5-xl -> t5-base and Qwen1.5-4B -> Qwen1.5-0.5B sizes, the largest batch that fits,
#      beside TRL's DistillationTrainer for the Qwen pair (at most 300 s);
#   2. scripts/gpu_distill_check.py: a few real `ketchup distill` updates of ketchup_k4 at toy
#      size on the device, stopped by SIGTERM and resumed from the checkpoint (at most 120 s).
# Output: printed, and kept under OUT_DIR (default $OUT, else results/gpu_check): gpu_check.log,
# bench/gpu.csv, bench/gpu_phases.csv, distill/. Exit status 0 when every step passed.
set -uo pipefail

PY=${PYTHON:-python3}
LIST=scripts/gpu_wheels.txt
[[ -f $LIST ]] || { echo "run this from the repository root (no $LIST here)" >&2; exit 2; }

if [[ ${1:-} == fetch ]]; then
    dir=${2:-.whl}
    mkdir -p "$dir"
    grep -v '^#' "$LIST" | awk 'NF {print $1}' | while read -r requirement; do
        "$PY" -m pip download --no-deps --only-binary=:all: \
            --python-version "${KETCHUP_WHEEL_PYTHON:-3.12}" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d "$dir" "$requirement" || exit 1
    done
    du -sh "$dir"
    exit 0
fi

OUT_DIR=${1:-${OUT:-results/gpu_check}}
WHEELS=${KETCHUP_WHEELS:-.whl}
SITE=${KETCHUP_SITE:-/tmp/site}
TOY=${KETCHUP_GPU_CHECK_TOY:-}
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
# progress bars once a minute at most (a log, not a terminal)
export TQDM_DISABLE=1 TQDM_MININTERVAL=60 PYTHONUNBUFFERED=1
# fewer out-of-memory errors from fragmentation while the batch search grows the batch
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
start=$SECONDS
failed=()

echo "== 0. the machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__,
"| CUDA", torch.version.cuda, "| GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available()
else "none")'
if PYTHONPATH=src "$PY" -m ketchup --help >/dev/null; then
    echo "ketchup's CLI imports with this machine's packages alone"
else
    echo "ketchup's CLI does not import with this machine's packages alone (see above)"
fi

echo "== 0. wheels for what this Python cannot import (from $WHEELS)"
mapfile -t missing < <("$PY" - "$WHEELS" "$LIST" <<'PY'
import importlib.util
import pathlib
import sys

from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

wheels, listing = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
here = set(sys_tags())  # the wheel tags this Python can install
for line in listing.read_text().splitlines():
    fields = line.split("#", 1)[0].split()
    if not fields:
        continue
    requirement, module = fields
    if importlib.util.find_spec(module) is not None:
        continue
    name, version = requirement.split("==")
    found = []
    for wheel in sorted(wheels.glob("*.whl")):
        w_name, w_version, _, tags = parse_wheel_filename(wheel.name)
        if w_name == canonicalize_name(name) and w_version == Version(version) and tags & here:
            found.append(wheel)
    if found:
        print(found[0])
    else:
        print(f"missing: {requirement} (import {module}) and no wheel of it for this Python "
              f"in {wheels}", file=sys.stderr)
PY
)
if ((${#missing[@]})); then
    printf '  %s\n' "${missing[@]##*/}"
    "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "${missing[@]}" \
        || failed+=("installing the wheels")
else
    echo "  none needed"
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import jsonschema, ketchup.cli, ketchup.ops.bench_gpu, ketchup.stages.distill' \
    || failed+=("importing ketchup")
"$PY" -c 'import trl; print("TRL", trl.__version__, "imports")' \
    || echo "TRL does not import: the bench leaves TRL's trainer out"

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, note a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most $limit s; $((SECONDS - start)) s so far)"
    timeout --kill-after=15 "$limit" "$@"
    local rc=$?
    ((rc == 124)) && echo "$name: stopped at its time limit ($limit s)"
    ((rc == 0)) || failed+=("$name (exit $rc)")
}

# the time limits keep a GPU run within 8 minutes; a CPU is slower at the toy sizes
if [[ -n $TOY ]]; then limits=(900 900); else limits=(300 120); fi
# the batch search stops at the first batch whose update takes 4 s or more (kept): with 2 repeats
# after a warm-up, each pair then takes about a minute or two
step "1. ketchup bench --gpu" "${limits[0]}" "$PY" -m ketchup bench --gpu ${TOY:+--toy} --repeats 2 \
    --batch-seconds 4 --out "$OUT_DIR/bench/update.csv"
rm -rf "$OUT_DIR/distill"  # a fresh job: the check stops it and resumes it
step "2. ketchup distill on the device" "${limits[1]}" "$PY" scripts/gpu_distill_check.py "$OUT_DIR/distill"

echo "== done in $((SECONDS - start)) s; output in $OUT_DIR"
if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "every step passed"
