"""Every folder, study and verdict has one owner: locks, a job's identity, trusted run dirs, the Optuna study."""

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from conftest import CONF, REPO, run_in_process

from lenet.core.errors import UserError
from lenet.run.folders import FolderError, check_fresh, check_job_folder, hold, holding, release
from lenet.run.identity import job_identity
from lenet.run.sweep_dir import known_jobs, read_sweep_record, sweep_definition

HOLDER = textwrap.dedent("""\
    import sys, time
    from lenet.run.folders import hold
    hold(__import__("pathlib").Path(sys.argv[1]), "hydra.run.dir", is_file=len(sys.argv) > 2)
    print("held", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def held_by_another_process():
    """Start a process that holds a folder (or file) until the test ends; yields a function taking the path."""
    processes = []

    def hold_in_another_process(path, is_file=False):
        args = [sys.executable, "-c", HOLDER, str(path)] + (["file"] if is_file else [])
        process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert process.stdout.readline().strip() == "held"
        processes.append(process)
        return process

    yield hold_in_another_process
    for process in processes:
        process.kill()
        process.wait()


def test_a_folder_held_by_another_process_is_refused_naming_it_and_freed_when_it_dies(
    tmp_path, held_by_another_process
):
    holder = held_by_another_process(tmp_path / "run")
    with pytest.raises(
        FolderError, match=rf"run is in use by process {holder.pid} on .* \(.*-c .*since .*\): wait for it"
    ):
        hold(tmp_path / "run", "hydra.run.dir")
    holder.kill()  # as kill -9 would: the OS frees the lock with the process
    holder.wait()
    assert hold(tmp_path / "run", "hydra.run.dir") and not hold(tmp_path / "run", "hydra.run.dir")  # held once
    release(tmp_path / "run")


def test_holding_releases_only_what_it_took(tmp_path):
    hold(tmp_path / "a", "k")
    with holding(tmp_path / "a", "k"):  # held already by this process: kept after the block
        pass
    with holding(tmp_path / "b", "k"):
        pass
    assert hold(tmp_path / "b", "k") and not hold(tmp_path / "a", "k")
    release(tmp_path / "a")
    release(tmp_path / "b")


def test_a_folder_of_someone_elses_files_or_another_run_is_never_used(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FolderError, match=r"holds files that no run of lenet wrote \(notes.txt\)"):
        check_fresh(tmp_path / "mine", "hydra.run.dir")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / ".hydra").mkdir()
    (tmp_path / "job" / ".hydra" / "overrides.yaml").write_text("- seed=1\n- pooling=avg\n")
    check_job_folder(tmp_path / "job", ["pooling=avg", "seed=1"], False, None)  # its own job, in any order
    with pytest.raises(FolderError, match=r"holds another job \(pooling=avg seed=1\), not this one"):
        check_job_folder(tmp_path / "job", ["pooling=max", "seed=1"], False, None)
    check_job_folder(tmp_path / "new", ["seed=0"], False, None)  # a new folder


def test_a_jobs_identity_is_all_its_overrides_in_one_spelling():
    assert job_identity(["seed=1", "pooling=avg", "trainer.resume=true", "hydra.sweep.subdir=3"]) == job_identity(
        ["pooling=avg", "+seed=1"]
    )  # order, the + of an added key, Hydra's own keys and trainer.resume do not make another job
    assert job_identity(["optimizer.lr=1e-3", "data.root='clean'"]) == job_identity(
        ["data.root=clean", "optimizer.lr=0.001"]
    )
    assert job_identity(["optimizer.lr=1.0"]) == job_identity(["optimizer.lr=1"])
    for other in (["data.root=noisy"], ["device.num_threads=2"], ["logger=none"], ["device=cpu"]):
        assert job_identity(["data.root=clean"]) != job_identity(other)  # every key tells jobs apart
    assert sweep_definition(["pooling=max,avg", "seed=2,0,1"], {}) == sweep_definition(
        ["seed=0,1,2", "pooling=avg,max"], {}
    )


def test_only_a_resume_compared_with_its_own_folder_ignores_what_a_resume_may_change():
    from lenet.run.identity import same_job

    first, resumed = ["seed=1"], ["seed=1", "device=cpu", "data.root=/elsewhere", "trainer.resume=true"]
    assert same_job(first, resumed, resuming=True, swept=["seed"])
    assert not same_job(first, resumed, resuming=False, swept=["seed"])  # never when jobs are told apart
    assert not same_job(first, resumed, resuming=True, swept=None)  # nor without the sweep's record
    swept_root = ["seed", "data.root"]  # a sweep over data.root: it tells the jobs apart, resumed too
    assert not same_job(["seed=1", "data.root=clean"], ["seed=1", "data.root=noisy"], resuming=True, swept=swept_root)


def test_each_job_gets_the_folder_that_holds_it_and_new_jobs_distinct_free_ones(tmp_path):
    from hydra_plugins.lenet.sweeping import assign_folders

    def subdirs(assigned):
        return [a[-1].split("=", 1)[1].strip("'") for a in assigned]

    first = assign_folders(tmp_path, [["seed=0", "pooling=avg"], ["seed=0", "pooling=max"]], ["0", "1"])
    assert subdirs(first) == ["0", "1"]
    for folder in ("0", "1"):
        (tmp_path / folder).mkdir()
    again = assign_folders(
        tmp_path, [["pooling=max", "seed=0"], ["seed=1", "pooling=max"], ["pooling=avg", "seed=0"]], ["0", "1", "2"]
    )
    assert subdirs(again) == ["1", "2", "0"]  # jobs 0 and 1 found by their overrides; the new one in a free folder
    same = assign_folders(tmp_path, [["seed=5"], ["seed=6"], ["seed=7"]], ["same", "same", "same"])
    assert subdirs(same) == ["same", "same-1", "same-2"]  # a subdir that is not unique never shares a folder
    assert set(known_jobs(tmp_path)) == {"0", "1", "2", "same", "same-1", "same-2"}
    assert read_sweep_record(tmp_path).jobs["2"] == ["pooling=max", "seed=1"]
    both = assign_folders(tmp_path, [["data.root=clean"], ["data.root=noisy"]], ["root", "root"])
    assert subdirs(both) == ["root", "root-1"]  # jobs that differ only where a resume may change still differ


def untrusted_run(tmp_path, model_node, part="model"):
    """A finished run whose config names ``model_node`` (as its ``part``), as a run folder from elsewhere could."""
    summary, run_dir = run_in_process(tmp_path, "run", "data.train_size=128", "trainer.epochs=1")
    config = run_dir / ".hydra"
    config.mkdir()
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["data=synthetic"])
    cfg[part] = OmegaConf.create(model_node)
    OmegaConf.save(cfg, config / "config.yaml")
    return run_dir


@pytest.mark.parametrize("target", ["subprocess.getoutput", "torch.load", "lenet.core.registry.import_function"])
def test_loading_a_run_dir_builds_nothing_it_does_not_trust(tmp_path, target):
    from lenet.tools.inference import load_run

    marker = tmp_path / "pwned"
    run_dir = untrusted_run(tmp_path, {"_target_": target, "cmd": f"touch {marker}"})
    with pytest.raises(UserError, match=rf"names {target} \(model._target_\), which lenet does not build unless told"):
        load_run(run_dir)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "tool, part, node",
    [  # what an adversarial pass found: a name reached through lenet's attributes, a nested target, an interpolation
        (
            "evaluate",
            "loss",
            {
                "_target_": "lenet.core.losses.torch.fx.graph_module._exec_with_source",
                "src": "open('MARKER', 'w')",
                "globals": {},
            },
        ),
        (
            "predict",
            "model",
            {
                "_target_": "torch.nn.Identity",
                "x": {
                    "_target_": "lenet.core.models.torch.fx.graph_module._exec_with_source",
                    "src": "open('MARKER', 'w')",
                    "globals": {},
                },
            },
        ),
        ("evaluate", "model", {"_target_": "torch.${model.y}", "y": "load", "f": "MARKER"}),
    ],
)
def test_the_trust_rule_judges_what_would_be_built_not_its_text(tmp_path, tool, part, node):
    marker = tmp_path / "pwned"
    run_dir = untrusted_run(tmp_path, json.loads(json.dumps(node).replace("MARKER", str(marker))), part)
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)
    args = [str(run_dir)] + ([str(image)] if tool == "predict" else [])
    result = subprocess.run(
        [sys.executable, "-m", f"lenet.{tool}", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "which lenet does not build unless told to trust it" in result.stderr
    assert not marker.exists()


def test_a_run_of_your_own_model_loads_when_its_module_is_trusted(tmp_path, monkeypatch):
    from lenet.tools.inference import load_run

    (tmp_path / "my_nets.py").write_text(
        "from lenet.core.models import lenet5\n\n\ndef net(**kwargs):\n    return lenet5(**kwargs)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = untrusted_run(tmp_path, {"_target_": "my_nets.net"})
    with pytest.raises(UserError, match=r"pass --trust my_nets"):
        load_run(run_dir)
    run = load_run(run_dir, trust=["my_nets"])
    assert run.predict(torch.zeros(1, 28, 28, dtype=torch.uint8).numpy()).shape == (1, 10)


def test_a_locked_study_storage_is_waited_for_and_one_locked_too_long_is_one_line(tmp_path, monkeypatch):
    import sqlite3

    import hydra_plugins.lenet.optuna_study as study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    created = study.open_study(study.open_storage(url), url, "s", "maximize", {}, resume=False)
    blocker = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")  # another process writing to it for 1.5 s
    threading.Timer(1.5, blocker.rollback).start()
    started = time.monotonic()
    assert study.retrying(url, lambda: created.ask()).number == 0 and time.monotonic() - started >= 1.0

    monkeypatch.setattr(study, "SQLITE_TIMEOUT", 0.1)
    monkeypatch.setattr(study, "PATIENCE", 0.5)
    impatient = study.open_study(study.open_storage(url), url, "s", "maximize", {}, resume=True)
    blocker.execute("BEGIN EXCLUSIVE")  # and now for longer than the search waits
    with pytest.raises(UserError, match=r"stayed locked for 0.5 s: another process is writing to it"):
        study.retrying(url, lambda: impatient.ask())
    blocker.rollback()


def test_a_study_storage_that_cannot_be_opened_is_one_line(tmp_path):
    import hydra_plugins.lenet.optuna_study as study
    from lenet.core.errors import ConfigError

    (tmp_path / "garbage.db").write_bytes(b"\0not a database\0" * 100)
    with pytest.raises(ConfigError, match=r"garbage.db cannot be opened as an Optuna storage"):
        study.open_storage(f"sqlite:///{tmp_path / 'garbage.db'}")
    with pytest.raises(ConfigError, match=r"the folder .*/missing does not exist"):
        study.open_storage(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")


def test_a_study_of_another_search_space_or_one_not_resumed_is_refused(tmp_path):
    from optuna.distributions import FloatDistribution

    import hydra_plugins.lenet.optuna_study as study
    from lenet.core.errors import ConfigError

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    storage = study.open_storage(url)
    space = {"optimizer.lr": FloatDistribution(0.001, 0.1)}
    first = study.open_study(storage, url, "s", "maximize", space, resume=False)
    first.tell(first.ask(space), 0.5)
    with pytest.raises(ConfigError, match=r"already holds 1 trials; continue it with trainer.resume=true"):
        study.open_study(storage, url, "s", "maximize", space, resume=False)
    other = {"optimizer.lr": FloatDistribution(0.001, 0.5)}
    with pytest.raises(ConfigError, match=r"was searched over another space \(optimizer.lr differ\)"):
        study.open_study(storage, url, "s", "maximize", other, resume=True)
    assert study.open_study(storage, url, "s", "maximize", space, resume=True).trials[0].value == 0.5


def test_a_study_file_is_held_by_one_search(tmp_path, held_by_another_process):
    import hydra_plugins.lenet.optuna_study as study

    (tmp_path / "shared.db").touch()
    held_by_another_process(tmp_path / "shared.db", is_file=True)
    with pytest.raises(FolderError, match=r"shared.db is in use by process \d+"):
        study.open_storage(f"sqlite:///{tmp_path / 'shared.db'}")
    for other_spelling in (
        f"sqlite:///{tmp_path / 'shared.db'}?timeout=5",
        f"sqlite:///{tmp_path / '.' / 'shared.db'}",
    ):
        with pytest.raises(FolderError, match=r"shared.db is in use by process \d+"):  # the file, not the text
            study.open_storage(other_spelling)


def test_a_summary_that_cannot_be_read_is_an_outcome_saying_so(tmp_path):
    from lenet.run.outcome import Status, read_outcome

    (tmp_path / "summary.json").write_text('{"status": "comple')
    outcome = read_outcome(tmp_path)
    assert outcome.status == Status.failed and "summary.json cannot be read" in outcome.error
    assert read_outcome(tmp_path / "nothing").error == "the job ended without recording a result (no summary.json)"


def test_summary_json_is_written_from_its_reserve_when_the_disk_is_full(tmp_path, monkeypatch):
    import errno

    import lenet.run.outcome as outcome

    outcome.write_summary(tmp_path, {"status": "running", "epochs_completed": 0})
    assert (tmp_path / outcome.RESERVE_FILE).stat().st_size == outcome.RESERVE_BYTES  # while it runs
    json.loads((tmp_path / "summary.json").read_text())  # only its JSON: nothing padded
    write = outcome.write_text
    calls = []

    def full_until_the_reserve_goes(path, text):
        calls.append(path)
        if (tmp_path / outcome.RESERVE_FILE).exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, text)

    monkeypatch.setattr(outcome, "write_text", full_until_the_reserve_goes)
    outcome.write_summary(tmp_path, {"status": "failed", "epochs_completed": 1, "error": "no space"})
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed" and len(calls) == 2
    assert not (tmp_path / outcome.RESERVE_FILE).exists()
