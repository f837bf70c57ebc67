"""Transformer forward latency of depth-pruned PixArt-Sigma-XL versus the unpruned model, in one run.

Weights are random (speed does not depend on their values); the config is PixArt-Sigma-XL-2's (28 blocks,
1152 wide, T5-XXL 4096-d captions of 300 tokens). Pruned models share the full model's storage, so memory stays at
one model. Models are timed interleaved (full, pruned, pruned, full, ...) and summarised by the median, so drift in
machine load hits all of them alike. Ideal speed-up = blocks total / blocks kept; the gap to it is the cost of the
parts every depth keeps (patch embedding, caption projection, timestep embedding, final layer).

    python benchmarks/bench_inference.py                      # 256 px on CPU, pruned to 24 and 20 blocks
    python benchmarks/bench_inference.py --device cuda --dtype bfloat16 --resolution 1024 --batch-size 2

Other families (Sana 1.6B, SD3.5 Medium, Flux.1-dev; see benchmarks/bench_families.py and docs/families.md):

    python benchmarks/bench_inference.py --family flux        # per-block costs at the real widths, CPU, 256 px
    python benchmarks/bench_inference.py --report-only        # docs/families.md tables from the results JSON
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from toybench import write_result  # benchmarks/ is on sys.path when run as a script

from diffusers_layerprune import PrunedPixArtTransformer

PIXART_SIGMA_XL = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    cross_attention_dim=1152,
    caption_channels=4096,
    sample_size=128,
    patch_size=2,
    interpolation_scale=2,
    use_additional_conditions=False,
)
CAPTION_TOKENS = 300  # PixArt-Sigma's max_sequence_length


def build_full(dtype: torch.dtype, device: str):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(**PIXART_SIGMA_XL).to(device).eval()
    return model if dtype == torch.float32 else model.to(dtype)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    import sys

    if "--family" in sys.argv or "--report-only" in sys.argv:  # the other families: bench_families.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_families import main as families_main

        families_main()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256, help="image side in pixels (latent = resolution / 8)")
    parser.add_argument("--batch-size", type=int, default=2, help="2 = one prompt with classifier-free guidance")
    parser.add_argument("--depths", default="24,20", help="pruned depths to compare with the full 28 blocks")
    parser.add_argument("--repeats", type=int, default=7, help="timed forwards per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="benchmarks/results/bench_inference.json")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    full = build_full(dtype, args.device)
    total = full.config.num_layers
    models = {total: full}
    for depth in (int(d) for d in args.depths.split(",")):
        # Evenly spread kept blocks: which blocks are kept does not change the cost, only how many.
        kept = sorted({round(i * (total - 1) / (depth - 1)) for i in range(depth)})
        models[depth] = PrunedPixArtTransformer.from_transformer(full, kept_layers=kept, copy_weights=False)

    latent = args.resolution // 8
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(args.batch_size, 4, latent, latent, generator=g).to(args.device, dtype),
        encoder_hidden_states=torch.randn(args.batch_size, CAPTION_TOKENS, 4096, generator=g).to(args.device, dtype),
        timestep=torch.full((args.batch_size,), 500, device=args.device),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )

    times: dict[int, list[float]] = {d: [] for d in models}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for model in models.values():
                model(**inputs)
        for _ in range(args.repeats):
            for depth, model in models.items():
                sync(args.device)
                start = time.perf_counter()
                model(**inputs)
                sync(args.device)
                times[depth].append(time.perf_counter() - start)

    full_ms = statistics.median(times[total]) * 1e3
    rows = []
    for depth in models:
        ms = statistics.median(times[depth]) * 1e3
        speedup, ideal = full_ms / ms, total / depth
        rows.append(
            dict(
                blocks=depth,
                latency_ms=round(ms, 2),
                latency_ratio=round(ms / full_ms, 4),
                ideal_latency_ratio=round(depth / total, 4),
                speedup=round(speedup, 4),
                ideal_speedup=round(ideal, 4),
                speedup_vs_ideal=round(speedup / ideal, 4),
                min_ms=round(min(times[depth]) * 1e3, 2),
                max_ms=round(max(times[depth]) * 1e3, 2),
            )
        )

    header = f"{'blocks':>6} {'latency ms':>11} {'ratio':>7} {'ideal':>7} {'speed-up':>9} {'ideal':>7} {'of ideal':>9}"
    print(
        f"PixArt-Sigma-XL transformer forward, {args.resolution}px, batch {args.batch_size}, {args.dtype}, "
        f"{args.device} ({torch.get_num_threads()} threads), median of {args.repeats}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['blocks']:>6} {r['latency_ms']:>11.1f} {r['latency_ratio']:>7.3f} {r['ideal_latency_ratio']:>7.3f} "
            f"{r['speedup']:>9.3f} {r['ideal_speedup']:>7.3f} {100 * r['speedup_vs_ideal']:>8.1f}%"
        )
    result = dict(
        benchmark="bench_inference",
        config=PIXART_SIGMA_XL,
        settings=vars(args),
        machine=dict(
            platform=platform.platform(),
            processor=platform.processor(),
            threads=torch.get_num_threads(),
            torch=torch.__version__,
            gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        ),
        rows=rows,
        raw_seconds={str(d): t for d, t in times.items()},
    )
    write_result(args.output, result)


if __name__ == "__main__":
    main()
