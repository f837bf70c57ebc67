"""Cost of distillation: seconds per KD step against its floor and against plain fine-tuning, measured in one run,
and peak training memory of full fine-tuning versus LoRA.

A PixArt-architecture teacher (random weights; cost does not depend on values) is pruned by a third. Three steps of
the same student on the same batch, each ending with backward and an AdamW step:

- ``kd``: what ``train_distill`` runs (``distill.kd_step_losses``): teacher forward keeping its paired blocks'
  outputs, student forward keeping its own, task + output + variance + feature losses.
- ``floor``: the least a KD step can cost: a teacher forward without hooks, then a plain student step.
- ``plain``: the student alone on the task loss (fine-tuning).

Timings are interleaved (kd, floor, plain, kd, ...) and summarised by the median; ``kd / floor`` is the overhead of
distillation itself. Memory is measured per configuration in its own subprocess: on CUDA the allocator's peak, on
CPU the peak resident set size sampled every millisecond, minus what the process held before the first step.

    python benchmarks/bench_train.py                 # CPU-sized model
    python benchmarks/bench_train.py --device cuda --width 1152 --layers 28 --resolution 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

# As the package does (diffusers_layerprune/__init__.py), before torch loads: OpenMP threads that spin while waiting
# made every step several times slower on a CPU shared with other jobs, and unevenly so (noise in the ratios).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from toybench import write_result  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def build(args):
    from diffusers import PixArtTransformer2DModel

    from diffusers_layerprune import PrunedPixArtTransformer

    torch.manual_seed(0)
    teacher = PixArtTransformer2DModel(
        num_layers=args.layers,
        num_attention_heads=args.width // 64,
        attention_head_dim=64,
        cross_attention_dim=args.width,
        caption_channels=args.caption_channels,
        sample_size=args.resolution // 8,
        in_channels=4,
        out_channels=8,
    ).to(args.device)
    keep = args.layers - args.layers // 3
    kept = sorted({round(i * (args.layers - 1) / (keep - 1)) for i in range(keep)})
    student = PrunedPixArtTransformer.from_transformer(teacher, kept_layers=kept)
    teacher.requires_grad_(False).eval()
    g = torch.Generator().manual_seed(0)
    latent = args.resolution // 8
    batch = dict(
        latents=torch.randn(args.batch_size, 4, latent, latent, generator=g).to(args.device),
        embeds=torch.randn(args.batch_size, args.text_tokens, args.caption_channels, generator=g).to(args.device),
        noise=torch.randn(args.batch_size, 4, latent, latent, generator=g).to(args.device),
        timesteps=torch.randint(0, 1000, (args.batch_size,), generator=g).to(args.device),
    )
    return teacher, student, batch


def make_step(mode, teacher, student, batch, lora_rank):
    """``(step, trainable parameters)`` of one mode: ``kd``, ``floor``, ``plain`` or ``lora`` (KD with LoRA)."""
    from diffusers_layerprune.distill import KDWeights, block_pairs, kd_step_losses

    if mode == "lora":
        from peft import LoraConfig

        student.requires_grad_(False)
        student.add_adapter(
            LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        )
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    pairs = block_pairs(student, teacher)
    weights = KDWeights()
    cond = dict(
        encoder_hidden_states=batch["embeds"],
        timestep=batch["timesteps"],
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )
    noisy = batch["latents"] + batch["noise"]

    def step():
        if mode in ("kd", "lora"):
            loss = kd_step_losses(student, teacher, noisy, cond, batch["noise"], pairs, weights)["loss"]
        else:
            if mode == "floor":
                with torch.no_grad():
                    teacher(noisy, **cond)
            out = student(noisy, **cond).sample
            loss = torch.nn.functional.mse_loss(out[:, :4], batch["noise"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, sum(p.numel() for p in params)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(args) -> tuple[dict, dict]:
    """Median seconds per step of kd, floor and plain, interleaved, in this process (full fine-tuning): wall-clock,
    and CPU time of this process (on a CPU shared with other jobs the wall clock also counts their use of the cores;
    the CPU time counts the work the step does)."""
    import copy

    teacher, student, batch = build(args)
    steps = {
        mode: make_step(mode, teacher, copy.deepcopy(student), batch, args.lora_rank)[0]
        for mode in ("kd", "floor", "plain")
    }
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    for _ in range(args.repeats):
        for name, step in steps.items():
            sync(args.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            sync(args.device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()}


def peak_memory(args) -> dict:
    """Run inside a subprocess: peak extra memory (bytes) of a few KD steps in --memory-mode."""
    import psutil

    teacher, student, batch = build(args)
    step, trainable = make_step(args.memory_mode, teacher, student, batch, args.lora_rank)
    process = psutil.Process()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = process.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.001)

    sampler = None if args.device.startswith("cuda") else threading.Thread(target=sample, daemon=True)
    if sampler:
        sampler.start()
    for _ in range(3):
        step()
    sync(args.device)
    stop.set()
    if sampler:
        sampler.join()
    used = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else peak[0]) - base
    return {"peak_extra_bytes": used, "trainable_parameters": trainable}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=384, help="multiple of 64 (heads of 64)")
    p.add_argument("--caption-channels", type=int, default=512)
    p.add_argument("--text-tokens", type=int, default=32)
    p.add_argument("--resolution", type=int, default=128, help="pixels (latent = resolution / 8)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--output", default="benchmarks/results/bench_train.json")
    p.add_argument("--memory-mode", choices=["kd", "lora"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.memory_mode:  # child process
        print(json.dumps(peak_memory(args)))
        return

    seconds, cpu_seconds = time_steps(args)
    memory = {}
    for mode in ("kd", "lora"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--memory-mode", mode]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        memory["full" if mode == "kd" else "lora"] = json.loads(out.strip().splitlines()[-1])

    over_floor, over_plain = seconds["kd"] / seconds["floor"], seconds["kd"] / seconds["plain"]
    cpu_over_floor, cpu_over_plain = cpu_seconds["kd"] / cpu_seconds["floor"], cpu_seconds["kd"] / cpu_seconds["plain"]
    mem_ratio = memory["lora"]["peak_extra_bytes"] / max(1, memory["full"]["peak_extra_bytes"])
    print(
        f"student pruned from {args.layers} blocks (width {args.width}), batch {args.batch_size}, "
        f"{args.resolution}px, {args.device}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved"
    )
    print(f"{'step':<44}{'wall s':>10}{'CPU s':>10}")
    rows = (
        ("plain fine-tuning (student, task loss)", "plain"),
        ("floor (teacher forward + plain step)", "floor"),
        ("KD (output + variance + feature losses)", "kd"),
    )
    for label, key in rows:
        print(f"{label:<44}{seconds[key]:>10.3f}{cpu_seconds[key]:>10.3f}")
    print(
        f"KD / floor: x{over_floor:.3f} wall, x{cpu_over_floor:.3f} CPU; KD / plain: x{over_plain:.2f} wall, x{cpu_over_plain:.2f} CPU"
    )
    print(f"{'KD peak extra memory':<44}{'MiB':>10}   trainable params")
    for name in ("full", "lora"):
        m = memory[name]
        print(f"{name:<44}{m['peak_extra_bytes'] / 2**20:>10.1f}   {m['trainable_parameters']:,}")
    print(f"LoRA / full peak memory: {mem_ratio:.2f}")
    result = dict(
        benchmark="bench_train",
        settings={k: v for k, v in vars(args).items() if k != "memory_mode"},
        seconds_per_step=seconds,
        cpu_seconds_per_step=cpu_seconds,
        kd_over_floor=over_floor,
        kd_over_plain=over_plain,
        kd_over_floor_cpu=cpu_over_floor,
        kd_over_plain_cpu=cpu_over_plain,
        memory=memory,
        lora_over_full_memory=mem_ratio,
        machine=dict(platform=platform.platform(), threads=torch.get_num_threads(), torch=torch.__version__),
    )
    write_result(args.output, result)


if __name__ == "__main__":
    main()
