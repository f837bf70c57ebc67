"""The elastic study's printed report and the table docs/elastic.md shows, from a report dict."""

from __future__ import annotations


def print_report(report: dict) -> None:
    t = report["table"]
    print(f"\nall four right (%), mean ± std over seeds {report['seeds']}:")
    for name, row in t.items():
        if row:
            cost = f"  train {row['train_cpu_seconds']['mean']:.0f} CPU-s" if "train_cpu_seconds" in row else ""
            o = row["overall"]
            print(
                f"  {name:<24} {100 * o['mean']:5.1f} ± {100 * o['std']:4.1f}  toy {row['toy_score']['mean']:.3f}{cost}"
            )
    for c in report["comparisons"]:
        lo, hi = c["bootstrap_95"]
        print(
            f"  depth {c['depth']}, elastic {c['elastic_steps']} steps vs separate {c['separate_steps']}: "
            f"{100 * c['difference']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] "
            f"{'better' if lo > 0 else 'within noise' if c['within_noise'] else 'WORSE'}"
        )
    for budget, cost in report["cost"].items():
        whole = (
            f"{cost['cpu_ratio']['mean']:.2f} of the separate runs' whole processes, " if "cpu_ratio" in cost else ""
        )
        print(f"  elastic {budget} steps: cost {whole}{cost['loop_ratio']:.2f} of their training loops (CPU time)")
    print(f"  goal: {report['goal']}")


def markdown_table(report: dict) -> str:
    """The table docs/elastic.md shows: accuracy (mean ± std over seeds) and, for elastic, the paired difference."""
    t, lines = report["table"], []
    lines.append("| model | training steps | all four right (%) | toy score | elastic - separate (points, 95% CI) |")
    lines.append("|---|---|---|---|---|")

    def cell(row):
        o, toy = row["overall"], row["toy_score"]
        return f"{100 * o['mean']:.1f} ± {100 * o['std']:.1f} | {toy['mean']:.3f}"

    lines.append(f"| teacher ({report['source_depth']} blocks) | - | {cell(t['teacher'])} | |")
    by = {(c["depth"], c["elastic_steps"]): c for c in report["comparisons"]}
    for depth in report["depths"]:
        lines.append(f"| depth {depth}, pruned | 0 | {cell(t[f'pruned-{depth}'])} | |")
        lines.append(
            f"| depth {depth}, distilled separately | {report['settings']['steps']} | {cell(t[f'separate-{depth}'])} | |"
        )
        for key, row in t.items():
            if row and key.startswith(f"elastic-{depth}["):
                steps = int(key.split("steps")[1].split("-")[0].rstrip("]"))
                c = by.get((depth, steps))
                diff = ""
                if c:
                    lo, hi = c["bootstrap_95"]
                    diff = f"{100 * c['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                lines.append(f"| depth {depth}, elastic | {steps} | {cell(row)} | {diff} |")
    return "\n".join(lines)
