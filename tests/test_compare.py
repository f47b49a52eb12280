"""The sweep report, checked against the summaries of real short runs."""

import csv
from pathlib import Path
import math
import shutil
import statistics
import subprocess
import sys

import pytest
from scipy import stats

from lenet.tools.compare import compare

from conftest import read_json, run_train

SYNTHETIC = ["logger=none", "data=synthetic", "data.train_size=256", "data.test_size=128", "trainer.batch_size=64",
             "device=cpu", "trainer.epochs=2", "optimizer=adam", "scheduler=none"]  # fmt: skip


@pytest.fixture(scope="module")
def pooling_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_train("-m", "pooling=avg,max", "seed=0,1,2", *SYNTHETIC, "hydra.sweep.dir=sweep", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "sweep"


def test_table_numbers_match_the_summaries(pooling_sweep):
    report = compare(pooling_sweep)
    rows = {r["variant"]: r for r in csv.DictReader(open(pooling_sweep / "comparison.csv"))}
    assert sorted(rows) == ["pooling=avg", "pooling=max"]
    for pooling in ("avg", "max"):
        summaries = [read_json(pooling_sweep / str(n) / "summary.json") for n in range(6)]
        mine = [s for s in summaries if s["pooling"] == pooling]
        final = [s["final_test_acc"] for s in mine]
        row = rows[f"pooling={pooling}"]
        assert int(row["n"]) == 3 and int(row["n_failed"]) == 0 and row["pooling"] == pooling
        assert float(row["final_test_acc_mean_pct"]) == pytest.approx(100 * statistics.fmean(final))
        assert float(row["final_test_acc_std_pct"]) == pytest.approx(100 * statistics.stdev(final))
        assert float(row["best_test_acc_mean_pct"]) == pytest.approx(
            100 * statistics.fmean(s["best_test_acc"] for s in mine)
        )
        half = stats.t.ppf(0.975, 2) * statistics.stdev(final) / math.sqrt(3)
        assert float(row["final_test_acc_ci95_high_pct"]) == pytest.approx(100 * (statistics.fmean(final) + half))
        assert int(row["num_params"]) == 61_706
        assert float(row["epoch_seconds"]) == pytest.approx(statistics.fmean(s["seconds_per_epoch"] for s in mine))
        assert (
            f"| pooling={pooling} | 3 | 0 | {100 * statistics.fmean(final):.2f} ± {100 * statistics.stdev(final):.2f} |"
            in report
        )


def test_paired_test_over_seeds_is_reported_plainly(pooling_sweep):
    report = (
        (pooling_sweep / "comparison.md").read_text()
        if (pooling_sweep / "comparison.md").exists()
        else compare(pooling_sweep)
    )
    by_seed = {}
    for n in range(6):
        s = read_json(pooling_sweep / str(n) / "summary.json")
        by_seed.setdefault(s["pooling"], {})[s["seed"]] = s["final_test_acc"]
    diffs = [by_seed["max"][s] - by_seed["avg"][s] for s in (0, 1, 2)]
    assert f"pooling=max vs pooling=avg: {100 * statistics.fmean(diffs):+.2f} pp" in report
    assert "over 3 shared seeds" in report or "identical on all 3" in report
    if statistics.stdev(diffs) > 0:
        t, p = stats.ttest_rel([by_seed["max"][s] for s in (0, 1, 2)], [by_seed["avg"][s] for s in (0, 1, 2)])
        assert f"t = {t:.2f}, p = {p:.3g}" in report
        assert ("not significant" in report) == (p >= 0.05)


@pytest.mark.slow
def test_plot_and_command_line(pooling_sweep, tmp_path):
    result = subprocess.run([sys.executable, "-m", "lenet.compare", str(pooling_sweep), "--out", str(tmp_path)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| pooling=avg | 3 |" in result.stdout
    script = shutil.which("lenet-compare") or str(Path(sys.executable).parent / "lenet-compare")
    console = subprocess.run(
        [script, str(pooling_sweep), "--out", str(tmp_path / "console")], capture_output=True, text=True
    )
    assert console.returncode == 0 and console.stdout == result.stdout  # the console script is the same tool
    png = (tmp_path / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_failed_jobs_are_shown_with_their_error(tmp_path):
    result = run_train("-m", "optimizer.lr=0.001,1e9", *SYNTHETIC, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode != 0 and "1 of 2 jobs did not complete" in result.stderr
    report = compare(tmp_path / "sweep")
    rows = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "sweep" / "comparison.csv"))}
    assert (rows["optimizer.lr=0.001"]["n"], rows["optimizer.lr=0.001"]["n_failed"]) == ("1", "0")
    assert (rows["optimizer.lr=1000000000.0"]["n"], rows["optimizer.lr=1000000000.0"]["n_failed"]) == ("0", "1")
    assert "## Jobs that did not complete" in report and "**failed**: the loss became nan" in report


def test_a_dir_without_jobs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no jobs under"):
        compare(tmp_path)


def fake_variant(label, accs):
    from lenet.run.outcome import outcome_from_summary
    from lenet.tools.compare import Job, Variant

    jobs = [Job(Path(f"/x/{label}/{seed}"), {"seed": str(seed)},
                outcome_from_summary(Path(f"/x/{label}/{seed}"), {"status": "completed", "final_test_acc": a, "seed": seed}),
                []) for seed, a in enumerate(accs)]  # fmt: skip
    return Variant(label, {}, jobs)


def test_paired_test_edge_cases():
    from lenet.tools.compare import paired_test

    same = paired_test(fake_variant("a", [0.9, 0.8, 0.7]), fake_variant("b", [0.9, 0.8, 0.7]))
    assert "identical on all 3 shared seeds" in same.sentence() and not same.significant
    shifted = paired_test(fake_variant("a", [0.9, 0.8, 0.7]), fake_variant("b", [0.91, 0.81, 0.71]))
    assert shifted.mean_difference == pytest.approx(0.01) and shifted.significant
    noisy = paired_test(fake_variant("a", [0.90, 0.80, 0.70]), fake_variant("b", [0.91, 0.79, 0.705]))
    assert not noisy.significant and "not significant at the 5% level" in noisy.sentence()
    assert paired_test(fake_variant("a", [0.9]), fake_variant("b", [])) is None


def test_the_usage_line_names_the_command_as_it_was_typed(tmp_path):
    import shutil

    script = shutil.which("lenet-compare")
    if script is None:
        pytest.skip("the lenet-compare console script is not installed")
    usage = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert usage.startswith("usage: lenet-compare ")
    usage = subprocess.run([sys.executable, "-m", "lenet.compare", "--help"], capture_output=True, text=True).stdout
    assert usage.startswith("usage: python -m lenet.compare ")


def test_a_folder_of_several_sweeps_gets_one_report_per_sweep(pooling_sweep, tmp_path):
    import shutil

    parent = tmp_path / "multirun"
    for name in ("first", "second"):
        shutil.copytree(pooling_sweep, parent / "2026-11-29" / name)
    from lenet.tools.compare import find_sweeps, main

    assert find_sweeps(parent) == [parent / "2026-11-29" / "first", parent / "2026-11-29" / "second"]
    assert find_sweeps(parent / "2026-11-29" / "first") == [parent / "2026-11-29" / "first"]
    main([str(parent)])
    for name in ("first", "second"):
        report = (parent / "2026-11-29" / name / "comparison.md").read_text()
        assert "6 jobs, 2 variants." in report  # its own six jobs, never the twelve of both sweeps
    assert not (parent / "comparison.md").exists()
