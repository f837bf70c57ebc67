"""Disk and memory of the text-embedding cache at PixArt-Sigma's real text width, for two corpus sizes.

A randomly initialised ``T5EncoderModel`` with T5-XXL's layer shape (d_model 4096, 64 heads of 64, d_ff 10240,
gated-GELU as in T5 v1.1, vocabulary 32128) but only ``--layers`` layers (default 1: the cache's size and memory do
not depend on depth, only the encoding time does) encodes synthetic captions at ``max_sequence_length`` 300 into
``data.text_embeddings_dataset``. Each corpus size runs in a fresh process, which reports:

* bytes per caption on disk (the whole cache folder) against the padded float32 layout the cache replaces
  (300 x 4096 x 4 bytes of embedding + 300 x 8 bytes of int64 mask per caption, what the previous cache stored);
* the peak resident-memory growth of the build: the kernel's high-water mark (``VmHWM``) is reset just before the
  build (``/proc/self/clear_refs``) and read after it, minus the resident size at the reset (model loaded);
* the build time.

Targets (issue 12): on disk <= 10% of padded float32 per caption; peak growth at the largest size <= 1.25x that at
the smallest (memory does not grow with the number of captions). The first size also checks, on its first
``--check`` captions, that encoding at the batch's longest caption matches the pipeline's 300-token encoding.

Captions are deterministic: word counts 5-80 drawn from a mixture of a COCO-like (10.5 +- 2.5 words) and a
DiffusionDB-like (log-normal, median 30 words) distribution; the words come from a generated vocabulary and a
word-level T5 tokenizer (``testing.build_t5_tokenizer``), so tokens = words + 1. Real T5 SentencePiece uses about
1.3-1.5 tokens per English word: bytes per caption scale linearly with tokens, so the table also reports tokens.

    python benchmarks/bench_cache.py                      # 1000 and 4000 captions, 1 layer (~13 min on 2 cores)
    python benchmarks/bench_cache.py --counts 200 800 --layers 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LENGTH = 300
WIDTH = 4096
PADDED_FP32_BYTES = LENGTH * WIDTH * 4 + LENGTH * 8  # embedding + int64 attention mask, per caption

COMMON = "a an the of on at in with and by from under over near is two three small large red blue green".split()


def vocabulary(size: int = 3000) -> list[str]:
    """``size`` distinct pronounceable words (deterministic), plus common English function words."""
    rng = np.random.default_rng(1)
    onsets, vowels = list("bdfghklmnprstvz"), ["a", "e", "i", "o", "u", "ai", "ou"]
    words = dict.fromkeys(COMMON)
    while len(words) < size:
        n = int(rng.integers(1, 4))
        words["".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(n)) + rng.choice(["", "n", "s", "r"])] = (
            None
        )
    return list(words)


def captions(n: int, words: list[str]) -> list[str]:
    """``n`` captions of 5-80 words; the first ``m`` captions are the same for every ``n >= m``."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            count = rng.normal(10.5, 2.5)  # COCO-like
        else:
            count = rng.lognormal(np.log(30), 0.6)  # DiffusionDB-like
        count = int(np.clip(round(count), 5, 80))
        out.append(" ".join(rng.choice(words, size=count)))
    return out


