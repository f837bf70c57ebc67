"""The sparsity study's aggregation and claims: pure functions of the judged cells (list of dicts), so
``--report-only`` needs no model. The rules are fixed before the run and stated on the generated page."""

from __future__ import annotations

import statistics

from toybench import METRICS, mean_std  # benchmarks/ is on sys.path when the study runs

COMPONENT_SETS = ("text_encoder", "transformer", "both")
METHODS = ("magnitude", "wanda")
SPARSITIES = tuple(round(0.1 * i, 1) for i in range(1, 10))
N_M = ("3:4", "2:4", "1:4")
# Rules fixed before the run (see the page): quality "kept" = at least KEEP of the dense model's all-four-right
# accuracy at this sparsity and every lower one; "collapsed" = at most COLLAPSE of it; a collapse is sudden when
# it comes within SUDDEN of sparsity after the last kept level. A comparison is a tie within TIE_IMAGES images.
KEEP, COLLAPSE, SUDDEN, TIE_IMAGES = 0.9, 0.2, 0.2, 1


def curve_table(cells: list[dict]) -> dict:
    """``[component][method][pattern][sparsity] -> {metric: mean_std, "toy_score": ..., "achieved": ...}``;
    sparsity 0 is the dense model, shared by every curve."""
    groups: dict = {}
    for c in cells:
        if c.get("stage") != "curve":
            continue
        key = (c["component"], c["method"], c["pattern"], c["sparsity"])
        groups.setdefault(key, []).append(c)
    dense = [c for c in cells if c.get("stage") == "dense"]
    table: dict = {}
    for (component, method, pattern, sparsity), group in groups.items():
        row = {m: mean_std([c["accuracy"][m] for c in group], spread=False) for m in METRICS}
        row["toy_score"] = mean_std([c["toy_score"] for c in group], spread=False)
        row["achieved"] = statistics.mean(c["achieved"] for c in group)
        table.setdefault(component, {}).setdefault(method, {}).setdefault(pattern, {})[sparsity] = row
    if dense:
        row = {m: mean_std([c["accuracy"][m] for c in dense], spread=False) for m in METRICS}
        row["toy_score"] = mean_std([c["toy_score"] for c in dense], spread=False)
        row["achieved"] = 0.0
        for component in table:
            for method in table[component]:
                table[component][method].setdefault("unstructured", {})[0.0] = row
    return table


def _verdict(won: int, lost: int) -> str:
    if won + lost == 0:
        return "not measured"
    if lost == 0:
        return "holds"
    return "partly" if won > lost else "does not hold"


def kept_and_collapse(curve: dict) -> dict:
    """Where an unstructured curve stops keeping quality and where it collapses (rules at the top of the file)."""
    levels = sorted(curve)
    dense = curve[0.0]["overall"]["mean"]
    last_kept, first_collapsed = 0.0, None
    for s in levels[1:]:
        if curve[s]["overall"]["mean"] >= KEEP * dense and last_kept == levels[levels.index(s) - 1]:
            last_kept = s
    for s in levels[1:]:
        if curve[s]["overall"]["mean"] <= COLLAPSE * dense:
            first_collapsed = s
            break
    width = None if first_collapsed is None else round(first_collapsed - last_kept, 6)
    return {
        "last_kept": last_kept,
        "first_collapsed": first_collapsed,
        "width": width,
        "sudden": width is not None and width <= SUDDEN + 1e-9,
        "accuracy": {s: curve[s]["overall"]["mean"] for s in levels},
    }


