"""Losses: what the ``loss`` config group builds, any callable ``(scores, targets) -> mean loss``.

The options are torch's ``CrossEntropyLoss`` and the 1998 paper's loss for RBF outputs; a loss of
your own is a class or function named by ``_target_`` in one YAML file.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lenet.core.factory import bind, call

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LeCunRBFLoss(nn.Module):
    """LeCun et al. (1998), eq. (9): y_correct + log(exp(-j) + sum_i exp(-y_i)), with y = -scores, times ``scale``.

    For models whose scores are negated RBF penalties (``lenet5_classic``). ``rubbish_penalty`` is the
    paper's j: it caps how far wrong classes are pushed. The squared-distance penalties give gradients
    ~20x those of cross-entropy on a linear layer; the paper's diagonal Levenberg-Marquardt steps did not
    care, plain SGD at the harness's learning rates diverges. A constant ``scale`` moves no minimum (and
    changes nothing for Adam).
    """

    def __init__(self, rubbish_penalty: float = 5.0, scale: float = 0.1):
        super().__init__()
        self.rubbish_penalty = rubbish_penalty
        self.scale = scale

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # a cross-entropy over the classes plus a "rubbish" class of constant penalty j
        rubbish = scores.new_full((len(scores), 1), -self.rubbish_penalty)
        return F.cross_entropy(torch.cat([scores, rubbish], dim=1), targets) * self.scale


def build_loss(cfg: Mapping[str, Any]) -> Loss:
    """The loss that ``cfg`` names (``_target_`` and its own arguments)."""
    return call(bind(cfg, "loss"), "loss")