def status(field: str) -> int:
    """A /proc/self/status field in bytes."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def build_pipeline(layers: int):
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline
    from transformers import T5Config, T5EncoderModel

    from diffusers_layerprune.testing import build_t5_tokenizer, build_tiny_transformer

    tokenizer = build_t5_tokenizer(vocabulary())
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=32128,
        d_model=WIDTH,
        d_kv=64,
        d_ff=10240,
        num_layers=layers,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    text_encoder = T5EncoderModel(config).eval()
    # The cache only touches the tokenizer and text encoder; a real pipeline object keeps the caption preprocessing
    # the same as PixArt's.
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4).eval()
    transformer = build_tiny_transformer(2, caption_channels=WIDTH)
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )


def child(args) -> dict:
    """One corpus size in this (fresh) process; returns the measurements."""
    import torch

    from diffusers_layerprune.data import (
        decode_cached,
        encode_prompts,
        iter_prompt_embeddings,
        text_embeddings_dataset,
    )

    torch.set_num_threads(args.threads)
    texts = captions(args.child, vocabulary())
    pipe = build_pipeline(args.layers)
    lengths = [min(len(ids), LENGTH) for ids in pipe.tokenizer([t.lower() for t in texts])["input_ids"]]
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    before = status("VmRSS")
    start = time.perf_counter()
    dataset = text_embeddings_dataset(
        pipe,
        texts,
        cache_dir=args.cache_dir,
        model_id=f"random-t5-{args.layers}layer",
        max_sequence_length=LENGTH,
        cache_dtype=args.cache_dtype,
        batch_size=args.batch_size,
        progress=False,
    )
    seconds = time.perf_counter() - start
    peak_growth = status("VmHWM") - before
    folder = Path(dataset.cache_files[0]["filename"]).parent
    disk = sum(p.stat().st_size for p in folder.iterdir())
    result = {
        "captions": args.child,
        "layers": args.layers,
        "cache_dtype": args.cache_dtype,
        "batch_size": args.batch_size,
        "mean_tokens": float(np.mean(lengths)),
        "max_tokens": int(max(lengths)),
        "disk_bytes": disk,
        "disk_bytes_per_caption": disk / args.child,
        "padded_fp32_bytes_per_caption": PADDED_FP32_BYTES,
        "disk_fraction_of_padded_fp32": disk / args.child / PADDED_FP32_BYTES,
        "rss_before_bytes": before,
        "peak_rss_growth_bytes": peak_growth,
        "build_seconds": seconds,
        "captions_per_second": args.child / seconds,
    }
    if args.check:
        # Exactness at real width: the pipeline's 300-token encoding against encoding at the batch's longest caption.
        subset = texts[: args.check]
        padded, mask = encode_prompts(pipe, subset, max_sequence_length=LENGTH, batch_size=8)
        trimmed = list(iter_prompt_embeddings(pipe, subset, max_sequence_length=LENGTH, batch_size=8))
        stored = [dataset[i]["prompt_embeds"] for i in range(len(subset))]
        diff = max((t - padded[i, : len(t)]).abs().max().item() for i, t in enumerate(trimmed))
        scale = max(padded[i, : len(t)].abs().max().item() for i, t in enumerate(trimmed))
        # relative error of the stored values where rounding, not the ~1e-6 encoder noise, dominates (|x| >= 1e-2)
        rounding = 0.0
        for i, s in enumerate(stored):
            reference = padded[i, : len(s)]
            big = reference.abs() >= 1e-2
            error = (decode_cached(s).float() - reference).abs()[big] / reference.abs()[big]
            rounding = max(rounding, error.max().item())
        result["exactness"] = {
            "captions": len(subset),
            "mask_lengths_equal": [len(t) for t in trimmed] == mask.sum(1).tolist(),
            "max_abs_diff_trimmed_vs_padded_fp32": diff,
            "max_abs_embedding": scale,
            "max_relative_error_stored_vs_padded_fp32_where_abs_ge_0.01": rounding,
        }
    return result


def run_child(n: int, args, cache_dir: str, check: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--cache-dir", cache_dir, "--check", str(check)]
    cmd += ["--layers", str(args.layers), "--batch-size", str(args.batch_size), "--cache-dtype", args.cache_dtype]
    cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"child for {n} captions failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[1000, 4000])
    p.add_argument("--layers", type=int, default=1, help="T5 encoder layers (T5-XXL has 24)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cache-dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--check", type=int, default=16, help="captions compared with the 300-token path (first size)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "bench_cache.json"))
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args)))
        return

    rows = []
    for i, n in enumerate(args.counts):
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache_dir:
            rows.append(run_child(n, args, cache_dir, args.check if i == 0 else 0))
        r = rows[-1]
        print(f"{n} captions: {r['build_seconds']:.0f} s, peak RSS growth {r['peak_rss_growth_bytes'] / 2**20:.0f} MiB")

    mib = 2**20
    print(f"\nT5 of real width, {args.layers} layer(s), max_sequence_length {LENGTH}, cache {args.cache_dtype}")
    print("| captions | mean tokens | disk / caption | padded fp32 / caption | ratio | peak RSS growth | build time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['captions']} | {r['mean_tokens']:.1f} | {r['disk_bytes_per_caption'] / 1e3:.0f} kB "
            f"| {PADDED_FP32_BYTES / 1e6:.2f} MB | {100 * r['disk_fraction_of_padded_fp32']:.1f}% "
            f"| {r['peak_rss_growth_bytes'] / mib:.0f} MiB | {r['build_seconds']:.0f} s |"
        )
    growth = rows[-1]["peak_rss_growth_bytes"] / rows[0]["peak_rss_growth_bytes"]
    worst_disk = max(r["disk_fraction_of_padded_fp32"] for r in rows)
    print(
        f"\npeak RSS growth {rows[-1]['captions']} vs {rows[0]['captions']} captions: {growth:.2f}x (target <= 1.25x)"
    )
    print(f"disk per caption: {100 * worst_disk:.1f}% of padded float32 (target <= 10%)")
    check = rows[0].get("exactness")
    if check:
        print(
            f"exactness on {check['captions']} captions: trimmed vs 300-token fp32 encoding max |diff| "
            f"{check['max_abs_diff_trimmed_vs_padded_fp32']:.2e} (max |value| {check['max_abs_embedding']:.2f}); "
            f"stored {args.cache_dtype} max relative error {check['max_relative_error_stored_vs_padded_fp32_where_abs_ge_0.01']:.2e}"
            " (values >= 0.01)"
        )
    import torch

    out = {
        "benchmark": "bench_cache",
        "settings": {
            "layers": args.layers,
            "d_model": WIDTH,
            "num_heads": 64,
            "d_ff": 10240,
            "vocab_size": 32128,
            "max_sequence_length": LENGTH,
            "cache_dtype": args.cache_dtype,
            "batch_size": args.batch_size,
            "threads": args.threads,
        },
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__},
        "rows": rows,
        "peak_rss_growth_ratio": growth,
        "targets": {
            "disk_fraction_max": 0.10,
            "disk_fraction_measured": worst_disk,
            "rss_growth_ratio_max": 1.25,
            "rss_growth_ratio_measured": growth,
            "met": worst_disk <= 0.10 and growth <= 1.25,
        },
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
