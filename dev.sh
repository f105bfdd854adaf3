#!/usr/bin/env bash
# Set up and run Winnow on a fresh machine (Debian 12 / Python 3.11 / pip). Usage:
#   ./dev.sh run   [snakemake args...]  create .venv, install pinned deps, run the default workflow
#   ./dev.sh test  [pytest args...]     create .venv, install pinned deps + test tools, run the tests
#   ./dev.sh slurm-test [pytest args]   only tests/slurm: a real single-node Slurm cluster (root; apt installs it)
#   ./dev.sh lint                       snakemake --lint, snakefmt --check, ruff check, ruff format --check
#   ./dev.sh venv                       only the set-up
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.installed"

setup() {
  local want
  want="$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)"
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then return; fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    # Debian's python3 lacks ensurepip unless python3-venv is installed; virtualenv works either way.
    "$PYTHON" -m venv "$VENV" 2>/dev/null || {
      rm -rf "$VENV"
      "$PYTHON" -m pip install --quiet --user virtualenv
      "$PYTHON" -m virtualenv --quiet "$VENV"
    }
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch is pinned exactly (torch==2.13.0): an unpinned torch would pull a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt -r requirements-dev.txt
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  echo "$want" > "$STAMP"
}

# The rendered-report test opens the report in Debian's headless Chromium; install it where we may.
browser() {
  command -v chromium >/dev/null && return
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium for the rendered-report test" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing and cannot be installed here (not root): the rendered-report test skips" >&2
  fi
}

[[ "$VENV" == /* ]] || VENV="$PWD/$VENV" # an absolute VENV (shared between clones) works too
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

cmd="${1:-}"
shift || true
case "$cmd" in
  venv) setup ;;
  run) setup; snakemake "$@" ;;
  test) setup; browser; python -m pytest -q "$@" tests ;;
  slurm-test) setup; python -m pytest -q -rs "$@" tests/slurm ;;
  lint)
    setup
    snakemake --lint
    snakefmt --check Snakefile rules
    ruff check src tests tools
    ruff format --check src tests tools
    ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
