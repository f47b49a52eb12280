import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REAL_DATA, write_idx, write_mnist

import lenet.core.data as data
import lenet.core.idx as idx
from lenet.core.data import PREPROCESS_CHUNK, load_dataset, make_synthetic, preprocess, resize_matrix
from lenet.core.errors import ConfigError, DataError
from lenet.core.idx import locate_raw, read_idx

CPU = torch.device("cpu")


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_images_and_labels(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=gz)
    np.testing.assert_array_equal(read_idx(path), images)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "labels", labels, gz=gz)), labels)


@pytest.mark.parametrize("layout", ["torchvision", "flat"])
@pytest.mark.parametrize("gz", [False, True])
def test_dataset_is_found_in_torchvision_layout_or_a_flat_folder(tmp_path, layout, gz):
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    write_mnist(folder, n_train=30, n_test=20, gz=gz)
    splits = load_dataset("mnist", tmp_path, False, "pad", 0.1307, 0.3081, CPU)
    train, test = splits.train, splits.test
    assert train.images.shape == (30, 1, 32, 32) and test.images.shape == (20, 1, 32, 32) and splits.val is None
    assert train.labels.dtype == torch.int64 and len(test) == 20
    expected_labels = make_synthetic(20, 12)[1]
    np.testing.assert_array_equal(test.labels.numpy(), expected_labels)


def test_missing_data_names_the_folders_and_the_fix(tmp_path):
    with pytest.raises(DataError) as e:
        locate_raw(tmp_path, "mnist", download=False)
    message = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "data.root" in message and "data.download=true" in message


def test_bad_magic_is_reported_with_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"<html>not found</html>" * 10)
    with pytest.raises(DataError, match=f"{path} is not an IDX file"):
        read_idx(path)


def test_truncated_file_is_reported_with_the_file(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"{path} is truncated or corrupt"):
        read_idx(path)
    path.write_bytes(path.read_bytes()[:9])
    with pytest.raises(DataError, match="truncated inside its header"):
        read_idx(path)


def test_corrupt_gzip_is_reported_with_the_file(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8), gz=True)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=f"cannot read {path}"):
        read_idx(path)


def test_image_and_label_counts_must_agree(tmp_path):
    write_mnist(tmp_path, n_train=30, n_test=20)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="holds 30 images but .* holds 29 labels"):
        load_dataset("mnist", tmp_path, False, "pad", 0.1307, 0.3081, CPU)


def test_preprocess_pads_like_the_paper_or_resizes_like_torchvision():
    images = np.full((2, 28, 28), 255, dtype=np.uint8)
    padded = preprocess(images, "pad", mean=0.0, std=1.0, device=CPU)
    assert padded.shape == (2, 1, 32, 32)
    assert padded[0, 0, 2:30, 2:30].eq(1).all() and padded[0, 0, :2].eq(0).all() and padded[0, 0, :, 30:].eq(0).all()
    resized = preprocess(images, "resize", mean=0.5, std=0.5, device=CPU)
    assert resized.shape == (2, 1, 32, 32) and torch.allclose(resized, torch.ones_like(resized))


def test_preprocessing_in_chunks_gives_the_bits_of_whole_set_passes():
    images, _ = make_synthetic(2 * PREPROCESS_CHUNK + 7, seed=4)
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)
    resized = (resize_matrix(28, 32) @ x @ resize_matrix(28, 32).t()).sub_(0.1307).div_(0.3081)
    assert torch.equal(preprocess(images, "resize", 0.1307, 0.3081, CPU), resized)
    padded = F.pad(x, (2, 2, 2, 2)).sub_(0.1307).div_(0.3081)
    assert torch.equal(preprocess(images, "pad", 0.1307, 0.3081, CPU), padded)


def test_resize_matches_torchvision_resize_on_pil_images():
    from PIL import Image
    from torchvision import transforms

    images, _ = make_synthetic(8, seed=5)
    ours = preprocess(images, "resize", mean=0.0, std=1.0, device=CPU)
    to_tensor = transforms.Compose([transforms.Resize(32), transforms.ToTensor()])
    theirs = torch.stack([to_tensor(Image.fromarray(image)) for image in images])
    assert ours.shape == theirs.shape == (8, 1, 32, 32)
    # PIL computes in fixed point and rounds to uint8 (one grey level at most); we keep the fraction
    assert (ours - theirs).abs().max() <= 1 / 255 + 1e-6 and (ours - theirs).abs().mean() < 0.3 / 255


