"""A finished run loaded back: lenet.tools.inference, python -m lenet.evaluate and python -m lenet.predict."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, read_json, run_train
from lenet.core.errors import UserError
from lenet.tools.inference import load_image, load_run

TINY = ["logger=none", "data=synthetic", "data.train_size=512", "data.test_size=200", "trainer.batch_size=64",
        "device=cpu", "device.num_threads=1", "trainer.epochs=2"]  # fmt: skip


@pytest.fixture(scope="module")
def avg_run(tmp_path_factory):
    """A finished run trained with avg pooling (lenet5's own is max)."""
    cwd = tmp_path_factory.mktemp("inference")
    result = run_train(*TINY, "pooling=avg", "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "run"


def module(*args, cwd):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})  # fmt: skip


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
    assert [(name, int(label)) for name, label, _ in lines] == [(str(p), int(from_files[i].argmax())) for i, p in
                                                                 enumerate(paths[:2])]  # fmt: skip
    assert all(0 < float(p) <= 1 for _, _, p in lines)


def test_a_large_dark_on_light_colour_photo_is_brought_to_mnists_form(tmp_path):
    digit = np.zeros((28, 28), dtype=np.uint8)  # a ring in MNIST's 20x20 box, centred
    yy, xx = np.mgrid[:28, :28]
    radius = np.hypot(yy - 13.5, xx - 13.5)
    digit[(radius > 6) & (radius < 10)] = 255
    big = np.kron(255 - digit, np.ones((5, 5), dtype=np.uint8))  # 140x140, dark strokes on white
    photo = np.full((180, 230, 3), 255, dtype=np.uint8)
    photo[30:170, 20:160] = big[..., None]
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    loaded = load_image(tmp_path / "photo.jpg", (28, 28), channels=1)
    assert loaded.shape == (28, 28) and loaded.dtype == np.uint8
    assert np.median(np.concatenate([loaded[0], loaded[-1]])) < 20  # dark background, as MNIST's
    assert np.corrcoef(loaded.ravel(), digit.ravel())[0, 1] > 0.9


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    with pytest.raises(UserError, match="is not a run dir"):
        load_run(tmp_path)
    result = module("lenet.tools.predict", str(tmp_path), "x.png", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
