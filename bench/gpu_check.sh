#!/usr/bin/env bash
# The GPU check: every CUDA-only path, one PASS/FAIL line each with its figures, in about 6 minutes.
#
#   bash bench/gpu_check.sh [DATA_ROOT]      # DATA_ROOT holds MNIST/raw (default: ../shared/data)
#
# The device machine has no network: stage the wheels of hydra-core, omegaconf and antlr4 (and optuna's,
# submitit's) as the device tool's README says, and install them before running this.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(realpath "${1:-../shared/data}")
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
out=${OUT:-/tmp}/gpu_check
mkdir -p "$out"
check() {  # check NAME COMMAND...: one line, PASS or FAIL, and the command's last line of figures
  local name=$1; shift
  if timeout 240 "$@" > "$out/$name.log" 2>&1; then echo "PASS $name $(tail -n 1 "$out/$name.log")"
  else echo "FAIL $name (see $out/$name.log) $(tail -n 1 "$out/$name.log")"; fi
}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" || exit 1

# 1. the cuda-marked tests: bf16, torch.compile against eager, the captured step (SGD, Adam, a model that
#    cannot be captured), a fused group's step
check cuda-tests python -m pytest -q -m cuda tests/test_cuda.py

# 2. the default recipe: seconds per epoch and time to 99%, eager (the default until this check has passed)
#    and with its step captured (trainer.cuda_graphs=auto; the goal: <= 0.3 s per epoch at the default batch)
reach() { python -m lenet.bench reach --train train.py --target 0.99 --override device=cuda --override "data.root=$root" "$@"; }
check default reach
check graphs reach --override trainer.cuda_graphs=auto
check bf16 reach --override trainer.precision=bf16

# 3. torch.compile, compiled once per run: per epoch against eager (the goal: >= 1.2x faster)
check compile reach --override trainer.compile=true

# 4. fused: 32 seeds x 10 epochs as one program, wall seconds (the goal: <= 2x one run)
fused() {
  local start=$(date +%s.%N)
  python train.py -m hydra/launcher=fused "seed=range(32)" device=cuda logger=none "data.root=$root" \
    hydra.sweep.dir="$out/fused" > "$out/fused-sweep.log" 2>&1 || return 1
  python -c "import sys; print(f'32 seeds x 10 epochs: {float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" "$start" "$(date +%s.%N)"
}
check fused fused
