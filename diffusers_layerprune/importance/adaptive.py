"""The adaptive scan: spend generations only where the selection is still uncertain.

The exhaustive ``preference`` scan generates every prompt with the full model and with each block skipped:
``(L + 1) x N`` images. Most of them only confirm what the first few prompts already showed (skipping block 0 of a
DiT ruins every image). The adaptive scan takes the prompts in rounds of ``round_prompts`` and after each round

1. ranks the blocks by their mean per-prompt drop so far and takes the ``k`` smallest as the current selection;
2. for every selected block ``i`` and unselected block ``j``, forms the paired per-prompt difference
   ``drop_j(p) - drop_i(p)`` over the prompts both were measured on; the pair is *resolved* when the lower end of its
   confidence interval, ``mean - z * stderr``, is above ``-tolerance`` (``z``: two-sided normal quantile,
   Bonferroni-corrected over the ``k (L - k)`` pairs): ``j`` is surely more important than ``i``, or at worst
   ``tolerance`` less, so removing ``i`` rather than ``j`` costs at most ``tolerance``. This is the epsilon-PAC
   stopping rule of subset selection in bandits (LUCB, Kalyanakrishnan et al., ICML 2012) with paired differences;
   ``tolerance = 0`` asks for certainty and never settles blocks whose drops are equal;
3. generates the next round only for the blocks of unresolved pairs. A block clearly above the cut, or clearly
   below it, stops being generated.

The full model (the reference of the drops) is generated in the first round only: the decisions rest on paired
differences ``drop_j(p) - drop_i(p) = score_i(p) - score_j(p)``, in which the reference cancels. Where it was not
generated, the per-prompt drops are taken against an estimate of the full model's score on that prompt, from the
additive model ``score_b(p) = mu(p) - drop_b`` (prompt difficulty plus block effect: least squares over the blocks
measured on the prompt, with ``mu(p)`` fixed to the full model's score where it was generated), so that means over
different prompts still compare like with like; the paired differences are exactly the measured ones.

It stops when no pair is unresolved (*settled*) or the prompt budget (the prompt set) is spent. Decisions depend only
on finished units, which go through :meth:`ImportanceScan.run` like the exhaustive scan's (same progress files, same
unit keys, split across ``accelerate launch`` processes, gathered on every process), so a resumed or split run takes
the same decisions and ends with identical numbers, and the exhaustive and adaptive scans of one output share work.

The result is a ``preference`` :class:`LayerImportance` whose ``per_prompt`` is NaN where a block was not generated;
``values`` and ``stderr`` are over each block's own prompts; ``extra["adaptive"]`` records the rounds and the images.
Sequential testing repeats the test every round, so the error rate per pair is above the nominal one: the benchmark
(``benchmarks/bench_adaptive_scan.py``) measures the quality of the chosen blocks against the exhaustive choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..errors import LayerPruneError
from .result import LayerImportance
from .runner import ImportanceScan
from .stability import paired_difference, z_value


def adaptive_criteria() -> list[str]:
    """Criteria the adaptive scan supports: those that generate images and give a value per prompt
    (``Criterion.adaptive``)."""
    from .registry import all_criteria

    return [name for name, spec in all_criteria().items() if spec.adaptive]


def check_adaptive_options(
    criterion: str,
    num_prompts: int | None,
    round_prompts: int,
    batch_size: int,
    tolerance: float = 0.0,
    confidence: float = 0.9,
) -> None:
    """Everything a user can get wrong about an adaptive scan, before any model is loaded (``num_prompts``: the
    prompt budget, ``None`` when not known yet)."""
    supported = adaptive_criteria()
    if criterion not in supported:
        raise LayerPruneError(
            f"--adaptive needs a criterion that generates images for each prompt; {criterion} does not (supported: "
            f"{', '.join(supported)})"
        )
    if round_prompts < 2:
        raise LayerPruneError(
            f"--round-prompts must be at least 2 (a confidence interval needs 2), got {round_prompts}"
        )
    if round_prompts % batch_size:
        raise LayerPruneError(
            f"--round-prompts {round_prompts} must be a multiple of --batch-size {batch_size} (a round is whole batches)"
        )
    if num_prompts is not None and num_prompts < round_prompts:
        raise LayerPruneError(
            f"the prompt budget ({num_prompts} prompts) is smaller than one round (--round-prompts {round_prompts}); "
            "give more prompts or a smaller round"
        )
    if not tolerance >= 0.0:
        raise LayerPruneError(f"--tolerance must be at least 0, got {tolerance}")
    if not 0.0 < confidence < 1.0:
        raise LayerPruneError(f"--confidence must be between 0 and 1, got {confidence}")


def adaptive_rounds(
    measure: Callable[[list[int], range, bool], tuple[np.ndarray | None, np.ndarray]],
    num_layers: int,
    k: int,
    num_prompts: int,
    round_prompts: int,
    *,
    confidence: float = 0.9,
    tolerance: float | Callable[[], float] = 0.0,
) -> tuple[np.ndarray, list[dict], bool]:
    """The adaptive loop, independent of how drops are measured.

    Args:
        measure: ``measure(blocks, prompts, reference) -> (reference_scores [len(prompts)] or None, scores
            [len(blocks), len(prompts)])``: the per-prompt score of the model with each block skipped over a
            contiguous range of prompt indices, and of the full model when ``reference`` is true (first round only).
            The drop of a block is ``reference - score`` (higher = more important).
        num_layers, k: blocks in the model, blocks to remove.
        num_prompts: the budget; round ``r`` covers prompts ``[r R, (r + 1) R)`` (the last round may be shorter).
        round_prompts: ``R``.
        confidence, tolerance: as in the module docstring; ``tolerance`` in the units of the drops, or a function
            returning it, called after each round's measurements.

    Returns ``(per_prompt [L, num_prompts] drops with NaN where not measured, rounds, settled)``; each round is
    ``{"prompts": [start, stop], "blocks": [...], "reference": bool, "unresolved_after": n}``.
    """
    if not 0 < k < num_layers:
        raise LayerPruneError(f"the number of blocks to remove must be between 1 and {num_layers - 1}, got {k}")
    scores = np.full((num_layers, num_prompts), np.nan)
    reference = np.full(num_prompts, np.nan)
    per_prompt = scores.copy()  # the drops, after each round
    z = z_value(confidence, k * (num_layers - k))
    active = list(range(num_layers))
    rounds: list[dict] = []
    settled = False
    for start in range(0, num_prompts, round_prompts):
        prompts = range(start, min(start + round_prompts, num_prompts))
        first = start == 0
        full, measured = measure(active, prompts, first)
        if first:
            reference[prompts.start : prompts.stop] = np.asarray(full, dtype=np.float64)
        scores[active, prompts.start : prompts.stop] = np.asarray(measured, dtype=np.float64)
        per_prompt = drops_against_reference(scores, reference)
        selection = _selection(per_prompt, k)
        epsilon = float(tolerance() if callable(tolerance) else tolerance)
        unresolved = _unresolved(per_prompt, selection, z, epsilon)
        rounds.append(
            {
                "prompts": [prompts.start, prompts.stop],
                "blocks": list(active),
                "reference": first,
                "unresolved_after": len(unresolved),
            }
        )
        active = sorted({b for pair in unresolved for b in pair})
        if not active:
            settled = True
            break
    return per_prompt, rounds, settled


def drops_against_reference(scores: np.ndarray, reference: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Per-prompt drops ``mu(p) - scores[b, p]`` (NaN where a block was not measured), with ``mu(p)`` the full
    model's score where it was measured (``reference`` finite) and elsewhere the least-squares estimate under the
    additive model ``score_b(p) = mu(p) - drop_b``, found by alternating the two means to a fixed point.
    Deterministic, so a resumed scan gets identical drops."""
    seen = np.isfinite(scores)
    estimate = ~np.isfinite(reference) & seen.any(axis=0)
    mu = np.array(reference, dtype=np.float64)
    if estimate.any():
        block_drop = np.zeros(scores.shape[0])
        for _ in range(iterations):
            known = np.isfinite(mu)
            for b in range(scores.shape[0]):
                rows = seen[b] & known
                block_drop[b] = float(np.mean(mu[rows] - scores[b, rows])) if rows.any() else 0.0
            filled = np.where(seen, scores + block_drop[:, None], 0.0)
            new = filled[:, estimate].sum(axis=0) / seen[:, estimate].sum(axis=0)
            previous = mu[estimate]
            mu[estimate] = new
            if np.isfinite(previous).all() and np.max(np.abs(new - previous)) < 1e-12:
                break
    return np.where(seen, mu[None, :] - scores, np.nan)


