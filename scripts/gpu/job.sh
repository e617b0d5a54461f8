#!/usr/bin/env bash
# The full-profile reproduction on the GPU runner (issues 6-7). Run from the repository root after the
# data parts of scripts/gpu/pack.sh were copied to /root/gpu/. Writes results and logs under $OUT (or ./gpu-out).
# Usage: SEPDTD_COMMIT=<sha> [VAR=...] bash scripts/gpu/job.sh
#   SEED_GROUPS="0;1 2"  seed groups run one after the other (';'), the seeds of a group side by side
#   DEADLINE_S=N         stop starting work after N s and kill what runs at N s (results written so far stay)
#   FRESH=1              drop this copy's results/<profile> first (0: keep them: existing units are loaded)
#   BEYOND=1             chapters 9-10 for the first group's first seed, beside the remaining groups
#   CUDA_TESTS=1 BENCH=1 the CUDA-only tests first; benchmarks/bench_train.py at the end if time is left
#   TUNE="lr3e-5 lr1e-5 ..." fine-tuning candidates (sepdtd.tuning.CANDIDATES) for CIFAR-10 and the first
#                        group's first seed, one process each, beside the remaining groups; they start
#                        from that unit's baseline, so that unit must be trained in this run (FRESH=1, or
#                        BEYOND=1, which rebuilds its checkpoints). The unit itself is the "paper" candidate.
#   TUNE_LAMS="1.0"      λ of the candidates' stacks (default: the profile's four); add 1e-30 for each
#                        candidate's control without the penalty (sepdtd.report.CONTROL_LAM): "1e-30 1.0"
#                        (members of one stack share batches but not dropout masks)
# A rerun on the same machine resumes interrupted units from the checkpoints under /root/cache.
# What the committed run still lacks (results/full/README.md): chapters 9-10 for CIFAR-10, i.e.
#   FRESH=0 SEED_GROUPS="0" BEYOND=1 (seed 0's networks are retrained first: checkpoints are not committed).
# The next full rerun should first merge the held-back fixes (CONTRIBUTING.md, "Waiting for the next
# full-profile rerun": `git merge rerun-fixes`, or `git am -3 patches/rerun-fixes.mbox`): they change the
# code hash, so every committed result is stale afterwards and the rerun is FRESH=1 for all of them.
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
# FRESH=1 (default): recompute, i.e. drop this copy's committed results (they would be loaded, not rerun)
if [ "${FRESH:-1}" = 1 ]; then rm -f "$res"/*/seed*.json; rm -rf "$res/beyond"; fi
# The CUDA-only tests (CUDA graph of the training step, stacked fine-tunes, the control's λ = 1e-30 as
# λ = 0) first: the run relies on them.
if [ "${CUDA_TESTS:-1}" = 1 ]; then
  timeout 180 $PY -m pytest -q -p no:cacheprovider -k cuda \
    tests/test_training.py tests/test_stacked.py tests/test_tuning.py \
    2>&1 | tail -15 | tee -a "$OUT/setup.log"
  echo "cuda tests: done at ${SECONDS} s" | tee -a "$OUT/setup.log"
fi
# Seed groups, ';'-separated: the first seed alone, so that its run_wall_s is the paper's wall time on
# an otherwise idle GPU; the others together (their run_wall_s then includes each other's load).
# Chapters 9-10 (BEYOND=1) need the first group's networks: they start as soon as it is done, the data
# sets side by side, beside the remaining seed groups.
IFS=';' read -ra groups <<< "${SEED_GROUPS:-0;1 2}"
deadline=${DEADLINE_S:-100000}
pack() { tar czf "$OUT/results-$PROFILE.tar.gz" "$res" $( [ -d "results/$PROFILE/beyond" ] && echo "results/$PROFILE/beyond" ) \
  $( [ -d "results/$PROFILE/tuning" ] && echo "results/$PROFILE/tuning" ) 2>/dev/null; }
first=1
for g in "${groups[@]}"; do
  read -ra seeds <<< "$g"
  left=$((deadline - SECONDS))
  [ "$left" -gt 20 ] || { echo "no time left for seeds $g"; break; }
  tag=$(echo "$g" | tr ' ' '-')
  timeout "$left" $PY -m sepdtd reproduce --profile "$PROFILE" --device "$DEVICE" --seeds ${seeds[@]} \
    --jobs $((3 * ${#seeds[@]})) --results-dir "$res" > "$OUT/reproduce-seed$tag.log" 2>&1
  echo "seeds $g: exit $? at ${SECONDS} s"
  grep -a -v "it/s\|s/it\|epoch/s\|s/epoch\|setting/s\|s/setting" "$OUT/reproduce-seed$tag.log" | tail -40
  pack
  left=$((deadline - SECONDS))
  if [ "$first" = 1 ] && [ "${BEYOND:-1}" = 1 ] && [ "$left" -gt 60 ]; then
    for d in mnist fashion_mnist cifar10; do
      OMP_NUM_THREADS=2 timeout "$left" $PY -m sepdtd beyond --profile "$PROFILE" --device "$DEVICE" --seeds "${seeds[0]}" \
        --datasets $d > "$OUT/beyond-$d.log" 2>&1 &
    done
    echo "beyond: started at ${SECONDS} s"
  fi
  if [ "$first" = 1 ] && [ -n "${TUNE:-}" ] && [ "${FRESH:-1}" != 1 ] && [ "${BEYOND:-1}" != 1 ]; then
    echo "TUNE skipped: it needs this run to train the CIFAR-10 unit of seed ${seeds[0]} (FRESH=1 or BEYOND=1)"
  elif [ "$first" = 1 ] && [ -n "${TUNE:-}" ] && [ "$left" -gt 60 ]; then
    ( # wait (at most 15 min) for the unit's baseline, which BEYOND may be rebuilding:
      # the check exits 0 when it is there, 3 when not yet; anything else is an error
      t0=$SECONDS
      while :; do
        $PY -c "import sys; from sepdtd import experiments as E; c = E.make_config('$PROFILE', 'cifar10', ${seeds[0]}); \
sys.exit(0 if 'baseline' in E._read_partial(E.checkpoint_dir(c), E.config_hash(c), E.code_hash()) else 3)"
        rc=$?
        [ "$rc" = 0 ] && break
        [ "$rc" = 3 ] || { echo "tune: cannot read the unit's checkpoints (exit $rc)"; exit 0; }
        [ $((deadline - SECONDS)) -gt 60 ] && [ $((SECONDS - t0)) -lt 900 ] \
          || { echo "tune: no baseline in time, candidates not started"; exit 0; }
        sleep 5
      done
      [ $((deadline - SECONDS)) -gt 60 ] || exit 0
      for c in $TUNE; do
        OMP_NUM_THREADS=2 timeout $((deadline - SECONDS)) $PY -m sepdtd tune --profile "$PROFILE" --device "$DEVICE" \
          --dataset cifar10 --seed "${seeds[0]}" --candidates "$c" ${TUNE_LAMS:+--lams $TUNE_LAMS} \
          > "$OUT/tune-$c.log" 2>&1 &
      done
      wait ) &
    echo "tune: started at ${SECONDS} s"
  fi
  first=0
done
wait
echo "all done at ${SECONDS} s"
[ "${BEYOND:-1}" = 1 ] && tail -n 2 "$OUT"/beyond-*.log
[ -n "${TUNE:-}" ] && tail -n 6 "$OUT"/tune-*.log
pack
# Training throughput (CUDA graph on/off, stacked fine-tunes) if time is left (BENCH=0 skips).
left=$((deadline - SECONDS))
if [ "${BENCH:-1}" = 1 ] && [ "$left" -gt 60 ]; then
  timeout "$left" $PY benchmarks/bench_train.py --device "$DEVICE" --steps 200 --warmup 20 --workers 0 \
    --json "$OUT/bench_train.json" > "$OUT/bench_train.log" 2>&1
  echo "bench_train: exit $? at ${SECONDS} s"; cat "$OUT/bench_train.log"
fi
$PY -m sepdtd.report "$res" > "$OUT/report.txt" 2>&1; head -n 40 "$OUT/report.txt"
