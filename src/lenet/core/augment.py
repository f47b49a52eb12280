"""Augmentation on the training device, a batch at a time: the 1998 paper's small random affine distortions.

Each image gets its own scale, rotation, horizontal shear and translation, drawn uniformly from
the configured ranges with the run's shuffling generator (so a run, and its resumption, stay
reproducible); one ``affine_grid`` + ``grid_sample`` then warps the whole batch where it lies.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def distort(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: float = 0.1,
    rotation: float = 10.0,
    shear: float = 0.1,
    translate: float = 2.0,
) -> torch.Tensor:
    """Warp each image of (N, C, H, W) by its own random affine map.

    ``scale``: relative, e.g. 0.1 for 0.9-1.1; ``rotation``: degrees either way; ``shear``:
    horizontal, as a slope; ``translate``: pixels either way. Outside the image the border pixels
    (background) are repeated.
    """
    n, _, height, width = images.shape
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64).mul_(2).sub_(1)  # on the CPU, in [-1, 1)
    s = 1 + scale * u[:, 0]
    angle = math.radians(rotation) * u[:, 1]
    cos, sin, k = angle.cos(), angle.sin(), shear * u[:, 2]
    # the map from output to input coordinates (affine_grid's convention): rotation @ shear @ scale
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos * s, (cos * k - sin) * s
    theta[:, 1, 0], theta[:, 1, 1] = sin * s, (sin * k + cos) * s
    theta[:, 0, 2] = translate * 2 / width * u[:, 3]  # affine_grid's coordinates span [-1, 1]
    theta[:, 1, 2] = translate * 2 / height * u[:, 4]
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


AUGMENTATIONS = {"none": None, "distort": distort}


def build_augmentation(name: str, settings: dict) -> Optional[Augmentation]:
    """The augmentation ``name`` (``none`` or ``distort``) with its settings, or None for ``none``."""
    fn = AUGMENTATIONS[name]
    return None if fn is None else functools.partial(fn, **settings)
