#!/usr/bin/env bash
# The GPU check: on a CUDA machine, the harness's training steps per second and the time train.py takes to
# reach 99.0% test accuracy, with the default recipe and with the fastest settings we have. About 5-8 minutes.
#
#   bash bench/gpu_check.sh [DATA_ROOT]      # DATA_ROOT holds MNIST/raw (default: ../shared/data)
#
# Each step prints one JSON line; docs/performance.md says how to read them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(realpath "${1:-../shared/data}")
export PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"

# 1. training steps of the harness path vs the usual DataLoader pipeline, batch 64 and 512
python -m lenet.bench --device cuda --root "$root" --json --steps 300 --rounds 3 | python -c \
  "import json,sys; r=json.load(sys.stdin); print(json.dumps({'bench': 'steps', 'batch': 64, 'harness_images_per_s': r['harness']['images_per_second'], 'usual_images_per_s': r['usual']['images_per_second']}))"
python -m lenet.bench --device cuda --root "$root" --json --steps 300 --rounds 3 --batch-size 512 | python -c \
  "import json,sys; r=json.load(sys.stdin); print(json.dumps({'bench': 'steps', 'batch': 512, 'harness_images_per_s': r['harness']['images_per_second'], 'usual_images_per_s': r['usual']['images_per_second']}))"

# 2. time from process start to the end of the first epoch at >= 99.0% test accuracy
reach() { timeout 150 python -m lenet.bench reach --target 0.99 --override device=cuda --override "data.root=$root" \
  "$@" || echo "{\"failed\": \"$*\"}"; }
reach                                                                         # the default recipe, on the GPU
reach --override trainer.precision=bf16                                       # bf16 autocast
reach --override trainer.batch_size=512 --override optimizer.lr=0.1 --override trainer.precision=bf16 \
      --override trainer.epochs=8                                             # fewer, larger steps
reach --override trainer.batch_size=512 --override optimizer.lr=0.1 --override trainer.precision=bf16 \
      --override trainer.epochs=8 --override trainer.compile=true             # and torch.compile
