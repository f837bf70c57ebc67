"""The routing study's aggregation and verdicts: pure functions of the finished cells (list of dicts) and of
reproduce_paper.json, so ``--report-only`` needs no model. The verdicts' rules are stated on the generated page."""

from __future__ import annotations

import math
import statistics
from collections import Counter

from toybench import METRICS  # benchmarks/ is on sys.path when the study runs

BUDGETS = {9: "0.25", 7: "0.40"}  # mean blocks run -> reproduce_paper's ratio of the static model of that depth
ATTRIBUTES = ("colour", "shape", "size", "position")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def mean_std(values: list[float]) -> dict:
    """``mean`` (``statistics.fmean``; None for no values), ``std``, ``n`` and the ``values``. Not
    ``toybench.mean_std``: routing_toy.json was written with this one, whose summaries have no min / max and whose
    fmean differs from ``statistics.mean`` in the last bit for 24 of the file's 98 summaries."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
        "values": values,
    }


def nmi(codes: list[int], labels: list[str]) -> float:
    """Mutual information of code and label over the code's entropy (0: the label says nothing about the code)."""
    n = len(codes)
    pc, pl, joint = Counter(codes), Counter(labels), Counter(zip(codes, labels, strict=True))
    mi = sum(c / n * math.log((c / n) / (pc[a] / n * pl[b] / n)) for (a, b), c in joint.items())
    h = -sum(c / n * math.log(c / n) for c in pc.values())
    return mi / h if h > 0 else 0.0


def code_analysis(cell: dict, heldout: list[str], teacher_correct: list[bool] | None) -> dict:
    from diffusers_layerprune.toy.world import parse_caption

    attrs = [parse_caption(c).to_dict() for c in heldout]
    codes = cell["codes"]
    depth = [len(cell["code_blocks"][c]) for c in codes]
    per_code = []
    for k, blocks in enumerate(cell["code_blocks"]):
        rows = [i for i, c in enumerate(codes) if c == k]
        top = {}
        for a in ATTRIBUTES:
            counts = Counter(str(attrs[i][a]) for i in rows)
            if counts:
                value, count = counts.most_common(1)[0]
                top[a] = f"{value} ({count / len(rows):.0%})"
        per_code.append({"blocks": len(blocks), "skipped": [i for i in range(12) if i not in blocks],
                         "heldout_share": len(rows) / len(codes), "train_share": cell["train_shares"][k],
                         "top": top, "closest": cell["closest"][k]})  # fmt: skip
    result = {
        "per_code": per_code,
        "nmi": {a: nmi(codes, [str(x[a]) for x in attrs]) for a in ATTRIBUTES},
    }
    if teacher_correct is not None:
        right = [d for d, ok in zip(depth, teacher_correct, strict=True) if ok]
        wrong = [d for d, ok in zip(depth, teacher_correct, strict=True) if not ok]
        result["depth_teacher_right"] = statistics.fmean(right) if right else None
        result["depth_teacher_wrong"] = statistics.fmean(wrong) if wrong else None
    return result


def balance(cell: dict) -> dict:
    k = len(cell["code_blocks"])
    counts = Counter(cell["codes"])
    shares = [counts.get(c, 0) / len(cell["codes"]) for c in range(k)]
    entropy = -sum(s * math.log(s) for s in shares if s > 0)
    return {"shares": shares, "normalised_entropy": abs(entropy / math.log(k)) if k > 1 else 1.0,
            "codes_used": sum(1 for s in shares if s > 0)}  # fmt: skip