def check_claims(cells: list[dict], num_images: int) -> list[dict]:
    table = curve_table(cells)
    tie = TIE_IMAGES / num_images + 1e-12
    claims = []

    # 1. magnitude >= wanda, at every (component, pattern, sparsity) both measured
    comparisons = []
    for component in table:
        mag, wan = table[component].get("magnitude", {}), table[component].get("wanda", {})
        for pattern in mag:
            for s, row in mag[pattern].items():
                if s == 0.0 or s not in wan.get(pattern, {}):
                    continue
                a, b = row["overall"]["mean"], wan[pattern][s]["overall"]["mean"]
                comparisons.append(
                    {
                        "component": component,
                        "pattern": pattern,
                        "sparsity": s,
                        "magnitude": a,
                        "wanda": b,
                        "result": "tie" if abs(a - b) <= tie else ("magnitude" if a > b else "wanda"),
                    }
                )
    won = sum(c["result"] == "magnitude" for c in comparisons)
    lost = sum(c["result"] == "wanda" for c in comparisons)
    by_component = {
        comp: {
            r: sum(c["result"] == r for c in comparisons if c["component"] == comp)
            for r in ("magnitude", "tie", "wanda")
        }
        for comp in table
    }
    claims.append(
        {
            "id": "magnitude_beats_wanda",
            "claim": "Plain magnitude pruning is at least as good as Wanda (activation-aware) on a text-to-image model.",
            "verdict": _verdict(won, lost),
            "won": won,
            "lost": lost,
            "tied": len(comparisons) - won - lost,
            "by_component": by_component,
            "mean_difference": statistics.mean(c["magnitude"] - c["wanda"] for c in comparisons)
            if comparisons
            else None,
            "comparisons": comparisons,
        }
    )

    # 2. the text encoder tolerates more sparsity than the denoiser
    tolerance = {}
    for component in ("text_encoder", "transformer"):
        for method in table.get(component, {}):
            curve = table[component][method].get("unstructured", {})
            if 0.0 in curve and len(curve) > 1:
                tolerance.setdefault(method, {})[component] = kept_and_collapse(curve)
    rows = []
    for method, by_component in tolerance.items():
        if len(by_component) == 2:
            te, tf = by_component["text_encoder"]["last_kept"], by_component["transformer"]["last_kept"]
            rows.append(
                {"method": method, "text_encoder": te, "transformer": tf, "te_more": te > tf, "tf_more": tf > te}
            )
    claims.append(
        {
            "id": "text_encoder_tolerates_more",
            "claim": "The text encoder tolerates more sparsity than the denoiser.",
            "verdict": _verdict(sum(r["te_more"] for r in rows), sum(not r["te_more"] for r in rows))
            if rows
            else "not measured",
            "comparisons": rows,
        }
    )

    # 3. a sudden collapse threshold
    curves = []
    for component in table:
        for method in table[component]:
            curve = table[component][method].get("unstructured", {})
            if 0.0 in curve and len(curve) > 1:
                curves.append({"component": component, "method": method, **kept_and_collapse(curve)})
    sudden = sum(c["sudden"] for c in curves)
    claims.append(
        {
            "id": "sudden_collapse",
            "claim": "Past a threshold, quality collapses suddenly rather than degrading gradually.",
            "verdict": _verdict(sudden, len(curves) - sudden),
            "curves": curves,
        }
    )
    return claims


def combination_table(cells: list[dict]) -> dict:
    """``[label][stage] -> metrics`` for the depth + sparsity pairs; stage ``before``, ``after``, ``distil_then_sparsify``."""
    groups: dict = {}
    for c in cells:
        if c.get("stage") not in ("combo_before", "combo_after", "combo_distil_then_sparsify"):
            continue
        groups.setdefault((c["depth"], c["stage"].removeprefix("combo_")), []).append(c)
    table: dict = {}
    for (depth, stage), group in groups.items():
        row = {m: mean_std([c["accuracy"][m] for c in group], spread=False) for m in METRICS}
        row["toy_score"] = mean_std([c["toy_score"] for c in group], spread=False)
        row["sparsity"] = statistics.mean(c["sparsity"] for c in group)
        row["nonzero"] = statistics.mean(c["nonzero"] for c in group)
        row["achieved"] = statistics.mean(c["achieved"] for c in group)
        row["zeros_kept"] = all(c.get("zeros_kept", True) for c in group)
        row["seeds"] = sorted(c["seed"] for c in group)
        table.setdefault(depth, {})[stage] = row
    return dict(sorted(table.items()))
