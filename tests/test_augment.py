"""Augmentation on the device: the paper's random affine distortions, per image, reproducible and resumable."""

import torch
from conftest import exact_resume_check

from lenet.core.augment import build_augmentation, distort


def digits(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 32, 32)
    images[:, :, 10:22, 14:18] = 1.0 + torch.rand(n, 1, 12, 4, generator=g)  # a bar on a flat background
    return images


def test_zero_ranges_leave_the_images_as_they_are():
    images = digits()
    same = distort(images, torch.Generator().manual_seed(0), scale=0, rotation=0, shear=0, translate=0)
    assert torch.allclose(same, images, atol=1e-5)


def test_each_image_gets_its_own_distortion_drawn_from_the_generator():
    images = digits().expand(6, 1, 32, 32).clone()
    images[:] = images[0]  # six copies of one image
    a = distort(images, torch.Generator().manual_seed(1))
    b = distort(images, torch.Generator().manual_seed(1))
    c = distort(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(not torch.allclose(a[0], a[i]) for i in range(1, 6))  # per image, not per batch
    assert a.shape == images.shape and torch.isfinite(a).all()


def test_translation_moves_the_content_by_up_to_the_given_pixels():
    images = digits(64)
    moved = distort(images, torch.Generator().manual_seed(3), scale=0, rotation=0, shear=0, translate=2.0)
    columns = torch.arange(32.0)
    centre = lambda x: (x.sum(dim=(1, 2)) * columns).sum(-1) / x.sum(dim=(1, 2, 3))  # noqa: E731
    shift = centre(moved) - centre(images)
    assert shift.abs().max() <= 2.05 and shift.abs().max() > 1.0  # within the range, and it does move


def test_the_background_stays_background_at_the_border():
    images = digits() - 0.42  # normalised: the background is below zero
    warped = distort(images, torch.Generator().manual_seed(4), scale=0.2, rotation=20, shear=0.2, translate=3)
    assert torch.allclose(warped[:, :, 0, :], torch.full_like(warped[:, :, 0, :], -0.42))


def test_none_builds_nothing():
    assert build_augmentation("none", {}) is None


def test_a_run_with_distortions_resumes_exactly(tmp_path):
    exact_resume_check(tmp_path, ["data.augment=distort", "data.train_size=256", "trainer.epochs=3"])