def test_resize_matrix_is_interpolate_along_one_axis():
    x = torch.rand(3, 1, 28, 20)
    expected = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(resize_matrix(28, 32) @ x @ resize_matrix(20, 32).t(), expected, atol=1e-6)
    assert torch.allclose(resize_matrix(28, 32).sum(1), torch.ones(32))


def test_synthetic_data_is_deterministic_and_balanced():
    a, b = make_synthetic(500, seed=3), make_synthetic(500, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (500, 28, 28) and a[0].dtype == np.uint8
    assert set(np.unique(a[1])) == set(range(10))
    assert not np.array_equal(a[0], make_synthetic(500, seed=4)[0])


def test_concurrent_jobs_download_once(tmp_path, monkeypatch):
    calls = []

    def slow_download(root, dataset):
        calls.append(dataset)
        time.sleep(0.3)  # long enough for the other job to arrive while this one downloads
        write_mnist(root / "MNIST" / "raw", n_train=10, n_test=10)

    monkeypatch.setattr(idx, "_download", slow_download)
    results = []
    threads = [threading.Thread(target=lambda: results.append(locate_raw(tmp_path, "mnist", True))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["mnist"] and len(results) == 3
    assert results[0]["train"][0] == tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"


@pytest.mark.skipif(not (REAL_DATA / "MNIST" / "raw").is_dir(), reason="no real MNIST copy beside the repo")
def test_real_mnist_has_the_official_split_sizes():
    splits = load_dataset("mnist", REAL_DATA, False, "pad", 0.1307, 0.3081, CPU)
    train, test = splits.train, splits.test
    assert train.images.shape == (60_000, 1, 32, 32) and test.images.shape == (10_000, 1, 32, 32)
    held = load_dataset("mnist", REAL_DATA, False, "pad", 0.1307, 0.3081, CPU, val_size=5000)
    assert (len(held.train), len(held.val), len(held.test)) == (55_000, 5_000, 10_000)  # 55k/5k/10k
    assert torch.bincount(test.labels).tolist()[:2] == [980, 1135]  # the official test set's class counts
    assert abs(train.images[:, :, 2:30, 2:30].mean().item()) < 0.01  # normalised with MNIST's own mean/std


def test_the_validation_split_is_drawn_once_for_everyone_and_subsets_are_the_same_for_every_run(tmp_path):
    write_mnist(tmp_path, n_train=300, n_test=100)

    def load(**sizes):
        return load_dataset("mnist", tmp_path, False, "pad", 0.1307, 0.3081, CPU, **sizes)

    whole, split = load(val_size=0), load(val_size=50)
    assert (len(split.train), len(split.val), len(split.test)) == (250, 50, 100)
    rows = {tuple(x.flatten().tolist()) for x in whole.train.images}  # every training image, each once
    train_rows = {tuple(x.flatten().tolist()) for x in split.train.images}
    val_rows = {tuple(x.flatten().tolist()) for x in split.val.images}
    assert not train_rows & val_rows and train_rows | val_rows == rows  # disjoint, together the training set
    torch.manual_seed(123)  # the run's seed does not move it
    again = load(val_size=50, train_size=100, test_size=40)
    assert torch.equal(again.val.images, split.val.images) and (len(again.train), len(again.test)) == (100, 40)
    assert {tuple(x.flatten().tolist()) for x in again.train.images} <= train_rows
    with pytest.raises(DataError, match="data.val_size=300 leaves none of its 300 training images"):
        load(val_size=300)
    with pytest.raises(DataError, match="data.train_size=260 is more than the 250 training images it has"):
        load(val_size=50, train_size=260)


def test_a_failed_download_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, root, train, download):
            raise RuntimeError(
                "Error downloading train-images-idx3-ubyte.gz:\nTried https://example/, got:\n<urlopen error>\n"
            )

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError) as e:
        locate_raw(tmp_path / "typo" / "data", "mnist", download=True)
    message = str(e.value)
    assert "\n" not in message and "urlopen error" in message and "point data.root at a copy" in message
    assert f"mnist is not in {tmp_path / 'typo' / 'data' / 'MNIST' / 'raw'} and" in message  # where it looked
    assert "data.download=false" in message
    assert list(tmp_path.iterdir()) == []  # the mistyped root's folders are gone again
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        locate_raw(tmp_path / "kept", "mnist", download=True)
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["notes.txt"]  # a folder that was there stays as it was


def rgb_images(n, side=28, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8), rng.integers(0, 4, size=n)


def test_channels_last_images_are_normalised_per_channel():
    images, _ = rgb_images(5)
    out = preprocess(images, "pad", mean=[0.1, 0.5, 0.9], std=[1.0, 0.5, 0.25], device=CPU)
    assert out.shape == (5, 3, 32, 32)
    expected = (
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1)
    ) / torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1)
    assert torch.allclose(out[:, :, 2:30, 2:30], expected, atol=1e-6)
    with pytest.raises(DataError, match="data.mean has 1 values but the images have 3 channels"):
        preprocess(images, "pad", mean=[0.5], std=[0.5, 0.5, 0.5], device=CPU)


