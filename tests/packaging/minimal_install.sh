#!/usr/bin/env bash
# `pip install -e .` alone (no extras) trains, sweeps with the parallel launcher and warns about no plugin;
# `pip install .` gives console scripts, `python -m lenet` and `from lenet import train` that work outside the
# checkout (the configs are in the package); an extra asked for without being
# installed is one line. Run by .ci/run in a venv of its own (torch from the same place the README says).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'status=$?; [ $status -ne 0 ] && tail -n 20 "$work"/*.err 2>/dev/null; rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
pip install -q torch==2.14.1 torchvision==0.29.1
pip install -q -e "$repo"
cd "$work"
export WANDB_MODE=offline WANDB_SILENT=true
tiny=(logger=none data=synthetic data.train_size=256 data.test_size=64 trainer.epochs=1)
run() { python "$repo/train.py" "$@" "${tiny[@]}"; }
run hydra.run.dir=single 2> single.err
run -m hydra/launcher=processes hydra.launcher.n_jobs=2 seed=0,1 hydra.sweep.dir=sweep 2> sweep.err
if grep -E "Error importing|Traceback" single.err sweep.err; then echo "FAIL: warnings or tracebacks"; exit 1; fi
grep -q '"status": "completed"' single/summary.json sweep/0/summary.json sweep/1/summary.json
if run -m hydra/launcher=slurm seed=0,1 2> slurm.err; then echo "FAIL: slurm without its extra ran"; exit 1; fi
[ "$(wc -l < slurm.err)" -eq 1 ] && grep -q "pip install -e '.\[launchers\]'" slurm.err
if run -m hparams_search=optuna 2> optuna.err; then echo "FAIL: optuna without its extra ran"; exit 1; fi
grep -q "optuna, which is not installed" optuna.err
git -C "$repo" archive --format=tar HEAD | (mkdir -p "$work/src" && tar -x -C "$work/src")  # a build leaves build/ behind
pip install -q "$work/src"  # not editable: the console scripts from the installed package
lenet-compare sweep > compare.out && grep -q "2 jobs" compare.out
python -m lenet "${tiny[@]}" hydra.run.dir=installed 2> installed.err  # the configs ship with the package
grep -q '"status": "completed"' installed/summary.json
python -c "from lenet import train; r = train(['logger=none', 'data=synthetic', 'data.train_size=256', 'trainer.epochs=1'], echo=False); assert r.status == 'completed', r"
python - <<'PY'
import gzip, numpy as np, pathlib
from lenet.core.data import make_synthetic
raw = pathlib.Path("data/MNIST/raw"); raw.mkdir(parents=True)
for split, n in (("train", 512), ("t10k", 128)):
    images, labels = make_synthetic(n, 1)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels.astype(np.uint8))):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        (raw / f"{split}-{kind}-ubyte").write_bytes(header + array.tobytes())
PY
lenet-bench --root data --steps 3 --rounds 1 --batch-size 32 > bench.out && grep -q "speed-up" bench.out
echo "minimal install: PASS"
