#!/usr/bin/env bash
# The full-profile reproduction on the GPU runner (issue 6). Run from the repository root after the data
# parts of scripts/gpu/pack.sh were copied to /root/gpu/. Writes results and logs under $OUT (or ./gpu-out).
# Usage: SEPDTD_COMMIT=<sha> bash scripts/gpu/job.sh [seeds...]
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
export SEPDTD_CACHE=/root/cache SEPDTD_DATA_MIRROR=/root/gpu/data
if [ ! -d /root/gpu/data ]; then
  cat /root/gpu/data.zip.* > /tmp/data.zip && python3 -m zipfile -e /tmp/data.zip /root/gpu/ && rm /tmp/data.zip
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/setup.log"
$PY -c "import torch, sys; print(sys.version, torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee -a "$OUT/setup.log"
SECONDS=0
$PY -m sepdtd data prepare 2>&1 | tail -5 | tee -a "$OUT/setup.log"
echo "data prepare: ${SECONDS} s" | tee -a "$OUT/setup.log"
PROFILE=${PROFILE:-full} DEVICE=${DEVICE:-cuda}
res=${RESULTS:-results/$PROFILE}
# Seed groups, ';'-separated: the first seed alone, so that its run_wall_s is the paper's wall time on
# an otherwise idle GPU; the others together (their run_wall_s then includes each other's load).
IFS=';' read -ra groups <<< "${SEED_GROUPS:-0;1 2}"
deadline=${DEADLINE_S:-100000}
for g in "${groups[@]}"; do
  read -ra seeds <<< "$g"
  left=$((deadline - SECONDS))
  [ "$left" -gt 20 ] || { echo "no time left for seeds $g"; break; }
  tag=$(echo "$g" | tr ' ' '-')
  timeout "$left" $PY -m sepdtd reproduce --profile "$PROFILE" --device "$DEVICE" --seeds ${seeds[@]} \
    --jobs $((3 * ${#seeds[@]})) --results-dir "$res" > "$OUT/reproduce-seed$tag.log" 2>&1
  echo "seeds $g: exit $? at ${SECONDS} s"
  grep -a -v "it/s\|s/it\|epoch/s\|s/epoch\|setting/s\|s/setting" "$OUT/reproduce-seed$tag.log" | tail -40
  tar czf "$OUT/results-$PROFILE.tar.gz" "$res"
done
# Chapters 9-10 at this profile for seed 0, the data sets side by side, if time is left (BEYOND=0 skips).
left=$((deadline - SECONDS))
if [ "${BEYOND:-1}" = 1 ] && [ "$left" -gt 60 ]; then
  for d in mnist fashion_mnist cifar10; do
    timeout "$left" $PY -m sepdtd beyond --profile "$PROFILE" --device "$DEVICE" --seeds 0 --datasets $d \
      > "$OUT/beyond-$d.log" 2>&1 &
  done
  wait
  echo "beyond: done at ${SECONDS} s"; tail -n 3 "$OUT"/beyond-*.log
  tar czf "$OUT/results-$PROFILE.tar.gz" "$res" results/$PROFILE/beyond 2>/dev/null || tar czf "$OUT/results-$PROFILE.tar.gz" "$res"
fi
$PY -m sepdtd.report "$res" > "$OUT/report.txt" 2>&1; head -n 40 "$OUT/report.txt"
