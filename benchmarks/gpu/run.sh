#!/usr/bin/env bash
# The GPU benchmark in one command (benchmarks/gpu/README.md):
#   bash benchmarks/gpu/run.sh --out DIR [--smoke] [--budget-s S] [--sections a,b] [--wheels DIR]
# Installs nothing from the network. --wheels DIR installs the wheels in DIR (no index, no dependencies) into a
# folder on PYTHONPATH first: for a machine whose transformers is outside the supported range.
# A hard stop (HARD_LIMIT_S, default 480 s) ends the run if the budget guard inside misjudged a section; the
# results of every finished section are already on disk then.
set -euo pipefail
cd "$(dirname "$0")/../.."
args=()
wheels=""
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels="${2:?--wheels needs a folder}"; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
# The checkout's virtual environment where there is one (here), else the machine's python3 (the GPU image's).
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ -n "$wheels" ]; then
    shopt -s nullglob
    found=("$wheels"/*.whl)
    [ ${#found[@]} -gt 0 ] || { echo "run.sh: no .whl files in $wheels" >&2; exit 2; }
    site=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$site" "${found[@]}"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The GPU machine reaches no network: nothing may wait on the Hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec timeout --kill-after=15 "${HARD_LIMIT_S:-480}" "$PY" benchmarks/gpu/gpu_bench.py "${args[@]}"
