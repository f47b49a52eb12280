"""Loggers: the logger group as a dict of _target_ classes, a logger of your own, TensorBoard, failures."""

import logging

import pytest
from conftest import CONF, doc_block, read_json, read_jsonl, run_train
from hydra import compose, initialize_config_dir

from lenet.core.errors import ConfigError
from lenet.run.config import register_configs, to_typed
from lenet.run.loggers import Logger, Loggers, build_loggers

TINY = [
    "data=synthetic",
    "data.train_size=256",
    "data.test_size=128",
    "trainer.batch_size=64",
    "device=cpu",
    "device.num_threads=1",
    "trainer.epochs=2",
    "hydra.run.dir=run",
]


def readme_block(first_line: str) -> str:
    return doc_block("docs/extending.md", first_line)


@pytest.mark.slow
def test_the_documented_logger_recipe_runs_beside_wandb(tmp_path):
    (tmp_path / "my_loggers.py").write_text(readme_block("# my_loggers.py"))
    (tmp_path / "my_conf" / "logger").mkdir(parents=True)
    (tmp_path / "my_conf" / "logger" / "acc_file.yaml").write_text(readme_block("# my_conf/logger/acc_file.yaml"))
    command = readme_block("PYTHONPATH=. python train.py 'logger=[wandb,acc_file]'").split()
    overrides = [a.strip("'").replace("$PWD", str(tmp_path)) for a in command[3:]]
    result = run_train(
        *overrides, "logger.acc_file.prefix=top1", *TINY, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}
    )
    assert result.returncode == 0, result.stderr
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    expected = [f"top1 {row['epoch']} {row['test_acc']:.4f}" for row in metrics]
    assert (tmp_path / "run" / "acc.txt").read_text().splitlines() == expected
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))  # W&B ran beside it


class Broken(Logger):
    def __init__(self):
        self.rows = 0

    def log_row(self, row, step):
        self.rows += 1
        raise RuntimeError("disk full")


class Recorder(Logger):
    def __init__(self):
        self.calls = []

    def log_row(self, row, step):
        self.calls.append(("row", step))

    def finish(self, summary, exit_code):
        self.calls.append(("finish", exit_code))


def test_a_failing_logger_is_reported_once_and_dropped_while_the_others_go_on(caplog):
    broken, recorder = Broken(), Recorder()
    loggers = Loggers({"broken": broken, "recorder": recorder})
    with caplog.at_level(logging.WARNING):
        for step in (1, 2):
            loggers.log_row({"epoch": step}, step)
        loggers.finish({"status": "completed"}, 0)
    assert broken.rows == 1 and recorder.calls == [("row", 1), ("row", 2), ("finish", 0)]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "logger.broken failed in log_row (RuntimeError: disk full)" in warning


def test_a_target_that_is_not_a_logger_or_takes_other_arguments_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"logger.x._target_=builtins.dict has no log_row or finish method"):
        build_loggers({"x": {"_target_": "builtins.dict"}}, {"run_dir": tmp_path})
    with pytest.raises(ConfigError, match=r"takes no argument logger.tb.colour='red'"):
        build_loggers(
            {"tb": {"_target_": "lenet.run.loggers.TensorBoardLogger", "colour": "red"}}, {"run_dir": tmp_path}
        )


@pytest.mark.slow
def test_a_run_whose_logger_cannot_start_fails_in_one_line_before_training(tmp_path):
    result = run_train("logger=tensorboard", "+logger.tensorboard.colour=red", *TINY, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: lenet.run.loggers.TensorBoardLogger takes no argument")
    )
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "failed"
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained


def _scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.slow
def test_tensorboard_holds_every_number_of_every_row(tmp_path):
    pytest.importorskip("tensorboard")
    result = run_train("logger=tensorboard", "trainer.metrics=[per_class_accuracy]", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    log_dir = tmp_path / "run" / "tensorboard"
    steps = 4  # 256 images in batches of 64: each row at the optimizer step that ended its epoch
    assert _scalars(log_dir, "test_acc") == [(steps * r["epoch"], pytest.approx(r["test_acc"])) for r in metrics]
    assert _scalars(log_dir, "lr") == [(steps * r["epoch"], pytest.approx(r["lr"])) for r in metrics]
    per_class = [(steps * r["epoch"], pytest.approx(r["test_per_class_accuracy_3"])) for r in metrics]
    assert _scalars(log_dir, "test_per_class_accuracy_3") == per_class


def test_tensorboard_of_a_resumed_run_ends_as_its_checkpoint_history(tmp_path):
    pytest.importorskip("tensorboard")
    from lenet.run.loggers import TensorBoardLogger

    first = TensorBoardLogger(tmp_path)
    for step, acc in ((1, 0.1), (2, 0.2), (3, 0.3)):  # epoch 3 logged, then the process died before its checkpoint
        first.log_row({"epoch": step, "test_acc": acc}, step)
    first.writer.close()
    resumed = TensorBoardLogger(tmp_path)
    resumed.resume([({"epoch": 1, "test_acc": 0.1}, 1), ({"epoch": 2, "test_acc": 0.2}, 2)])
    resumed.log_row({"epoch": 3, "test_acc": 0.35}, 3)
    resumed.finish({"status": "completed"}, 0)
    assert _scalars(tmp_path / "tensorboard", "test_acc") == [
        (1, pytest.approx(0.1)),
        (2, pytest.approx(0.2)),
        (3, pytest.approx(0.35)),
    ]


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "logger").glob("*.yaml")))
def test_every_logger_option_builds_and_finishes(option, tmp_path, monkeypatch):
    if option == "tensorboard":
        pytest.importorskip("tensorboard")
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B's own no-op run: no files, no service
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = to_typed(compose("config", overrides=[f"logger={option}"]))
    loggers = build_loggers(cfg.logger, {"run_dir": tmp_path, "config": {"seed": 0}})
    assert list(loggers.loggers) == ([] if option == "none" else [option])
    loggers.log_row({"epoch": 1, "test_acc": 0.5}, 1)
    loggers.finish({"status": "completed"}, 0)
    assert loggers.loggers == {}


def test_a_typo_in_the_wandb_node_fails_at_once(tmp_path):
    result = run_train("logger=wandb", "logger.wandb.projet=x", *TINY, cwd=tmp_path)
    assert result.returncode == 1 and "projet" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_tensorboard_gets_the_steps_loss_and_the_resolved_config_as_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from lenet.run.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path, config={"optimizer": {"lr": 0.05, "betas": [0.9, 0.99]}, "seed": 1})
    for step in (50, 100):
        logger.log_step({"train_loss_step": 1.0 / step}, step)
    logger.log_row({"epoch": 1, "val_acc": 0.9, "test_acc": 0.91}, 100)
    logger.finish({"status": "completed", "final_test_acc": 0.91, "best_val_acc": 0.9}, 0)
    assert _scalars(tmp_path / "tensorboard", "train_loss_step") == [
        (50, pytest.approx(0.02)),
        (100, pytest.approx(0.01)),
    ]
    events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").glob("events.*"))
    assert b"_hparams_/session_start_info" in events and b"optimizer.lr" in events  # the config, flattened
