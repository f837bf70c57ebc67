"""The "Capacity control" section of docs/results.md, read from benchmarks/results/capacity_toy.json's numbers: the
table, the training-loss table, the differences, and the verdict (goals, the same-compute control, the lever, what
would close the gap). benchmarks/capacity_toy.py measures; this module only words what it measured."""

from __future__ import annotations

BEGIN, END = "<!-- capacity_toy:start -->", "<!-- capacity_toy:end -->"
BUDGET_LABELS = {"full": "teacher's budget (6000 x 48)", "kd400": "KD run's budget (400 x 16)"}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def label(name: str) -> str:
    """A table row's words for a row name (``scratch-d9-full@2000``, ``kd-d7-4000``, ``datakd-d7``, ``teacher``)."""
    if name == "teacher":
        return "teacher, 12 blocks (shipped: from scratch, 6000 x 48)"
    kind, rest = name.split("-d", 1)
    depth, _, tail = rest.partition("-")
    tail, _, at = tail.partition("@")
    if kind == "scratch":
        if at:
            return f"{depth} blocks from scratch, the teacher's recipe stopped at step {at} of 6000 ({at} x 48)"
        return f"{depth} blocks from scratch, the {BUDGET_LABELS[tail]}"
    if kind == "kd":
        return f"{depth} blocks pruned (learnable) + KD {tail} x 16 (reproduce_paper)"
    if kind == "retrain":
        return f"{depth} blocks pruned (learnable) + the teacher's recipe continued, 1300 x 48 (second lever)"
    return f"{depth} blocks pruned (learnable) + KD 400 x 16 on renders (lever)"


def _in(c: dict) -> str:
    lo, hi = c["bootstrap_95"]
    return f"{100 * c['difference']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def closing(result: dict) -> str:
    """What would close the gap, read from the measurements on the page (and reproduce_paper's budget table)."""
    rows, goals = result["rows"], result["goals"]
    text = "*What would close the gap.* "
    gains = [
        f"the {'25' if d == 9 else '40'}% student from {_pct(rows[f'kd-d{d}-400']['overall']['mean'])}% to "
        f"{_pct(rows[f'kd-d{d}-4000']['overall']['mean'])}%"
        for d in result["depths"]
        if f"kd-d{d}-400" in rows and f"kd-d{d}-4000" in rows
    ]
    levers = [c for c in result.get("comparisons", []) if "per_seed" in c and c["model"].startswith("datakd")]
    if gains:
        text += (
            "Not more of the same distillation: ten times the steps moved " + " and ".join(gains) + ", and neither the "
            "learning rate (x1/4, x4) nor dropping the feature loss (the ablations above) nor elastic training "
            "(docs/elastic.md)"
            + (
                " nor, here, KD on true renders ("
                + ", ".join(
                    f"{100 * c['difference']:+.1f} points at {c['model'].split('-d')[1]} blocks" for c in levers
                )
                + ")"
                if levers and all(c["difference"] < 0.01 for c in levers)
                else ""
            )
            + " raised it beyond noise. "
        )
    scratch = sorted(
        ((n, r) for n, r in rows.items() if "@" in n and "train_loss_last500" in r),
        key=lambda x: int(x[0].split("@")[1]),
    )
    if scratch:
        step = scratch[-1][0].split("@")[1]
        last = [(n, r) for n, r in scratch if n.endswith("@" + step)]
        text += (
            "Whether 7 or 9 blocks of width 64 can hold what the teacher knows is what this session could not "
            "measure to the end: trained from scratch, their training loss on the same batches is "
            + ", ".join(
                f"{100 * (r['train_loss_last500'] / r['shipped_teacher_loss_last500'] - 1):+.0f}% against the "
                f"12-block teacher's at step {n.split('@')[1]} ({n.split('-d')[1].split('-')[0]} blocks)"
                for n, r in scratch
            )
            + f", but at step {step} their captions are "
            + ", ".join(
                f"{_pct(r['overall']['mean'])}% all four right ({n.split('-d')[1].split('-')[0]} blocks)"
                for n, r in last
            )
            + " (the teacher's first run read 94% colour and 78% position on a 36-caption check at step 2000, "
            "docs/toy_world.md). The run "
            "that settles it is the rest of the teacher's budget for the 12-, 9- and 7-block models: "
            "`python benchmarks/capacity_toy.py --depths 12,9,7 --budgets full --lever-seeds ''` (repeat until it prints the table; "
            "about 10-20 CPU-minutes per model on an idle core, resumable). If 7 blocks reach 90% of the teacher "
            "there, the KD recipe is the limit and the next lever is the teacher's own recipe continued from the "
            "pruned weights (renders, 6000 x 48, lr 1e-3); if they do not, the toy cannot meet the 40% goal at "
            "width 64, and what would is more width per block. "
        )
    nine = goals.get("9")
    if nine and nine["goal_in_interval"] and not nine["met"]:
        r = rows[nine["best"]]
        half = (r["wilson_95"][1] - r["wilson_95"][0]) / 2
        short = nine["goal_accuracy"] - nine["accuracy"]
        text += (
            f"The 25% goal is below this page's resolution: {r['images']} judged images give a ±{100 * half:.1f}-point "
            f"interval, wider than the {100 * short:.1f} points between the student and the goal; telling them apart "
            f"needs about {(half / short) ** 2:.0f} times as many held-out images (or seeds)."
        )
    return text


