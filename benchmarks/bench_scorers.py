"""Scoring throughput: the batched tensor path of ``HPSv2Scorer`` versus a per-image PIL loop.

The loop does what ``hpsv2.score`` does for a list of image files: open one PNG with PIL, letterbox it with PIL
(bicubic resize of the longest side to 224, black padding), normalise, tokenize the prompt, run the model on that
one pair, repeat. The batched path takes the images as one float tensor (as a VAE decode returns them) and scores
``--batch-size`` pairs per forward pass. Both use the same model object in the same run.

The model has random weights: throughput does not depend on their values. On CPU the default is a small ViT
(width 256, 6 layers, patch 14, 224 px) so that a 2-core machine finishes in about a minute; ``--vit-h`` uses the
real ViT-H-14 size (for a GPU, with ``--dtype float16``).

    nice -n 10 python -m benchmarks.bench_scorers          # from the repository root
    python -m benchmarks.bench_scorers --device cuda --dtype float16 --vit-h --num-images 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffusers_layerprune.scorers import HPSv2Scorer, vit_h_14_config
from diffusers_layerprune.scorers.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from diffusers_layerprune.scorers.tiny import DEFAULT_WORDS, build_clip_tokenizer, tiny_clip_config

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--num-images", type=int, default=48)
    p.add_argument("--image-size", type=int, default=512, help="side of the generated square images, pixels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each path; the fastest counts")
    p.add_argument("--vit-h", action="store_true", help="full ViT-H-14 size (about 1B parameters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None, help="JSON path; default benchmarks/results/...")
    return p.parse_args()


def build_model(args, tokenizer, dtype):
    from transformers import CLIPModel

    if args.vit_h:
        config = vit_h_14_config()
    else:
        config = tiny_clip_config(
            tokenizer,
            vision_width=256,
            vision_layers=6,
            text_width=256,
            text_layers=4,
            heads=4,
            image_size=224,
            patch_size=14,
            projection_dim=256,
        )
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = CLIPModel(config)
    return model.to(dtype).eval(), config


def make_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random images (upsampled coarse noise): compress and decode like generated pictures, unlike pure noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 32, size // 32, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def pil_letterbox(image: Image.Image, size: int) -> torch.Tensor:
    """open_clip's ResizeMaxSize + ToTensor + Normalize, with PIL only (what hpsv2's preprocess_val computes)."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    if (nh, nw) != (h, w):
        image = image.resize((nw, nh), Image.BICUBIC)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(image, ((size - nw) // 2, (size - nh) // 2))
    x = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def per_image_loop(scorer: HPSv2Scorer, paths: list[Path], prompts: list[str], size: int) -> torch.Tensor:
    scores = []
    for path, prompt in zip(paths, prompts, strict=True):
        with Image.open(path) as im:
            pixels = pil_letterbox(im, size)
        image_embeds = scorer.embed_pixels(pixels.to(scorer.device))
        text_embeds = scorer.embed_ids(scorer.input_ids([prompt]))
        scores.append(scorer.score_embeddings(image_embeds, text_embeds))
    return torch.cat(scores)


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    dtype = getattr(torch, args.dtype)
    tokenizer = build_clip_tokenizer()
    model, config = build_model(args, tokenizer, dtype)
    scorer = HPSv2Scorer(model, tokenizer, batch_size=args.batch_size, name="random-weights")
    size = config.vision_config.image_size

    words = list(DEFAULT_WORDS)
    rng = np.random.default_rng(args.seed)
    prompts = [" ".join(rng.choice(words, size=8)) for _ in range(args.num_images)]
    images_cpu = make_images(args.num_images, args.image_size, args.seed)
    images = images_cpu.to(args.device)

    with tempfile.TemporaryDirectory(prefix="bench-scorers-") as tmp:
        paths = []
        for i, im in enumerate(images_cpu):
            path = Path(tmp) / f"{i:05d}.png"
            Image.fromarray(im.mul(255).round().byte().permute(1, 2, 0).numpy()).save(path)
            paths.append(path)

        # Warm-up (allocator, kernels, tokenizer caches) for both paths before timing either.
        scorer(images[:2], prompts[:2])
        per_image_loop(scorer, paths[:2], prompts[:2], size)

        # Alternating runs, best of each: on a shared machine, load from other jobs only ever slows a run down.
        loop_times, batch_times = [], []
        for _ in range(args.repeats):
            loop_scores, seconds = timed(lambda: per_image_loop(scorer, paths, prompts, size), args.device)
            loop_times.append(seconds)
            batch_scores, seconds = timed(lambda: scorer(images, prompts), args.device)
            batch_times.append(seconds)
        loop_s, batch_s = min(loop_times), min(batch_times)

    n = args.num_images
    result = {
        "benchmark": "bench_scorers",
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "model": "ViT-H-14 (random weights)" if args.vit_h else "small ViT w256 L6 p14 (random weights)",
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "num_images": n,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "per_image_pil": {
            "seconds": round(loop_s, 3),
            "images_per_s": round(n / loop_s, 2),
            "all_seconds": [round(t, 3) for t in loop_times],
        },
        "batched_tensor": {
            "seconds": round(batch_s, 3),
            "images_per_s": round(n / batch_s, 2),
            "all_seconds": [round(t, 3) for t in batch_times],
        },
        "speedup": round(loop_s / batch_s, 2),
        # PNG quantisation and PIL's uint8 resize make the loop's inputs differ slightly from the tensor path's.
        "max_abs_score_diff": float((loop_scores - batch_scores).abs().max()),
        "torch": torch.__version__,
    }
    print(f"{'path':<28}{'seconds':>10}{'images/s':>12}")
    print(f"{'per-image PIL loop':<28}{loop_s:>10.2f}{n / loop_s:>12.2f}")
    print(f"{'batched tensor (bs=' + str(args.batch_size) + ')':<28}{batch_s:>10.2f}{n / batch_s:>12.2f}")
    print(
        f"speed-up x{result['speedup']}  |  {result['model']}, {result['parameters_m']}M params, {args.device} "
        f"{args.dtype}, {n} images {args.image_size}px  |  max |score diff| {result['max_abs_score_diff']:.2e}"
    )

    out = args.output or RESULTS / f"bench_scorers_{args.device.split(':')[0]}_{'vith' if args.vit_h else 'small'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
