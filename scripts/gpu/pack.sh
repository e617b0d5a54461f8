#!/usr/bin/env bash
# Packs the three data sets into few large blobs for the GPU runner (each `run` call carries at most 64 MiB,
# and tens of thousands of small PNGs cost far more in transit than their bytes).
# Usage, from the repository root:  bash scripts/gpu/pack.sh [../shared/data]
# Result: .gpu/p1 ... .gpu/pN (ignored by git), each one file `data.zip.NN` of at most 60 MiB.
# On the runner:  cat .gpu/p*/data.zip.* > /tmp/data.zip && python3 -m zipfile -e /tmp/data.zip /root/gpu/
set -euo pipefail
src=${1:-../shared/data}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu
python3 - "$src" <<'PY'
import os, sys, zipfile
src = sys.argv[1]
with zipfile.ZipFile(".gpu/data.zip", "w", compression=zipfile.ZIP_STORED) as z:
    for d, _, fs in sorted(os.walk(src)):
        for f in sorted(fs):
            p = os.path.join(d, f)
            z.write(p, os.path.join("data", os.path.relpath(p, src)))
PY
split -b 60M -d .gpu/data.zip .gpu/data.zip.
rm .gpu/data.zip
k=0
for f in .gpu/data.zip.*; do k=$((k+1)); mkdir -p .gpu/p$k; mv "$f" .gpu/p$k/; done
du -sh .gpu/p*
