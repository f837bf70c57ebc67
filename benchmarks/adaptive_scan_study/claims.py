"""How the adaptive-scan study judges a configuration: paired per-caption differences to the exhaustive choice,
within noise, and against the exhaustive choice's own spread. Pure functions of the judged rows."""

from __future__ import annotations

import math
import statistics


def paired(a: list[bool], b: list[bool]) -> tuple[float, float]:
    """Mean and standard error of ``a - b`` per caption."""
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    return statistics.mean(d), (statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0)


def judged_option(rows: list[dict], ratios, spread: dict, seeds=None) -> dict:
    """A configuration's cost and quality over ``rows`` (``seed``, ``ratio``, ``cost``, ``overall`` and ``d``, the
    per-caption differences to the exhaustive choice), on ``seeds`` only when given: its mean cost, the difference to
    the exhaustive choice per removal count (seeds pooled), the difference to the exhaustive choice's expected accuracy
    (``versus_spread``), and whether each is within noise at every removal count."""
    rows = [r for r in rows if seeds is None or r["seed"] in seeds]
    differences = per_ratio(rows, ratios)
    spread_ = versus_spread(rows, spread, ratios)
    return {
        "seeds": sorted({r["seed"] for r in rows}),
        "cost": statistics.mean(r["cost"] for r in rows),
        "differences": differences,
        "within_noise": all(within_noise(v) for v in differences.values()),
        "versus_spread": spread_,
        "within_spread": bool(spread_) and all(within_noise(v) for v in spread_.values()),
    }


def mean_and_se(d: list[float]) -> dict:
    """Mean and standard error of per-caption differences, as the JSON names them."""
    return {"overall_difference": statistics.mean(d), "overall_difference_se": statistics.stdev(d) / math.sqrt(len(d))}


def per_ratio(rows: list[dict], ratios) -> dict:
    """``{str(ratio): mean_and_se}`` of the per-caption differences ``d`` of ``rows`` (``ratio``, ``d``), seeds
    pooled."""
    return {str(ratio): mean_and_se([x for r in rows if r["ratio"] == ratio for x in r["d"]]) for ratio in ratios}


def within_noise(d: dict) -> bool:
    """Not worse than the exhaustive choice beyond noise: the difference is above -2 standard errors."""
    return d["overall_difference"] + 2 * d["overall_difference_se"] >= 0


def versus_spread(rows: list[dict], spread: dict, ratios) -> dict:
    """Per removal count, seeds pooled: a scan's judged accuracy minus the exhaustive choice's expected accuracy over
    prompt draws, with the standard error from the exhaustive choice's spread (``sqrt(sum sd^2) / seeds``)."""
    out = {}
    for ratio in ratios:
        cells = [r for r in rows if r["ratio"] == ratio and (r["seed"], ratio) in spread]
        if not cells:
            return {}
        diff = statistics.mean(r["overall"] - spread[(r["seed"], ratio)]["mean"] for r in cells)
        se = math.sqrt(sum(spread[(r["seed"], ratio)]["sd"] ** 2 for r in cells)) / len(cells)
        out[str(ratio)] = {"overall_difference": diff, "overall_difference_se": se}
    return out
