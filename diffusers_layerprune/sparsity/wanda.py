"""``wanda``: Pruning by Weights and activations (Sun et al., 2023, "A Simple and Effective Pruning Approach for
Large Language Models").

Score of weight ``W[i, j]`` = ``|W[i, j]| * ||X_j||_2``, where ``X_j`` is input feature ``j`` of the layer over every
calibration token. Weights compete within each output row (the paper's comparison group), or within each group of
``M`` consecutive inputs for ``N:M``. No weight update, one calibration pass.
"""

from __future__ import annotations

import torch

from ..errors import LayerPruneError
from .base import SparsityMethod


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor | None) -> torch.Tensor:
    """``|W| * ||X||`` broadcast over rows: ``weight [out, in]``, ``input_norm [in]`` -> ``[out, in]`` float32."""
    if input_norm is None:
        raise LayerPruneError("wanda needs input norms from calibration prompts; pass --prompts")
    if input_norm.shape != weight.shape[1:]:
        raise ValueError(f"input norm of shape {tuple(input_norm.shape)} for a weight of {tuple(weight.shape)}")
    return weight.detach().float().abs() * input_norm.to(weight.device, torch.float32)[None, :]


METHOD = SparsityMethod(
    name="wanda",
    score=wanda_scores,
    group="row",
    needs_calibration=True,
    supports_global=False,
    summary="|W| x ||X|| (Sun et al., 2023): input-activation norms from calibration prompts, per output row",
)
