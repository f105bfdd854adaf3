#!/usr/bin/env bash
# The GPU preset (config/presets/gpu.yaml) run end to end on one GPU, over several device calls.
#
#   bash benchmarks/gpu_preset.sh wheels  # here: downloads the pinned wheels below into .whl
#   bash benchmarks/gpu_preset.sh setup   # carry .whl: installs the wheels into /tmp/site (see below)
#   bash benchmarks/gpu_preset.sh less    # after setup: LESS features in two processes, profiled
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
FOLLOW=${FOLLOW:-540} # seconds this call follows the run before it packs the progress

# GPU jobs in flight on the one GPU (--resources gpu=N): one per 26 GiB of the card. The PDS solver
# peaks near 29 GiB and a trainer near 12 GiB; six jobs on an 80 GB H100 ran out of memory (three
# jobs failed in the run of 2026-12-06), three per H100 and five per H200 leave room.
gpus() {
  echo "${GPUS:-$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 |
  awk '{n = int($1 / 1024 / 26); print (n < 1) ? 1 : n}')}"
}

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

# What the device image lacks, pinned to what the tests here ran with (Python 3.12 wheels).
WHEELS=(
  annotated_types==0.8.0 argparse_dataclass==2.0.0 chardet==6.0.0.post1 conda_inject==1.3.2
  configargparse==1.9.0 connection_pool==0.0.3 dataproperty==1.1.1 datasets==5.2.0
  defusedxml==0.7.1 dill==0.4.1 docutils==0.22.4 dpath==2.2.0 evaluate==0.4.6
  fastjsonschema==2.22.3 gitdb==4.0.12 gitpython==3.2.1 greenlet==3.5.6 humanfriendly==10.0
  immutables==0.21 jsonschema==4.26.0 jsonschema_specifications==2025.9.1 jupyter_core==5.9.1
  lm_eval==0.4.13 mbstrdecoder==1.1.5 more_itertools==11.2.1 multiprocess==0.70.19
  nbformat==5.11.1 nltk==3.10.4 pathvalidate==3.3.1 peft==0.21.2 platformdirs==4.14.9
  pydantic==2.14.4 pydantic_core==2.50.5 pytablewriter==1.2.1 pytz==2026.6 referencing==0.37.0
  rpds_py==2026.9.1 smart_open==7.7.1 smmap==5.0.3 snakemake==9.27.1
  snakemake_interface_common==1.23.0 snakemake_interface_executor_plugins==9.4.0
  snakemake_interface_logger_plugins==2.1.0 snakemake_interface_report_plugins==1.3.0
  snakemake_interface_scheduler_plugins==2.0.2 snakemake_interface_storage_plugins==4.4.1
  sqlalchemy==2.0.58 sqlitedict==2.1.0 sqlmodel==0.0.37 tabledata==1.3.5 tcolorpy==0.1.7
  tenacity==9.2.1 throttler==1.2.3 traitlets==5.16.1 transformers==5.23.0 typepy==1.3.5
  typing_inspection==0.4.5 word2number==1.1 yte==1.9.4
)

case ${1:-run} in
wheels)
  for w in "${WHEELS[@]}" rouge_score==0.1.2; do
    # a release with no wheel on PyPI (connection_pool, rouge_score, ...) is built here: pure Python
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_28_x86_64 -d .whl "$w" 2>/dev/null ||
      python3 -m pip wheel -q --no-deps -w .whl "$w" || exit 1
  done
  ;;
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
less)
  # issue 21 item 4: LESS features in a first and a second process on the same machine (the
  # slow mode seen in later processes), each pass profiled, with a 10 Hz GPU trace; before `run`
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,utilization.gpu --format=csv -lms 100 \
    >"$OUT/smi_less.csv" 2>&1 &
  smi=$!
  for i in 1 2; do
    OUT=$OUT/less$i bash benchmarks/gpu_all.sh lessR3P >"$OUT/less$i.log" 2>&1
    grep -E "^\| (LESS Adam|hooks, each)|done in|Error" "$OUT/less$i.log"
  done
  kill "$smi"
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
      --cores "$(nproc)" --resources gpu="$(gpus)" --scheduler greedy --keep-going \
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
