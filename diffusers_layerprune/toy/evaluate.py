"""Measure the toy world: judge on clean renders, the teacher (full and with each single block skipped), the scorer.

    python -m diffusers_layerprune.toy.evaluate --output docs/toy_world_eval.json

Everything uses fixed seeds: held-out caption ``i`` with seed ``s`` is rendered and generated from seed ``s`` (the
pipeline gets one generator per image), so the numbers do not depend on the batch size.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, toy_generation_kwargs, toy_scorer_path, world
from .judge import judge


@torch.no_grad()
def generate(
    pipe,
    pairs: Sequence[tuple[world.Attributes, int]],
    *,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    batch_size: int = 108,
) -> torch.Tensor:
    """Generate one image per (attributes, seed) pair: ``[N, 3, 32, 32]`` in [0, 1]."""
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        kwargs = toy_generation_kwargs(
            [s for _, s in chunk], num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, pipe=pipe
        )
        out.append(pipe([a.caption() for a, _ in chunk], **kwargs).images.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def scorer_scores(model, tokenizer, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """Cosine between each image and its own caption under the toy scorer: ``[N]``."""
    from .train_scorer import image_embeddings, text_embeddings

    return (image_embeddings(model, images) * text_embeddings(model, tokenizer, list(texts))).sum(dim=1)


def evaluate_judge_on_renders(n_seeds: int = 2) -> dict:
    """Judge accuracy on clean renders of every caption of the world with seeds ``1000..1000+n_seeds-1``."""
    pairs = [(a, 1000 + s) for a in world.split_attributes("all") for s in range(n_seeds)]
    images = world.render_batch([a for a, _ in pairs], [s for _, s in pairs])
    return judge(images, [a for a, _ in pairs]).to_dict()


def markdown_table(result: dict) -> str:
    """The per-block table of ``docs/toy_world.md`` from an evaluation result (accuracies in %)."""
    head = "| variant | colour | position | shape | size | overall | toy score |\n|---|---|---|---|---|---|---|"
    rows = [head]

    def row(name: str, entry: dict) -> str:
        acc = entry["accuracy"]
        cells = [f"{100 * acc[k]:.1f}" for k in ("colour", "position", "shape", "size", "overall")]
        return f"| {name} | " + " | ".join(cells) + f" | {entry['scorer_mean_score']:.4f} |"

    rows.append(row("full teacher", result["teacher"]))
    for entry in result.get("skip_one_block", []):
        rows.append(row(f"skip block {entry['block']}", entry))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="pipeline short name or folder (default: the shipped toy)")
    parser.add_argument("--scorer", default=str(toy_scorer_path()))
    parser.add_argument("--output", default="docs/toy_world_eval.json")
    parser.add_argument("--num_seeds", type=int, default=1, help="seeds per held-out caption (216 captions)")
    parser.add_argument("--num_inference_steps", type=int, default=DEFAULT_NUM_INFERENCE_STEPS)
    parser.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (smoke tests)")
    parser.add_argument("--no_skips", action="store_true", help="skip the per-block table")
    parser.add_argument("--num_threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    start = time.time()

    from transformers import AutoTokenizer, CLIPModel

    from ..blocks import num_blocks, skip_blocks
    from ..modeling import load_pipeline
    from .train_scorer import heldout_top1

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    scorer = CLIPModel.from_pretrained(args.scorer).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.scorer)

    pairs = world.evaluation_set(args.num_seeds)[: args.limit]
    attrs = [a for a, _ in pairs]
    texts = [a.caption() for a in attrs]
    settings = dict(num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale)

    result: dict = {
        "model": args.model,
        "num_images": len(pairs),
        "num_heldout_captions": len(world.split_attributes("heldout")),
        "seeds": list(range(args.num_seeds)),
        **settings,
    }
    if args.limit is None:
        result["judge_on_renders"] = evaluate_judge_on_renders()
        result["scorer_heldout_top1"] = heldout_top1(scorer, tokenizer, n_seeds=args.num_seeds)
    renders = world.render_batch(attrs, [s for _, s in pairs])
    result["scorer_mean_score_renders"] = float(scorer_scores(scorer, tokenizer, renders, texts).mean())
    print(json.dumps(result, indent=1), flush=True)

    images = generate(pipe, pairs, **settings)
    teacher = judge(images, attrs).to_dict()
    teacher["scorer_mean_score"] = float(scorer_scores(scorer, tokenizer, images, texts).mean())
    result["teacher"] = teacher
    print("teacher", json.dumps(teacher), f"{time.time() - start:.0f}s", flush=True)

    if not args.no_skips:
        result["skip_one_block"] = []
        for block in range(num_blocks(pipe.transformer)):  # every stack (toy-flux: 4 double, then 8 single)
            with skip_blocks(pipe.transformer, [block]):
                skipped = generate(pipe, pairs, **settings)
            row = {"block": block, **judge(skipped, attrs).to_dict()}
            row["scorer_mean_score"] = float(scorer_scores(scorer, tokenizer, skipped, texts).mean())
            result["skip_one_block"].append(row)
            print("skip", block, json.dumps(row), f"{time.time() - start:.0f}s", flush=True)

    result["seconds"] = time.time() - start
    print(markdown_table(result))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