def test_images_larger_than_the_input_are_refused_when_padding_and_resized_otherwise():
    images, _ = rgb_images(2, side=64)
    with pytest.raises(DataError, match="the images are 64x64, larger than data.size=32.*data.resize=resize"):
        preprocess(images, "pad", [0.5] * 3, [0.5] * 3, CPU)
    assert preprocess(images, "resize", [0.5] * 3, [0.5] * 3, CPU).shape == (2, 3, 32, 32)


def test_a_registered_loader_is_a_dataset_and_bad_labels_are_named(monkeypatch):
    def tiny(train_size, test_size):
        return {"train": rgb_images(train_size, seed=1), "test": rgb_images(test_size, seed=2)}

    monkeypatch.setitem(data._DATASETS, "tiny", tiny)
    sizes = {"train_size": 12, "test_size": 6}
    splits = load_dataset("tiny", Path("unused"), False, "pad", [0.5] * 3, [0.25] * 3, CPU, **sizes, num_classes=4)
    train, test = splits.train, splits.test
    assert train.images.shape == (12, 3, 32, 32) and len(test) == 6 and int(train.labels.max()) < 4
    with pytest.raises(DataError, match="labels run from 0 to 3, outside 0..2; set data.num_classes"):
        load_dataset("tiny", Path("unused"), False, "pad", [0.5] * 3, [0.25] * 3, CPU, **sizes, num_classes=3)
    float_labels = {split: (rgb_images(4)[0], np.full(4, 1.5)) for split in ("train", "test")}
    monkeypatch.setitem(data._DATASETS, "floats", lambda: float_labels)
    with pytest.raises(DataError, match="labels must be one integer per image, got float64"):
        load_dataset("floats", Path("unused"), False, "pad", [0.5] * 3, [0.25] * 3, CPU)
    with pytest.raises(
        ConfigError, match="unknown dataset 'cifar'; known: fashion_mnist, .*kmnist, mnist, synthetic.*data.loader"
    ):
        load_dataset("cifar", Path("unused"), False, "pad", [0.5], [0.25], CPU)


def _idx_header(*shape: int) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)


def test_hostile_idx_files_are_one_line_without_reading_what_they_claim(tmp_path):
    import gzip as gz
    import tracemalloc

    bomb = tmp_path / "bomb-idx3-ubyte.gz"  # 10 images promised, 64 MB of zeros delivered
    with gz.open(bomb, "wb") as f:
        f.write(_idx_header(10, 28, 28))
        for _ in range(64):
            f.write(bytes(1 << 20))
    overflow = tmp_path / "overflow-idx3-ubyte"
    overflow.write_bytes(_idx_header(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF))
    sparse = tmp_path / "sparse-idx3-ubyte"  # a header, then a hole of 1 TB
    sparse.write_bytes(_idx_header(10, 28, 28))
    with open(sparse, "r+b") as f:
        f.truncate(1 << 40)
    deflate = tmp_path / "deflate-idx3-ubyte.gz"
    deflate.write_bytes(gz.compress(_idx_header(10, 28, 28) + bytes(7840))[:20] + b"\xff" * 200)
    expected = {
        bomb: "the file holds more than that",
        overflow: "more than the 4 GiB this reader takes",
        sparse: "the file holds 1099511627760",
        deflate: "cannot read",
    }
    for path, fragment in expected.items():
        tracemalloc.start()
        with pytest.raises(DataError) as e:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert fragment in str(e.value) and "\n" not in str(e.value), path
        assert peak < 64 << 20, (path, peak)  # never the claimed or delivered size


def test_a_data_root_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    for download in (True, False):
        with pytest.raises(DataError, match="data.root=.*afile is a file, not a folder"):
            locate_raw(tmp_path / "afile", "mnist", download=download)
