"""Convert an open_clip CLIP state dict (e.g. the HPSv2 checkpoints, ViT-H-14) to transformers ``CLIPModel`` keys.

open_clip's residual blocks keep attention as ``nn.MultiheadAttention`` with one fused ``in_proj`` for q, k and v;
transformers keeps separate ``q_proj``/``k_proj``/``v_proj``. open_clip stores its projections as ``x @ proj``
matrices (``[width, embed_dim]``) where transformers uses ``nn.Linear`` weights (``[embed_dim, width]``).
Everything else is a rename.
"""

from __future__ import annotations

import re

import torch

from ..errors import LayerPruneError

# Buffers open_clip may have saved that are rebuilt by transformers (the causal mask).
_IGNORED_KEYS = {"attn_mask", "text.attn_mask"}

_BLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "attn.out_proj": "self_attn.out_proj",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def vit_h_14_config():
    """The ``CLIPConfig`` of open_clip's ViT-H-14 (the HPSv2 / HPSv2.1 / PickScore backbone).

    open_clip builds ViT-H-14 with ``nn.GELU`` (not OpenAI's QuickGELU) and LayerNorm eps 1e-5.
    """
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            max_position_embeddings=77,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
        ),
        projection_dim=1024,
    )


def _num_blocks(keys, prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    ids = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(ids) + 1 if ids else 0


def convert_open_clip_state_dict(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Map an open_clip state dict to the keys and layouts of ``transformers.CLIPModel(config)``.

    Args:
        state_dict: open_clip keys (``visual.conv1.weight``, ``transformer.resblocks.0.attn.in_proj_weight``, ...),
            optionally prefixed with ``module.`` (DDP checkpoints).
        config: the target ``CLIPConfig``; its layer counts and sizes must match the checkpoint.

    Returns:
        A new dict of contiguous tensors for ``CLIPModel.load_state_dict`` (strict).

    Raises:
        LayerPruneError: keys missing or left over (not a plain open_clip ViT CLIP), or shapes that do not match
            ``config``.
    """
    src = {k.removeprefix("module."): v for k, v in state_dict.items()}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in src:
            raise LayerPruneError(f"checkpoint is not an open_clip ViT CLIP state dict: key {key!r} is missing")
        used.add(key)
        return src[key]

    out: dict[str, torch.Tensor] = {}

    def blocks(src_prefix: str, dst_prefix: str, expected: int, tower: str) -> None:
        found = _num_blocks(src, src_prefix)
        if found != expected:
            raise LayerPruneError(
                f"checkpoint {tower} tower has {found} blocks but the config asks for {expected}; pass a clip_config "
                "that matches the checkpoint"
            )
        for i in range(found):
            s, d = f"{src_prefix}{i}.", f"{dst_prefix}{i}."
            for name, (q, k, v) in (
                ("weight", take(s + "attn.in_proj_weight").chunk(3, dim=0)),
                ("bias", take(s + "attn.in_proj_bias").chunk(3, dim=0)),
            ):
                out[d + f"self_attn.q_proj.{name}"] = q
                out[d + f"self_attn.k_proj.{name}"] = k
                out[d + f"self_attn.v_proj.{name}"] = v
            for old, new in _BLOCK_RENAMES.items():
                for name in ("weight", "bias"):
                    out[d + f"{new}.{name}"] = take(s + f"{old}.{name}")

    vision, text = config.vision_config, config.text_config
    out["vision_model.embeddings.patch_embedding.weight"] = take("visual.conv1.weight")
    out["vision_model.embeddings.class_embedding"] = take("visual.class_embedding")
    out["vision_model.embeddings.position_embedding.weight"] = take("visual.positional_embedding")
    for name in ("weight", "bias"):
        out[f"vision_model.pre_layrnorm.{name}"] = take(f"visual.ln_pre.{name}")
        out[f"vision_model.post_layernorm.{name}"] = take(f"visual.ln_post.{name}")
    blocks("visual.transformer.resblocks.", "vision_model.encoder.layers.", vision.num_hidden_layers, "vision")
    out["visual_projection.weight"] = take("visual.proj").t()

    out["text_model.embeddings.token_embedding.weight"] = take("token_embedding.weight")
    out["text_model.embeddings.position_embedding.weight"] = take("positional_embedding")
    for name in ("weight", "bias"):
        out[f"text_model.final_layer_norm.{name}"] = take(f"ln_final.{name}")
    blocks("transformer.resblocks.", "text_model.encoder.layers.", text.num_hidden_layers, "text")
    out["text_projection.weight"] = take("text_projection").t()
    out["logit_scale"] = take("logit_scale").reshape(())

    leftover = sorted(set(src) - used - _IGNORED_KEYS)
    if leftover:
        shown = ", ".join(leftover[:5]) + (" ..." if len(leftover) > 5 else "")
        raise LayerPruneError(
            f"checkpoint has {len(leftover)} keys an open_clip ViT CLIP does not ({shown}); "
            "this converter handles plain ViT image towers with class-token pooling only"
        )
    _check_shapes(out, config)
    return {k: v.contiguous() for k, v in out.items()}


def _check_shapes(converted: dict[str, torch.Tensor], config) -> None:
    from transformers import CLIPModel

    # A meta-device model costs no memory and gives every expected shape, whatever the architecture size.
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in CLIPModel(config).state_dict().items()}
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs config {expected[k]}"
        for k, v in converted.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    missing = sorted(set(expected) - set(converted))
    if bad or missing:
        detail = "; ".join(bad[:3] + [f"missing {k}" for k in missing[:3]])
        raise LayerPruneError(f"checkpoint does not fit the CLIPConfig ({detail}); pass the matching clip_config")
