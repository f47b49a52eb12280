"""The sweep report: its numbers against the jobs' own, statistics that never overclaim, and odd sweeps."""

import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL, run_train
from scipy import stats

from lenet.run.identity import job_identity
from lenet.run.outcome import write_summary
from lenet.run.sweep_dir import SweepRecord, write_sweep_record
from lenet.tools.compare import compare, main
from lenet.tools.jobs import find_sweeps
from lenet.tools.stats import confidence_interval, paired_test

SYNTHETIC = [*SMALL, "trainer.epochs=2", "optimizer=adam", "scheduler=none"]


def make_sweep(folder, jobs, swept=None, config=None, **record):
    """A sweep dir as lenet writes one: ``jobs`` is a list of (overrides, per-epoch test accuracies, summary extras).

    Each epoch's validation accuracy is its test accuracy less 0.002 after the peak (so that the best epoch, chosen
    on it, is the peak); ``config`` is what every job's .hydra/config.yaml holds beside its overrides.
    """
    folder.mkdir(parents=True)
    for n, (overrides, accs, extra) in enumerate(jobs):
        job = folder / str(n)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        settings = {**(config or {}), **{o.split("=")[0]: o.split("=", 1)[1] for o in overrides}}
        (job / ".hydra" / "config.yaml").write_text(json.dumps(settings))
        rows = [
            {
                "epoch": e + 1,
                "train_loss": 1.0 / (e + 1),
                "val_loss": 1 - a,
                "val_acc": a - 0.002 * (e + 1 > accs.index(max(accs)) + 1),
                "test_loss": 1 - a,
                "test_acc": a,
                "lr": 0.1,
                "seconds": 2.0,
            }
            for e, a in enumerate(accs)
        ]
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("seed=")), 0)
        best = max(rows, key=lambda r: r["val_acc"]) if rows else None
        summary = {
            "status": "completed" if accs else "failed",
            "error": None if accs else "the loss became nan",
            "final_test_acc": accs[-1] if accs else None,
            "final_val_acc": rows[-1]["val_acc"] if rows else None,
            "best_test_acc": best["test_acc"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "selected_on": "val_acc",
            "seed": seed,
            "num_params": 61_706,
            "num_threads": 1,
            "seconds_per_epoch": 2.0,
            "overrides": overrides,
            **extra,
        }
        write_summary(job, summary)
    if swept is not None:
        folders = {str(n): list(job_identity(overrides)) for n, (overrides, _, _) in enumerate(jobs)}
        write_sweep_record(folder, SweepRecord(swept=swept, jobs=folders, **record))
    return folder


POOLING = {"avg": [0.981, 0.978, 0.984], "max": [0.986, 0.979, 0.99]}


@pytest.fixture
def pooling_sweep(tmp_path):
    jobs = [
        ([f"pooling={p}", f"seed={s}"], [acc - 0.01, acc], {})
        for p, accs in POOLING.items()
        for s, acc in enumerate(accs)
    ]
    return make_sweep(tmp_path / "sweep", jobs, swept=["pooling", "seed"])


def test_table_numbers_match_the_jobs(pooling_sweep):
    report = compare(pooling_sweep)
    rows = {r["variant"]: r for r in csv.DictReader(open(pooling_sweep / "comparison.csv"))}
    assert sorted(rows) == ["pooling=avg", "pooling=max"]
    for pooling, final in POOLING.items():
        row = rows[f"pooling={pooling}"]
        assert int(row["n"]) == 3 and int(row["n_failed"]) == 0 and row["pooling"] == pooling
        assert float(row["final_test_acc_mean_pct"]) == pytest.approx(100 * statistics.fmean(final))
        assert float(row["final_test_acc_std_pct"]) == pytest.approx(100 * statistics.stdev(final))
        low, high = stats.t.interval(0.95, 2, loc=statistics.fmean(final), scale=stats.sem(final))
        assert float(row["final_test_acc_ci95_low_pct"]) == pytest.approx(100 * low)
        assert float(row["final_test_acc_ci95_high_pct"]) == pytest.approx(100 * min(high, 1.0))
        assert int(row["num_params"]) == 61_706 and row["num_threads"] == "1"
        mean, std = 100 * statistics.fmean(final), 100 * statistics.stdev(final)
        assert f"| pooling={pooling} | 3 | 0 | 0 | {mean:.2f} ± {std:.2f} |" in report
    assert "test acc % at the best epoch (chosen on val_acc)" in report  # the test set reported, never chosen on


def test_the_paired_test_is_scipys_and_reported_plainly(pooling_sweep):
    report = compare(pooling_sweep)
    t, p = stats.ttest_rel(POOLING["max"], POOLING["avg"])
    diff = statistics.fmean(b - a for a, b in zip(POOLING["avg"], POOLING["max"]))
    assert f"pooling=max vs pooling=avg: {100 * diff:+.2f} pp" in report and "over 3 shared seeds" in report
    assert f"paired t-test t = {t:.2f}, p = {p:.3g}: {'not ' if p >= 0.05 else ''}significant" in report


def test_no_test_without_three_shared_seeds_or_without_spread_and_no_interval_outside_the_range():
    two = paired_test("a", {"0": 0.98, "1": 0.97}, "b", {"0": 0.99, "1": 0.98}, percent=True, span=1.0)
    assert not two.significant and "not tested: 3 shared seeds are needed, 2 are too few" in two.sentence()
    assert "t =" not in two.sentence() and "p =" not in two.sentence()  # accuracy moves in steps: no "p = 0"
    same = paired_test("a", {"0": 0.9, "1": 0.8, "2": 0.7}, "b", {"0": 0.91, "1": 0.81, "2": 0.71}, True, 1.0)
    assert not same.significant and "the difference is the same on every seed" in same.sentence()
    assert paired_test("a", {"0": 0.9}, "b", {}, True) is None
    low, high = confidence_interval([0.999, 0.95, 0.999], bounds=(0.0, 1.0))
    assert 0.0 <= low and high == 1.0  # the t-interval would reach past 100%
    assert all(math.isnan(x) for x in confidence_interval([0.9, 0.8], bounds=(0.0, 1.0)))  # n < 3: none


def test_variants_never_split_by_trainer_resume_or_other_keys_a_resume_may_change(tmp_path):
    jobs = [
        (["pooling=avg", "seed=0"], [0.98], {}),
        (["pooling=avg", "seed=1", "trainer.resume=true", "logger=none"], [0.97], {}),
        (["pooling=max", "seed=0"], [0.99], {}),
        (["pooling=max", "seed=1", "trainer.resume=true"], [0.985], {}),
    ]
    report = compare(make_sweep(tmp_path / "sweep", jobs))  # no sweep.json: the keys that differ
    assert "4 jobs of" in report and ", 2 variants." in report and "| pooling=avg | 2 |" in report
    assert "trainer.resume" not in report


def test_an_optuna_search_is_reported_as_a_ranked_trial_table_with_its_best_trials_test_accuracy(tmp_path):
    jobs = [
        (
            [
                f"optimizer.lr={lr}",
                "trainer.batch_size=64",
                "+callbacks.optuna_pruning={_target_:x,storage:'sqlite:///long'}",
            ],
            [acc],
            {},
        )
        for lr, acc in ((0.01, 0.95), (0.1, 0.99), (0.03, 0.97))
    ] + [(["optimizer.lr=0.5", "trainer.batch_size=64"], [0.5], {"status": "pruned", "error": "pruned by the search"})]
    report = compare(make_sweep(tmp_path / "sweep", jobs, swept=["optimizer.lr"], kind="search"))
    assert "This sweep is an Optuna search: each of its 4 trials is one configuration" in report
    assert "It chose by final_val_acc (maximize); the test set played no part in it." in report
    assert "Best trial: 1 (optimizer.lr=0.1), final_val_acc 0.99; its final weights on the test set: 99.00 %" in report
    assert "Paired tests" not in report and "Ranked by" not in report and "storage" not in report  # short labels
    assert report.index("| 1 | 1 | 0.1 |") < report.index("| 2 | 2 | 0.03 |") < report.index("| 3 | 0 | 0.01 |")
    assert "| - | 3 | 0.5 | pruned | n/a |" in report and "did not complete" not in report  # pruned, not failed


def test_runs_of_different_thread_counts_are_pointed_out(pooling_sweep):
    summary = json.loads((pooling_sweep / "0" / "summary.json").read_text())
    write_summary(pooling_sweep / "0", {**summary, "num_threads": 2})
    report = compare(pooling_sweep)
    assert "The jobs ran with different CPU thread counts (1, 2)" in report and "| 1/2 |" in report


def test_malformed_job_files_are_named_and_the_report_goes_on(pooling_sweep, tmp_path):
    (pooling_sweep / "0" / "summary.json").write_text('{"status": "compl')
    (pooling_sweep / "1" / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 0.5}\nnot json\n[1, 2]\n')
    (pooling_sweep / "2" / ".hydra" / "overrides.yaml").write_text("- [unclosed\n")
    report = compare(pooling_sweep)
    assert "`0` (pooling=avg,seed=0): **failed**:" in report and "summary.json cannot be read" in report
    assert "metrics.jsonl line 2 is not a row; metrics.jsonl line 3 is not a row" in report
    assert "`2` (pooling=avg,seed=2): .hydra/overrides.yaml cannot be read" in report  # its summary names it


def test_out_being_a_file_is_one_line_and_labels_with_dollars_are_drawn(tmp_path, capsys):
    jobs = [(["tag=$cheap", f"seed={s}"], [0.9 + s / 100], {}) for s in range(3)]
    sweep = make_sweep(tmp_path / "sweep", jobs + [(["tag=$$rich$", "seed=0"], [0.95], {})], swept=["tag", "seed"])
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as stopped:
        main([str(sweep), "--out", str(tmp_path / "afile")])
    assert stopped.value.code == 1 and "afile is a file; give a folder" in capsys.readouterr().err
    main([str(sweep)])
    assert (sweep / "comparison.png").stat().st_size > 10_000 and "| tag=$$rich$ | 1 |" in capsys.readouterr().out


def test_sweeps_that_share_their_config_are_pooled_with_seeds_paired_across_them(tmp_path, capsys):
    first = [([f"pooling={p}", f"seed={s}"], [a], {}) for p, accs in POOLING.items() for s, a in enumerate(accs)]
    more = [
        ([f"pooling={p}", f"seed={s}"], [a], {})
        for p, accs in (("avg", [0.97, 0.975]), ("max", [0.98, 0.99]))
        for s, a in zip((3, 4), accs)
    ]
    a = make_sweep(tmp_path / "a", first, swept=["pooling", "seed"], config={"trainer": {"epochs": 1}})
    b = make_sweep(tmp_path / "b", more, swept=["pooling", "seed"], config={"trainer": {"epochs": 1}})
    out = tmp_path / "report"
    main(
        [
            str(a),
            str(b),
            "--out",
            str(out),
            "--title",
            "Pooling, 5 seeds",
            "--format",
            "svg",
            "--labels",
            "pooling=avg=Average",
            "pooling=max=Max",
        ]
    )
    report = (out / "comparison.md").read_text()
    assert report.startswith("# Pooling, 5 seeds") and "10 jobs of" in report and "| Average | 5 | 0 | 0 |" in report
    assert "Max vs Average:" in report and "over 5 shared seeds" in report  # paired across the two sweeps
    assert (out / "comparison.svg").read_text().lstrip().startswith("<?xml")
    curves = list(csv.DictReader(open(out / "comparison_curves.csv")))
    assert {r["sweep"] for r in curves} == {str(a), str(b)} and {r["metric"] for r in curves} >= {"val_acc", "test_acc"}
    assert {(r["variant"], r["seed"]) for r in curves if r["metric"] == "test_acc"} == {
        (v, str(s)) for v in ("Average", "Max") for s in range(5)
    }
    other = make_sweep(tmp_path / "c", more, swept=["pooling", "seed"], config={"trainer": {"epochs": 2}})
    with pytest.raises(SystemExit):
        main([str(a), str(other), "--out", str(tmp_path / "refused")])
    assert "differ in trainer.epochs, which neither sweeps" in capsys.readouterr().err


def test_a_dir_without_jobs_is_a_clear_error(tmp_path):
    from lenet.core.errors import UserError

    with pytest.raises(UserError, match="no jobs under"):
        compare(tmp_path)


def test_a_folder_of_several_sweeps_gets_one_report_per_sweep(pooling_sweep, tmp_path):
    parent = tmp_path / "multirun"
    for name in ("first", "second"):
        shutil.copytree(pooling_sweep, parent / "2026-11-29" / name)
    assert find_sweeps(parent) == [parent / "2026-11-29" / "first", parent / "2026-11-29" / "second"]
    assert find_sweeps(parent / "2026-11-29" / "first") == [parent / "2026-11-29" / "first"]
    main([str(parent)])
    for name in ("first", "second"):
        report = (parent / "2026-11-29" / name / "comparison.md").read_text()
        assert "6 jobs of" in report and ", 2 variants." in report  # its own six jobs, never the twelve of both
    assert not (parent / "comparison.md").exists()


@pytest.mark.slow
def test_a_real_sweep_compared_from_the_command_line_and_the_console_script(tmp_path):
    result = run_train("-m", "pooling=avg,max", "seed=0,1,2", *SYNTHETIC, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "compare them: python -m lenet.compare sweep" in result.stdout
    compared = subprocess.run(
        [sys.executable, "-m", "lenet.compare", "sweep", "--out", "report"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert compared.returncode == 0, compared.stderr
    assert "| pooling=avg | 3 | 0 | 0 |" in compared.stdout and "| pooling=max | 3 | 0 | 0 |" in compared.stdout
    script = shutil.which("lenet-compare") or str(Path(sys.executable).parent / "lenet-compare")
    console = subprocess.run([script, "sweep", "--out", "console"], cwd=tmp_path, capture_output=True, text=True)
    assert console.returncode == 0 and console.stdout == compared.stdout  # the console script is the same tool
    png = (tmp_path / "report" / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_failed_jobs_are_shown_with_their_error(tmp_path):
    result = run_train("-m", "optimizer.lr=0.001,1e9", *SYNTHETIC, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode != 0 and "1 of 2 jobs did not complete" in result.stderr
    report = compare(tmp_path / "sweep")
    rows = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "sweep" / "comparison.csv"))}
    assert (rows["optimizer.lr=0.001"]["n"], rows["optimizer.lr=0.001"]["n_failed"]) == ("1", "0")
    assert (rows["optimizer.lr=1e9"]["n"], rows["optimizer.lr=1e9"]["n_failed"]) == ("0", "1")
    assert "## Jobs that did not complete" in report and "**failed**: the loss became nan" in report


@pytest.mark.slow
def test_the_usage_line_names_the_command_as_it_was_typed():
    script = shutil.which("lenet-compare")
    if script is None:
        pytest.skip("the lenet-compare console script is not installed")
    usage = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert usage.startswith("usage: lenet-compare ")
    usage = subprocess.run([sys.executable, "-m", "lenet.compare", "--help"], capture_output=True, text=True).stdout
    assert usage.startswith("usage: python -m lenet.compare ")
