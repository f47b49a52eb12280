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
from lenet.tools.images import load_image


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


TRUSTED = ("lenet", "torch")  # packages whose components a run dir may name without being trusted explicitly


def _modules(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(n.strip().rstrip(".") for n in names if n.strip())


def _within(path: str, modules: Sequence[str]) -> bool:
    return any(path == m or path.startswith(m + ".") for m in modules)


def _targets(node: Any, key: str) -> list[tuple[str, str]]:
    """(key, target) of every ``_target_`` in a config node, nested ones included."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            found += [(f"{key}._target_", str(v))] if k == "_target_" else _targets(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _targets(v, f"{key}[{i}]")
    return found


def check_trusted(config: dict, run_dir: Path, trust: Sequence[str] = ()) -> None:
    """Refuse a run dir whose config would make lenet build code it does not trust, before anything is imported.

    Building a run's model, loss and data may run code (a ``_target_``, ``data.loader``). Trusted: models
    by registered name; ``_target_``s under ``lenet.`` and ``torch.`` that are ``nn.Module`` classes (or
    lenet's own model and loss functions); and anything in the modules ``trust`` names (your own code).
    """
    trusted = _modules(trust)
    wanted = _targets(config.get("model"), "model") + _targets(config.get("loss"), "loss")
    loader = (config.get("data") or {}).get("loader")
    named = wanted + ([("data.loader", str(loader))] if loader else [])
    for key, target in named:
        if _within(target, trusted):
            continue
        if key != "data.loader" and _within(target, TRUSTED) and _safe(target):
            continue
        raise UserError(
            f"{run_dir}'s config names {target} ({key}), which lenet does not build unless told to trust it: "
            f"a run folder from elsewhere could run code through it; if it is yours, pass --trust "
            f"{target.rsplit('.', 1)[0]} (load_run(..., trust=[...]))"
        )


def _safe(target: str) -> bool:
    """A trusted package's target that only builds a network or a loss: an nn.Module class, or lenet's own functions."""
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception:
        return True  # nothing to run: building it fails in one line later
    is_module = isinstance(obj, type) and issubclass(obj, nn.Module)
    return is_module or _within(target, ("lenet.core.models", "lenet.core.losses"))


def add_loading_arguments(parser: Any) -> None:
    """The command-line options of a tool that loads a run: ``--device`` and ``--trust``."""
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="MODULE",
        help="build the run's components from MODULE too (your own code; repeat for several)",
    )


def load_run(run_dir: Union[str, Path], device: str = "cpu", trust: Sequence[str] = ()) -> Run:
    """Rebuild the model of ``run_dir`` from its config and load its final weights.

    Only what lenet trusts is built (``check_trusted``); ``trust`` names more modules (your own).
    """
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
    try:
        saved = OmegaConf.load(config_file)
        check_trusted(OmegaConf.to_container(saved, resolve=False), run_dir, trust)
        cfg = to_typed(OmegaConf.merge(OmegaConf.structured(Config), saved))
    except UserError:
        raise
    except Exception as e:  # a config file that is not one of ours
        raise UserError(
            f"{config_file} is not a run's config ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    torch_device = resolve_device(device)
    model = build_model(cfg.model, in_channels=len(cfg.data.mean), num_classes=cfg.data.num_classes)
    try:
        state = torch.load(run_dir / summary["weights"], map_location=torch_device, weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # another model's weights, a truncated or foreign file
        reason = " ".join(str(e).split())[:200]
        raise UserError(
            f"{run_dir / summary['weights']} does not hold this run's model's weights ({type(e).__name__}: {reason})"
        ) from None
    return Run(run_dir, cfg, summary, model.to(torch_device).eval(), torch_device)
