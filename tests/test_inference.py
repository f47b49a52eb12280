"""A finished run loaded back: lenet.tools.inference, python -m lenet.evaluate and python -m lenet.predict."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, finished_run, read_json
from PIL import Image

from lenet.core.errors import UserError
from lenet.tools.inference import load_image, load_run

TINY = [
    "logger=none",
    "data=synthetic",
    "data.train_size=512",
    "data.test_size=200",
    "trainer.batch_size=64",
    "device=cpu",
    "device.num_threads=1",
    "trainer.epochs=2",
]


@pytest.fixture(scope="module")
def avg_run(tmp_path_factory):
    """A finished run trained with avg pooling (lenet5's own is max)."""
    return finished_run(
        tmp_path_factory.mktemp("inference") / "run",
        "data.train_size=512",
        "data.test_size=200",
        "trainer.epochs=2",
        "pooling=avg",
    )


def module(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_the_model_is_rebuilt_from_the_runs_own_config(avg_run):
    run = load_run(avg_run)
    pools = [m for m in run.model.modules() if isinstance(m, (torch.nn.AvgPool2d, torch.nn.MaxPool2d))]
    assert pools and all(isinstance(m, torch.nn.AvgPool2d) for m in pools)  # not the max pooling lenet5 defaults to
    assert run.image_size == (28, 28) and run.channels == 1


@pytest.mark.slow
def test_evaluate_reproduces_the_runs_final_accuracy_and_writes_its_pictures(avg_run):
    result = module("lenet.tools.evaluate", str(avg_run), cwd=avg_run.parent)
    assert result.returncode == 0, result.stderr
    report, summary = read_json(avg_run / "evaluation.json"), read_json(avg_run / "summary.json")
    assert report["test_acc"] == pytest.approx(summary["final_test_acc"])  # the same weights on the same test set
    assert report["test_loss"] == pytest.approx(summary["final_test_loss"], rel=1e-5)
    confusion = np.array(report["confusion_matrix"])
    assert confusion.sum() == 200 and np.trace(confusion) == round(200 * summary["final_test_acc"])
    assert report["misclassified"] == 200 - np.trace(confusion)
    for png in ("confusion_matrix.png", "misclassified.png"):
        assert Image.open(avg_run / png).size[0] > 300
    assert f"test accuracy {100 * summary['final_test_acc']:.2f}%" in result.stdout


def test_predict_gives_a_28x28_image_the_training_preprocessing(avg_run, tmp_path):
    from lenet.core.data import make_synthetic

    images, _ = make_synthetic(8, seed=5)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(image).save(paths[-1])
    run = load_run(avg_run)
    from_files = run.predict(paths)
    with torch.no_grad():
        direct = run.model(run.preprocess(images)).softmax(1)
    torch.testing.assert_close(from_files, direct)
    result = module("lenet.tools.predict", str(avg_run), *map(str, paths[:2]), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line.split("  ") for line in result.stdout.splitlines()]
    assert [(name, int(label)) for name, label, _ in lines] == [
        (str(p), int(from_files[i].argmax())) for i, p in enumerate(paths[:2])
    ]
    assert all(0 < float(p) <= 1 for _, _, p in lines)


def test_a_large_dark_on_light_colour_photo_is_brought_to_mnists_form(tmp_path):
    digit = ring()
    big = np.kron(255 - digit, np.ones((5, 5), dtype=np.uint8))  # 140x140, dark strokes on white
    photo = np.full((180, 230, 3), 255, dtype=np.uint8)
    photo[30:170, 20:160] = big[..., None]
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    loaded = load_image(tmp_path / "photo.jpg", (28, 28), channels=1)
    assert loaded.shape == (28, 28) and loaded.dtype == np.uint8
    assert np.median(np.concatenate([loaded[0], loaded[-1]])) < 20  # dark background, as MNIST's
    assert np.corrcoef(loaded.ravel(), digit.ravel())[0, 1] > 0.9


def ring():
    """A ring in MNIST's 20x20 box, centred: a digit-like 28x28 image, light on dark."""
    digit = np.zeros((28, 28), dtype=np.uint8)
    yy, xx = np.mgrid[:28, :28]
    radius = np.hypot(yy - 13.5, xx - 13.5)
    digit[(radius > 6) & (radius < 10)] = 255
    return digit


def test_a_dark_digit_on_grey_unevenly_lit_paper_is_found_and_brought_to_mnists_form(tmp_path):
    strokes = np.kron(ring(), np.ones((4, 4), dtype=np.uint8)).astype(np.float32) / 255  # 112x112
    paper = np.full((150, 200), 185.0) + np.linspace(-15, 15, 200)[None, :]  # grey, lit from one side: 170-200
    noise = np.random.default_rng(0).normal(0, 4, paper.shape)
    page = paper + noise
    page[20:132, 40:152] -= 130 * strokes  # pencil: dark, not black
    Image.fromarray(page.clip(0, 255).astype(np.uint8)).save(tmp_path / "scan.png")
    loaded = load_image(tmp_path / "scan.png", (28, 28), channels=1)
    assert np.median(np.concatenate([loaded[0], loaded[-1], loaded[:, 0], loaded[:, -1]])) == 0  # the page is gone
    assert loaded.max() == 255 and np.corrcoef(loaded.ravel(), ring().ravel())[0, 1] > 0.9


def test_a_transparent_png_is_read_as_strokes_on_white(tmp_path):
    rgba = np.zeros((84, 84, 4), dtype=np.uint8)  # black ink, transparent elsewhere
    rgba[..., 3] = np.kron(ring(), np.ones((3, 3), dtype=np.uint8))
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    loaded = load_image(tmp_path / "ink.png", (28, 28), channels=1)
    assert np.corrcoef(loaded.ravel(), ring().ravel())[0, 1] > 0.9  # not all black


@pytest.mark.parametrize(
    "pixels", [np.full((50, 50), 255), np.full((1, 1), 0), np.full((40, 30), 128)], ids=["white", "one-pixel", "grey"]
)
def test_an_image_with_nothing_in_it_gets_no_class(tmp_path, pixels):
    from lenet.tools.images import NoStrokes

    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(NoStrokes, match="holds no clear strokes"):
        load_image(tmp_path / "blank.png", (28, 28), channels=1)
    Image.fromarray(np.full((28, 28), pixels.flat[0], dtype=np.uint8)).save(tmp_path / "blank28.png")  # its own size
    with pytest.raises(NoStrokes, match="holds no clear strokes"):
        load_image(tmp_path / "blank28.png", (28, 28), channels=1)


def test_predict_refuses_arrays_that_are_not_the_datasets_images(avg_run):
    run = load_run(avg_run)
    with pytest.raises(UserError, match=r"images must be uint8 \(0-255\) .* got float32 in \[0[.0-9]*, 1\]"):
        run.predict(np.random.default_rng(0).random((2, 28, 28), dtype=np.float32))
    with pytest.raises(UserError, match=r"images must be \(N, 28, 28\) .* got \(2, 32, 32\)"):
        run.predict(np.zeros((2, 32, 32), dtype=np.uint8))


@pytest.mark.slow
def test_predict_reports_each_bad_file_and_still_predicts_the_others(avg_run, tmp_path):
    Image.fromarray(ring()).save(tmp_path / "good.png")
    (tmp_path / "fuzzed.png").write_bytes((tmp_path / "good.png").read_bytes()[:60] + b"\x00garbage" * 20)
    Image.new("L", (30000, 30000)).save(tmp_path / "bomb.png", optimize=True)  # 900 megapixels of nothing
    Image.fromarray(np.full((40, 40), 255, dtype=np.uint8)).save(tmp_path / "blank.png")
    files = ["good.png", "fuzzed.png", "bomb.png", "blank.png", "missing.png"]
    result = module("lenet.tools.predict", str(avg_run), *files, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    out, err = result.stdout.splitlines(), result.stderr.splitlines()
    assert out[0].startswith("good.png  ") and out[1].startswith("blank.png  -  ") and len(out) == 2
    assert [line.split(": ")[0] for line in err[:3]] == ["error", "error", "error"] and len(err) == 4
    assert "fuzzed.png" in err[0] and "bomb.png" in err[1] and "missing.png" in err[2]
    assert err[3] == "error: 3 of 5 images could not be read"
    cuda = module("lenet.tools.predict", str(avg_run), "good.png", "--device", "cuda", cwd=tmp_path)
    if not torch.cuda.is_available():
        assert cuda.returncode == 1 and cuda.stderr.count("\n") == 1 and "device=cuda was asked for" in cuda.stderr


@pytest.mark.slow
def test_another_models_weights_are_one_line(avg_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(avg_run, copy)
    weights = torch.load(copy / "lenet_synthetic.pth")
    weights["fc3.weight"] = torch.zeros(12, 84)
    torch.save(weights, copy / "lenet_synthetic.pth")
    result = module("lenet.tools.predict", str(copy), "x.png", cwd=tmp_path)
    assert (
        result.returncode == 1
        and result.stderr.count("\n") == 1
        and "does not hold this run's model's weights" in (result.stderr)
    )


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    with pytest.raises(UserError, match="is not a run dir"):
        load_run(tmp_path)
    result = module("lenet.tools.predict", str(tmp_path), "x.png", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_tools_run_from_the_folder_that_holds_a_clone_named_lenet(tmp_path, avg_run):
    clone = tmp_path / "lenet"  # a checkout as `git clone .../lenet` names it, seen from its parent folder
    (clone / "bench").mkdir(parents=True)
    (clone / "train.py").write_text("raise SystemExit('the clone shadowed the package')\n")
    result = subprocess.run(
        [sys.executable, "-m", "lenet.evaluate", str(avg_run)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0 and "test accuracy" in result.stdout, result.stderr
    bench = subprocess.run(
        [sys.executable, "-m", "lenet.bench", "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert bench.returncode == 0 and "usage:" in bench.stdout, bench.stderr  # not the clone's bench/ folder
