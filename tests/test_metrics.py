"""Per-epoch metrics chosen in trainer.metrics: one function each, through metrics.jsonl, summary and compare."""

import pytest
import torch
from conftest import SMALL, read_json, read_jsonl, run_train

from lenet.core.errors import ConfigError
from lenet.core.metrics import compute, get_metric, per_class_accuracy, top5
from lenet.tools.compare import compare
from lenet.tools.compare import main as compare_main

TINY = [*SMALL, "trainer.epochs=2"]


def test_top5_and_per_class_accuracy_by_hand():
    scores = torch.tensor([[9.0, 8, 7, 6, 5, 4, 0], [0.0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0]])
    targets = torch.tensor([0, 0, 1])
    assert top5(scores, targets) == pytest.approx(2 / 3)  # the second image's class 0 is ranked last
    assert per_class_accuracy(scores, targets) == {"0": 0.5, "1": 0.0}
    row = compute({"top5": top5, "per_class_accuracy": per_class_accuracy}, scores, targets)
    assert row == {
        "test_top5": pytest.approx(2 / 3),
        "test_per_class_accuracy_0": 0.5,
        "test_per_class_accuracy_1": 0.0,
    }


def test_an_unknown_metric_is_one_line_listing_the_known_ones():
    with pytest.raises(ConfigError, match="unknown metric 'top3'; known: accuracy, per_class_accuracy, top5"):
        get_metric("top3")
    with pytest.raises(ConfigError, match="cannot import my_pkg.nope"):
        get_metric("my_pkg.nope")


MY_METRIC = """\
def mean_max_score(scores, targets):
    return scores.max(dim=1).values.mean().item()
"""


@pytest.mark.slow
def test_metrics_reach_metrics_jsonl_the_summary_and_compare(tmp_path, capsys):
    (tmp_path / "my_metrics.py").write_text(MY_METRIC)
    metrics = "trainer.metrics=[top5,per_class_accuracy,my_metrics.mean_max_score]"
    result = run_train(
        "-m",
        "pooling=avg,max",
        metrics,
        *TINY,
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "sweep" / "0" / "metrics.jsonl")
    assert all(0 < r["test_top5"] <= 1 and r["test_top5"] >= r["test_acc"] for r in rows)
    assert sorted(k for k in rows[-1] if k.startswith("test_per_class_accuracy_")) == [
        f"test_per_class_accuracy_{c}" for c in range(10)
    ]
    assert "test_mean_max_score" in rows[-1]
    summary = read_json(tmp_path / "sweep" / "0" / "summary.json")
    assert summary["final_test_top5"] == rows[-1]["test_top5"] and summary["final_test_acc"] == rows[-1]["test_acc"]
    report = compare(tmp_path / "sweep", metric="test_top5")
    assert "final test_top5 % (mean ± std)" in report and "Ranked by mean final test_top5, best first:" in report
    by_loss = compare(tmp_path / "sweep", metric="test_loss")
    assert "final test_loss (mean ± std)" in by_loss
    with pytest.raises(SystemExit):
        compare_main([str(tmp_path / "sweep"), "--metric", "test_top3"])
    assert "error: no epoch of these jobs records 'test_top3'" in capsys.readouterr().err
