"""Image files as the dataset holds its images: uint8, the run's size, light strokes on a dark background.

A photo or a scan is not MNIST: its background is rarely black, may be grey paper or lit unevenly, may
be transparent. The background's level is estimated from the image's border; strokes are what stands
out from it, found by Otsu's threshold; they are cropped, scaled into MNIST's 20x20 box (of 28) and
centred. An image where nothing stands out is said to hold no clear strokes, rather than given a class.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lenet.core.errors import UserError

MNIST_BOX = 20  # MNIST's digits were scaled into a 20x20 box, centred in the 28x28 image
MIN_CONTRAST = 48  # grey levels (of 255) the strokes must stand out from the background by


class NoStrokes(UserError):
    """An image with nothing in it that stands out from its background: blank, uniform, or too faint."""


def open_image(path: Path) -> Any:
    """The image at ``path``, decoded, upright, with transparency flattened onto white (a page's colour)."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # an image too large to be a digit
            image = Image.open(path)
            image.load()
            image = ImageOps.exif_transpose(image)
    except Exception as e:  # PIL raises many kinds for truncated, corrupt, hostile or foreign files
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"cannot read the image {path}: {reason}") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        page = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(page, rgba)
    return image.convert("RGB")


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of 0..255 values: the level that best splits them into two classes."""
    histogram = np.bincount(values.astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    weights = np.cumsum(histogram)
    means = np.cumsum(histogram * np.arange(256))
    total, mean = weights[-1], means[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean * weights - total * means) ** 2 / (weights * (total - weights))
    return float(np.nanargmax(between[:-1]))


def load_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """An image file as the dataset would hold it: uint8 of ``size`` (H, W), light strokes on a dark background.

    An image of the run's own size with a dark background is taken as it is (an MNIST image saved as a
    file predicts as in evaluation); any other is brought to MNIST's form. NoStrokes when nothing stands out.
    """
    rgb = np.asarray(open_image(path), dtype=np.float32)
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    dark_strokes = background > 127  # on paper; MNIST's are light on dark
    ink = np.clip(background - gray if dark_strokes else gray - background, 0, 255)  # how far from the background
    if ink.max() < MIN_CONTRAST:  # in any form, the dataset's own included
        raise NoStrokes(f"{path} holds no clear strokes (nothing stands out from its background): no class given")
    if gray.shape == tuple(size) and not dark_strokes:  # in the dataset's form already: as it is
        return (rgb if channels == 3 else gray).round().clip(0, 255).astype(np.uint8)
    strokes = ink > max(otsu_threshold(ink), MIN_CONTRAST / 2)
    rows, cols = np.nonzero(strokes)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    level = np.percentile(ink[strokes], 90)  # strokes at full brightness, as MNIST's are
    digit = np.clip(ink[top:bottom, left:right] * (255.0 / max(level, 1.0)), 0, 255)
    canvas = _fit(digit, size)
    return np.repeat(canvas[..., None], 3, axis=-1) if channels == 3 else canvas


def _fit(digit: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``digit`` scaled into MNIST's box of ``size`` (20/28 of its side), centred, as uint8."""
    from PIL import Image

    height, width = size
    scale = min(width, height) * MNIST_BOX / 28 / max(digit.shape)
    new = (max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale)))
    resized = np.asarray(Image.fromarray(digit.astype(np.uint8)).resize(new, Image.Resampling.LANCZOS))
    canvas = np.zeros((height, width), dtype=np.uint8)
    top, left = (height - new[1]) // 2, (width - new[0]) // 2
    canvas[top : top + new[1], left : left + new[0]] = resized
    return canvas