def _by_step(caps: list) -> list:
    """The capacity comparisons grouped by stopping step (``""``: the whole budget, last)."""
    steps = sorted({c["model"].partition("@")[2] for c in caps}, key=lambda s: (not s, int(s or 0)))
    return [(s, [c for c in caps if c["model"].partition("@")[2] == s]) for s in steps]


def _whole_budget(rows: dict, goals: dict, caps: list) -> str:
    """What the depths trained from scratch with the teacher's whole recipe say about the goals."""
    parts, short = [], False
    for c in caps:
        d = c["model"].split("-d")[1].split("-")[0]
        r, g = rows[c["model"]], goals.get(d)
        if not g or "share_of_teacher" not in r:
            continue
        share = r["share_of_teacher"]
        short = short or not g["met"]
        parts.append(
            f"{d} blocks from scratch keep {100 * share:.0f}% of the teacher (goal {100 * g['goal']:.0f}%: "
            f"{'reached' if share >= g['goal'] else 'not reached'} from random weights); the best pruned student "
            f"({g['best']}) keeps {100 * g['share']:.0f}%, {100 * (g['accuracy'] - r['overall']['mean']):+.1f} points "
            "against the from-scratch model"
        )
    if not parts:
        return ""
    text = "With the whole budget: " + "; ".join(parts) + ". "
    if short:
        return text + (
            "The from-scratch models cost the teacher's training (6000 x 48 samples, 45 times the 400 x 16 of the KD "
            "run); what would close the rest is more width per block, or the teacher's own recipe continued from the "
            "pruned weights (renders, 6000 x 48)."
        )
    return text + (
        "Where the from-scratch model falls short and the pruned one does not, it is the teacher's weights, not the "
        "depth, that carry the accuracy: a shallow model started from them gets further than one started from "
        "random weights with 4.6 times its samples (6000 x 48 against 1300 x 48)."
    )


