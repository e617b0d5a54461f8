#!/usr/bin/env bash
# The full-profile reproduction on the GPU runner (issue 6). Run from the repository root after the data
# parts of scripts/gpu/pack.sh were copied to /root/gpu/. Writes results and logs under $OUT (or ./gpu-out).
# Usage: SEPDTD_COMMIT=<sha> bash scripts/gpu/job.sh [seeds...]
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export SEPDTD_CACHE=/root/cache SEPDTD_DATA_MIRROR=/root/gpu/data
if [ ! -d /root/gpu/data ]; then
  cat /root/gpu/data.zip.* > /tmp/data.zip && python3 -m zipfile -e /tmp/data.zip /root/gpu/ && rm /tmp/data.zip
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, sys; print(sys.version, torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
SECONDS=0
python3 -m sepdtd data prepare 2>&1 | tail -5 | tee "$OUT/prepare.log"
echo "data prepare: ${SECONDS} s" | tee -a "$OUT/prepare.log"
res=results/full
seeds=("${@:-0 1 2}")
for s in ${seeds[@]}; do
  # one seed at a time: the three data sets run concurrently, so run_wall_s is the paper's wall time per seed
  python3 -m sepdtd reproduce --profile full --device cuda --seeds "$s" --jobs 3 --results-dir "$res" \
    > "$OUT/reproduce-seed$s.log" 2>&1
  echo "seed $s: exit $?"
  tail -30 "$OUT/reproduce-seed$s.log"
  tar czf "$OUT/results-full.tar.gz" "$res"
done
python3 -m sepdtd.report "$res" | tee "$OUT/report.txt"
