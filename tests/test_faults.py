"""The promises under faults, as users meet them: two processes at once, reordered sweeps, hostile inputs, signals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY, job_summaries, read_json, read_jsonl, run_train, start_train, wait_for_first_epoch

from lenet.run.identity import job_identity
from lenet.run.sweep_dir import recorded_overrides

LONG = [
    a.replace("data.train_size=256", "data.train_size=3000").replace("trainer.epochs=1", "trainer.epochs=3")
    for a in TINY
]
LONGER = [a.replace("trainer.epochs=3", "trainer.epochs=10") for a in LONG]  # still running when it is signalled


def one_line(result, *fragments):
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def processes_in(folder):
    """Pids of processes whose command line names ``folder``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(folder) in f.read().decode(errors="replace"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_a_sweep_resumed_with_its_keys_in_another_order_finds_every_job_in_its_own_folder(tmp_path):
    first = run_train("-m", "seed=0,1", "optimizer.lr=0.05,-1", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert first.returncode == 1 and "2 of 4 jobs did not complete" in first.stderr
    kept = {n: (tmp_path / "sweep" / str(n) / "summary.json").read_bytes() for n in range(4)}
    again = run_train(
        "-m", "optimizer.lr=-1,0.05", "seed=1,0", *TINY, "hydra.sweep.dir=sweep", "trainer.resume=true", cwd=tmp_path
    )
    assert again.returncode == 1 and "2 of 4 jobs did not complete" in again.stderr, again.stderr
    for n, summary in enumerate(job_summaries(tmp_path / "sweep")):
        folder = tmp_path / "sweep" / str(n)
        assert job_identity(recorded_overrides(folder)) == job_identity(summary["overrides"])  # the job it records
        assert f"seed={summary['seed']}" in summary["overrides"]
        if summary["status"] == "completed":
            assert (tmp_path / "sweep" / str(n) / "summary.json").read_bytes() == kept[n]  # kept as it was
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    lines = [line for line in again.stdout.splitlines() if line.startswith("  ")]
    assert sorted(lines) == sorted(line for line in first.stdout.splitlines() if line.startswith("  "))


@pytest.mark.slow
def test_two_processes_never_write_one_run_dir_or_one_sweep_dir(tmp_path):
    running_long = [a.replace("trainer.epochs=3", "trainer.epochs=200") for a in LONG]  # until stopped, at the end
    running = start_train(*running_long, "hydra.run.dir=run", cwd=tmp_path)
    wait_for_first_epoch(tmp_path / "run" / "metrics.jsonl")
    second = run_train(*running_long, "hydra.run.dir=run", "trainer.resume=true", cwd=tmp_path)
    one_line(
        second, f"run is in use by process {running.pid} on ", "wait for it to end, or choose another hydra.run.dir"
    )
    sweep = start_train("-m", "seed=0,1", *running_long, "hydra.sweep.dir=sweep", cwd=tmp_path)
    wait_for_first_epoch(tmp_path / "sweep" / "0" / "metrics.jsonl")
    other = run_train("-m", "seed=0,1", *running_long, "hydra.sweep.dir=sweep", "trainer.resume=true", cwd=tmp_path)
    one_line(other, f"sweep is in use by process {sweep.pid} on ", "choose another hydra.sweep.dir")
    into_job = run_train(*running_long, "hydra.run.dir=sweep/0", "trainer.resume=true", cwd=tmp_path)
    one_line(into_job, "sweep/0 is in use by process")  # the job's folder is held by the job
    assert running.poll() is None and sweep.poll() is None, "a holder ended before the checks: nothing was in use"
    running.send_signal(signal.SIGTERM)
    sweep.send_signal(signal.SIGTERM)
    assert running.wait(timeout=120) == sweep.wait(timeout=120) == 128 + signal.SIGTERM
    for folder in (tmp_path / "run", tmp_path / "sweep" / "0"):  # each written by its own process alone
        epochs = [r["epoch"] for r in read_jsonl(folder / "metrics.jsonl")]
        assert (
            epochs == list(range(1, len(epochs) + 1)) and read_json(folder / "summary.json")["status"] == "interrupted"
        )


@pytest.mark.slow
def test_a_folder_of_your_own_files_is_never_used_and_every_job_gets_its_own_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "mine" / ".draft.tmp").write_text("mine too")
    refused = run_train(*TINY, "hydra.run.dir=mine", cwd=tmp_path)
    one_line(refused, "holds files that no run of lenet wrote (.draft.tmp, notes.txt)")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir() if not p.name.startswith(".lenet")) == [
        ".draft.tmp",
        "notes.txt",
    ]
    result = run_train("-m", "seed=0,1,2", *TINY, "hydra.sweep.dir=sweep", "hydra.sweep.subdir=same", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["same", "same-1", "same-2"]
    assert sorted(read_json(tmp_path / "sweep" / d / "summary.json")["seed"] for d in ("same", "same-1", "same-2")) == [
        0,
        1,
        2,
    ]


@pytest.mark.slow
def test_a_single_run_inside_a_sweeps_folder_is_not_counted_as_one_of_its_jobs(tmp_path):
    from lenet.tools.compare import compare

    assert run_train("-m", "seed=0,1", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path).returncode == 0
    assert run_train(*TINY, "seed=7", "hydra.run.dir=sweep/extra", cwd=tmp_path).returncode == 0
    assert "2 jobs" in compare(tmp_path / "sweep")


@pytest.mark.slow
def test_a_completed_job_whose_checkpoint_is_gone_is_a_failure_of_the_resumed_sweep(tmp_path):
    assert run_train("-m", "seed=0,1", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path).returncode == 0
    (tmp_path / "sweep" / "1" / "checkpoint.pt").unlink()
    (tmp_path / "sweep" / "0" / "summary.json").write_text('{"status": "compl')  # truncated
    result = run_train("-m", "seed=0,1", *TINY, "hydra.sweep.dir=sweep", "trainer.resume=true", cwd=tmp_path)
    assert result.returncode == 1 and "1 of 2 jobs did not complete" in result.stderr, result.stderr
    assert "sweep/1: failed: " in result.stderr and "checkpoint.pt is gone" in result.stderr
    assert "  0  seed=0  completed" in result.stdout  # continued from its checkpoint: a summary again


STUCK = """\
import time
from lenet.training.callbacks import Callback


class Stuck(Callback):
    def on_step_end(self, run, loss):
        if run.step == 2:
            (run.run_dir / "stuck").touch()
            time.sleep(600)  # user code that never reaches a step boundary
"""


@pytest.mark.slow
def test_a_job_stuck_in_user_code_is_killed_after_the_grace_and_recorded_interrupted(tmp_path):
    (tmp_path / "stuck.py").write_text(STUCK)
    sweep = start_train(
        "-m",
        "hydra/launcher=processes",
        "hydra.launcher.n_jobs=2",
        "hydra.launcher.kill_after=2",
        "seed=0,1",
        *LONGER,
        "+callbacks.stuck._target_=stuck.Stuck",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    )
    deadline = time.time() + 120
    while len(list((tmp_path / "sweep").glob("*/stuck"))) < 2 and time.time() < deadline:
        time.sleep(0.1)  # until both jobs are asleep in their callback
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    for summary in job_summaries(tmp_path / "sweep"):
        assert summary["status"] == "interrupted" and "did not stop within 2 s and was killed" in summary["error"]
    assert not processes_in(tmp_path / "sweep")  # nothing left running


@pytest.mark.slow
def test_sigterm_to_a_local_submitit_sweep_stops_every_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = start_train("-m", "hydra/launcher=local", "seed=0,1", *LONGER, "hydra.sweep.dir=sweep", cwd=tmp_path)
    for n in (0, 1):
        wait_for_first_epoch(tmp_path / "sweep" / str(n) / "metrics.jsonl")
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert [s["status"] for s in job_summaries(tmp_path / "sweep")] == ["interrupted", "interrupted"]
    time.sleep(1)
    assert not [p for p in processes_in(tmp_path / "sweep") if p != sweep.pid]


@pytest.mark.slow
def test_optuna_trials_whose_config_does_not_compose_fail_alone_and_a_resume_goes_on(tmp_path):
    pytest.importorskip("optuna")
    args = [
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner=null",
        "trainer.batch_size=choice(64,1.5)",
        *[a for a in TINY if "batch_size" not in a],
        "hydra.sweep.dir=sweep",
    ]
    result = run_train(*args, cwd=tmp_path, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    trials = read_csv(tmp_path / "sweep" / "trials.csv")
    assert len(trials) == 4 and all((t["state"] == "fail") == (t["trainer.batch_size"] == "1.5") for t in trials)
    assert "does not compose" in result.stderr
    more = run_train(*args[:2], "hydra.sweeper.n_trials=6", *args[3:], "trainer.resume=true", cwd=tmp_path, timeout=300)
    assert "Traceback" not in more.stderr and len(read_csv(tmp_path / "sweep" / "trials.csv")) == 6, more.stderr


def read_csv(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,fragment",
    [
        ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs must be >= 1"),
        ("hydra.sweeper.n_jobs=-1", "hydra.sweeper.n_jobs must be >= 1"),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials must be >= 1"),
        ("hydra.sweeper.direction=max", "hydra.sweeper.direction must be maximize or minimize"),
        ("optimizer.lr=interval(0.1,0.001)", "is not a search space Optuna takes"),
        ("hydra.sweeper.storage=sqlite:////nonexistent/x.db", "the folder /nonexistent does not exist"),
    ],
)
def test_invalid_search_settings_are_one_line_before_any_trial(tmp_path, override, fragment):
    pytest.importorskip("optuna")
    result = run_train("-m", "hparams_search=optuna", override, *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    one_line(result, fragment)
    assert not list((tmp_path / "sweep").glob("*/summary.json"))


@pytest.mark.slow
def test_a_garbage_study_file_is_one_line(tmp_path):
    pytest.importorskip("optuna")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "optuna.db").write_bytes(b"garbage" * 100)
    result = run_train(
        "-m", "hparams_search=optuna", *TINY, "hydra.sweep.dir=sweep", "trainer.resume=true", cwd=tmp_path
    )
    one_line(result, "optuna.db cannot be opened as an Optuna storage")


@pytest.mark.slow
def test_previewing_a_search_lists_its_first_trials_and_ends(tmp_path):
    pytest.importorskip("optuna")
    result = run_train(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=preview",
        *TINY,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "an Optuna search of 20 trials, 2 at a time, maximize final_val_acc" in result.stdout
    assert "#0: " in result.stdout and "#1: " in result.stdout and not (tmp_path / "multirun").exists()


LOADERS = """\
def nothing(root):
    return None


class Broken:
    def __init__(self, run_dir):
        raise ConnectionError("cannot reach my server")  # what it writes to is out of reach: not a bug

    def log_row(self, row, step):
        pass

    def finish(self, summary, exit_code):
        pass
"""


@pytest.mark.slow
def test_a_loader_returning_nothing_and_a_logger_that_cannot_start_are_one_line(tmp_path):
    (tmp_path / "mine.py").write_text(LOADERS)
    env = {"PYTHONPATH": str(tmp_path)}
    loader = run_train(*TINY, "data.loader=mine.nothing", "hydra.run.dir=a", cwd=tmp_path, env=env)
    one_line(loader, "dataset synthetic: its loader returned NoneType, not a dict")
    logger = run_train(*TINY, "+logger.mine._target_=mine.Broken", "hydra.run.dir=b", cwd=tmp_path, env=env)
    one_line(logger, "logger.mine (mine.Broken) could not start: ConnectionError: cannot reach my server")
    assert read_json(tmp_path / "b" / "summary.json")["status"] == "failed"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounts a small tmpfs: needs root")
def test_a_full_disk_mid_run_fails_in_one_line_and_leaves_the_summary_of_what_was_done(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        result = run_train(*LONG, f"hydra.run.dir={disk / 'run'}", cwd=tmp_path)
        one_line(
            result,
            "no space left on the disk of",
            "free some space and continue with: python train.py trainer.resume=true",
        )
        summary = read_json(disk / "run" / "summary.json")
        assert summary["status"] == "failed" and "No space left" in summary["error"]
        assert summary["epochs_completed"] == len(read_jsonl(disk / "run" / "metrics.jsonl")) >= 1
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["lenet_basic", "fused", "processes"])
def test_jobs_that_differ_only_where_a_resume_may_change_are_still_two_jobs(tmp_path, launcher):
    tiny = [a for a in TINY if not a.startswith("device.num_threads")]
    result = run_train(
        "-m", f"hydra/launcher={launcher}", "device.num_threads=1,2", *tiny, "hydra.sweep.dir=sweep", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    summaries = job_summaries(tmp_path / "sweep")
    assert sorted(s["num_threads"] for s in summaries) == [1, 2] and len(summaries) == 2  # a reproducibility study


@pytest.mark.slow
def test_a_damaged_sweep_record_is_rebuilt_or_refused_never_taken_for_no_sweep(tmp_path):
    assert run_train("-m", "seed=0,1", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path).returncode == 0
    record = tmp_path / "sweep" / "sweep.json"
    record.write_text(record.read_text()[:40])  # cut short
    other = run_train(
        "-m", "seed=0,1", "optimizer=adam", *TINY, "hydra.sweep.dir=sweep", "trainer.resume=true", cwd=tmp_path
    )
    one_line(other, "cannot continue the sweep in", "optimizer=not set (now adam)")
    same = run_train("-m", "seed=0,1", *TINY, "hydra.sweep.dir=sweep", "trainer.resume=true", cwd=tmp_path)
    assert same.returncode == 0 and same.stdout.count("  completed  ") == 2, same.stderr
    jobs = json.loads(record.read_text())["jobs"]  # rebuilt and written again
    assert sorted(jobs) == ["0", "1"] and "seed=0" in jobs["0"] and "seed=1" in jobs["1"]
    record.write_text("[1, 2]")  # the wrong shape, and nothing to rebuild it from
    (tmp_path / "sweep" / "multirun.yaml").unlink()
    one_line(
        run_train("-m", "seed=0,1", *TINY, "hydra.sweep.dir=sweep", "trainer.resume=true", cwd=tmp_path),
        "sweep.json is damaged (it holds a list, not an object)",
    )


@pytest.mark.slow
def test_a_bug_in_your_own_code_keeps_its_traceback_in_train_log_and_is_one_line_on_stderr(tmp_path):
    (tmp_path / "my_nets.py").write_text(
        "import torch\n\n\nclass Buggy(torch.nn.Module):\n"
        "    def __init__(self, in_channels=1, num_classes=10):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(None + 1, num_classes)\n"
    )
    overrides = ["+model._target_=my_nets.Buggy", "~model.name", "~model.pooling", *TINY, "hydra.run.dir=run"]
    result = run_train(*overrides, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    one_line(result, "TypeError: unsupported operand", "my_nets.py:7", "the run failed on a bug")
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and 'my_nets.py", line 7' in log  # the bug, where it is


@pytest.mark.slow
def test_a_callback_may_stop_the_run_from_any_hook_even_before_its_first_epoch(tmp_path):
    (tmp_path / "stops.py").write_text(
        "from lenet.training.callbacks import Callback\n\n\nclass StopAtOnce(Callback):\n"
        "    def on_fit_start(self, run):\n        run.request_stop('nothing to do')\n"
    )
    overrides = ["+callbacks.stop._target_=stops.StopAtOnce", *TINY, "hydra.run.dir=run"]
    result = run_train(*overrides, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 0
    assert summary["stopped_early"] == "nothing to do" and (tmp_path / "run" / "lenet_synthetic.pth").is_file()


@pytest.mark.slow
def test_odd_values_in_a_run_dir_are_one_line_for_evaluate_and_predict(tmp_path):
    from conftest import finished_run

    run_dir = finished_run(tmp_path / "run", "trainer.epochs=1", "data.train_size=128")
    summary = read_json(run_dir / "summary.json")
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)

    def tool(name, *args):
        return subprocess.run(
            [sys.executable, "-m", f"lenet.{name}", str(run_dir), *args], capture_output=True, text=True, cwd=tmp_path
        )

    (run_dir / ".hydra" / "hydra.yaml").write_text(":::\n\t- not yaml [")  # where it started: unknown, not a crash
    assert tool("evaluate").returncode == 0
    for odd, fragment in (
        ({"weights": 42}, "its weights is 42, not str"),
        ({"weights": "../../elsewhere.pth"}, "not a file of the run dir"),
        ({"image_size": [100000, 100000]}, "records image_size [100000, 100000]"),
        ({"status": "done"}, "summary.json cannot be read"),
    ):
        (run_dir / "summary.json").write_text(json.dumps({**summary, **odd}))
        one_line(tool("predict", str(image)), fragment)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert tool("predict", str(image)).returncode == 0
