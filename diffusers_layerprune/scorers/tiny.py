"""Tiny, randomly initialised CLIP scorers built in code, offline, for tests and benchmarks.

The tokenizer is a real ``CLIPTokenizer`` (byte-level BPE, ``</w>`` word ends, lower-casing) whose merges spell
whole words of a small vocabulary; any other printable ASCII text still encodes, character by character. As in the
real CLIP vocabulary, ``<|startoftext|>`` and ``<|endoftext|>`` have the two highest ids and padding uses
``<|endoftext|>``, so pooling at the first end-of-text token and open_clip's ``argmax(input_ids)`` pick the same
position.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

DEFAULT_WORDS: tuple[str, ...] = tuple(
    "a an the of on at in with and small large big tiny red green blue yellow white black orange purple "
    "circle square triangle cross star top bottom left right center middle background photo painting".split()
)


def build_clip_tokenizer(words: Sequence[str] = DEFAULT_WORDS):
    """A ``CLIPTokenizer`` with one token per word of ``words`` (plus single characters), built without download."""
    from transformers import CLIPTokenizer

    alphabet = [chr(c) for c in range(33, 127)]  # printable ASCII maps to itself in CLIP's byte-level alphabet
    vocab: dict[str, int] = {}
    for piece in alphabet + [c + "</w>" for c in alphabet]:
        vocab[piece] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(w.lower() for w in words):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            if (pieces[0], pieces[1]) not in merges:
                merges.append((pieces[0], pieces[1]))
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_clip_config(
    tokenizer,
    *,
    vision_width: int = 32,
    vision_layers: int = 2,
    text_width: int = 32,
    text_layers: int = 2,
    heads: int = 4,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = 16,
    max_length: int = 77,
):
    """A small ``CLIPConfig`` laid out like open_clip's ViT-H-14 (GELU, eps 1e-5, MLP ratio 4), sized to ``tokenizer``."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=text_width,
            intermediate_size=4 * text_width,
            num_hidden_layers=text_layers,
            num_attention_heads=heads,
            max_position_embeddings=max_length,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=4 * vision_width,
            num_hidden_layers=vision_layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
        ),
        projection_dim=projection_dim,
    )


def build_tiny_clip(seed: int = 0, words: Sequence[str] = DEFAULT_WORDS, **config_kwargs):
    """``(CLIPModel, CLIPTokenizer)`` with random weights; ``config_kwargs`` go to :func:`tiny_clip_config`."""
    from transformers import CLIPModel

    tokenizer = build_clip_tokenizer(words)
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(tokenizer, **config_kwargs)).eval()
    return model, tokenizer


def save_tiny_clip_folder(
    path: str | os.PathLike, *, seed: int = 0, scorer_config: dict | None = None, **config_kwargs
) -> Path:
    """Write a tiny CLIP scorer folder: model (safetensors), tokenizer, ``preprocessor_config.json``.

    ``scorer_config`` (e.g. ``{"score": "cosine"}``) is written as ``scorer_config.json`` when given.
    """
    path = Path(path)
    model, tokenizer = build_tiny_clip(seed, **config_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    size = model.config.vision_config.image_size
    preprocessor = {
        "size": {"shortest_edge": size},
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
    }
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    if scorer_config is not None:
        (path / "scorer_config.json").write_text(json.dumps(scorer_config, indent=2))
    return path
