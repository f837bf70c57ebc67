"""Which weights to zero, given a score per weight (low score = pruned first).

A *comparison group* is the set of weights that compete for survival: a whole layer (``layer``), each output row
(``row``, Wanda's choice), every layer of a component together (``global``), or each run of ``M`` consecutive
weights along the input dimension (the ``N:M`` pattern: at most ``N`` of every ``M`` survive; 2:4 is the one that
sparse tensor cores run). A group of ``n`` weights at sparsity ``s`` loses exactly ``round(s * n)`` of them; ties
fall to the weight with the lower index, so masks are deterministic.

Masks are boolean tensors of the weight's shape, ``True`` = kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import LayerPruneError


@dataclass(frozen=True)
class Pattern:
    """``unstructured`` (``n = m = None``) or ``N:M``: at most ``n`` non-zero weights in every ``m`` consecutive
    input weights of a row. ``N:M`` fixes the sparsity at ``1 - n/m``."""

    n: int | None = None
    m: int | None = None

    @property
    def structured(self) -> bool:
        return self.m is not None

    @property
    def sparsity(self) -> float | None:
        """The sparsity an ``N:M`` pattern implies (``None`` for unstructured)."""
        return None if self.m is None else 1 - self.n / self.m

    def __str__(self) -> str:
        return "unstructured" if self.m is None else f"{self.n}:{self.m}"


def parse_pattern(text: str | Pattern) -> Pattern:
    """``"unstructured"`` or ``"N:M"`` with ``0 < N < M`` (e.g. ``"2:4"``); raises :class:`LayerPruneError`."""
    if isinstance(text, Pattern):
        return text
    value = str(text).strip().lower()
    if value == "unstructured":
        return Pattern()
    match = re.fullmatch(r"(\d+):(\d+)", value)
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise LayerPruneError(
            f"pattern {text!r} is not valid; use unstructured or N:M with 0 < N < M (e.g. 2:4: at most 2 non-zero "
            "weights in every 4 consecutive input weights)"
        )
    return Pattern(int(match[1]), int(match[2]))


def num_pruned(sparsity: float, size: int) -> int:
    """Weights a group of ``size`` loses at ``sparsity``: ``round(sparsity * size)``."""
    return int(round(sparsity * size))


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask over the last dimension that drops the ``k`` lowest scores of each row (ties: lower index first)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return keep
    # A stable sort breaks ties by position, which topk does not promise.
    order = torch.sort(scores, dim=-1, stable=True).indices[..., :k]
    return keep.scatter_(-1, order, False)


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop the ``round(sparsity * numel)`` lowest scores of the whole tensor."""
    flat = scores.reshape(1, -1)
    return _lowest(flat, num_pruned(sparsity, flat.shape[1])).reshape(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop the ``round(sparsity * in_features)`` lowest scores of every output row of a ``[out, in]`` tensor."""
    return _lowest(scores, num_pruned(sparsity, scores.shape[-1]))


def n_m_mask(scores: torch.Tensor, n: int, m: int, *, name: str = "layer") -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive input weights of a ``[out, in]`` tensor."""
    rows, cols = scores.shape
    if cols % m:
        raise LayerPruneError(
            f"{name} has {cols} input features, not a multiple of {m}: the {n}:{m} pattern needs whole groups; "
            "use --pattern unstructured"
        )
    groups = scores.reshape(rows, cols // m, m)
    return _lowest(groups, m - n).reshape(rows, cols)


def _order_bits(scores: torch.Tensor) -> torch.Tensor:
    # Non-negative float32 values sort like their bit patterns read as int32: a threshold search on integers is exact.
    return scores.float().clamp_min(0).view(torch.int32)


def global_masks(score_fns: Sequence[Callable[[], torch.Tensor]], sparsity: float) -> Iterator[torch.Tensor]:
    """Drop the ``round(sparsity * total)`` lowest scores over all tensors together (``global`` scope).

    ``score_fns[i]()`` returns the scores of tensor ``i`` (non-negative); it is called a few dozen times, so that no
    concatenation of every score is ever held in memory (T5-XXL has 4.7B weights). The threshold is found by
    bisection on the float bit patterns; weights equal to it are dropped in order (tensor, then index) until the
    count is exact. Masks are yielded one tensor at a time, in order, once the threshold is known.
    """
    sizes = [fn().numel() for fn in score_fns]
    k = num_pruned(sparsity, sum(sizes))

    def count_at_most(bits: int) -> int:
        return sum(int((_order_bits(fn()) <= bits).sum()) for fn in score_fns)

    low, high = -1, int(torch.tensor(float("inf")).view(torch.int32))
    while k and high - low > 1:  # smallest threshold t with count(<= t) >= k lies in (low, high]
        mid = (low + high) // 2
        if count_at_most(mid) >= k:
            high = mid
        else:
            low = mid
    remaining = k - count_at_most(high - 1) if k else 0  # weights equal to the threshold that still have to go
    for fn in score_fns:
        bits = _order_bits(fn())
        if k == 0:
            yield torch.ones_like(bits, dtype=torch.bool)
            continue
        keep = bits >= high
        equal = (bits == high).reshape(-1).nonzero().squeeze(1)
        take = equal[:remaining]
        remaining -= take.numel()
        keep.reshape(-1)[take] = False
        yield keep
