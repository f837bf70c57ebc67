"""Images/s of a preference scan (ImportanceScan) versus a naive scan, in one run, on a tiny PixArt-Sigma pipeline.

The naive scan is what one writes first: for every variant, deep-copy the pipeline, delete the block from the copy,
and call the pipeline with the prompt strings (so the text encoder runs again for every variant). The scan encodes
each prompt once, skips blocks in place (no copies) and reuses the same per-prompt seeds. Both generate the same
images (checked: the preference values agree), so the ratio is pure overhead removed.

The tiny pipeline's text encoder is small; a real PixArt-Sigma T5-XXL makes re-encoding far more expensive, so the
ratio measured here is a lower bound for real models. Methods alternate over ``--repeats`` and the median is
reported, so machine-load drift hits both alike.

    python benchmarks/bench_scan.py                       # 12 blocks, 8 prompts, 4 steps on CPU
    python benchmarks/bench_scan.py --text-encoder-layers 8 --num-layers 28
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from toybench import render, write_result  # benchmarks/ is on sys.path when run as a script

from diffusers_layerprune.blocks import get_blocks
from diffusers_layerprune.importance import ImportanceScan, ScanSettings, compute_importance
from diffusers_layerprune.scorers import load_scorer
from diffusers_layerprune.scorers.tiny import save_tiny_clip_folder
from diffusers_layerprune.testing import build_tiny_pixart_pipeline

PROMPTS = [
    "a small red circle at the top left",
    "a large blue square in the center",
    "a green triangle at the bottom right",
    "a yellow star on a black background",
    "a white cross at the top right",
    "an orange circle at the bottom left",
    "a purple square in the middle",
    "a tiny green star at the top",
]


def naive_scan(pipe, prompts, scorer, settings: ScanSettings) -> list[float]:
    """Preference drop per block the slow way: copy the pipeline per variant and re-encode the prompts."""

    def scores(model) -> torch.Tensor:
        images = render(model, prompts, settings, [settings.seed + i for i in range(len(prompts))])
        return scorer(images, prompts)

    full = scores(copy.deepcopy(pipe))
    drops = []
    for block in range(len(get_blocks(pipe.transformer))):
        variant = copy.deepcopy(pipe)
        blocks = variant.transformer.transformer_blocks
        variant.transformer.transformer_blocks = nn.ModuleList([b for i, b in enumerate(blocks) if i != block])
        drops.append(float((full - scores(variant)).mean()))
    return drops


def fast_scan(pipe, prompts, scorer, settings: ScanSettings) -> list[float]:
    scan = ImportanceScan(pipe, prompts, settings, scorer=scorer, show_progress=False)
    return compute_importance("preference", scan).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-layers", type=int, default=12, help="transformer blocks of the tiny pipeline")
    parser.add_argument("--text-encoder-layers", type=int, default=2, help="T5 layers of the tiny pipeline")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a shared box)")
    parser.add_argument("--output", default="benchmarks/results/bench_scan_cpu_tiny.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = build_tiny_pixart_pipeline(args.num_layers)
    if args.text_encoder_layers != 2:
        from transformers import T5Config, T5EncoderModel

        config = T5Config(**{**pipe.text_encoder.config.to_dict(), "num_layers": args.text_encoder_layers})
        torch.manual_seed(0)
        pipe = type(pipe)(**{**pipe.components, "text_encoder": T5EncoderModel(config).eval()})
    pipe.set_progress_bar_config(disable=True)
    prompts = (PROMPTS * (args.num_prompts // len(PROMPTS) + 1))[: args.num_prompts]
    with tempfile.TemporaryDirectory() as tmp:
        scorer = load_scorer(save_tiny_clip_folder(Path(tmp) / "tinyclip"))
    resolution = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    settings = ScanSettings(
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        resolution=resolution,
        max_sequence_length=16,
        batch_size=args.num_prompts,
    )
    images = (args.num_layers + 1) * args.num_prompts

    times: dict[str, list[float]] = {"naive": [], "scan": []}
    values = {}
    for _ in range(args.repeats):
        for name, fn in (("naive", naive_scan), ("scan", fast_scan)):
            start = time.perf_counter()
            values[name] = fn(pipe, prompts, scorer, settings)
            times[name].append(time.perf_counter() - start)
    max_diff = max(abs(a - b) for a, b in zip(values["naive"], values["scan"], strict=True))
    median = {name: statistics.median(t) for name, t in times.items()}
    rate = {name: images / median[name] for name in median}
    ratio = rate["scan"] / rate["naive"]

    print(f"{args.num_layers} blocks, {args.num_prompts} prompts, {args.steps} steps, guidance {args.guidance}: "
          f"{images} images per scan, median of {args.repeats}")  # fmt: skip
    print(f"{'method':<8} {'seconds':>9} {'images/s':>9}")
    for name in ("naive", "scan"):
        print(f"{name:<8} {median[name]:>9.3f} {rate[name]:>9.1f}")
    print(f"speed-up scan / naive: {ratio:.2f}x   (max |difference| of the preference values: {max_diff:.2e})")

    result = {
        "benchmark": "bench_scan",
        "settings": vars(args) | {"images_per_scan": images, "resolution": resolution},
        "seconds": times,
        "median_seconds": median,
        "images_per_second": rate,
        "ratio_scan_over_naive": ratio,
        "max_abs_difference_of_values": max_diff,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__},
    }
    write_result(args.output, result)


if __name__ == "__main__":
    main()