def _selection(per_prompt: np.ndarray, k: int) -> list[int]:
    means = _nanmean_rows(per_prompt)
    return sorted(sorted(range(len(means)), key=lambda i: (means[i], i))[:k])


def _nanmean_rows(per_prompt: np.ndarray) -> list[float]:
    out = []
    for row in per_prompt:
        row = row[np.isfinite(row)]
        out.append(float(row.mean()) if len(row) else math.inf)
    return out


def _unresolved(per_prompt: np.ndarray, selection: list[int], z: float, tolerance: float) -> list[tuple[int, int]]:
    chosen = set(selection)
    pairs = []
    for i in selection:
        for j in range(per_prompt.shape[0]):
            if j in chosen:
                continue
            mean, stderr, n = paired_difference(per_prompt, i, j)
            if n >= 2 and mean - z * stderr > -tolerance:
                continue  # j is surely more important than i, or at most `tolerance` less: keeping j costs little
            pairs.append((i, j))
    return pairs


def adaptive_preference(
    scan: ImportanceScan,
    k: int,
    *,
    round_prompts: int = 8,
    confidence: float = 0.9,
    tolerance: float = 0.05,
) -> LayerImportance:
    """The ``preference`` criterion measured adaptively for removing ``k`` blocks; the prompt set of ``scan`` is the
    budget. ``tolerance`` is relative to the full model's mean preference score over the first round (0.05:
    removing a block rather than another may cost at most 5% of the full model's score, at ``confidence``). Returns
    a ``preference`` :class:`LayerImportance` (NaN per-prompt drops where a block was not generated; drops after the
    first round against the estimated full-model score, see the module docstring) with ``extra["adaptive"]``:
    ``remove``, ``round_prompts``, ``confidence``, ``tolerance``, ``rounds``, ``settled``, ``images`` (generated,
    the full model's included), ``exhaustive_images`` (``(L + 1) N``), ``reference_prompts`` (prompts the full model
    was generated for) and ``prompts_per_block``."""
    from .preference import variant_scores

    if scan.scorer is None:
        raise LayerPruneError("the preference criterion needs a scorer; pass --scorer (e.g. hpsv2.1 or toy)")
    n, size = len(scan.prompts), scan.settings.batch_size
    check_adaptive_options("preference", n, round_prompts, size, tolerance, confidence)

    full: list[np.ndarray] = []

    def measure(blocks: list[int], prompts: range, reference: bool) -> tuple[np.ndarray | None, np.ndarray]:
        batches = range(prompts.start // size, -(-prompts.stop // size))
        variants = [(), *[(b,) for b in blocks]] if reference else [(b,) for b in blocks]
        scores = variant_scores(scan, variants, batches=batches)
        if reference:
            full.append(scores[()])
        return (scores[()] if reference else None), np.stack([scores[(b,)] for b in blocks])

    def epsilon() -> float:
        return tolerance * abs(float(np.concatenate(full).mean()))

    per_prompt, rounds, settled = adaptive_rounds(
        measure, scan.num_layers, k, n, round_prompts, confidence=confidence, tolerance=epsilon
    )
    counts = np.isfinite(per_prompt).sum(axis=1)
    values, stderr = [], []
    for row in per_prompt:
        row = row[np.isfinite(row)]
        values.append(float(row.mean()))
        stderr.append(float(row.std(ddof=1) / math.sqrt(len(row))) if len(row) > 1 else 0.0)
    images = sum((r["reference"] + len(r["blocks"])) * (r["prompts"][1] - r["prompts"][0]) for r in rounds)
    adaptive = {
        "remove": k,
        "round_prompts": round_prompts,
        "confidence": confidence,
        "tolerance": tolerance,
        "tolerance_units": epsilon(),
        "rounds": rounds,
        "settled": settled,
        "images": images,
        "exhaustive_images": (scan.num_layers + 1) * n,
        "reference_prompts": rounds[0]["prompts"][1] - rounds[0]["prompts"][0],
        "prompts_per_block": [int(c) for c in counts],
    }
    return LayerImportance(
        values=values,
        criterion="preference",
        stderr=stderr,
        per_prompt=per_prompt.tolist(),
        metadata=scan.metadata("preference", skipped=[], adaptive=True),
        extra={"adaptive": adaptive},
    )