def verdict(result: dict) -> str:
    """The reading of the numbers, from the numbers: goals, same-compute control, capacity at a common step, lever."""
    rows, goals = result["rows"], result["goals"]
    teacher = rows.get("teacher", {}).get("overall", {}).get("mean")
    if not teacher:
        return ""
    out = []
    missed = [d for d, g in goals.items() if not g["met"]]
    out.append(
        "**Verdict.** "
        + "; ".join(
            f"{d} blocks ({'25' if d == '9' else '40'}% shallower): best pruned student {100 * g['share']:.0f}% of "
            f"the teacher against the goal's {100 * g['goal']:.0f}% ({_pct(g['accuracy'])}% against "
            f"{_pct(g['goal_accuracy'])}%), {'met' if g['met'] else 'missed'}"
            + (
                " on the mean, though the goal lies inside the student's 95% interval: this many images cannot "
                "tell the two apart"
                if g["goal_in_interval"] and not g["met"]
                else ""
            )
            for d, g in goals.items()
        )
        + "."
    )
    same = [
        (d, rows[f"scratch-d{d}-kd400"], rows.get(f"kd-d{d}-400"))
        for d in result["depths"]
        if f"scratch-d{d}-kd400" in rows
    ]
    if same:
        out.append(
            "*Same compute as the KD run.* Trained from scratch on 400 x 16 samples, "
            + ", ".join(
                f"{d} blocks reach {_pct(r['overall']['mean'])}%"
                + (f" (pruned + distilled with that budget: {_pct(kd['overall']['mean'])}%)" if kd else "")
                for d, r, kd in same
            )
            + "".join(
                f"; with the teacher's recipe for {int(n.split('@')[1]) * 48 / 6400:g} times those samples "
                f"({n.split('@')[1]} x 48), {n.split('-d')[1].split('-')[0]} blocks reach {_pct(r['overall']['mean'])}%"
                for n, r in rows.items()
                if n.startswith("scratch-") and "@" in n
            )
            + ". At the KD run's budget, pruning the trained teacher is what makes a shallow model usable; "
            "training one instead is no alternative."
        )
    caps = [c for c in result.get("comparisons", []) if "bootstrap_95" in c]
    for step, group in _by_step(caps):
        ref = rows[group[0]["against"]]
        within = all(c["bootstrap_95"][1] >= 0 for c in group)  # no depth measurably below 12 blocks
        when = f"stopped at step {step} of its 6000" if step else "its whole 6000 steps"
        caps = group
        text = (
            f"*Capacity at a common budget.* With the teacher's recipe, {when} (the "
            f"12-block reference retrained the same way: {_pct(ref['overall']['mean'])}%), "
            + "; ".join(
                f"{c['model'].split('-d')[1].split('-')[0]} blocks score {_pct(rows[c['model']]['overall']['mean'])}% "
                f"({_in(c)} against 12 blocks)"
                for c in caps
            )
            + ". "
        )
        losses = [(n, r) for n, r in rows.items() if "train_loss_last500" in r and n.endswith("@" + step)]
        ref_loss = next((r["train_loss_last500"] for n, r in losses if n.startswith("scratch-d12-")), None)
        ref_loss = ref_loss or (losses[0][1]["shipped_teacher_loss_last500"] if losses else None)
        if losses and ref_loss:
            text += (
                "Training loss on the same batches: "
                + ", ".join(
                    f"{n.split('-d')[1].split('-')[0]} blocks {r['train_loss_last500'] / ref_loss:.2f}x the 12-block "
                    "run's"
                    for n, r in losses
                    if not n.startswith("scratch-d12-")
                )
                + ". "
            )
        less = [c["model"].split("-d")[1].split("-")[0] for c in caps if c["bootstrap_95"][1] < 0]
        text += (
            "Depth does not measurably limit what is learnt by then."
            if within
            else f"{' and '.join(less)} blocks learn measurably less by then"
            + (
                f"; {' and '.join(c['model'].split('-d')[1].split('-')[0] for c in caps if c['bootstrap_95'][1] >= 0)}"
                " blocks do not."
                if len(less) < len(caps)
                else "."
            )
        )
        if not step:  # the whole budget: what depth alone allows, against the goals and the pruned students
            text += " " + _whole_budget(rows, goals, caps)
        out.append(text)
    levers = [c for c in result.get("comparisons", []) if "per_seed" in c and c["model"].startswith("datakd")]
    if levers:
        out.append(
            "*Lever: KD on renders instead of teacher samples* (the task loss then pulls towards true images, not "
            "towards the teacher's mistakes). "
            + "; ".join(
                f"{c['model'].split('-d')[1]} blocks: {_pct(rows[c['model']]['overall']['mean'])}% "
                f"({100 * c['difference']:+.1f} points against prompt-only KD, {c['seeds']} seed"
                f"{'s' if c['seeds'] > 1 else ''}; {100 * rows[c['model']]['share_of_teacher']:.0f}% of the teacher)"
                for c in levers
            )
            + "."
        )
    retrained = [c for c in result.get("comparisons", []) if c["model"].startswith("retrain")]
    if retrained:
        out.append(
            "*Second lever: the teacher's own recipe continued from the pruned weights* (renders of the training "
            "captions, batch 48, the min-SNR x0 loss, EMA, lr 5e-4 cosine; 1300 x 48 samples, those of the "
            "4000 x 16 KD run). "
            + "; ".join(
                f"{c['model'].split('-d')[1]} blocks: {_pct(rows[c['model']]['overall']['mean'])}% "
                f"({100 * c['difference']:+.1f} points against KD 4000 x 16, per seed "
                + ", ".join(f"{100 * d:+.1f}" for d in c["per_seed"])
                + f"; {100 * rows[c['model']]['share_of_teacher']:.0f}% of the teacher)"
                for c in retrained
            )
            + "."
        )
    if missed:
        out.append(closing(result))
    return "\n\n".join(t for t in out if t)


