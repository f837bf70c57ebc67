"""The rehearsal itself: build and save the random full-size pipeline and scorer, then run each stage as its own
command (score, prune, distil, eval, push --dry-run), measured; writes the JSON and the page."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .measure import PROMPTS, count_component_flops, folder_bytes, measure_forwards, run_stage, words_of
from .report import project, write_doc

ROOT = Path(__file__).resolve().parents[2]


def run(args: argparse.Namespace, out: Path) -> None:
    """The whole rehearsal with the script's ``args``; the JSON goes to ``out``, the page to ``args.doc``."""
    import resource

    import torch

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log = work / "stages.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    prompts = (PROMPTS * (args.num_prompts // len(PROMPTS) + 1))[: args.num_prompts]
    if len(set(prompts)) < len(prompts):
        raise SystemExit(f"--num-prompts at most {len(PROMPTS)} distinct prompts here")
    (work / "prompts.txt").write_text("\n".join(prompts) + "\n")
    rows = []

    # 0. The random full-size pipeline and scorer, saved as a user's local folders would be.
    start = time.perf_counter()
    from diffusers_layerprune.scorers.tiny import save_tiny_clip_folder
    from diffusers_layerprune.testing import build_full_size_pixart_sigma_pipeline

    pipe = build_full_size_pixart_sigma_pipeline(
        text_encoder_layers=args.text_encoder_layers, words=words_of(PROMPTS + [""])
    )
    dtype = getattr(torch, args.dtype)
    forwards = measure_forwards(pipe, resolution=args.resolution, device=args.device, dtype=dtype)
    pipe.to(dtype=dtype).save_pretrained(work / "base", safe_serialization=True)
    params = {
        name: sum(t.numel() for t in getattr(pipe, name).parameters())
        for name in ("transformer", "text_encoder", "vae")
    }
    del pipe
    vit_h = dict(vision_width=1280, vision_layers=32, heads=16, image_size=224, patch_size=14, text_width=1024,
                 text_layers=24, projection_dim=1024)  # fmt: skip
    scorer_kwargs = vit_h if args.scorer == "vit-h" else {}
    save_tiny_clip_folder(work / "scorer", words=words_of(PROMPTS), scorer_config={"score": "cosine"}, **scorer_kwargs)
    build_seconds = time.perf_counter() - start
    rows.append(
        {
            "stage": "build + save (random)",
            "seconds": round(build_seconds, 1),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "bytes_written": folder_bytes(work / "base") + folder_bytes(work / "scorer"),
        }
    )
    print(f"{'stage':<24} {'wall':>11} {'peak RSS':>13} {'written':>13}")
    print(f"{rows[0]['stage']:<24} {build_seconds:>9.1f} s "
          f"{rows[0]['peak_rss_bytes'] / 2**30:>9.2f} GiB {rows[0]['bytes_written'] / 2**30:>9.2f} GiB")  # fmt: skip

    cli = [sys.executable, "-m", "diffusers_layerprune.cli"]
    base, scorer = str(work / "base"), str(work / "scorer")
    common = ["--prompts", str(work / "prompts.txt"), "--steps", str(args.steps), "--resolution", str(args.resolution)]
    for criterion in ("preference", "block_influence"):
        out = work / f"{criterion}.json"
        cmd = [*cli, "score", "--model", base, "--criterion", criterion, *common, "--dtype", args.dtype,
               "--batch-size", "2", "--output", str(out), "--no-progress"]  # fmt: skip
        if criterion == "preference":
            cmd += ["--scorer", scorer]
        rows.append(run_stage(f"score {criterion}", cmd, [out, out.with_suffix(".png")], env, log))

    pruned = work / "pruned"
    cmd = [*cli, "prune", "--model", base, "--importance", str(work / "preference.json"), "--num-layers",
           str(args.keep), "--transformer-only", "--dtype", args.dtype, "--output", str(pruned)]  # fmt: skip
    rows.append(run_stage(f"prune 28 -> {args.keep}", cmd, [pruned], env, log))

    distilled = work / "distilled"
    cmd = [sys.executable, "-m", "diffusers_layerprune.train_distill", "--teacher_model", base, "--student_model",
           str(pruned), "--output_dir", str(distilled), "--prompts", str(work / "prompts.txt"), "--cache_dir",
           str(work / "cache"), "--max_train_steps", str(args.distill_steps), "--train_batch_size", "1",
           "--checkpointing_steps", str(args.distill_steps), "--resolution", str(args.resolution),
           "--teacher_inference_steps", str(args.steps), "--transformer_only", "--save_dtype", args.dtype,
           "--report_to", "none"]  # fmt: skip
    if args.dtype != "float32":
        cmd += ["--mixed_precision", {"bfloat16": "bf16", "float16": "fp16"}[args.dtype]]
    rows.append(run_stage(f"distil {args.distill_steps} steps", cmd, [distilled, work / "cache"], env, log))

    report = distilled / "report.json"
    cmd = [*cli, "eval", "--model", str(distilled), "--base-model", base, "--teacher", base, *common,
           "--num-prompts", str(args.num_prompts), "--scorers", scorer, "--dtype", args.dtype, "--device",
           args.device, "--latency-repeats", "2", "--batch-size", "2", "--output", str(report)]  # fmt: skip
    rows.append(run_stage("eval vs teacher", cmd, [distilled], env, log))

    cmd = [*cli, "push", str(distilled), "--repo-id", "rehearsal/pixart-sigma-xl-24", "--dry-run",
           "--transformer-only", "--base-model", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"]  # fmt: skip
    rows.append(run_stage("push --dry-run", cmd, [distilled], env, log))

    uploaded = subprocess.run(cmd, env=env, capture_output=True, text=True).stdout
    result = {
        "settings": vars(args),
        "parameters": params,
        "forwards": forwards,
        "stages": rows,
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rows),
        "folder_bytes": {name: folder_bytes(work / name) for name in ("base", "pruned", "distilled", "cache", "scorer")},
        "push_listing": uploaded.splitlines(),
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                    "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"},
    }  # fmt: skip
    result["flops"] = count_component_flops()
    result["projection"] = project(result["flops"])
    result["json_name"] = f"benchmarks/results/{out.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_doc(result, Path(args.doc))
    print(f"peak RSS of any stage: {result['peak_rss_bytes'] / 2**30:.2f} GiB; wrote {out} and {args.doc}")
