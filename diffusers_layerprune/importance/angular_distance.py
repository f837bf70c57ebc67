"""``angular_distance`` (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers").

``d(l, n) = arccos(cos(h_l, h_{l+n})) / pi`` between the input of block ``l`` and the input of block ``l + n`` (the
model's last hidden state for ``l + n = L``), per image token, averaged over tokens, probe timesteps and prompts.
The span of ``n`` consecutive blocks with the smallest ``d(l, n)`` is the one to remove (plan ``span``); the
per-block value is ``d(l, 1)``.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Criterion, check_no_skipped
from .result import LayerImportance
from .runner import ImportanceScan, Unit, Variant


def _distances(scan: ImportanceScan, unit: Unit) -> dict:
    per_step = []
    for _, states in scan.hidden_states(unit[1], unit[0]):
        unit_states = torch.nn.functional.normalize(torch.stack(states).double(), dim=-1)  # [L+1, B, N, D]
        cos = torch.einsum("ibnd,jbnd->bijn", unit_states, unit_states).clamp(-1.0, 1.0)
        per_step.append((torch.arccos(cos) / torch.pi).mean(-1))  # [B, L+1, L+1]
    return {"distance": torch.stack(per_step).mean(0).tolist()}


def angular_distance(scan: ImportanceScan, *, skipped: Variant = ()) -> LayerImportance:
    """Per-block ``d(l, 1)`` (higher = more important) and, in ``extra``, ``span_distance[n][l] = d(l, n)`` for
    ``n = 1 .. L-1`` and ``best_span[n]``, the first block of the span of ``n`` blocks to remove."""
    check_no_skipped("angular_distance", skipped)
    records = scan.run("angular_distance", [((), b) for b in range(len(scan.batches))], lambda u: _distances(scan, u))
    distance = np.concatenate([np.asarray(records[((), b)]["distance"]) for b in range(len(scan.batches))])
    mean = distance.mean(0)  # [L+1, L+1]
    num_layers = scan.num_layers
    spans = {n: [float(mean[i, i + n]) for i in range(num_layers - n + 1)] for n in range(1, num_layers)}
    one = np.asarray([distance[:, i, i + 1] for i in range(num_layers)])  # [L, prompts]
    stderr = (one.std(axis=1, ddof=1) / np.sqrt(one.shape[1])).tolist() if one.shape[1] > 1 else [0.0] * num_layers
    return LayerImportance(
        values=spans[1],
        criterion="angular_distance",
        stderr=stderr,
        per_prompt=one.tolist(),
        metadata=scan.metadata("angular_distance"),
        extra={
            "span_distance": {str(n): d for n, d in spans.items()},
            "best_span": {str(n): int(np.argmin(d)) for n, d in spans.items()},
        },
    )


CRITERION = Criterion(
    name="angular_distance",
    compute=angular_distance,
    summary="Gromov et al.: arccos(cos(h_l, h_l+n))/pi; per block n=1, and the best span of n blocks to remove",
)