def static_rows(static: dict, ratio: str) -> dict:
    """The static baselines of reproduce_paper.json at one ratio: preference's choice and the best other criterion,
    before and after its 400-step distillation."""
    table = static["table"]
    pruned = table["pruned"][ratio]
    others = {c: v for c, v in pruned.items() if c != "preference" and "(span)" not in c}
    best_other = max(others, key=lambda c: others[c]["overall"]["mean"])
    distilled = table["distilled"][ratio]
    best_distilled_other = max(
        (c for c in distilled if c != "preference"), key=lambda c: distilled[c]["overall"]["mean"]
    )
    return {
        "pruned": {"preference": pruned["preference"], best_other: pruned[best_other]},
        "distilled": {"preference": distilled["preference"], best_distilled_other: distilled[best_distilled_other]},
        "best_other": best_other,
        "best_distilled_other": best_distilled_other,
        "plans": {c: static["plans"][c][ratio] for c in ("preference", best_other)},
        "per_seed": {
            stage: {
                c: {s: r["accuracy"]["overall"] for s, r in static["per_seed"][stage][ratio][c].items()}
                for c in static["per_seed"][stage][ratio]
            }  # fmt: skip
            for stage in ("pruned", "distilled")
        },
        "per_seed_toy_score": {
            stage: {
                c: {s: r["toy_score"] for s, r in static["per_seed"][stage][ratio][c].items()}
                for c in static["per_seed"][stage][ratio]
            }  # fmt: skip
            for stage in ("pruned", "distilled")
        },
    }


def aggregate(cells: list[dict], static: dict, heldout: list[str], args) -> dict:
    by_key = {c["key"]: c for c in cells}
    result = {"budgets": {}, "balance": {}, "throughput": None, "teacher": {}}
    teacher = {int(c["key"].split("seed=")[1]): c for c in cells if c["key"].startswith("teacher|")}
    result["teacher"] = {
        "overall": mean_std([c["accuracy"]["overall"] for c in teacher.values()]),
        "toy_score": mean_std([c["toy_score"] for c in teacher.values()]),
        "reproduce_paper": static["teacher"],
    }
    for budget in _ints(args.budgets):
        ratio = BUDGETS[budget]
        entry = {"static": static_rows(static, ratio), "routed": {}, "finetuned": {}, "codes": {}}
        for k in _ints(args.num_codes):
            for stage, prefix in (("routed", "routed"), ("finetuned", "finetuned")):
                rows = [c for c in cells if c["key"].startswith(f"{prefix}|B={budget}|K={k}|")
                        and ("ot=uniform" in c["key"] or prefix == "finetuned")]  # fmt: skip
                if not rows:
                    continue
                entry[stage][str(k)] = {
                    **{m: mean_std([c["accuracy"][m] for c in rows]) for m in METRICS},
                    "toy_score": mean_std([c["toy_score"] for c in rows]),
                    "heldout_mean_blocks": mean_std([c["heldout_mean_blocks"] for c in rows]),
                    "train_mean_blocks": mean_std([c["train_mean_blocks"] for c in rows]),
                    "seeds": sorted(int(c["key"].split("seed=")[1].split("|")[0]) for c in rows),
                }
            first = by_key.get(f"routed|B={budget}|K={k}|seed=0|ot=uniform")
            if first:
                t0 = teacher.get(0)
                entry["codes"][str(k)] = code_analysis(first, heldout, t0["correct"] if t0 else None)
        result["budgets"][str(budget)] = entry
    for ot in ("uniform", "budget", "none"):
        c = by_key.get(f"routed|B=9|K=4|seed=0|ot={ot}")
        if c:
            result["balance"][ot] = {**balance(c), "overall": c["accuracy"]["overall"], "toy_score": c["toy_score"],
                                     "heldout_mean_blocks": c["heldout_mean_blocks"],
                                     "train_shares": c["train_shares"], "blocks": [len(b) for b in c["code_blocks"]]}  # fmt: skip
    tp = [c for c in cells if c["key"].startswith("throughput|")]
    result["throughput"] = tp[-1] if tp else None
    result["budget_check"] = budget_rows(cells, by_key)
    return result


def budget_rows(cells: list[dict], by_key: dict) -> list[dict]:
    """Part 5's cells in router order (budget, K, seed, marginals), each with the accuracy of its plain routing
    (the routed cell of the same router) beside the enforced ones."""

    def order(c):
        b, k, s, ot = c["router"].split("-")
        return (-int(b[1:]), int(k[1:]), ot != "uniform", ot, int(s[1:]))

    rows = []
    for c in sorted((c for c in cells if c["key"].startswith("budget|")), key=order):
        b, k, s, ot = c["router"].split("-")
        plain = by_key.get(f"routed|B={b[1:]}|K={k[1:]}|seed={s[1:]}|ot={ot}")
        rows.append({**{x: v for x, v in c.items() if x != "key"},
                     "plain_accuracy": plain["accuracy"]["overall"] if plain else None,
                     "plain_toy_score": plain["toy_score"] if plain else None})  # fmt: skip
    return rows


