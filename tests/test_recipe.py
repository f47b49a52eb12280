"""The recipe as a user varies it: optimizers and schedulers from YAML files and the command line."""

import csv

import pytest
import torch
from conftest import SMALL, exact_resume_check, read_json, read_jsonl, run_train

from lenet.tools.compare import compare

TINY = [*SMALL, "trainer.epochs=1"]

NADAM_YAML = """\
_target_: torch.optim.NAdam
_partial_: true
lr: 2e-3
momentum_decay: 4e-3
"""


@pytest.mark.slow
def test_an_optimizer_added_as_one_yaml_file_on_the_search_path_trains(tmp_path):
    (tmp_path / "my_conf" / "optimizer").mkdir(parents=True)
    (tmp_path / "my_conf" / "optimizer" / "my_nadam.yaml").write_text(NADAM_YAML)
    result = run_train(
        "optimizer=my_nadam",
        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        *TINY,
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "completed" and summary["optimizer"] == "my_nadam"
    assert read_json(tmp_path / "run" / "summary.json")["final_train_loss"] < 2.31


@pytest.mark.slow
def test_any_torch_optimizer_from_the_command_line(tmp_path):
    args = ["optimizer._target_=torch.optim.NAdam", "optimizer.lr=2e-3", *TINY]
    refused = run_train(*args, "hydra.run.dir=refused", cwd=tmp_path)  # sgd's momentum and nesterov are left over
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and "'~optimizer.momentum' '~optimizer.nesterov'" in refused.stderr
    result = run_train(*args, "~optimizer.momentum", "~optimizer.nesterov", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "completed" and summary["optimizer"] == "torch.optim.NAdam"  # not "sgd"
    from_adam = run_train(
        "optimizer=adam", "optimizer._target_=torch.optim.NAdam", *TINY, "hydra.run.dir=adam", cwd=tmp_path
    )
    assert (
        from_adam.returncode == 0 and read_json(tmp_path / "adam" / "summary.json")["optimizer"] == "torch.optim.NAdam"
    )


@pytest.mark.slow
def test_no_key_can_relabel_what_is_trained(tmp_path):
    result = run_train("optimizer.name=rmsprop", *TINY, cwd=tmp_path)
    assert result.returncode != 0 and "name" in result.stderr and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_labels_in_summaries_and_the_comparison_csv_are_the_chosen_options(tmp_path):
    result = run_train("-m", "optimizer=adam,rmsprop", "scheduler=cosine", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = [read_json(tmp_path / "sweep" / str(n) / "summary.json") for n in range(2)]
    assert [(s["optimizer"], s["scheduler"]) for s in summaries] == [("adam", "cosine"), ("rmsprop", "cosine")]
    compare(tmp_path / "sweep")
    with open(tmp_path / "sweep" / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["optimizer"]) for r in rows] == [
        ("optimizer=adam", "adam"),
        ("optimizer=rmsprop", "rmsprop"),
    ]


STEP_LR = [
    "scheduler._target_=torch.optim.lr_scheduler.StepLR",
    "scheduler.interval=epoch",
    "+scheduler.step_size=1",
    "+scheduler.gamma=0.5",
]
PLATEAU = [
    "scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau",
    "scheduler.interval=epoch",
    "+scheduler.monitor=train_loss",
    "+scheduler.patience=0",
    "+scheduler.factor=0.5",
    "+scheduler.threshold=10.0",
]


@pytest.mark.parametrize("scheduler", [STEP_LR, PLATEAU], ids=["StepLR", "ReduceLROnPlateau"])
def test_a_torch_scheduler_by_target_trains_and_resumes_exactly(tmp_path, scheduler):
    overrides = ["scheduler=none", *scheduler, "data.train_size=256", "trainer.epochs=3"]
    full, full_dir = exact_resume_check(tmp_path, overrides)
    lrs = [row["lr"] for row in read_jsonl(full_dir / "metrics.jsonl")]
    assert lrs == pytest.approx([0.1, 0.05, 0.025])  # halved after each epoch, by both schedulers here
    assert full["scheduler"] == scheduler[0].split("=")[1]  # no choice known in-process: the _target_ names it


WIDE_NET = """\
import torch
from torch import nn


class WideNet(nn.Module):
    def __init__(self, width: int = 1, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4 * width, 5)
        self.head = nn.Linear(4 * width * 28 * 28, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))
"""


@pytest.mark.slow
def test_a_model_of_your_own_is_one_module_and_one_yaml_with_its_settings(tmp_path):
    (tmp_path / "my_nets.py").write_text(WIDE_NET)
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "wide.yaml").write_text("_target_: my_nets.WideNet\nwidth: 1\n")
    search = f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"
    env = {"PYTHONPATH": str(tmp_path)}
    result = run_train("model=wide", "model.width=3", search, *TINY, "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["model"] == "wide" and summary["status"] == "completed"
    assert summary["num_params"] == (12 * 25 + 12) + (12 * 28 * 28 * 10 + 10)  # width 3: 12 maps
    unknown = run_train("model=wide", "+model.depth=2", search, *TINY, cwd=tmp_path, env=env)
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1 and "Traceback" not in unknown.stderr
    assert "takes no argument model.depth=2 (it takes width, in_channels, num_classes)" in unknown.stderr
    pooled = run_train("model=wide", "pooling=avg", search, *TINY, cwd=tmp_path, env=env)
    assert pooled.returncode == 1 and "takes no argument model.pooling='avg'" in pooled.stderr


@pytest.mark.slow
def test_a_setting_of_a_registered_model_and_a_loss_setting_from_the_command_line(tmp_path):
    result = run_train("loss.label_smoothing=0.1", "model.pooling=avg", *TINY, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["num_params"] == 61_706 and summary["loss"] == "cross_entropy" and summary["pooling"] == "avg"
    wrong = run_train("+model.width=2", *TINY, cwd=tmp_path)
    assert wrong.returncode == 1 and "takes no argument model.width=2 (it takes pooling, num_classes, in_channels)" in (
        wrong.stderr
    )
    classes = run_train("+model.num_classes=12", *TINY, cwd=tmp_path)  # the data decides the model's outputs
    assert classes.returncode == 1 and classes.stderr.count("\n") == 1
    assert "error: model.num_classes=12 disagrees with the data (10)" in classes.stderr


TINY_RGB = """\
import numpy as np


def tiny_rgb(train_size: int, test_size: int):
    def split(n, seed):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 4, size=n)
        images = np.zeros((n, 28, 28, 3), dtype=np.uint8)
        for c in range(3):  # class k: a bright square in a corner, in channel k % 3
            images[labels % 3 == c, :, :, c] = 40
        images[labels == 3, 2:12, 2:12, :] = 250
        images[labels < 3, 16:26, 16:26, :] = 250
        return images, labels

    return {"train": split(train_size, 1), "test": split(test_size, 2)}
"""

TINY_RGB_YAML = """\
defaults:
  - /schema_data@_here_
  - _self_

name: tiny_rgb
loader: my_data.tiny_rgb
resize: pad
num_classes: 4
mean: [0.3, 0.3, 0.3]
std: [0.4, 0.4, 0.4]
train_size: 256
test_size: 64
"""


@pytest.mark.slow
def test_a_three_channel_dataset_of_your_own_is_one_loader_and_one_yaml(tmp_path):
    (tmp_path / "my_data.py").write_text(TINY_RGB)
    (tmp_path / "my_conf" / "data").mkdir(parents=True)
    (tmp_path / "my_conf" / "data" / "tiny_rgb.yaml").write_text(TINY_RGB_YAML)
    result = run_train(
        "data=tiny_rgb",
        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        "logger=none",
        "device=cpu",
        "trainer.epochs=2",
        "trainer.batch_size=32",
        "hydra.run.dir=run",
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["dataset"] == "tiny_rgb" and summary["status"] == "completed"
    assert summary["num_params"] == 61_706 + 2 * 6 * 25 - 6 * 85  # conv1 sees 3 channels, fc3 has 4 outputs
    assert summary["final_test_acc"] > 0.4  # chance is 0.25: the images and labels reach the model together
    weights = torch.load(tmp_path / "run" / "lenet_tiny_rgb.pth")
    assert weights["conv1.weight"].shape == (6, 3, 5, 5) and weights["fc3.weight"].shape == (4, 84)
    classic = run_train(
        "data=tiny_rgb",
        "model=lenet5_classic",
        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        "logger=none",
        "device=cpu",
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert classic.returncode == 1 and classic.stderr.count("\n") == 1, classic.stderr  # refused before any work
    assert "model=lenet5_classic takes 1-channel images in 10 classes" in classic.stderr
    assert "this data has 3 channels and 4 classes: use model=lenet5" in classic.stderr


@pytest.mark.parametrize("experiment, epochs, batch", [(None, 10, 256), ("fast", 3, 128)])
def test_the_default_and_the_fast_recipe_compose_as_chosen_and_run(tmp_path, experiment, epochs, batch):
    from conftest import CONF, run_in_process
    from hydra import compose, initialize_config_dir

    from lenet.run.config import register_configs, to_typed

    extra = [f"+experiment={experiment}"] if experiment else []
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = to_typed(compose("config", overrides=extra))
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.optimizer["lr"]) == (epochs, batch, 0.1)
    assert cfg.scheduler["pct_start"] == 0.3 and cfg.data.name == "mnist" and cfg.model["pooling"] == "max"
    summary, _ = run_in_process(tmp_path, "run", *extra, "trainer.epochs=1", f"trainer.batch_size={batch}")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1  # on synthetic data, one epoch
