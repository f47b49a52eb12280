"""A finished run, loaded back: its model rebuilt from the run's own config, its weights, its preprocessing.

    from lenet.tools.inference import load_run
    run = load_run("outputs/2026-11-28/14-03-12")
    probabilities = run.predict(images)  # uint8 (N, H, W[, C]) as the dataset holds them, or image files

Because the model comes from the run's config (``.hydra/config.yaml``), weights always meet the model
and pooling that made them. A weights file alone is a plain ``state_dict``:
``create_model("lenet5", pooling="max").load_state_dict(torch.load(path))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from lenet.core.data import preprocess
from lenet.core.errors import UserError
from lenet.core.models import build_model
from lenet.run.config import Config, register_configs, to_typed
from lenet.run.outcome import read_summary

MNIST_BOX = 20  # MNIST's digits were scaled into a 20x20 box, centred in the 28x28 image


@dataclass
class Run:
    """A run's config, summary and model (in eval mode, on ``device``)."""

    run_dir: Path
    cfg: Config
    summary: dict[str, Any]
    model: nn.Module
    device: torch.device

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images the run trained on, before padding or resizing."""
        return tuple(self.summary.get("image_size") or (28, 28))  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        """The channels the model takes: one per ``data.mean`` entry."""
        return len(self.cfg.data.mean)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W[, C]) images of the run's image size -> the model's input, exactly as in training."""
        data = self.cfg.data
        return preprocess(images, data.resize.value, data.mean, data.std, self.device, data.size)

    @torch.no_grad()
    def predict(self, images: Union[np.ndarray, Sequence[Union[str, Path]]]) -> torch.Tensor:
        """Class probabilities (N, num_classes) for uint8 images or for image files of any size."""
        if not isinstance(images, np.ndarray):
            images = np.stack([load_image(Path(p), self.image_size, self.channels) for p in images])
        return self.model(self.preprocess(images)).float().softmax(dim=1).cpu()


def load_run(run_dir: Union[str, Path], device: str = "cpu") -> Run:
    """Rebuild the model of ``run_dir`` from its config and load its final weights."""
    run_dir = Path(run_dir)
    config_file = run_dir / ".hydra" / "config.yaml"
    summary = read_summary(run_dir) if (run_dir / "summary.json").is_file() else None
    if not config_file.is_file() or summary is None:
        raise UserError(
            f"{run_dir} is not a run dir: it needs .hydra/config.yaml and summary.json (as train.py writes)"
        )
    if not summary.get("weights") or not (run_dir / summary["weights"]).is_file():
        raise UserError(f"{run_dir} holds no final weights (status {summary.get('status')}): only finished runs do")
    register_configs()
    schema = OmegaConf.structured(Config)
    cfg = to_typed(OmegaConf.merge(schema, OmegaConf.load(config_file)))
    torch_device = torch.device(device)
    model = build_model(cfg.model, in_channels=len(cfg.data.mean), num_classes=cfg.data.num_classes)
    state = torch.load(run_dir / summary["weights"], map_location=torch_device, weights_only=True)
    model.load_state_dict(state)
    return Run(run_dir, cfg, summary, model.to(torch_device).eval(), torch_device)


def load_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """An image file as the dataset would hold it: uint8, ``size``, light strokes on a dark background.

    An image of another size is cropped to its strokes, scaled into a box of 20/28 of the side and
    centred, as MNIST's digits were made; a light background is inverted first.
    """
    from PIL import Image, ImageOps

    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the image {path}: {e}") from None
    image = ImageOps.exif_transpose(image).convert("RGB" if channels == 3 else "L")
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:  # dark strokes on a light background: MNIST's are light on dark
        image = ImageOps.invert(image)
    if image.size != (size[1], size[0]):
        image = _fit_like_mnist(image, size)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels if channels == 3 else pixels.reshape(size)


def _fit_like_mnist(image: Any, size: tuple[int, int]) -> Any:
    from PIL import Image

    box = image.convert("L").point(lambda v: 255 if v > 40 else 0).getbbox() or (0, 0, *image.size)
    strokes = image.crop(box)
    height, width = size
    scale = min(width, height) * MNIST_BOX / 28 / max(strokes.size)
    new_size = (max(1, round(strokes.size[0] * scale)), max(1, round(strokes.size[1] * scale)))
    strokes = strokes.resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new(image.mode, (width, height))
    canvas.paste(strokes, ((width - new_size[0]) // 2, (height - new_size[1]) // 2))
    return canvas