def render(result: dict) -> str:
    rows, goals = result["rows"], result["goals"]
    common = next((n.split("@")[1] for n in rows if n.startswith("scratch-d12-full@")), None)
    stopped = [n for n in rows if n.startswith("scratch-") and "@" in n]
    lines = [
        BEGIN,
        "",
        "## Capacity control",
        "",
        "<!-- Generated by benchmarks/capacity_toy.py; edit that script. -->",
        "",
    ]
    lines += [
        "**Question.** Is the gap of the pruned + distilled students to the teacher a matter of capacity (9 or 7 "
        "blocks of width 64 cannot do better) or of the recipe?",
        "",
        "**Control, as run.** Models of 9 and 7 blocks of the same width trained from scratch by "
        "`toy/train_teacher.py` with the teacher's recipe (the 6000-step cosine schedule, batch 48, lr 1e-3, EMA, "
        "training seed 0: the teacher's renders, batches, timesteps and noise)"
        + (
            (
                f", and a 12-block model retrained the same way as the reference, all stopped at step {common} and "
                "judged there (their EMA)"
                if common
                else ", stopped at step "
                + " and ".join(sorted({n.split("@")[1] for n in stopped}, key=int))
                + " of the 6000 and judged there (their EMA). The 12-block reference retrained the same way did not "
                "reach step 1000 in this session (its loss over steps 101-200, 0.1015, matched the shipped "
                "teacher's log over 100-199, 0.1022: the same script, seed and data); the shipped teacher's logged "
                "training loss is the 12-block curve, and the shipped teacher the judged reference"
            )
            + ". The whole 6000 steps (about 10-20 CPU-minutes per model at one thread on an idle core) did not "
            "fit this session on a 2-core machine shared by some 20 processes"
            if stopped
            else ""
        )
        + (
            ", and a 12-block model retrained the same way as the reference (the shipped teacher's own recipe and "
            "seed: a check that the control reproduces the teacher)"
            if "scratch-d12-full" in rows and not stopped
            else ""
        )
        + ". Also models of those depths trained from scratch with the 400-step KD run's budget (400 x 16: what "
        "a user gets by training a shallow model instead of pruning and distilling). The pruned + distilled "
        "students are reproduce_paper.py's learnable ones (prompt-only KD, 400 and 4000 steps).",
        "",
        f"**Lever.** The same pruned students (the learnable blocks of each seed), seeds, steps, batch and learning "
        f"rate, distilled on {result['renders']} renders of the training captions (image-caption KD, "
        "`--train_data_dir`: the task loss pulls towards true images) instead of one teacher sample per caption "
        "(prompt-only KD: the task loss pulls towards the teacher's own images, wrong shape and all).",
        "",
        f"All four attributes right on the {result['eval_prompts']} held-out captions, noise seeds of "
        "reproduce_paper.py; mean ± std over the judged seeds, the 95% Wilson interval of the pooled images, "
        "the share of the teacher's mean kept, and the CPU seconds of training (this run's models; one thread):",
        "",
        "| model | all four right (%) | 95% interval (images) | of teacher | toy score | training CPU-s |",
        "|---|---|---|---|---|---|",
    ]
    kinds = ("scratch", "kd", "datakd", "retrain")
    order = ["teacher"] + sorted(
        (n for n in rows if n != "teacher"),
        key=lambda n: (-int(n.split("-d")[1].split("-")[0]), kinds.index(n.split("-d")[0]), n),
    )
    for name in order:
        row = rows[name]
        o = row["overall"]
        lo, hi = row["wilson_95"]
        cpu = row.get("train_cpu_seconds")
        cpu = f"{cpu['mean']:.0f} / seed" if isinstance(cpu, dict) else (f"{cpu:.0f}" if cpu else "")
        spread = f" ± {_pct(o['std'])}" if o["n"] > 1 else ""
        lines.append(
            f"| {label(name)} | {_pct(o['mean'])}{spread} (n={o['n']}) | {_pct(lo)}-{_pct(hi)} ({row['images']}) "
            f"| {100 * row.get('share_of_teacher', float('nan')):.1f}% | {row['toy_score']['mean']:.3f} | {cpu} |"
        )
    losses = [(n, r) for n, r in rows.items() if "train_loss_last500" in r]
    if losses:
        lines += [
            "",
            "Training loss of the from-scratch runs (min-SNR-weighted x0 MSE, mean of the last 500 steps before the "
            "step named; every depth drew the same batches, timesteps and noise from train_teacher.py's generator) "
            "and the shipped teacher's logged loss over the same steps:",
            "",
            "| model | training loss | shipped 12-block teacher, same steps |",
            "|---|---|---|",
        ]
        lines += [
            f"| {label(n)} | {r['train_loss_last500']:.4f} | {r['shipped_teacher_loss_last500']:.4f} |"
            for n, r in sorted(losses, key=lambda x: (x[0].split("@")[1], -int(x[0].split("-d")[1].split("-")[0])))
        ]
    if result.get("comparisons"):
        lines += ["", "Differences in all four right (points):", ""]
        for c in result["comparisons"]:
            if "bootstrap_95" in c:
                lo, hi = c["bootstrap_95"]
                lines.append(
                    f"- {label(c['model'])} - {label(c['against'])}: {100 * c['difference']:+.1f} "
                    f"[{100 * lo:+.1f}, {100 * hi:+.1f}] (paired bootstrap over {c['images']} images)"
                )
            else:
                per_seed = ", ".join(f"{100 * d:+.1f}" for d in c["per_seed"])
                lines.append(
                    f"- {label(c['model'])} - {label(c['against'])}: {100 * c['difference']:+.1f} "
                    f"(per seed: {per_seed})"
                )
    lines += ["", "Goals (issue 31): " + "; ".join(
        f"{d} blocks keep ≥ {g['goal']:.0%}: best {g['best']} keeps {g['share']:.1%}, **{'met' if g['met'] else 'missed'}**"
        for d, g in goals.items()
    ) + ".", ""]  # fmt: skip
    lines += [verdict(result), "", END]
    return "\n".join(lines) + "\n"
