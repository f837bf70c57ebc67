"""How sure a selection is: bootstrap over prompts, blocks statistically tied at the cut, prompts to add.

A criterion that averages over prompts (``preference``: the per-prompt score drop) picks the ``k`` blocks with the
smallest mean. Another prompt set of the same size would give other means, and when several blocks sit close to the
cut, another selection. :func:`selection_stability` measures that from the per-prompt values already in a
:class:`LayerImportance` (no new generations):

- **bootstrap probability**: draw the prompts with replacement (Efron's bootstrap), recompute every block's mean and
  the ``k`` smallest; the share of draws that give exactly the selection of the full prompt set.
- **tied at the cut**: for each selected block ``i`` and unselected block ``j``, the paired per-prompt difference
  ``d_p = drop_j(p) - drop_i(p)`` over the prompts both were measured on (the same noise and prompt, so prompt
  difficulty cancels). The pair is *resolved* when the confidence interval ``mean(d) +- z * stderr(d)`` excludes 0;
  the blocks of unresolved pairs are tied: which of them goes is a coin toss at this prompt count.
- **suggested prompt count**: the bootstrap repeated with ``m = 2n, 4n, ...`` prompts drawn from the ``n`` measured
  ones (the observed per-prompt spread, standard errors shrinking as ``1/sqrt(m)``); the first ``m`` whose
  probability reaches ``target``. Blocks with truly equal means never separate, so the search stops at ``64 n`` and
  says so: such blocks are interchangeable for this criterion, and prompts will not decide between them.

Prompts a block was not measured on (an adaptive scan stops generating decided blocks) are NaN in ``per_prompt`` and
are left out of that block's means and differences.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from ..errors import LayerPruneError
from .result import LayerImportance

STABLE = 0.9
"""Bootstrap probability below which a selection is reported as unstable."""
MAX_GROWTH = 64
"""The suggested prompt count is searched up to this multiple of the measured count."""


def paired_difference(per_prompt: np.ndarray, i: int, j: int) -> tuple[float, float, int]:
    """``(mean, stderr, n)`` of ``per_prompt[j] - per_prompt[i]`` over the prompts both blocks were measured on."""
    d = per_prompt[j] - per_prompt[i]
    d = d[np.isfinite(d)]
    n = len(d)
    if n == 0:
        return math.nan, math.nan, 0
    stderr = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return float(d.mean()), stderr, n


def z_value(confidence: float, comparisons: int = 1) -> float:
    """Two-sided normal quantile for ``confidence``, Bonferroni-corrected for ``comparisons`` simultaneous tests."""
    if not 0.0 < confidence < 1.0:
        raise LayerPruneError(f"confidence must be between 0 and 1, got {confidence}")
    alpha = (1.0 - confidence) / max(1, comparisons)
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def unresolved_pairs(
    per_prompt: np.ndarray, selected: list[int], confidence: float = 0.95, comparisons: int = 1
) -> list[tuple[int, int, float, float]]:
    """``(i, j, mean, stderr)`` for every selected ``i`` and unselected ``j`` whose paired difference
    ``drop_j - drop_i`` has a confidence interval containing 0 (or too few common prompts to tell)."""
    z = z_value(confidence, comparisons)
    chosen = set(selected)
    pairs = []
    for i in selected:
        for j in range(per_prompt.shape[0]):
            if j in chosen:
                continue
            mean, stderr, n = paired_difference(per_prompt, i, j)
            if n < 2 or not abs(mean) > z * stderr:
                pairs.append((i, j, mean, stderr))
    return pairs


def _smallest_k(means: np.ndarray, k: int) -> np.ndarray:
    """Rows of ``means [R, L]`` -> sorted indices of the ``k`` smallest per row, ties broken by block index as in
    :meth:`LayerImportance.ranking` (a stable sort)."""
    order = np.argsort(means, axis=1, kind="stable")[:, :k]
    return np.sort(order, axis=1)


def bootstrap_probability(
    per_prompt: np.ndarray, selected: list[int], *, draws: int = 1000, size: int | None = None, seed: int = 0
) -> float:
    """Share of ``draws`` bootstrap resamples of ``size`` prompts (default: all ``n``) whose ``k`` smallest block
    means are exactly ``selected``. ``per_prompt [L, n]``, oriented so that smaller = less important."""
    num_layers, n = per_prompt.shape
    size = n if size is None else size
    k = len(selected)
    rng = np.random.default_rng(seed)
    measured = np.isfinite(per_prompt)
    values = np.where(measured, per_prompt, 0.0)
    fallback = np.nanmean(np.where(measured, per_prompt, np.nan), axis=1)
    target = np.array(sorted(selected))
    hits = 0
    chunk = max(1, min(draws, 2_000_000 // max(1, size * num_layers)))
    done = 0
    while done < draws:
        m = min(chunk, draws - done)
        rows = rng.integers(0, n, size=(m, size))
        # counts[r, p]: how often prompt p was drawn in resample r; means as weighted sums (NaN-aware)
        counts = np.zeros((m, n))
        np.add.at(counts, (np.arange(m)[:, None], rows), 1.0)
        totals = counts @ values.T  # [m, L]
        weights = counts @ measured.T.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(weights > 0, totals / np.maximum(weights, 1e-300), fallback[None, :])
        hits += int(np.all(_smallest_k(means, k) == target[None, :], axis=1).sum())
        done += m
    return hits / draws


def suggested_num_prompts(
    per_prompt: np.ndarray, selected: list[int], *, target: float = STABLE, draws: int = 1000, seed: int = 0
) -> int | None:
    """The smallest ``m`` in ``2n, 4n, ..., 64n`` whose bootstrap probability reaches ``target``; ``None`` if even
    ``64n`` prompts do not (the blocks at the cut are interchangeable for this criterion)."""
    n = per_prompt.shape[1]
    m = n
    while m < MAX_GROWTH * n:
        m *= 2
        if bootstrap_probability(per_prompt, selected, draws=draws, size=m, seed=seed) >= target:
            return m
    return None


def selection_stability(
    importance: LayerImportance,
    k: int,
    *,
    draws: int = 1000,
    confidence: float = 0.95,
    target: float = STABLE,
    seed: int = 0,
) -> dict:
    """How sure the selection of the ``k`` least important blocks of ``importance`` is.

    Args:
        importance: a result with ``per_prompt`` values (``preference``); others raise :class:`LayerPruneError`.
        k: the number of blocks to remove.
        draws: bootstrap resamples of the prompts.
        confidence: of each paired interval (no multiple-comparison correction: a pair is reported tied when it
            alone cannot be told apart).
        target: the bootstrap probability below which the selection is called unstable.
        seed: of the resampling (the result is deterministic).

    Returns a JSON-ready dict: ``remove`` (k), ``selection`` (sorted blocks), ``num_prompts`` (the prompts measured:
    an adaptive scan's unused budget does not count), ``draws``,
    ``probability`` (bootstrap probability of the same selection), ``tied`` (sorted blocks of unresolved pairs),
    ``tied_pairs`` (``[selected, unselected, mean difference, stderr]``), ``stable`` (probability >= target),
    ``suggested_num_prompts`` (int, or None when no count up to 64x separates them; absent when stable) and a
    one-line ``message``.
    """
    if importance.per_prompt is None:
        raise LayerPruneError(
            f"the {importance.criterion} criterion has no per-prompt values, so its selection cannot be resampled; "
            "stability is measured for preference"
        )
    importance._check_k(k)
    sign = 1.0 if importance.higher_is_more_important else -1.0
    per_prompt = sign * np.asarray(importance.per_prompt, dtype=np.float64)
    if per_prompt.ndim == 2:
        # An adaptive scan leaves the prompts after its last round unmeasured: they are not part of the sample.
        per_prompt = per_prompt[:, np.isfinite(per_prompt).any(axis=0)]
    if per_prompt.ndim != 2 or per_prompt.shape[1] < 2:
        raise LayerPruneError("stability needs per-prompt values of at least 2 prompts")
    selection = importance.least_important(k)
    n = per_prompt.shape[1]
    probability = bootstrap_probability(per_prompt, selection, draws=draws, seed=seed)
    pairs = unresolved_pairs(per_prompt, selection, confidence)
    tied = sorted({b for i, j, _, _ in pairs for b in (i, j)})
    result = {
        "remove": k,
        "selection": selection,
        "num_prompts": n,
        "draws": draws,
        "confidence": confidence,
        "probability": probability,
        "tied": tied,
        "tied_pairs": [[i, j, _finite(m), _finite(s)] for i, j, m, s in pairs],
        "stable": probability >= target,
        "target": target,
    }
    if result["stable"]:
        result["message"] = (
            f"selection {selection} is stable: {probability:.0%} of {draws} bootstrap resamples of the {n} prompts "
            "give the same blocks"
        )
    else:
        suggested = suggested_num_prompts(per_prompt, selection, target=target, draws=draws, seed=seed)
        result["suggested_num_prompts"] = suggested
        advice = (
            f"about {suggested} prompts would make it stable ({target:.0%})"
            if suggested is not None
            else f"even {MAX_GROWTH * n} prompts would not separate them: they are interchangeable for this criterion"
        )
        result["message"] = (
            f"warning: selection {selection} is unstable: only {probability:.0%} of {draws} bootstrap resamples of "
            f"the {n} prompts give the same blocks; blocks {tied} are tied at the cut; {advice}"
        )
    return result


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def spearman_rho(a, b) -> float:
    """Spearman rank correlation of two equally long sequences (average ranks for ties); NaN when one is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise LayerPruneError(
            f"rank correlation needs two sequences of the same length >= 2, got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise LayerPruneError("rank correlation needs finite values (a block without a value cannot be ranked)")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / norm) if norm > 0 else math.nan


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def rank_agreement(proxy: LayerImportance, reference: LayerImportance, k: int) -> dict:
    """How well a cheaper scan (``proxy``: fewer sampler steps, a lower resolution) stands in for the full one
    (``reference``), both over the same model's blocks: the Spearman correlation of the block values, and the
    ``k``-block selections of both with their overlap. A proxy is worth using only where this was measured."""
    if len(proxy.values) != len(reference.values):
        raise LayerPruneError(
            f"the two importances are over different models ({len(proxy.values)} and {len(reference.values)} blocks)"
        )
    a, b = proxy.least_important(k), reference.least_important(k)
    return {
        "spearman": spearman_rho(proxy.values, reference.values),
        "selection": a,
        "reference_selection": b,
        "overlap": len(set(a) & set(b)),
        "same": a == b,
        "k": k,
    }
