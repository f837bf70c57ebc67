"""A parent's LoRA on a pruned model, on the toy world: how much of its effect survives pruning, and does a short
recovery distillation bring it back?

1. Trains a LoRA on the toy teacher that draws every square red (whatever colour the caption asks for); other shapes
   keep their colour. Its effect is read by the toy judge's colour reading.
2. Prunes 25% of the teacher's blocks (a seeded random draw, as benchmarks/distill_toy.py) and distils the student
   (full fine-tuning, --distill-steps).
3. ``layerprune adapt-lora`` carries the parent's LoRA over to the distilled student.
4. Recovery: ``train_distill --init_lora ADAPTED --teacher_lora PARENT_LORA`` (the student's weights frozen, only the
   LoRA trains, against the teacher with the LoRA fused), with checkpoints at each --recovery-steps value.
5. Judges, on held-out captions: **effect** = share of square captions (caption colour not red) drawn red;
   **control** = colour accuracy on captions of other shapes (the LoRA must leave them alone).

    python benchmarks/lora_toy.py                      # a few CPU-minutes
    python benchmarks/lora_toy.py --small --output /tmp/lt --results /tmp/lt.json   # seconds: the wiring (tests)

Prints a table and writes benchmarks/results/lora_toy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def run(cmd: list[str], threads: int) -> float:
    start = time.perf_counter()
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - start


def effect_target(attributes):
    """What the LoRA teaches: squares are red."""
    return replace(attributes, colour="red") if attributes.shape == "square" else attributes


def train_parent_lora(args, folder: Path) -> dict:
    """Train the LoRA on the toy teacher (its own objective: x0 prediction, min-SNR weights, caption dropout) and
    write it as the family's stock tools read it (PixArt: a peft folder)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from diffusers_layerprune.adapters.lora import LoraWeights, write_lora
    from diffusers_layerprune.families import get_family
    from diffusers_layerprune.modeling import load_pipeline
    from diffusers_layerprune.toy import world
    from diffusers_layerprune.toy.train_teacher import encode_captions, encode_renders

    torch.manual_seed(args.seed)
    pipe = load_pipeline("toy")
    model = pipe.transformer
    config = LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=TARGETS)
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    attrs = world.split_attributes("train")
    embeds, masks = encode_captions(pipe, [a.caption() for a in attrs])
    null_embed, null_mask = encode_captions(pipe, [""])
    rng = np.random.default_rng(args.seed)
    # half the renders are squares: only they carry the LoRA's lesson, the others keep the rest of the world intact
    squares = np.array([i for i, a in enumerate(attrs) if a.shape == "square"])
    others = np.array([i for i, a in enumerate(attrs) if a.shape != "square"])
    picks = np.where(
        rng.random(args.lora_renders) < 0.5,
        rng.choice(squares, size=args.lora_renders),
        rng.choice(others, size=args.lora_renders),
    )
    seeds = rng.integers(0, 2**31 - 1, size=args.lora_renders)
    latents = encode_renders(pipe.vae, [effect_target(attrs[int(i)]) for i in picks], [int(s) for s in seeds])
    caption_index = torch.from_numpy(picks).long()
    alphas_cumprod = pipe.scheduler.alphas_cumprod.float()
    weight = torch.clamp(alphas_cumprod / (1 - alphas_cumprod), max=5.0)  # the teacher's min-SNR weights
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lora_learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    added = {"resolution": None, "aspect_ratio": None}
    model.train()
    losses = []
    for step in range(args.lora_steps):
        index = torch.randint(0, len(latents), (args.batch_size,), generator=generator)
        x0, cap = latents[index], caption_index[index]
        drop = torch.rand(args.batch_size, generator=generator) < 0.1
        enc = torch.where(drop[:, None, None], null_embed, embeds[cap])
        enc_mask = torch.where(drop[:, None], null_mask, masks[cap])
        t = torch.randint(0, len(alphas_cumprod), (args.batch_size,), generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=generator)
        pred = model(
            noisy, encoder_hidden_states=enc, encoder_attention_mask=enc_mask, timestep=t, added_cond_kwargs=added
        ).sample[:, :4]
        loss = (F.mse_loss(pred, x0, reduction="none").mean(dim=(1, 2, 3)) * weight[t]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == args.lora_steps - 1:
            print(f"LoRA step {step} loss {np.mean(losses[-100:]):.4f}", flush=True)
    state = {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}
    folder.mkdir(parents=True, exist_ok=True)
    write_lora(get_family("pixart"), LoraWeights(state=state, config=config.to_dict()), folder)
    return {"steps": args.lora_steps, "final_loss": float(np.mean(losses[-50:]))}


def evaluation_pairs(n: int) -> tuple[list, list]:
    """Held-out (attributes, seed) pairs: squares whose caption colour is not red (effect), other shapes (control)."""
    from diffusers_layerprune.toy import world

    pairs = world.evaluation_set(2)
    effect = [(a, s) for a, s in pairs if a.shape == "square" and a.colour != "red"][:n]
    control = [(a, s) for a, s in pairs if a.shape != "square"][:n]
    return effect, control


def judge_model(pipe, transformer, lora_path, effect, control) -> dict:
    """Effect and control accuracies of ``transformer`` in the toy pipeline, with the LoRA at ``lora_path`` fused
    (``None``: without a LoRA)."""
    import copy

    from diffusers_layerprune.adapters.lora import fuse_lora_into, read_lora
    from diffusers_layerprune.families import family_of
    from diffusers_layerprune.toy.evaluate import generate
    from diffusers_layerprune.toy.judge import judge

    model = copy.deepcopy(transformer)
    if lora_path is not None:
        fuse_lora_into(model, read_lora(family_of(model), lora_path))
    pipe.register_modules(transformer=model.eval())
    pipe.set_progress_bar_config(disable=True)
    wanted = [effect_target(a) for a, _ in effect]
    effect_report = judge(generate(pipe, effect), wanted)
    control_report = judge(generate(pipe, control), [a for a, _ in control])
    return {"effect": effect_report.accuracy["colour"], "control": control_report.accuracy["colour"]}


def train_the_rest(args, out: Path, drop: list[int], recovery: list[int], py: str, cli: list[str]) -> dict:
    """Prune, distil, adapt-lora, recover; returns the timings."""
    timings = {}
    train_prompts = ["--max_train_samples", str(args.train_prompts)] if getattr(args, "train_prompts", None) else []
    timings["prune s"] = run(
        [*cli, "prune", "--model", "toy", "--drop", ",".join(map(str, drop)), "--output", str(out / "pruned")],
        args.num_threads,
    )
    distill = [
        py, str(ROOT / "training" / "train_distill.py"), "--teacher_model", "toy", "--train_batch_size",
        str(args.batch_size), "--seed", str(args.seed), "--report_to", "none", "--cache_dir", args.cache_dir, *train_prompts,
    ]  # fmt: skip
    timings["distill s"] = run(
        [*distill, "--student_model", str(out / "pruned"), "--output_dir", str(out / "distilled"),
         "--max_train_steps", str(args.distill_steps), "--checkpointing_steps", str(args.distill_steps),
         "--learning_rate", "2e-4", "--lr_scheduler", "cosine"], args.num_threads
    )  # fmt: skip
    timings["adapt-lora s"] = run(
        [*cli, "adapt-lora", str(out / "parent_lora"), "--pruned", str(out / "distilled"), "--output", str(out / "adapted")], args.num_threads
    )  # fmt: skip
    timings["recovery s"] = run(
        [*distill, "--student_model", str(out / "distilled"), "--output_dir", str(out / "recovered"),
         "--init_lora", str(out / "adapted"), "--teacher_lora", str(out / "parent_lora"),
         "--max_train_steps", str(max(recovery)), "--checkpointing_steps", str(min(recovery)),
         "--learning_rate", str(args.recovery_learning_rate)], args.num_threads
    )  # fmt: skip
    return timings


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratio", type=float, default=0.25, help="fraction of blocks to remove")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lora-steps", type=int, default=500)
    p.add_argument("--lora-renders", type=int, default=4000)
    p.add_argument("--lora-learning-rate", type=float, default=5e-3)
    p.add_argument("--distill-steps", type=int, default=300)
    p.add_argument("--recovery-steps", default="100,300", help="checkpoints of the recovery run that are judged")
    p.add_argument("--recovery-learning-rate", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16, help="batch of every training run")
    p.add_argument("--num-prompts", type=int, default=48, help="held-out captions per group (effect, control)")
    p.add_argument(
        "--num-threads",
        type=int,
        default=1,
        help="torch CPU threads here and in the runs (1 is robust on a shared box)",
    )
    p.add_argument(
        "--judge-only",
        action="store_true",
        help="judge the models of an earlier run in --output again (its settings read from --results), e.g. with "
        "another --num-prompts",
    )
    p.add_argument("--small", action="store_true", help="a few steps everywhere: the wiring, in seconds (tests)")
    p.add_argument("--output", default="runs/lora_toy")
    p.add_argument("--cache-dir", default="runs/lora_toy_cache", help="teacher latents, reused by later runs")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "lora_toy.json"))
    args = p.parse_args(argv)
    if args.small:
        args.lora_steps, args.lora_renders, args.distill_steps = 3, 16, 2
        args.recovery_steps, args.num_prompts, args.batch_size = "1,2", 2, 4
        args.train_prompts = 8
    recovery = sorted({int(s) for s in args.recovery_steps.split(",")})
    import torch

    torch.set_num_threads(args.num_threads)

    out = Path(args.output)
    py = sys.executable
    cli = [py, "-m", "diffusers_layerprune.cli"]
    from diffusers_layerprune.modeling import load_pipeline, load_transformer

    pipe = load_pipeline("toy")
    teacher = pipe.transformer
    effect, control = evaluation_pairs(args.num_prompts)
    rows = {}
    if args.judge_only:  # the runs of an earlier call, judged again (e.g. on more prompts)
        earlier = json.loads(Path(args.results).read_text())
        drop, lora_run, timings = earlier["pruned_blocks"], earlier["parent_lora"], earlier["timings_s"]
        args = argparse.Namespace(**{**earlier["settings"], "num_prompts": args.num_prompts, "judge_only": True})
        recovery = sorted({int(s) for s in args.recovery_steps.split(",")})
    else:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        timings = {}
        start = time.perf_counter()
        lora_run = train_parent_lora(args, out / "parent_lora")
        timings["parent LoRA s"] = time.perf_counter() - start
        rows["parent + LoRA"] = judge_model(pipe, teacher, out / "parent_lora", effect, control)
        print(f"parent + LoRA: effect {100 * rows['parent + LoRA']['effect']:.1f}%", flush=True)
        drop = sorted(random.Random(args.seed).sample(range(12), max(1, round(args.ratio * 12))))
        timings.update(train_the_rest(args, out, drop, recovery, py, cli))
    adapted_record = json.loads((out / "adapted" / "layerprune_lora.json").read_text())
    rows = {
        "parent": judge_model(pipe, teacher, None, effect, control),
        "parent + LoRA": rows.get("parent + LoRA") or judge_model(pipe, teacher, out / "parent_lora", effect, control),
    }
    student = load_transformer(str(out / "distilled"))
    rows["pruned (distilled)"] = judge_model(pipe, student, None, effect, control)
    rows["pruned + adapted LoRA"] = judge_model(pipe, student, out / "adapted", effect, control)
    for steps in recovery:
        rows[f"+ recovery {steps} steps"] = judge_model(
            pipe, student, out / "recovered" / f"checkpoint-{steps}" / "lora", effect, control
        )
    print(f"{'model':<26}{'effect':>9}{'control':>9}")
    for name, r in rows.items():
        print(f"{name:<26}{100 * r['effect']:>8.1f}%{100 * r['control']:>8.1f}%")
    gap = rows["parent + LoRA"]["effect"] - rows[f"+ recovery {max(recovery)} steps"]["effect"]
    print(f"after {max(recovery)} recovery steps: {100 * gap:+.1f} points from parent + LoRA (goal: within 2)")
    result = {
        "settings": vars(args),
        "pruned_blocks": drop,
        "effect": "share of held-out square captions (caption colour not red) the judge reads as red",
        "control": "judge colour accuracy on held-out captions of other shapes",
        "prompts": {"effect": len(effect), "control": len(control)},
        "table": rows,
        "gap_points_after_recovery": 100 * gap,
        "adapted_lora": {k: adapted_record[k] for k in ("layers_kept", "layers_dropped", "removed_share", "norm")},
        "parent_lora": lora_run,
        "timings_s": timings,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.results}")
    return result


if __name__ == "__main__":
    main()
