"""The DiT-Pruner experiment on a two-stack model (``toy-flux``: double-stream then single-stream blocks): which
stack to prune first, before and after distillation. Writes the JSON, the page (``docs/results_flux.md``) and its
plot. Reuses the experiment of ``run.py`` (scan, judge, cell store, distillation) with the model as a parameter.

For each seed ``s``:

1. The teacher, and the teacher with each single block skipped (judged: the per-block importance the judge sees).
2. Score the blocks with ``--criteria`` (one shared scan, as ``layerprune score --model toy-flux``).
3. For each ratio and criterion, three plans of ``k`` blocks: ``mixed`` (the ``k`` least important blocks of either
   stack, plan ``one_shot``), ``double only`` and ``single only`` (the ``k`` least important blocks of that stack);
   each judged on the held-out captions.
4. Distil the plans of ``--distill-plans`` (``criterion:plan`` at every ratio) from the teacher with
   ``training/train_distill.py`` (its defaults but for the steps, batch and learning rate of the toy recipe).

Accuracy cells pool every judged image of the seeds; the interval is the 95% Wilson score interval of that
proportion (images are the unit: the seeds' noises and captions differ).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from toybench import (
    wilson,
    write_json,
    write_render_folder,
)  # the benchmarks' shared interval (benchmarks/ is on sys.path)

from .cells import cell_key, write_text
from .claims import METRICS, blocks_to_drop
from .run import Experiment, _names

STACK_PLANS = ("mixed", "double only", "single only")
JUDGE = "judge"
"""``--criteria judge``: the blocks ranked by the skip table (each block skipped alone, judged), an oracle."""
DEFAULT_DISTILL_PLANS = "preference:mixed,preference:double only,preference:single only"
# KD variants compared with train_distill's defaults at the goal depth (--kd-weightings): the timestep weighting of
# the diffusers examples' flags (issue 30.2, SD3's logit-normal sampling with its default mean and spread), and two
# levers for what the student lacks: a 5x learning rate, and image-caption KD on renders of the training captions
# (half of them with partial captions, the data the toy-flux teacher's last stages learnt from) instead of one
# teacher sample per full caption.
KD_WEIGHTINGS = {
    "logit_normal": {
        "args": ("--weighting_scheme", "logit_normal", "--logit_mean", "0", "--logit_std", "1"),
        "label": "logit-normal timesteps (mean 0, std 1)",
    },
    "lr5x": {"args": (), "lr_scale": 5.0, "label": "learning rate x5"},
    "renders": {
        "args": ("--train_data_dir", "{renders}"),
        "renders": 3200,
        "label": "on 3200 renders, half with partial captions",
    },
}


def stack_ranges(transformer) -> dict[str, list[int]]:
    """Global block indices of each stack kind, in execution order (``{"double": [0..3], "single": [4..11]}``)."""
    from diffusers_layerprune.blocks import block_stacks

    ranges, start = {}, 0
    for stack in block_stacks(transformer):
        n = len(getattr(transformer, stack.attr))
        ranges[stack.kind] = list(range(start, start + n))
        start += n
    return ranges


def stack_plans(importance, k: int, stacks: dict[str, list[int]]) -> dict[str, list[int]]:
    """``mixed``: the ``k`` least important blocks; ``<kind> only``: the ``k`` least important of that stack (only
    when the stack keeps at least one block)."""
    ranking = importance.ranking()
    plans = {"mixed": sorted(ranking[:k])}
    for kind, blocks in stacks.items():
        if k < len(blocks):
            plans[f"{kind} only"] = sorted([b for b in ranking if b in blocks][:k])
    return plans


def summarise(cells: list[dict], n_per_cell: int) -> dict:
    """Pooled accuracy per metric with its Wilson interval, the mean toy score, and the seeds."""
    n = n_per_cell * len(cells)
    out = {"n_images": n, "seeds": [c["seed"] for c in cells]}
    for metric in METRICS:
        hits = sum(c["accuracy"][metric] * n_per_cell for c in cells)
        low, high = wilson(hits, n)
        out[metric] = {"mean": hits / n, "low": low, "high": high}
    out["toy_score"] = sum(c["toy_score"] for c in cells) / len(cells)
    return out


class StackExperiment(Experiment):
    """``run.Experiment`` with per-stack plans and the single-block skip table."""

    def __init__(self, args) -> None:
        import copy

        names = _names(args.criteria)
        if JUDGE in names:  # not a registered criterion: the skip table, computed here
            if not args.skip_table:
                from diffusers_layerprune.errors import LayerPruneError

                raise LayerPruneError(f"--criteria {JUDGE} ranks the blocks by the skip table: drop --no-skip-table")
            args = copy.copy(args)
            args.criteria = ",".join(n for n in names if n != JUDGE)
        super().__init__(args)
        if JUDGE in names:
            self.criteria.append(JUDGE)
            self.args.criteria = ",".join(names)  # as given: the page's command and the JSON say what ran
        self.distill_plans = []
        for item in _names(args.distill_plans):
            criterion, _, plan = item.partition(":")
            if criterion not in self.criteria or plan not in STACK_PLANS:
                from diffusers_layerprune.errors import LayerPruneError

                raise LayerPruneError(
                    f"--distill-plans {item!r}: give criterion:plan with a criterion of --criteria and a plan of "
                    f"{', '.join(STACK_PLANS)}"
                )
            self.distill_plans.append((criterion, plan))
        self.kd_weightings = _names(args.kd_weightings)
        unknown = [w for w in self.kd_weightings if w not in KD_WEIGHTINGS]
        if unknown:
            from diffusers_layerprune.errors import LayerPruneError

            raise LayerPruneError(
                f"unknown --kd-weightings {', '.join(unknown)}; choose among {', '.join(KD_WEIGHTINGS)}"
            )

    def importances(self, seed: int) -> dict:
        """The criteria's importances; ``judge``'s from the skip table (the teacher's all-four accuracy minus the
        accuracy with the block skipped, on the judged captions: the oracle the criteria approximate)."""
        from diffusers_layerprune.importance import LayerImportance

        criteria = self.criteria
        self.criteria = [c for c in criteria if c != JUDGE]
        try:
            result = super().importances(seed)
        finally:
            self.criteria = criteria
        if JUDGE in criteria:
            path = self.output / f"seed-{seed}" / "importance" / f"{JUDGE}.json"
            teacher = self.cells.get(cell_key("teacher", seed, []))["accuracy"]["overall"]
            values = [teacher - self.cells.get(cell_key("pruned", seed, [b]))["accuracy"]["overall"]
                      for b in range(self.depth)]  # fmt: skip
            result[JUDGE] = LayerImportance(values, JUDGE, metadata={"model": self.args.model, "source": "skip table"})
            result[JUDGE].save(path, plot=False)
        return result

    def variant(self, name: str) -> dict:
        spec = KD_WEIGHTINGS.get(name)
        if spec is None:
            return super().variant(name)
        if "renders" in spec:  # the image folder, written once under the run's output
            folder = str(self.render_folder(spec["renders"]))
            return {**spec, "args": tuple(a.replace("{renders}", folder) for a in spec["args"])}
        return spec

    def render_folder(self, n: int) -> Path:
        """``n`` renders of the training captions as an image folder (``metadata.jsonl``), half of them captioned
        with a random non-empty subset of size, colour and position left out (toy/train_teacher's partial captions)."""
        import numpy as np

        from diffusers_layerprune.toy import world

        folder = self.output / f"renders-partial-{n}"
        if (folder / "metadata.jsonl").is_file():
            return folder
        attrs = world.split_attributes("train")
        omits = world.omissions()
        rng = np.random.default_rng(30)

        def items():
            for _ in range(n):  # the draws in this order: attributes, omission, render seed
                a = attrs[int(rng.integers(len(attrs)))]
                omit = omits[int(rng.integers(len(omits)))] if rng.random() < 0.5 else ()
                yield world.render(a, int(rng.integers(2**31 - 1))), a.caption(omit)

        return write_render_folder(folder, items())

    def _run(self) -> None:
        self.setup()
        self.check_settings()
        self.stacks = stack_ranges(self.pipe.transformer)
        jobs = []
        for seed in self.seeds:
            self.cell("teacher", seed, [], lambda s=seed: self.judge(self.pipe, [], s))
            if self.args.skip_table:
                for block in range(self.depth):
                    self.cell("pruned", seed, [block], lambda b=block, s=seed: self.judge(self.pipe, [b], s))
            print(f"seed {seed}: scoring {', '.join(self.criteria)}", flush=True)
            importances = self.importances(seed)
            for ratio in self.ratios:
                k = blocks_to_drop(ratio, self.depth)
                for criterion in self.criteria:
                    for plan, dropped in stack_plans(importances[criterion], k, self.stacks).items():
                        self.cell("pruned", seed, dropped, lambda d=dropped, s=seed: self.judge(self.pipe, d, s))
                        if (criterion, plan) in self.distill_plans:
                            jobs.append((seed, dropped, ""))
                            if f"{ratio:.2f}" in GOAL:  # the KD weighting row: the goal depth only
                                jobs += [(seed, dropped, w) for w in self.kd_weightings]
        # The long part last; shared plans run once. The weighting variants first: a second process started with
        # the same command once the first is distilling then takes them (cells written by either are reused).
        jobs.sort(key=lambda job: not job[2])
        for seed, dropped, weighting in dict.fromkeys((s, tuple(d), w) for s, d, w in jobs):
            self.cell(
                "distilled",
                seed,
                list(dropped),
                lambda d=list(dropped), s=seed, w=weighting: self.distilled(s, d, None, w),
                self.tag(self.args.distill_steps, weighting),
            )

    def collect(self) -> dict:
        from diffusers_layerprune.importance import LayerImportance

        settings = json.loads((self.output / "settings.json").read_text())
        n = settings["eval_prompts"]
        depth = settings["num_layers"]
        stacks = json.loads((self.output / "stacks.json").read_text())
        seeds = [s for s in self.seeds if self.cells.get(cell_key("teacher", s, []))]
        if not seeds:
            raise SystemExit(f"no finished cells under {self.output}; run without --report-only first")

        def pooled(stage: str, dropped_by_seed: dict, variant: str = "") -> dict | None:
            cells = [self.cells.get(cell_key(stage, s, d, variant)) for s, d in dropped_by_seed.items()]
            return summarise(cells, n) if cells and all(cells) else None

        teacher = pooled("teacher", {s: [] for s in seeds})
        skip = {}
        for block in range(depth):
            row = pooled("pruned", {s: [block] for s in seeds})
            if row:
                skip[block] = row
        importances = {}
        plans: dict = {}
        table: dict = {}
        for seed in seeds:
            folder = self.output / f"seed-{seed}" / "importance"
            for criterion in self.criteria:
                imp = LayerImportance.load(folder / f"{criterion}.json")
                importances.setdefault(criterion, {})[seed] = imp.values
                for ratio in self.ratios:
                    k = blocks_to_drop(ratio, depth)
                    for plan, dropped in stack_plans(imp, k, stacks).items():
                        plans.setdefault(f"{ratio:.2f}", {}).setdefault(criterion, {}).setdefault(plan, {})[seed] = (
                            dropped
                        )
        for r, by_criterion in plans.items():
            for criterion, by_plan in by_criterion.items():
                for plan, dropped_by_seed in by_plan.items():
                    entry = {"dropped": {str(s): d for s, d in dropped_by_seed.items()}}
                    entry["pruned"] = pooled("pruned", dropped_by_seed)
                    entry["distilled"] = pooled("distilled", dropped_by_seed, self.distill_tag)
                    for w in self.kd_weightings:
                        row = pooled("distilled", dropped_by_seed, self.tag(self.args.distill_steps, w))
                        if row:
                            entry.setdefault("distilled_by_weighting", {})[w] = row
                    table.setdefault(r, {}).setdefault(criterion, {})[plan] = entry
        seconds = sum(r.get("seconds", 0) for r in self.cells.records.values() if r.get("seed") in seeds)
        return {
            "model": self.args.model,
            "num_layers": depth,
            "stacks": stacks,
            "seeds": seeds,
            "criteria": self.criteria,
            "ratios": self.ratios,
            "eval_prompts": n,
            "settings": {**settings, "distill_steps": self.args.distill_steps,
                         "distill_batch_size": self.args.distill_batch_size, "learning_rate": self.args.learning_rate},
            "teacher": teacher,
            "skip_one_block": skip,
            "importance": importances,
            "table": table,
            "distill_plans": [f"{c}:{p}" for c, p in self.distill_plans],
            "kd_weightings": self.kd_weightings,
            "total_minutes": seconds / 60,
            "command": "python benchmarks/reproduce_paper.py" + _command_args(self.args),
        }  # fmt: skip

    def report(self) -> dict:
        if not (self.output / "stacks.json").is_file():
            raise SystemExit(f"no finished cells under {self.output}; run without --report-only first")
        result = self.collect()
        results = write_json(self.args.results, result)
        doc = Path(self.args.doc)
        write_stack_plot(result, doc.with_suffix(".png"))
        write_text(doc, render_stack_results(result, doc.with_suffix(".png").name))
        print(f"wrote {results}, {doc} and {doc.with_suffix('.png')}")
        return result

    def run(self) -> None:
        super().run()

    def setup(self) -> None:
        super().setup()
        write_text(self.output / "stacks.json", json.dumps(stack_ranges(self.pipe.transformer)) + "\n")


def _command_args(args) -> str:
    from .run import _non_default_args

    return _non_default_args(args)


# -- report ---------------------------------------------------------------------------------------------------------
def _pct(row: dict | None, metric: str = "overall") -> str:
    if not row:
        return "-"
    m = row[metric]
    return f"{100 * m['mean']:.1f} [{100 * m['low']:.1f}, {100 * m['high']:.1f}]"


def write_stack_plot(result: dict, path: Path) -> None:
    """Left: per-block importance (judge accuracy lost when the block is skipped, and each criterion normalised to
    its largest value), double blocks shaded. Right: all-four accuracy of each plan, pruned and distilled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth, stacks = result["num_layers"], result["stacks"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
    double = stacks.get("double", [])
    if double:
        left.axvspan(min(double) - 0.5, max(double) + 0.5, color="0.9", label="double-stream blocks")
    teacher = result["teacher"]["overall"]["mean"]
    blocks = list(range(depth))
    width = 0.8 / (1 + len(result["criteria"]))
    skip = {int(b): row for b, row in result["skip_one_block"].items()}
    if skip:  # the blocks judged so far (the table may be partial)
        drops = {b: teacher - row["overall"]["mean"] for b, row in skip.items()}
        top = max(max(drops.values()), 1e-9)
        left.bar([b - 0.4 + width / 2 for b in drops], [d / top for d in drops.values()], width,
                 label=f"judge: accuracy lost when skipped (max {100 * top:.0f} points)")  # fmt: skip
    for i, criterion in enumerate(result["criteria"], start=1):
        per_seed = list(result["importance"][criterion].values())
        values = [sum(v[b] for v in per_seed) / len(per_seed) for b in blocks]
        top = max(max(abs(v) for v in values), 1e-9)
        left.bar([b - 0.4 + width * (i + 0.5) for b in blocks], [v / top for v in values], width, label=criterion)
    left.set_xticks(blocks, [f"D{b}" if b in double else f"S{b - len(double)}" for b in blocks])
    left.set_ylabel("importance / its largest value")
    left.set_title("block importance (D: double-stream, S: single-stream)", fontsize=10)
    left.legend(fontsize=7)
    left.grid(alpha=0.3, axis="y")

    ratios = sorted(result["table"], key=float)
    criterion = result["criteria"][0]
    plans = [p for p in STACK_PLANS if any(p in result["table"][r].get(criterion, {}) for r in ratios)]
    x = list(range(len(ratios)))
    for j, plan in enumerate(plans):
        for stage, hatch, alpha in (("pruned", "", 0.5), ("distilled", "//", 1.0)):
            rows = [result["table"][r].get(criterion, {}).get(plan, {}).get(stage) for r in ratios]
            shift = -0.065 if stage == "pruned" else 0.065  # side by side within the plan's slot
            xs = [i + (j - 1) * 0.27 + shift for i, row in zip(x, rows, strict=True) if row]
            if not xs:
                continue
            vals = [100 * row["overall"]["mean"] for row in rows if row]
            err = [[100 * (row["overall"]["mean"] - row["overall"]["low"]) for row in rows if row],
                   [100 * (row["overall"]["high"] - row["overall"]["mean"]) for row in rows if row]]  # fmt: skip
            right.bar(xs, vals, 0.13, yerr=err, capsize=3, alpha=alpha, hatch=hatch, color=f"C{j}",
                      label=f"{plan}, {stage}")  # fmt: skip
    right.axhline(100 * teacher, color="black", ls=":", lw=1, label="teacher")
    depth_labels = [f"{blocks_to_drop(float(r), depth)} of {depth} ({float(r):.0%})" for r in ratios]
    right.set_xticks(x, depth_labels)
    right.set_ylabel("all four right, % (95% interval)")
    right.set_title(f"plans by {criterion}: pruned (light) and distilled (hatched)", fontsize=10)
    right.legend(fontsize=7)
    right.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


TEMPLATE = Path(__file__).with_name("results_flux.md.in")
GOAL = {"0.25": 0.97}  # share of the teacher's all-four accuracy the distilled 25%-shallower model should keep
WEIGHTING_PENDING = (
    'Not run (`--kd-weightings ""`, or no plan distilled at 25%): distil the same pruned model '
    "(`layerprune prune --model toy-flux --drop BLOCKS --output runs/flux25`) both ways and judge each:\n\n"
    "```bash\n"
    "python training/train_distill.py --teacher_model toy-flux --student_model runs/flux25 --output_dir "
    "runs/flux25-logitnormal --max_train_steps 400 --train_batch_size 16 --learning_rate 2e-4 --lr_scheduler cosine "
    "--lr_warmup_steps 20 --seed 0 --report_to none --weighting_scheme logit_normal --logit_mean 0 --logit_std 1\n"
    "layerprune eval --model runs/flux25-logitnormal\n"
    "```"
)


def _share(value: float, teacher: float) -> str:
    """``value`` as a share of the teacher's accuracy; ``n/a`` when the teacher got nothing right (smoke runs)."""
    return f"{100 * value / teacher:.0f}%" if teacher else "n/a"


def _weighting_section(result: dict, label) -> str:
    """The uniform vs weighted KD table (distilled plans at the goal depth), or how to run it when it is missing."""
    teacher = result["teacher"]["overall"]["mean"]
    rows = [
        "| removed | plan | blocks removed (per seed) | KD | distilled | colour | position | shape | size "
        "| distilled / teacher |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for r in sorted(result["table"], key=float):
        for criterion, by_plan in result["table"][r].items():
            for plan in STACK_PLANS:
                entry = by_plan.get(plan) or {}
                weighted = entry.get("distilled_by_weighting") or {}
                key = json.dumps(entry.get("dropped"))
                if not weighted or not entry.get("distilled") or key in seen:
                    continue
                seen.add(key)  # plans that remove the same blocks are one model
                same = [p for p in STACK_PLANS if json.dumps((by_plan.get(p) or {}).get("dropped")) == key]
                dropped = " / ".join(", ".join(label(b) for b in d) for d in entry["dropped"].values())
                variants = [("the recipe (uniform timesteps, lr as above, teacher samples)", entry["distilled"])]
                variants += [(KD_WEIGHTINGS[w]["label"], row) for w, row in weighted.items()]
                for name, row in variants:
                    cells = " | ".join(f"{100 * row[m]['mean']:.1f}" for m in ("colour", "position", "shape", "size"))
                    rows.append(
                        f"| {float(r):.0%} | {criterion} {' = '.join(same)} | {dropped} | {name} | {_pct(row)} "
                        f"| {cells} | {_share(row['overall']['mean'], teacher)} |"
                    )
    if len(rows) == 2:
        return WEIGHTING_PENDING
    return (
        "The same pruned students distilled again with one thing changed each (everything else equal): the KD's "
        "timesteps drawn logit-normally (SD3's sampling, `train_distill --weighting_scheme logit_normal --logit_mean 0 "
        "--logit_std 1`), the learning rate five times the recipe's, or image-caption KD on renders of the training "
        "captions, half of them with partial captions (`--train_data_dir`: the task loss pulls towards true images and "
        "the captions are the teacher's last stages' data) instead of one teacher sample per full caption:\n\n"
        + "\n".join(rows)
    )


def _verdict_lines(result: dict) -> list[str]:
    """One line per ratio: the plans ordered by accuracy before and after distillation, and the goal."""
    teacher = result["teacher"]["overall"]["mean"]
    lines = []
    for r in sorted(result["table"], key=float):
        k = blocks_to_drop(float(r), result["num_layers"])
        for criterion, by_plan in result["table"][r].items():
            for stage in ("pruned", "distilled"):
                # Plans that remove the same blocks are one model: name them together.
                same: dict = {}
                for plan, e in by_plan.items():
                    if e.get(stage):
                        same.setdefault(json.dumps(e["dropped"]), []).append(plan)
                rows = {" = ".join(plans): by_plan[plans[0]][stage] for plans in same.values()}
                if not rows:
                    continue
                order = sorted(rows, key=lambda plan: -rows[plan]["overall"]["mean"])
                ranked = ", ".join(f"{plan} {100 * rows[plan]['overall']['mean']:.1f}%" for plan in order)
                line = f"- {k} of {result['num_layers']} removed, {criterion}, {stage} (best first): {ranked}"
                if stage == "distilled":
                    best = rows[order[0]]["overall"]["mean"] / teacher if teacher else float("nan")
                    goal = GOAL.get(r)
                    line += f"; the best keeps {_share(rows[order[0]]['overall']['mean'], teacher)} of the teacher"
                    if goal and teacher:
                        line += f" (goal {100 * goal:.0f}%: {'met' if best >= goal else 'not met'})"
                lines.append(line + ".")
    return lines or ["- No cells yet."]


def render_stack_results(result: dict, plot_name: str) -> str:
    """``results_flux.md.in`` with its tables filled in."""
    from string import Template

    depth, stacks = result["num_layers"], result["stacks"]
    double = stacks.get("double", [])

    def label(b: int) -> str:
        return f"double {b}" if b in double else f"single {b - len(double)}"

    teacher = result["teacher"]
    skip_rows = [
        "| block skipped | all four right (95% interval) | colour | position | shape | size |",
        "|---|---|---|---|---|---|",
    ]
    for b in range(depth):
        row = result["skip_one_block"].get(str(b)) or result["skip_one_block"].get(b)
        if row:
            cells = " | ".join(f"{100 * row[m]['mean']:.1f}" for m in ("colour", "position", "shape", "size"))
            skip_rows.append(f"| {label(b)} | {_pct(row)} | {cells} |")
    if len(skip_rows) == 2:
        skip_rows = ["Not run (`--no-skip-table`): the criteria's scores below stand for it."]
    elif len(skip_rows) - 2 < depth:
        skip_rows.append(
            f"\n{len(skip_rows) - 2} of {depth} blocks judged (the run was cut short; `--skip-table` adds the rest)."
        )
    importance_rows = [
        "| block | " + " | ".join(result["criteria"]) + " |",
        "|---" * (1 + len(result["criteria"])) + "|",
    ]
    for b in range(depth):
        values = []
        for criterion in result["criteria"]:
            per_seed = list(result["importance"][criterion].values())
            values.append(f"{sum(v[b] for v in per_seed) / len(per_seed):.4f}")
        importance_rows.append(f"| {label(b)} | " + " | ".join(values) + " |")
    plan_rows = ["| removed | criterion | plan | blocks removed (per seed) | pruned | distilled | distilled / teacher |",
                 "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(result["table"], key=float):
        k = blocks_to_drop(float(r), depth)
        for criterion, by_plan in result["table"][r].items():
            for plan in STACK_PLANS:
                entry = by_plan.get(plan)
                if not entry:
                    continue
                dropped = " / ".join(", ".join(label(b) for b in d) for d in entry["dropped"].values())
                kept = "-"
                if entry["distilled"]:
                    kept = _share(entry["distilled"]["overall"]["mean"], teacher["overall"]["mean"])
                plan_rows.append(
                    f"| {k} of {depth} ({float(r):.0%}) | {criterion} | {plan} | {dropped} | {_pct(entry['pruned'])} "
                    f"| {_pct(entry['distilled'])} | {kept} |"
                )
    s = result["settings"]
    fields = {
        "verdict": "\n".join(_verdict_lines(result)),
        "weighting": _weighting_section(result, label),
        "command": result["command"],
        "minutes": f"{result['total_minutes']:.0f}",
        "seeds": ", ".join(map(str, result["seeds"])),
        "eval_prompts": result["eval_prompts"],
        "n_images": teacher["n_images"],
        "criteria": ", ".join(result["criteria"]),
        "score_prompts": s["score_prompts"],
        "num_inference_steps": s["num_inference_steps"],
        "guidance_scale": f"{s.get('guidance_scale', 1.0):g}",
        "distill_steps": s["distill_steps"],
        "distill_batch_size": s["distill_batch_size"],
        "learning_rate": f"{s['learning_rate']:g}",
        "n_double": len(double),
        "n_single": depth - len(double),
        "depth": depth,
        "teacher": _pct(teacher),
        "teacher_toy_score": f"{teacher['toy_score']:.3f}",
        "skip_table": "\n".join(skip_rows),
        "importance_table": "\n".join(importance_rows),
        "plan_table": "\n".join(plan_rows),
        "plot": plot_name,
        "generated": time.strftime("%Y-%m-%d"),
    }
    return Template(TEMPLATE.read_text()).safe_substitute(fields)
