"""Which train_distill settings let the 25%-shallower toy Flux keep 97% of its teacher (issue 30, point 5)?

The student: ``toy-flux`` with single blocks 0, 5 and 6 removed (global 4, 9, 10: the preference criterion's plan of
docs/results_flux.md), each variant trained by ``training/train_distill.py`` on an image folder of renders of the
training captions, half of them captioned partially (benchmarks/paper/stacks.py's ``renders-partial-N``: the kind of
data the teacher learnt from), for 1000 steps of batch 32, lr 5e-4 cosine with 50 warm-up steps, EMA, training seed
s; the variants change one setting at a time (``VARIANTS``). Judged as docs/toy_world_flux_eval.json judges the
teacher: the 216 held-out captions, noise seed 0 per caption, 20 steps, true CFG 4.5, the toy judge. Statistics:
all four right, pooled over seeds, 95% Wilson interval; student - teacher with a 95% paired bootstrap over the
(seed, caption) pairs (the teacher's images are the same for every training seed: one judged set).

    python benchmarks/flux_recipe_toy.py --variants task_logit,task_logit_drop --seeds 0,1,2   # repeat until the table
    python benchmarks/flux_recipe_toy.py --report-only --variants ... --seeds ...

Each cell (a variant at a seed) is written to ``WORK/cells.jsonl`` when done, so a stopped run resumes. A variant's
folder that already holds a finished run (its ``distill_config.json``) is judged without training again (its cell says
``trained_earlier``, with no cost).
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper.cells import Cells  # noqa: E402
from toybench import mean_std, run_logged, wilson, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "flux_recipe_toy.json"
DROP = "4,9,10"  # single 0, 5, 6 in global numbering (4 double blocks first)
GOAL = 0.97

COMMON = [
    "--max_train_steps", "1000", "--train_batch_size", "32", "--learning_rate", "5e-4", "--lr_scheduler", "cosine",
    "--lr_warmup_steps", "50", "--use_ema", "--checkpointing_steps", "500", "--checkpoints_total_limit", "1",
    "--report_to", "none",
]  # fmt: skip
TASK_ONLY = ["--lambda_out", "0", "--lambda_feat", "0"]
LOGIT = ["--weighting_scheme", "logit_normal"]
DROPOUT = ["--proportion_empty_prompts", "0.1"]
VARIANTS: dict[str, tuple[str, list[str], int]] = {
    # name: (what it is, train_distill flags beyond COMMON, renders in the image folder)
    "kd": ("output + feature KD + task loss, uniform timesteps", [], 3200),
    "task": ("task loss only, uniform timesteps", TASK_ONLY, 3200),
    "task_logit": ("task loss only, logit-normal timesteps", TASK_ONLY + LOGIT, 3200),
    "task_logit_drop": ("task loss only, logit-normal, 10% caption dropout", TASK_ONLY + LOGIT + DROPOUT, 3200),
    "task_logit_r9600": ("task loss only, logit-normal, on 9600 renders", TASK_ONLY + LOGIT, 9600),
    "task_logit_drop_r9600": ("as task_logit_drop on 9600 renders", TASK_ONLY + LOGIT + DROPOUT, 9600),
    "kd_logit_drop": ("output + feature KD + task loss, logit-normal, 10% caption dropout", LOGIT + DROPOUT, 3200),
    "kd_logit_drop_r9600": ("as kd_logit_drop on 9600 renders", LOGIT + DROPOUT, 9600),
    "kdout_logit_drop_r9600": (
        "as kd_logit_drop_r9600 without feature KD",
        LOGIT + DROPOUT + ["--lambda_feat", "0"],
        9600,
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="task_logit_drop", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0", help="training seeds")
    p.add_argument("--work", default="runs/flux_recipe_toy")
    p.add_argument("--minutes", type=float, default=None, help="start no new training after this long")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    return args


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.work = Path(args.work)
        self.variants = args.variants.split(",")
        self.seeds = [int(s) for s in args.seeds.split(",")]
        self.cells = Cells(self.work / "cells.jsonl")
        self.start = time.monotonic()

    def time_left(self) -> bool:
        return self.args.minutes is None or time.monotonic() - self.start < 60 * self.args.minutes

    def student(self) -> Path:
        folder = self.work / "pruned"
        if not (folder / "model_index.json").is_file():
            from diffusers_layerprune.cli import main as cli

            assert cli(["prune", "--model", "toy-flux", "--drop", DROP, "--output", str(folder)]) == 0
        return folder

    def renders(self, n: int) -> Path:
        from paper.stacks import StackExperiment

        return StackExperiment.render_folder(types.SimpleNamespace(output=self.work), n)

    def judge(self, model: str) -> dict:
        import torch

        from diffusers_layerprune.modeling import load_pipeline
        from diffusers_layerprune.toy import world
        from diffusers_layerprune.toy.evaluate import generate
        from diffusers_layerprune.toy.judge import judge

        torch.set_num_threads(1)
        pipe = load_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        pairs = world.evaluation_set(1)
        report = judge(generate(pipe, pairs), [a for a, _ in pairs])
        return {"accuracy": report.accuracy, "correct": [bool(c) for c in report.correct["overall"]]}

    def run(self) -> None:
        if self.cells.get("teacher") is None:
            print("judging the teacher", flush=True)
            self.cells.put("teacher", self.judge("toy-flux"))
        for variant in self.variants:
            _, flags, n = VARIANTS[variant]
            for seed in self.seeds:
                key = f"{variant}|seed={seed}"
                if self.cells.get(key) is not None:
                    continue
                if not self.time_left():
                    print("time is up: run again to go on", flush=True)
                    return
                out = self.work / key.replace("|", "-").replace("=", "")
                cmd = [
                    sys.executable, "-m", "diffusers_layerprune.train_distill", "--teacher_model", "toy-flux",
                    "--student_model", str(self.student()), "--output_dir", str(out), "--overwrite_output_dir",
                    "--train_data_dir", str(self.renders(n)), "--seed", str(seed), *COMMON, *flags,
                ]  # fmt: skip
                if (out / "distill_config.json").is_file():  # trained before (the run's last file): judged only
                    cost = {"cpu_seconds": None, "wall_seconds": None, "trained_earlier": True}
                else:
                    print(f"training {key}", flush=True)
                    cost = run_logged(cmd, self.work / f"{out.name}.log")
                self.cells.put(key, {**self.judge(str(out)), **cost, "command": " ".join(cmd[1:])})
                print(f"{key}: {100 * self.cells.get(key)['accuracy']['overall']:.1f}%", flush=True)

    def paired(self, variant: str, resamples: int = 2000) -> dict:
        import random

        teacher = self.cells.get("teacher")["correct"]
        diffs = [int(c) - int(t) for s in self.seeds for c, t in zip(
            self.cells.get(f"{variant}|seed={s}")["correct"], teacher, strict=True)]  # fmt: skip
        rng = random.Random(0)
        boot = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(resamples))
        return {"difference": sum(diffs) / len(diffs), "bootstrap_95": [boot[int(0.025 * resamples)],
                boot[int(0.975 * resamples) - 1]]}  # fmt: skip

    def report(self) -> dict | None:
        teacher = self.cells.get("teacher")
        if teacher is None or any(self.cells.get(f"{v}|seed={s}") is None for v in self.variants for s in self.seeds):
            return None
        t_acc = teacher["accuracy"]["overall"]
        n = len(teacher["correct"])
        rows = []
        for variant in self.variants:
            cells = [self.cells.get(f"{variant}|seed={s}") for s in self.seeds]
            right = sum(sum(c["correct"]) for c in cells)
            pooled = right / (n * len(cells))
            rows.append({
                "variant": variant,
                "what": VARIANTS[variant][0],
                "renders": VARIANTS[variant][2],
                "flags": VARIANTS[variant][1],
                "per_seed": {str(s): c["accuracy"] for s, c in zip(self.seeds, cells, strict=True)},
                "overall": mean_std([c["accuracy"]["overall"] for c in cells]),
                "pooled": pooled,
                "wilson_95": wilson(right, n * len(cells)),
                "share_of_teacher": pooled / t_acc,
                "against_teacher": self.paired(variant),
                "train_cpu_seconds": [c["cpu_seconds"] for c in cells],
                "commands": [c["command"] for c in cells],
            })  # fmt: skip
        return {
            "question": __doc__.split("\n")[0],
            "protocol": "216 held-out captions, noise seed 0 per caption, 20 steps, true CFG 4.5, the toy judge; "
            "the student: toy-flux without single blocks 0, 5, 6; 1000 x 32, lr 5e-4 cosine, EMA",
            "seeds": self.seeds,
            "goal_share": GOAL,
            "teacher": teacher["accuracy"],
            "variants": rows,
        }


def table(result: dict) -> str:
    lines = [
        f"teacher: {100 * result['teacher']['overall']:.1f}% all four right (216 images)",
        "| variant | all four right (%) | 95% Wilson | of the teacher | student - teacher (points, 95% CI) |",
        "|---|---|---|---|---|",
    ]
    for r in result["variants"]:
        d = r["against_teacher"]
        lo, hi = r["wilson_95"]
        lines.append(
            f"| {r['variant']} | {100 * r['overall']['mean']:.1f} ± {100 * r['overall'].get('std', 0):.1f} | "
            f"[{100 * lo:.1f}, {100 * hi:.1f}] | {100 * r['share_of_teacher']:.1f}% | {100 * d['difference']:+.1f} "
            f"[{100 * d['bootstrap_95'][0]:+.1f}, {100 * d['bootstrap_95'][1]:+.1f}] |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    if not args.report_only:
        bench.run()
    result = bench.report()
    if result is None:
        print("not every cell is done yet: run again")
        return 1
    write_result(args.results, result)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
