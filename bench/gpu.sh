#!/usr/bin/env bash
# The prepared device run of issue 12 (bench/README.md, "GPU"): one call on a lent GPU machine, e.g.
#   run(command="bash bench/gpu.sh", carry=["bench/out/gpu-pack.npz", ".gpuwheels"], timeout_s=570)
# It installs wit (and, when the machine's image lacks them, open_clip_torch, webdataset, ... from the carried
# .gpuwheels/ folder; nothing is downloaded), then runs bench/gpu.py: throughput of wit --decode gpu, wit --decode cpu
# and open_clip_train.main, MFU, and the CIFAR-10 zero-shot run; the log goes to $OUT/gpu.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-/tmp/wit-bench-gpu}
mkdir -p "$OUT"
if ! $PY -c "import open_clip, open_clip_train, webdataset" 2>/dev/null; then
    test -d .gpuwheels || { echo "bench/gpu.sh: open_clip/open_clip_train missing and no .gpuwheels/ carried" >&2; exit 2; }
    $PY -m pip install -q --no-index --find-links .gpuwheels .gpuwheels/*.whl
fi
$PY -c "import wit.trainer.gpu_decode" 2>/dev/null || $PY -m pip install -q --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.log"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/gpu.log"
$PY bench/gpu.py --work /tmp/wit-bench-gpu-work "$@" 2>&1 | tee -a "$OUT/gpu.log"
