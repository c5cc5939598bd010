#!/usr/bin/env bash
# Everything the project needs from a lent GPU machine (issues #14 and #15), in calls that fit its limits:
# ≤ 10 min a call, 15 min of device time in all (the machine's start included), the working tree ≤ 64 MiB
# (../shared does not travel, and the literature alone is 70 MB), and ≤ 8 files / 16 MiB each / 64 MiB in
# all back per call.
#
#   here, once:       scripts/gpu_session.sh pack        # both corpora as .xz into .device/ (git-ignored)
#   there, call 1:    scripts/gpu_session.sh train       # carry [".device"], timeout 600: train, bundle, export
#   there, call 2:    scripts/gpu_session.sh rest        # at once, while the machine is warm: the parts past
#                                                        # call 1's return, then the #15 speed figures
#   here:             python scripts/install_gpu_weights.py <call 1's files> <call 2's files>
#
# Rehearse here first (minutes, no GPU): OUT=/tmp/gpu-out TRAIN_ARGS="--smoke --weights-root /tmp/gpu-w" \
#   scripts/gpu_session.sh train && python scripts/install_gpu_weights.py /tmp/gpu-out --weights-root /tmp/gpu-i
#
# Once small's weights are in the package (≈ 84 MB), the working tree no longer fits the 64 MiB that may
# travel: move rujokes_model/weights/small/model.safetensors out of the tree for the call (the plan retrains
# small there anyway), and back afterwards.
#
# On the machine `python3` is the one with torch (2.11+, CUDA), accelerate, tokenizers, safetensors,
# matplotlib and transformers; the project runs from the working tree (PYTHONPATH), nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RUNS=runs/gpu
DATA=.device/russian_jokes.jsonl.xz
LITERATURE=.device/russian_literature.jsonl.xz
# Call 1's script time. The device time is 900 s in all: ≈ 90 s to start the machine, this, ≈ 30 s of
# bundling and export, and call 2's ≈ 220 s must fit, with a margin.
TRAIN_BUDGET_S=${TRAIN_BUDGET_S:-450}

case "${1:-}" in
  pack)
    mkdir -p .device
    for name in russian_jokes russian_literature; do
      xz -T0 -6 -c "../shared/data/$name.jsonl" > ".device/$name.jsonl.xz"
    done
    du -ch .device/* | tail -1
    ;;
  train)
    : "${OUT:?OUT must name the folder whose files come back}"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    "$PY" scripts/train_gpu.py --runs "$RUNS" --data "$DATA" --pretrain-data "$LITERATURE" \
      --budget-s "$TRAIN_BUDGET_S" --export "$OUT" ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/train.log"
    ;;
  rest)
    : "${OUT:?OUT must name the folder whose files come back}"
    if [ -d "$RUNS/export-rest/1" ]; then cp "$RUNS/export-rest/1/"* "$OUT/"; fi
    [ ! -d "$RUNS/export-rest/2" ] || echo "more parts in $RUNS/export-rest/2: fetch them with one more call"
    # #15's figures, each with a cap so that they cannot cost the parts above their return: the serving
    # engine's modes only (the CUDA-graph step, eager and compiled inside), the preset attention only.
    timeout 150 "$PY" benchmarks/generate_speed.py --device cuda --dtype bf16 --sizes mini small --preset-only \
      --modes graphed compiled+graphed --batches 1 16 --repeats 2 2>&1 | tee "$OUT/generate_speed.txt" || true
    timeout 60 "$PY" benchmarks/gpu_engine_check.py --requests 64 2>&1 | tee "$OUT/gpu_engine_check.txt" || true
    ;;
  *)
    echo "usage: $0 pack|train|rest" >&2
    exit 2
    ;;
esac
