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
from lenet.run.assemble import resolve_device
from lenet.run.config import Config, register_configs, to_typed
from lenet.run.outcome import read_summary
from lenet.run.trust import check_buildable
from lenet.tools.images import load_image


@dataclass
class Run:
    """A run's config, summary and model (in eval mode, on ``device``)."""

    run_dir: Path
    cfg: Config
    summary: dict[str, Any]
    model: nn.Module
    device: torch.device
    weights: str = ""  # the weights file loaded (lenet_<dataset>.pth or best.pth)

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
        """Class probabilities (N, num_classes) for uint8 images as the dataset holds them, or for image files
        of any size (``lenet.tools.images``). Arrays of another type or shape are refused with what to do."""
        if not isinstance(images, np.ndarray):
            images = np.stack([load_image(Path(p), self.image_size, self.channels) for p in images])
        self._check(images)
        return self.model(self.preprocess(images)).float().softmax(dim=1).cpu()

    def _check(self, images: np.ndarray) -> None:
        shape = (*self.image_size, 3) if self.channels == 3 else self.image_size
        if images.dtype != np.uint8:
            span = f" in [{images.min():.3g}, {images.max():.3g}]" if images.size and images.dtype.kind in "fiu" else ""
            raise UserError(
                f"images must be uint8 (0-255) as the dataset holds them, got {images.dtype}{span}: "
                "for floats in [0, 1], pass (images * 255).round().astype(numpy.uint8)"
            )
        if images.ndim != len(shape) + 1 or images.shape[1:] != shape:
            raise UserError(
                f"images must be (N, {', '.join(map(str, shape))}) as the run's dataset holds them, got "
                f"{images.shape}; image files of any size are brought to it: pass their paths"
            )


def add_loading_arguments(parser: Any) -> None:
    """The command-line options of a tool that loads a run: ``--device``, ``--weights`` and ``--trust``."""
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    parser.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="final",
        help="final (default): the last epoch's weights; best: those of the epoch validation chose (best.pth)",
    )
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="MODULE",
        help="build the run's components from MODULE too (your own code; repeat for several)",
    )


WEIGHTS = ("final", "best")  # which weights of a run: the last epoch's, or those of its best epoch (best.pth)
MAX_IMAGE_SIDE = 4096  # a run's recorded image size beyond this is not a digit's: refused rather than allocated


def load_run(run_dir: Union[str, Path], device: str = "cpu", trust: Sequence[str] = (), weights: str = "final") -> Run:
    """Rebuild the model of ``run_dir`` from its config and load its ``weights``: ``final`` (the last epoch's) or
    ``best`` (the epoch its validation chose, best.pth).

    Only what lenet trusts is built (``lenet.run.trust``); ``trust`` names more modules (your own).
    """
    run_dir = Path(run_dir)
    if weights not in WEIGHTS:
        raise UserError(f"weights must be {' or '.join(WEIGHTS)}, got {weights!r}")
    config_file = run_dir / ".hydra" / "config.yaml"
    summary = read_summary(run_dir)
    if not config_file.is_file() or summary is None:
        raise UserError(
            f"{run_dir} is not a run dir: it needs .hydra/config.yaml and summary.json (as train.py writes)"
        )
    weights_path = _weights_file(run_dir, summary, weights)
    _check_image_size(run_dir, summary.get("image_size"))
    register_configs()
    try:
        resolved = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)  # judged as it would be built
        if not isinstance(resolved, dict):
            raise ValueError("it holds no mapping")
        check_buildable(resolved, f"{run_dir}'s config", trust)
        cfg = to_typed(OmegaConf.merge(OmegaConf.structured(Config), resolved))
    except UserError:
        raise
    except Exception as e:  # a config file that is not one of ours
        raise UserError(
            f"{config_file} is not a run's config ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    torch_device = resolve_device(device)
    model = build_model(cfg.model, in_channels=len(cfg.data.mean), num_classes=cfg.data.num_classes)
    try:
        state = torch.load(weights_path, map_location=torch_device, weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # another model's weights, a truncated or foreign file
        reason = " ".join(str(e).split())[:200]
        raise UserError(
            f"{weights_path} does not hold this run's model's weights ({type(e).__name__}: {reason})"
        ) from None
    return Run(run_dir, cfg, summary, model.to(torch_device).eval(), torch_device, weights_path.name)


def _weights_file(run_dir: Path, summary: Any, weights: str) -> Path:
    """The file of the run's ``weights`` (a file name in the run dir, as the summary records it)."""
    key = "weights" if weights == "final" else "best_weights"
    name = summary.get(key)
    if not name:
        if weights == "best":
            raise UserError(
                f"{run_dir} holds no best weights (best.pth): its run selected no best epoch (data.val_size=0, "
                "or it did not complete); use --weights final"
            )
        raise UserError(f"{run_dir} holds no final weights (status {summary.get('status')}): only finished runs do")
    if Path(name).name != name or name in (".", ".."):
        raise UserError(f"{run_dir}/summary.json names {name!r} as its {key}, not a file of the run dir")
    if not (run_dir / name).is_file():
        raise UserError(f"{run_dir} holds no {name} (its {weights} weights): restore it, or use another run dir")
    return run_dir / name


def _check_image_size(run_dir: Path, size: Any) -> None:
    if size is None:
        return
    ok = isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    if not ok or not all(1 <= s <= MAX_IMAGE_SIDE for s in size):
        raise UserError(
            f"{run_dir}/summary.json records image_size {size!r}: not the two sides (1 to {MAX_IMAGE_SIDE}) of "
            "images a run trains on"
        )