def verdicts(result: dict) -> list[str]:
    """Best routed K against the best static model, on the same seeds (the static numbers are per seed in
    reproduce_paper.json, so a routed row of seed 0 only is compared with the static models' seed-0 images)."""
    lines = []
    for budget, entry in result["budgets"].items():
        per_seed = entry["static"]["per_seed"]
        for stage, static_stage, label in (("routed", "pruned", "before"), ("finetuned", "distilled", "after")):
            if not entry[stage]:
                continue
            best_k = max(entry[stage], key=lambda k: entry[stage][k]["overall"]["mean"])
            row = entry[stage][best_k]
            seeds = [str(x) for x in row["seeds"]]
            static_means = {
                c: statistics.fmean(v[x] for x in seeds)
                for c, v in per_seed[static_stage].items()
                if all(x in v for x in seeds) and "(span)" not in c
            }
            ref_name = max(static_means, key=static_means.get)
            ref, best = static_means[ref_name], row["overall"]["mean"]
            word = "beats" if best > ref + 1 / 216 else ("ties with" if abs(best - ref) <= 1 / 216 else "loses to")
            extra = ""
            toy = entry["static"].get("per_seed_toy_score", {}).get(static_stage, {}).get(ref_name)
            if toy and "toy_score" in row and "heldout_mean_blocks" in row:
                static_toy = statistics.fmean(toy[x] for x in seeds)
                extra = (
                    f"; toy score {row['toy_score']['mean']:.3f} vs {static_toy:.3f}; the routed model ran "
                    f"{row['heldout_mean_blocks']['mean']:.2f} blocks per held-out caption"
                )
            lines.append(
                f"mean {budget} of 12 blocks, {label} distillation (seed{'s' if len(seeds) > 1 else ''} "
                f"{', '.join(seeds)}): the best routed model (K = {best_k}, {100 * best:.1f}% all four right) "
                f"**{word}** the best static model ({ref_name}, {100 * ref:.1f}%){extra}"
            )
    return lines


def overall_verdict(lines: list[str]) -> str:
    """One sentence over the comparisons, by stage, with what qualifies the wins (toy score, held-out depth)."""
    import re

    def tally(stage: str) -> tuple[int, int]:
        rows = [v for v in lines if f"{stage} distillation" in v]
        return sum("**beats**" in v for v in rows), len(rows)

    caveats = set()
    for v in lines:
        if "**beats**" not in v:
            continue
        m = re.search(r"toy score ([0-9.]+) vs ([0-9.]+)", v)
        if m and float(m[1]) < float(m[2]):
            caveats.add("a lower toy score than the static model")
        m = re.search(r"mean (\d+) of 12 blocks.*ran ([0-9.]+) blocks per held-out caption", v)
        if m and float(m[2]) > float(m[1]):
            caveats.add(
                f"at {m[1]} blocks, {float(m[2]) - float(m[1]):.2f} blocks more than the budget per held-out caption"
            )
    (bw, bn), (aw, an) = tally("before"), tally("after")
    wins = bw + aw
    if wins == len(lines) and lines:
        head = "**Routing beats static pruning on the toy world** in every comparison below"
    elif not wins:
        head = "**Routing does not beat static pruning on the toy world**: it wins none of the comparisons below"
    else:
        head = (
            f"**Routing does not beat static pruning overall here**: it wins {bw} of {bn} comparisons before "
            f"distillation and {aw} of {an} after the same distillation budget"
        )
    if caveats:
        head += f"; its wins come with {'; and, '.join(sorted(caveats, key=lambda c: not c.startswith('a lower')))}"
    return head + "."
