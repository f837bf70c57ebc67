"""Full-size rehearsal: the whole recipe on a randomly initialised pipeline with PixArt-Sigma-XL's real sizes.

    python benchmarks/rehearse_full_size.py                       # CPU: 256 px, 2 prompts, 2 sampler steps
    python benchmarks/rehearse_full_size.py --device cuda --dtype bfloat16 --resolution 1024

The pipeline has PixArt-Sigma-XL's transformer (28 blocks, width 1152, 0.61B parameters), the SDXL VAE, a T5
encoder of T5-XXL's real width (d_model 4096, 64 heads, d_ff 10240, 32128-token embedding) with
``--text-encoder-layers`` of its 24 layers, and the real 300-token text length. With ``--scorer vit-h`` the
preference scorer is a CLIP of HPSv2's size (ViT-H-14 image tower, 1024-wide 24-layer text tower), random too.

Each stage runs as users run it, as its own command (``layerprune score / prune``, ``python -m
diffusers_layerprune.train_distill``, ``layerprune eval / push``): score the blocks with ``preference`` and
``block_influence``, prune 28 -> 24 blocks (transformer only), distil a few steps, evaluate against the teacher,
and a dry-run push of the transformer only. Per stage it records wall time, the peak resident memory of the
stage's process tree (sampled every 0.1 s) and the bytes it wrote. It also measures, in this process, the cost of
one transformer forward (and of the text encoder per prompt), which docs/scale.md uses to project each stage to
the paper's settings. Prints a table and writes ``benchmarks/results/rehearse_full_size[_<device>].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from paper.cells import GPU_END, GPU_START, generated_section  # noqa: E402  (the page's GPU section is kept)

PROMPTS = [
    "a photo of an astronaut riding a horse on the moon, detailed, dramatic light",
    "a watercolor painting of a small red fox in a snowy forest at dawn",
    "a bowl of ramen on a wooden table, studio photo, shallow depth of field",
    "an isometric illustration of a tiny island city with bridges and lanterns",
    "portrait of an old fisherman with a grey beard, oil painting, warm colours",
    "a cyberpunk street at night in the rain, neon signs reflected in puddles",
    "a cute robot reading a book in a library, 3d render, soft light",
    "a field of sunflowers under a blue sky with white clouds, wide angle photo",
]


def words_of(prompts) -> list[str]:
    return sorted({w.strip(",.").lower() for p in prompts for w in p.split()})


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            with open(f"/proc/{current}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def folder_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def run_stage(name: str, cmd: list[str], outputs: list[Path], env: dict, log: Path) -> dict:
    before = sum(folder_bytes(p) for p in outputs)
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, process_tree_rss(proc.pid))
            time.sleep(0.1)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"stage {name} failed ({proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
    written = sum(folder_bytes(p) for p in outputs) - before
    row = {"stage": name, "seconds": round(seconds, 1), "peak_rss_bytes": peak, "bytes_written": written}
    row["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)  # other work on the machine inflates wall times
    print(f"{name:<24} {seconds:>9.1f} s {peak / 2**30:>9.2f} GiB {written / 2**30:>9.2f} GiB", flush=True)
    return row


def measure_forwards(pipe, *, resolution: int, device: str, dtype, repeats: int = 3) -> dict:
    """Seconds of one transformer forward (batch 1 and 2, i.e. with guidance) and one text-encoder call per prompt
    at 300 tokens; FLOPs of one transformer forward at this resolution and at 1024 px (counted on the meta device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    transformer = pipe.transformer.to(device, dtype)
    config = transformer.config
    latent = resolution // pipe.vae_scale_factor

    def inputs(batch: int, side: int, on: str):
        return dict(
            hidden_states=torch.randn(batch, config.in_channels, side, side, device=on, dtype=dtype),
            encoder_hidden_states=torch.randn(batch, 300, config.caption_channels, device=on, dtype=dtype),
            encoder_attention_mask=torch.ones(batch, 300, device=on),
            timestep=torch.full((batch,), 500, device=on),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )

    def timed(fn) -> float:
        fn()  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    result = {}
    with torch.no_grad():
        for batch in (1, 2):
            x = inputs(batch, latent, device)
            result[f"transformer_forward_batch{batch}_s"] = timed(lambda x=x: transformer(**x))
        tokens = pipe.tokenizer(["a prompt"] * 2, padding="max_length", max_length=300, return_tensors="pt")
        encoder = pipe.text_encoder.to(device, dtype)
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        result["text_encoder_per_prompt_s"] = timed(lambda: encoder(ids, attention_mask=mask)) / 2
        result["text_encoder_layers"] = encoder.config.num_layers
        meta = type(transformer)(**{k: v for k, v in config.items() if not k.startswith("_")}).to("meta")
        for side_px in sorted({resolution, 1024}):
            counter = FlopCounterMode(display=False)
            with counter:
                meta(**inputs(1, side_px // pipe.vae_scale_factor, "meta"))
            result[f"transformer_forward_flops_{side_px}px"] = counter.get_total_flops()
        result["blocks"] = config.num_layers
    transformer.to("cpu")
    pipe.text_encoder.to("cpu")
    return result


def count_component_flops() -> dict:
    """FLOPs of one forward of each real-size component, counted on the meta device (no memory, no compute):
    the transformer at 1024 px, the SDXL VAE decoder at 1024 px, the full 24-layer T5-XXL encoder per prompt at 300
    and at 60 tokens, and an HPSv2-sized CLIP image tower (ViT-H-14, 224 px)."""
    import torch
    from diffusers import AutoencoderKL, PixArtTransformer2DModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPModel, T5Config, T5EncoderModel

    from diffusers_layerprune.scorers.tiny import build_clip_tokenizer, tiny_clip_config
    from diffusers_layerprune.testing import PIXART_SIGMA_XL_TRANSFORMER, SDXL_VAE, T5_XXL_ENCODER

    def count(fn) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops()

    with torch.device("meta"):
        transformer = PixArtTransformer2DModel(**PIXART_SIGMA_XL_TRANSFORMER)
        vae = AutoencoderKL(**SDXL_VAE)
        t5 = T5EncoderModel(T5Config(**T5_XXL_ENCODER))
        clip = CLIPModel(tiny_clip_config(build_clip_tokenizer(), vision_width=1280, vision_layers=32, heads=16,
                                          image_size=224, patch_size=14, text_width=1024, text_layers=24,
                                          projection_dim=1024))  # fmt: skip

    def transformer_inputs(batch: int):
        return dict(
            hidden_states=torch.randn(batch, 4, 128, 128, device="meta"),
            encoder_hidden_states=torch.randn(batch, 300, 4096, device="meta"),
            encoder_attention_mask=torch.ones(batch, 300, device="meta"),
            timestep=torch.full((batch,), 500, device="meta"),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )

    image = torch.randn(1, 3, 224, 224, device="meta")
    return {
        "transformer_forward_1024px": count(lambda: transformer(**transformer_inputs(1))),
        "transformer_params": sum(p.numel() for p in transformer.parameters()),
        "block_params": sum(p.numel() for p in transformer.transformer_blocks[0].parameters()),
        "vae_decode_1024px": count(lambda: vae.decode(torch.randn(1, 4, 128, 128, device="meta"))),
        "t5_xxl_encode_300_tokens": count(lambda: t5(torch.zeros(1, 300, dtype=torch.long, device="meta"))),
        "t5_xxl_encode_60_tokens": count(lambda: t5(torch.zeros(1, 60, dtype=torch.long, device="meta"))),
        "t5_xxl_params": sum(p.numel() for p in t5.parameters()),
        "vit_h_image_224px": count(lambda: clip.get_image_features(pixel_values=image)),
    }


# The paper's settings for the projection (DiT-Pruner on PixArt-Sigma-XL at 1024 px).
PAPER = dict(blocks=28, kept=24, steps=20, cfg=2, scan_prompts=400, probe_timesteps=4, train_captions=10_000,
             train_steps=20_000, train_batch=8, eval_prompts=3200, scorers=3)  # fmt: skip
GPUS = {"H100 SXM (989 TFLOP/s bf16 dense)": 989e12, "A100 (312 TFLOP/s bf16 dense)": 312e12}
MFU = 0.4  # assumed share of peak that large bf16 transformer forwards reach; stated in the doc


def project(flops: dict) -> list[dict]:
    """FLOPs of each stage at the paper's settings, from the per-forward counts, and hours on each GPU."""
    s, t = PAPER, flops["transformer_forward_1024px"]
    block_share = flops["block_params"] * s["blocks"] / flops["transformer_params"]  # of a forward's weights
    variant = t * (1 - block_share / s["blocks"])  # one block skipped
    pruned = t * (1 - block_share * (s["blocks"] - s["kept"]) / s["blocks"])
    gen = s["steps"] * s["cfg"]
    images_scan = (s["blocks"] + 1) * s["scan_prompts"]
    encode = flops["t5_xxl_encode_60_tokens"]
    rows = [
        ("score: preference (29 variants x 400 prompts)",
         s["scan_prompts"] * (encode + gen * (t + s["blocks"] * variant))
         + images_scan * (flops["vae_decode_1024px"] + flops["vit_h_image_224px"])),
        ("score: block_influence (400 prompts, 4 probes)",
         s["scan_prompts"] * (encode + gen * t + s["probe_timesteps"] * t)),
        ("distil: teacher latents for 10k captions", s["train_captions"] * (encode + gen * t)),
        ("distil: 20k steps x batch 8 (teacher fwd + student fwd/bwd)",
         s["train_steps"] * s["train_batch"] * (t + 3 * pruned)),
        ("eval: HPDv2 3200 prompts, pruned and teacher",
         s["eval_prompts"] * (encode + gen * (t + pruned)
                              + 2 * (flops["vae_decode_1024px"] + s["scorers"] * flops["vit_h_image_224px"]))),
    ]  # fmt: skip
    return [
        {"stage": name, "flops": int(f), **{gpu: f / (peak * MFU) for gpu, peak in GPUS.items()}} for name, f in rows
    ]


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def write_doc(result: dict, path: Path) -> None:
    """docs/scale.md from the rehearsal JSON: the measured table, then the projection (marked as such)."""
    settings, forwards, flops = result["settings"], result["forwards"], result["flops"]
    res, machine, params = settings["resolution"], result["machine"], result["parameters"]
    scorer = "of HPSv2's size (ViT-H-14 image tower, 1024-wide 24-layer text tower)"
    lines = [
        "# Real scale: PixArt-Sigma-XL end to end",
        "",
        f"Generated by `python benchmarks/rehearse_full_size.py` (`--report-only` rebuilds it from "
        f"`{result['json_name']}`): edit the script, not this page.",
        "",
        "## Measured: the whole recipe at PixArt-Sigma-XL's true sizes (random weights)",
        "",
        f"Machine: {machine['device_name']}, {machine['cpus']} CPU cores, torch {machine['torch']}. Settings: "
        f"{settings['dtype']}, {res} px, {settings['num_prompts']} prompts, {settings['steps']} sampler steps with "
        f"guidance 4.5 (2 transformer forwards per step), {settings['distill_steps']} distillation steps at batch 1. "
        + result.get("contention", ""),
        "",
        f"The pipeline has PixArt-Sigma-XL's transformer ({params['transformer'] / 1e6:.1f}M parameters, 28 blocks, "
        f"width 1152, 300-token captions), the SDXL VAE ({params['vae'] / 1e6:.1f}M) and a T5 encoder of T5-XXL's real "
        f"width (d_model 4096, 64 heads, d_ff 10240, 32128-token embedding) with {settings['text_encoder_layers']} of "
        f"its 24 layers ({params['text_encoder'] / 1e6:.0f}M parameters instead of 4762M), all random. The "
        f"preference scorer is a random CLIP {scorer if settings['scorer'] == 'vit-h' else 'of tiny size'}. Each "
        "stage runs as its own command, as users run it; peak memory is the resident memory of the stage's whole "
        "process tree, sampled every 0.1 s.",
        "",
        "| stage | wall | peak RSS (GiB) | written (GiB) |",
        "|---|---|---|---|",
    ]
    for row in result["stages"]:
        lines.append(
            f"| {row['stage']} | {row['seconds']:.0f} s | {_gib(row['peak_rss_bytes'])} | {_gib(row['bytes_written'])} |"
        )
    sizes = result["folder_bytes"]
    lines += [
        "",
        f"Peak memory of any stage: **{_gib(result['peak_rss_bytes'])} GiB** (the machine has 24 GiB). Folder sizes: "
        f"base pipeline {_gib(sizes['base'])} GiB; pruned, transformer only, {_gib(sizes['pruned'])} GiB; distilled "
        f"folder (transformer, one checkpoint with optimizer state, logs) {_gib(sizes['distilled'])} GiB; caches "
        f"{_gib(sizes['cache'])} GiB.",
        "",
        f"The peak is set by the {max(result['stages'], key=lambda r: r['peak_rss_bytes'])['stage']} stage. In "
        "distillation the frozen teacher, the student, its gradients and AdamW's two moments are all held (float32 "
        "here); the text encoder is loaded only to build the caches and freed before training, so with the real "
        "24-layer T5-XXL (9.5 GB in bfloat16) the cache-building phase, not training, may set the peak. Everything "
        "the recipe writes besides the model is small: importance files, reports and the card are kilobytes.",
        "",
        "`layerprune push DISTILLED --dry-run --transformer-only` lists:",
        "",
        "```",
        *[line for line in result["push_listing"] if line.startswith(("would", "  "))],
        "```",
        "",
        "## Measured: one forward",
        "",
        f"| {res} px, {settings['dtype']}, {machine['device_name']} | seconds | FLOPs | achieved |",
        "|---|---|---|---|",
    ]
    t_flops = forwards[f"transformer_forward_flops_{res}px"]
    for batch in (1, 2):
        sec = forwards[f"transformer_forward_batch{batch}_s"]
        lines.append(
            f"| transformer forward, batch {batch} | {sec:.2f} | {batch * t_flops / 1e12:.2f} T | "
            f"{batch * t_flops / sec / 1e9:.0f} GFLOP/s |"
        )
    lines.append(
        f"| T5 encoder ({forwards['text_encoder_layers']} layers, 300 tokens), per prompt | "
        f"{forwards['text_encoder_per_prompt_s']:.2f} | | |"
    )
    lines += [
        "",
        "FLOPs of one forward at full size, counted with `torch.utils.flop_counter` on the meta device (matrix "
        "products and attention, nearly all of the work):",
        "",
        "| component | FLOPs |",
        "|---|---|",
        f"| transformer forward, 1024 px, batch 1 | {flops['transformer_forward_1024px'] / 1e12:.2f} T |",
        f"| SDXL VAE decode, 1024 px | {flops['vae_decode_1024px'] / 1e12:.2f} T |",
        f"| T5-XXL encoder (24 layers, {flops['t5_xxl_params'] / 1e9:.2f}B parameters), 300 tokens | "
        f"{flops['t5_xxl_encode_300_tokens'] / 1e12:.2f} T |",
        f"| T5-XXL encoder, 60 tokens (a caption trimmed to its tokens, as the caches encode it) | "
        f"{flops['t5_xxl_encode_60_tokens'] / 1e12:.2f} T |",
        f"| ViT-H-14 image tower (HPSv2), 224 px | {flops['vit_h_image_224px'] / 1e12:.2f} T |",
        "",
        "## Projected: the paper's settings on one GPU (not measured)",
        "",
        f"Settings: 1024 px, {PAPER['steps']} sampler steps with guidance, {PAPER['blocks']} + 1 variants x "
        f"{PAPER['scan_prompts']} prompts for the preference scan, {PAPER['train_captions']:,} distillation captions, "
        f"{PAPER['train_steps']:,} steps at batch {PAPER['train_batch']} (28 -> {PAPER['kept']} blocks), HPDv2's "
        f"{PAPER['eval_prompts']} prompts with {PAPER['scorers']} scorers. Time = FLOPs / (peak x {MFU:.0%}); "
        f"{MFU:.0%} of peak is an assumption typical of large bf16 transformer work, not a measurement. Running "
        "this script with `--device cuda --dtype bfloat16 --resolution 1024` on a GPU replaces it with measured "
        "per-forward times.",
        "",
        f"| stage | FLOPs | {' | '.join(GPUS)} |",
        f"|---|---|{'---|' * len(GPUS)}",
    ]
    for row in result["projection"]:
        hours = " | ".join(f"{row[g] / 3600:.1f} h" for g in GPUS)
        lines.append(f"| {row['stage']} | {row['flops'] / 1e18:.2f} E | {hours} |")
    total = {g: sum(r[g] for r in result["projection"]) for g in GPUS}
    pruned_bytes = (flops["transformer_params"] - (PAPER["blocks"] - PAPER["kept"]) * flops["block_params"]) * 2
    lines += [
        f"| **total** | {sum(r['flops'] for r in result['projection']) / 1e18:.2f} E | "
        + " | ".join(f"**{total[g] / 3600:.1f} h**" for g in GPUS)
        + " |",
        "",
        f"Sizes at full scale in bfloat16, from the parameter counts: T5-XXL {flops['t5_xxl_params'] * 2 / 1e9:.1f} GB, "
        f"transformer {flops['transformer_params'] * 2 / 1e9:.2f} GB, pruned to {PAPER['kept']} blocks "
        f"{pruned_bytes / 1e9:.2f} GB (a `--transformer-only` upload). A whole pipeline folder is about twice as large "
        "in float32, which is why `--dtype auto` saves PixArt-Sigma in bfloat16. The text-embedding cache of 10k "
        "captions at ~60 tokens is 10k x 60 x 4096 x 2 bytes = 4.9 GB in bfloat16 (49 GB if padded to 300 tokens in "
        "float32); 10k teacher latents at 1024 px are 10k x 4 x 128 x 128 x 2 bytes = 1.3 GB.",
        "",
    ]
    # the page's GPU section is benchmarks/gpu_check.py's: kept as it is
    kept = generated_section(path, GPU_START, GPU_END)
    path.write_text("\n".join(lines) + (f"\n{kept}\n" if kept else ""))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/rehearsal", help="working folder (replaced)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--num-prompts", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="sampler steps while scoring, generating latents, evaluating")
    p.add_argument("--distill-steps", type=int, default=2)
    p.add_argument("--text-encoder-layers", type=int, default=2, help="of T5-XXL's 24 (width is real)")
    p.add_argument("--scorer", default="vit-h", choices=["vit-h", "tiny"], help="size of the random CLIP scorer")
    p.add_argument("--keep", type=int, default=24, help="blocks kept (of 28)")
    p.add_argument("--output", default=None, help="JSON (default: benchmarks/results/rehearse_full_size[_DEVICE].json)")
    p.add_argument("--doc", default=str(ROOT / "docs" / "scale.md"), help="page to write from the JSON")
    p.add_argument("--report-only", action="store_true", help="rebuild --doc from the JSON; run nothing")
    args = p.parse_args(argv)
    name = f"rehearse_full_size{'' if args.device == 'cpu' else '_' + args.device}.json"
    out = Path(args.output or ROOT / "benchmarks" / "results" / name)
    if args.report_only:
        result = json.loads(out.read_text())
        result.setdefault("flops", count_component_flops())
        result["projection"] = project(result["flops"])
        result["json_name"] = f"benchmarks/results/{out.name}"
        out.write_text(json.dumps(result, indent=2) + "\n")
        write_doc(result, Path(args.doc))
        print(f"wrote {args.doc}")
        return

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


if __name__ == "__main__":
    main()
