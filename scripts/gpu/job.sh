#!/usr/bin/env bash
# Train, keep and measure every CIFAR-10 network of a profile in one job: the paper's protocol at seeds
# 0-2 (baseline and the four λ) and the networks of chapters 9-10 at seed 0. Run from the repository root.
#   On the GPU runner (after scripts/gpu/stage.sh; see ../shared/gpu/README.md):
#     SEPDTD_COMMIT=<sha> bash scripts/gpu/job.sh
#   Dry run on a CPU (tests/test_gpu_job.py):  PROFILE=smoke DEVICE=cpu RESULTS=<dir> OUT=<dir> bash scripts/gpu/job.sh
# Variables: PROFILE (full), DEVICE (cuda), SEEDS ("0 1 2"), RESULTS (results/$PROFILE), OUT ($PWD/gpu-out),
# JOBS (units side by side; default: one per seed). Networks already kept and current are not trained again,
# so a second call after an interruption resumes (training checkpoints live under $SEPDTD_CACHE).
# What comes back: $OUT/cifar10-$PROFILE.tar (the CIFAR-10 networks, their records and the manifest) and
# $OUT/job.log with the wall time of every step.
set -euo pipefail
PROFILE=${PROFILE:-full}
DEVICE=${DEVICE:-cuda}
SEEDS=${SEEDS:-0 1 2}
RESULTS=${RESULTS:-results/$PROFILE}
OUT=${OUT:-$PWD/gpu-out}
read -ra seeds <<< "$SEEDS"
JOBS=${JOBS:-${#seeds[@]}}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
log() { echo "$(date -u +%H:%M:%S) [${SECONDS} s] $*" | tee -a "$OUT/job.log"; }
if [ -d /root/gpu/wheels ]; then                     # the runner: the staged wheels (safetensors, ...)
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /root/gpu/wheels/*.whl
  export PYTHONPATH=/tmp/site:$PWD
  export SEPDTD_DATA_MIRROR=${SEPDTD_DATA_MIRROR:-/root/gpu/data} SEPDTD_CACHE=${SEPDTD_CACHE:-/root/cache}
fi
export PYTHONUNBUFFERED=1
SECONDS=0
log "start: profile $PROFILE, device $DEVICE, seeds ${seeds[*]}, $JOBS at once"
$PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee -a "$OUT/job.log"
$PY -m sepdtd data prepare --sets cifar10 > /dev/null
log "data ready"
$PY -m sepdtd reproduce --profile "$PROFILE" --datasets cifar10 --seeds "${seeds[@]}" --device "$DEVICE" \
  --jobs "$JOBS" --results-dir "$RESULTS" >> "$OUT/job.log" 2>&1
log "the paper's networks: trained, kept and measured"
$PY -m sepdtd beyond --profile "$PROFILE" --datasets cifar10 --seeds "${seeds[0]}" --device "$DEVICE" \
  --results-dir "$RESULTS" >> "$OUT/job.log" 2>&1
log "chapters 9-10: trained, kept and measured"
( cd "$RESULTS" && tar cf "$OUT/cifar10-$PROFILE.tar" networks/MANIFEST.json networks/cifar10 train/cifar10 \
    $(ls -d measure/*/cifar10 2>/dev/null) )
log "packed $OUT/cifar10-$PROFILE.tar"
