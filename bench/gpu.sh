#!/usr/bin/env bash
# Run the GPU tests and every benchmark on CUDA in one go, under 8 minutes, and print one combined report.
#
#   bash bench/gpu.sh               # on a machine with a CUDA GPU, from anywhere in the checkout
#   CPU_SMOKE=1 bash bench/gpu.sh   # every step tiny on the CPU: checks that each command line is valid
#
# The report goes to stdout and, when $OUT is set, to $OUT/gpu-report.txt as well.
#
# What the machine needs (it may have no internet at all):
# - .venv: used as it is when it imports torch; otherwise made with `pip install -e '.[dev]'` (torch 2.14.1's
#   CUDA build, as pyproject pins), which needs the package index.
# - the vgg16-caffe weights, for pipeline_overhead and the worker test, in STYLEQ_MODEL_DIR (default
#   $PWD/.models, git-ignored, so a copy of the working tree takes it only when told to, e.g. the device tool's
#   carry [".models"]): the caller copies ~/.local/share/styleq/models/vgg16-caffe-*.safetensors there (57 MB).
#   Without them both are skipped with a warning. The other benches and tests use random weights.
# - peers (neural-style-pt, CPU only) runs only if bench/.peers/site already holds it (it is pip-installed on first
#   use, which needs the index).
set -u -o pipefail
cd "$(dirname "$0")/.."

SMOKE=${CPU_SMOKE:-0}
BUDGET_S=${GPU_SH_BUDGET_S:-470}  # the whole script, steps' timeouts shrink to fit what is left
export STYLEQ_MODEL_DIR=${STYLEQ_MODEL_DIR:-$PWD/.models}
export PYTHONUNBUFFERED=1
# STYLEQ_PYTHON: an interpreter that already has torch and the project's needs (a lent GPU machine's own
# python3 with wheels carried in, say), used with the checkout on PYTHONPATH instead of .venv.
PY=${STYLEQ_PYTHON:-.venv/bin/python}
[[ -n ${STYLEQ_PYTHON:-} ]] && export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
START=$(date +%s)
SUMMARY=()

# Run one step under `timeout`, with at most what is left of the budget; record its status and time.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((START + BUDGET_S - $(date +%s)))
    if ((left < 15)); then
        echo "=== $name: skipped, no time left in the ${BUDGET_S}s budget"
        SUMMARY+=("$(printf '%-20s %-22s %6s' "$name" "skipped (no time)" "-")")
        return
    fi
    ((limit > left)) && limit=$left
    echo
    echo "=== $name (timeout ${limit}s): $*"
    local began=$(date +%s) rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    local took=$(($(date +%s) - began)) status="ok"
    ((rc == 124 || rc == 137)) && status="TIMED OUT"
    ((rc != 0 && rc != 124 && rc != 137)) && status="FAILED (exit $rc)"
    echo "--- $name: $status in ${took}s"
    SUMMARY+=("$(printf '%-20s %-22s %5ss' "$name" "$status" "$took")")
    return $rc
}

skip() {
    echo
    echo "=== $1: skipped, $2"
    SUMMARY+=("$(printf '%-20s %-22s %6s' "$1" "skipped" "-")  $2")
}

