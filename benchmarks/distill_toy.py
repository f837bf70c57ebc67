"""Distillation evidence on the toy world: does KD recover the quality lost by pruning?

Prunes the bundled toy teacher by --ratio of its blocks (blocks from an importance file, or a seeded random draw),
distils the pruned student from the teacher (full fine-tuning and LoRA, same step budget), and evaluates teacher,
pruned and distilled models with the toy judge and the toy preference scorer on held-out captions (same prompts,
same seeds). Prints a table, writes results JSON and copies the loss curves next to it.

    python benchmarks/distill_toy.py --steps 400 --output runs/distill_toy
    python benchmarks/distill_toy.py --importance runs/imp_preference.json --steps 400
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--ratio", type=float, default=0.25, help="fraction of blocks to remove")
    p.add_argument("--importance", default=None, help="importance JSON (layerprune score); default: random blocks")
    p.add_argument("--seed", type=int, default=0, help="seed of the random block draw and of training")
    p.add_argument("--steps", type=int, default=400, help="distillation steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--lora-learning-rate", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--num-prompts", type=int, default=200, help="held-out captions for evaluation")
    p.add_argument("--output", default="runs/distill_toy")
    p.add_argument("--results", default="benchmarks/results/distill_toy.json")
    args = p.parse_args()

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    cli = [py, "-m", "diffusers_layerprune.cli"]
    pruned = out / "pruned"
    if args.importance:
        prune_args = ["--importance", args.importance, "--ratio", str(args.ratio)]
        how = f"importance {args.importance}"
    else:
        from diffusers_layerprune.modeling import read_transformer_config

        config = read_transformer_config(args.model)
        depth = config["num_layers"] if config else 12
        k = max(1, round(args.ratio * depth))
        drop = sorted(random.Random(args.seed).sample(range(depth), k))
        prune_args = ["--drop", ",".join(map(str, drop))]
        how = f"random draw (seed {args.seed}): {drop}"
    timings = {}
    timings["prune_s"] = run(
        [*cli, "prune", "--model", args.model, *prune_args, "--output", str(pruned), "--overwrite"]
    )

    runs = {"distilled (full)": out / "kd-full", "distilled (LoRA)": out / "kd-lora"}
    common = [
        py,
        str(ROOT / "training" / "train_distill.py"),
        "--teacher_model",
        args.model,
        "--student_model",
        str(pruned),
        "--max_train_steps",
        str(args.steps),
        "--train_batch_size",
        str(args.batch_size),
        "--checkpointing_steps",
        str(args.steps),
        "--seed",
        str(args.seed),
        "--report_to",
        "none",
        "--lr_scheduler",
        "cosine",
        "--lr_warmup_steps",
        str(max(1, args.steps // 20)),
    ]
    for name, folder in runs.items():
        if folder.exists():
            shutil.rmtree(folder)
        extra = ["--learning_rate", str(args.learning_rate)]
        if "LoRA" in name:
            extra = ["--use_lora", "--rank", str(args.rank), "--learning_rate", str(args.lora_learning_rate)]
        timings[f"{name} s"] = run([*common, "--output_dir", str(folder), *extra])

    rows = {}
    for name, folder in {"pruned": pruned, **runs}.items():
        report = folder / "eval_report.json"
        run(
            [
                *cli,
                "eval",
                "--model",
                str(folder),
                "--num-prompts",
                str(args.num_prompts),
                "--output",
                str(report),
                "--overwrite",
                "--latency-repeats",
                "3",
            ]
        )
        data = json.loads(report.read_text())
        if "teacher" not in rows:
            rows["teacher"] = data["models"]["teacher"]
        rows[name] = data["models"]["student"]

    metrics = sorted({k for r in rows.values() for k in r.get("checks", {})})
    scorers = sorted({k for r in rows.values() for k in r["scores"]})
    header = f"{'model':<20}{'blocks':>7}" + "".join(f"{m:>12}" for m in metrics) + "".join(f"{s:>12}" for s in scorers)
    print(header)
    table = {}
    for name, r in rows.items():
        cells = {m: r.get("checks", {}).get(m, {}).get("mean") for m in metrics}
        cells.update({s: r["scores"][s]["mean"] for s in scorers})
        table[name] = {"blocks": r["num_layers"], **cells}
        print(
            f"{name:<20}{r['num_layers']:>7}"
            + "".join(f"{100 * cells[m]:>11.1f}%" for m in metrics)
            + "".join(f"{cells[s]:>12.4f}" for s in scorers)
        )
    for name, folder in runs.items():
        if (folder / "loss_curve.png").exists():
            tag = "full" if "full" in name else "lora"
            shutil.copy(folder / "loss_curve.png", Path(args.results).with_name(f"distill_toy_loss_{tag}.png"))
    result = {
        "settings": vars(args),
        "pruned_blocks": how,
        "table": table,
        "timings_s": timings,
        "recipes": {n: json.loads((f / "distill_config.json").read_text()) for n, f in runs.items()},
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
