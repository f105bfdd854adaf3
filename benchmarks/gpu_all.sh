#!/usr/bin/env bash
# All GPU benchmarks of issue 9 in one device call (the rows JSON of each lands in $OUT).
#   bash benchmarks/gpu_all.sh [train scorer pds less mates]   (from the repository root; default: all)
# A device call that runs a copy of the tree (.gpuwt) does `cd .gpuwt` first.
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
benches=${*:-train scorer pds less mates}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
for b in $benches; do
  script=$(echo $b | sed -E "s/(16|MA|512|512r2|c)$//")
  case $b in
    # session 5 (H200): causal SDPA under compile; the previous path and the fused head side by side
    trainV) script=train; args="--variants plain,fused" ;;
    trainP) script=train; args="--skip-eager --variants fused --profile" ;;
    scorerE) script=scorer; args="--batches 8 --profile" ;;
    scorer32) script=scorer; args="--batches 32 --repeat 3 --skip-eager" ;;
    # session 4 (H200): the workflow paths
    matesC) script=mates; args="--k 16,32 --compile --grad-mode loop" ;;
    matesCv) script=mates; args="--k 16,24 --compile --grad-mode vmap" ;;
    lessB96) script=less; args="--batch 96 --project-batch 480 --n 480 --repeat 1" ;;
    # issue 21: three timed passes after a one-batch warm-up, each pass's rate and the allocator's
    # growth recorded; the loop over 240 of the 480 examples (its rate is per example)
    lessR3) script=less; args="--batch 96 --project-batch 480 --n 480 --repeat 3 --skip-vmap --ref-n 240" ;;
    lessR3P) script=less; args="--batch 96 --project-batch 480 --n 480 --repeat 3 --skip-vmap --ref-n 240 --profile" ;;
    lessB96w) script=less; args="--batch 96 --project-batch 480 --n 480 --repeat 1 --warmup-full" ;;
    scorerP) script=scorer; args="--batches 4 --skip-eager --profile" ;;
    pdsW) script=pds; args="--proxy 64 --micro 64 --loop 8 --workflow --workflow-precision bf16,model" ;;
    scorerB256) script=scorer; args="--batch 256 --batches 4 --skip-eager" ;;
    scorerMA) script=scorer; args="--batches 4 --skip-eager --compile-mode max-autotune-no-cudagraphs" ;;
    score_pool) args="--n 100000 --kill-at 0.5" ;;
    lessB128) script=less; args="--batch 128 --project-batch 512 --n 512 --repeat 1" ;;
    train) args="" ;;
    scorer) args="--batches 8" ;;
    train16) args="--skip-eager --micro-fast 16" ;;
    trainMA) args="--skip-eager --compile-mode max-autotune-no-cudagraphs" ;;
    less512) args="--batch 64 --project-batch 512 --n 512 --repeat 1" ;;
    less512r2) args="--batch 64 --project-batch 512 --n 512 --repeat 2" ;;
    pdsc) args="--proxy 128 --micro 32,64 --compile --loop 16" ;;
    pds) args="--proxy 128 --micro 32,64 --compile --loop 16" ;;
    less) args="--batch 64 --project-batch 128" ;;
    mates) args="--k 16" ;;
    *) args="" ;;
  esac
  echo "== $b $args"
  start=$(date +%s)
  # the scripts' own full JSON (write_result) goes to /tmp: the rows document holds it under "details"
  OUT=/tmp/bench_raw python3 benchmarks/bench_$script.py $args --json "$OUT/$b.json" 2>&1 | grep -v "^W[0-9]" | tail -40
  echo "== $b done in $(( $(date +%s) - start )) s"
done
python3 benchmarks/run.py --help >/dev/null && python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from run import table
docs = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*.json"))]
print(table(docs))
PY
