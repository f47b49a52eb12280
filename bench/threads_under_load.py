"""Thread settings under a controlled load: 2-epoch train.py runs, interleaved, with 0/1/2 busy processes.

    python bench/threads_under_load.py [--rounds 2] [--loads 0,1,2] [--root ../shared/data]

Each round runs every setting once (the default, 2 threads, 1 thread) while LOAD `yes` processes
keep cores busy; one JSON line per run with the seconds per epoch, the wall time and the count used.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"auto": [], "2": ["device.num_threads=2"], "1": ["device.num_threads=1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--loads", default="0,1,2")
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for load in map(int, args.loads.split(",")):
            busy = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(load)]
            try:
                time.sleep(1)
                for r in range(args.rounds):
                    for name, overrides in SETTINGS.items():
                        run_dir = Path(tmp) / f"{load}-{name}-{r}"
                        cmd = [
                            sys.executable,
                            str(REPO / "train.py"),
                            f"data.root={args.root.resolve()}",
                            "logger=none",
                            "trainer.epochs=2",
                            f"hydra.run.dir={run_dir}",
                            *overrides,
                        ]
                        start = time.perf_counter()
                        subprocess.run(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                        wall = time.perf_counter() - start
                        summary = json.loads((run_dir / "summary.json").read_text())
                        print(
                            json.dumps(
                                {
                                    "load": load,
                                    "setting": name,
                                    "round": r,
                                    "wall_seconds": round(wall, 2),
                                    "seconds_per_epoch": round(summary["seconds_per_epoch"], 2),
                                    "num_threads": summary["num_threads"],
                                }
                            ),
                            flush=True,
                        )
            finally:
                for process in busy:
                    process.kill()


if __name__ == "__main__":
    main()
