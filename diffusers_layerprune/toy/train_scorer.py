"""Train the toy preference scorer: a tiny ``transformers`` ``CLIPModel`` on the world's (render, caption) pairs.

The folder it writes is a standard local CLIP folder, loaded offline by ``CLIPModel.from_pretrained``,
``AutoTokenizer.from_pretrained`` (a word-level ``tokenizers`` tokenizer, BOS ... EOS, padded with EOS, as OpenAI
CLIP does) and ``CLIPImageProcessor.from_pretrained``. Score = cosine of the normalised image and text embeddings,
like HPS. Training: each image's logits against the embeddings of *all* training captions (scaled by the learned
temperature), cross-entropy to its own caption, so one batch never holds a duplicate caption as a false negative.
Images are augmented (dimming, blur, noise) so that imperfect generations are scored sensibly.

    python -m diffusers_layerprune.toy.train_scorer                     # writes assets/scorer
    python -m diffusers_layerprune.toy.train_scorer --smoke --output_dir /tmp/scorer
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .paths import assets_dir
from .train_judge import degrade
from .training import optimizer_step, parse_training_args, training_parser

SCORER_MAX_LENGTH = 16
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]


def build_tokenizer():
    """A word-level tokenizer over the world's vocabulary in CLIP's layout: ``<|startoftext|> words
    <|endoftext|>``, padded with ``<|endoftext|>``, which has the highest id.

    ``CLIPTextModel`` pools the hidden state at the first ``eos_token_id`` (or at the arg-max id when the config's
    ``eos_token_id`` is 2, the legacy rule); making EOS the highest id and writing it into the config keeps both
    rules on the same token.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    special = ["<|unk|>", "<|startoftext|>"]
    vocab = {token: i for i, token in enumerate([*special, *world.vocabulary(), "<|endoftext|>"])}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|unk|>",
        model_max_length=SCORER_MAX_LENGTH,
    )


def build_clip(tokenizer, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=SCORER_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    vision = dict(
        image_size=world.IMAGE_SIZE,
        patch_size=4,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_channels=3,
        hidden_act="gelu",
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))


def build_image_processor():
    from transformers import CLIPImageProcessor

    size = world.IMAGE_SIZE
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=3,
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        do_convert_rgb=True,
    )


def normalise(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 32, 32]`` in [0, 1] -> the processor's normalisation (what ``pixel_values`` holds)."""
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def text_embeddings(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Normalised text embeddings ``[N, 64]``."""
    tokens = tokenizer(texts, padding="max_length", max_length=SCORER_MAX_LENGTH, truncation=True, return_tensors="pt")
    out = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    out = out.pooler_output if hasattr(out, "pooler_output") else out
    return F.normalize(out, dim=-1)


def image_embeddings(model, images: torch.Tensor) -> torch.Tensor:
    """Normalised image embeddings ``[B, 64]`` of ``[B, 3, 32, 32]`` images in [0, 1]."""
    out = model.get_image_features(pixel_values=normalise(images))
    out = out.pooler_output if hasattr(out, "pooler_output") else out
    return F.normalize(out, dim=-1)


@torch.no_grad()
def heldout_top1(model, tokenizer, n_seeds: int = 1) -> float:
    """Fraction of held-out renders whose own caption ranks first among all 576 captions of the world."""
    model.eval()
    all_attrs = world.split_attributes("all")
    index = {a: i for i, a in enumerate(all_attrs)}
    texts = text_embeddings(model, tokenizer, [a.caption() for a in all_attrs])
    pairs = world.evaluation_set(n_seeds)
    images = world.render_batch([a for a, _ in pairs], [s for _, s in pairs])
    best = (image_embeddings(model, images) @ texts.T).argmax(dim=1)
    target = torch.tensor([index[a] for a, _ in pairs])
    return float((best == target).float().mean())


def main(argv: list[str] | None = None) -> dict:
    parser = training_parser(__doc__, output_dir=str(assets_dir() / "scorer"), max_steps=1500, batch_size=128)
    args = parse_training_args(parser, argv, smoke=(2, 8))

    tokenizer = build_tokenizer()
    model = build_clip(tokenizer, args.seed).train()
    train_attrs = world.split_attributes("train")
    train_texts = [a.caption() for a in train_attrs]
    tokens = tokenizer(train_texts, padding="max_length", max_length=SCORER_MAX_LENGTH, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=args.max_steps)
    generator = torch.Generator().manual_seed(args.seed)
    start, losses = time.time(), []
    for step in range(args.max_steps):
        rng = np.random.default_rng([args.seed, step])
        picks = rng.integers(0, len(train_attrs), size=args.batch_size)
        seeds = rng.integers(0, 2**31 - 1, size=args.batch_size)
        images = world.render_batch([train_attrs[int(i)] for i in picks], [int(s) for s in seeds])
        keep = (torch.rand(args.batch_size, 1, 1, 1, generator=generator) < 0.5).float()
        images = keep * images + (1 - keep) * degrade(images, generator)
        text = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        text = F.normalize(text.pooler_output if hasattr(text, "pooler_output") else text, dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image_embeddings(model, images) @ text.T
        loss = F.cross_entropy(logits, torch.from_numpy(picks).long())
        optimizer_step(loss, optimizer, schedule, losses, step, args.max_steps, start)

    top1 = heldout_top1(model, tokenizer)
    out = Path(args.output_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    build_image_processor().save_pretrained(out)
    result = {
        "steps": args.max_steps,
        "final_loss": float(np.mean(losses[-100:])),
        "heldout_top1": top1,
        "seconds": time.time() - start,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / "training_log.json").write_text(json.dumps({**vars(args), **result}, indent=1) + "\n")
    print(result)
    return result


if __name__ == "__main__":
    main()
