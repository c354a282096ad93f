#!/usr/bin/env bash
# The prepared device runs (bench/README.md, "GPU"): after `make gpu-pack` here, one call each on a lent GPU machine:
#   run(command="bash bench/gpu.sh", carry=[".gpuwheels", "bench/out/gpu-pack"], timeout_s=570)               # issue 25
#   run(command="bash bench/gpu.sh --phase learn", carry=[".gpuwheels", "bench/out/gpu-pack"], timeout_s=570) # issue 26
# Nothing is downloaded or built: the wheels the image lacks install from the carried .gpuwheels/ into a folder of
# their own, and wit runs from a tree of links in pyproject's layout (no pip install of wit, so no setuptools needed).
# Flags go to bench/gpu.py; its results and logs land in $OUT. Here, on CPU: PY=.venv/bin/python bash bench/gpu.sh --smoke
set -uo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-$(mktemp -d -t wit-bench-gpu-out-XXXXXX)}
SITE=$(mktemp -d -t wit-site-XXXXXX)
mkdir -p "$OUT" "$SITE/wit"
# pyproject.toml's package-dir: wit/ is the package, the wings are its subpackages
ln -s "$PWD"/wit/*.py "$PWD"/wit/*.toml "$SITE/wit/"
for wing in shards ingest filters trainer; do ln -s "$PWD/$wing" "$SITE/wit/$wing"; done
if ! $PY -c "import open_clip, open_clip_train, webdataset, braceexpand, ftfy" 2>/dev/null; then
    ls .gpuwheels/*.whl >/dev/null 2>&1 || { echo "bench/gpu.sh: open_clip and co. missing, and no .gpuwheels/ carried (make gpu-pack)" >&2; exit 2; }
    $PY -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$SITE" .gpuwheels/*.whl || exit 2
fi
# PYTHONSAFEPATH: no python here puts the current folder first on its path, where the checkout's wit/ (the door
# alone, without its wings) would hide the tree of links
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch, torchvision, open_clip, wit.trainer.train as t; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'open_clip', open_clip.__version__, 'wit from', t.__file__); assert t.__file__.startswith('$SITE')"
} 2>&1 | tee "$OUT/gpu.log" || exit 2
$PY bench/gpu.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/gpu.log"
