"""Architecture codes: ``K`` sets of blocks to run, one per code, all sharing the model's weights.

During training a code is a vector of block logits relaxed with a Gumbel-sigmoid and a straight-through estimator
(hard 0/1 gates forward, sigmoid gradients backward), as in the relaxed masks of TinyFusion (Fang et al., 2024) and
APTP; at the end :meth:`RoutingCodes.binary` thresholds them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def gumbel_sigmoid(
    logits: torch.Tensor, temperature: float, *, hard: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Relaxed Bernoulli sample of ``sigmoid(logits)``; with ``hard`` the forward value is the 0/1 gate and the
    gradient is the relaxed sample's (straight-through)."""
    u = torch.rand(logits.shape, generator=generator).to(logits).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + u.log() - (-u).log1p()) / temperature)
    if not hard:
        return soft
    return (soft > 0.5).to(soft) - soft.detach() + soft


def straight_through_one_hot(logits: torch.Tensor, temperature: float, *, generator=None) -> torch.Tensor:
    """Gumbel-softmax over the last dimension, one-hot forward, softmax gradient backward."""
    u = torch.rand(logits.shape, generator=generator).to(logits).clamp(1e-6, 1 - 1e-6)
    soft = torch.softmax((logits - (-u.log()).log()) / temperature, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    return hard - soft.detach() + soft


class RoutingCodes(nn.Module):
    """Block logits ``[num_codes, num_layers]``; ``sigmoid(logit)`` is the probability that a code runs a block.

    Initialised so that every block runs with probability ``budget / num_layers``, with per-code noise of scale
    ``init_noise`` so the codes start apart.
    """

    def __init__(self, num_codes: int, num_layers: int, budget: float, *, init_noise: float = 1.0, generator=None):
        super().__init__()
        p = min(max(budget / num_layers, 0.02), 0.98)
        base = math.log(p / (1 - p))
        noise = torch.randn((num_codes, num_layers), generator=generator) * init_noise
        self.logits = nn.Parameter(base + noise)

    @property
    def num_codes(self) -> int:
        return self.logits.shape[0]

    @property
    def num_layers(self) -> int:
        return self.logits.shape[1]

    def probabilities(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def expected_depths(self) -> torch.Tensor:
        """Expected number of blocks each code runs ``[K]`` (differentiable)."""
        return self.probabilities().sum(-1)

    def sample(self, temperature: float, *, generator=None) -> torch.Tensor:
        """Hard gates ``[K, L]`` with straight-through gradients."""
        return gumbel_sigmoid(self.logits, temperature, hard=True, generator=generator)

    def binary(self, min_blocks: int = 1) -> list[list[int]]:
        """Each code's kept blocks (``sigmoid > 0.5``), at least its ``min_blocks`` most likely ones."""
        kept = []
        for row in self.logits.detach():
            on = set((row > 0).nonzero().flatten().tolist())
            if len(on) < min_blocks:
                on |= set(row.argsort(descending=True)[:min_blocks].tolist())
            kept.append(sorted(on))
        return kept


class FixedCodes(nn.Module):
    """Codes that are given, not learned: ``kept[k]`` lists the blocks code ``k`` runs (e.g. the nested depths of an
    elastic run, whose weights were trained for exactly those sets). Same interface as :class:`RoutingCodes`, with
    no parameters: only the router learns which prompt takes which code."""

    def __init__(self, kept: list[list[int]], num_layers: int):
        super().__init__()
        mask = torch.zeros(len(kept), num_layers)
        for k, blocks in enumerate(kept):
            mask[k, list(blocks)] = 1.0
        self.register_buffer("mask", mask)
        self.kept = [sorted(blocks) for blocks in kept]

    @property
    def num_codes(self) -> int:
        return self.mask.shape[0]

    @property
    def num_layers(self) -> int:
        return self.mask.shape[1]

    def expected_depths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    def sample(self, temperature: float, *, generator=None) -> torch.Tensor:
        return self.mask

    def binary(self, min_blocks: int = 1) -> list[list[int]]:
        return [list(blocks) for blocks in self.kept]