main() {
    local commit
    if commit=$(git rev-parse --short HEAD 2>/dev/null); then
        git diff --quiet HEAD 2>/dev/null || commit+=" with local changes"
    else
        commit="no git checkout"
    fi
    echo "styleq GPU report, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit"
    [[ $SMOKE == 1 ]] && echo "CPU_SMOKE=1: every step tiny on the CPU; the numbers mean nothing"

    if ! "$PY" -c "import torch" 2>/dev/null; then
        echo "no usable .venv: making one with pip install -e '.[dev]' (needs the package index)"
        python3 -m venv .venv && .venv/bin/pip install --quiet -e '.[dev]' || { echo "could not build .venv; stopping"; return 1; }
    fi
    "$PY" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}')"
    if command -v nvidia-smi >/dev/null; then
        step nvidia-smi 20 nvidia-smi -L
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    else
        skip nvidia-smi "not installed here"
    fi

    local device=cuda
    if [[ $SMOKE == 1 ]]; then
        device=cpu
    elif ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        echo "torch sees no CUDA device: nothing to measure here (CPU_SMOKE=1 checks the command lines on a CPU)"
        return 1
    fi

    # Copy the weights from the default model directory where they are there and the target lacks them (a workstation).
    local weights_file=$(ls "$STYLEQ_MODEL_DIR"/vgg16-caffe-*.safetensors 2>/dev/null | head -1)
    if [[ -z $weights_file ]] && ls ~/.local/share/styleq/models/vgg16-caffe-*.safetensors >/dev/null 2>&1; then
        mkdir -p "$STYLEQ_MODEL_DIR" && cp ~/.local/share/styleq/models/vgg16-caffe-*.safetensors "$STYLEQ_MODEL_DIR"/
        weights_file=$(ls "$STYLEQ_MODEL_DIR"/vgg16-caffe-*.safetensors 2>/dev/null | head -1)
    fi
    [[ -z $weights_file ]] && echo "WARNING: no vgg16-caffe weights in $STYLEQ_MODEL_DIR; pipeline_overhead and the worker test are skipped"

    local deselect=()
    [[ -z $weights_file ]] && deselect=(-k "not worker_pinned")
    step gpu-tests 200 "$PY" -m pytest tests/gpu -m gpu -q -ra -p no:cacheprovider "${deselect[@]}"

    if [[ $SMOKE == 1 ]]; then
        step memory 120 "$PY" -m bench.memory --device cpu --sizes 48,64 --precisions fp32,bf16 --memory 16GiB
        step batching 120 "$PY" -m bench.batching --device cpu --sizes 1,2 --size 32x48 --iterations 8 --precision auto
        step seed_speed 120 "$PY" -m bench.seed_speed --device cpu --size 32x48 --iterations 2 --quality-iterations 10
        [[ -n $weights_file ]] && step large 120 "$PY" -m bench.large --device cpu --size 600 --iterations 6 --max-pass-pixels 120000
    else
        # The largest output: 4096 px by the automatic coarse-to-fine schedule, its time and peak memory (beside the
        # published 2896x2172 in about 15 minutes on a 24 GB RTX 3090).
        [[ -n $weights_file ]] && step large 150 "$PY" -m bench.large --device cuda --size 4096
        step memory 130 "$PY" -m bench.memory --device cuda --sizes 256,512,1024,2048,3072,4096 --precisions fp32,bf16
        step batching 100 "$PY" -m bench.batching --device cuda --sizes 1,2,4,8,16 --size 300x450 --size 150x225 --iterations 60 --precision auto
        # Each loop timed over the notebook's full job (500 iterations), then the time to the notebook's 500-iteration loss.
        step seed_speed 150 "$PY" -m bench.seed_speed --device cuda --size 300x450 --iterations 500 --quality-iterations 500
    fi

    if [[ -n $weights_file ]]; then
        local backend=embedded
        if command -v redis-server >/dev/null && [[ -d /etc/postgresql ]] && "$PY" -c "import psycopg" 2>/dev/null; then
            backend=postgres+redis
        fi
        if [[ $SMOKE == 1 ]]; then
            step pipeline_overhead 180 "$PY" -m bench.pipeline_overhead --backend "$backend" --quick --seconds 4 --probes 2
        else
            # A job of about 45 s on the engine, so the whole step fits the budget; the embedded backend if the
            # machine's Postgres or Redis would not start.
            local job=(--size 600x900 --seconds 45 --probes 5) rc=0
            step pipeline_overhead 220 "$PY" -m bench.pipeline_overhead --backend "$backend" "${job[@]}" || rc=$?
            if ((rc != 0 && rc != 124 && rc != 137)) && [[ $backend != embedded ]]; then
                step pipeline_overhead 200 "$PY" -m bench.pipeline_overhead --backend embedded "${job[@]}"
            fi
        fi
    else
        skip pipeline_overhead "no vgg16-caffe weights in $STYLEQ_MODEL_DIR"
    fi

    # neural-style-pt runs on the CPU whatever the machine has; its environment cannot be fetched offline.
    local peers_flags=(--iterations 30 --save-every 5)
    if [[ $SMOKE == 1 ]]; then
        # Another run may be using bench/.peers/run here: parse the flags only.
        step peers 60 "$PY" -m bench.peers "${peers_flags[@]}" --help
    elif [[ -d bench/.peers/site/neural_style-0.5.7.dist-info && -n $weights_file ]]; then
        step peers 100 "$PY" -m bench.peers "${peers_flags[@]}"
    else
        skip peers "neural-style-pt is not in bench/.peers/site (or no weights), and it cannot be installed offline"
    fi

    echo
    echo "=== summary ($(($(date +%s) - START))s of ${BUDGET_S}s)"
    printf '%s\n' "${SUMMARY[@]}"
}

if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT"
    main "$@" 2>&1 | tee "$OUT/gpu-report.txt"
else
    main "$@" 2>&1
fi
