#!/usr/bin/env bash
# The GPU preset (config/presets/gpu.yaml) run end to end on one GPU, over several device calls.
#
#   bash benchmarks/gpu_preset.sh setup   # carry .whl: installs the wheels into .site (see below)
#   bash benchmarks/gpu_preset.sh run     # carry data/large_corpus: starts or follows the run
#
# The device image has PyTorch but not Snakemake, datasets, lm-eval (nor our transformers/peft
# versions): they travel as wheels (.whl, 37 MB) and are installed with --no-deps into /tmp/site,
# outside the tree (the device replaces the tree's untracked files at every call; /tmp stays while
# the machine is warm). The corpus (47 MB) travels in the next call,
# since both exceed one call's carry limit together. `run` starts Snakemake detached (setsid) so
# that it outlives one call's 10-minute limit; a later `run` follows the same process. Whatever
# happens, $OUT/progress.tgz holds the benchmarks, logs, summaries and the GPU utilisation trace.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=gpu
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$ROOT/src HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p .bin && printf '#!/bin/sh\nexec python3 "$@"\n' >.bin/python && chmod +x .bin/python
export PATH=$ROOT/.bin:$PATH
OUT=${OUT:-/tmp/gpu_preset_out}
mkdir -p "$OUT" results/$RUN
# GPU jobs in flight on the one GPU (--resources gpu=N): one per 26 GiB of the card. The PDS solver
# peaks near 29 GiB and a trainer near 12 GiB; six jobs on an 80 GB H100 ran out of memory (three
# jobs failed in the run of 2026-12-06), three per H100 and five per H200 leave room.
GPUS=${GPUS:-$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 |
  awk '{n = int($1 / 1024 / 26); print (n < 1) ? 1 : n}')}
FOLLOW=${FOLLOW:-540} # seconds this call follows the run before it packs the progress

# kill -0 also succeeds on a zombie (an exited child nobody waited for): read its state instead
alive() { [ -r /proc/$1/stat ] && ! grep -q '^[0-9]* ([^)]*) [ZX]' /proc/$1/stat; }

pack() {
  nvidia-smi --query-gpu=name,clocks.sm,memory.used,utilization.gpu --format=csv >results/$RUN/gpu_last.csv 2>&1
  cp .snakemake/log/*.snakemake.log results/$RUN/ 2>/dev/null
  # small text artifacts only (one call brings back 16 MiB a file): tables, summaries, logs
  find results/$RUN -path "*/cache" -prune -o -type f -size -2M \( -name '*.tsv' -o -name '*.json' \
    -o -name '*.log' -o -name '*.csv' -o -name '*.txt' -o -name '*.md' \) -print >/tmp/pack.list
  timeout 30 tar czf "$OUT/progress.tgz" -T /tmp/pack.list
  ls -la "$OUT"
}

case ${1:-run} in
setup)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  python3 - <<'PY'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))
for m in ("snakemake", "datasets", "lm_eval", "transformers", "peft", "pyarrow", "winnow"):
    mod = importlib.import_module(m)
    print(m, getattr(mod, "__version__", "?"), mod.__file__)
PY
  nproc; free -g | head -2
  ;;
run)
  test -f data/large_corpus/corpus.parquet || { echo "no corpus carried"; exit 1; }
  python3 -c "import snakemake" || { echo "no /tmp/site: run setup first (machine not warm?)"; exit 1; }
  if [ ! -f results/$RUN/snakemake.pid ] || ! alive "$(cat results/$RUN/snakemake.pid)"; then
    if [ -f results/$RUN/snakemake.pid ]; then echo "previous Snakemake ended; starting again"; fi
    # the GPU trace: one sample a second for the whole run
    pgrep -f "nvidia-smi --query-gpu=timestamp" >/dev/null || setsid nohup nvidia-smi \
      --query-gpu=timestamp,utilization.gpu,memory.used,clocks.sm --format=csv,noheader -l 1 \
      >>results/$RUN/gpu_util.csv 2>/dev/null &
    date -u +%s >>results/$RUN/started_at
    setsid nohup python3 -m snakemake --profile profiles/local-gpu --configfile config/presets/gpu.yaml \
      --cores "$(nproc)" --resources gpu="$GPUS" --scheduler greedy --keep-going \
      >>results/$RUN/snakemake.console.log 2>&1 &
    echo $! >results/$RUN/snakemake.pid
  fi
  pid=$(cat results/$RUN/snakemake.pid)
  for _ in $(seq "$FOLLOW"); do alive "$pid" || break; sleep 1; done
  if alive "$pid"; then echo "RUNNING"; else echo "ENDED"; date -u +%s >results/$RUN/ended_at; fi
  grep -E "steps \(|Error|error in rule|Exiting|Nothing to be done|Complete log" results/$RUN/snakemake.console.log | tail -20
  pack
  ;;
esac
