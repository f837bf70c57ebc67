"""Stable Diffusion 3 / 3.5: ``SD3Transformer2DModel`` (MMDiT), one stack of joint ``transformer_blocks``.

Two structural facts make a pruned SD3 loadable only with care, both handled here:

- diffusers builds the last joint block with ``context_pre_only=True`` (no context output: an
  ``AdaLayerNormContinuous`` context norm, no ``to_add_out`` / ``ff_context``). When the source's last block is
  removed, the new last block must take that structure. Its context output was read only by the removed blocks, so
  dropping the context half is exact; its context norm keeps the same scale and shift rows (``AdaLayerNormZero``
  chunks ``shift, scale, gate, ...``; ``AdaLayerNormContinuous`` chunks ``scale, shift``), so the image output is
  unchanged.
- SD3.5 lists ``dual_attention_layers`` by block index (Medium: 0..12); they are renumbered to the kept blocks.

Esser et al., Scaling Rectified Flow Transformers for High-Resolution Image Synthesis (ICML 2024).
"""

from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel

from ..pruned import PrunedTransformerMixin
from ..testing import (
    build_clip_tokenizer,
    build_flow_vae,
    build_t5_tokenizer,
    build_tiny_clip_text_encoder,
    build_tiny_t5_encoder,
)
from .base import (
    BlockStack,
    ControlNetLayout,
    ControlNetStack,
    IPAdapterLayout,
    ModelFamily,
    Piece,
    PublishedConfig,
    SingleFileLayout,
    block_count,
    cached_call_kwargs,
    fused,
    pooled_random_text,
    real_defaults,
    renamed,
    second_tensor,
)


def forward(transformer, latents, timestep, text) -> torch.Tensor:
    """Flow (velocity) prediction ``[B, C, h, w]``; ``timestep`` in 0..1000 as the pipeline passes it."""
    return transformer(
        hidden_states=latents,
        encoder_hidden_states=text["prompt_embeds"],
        pooled_projections=text["pooled_prompt_embeds"],
        timestep=timestep,
        return_dict=False,
    )[0]


def encode(pipe, prompts, max_sequence_length: int, device) -> dict[str, torch.Tensor]:
    """The three text encoders as ``StableDiffusion3Pipeline.encode_prompt`` runs them (same prompt for all)."""
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=list(prompts),
        prompt_2=None,
        prompt_3=None,
        device=device,
        do_classifier_free_guidance=False,
        max_sequence_length=max_sequence_length,
    )
    return {"prompt_embeds": embeds.cpu(), "pooled_prompt_embeds": pooled.cpu()}


call_kwargs = cached_call_kwargs({"prompt_embeds": "prompt_embeds", "pooled_prompt_embeds": "pooled_prompt_embeds"})


def prune_config(config, kept_by_stack) -> dict:
    """Renumber SD3.5's ``dual_attention_layers`` to the kept blocks' new positions."""
    dual = set(config.get("dual_attention_layers") or ())
    return {"dual_attention_layers": tuple(new for new, source in enumerate(kept_by_stack[0]) if source in dual)}


def adapt_state(state, student, source_config, kept_by_stack) -> dict:
    """Give the new last joint block the ``context_pre_only`` structure when the source's last block was removed."""
    (kept,) = kept_by_stack
    if kept[-1] == source_config["num_layers"] - 1:
        return state  # the pre-only block is kept and stays last
    prefix = f"transformer_blocks.{len(kept) - 1}."
    dim = student.inner_dim
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if rest.startswith(("attn.to_add_out.", "ff_context.", "norm2_context.")):
                continue  # the context stream's output half, which no later block reads
            if rest in ("norm1_context.linear.weight", "norm1_context.linear.bias"):
                # AdaLayerNormZero rows: shift, scale, gate, shift_mlp, scale_mlp, gate_mlp; continuous: scale, shift
                value = torch.cat([value[dim : 2 * dim], value[:dim]])
        out[key] = value
    return out


def ip_adapter_widths(config, state) -> str | None:
    """Whether an SD3 IP-Adapter fits ``config``: ``SD3IPAdapterJointAttnProcessor2_0`` maps image tokens of the
    attention width to it (``to_k_ip`` / ``to_v_ip`` without bias), RMS-normalises per head, and modulates with
    ``norm_ip`` (``2 * width`` rows); ``IPAdapterTimeImageProjection`` makes tokens of the attention width."""
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    head = int(config["attention_head_dim"])
    for key, value in state["ip_adapter"].items():
        name = key.split(".", 1)[1]
        want = {"to_k_ip.weight": (inner, inner), "to_v_ip.weight": (inner, inner), "norm_ip.linear.bias": (2 * inner,)}
        want = want.get(name, (head,) if name.startswith("norm_") and name != "norm_ip.linear.weight" else None)
        shape = tuple(value.shape)
        if name == "norm_ip.linear.weight" and shape[0] != 2 * inner:
            return f"layer {key} has {shape[0]} rows where this model (width {inner}) needs {2 * inner}"
        if want is not None and shape != want:
            return f"layer {key} has shape {list(shape)} where this model (width {inner}) needs {list(want)}"
    proj_out = state["image_proj"].get("proj_out.weight")
    if proj_out is None:
        return "its image_proj has no proj_out.weight (the IPAdapterTimeImageProjection diffusers' SD3 loader builds)"
    if proj_out.shape[0] != inner:
        return f"its image_proj makes tokens of width {proj_out.shape[0]}; this model's attention width is {inner}"
    return None


def ip_adapter_unsupported(config) -> str | None:
    # The loader gives layer i to the i-th attention processor; a dual-attention block (SD3.5 Medium) has two, so
    # layer numbers stop matching block numbers (the IP-Adapters diffusers documents are for SD3.5 Large).
    if config.get("dual_attention_layers"):
        return "SD3.5-Medium-style dual-attention blocks are not supported for IP-Adapters (diffusers' loader numbers attention processors, two per such block)"
    return None


IP_ADAPTER = IPAdapterLayout(
    stack="transformer_blocks",  # SD3Transformer2DLoadersMixin: one layer per attention processor, in block order
    layer_names=frozenset(
        {
            "norm_ip.linear.weight",
            "norm_ip.linear.bias",
            "to_k_ip.weight",
            "to_v_ip.weight",
            "norm_q.weight",
            "norm_k.weight",
            "norm_ip_k.weight",
        }
    ),
    check_widths=ip_adapter_widths,
    unsupported=ip_adapter_unsupported,
)


def original_pieces(config, keys) -> dict[str, Piece]:
    """The SD3 / SD3.5 reference checkpoint layout (``joint_blocks.N.x_block`` / ``.context_block``), the inverse of
    diffusers' ``convert_sd3_transformer_checkpoint_to_diffusers``. The last joint block is ``context_pre_only``: its
    context stream has no output projection or MLP, and its adaptive norm emits ``shift, scale`` in the original."""
    keys = set(keys)
    pieces = {"pos_embed": Piece(("pos_embed.pos_embed",))}
    pieces.update(
        renamed(
            {
                "x_embedder.proj": "pos_embed.proj",
                "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
                "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
                "context_embedder": "context_embedder",
                "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
                "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
                "final_layer.linear": "proj_out",
            },
            keys,
        )
    )
    pieces.update(fused("final_layer.adaLN_modulation.1", ["norm_out.linear"], keys, swap_halves=True))
    depth = block_count(keys, "transformer_blocks")
    for i in range(depth):
        d, x, c = f"transformer_blocks.{i}", f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
        last = i == depth - 1
        pieces.update(fused(f"{x}.attn.qkv", [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"], keys))
        pieces.update(
            fused(f"{c}.attn.qkv", [f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"], keys)
        )
        plain = {
            f"{x}.attn.ln_q": f"{d}.attn.norm_q",
            f"{x}.attn.ln_k": f"{d}.attn.norm_k",
            f"{c}.attn.ln_q": f"{d}.attn.norm_added_q",
            f"{c}.attn.ln_k": f"{d}.attn.norm_added_k",
            f"{x}.attn.proj": f"{d}.attn.to_out.0",
            f"{x}.adaLN_modulation.1": f"{d}.norm1.linear",
            f"{x}.mlp.fc1": f"{d}.ff.net.0.proj",
            f"{x}.mlp.fc2": f"{d}.ff.net.2",
        }
        if not last:
            plain.update(
                {
                    f"{c}.attn.proj": f"{d}.attn.to_add_out",
                    f"{c}.adaLN_modulation.1": f"{d}.norm1_context.linear",
                    f"{c}.mlp.fc1": f"{d}.ff_context.net.0.proj",
                    f"{c}.mlp.fc2": f"{d}.ff_context.net.2",
                }
            )
        if f"{d}.attn2.to_q.weight" in keys:  # SD3.5's dual-attention blocks
            pieces.update(fused(f"{x}.attn2.qkv", [f"{d}.attn2.to_q", f"{d}.attn2.to_k", f"{d}.attn2.to_v"], keys))
            plain.update(
                {
                    f"{x}.attn2.ln_q": f"{d}.attn2.norm_q",
                    f"{x}.attn2.ln_k": f"{d}.attn2.norm_k",
                    f"{x}.attn2.proj": f"{d}.attn2.to_out.0",
                }
            )
        pieces.update(renamed(plain, keys))
        if last:
            pieces.update(fused(f"{c}.adaLN_modulation.1", [f"{d}.norm1_context.linear"], keys, swap_halves=True))
    return pieces


def adapt_lora(state, source_config, kept_by_stack) -> dict:
    """:func:`adapt_state` for LoRA weights: the new last joint block loses the LoRA of its context-output modules
    (no later block reads them) and its ``norm1_context`` LoRA rows are reordered like the norm's weight rows."""
    (kept,) = kept_by_stack
    if kept[-1] == source_config["num_layers"] - 1:
        return state
    prefix = f"transformer_blocks.{len(kept) - 1}."
    dim = int(source_config["num_attention_heads"]) * int(source_config["attention_head_dim"])
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if rest.startswith(("attn.to_add_out.", "ff_context.", "norm2_context.")):
                continue
            if rest.startswith("norm1_context.linear.lora_B."):  # output rows: shift, scale, ... -> scale, shift
                value = torch.cat([value[dim : 2 * dim], value[:dim]])
        out[key] = value
    return out


def controlnet_sample(stack: int, block: int, blocks: int, samples: int, controlnet_config) -> int | None:
    """The residual ``SD3Transformer2DModel.forward`` adds after block ``block`` of ``blocks``: sample
    ``int(block / (blocks / samples))`` (float arithmetic, as the stock forward), none after the last block, which is
    built ``context_pre_only``."""
    if block == blocks - 1:
        return None
    return int(block / (blocks / samples))


CONTROLNET = ControlNetLayout(
    model_class="SD3ControlNetModel",
    pipeline_class="StableDiffusion3ControlNetPipeline",
    stacks=(ControlNetStack(blocks="transformer_blocks", projections="controlnet_blocks", depth_key="num_layers"),),
    sample_read=controlnet_sample,
    # AdaLayerNormZero chunks shift, scale, gate, shift_mlp, scale_mlp, gate_mlp; SD3.5's dual-attention
    # SD35AdaLayerNormZeroX adds shift2, scale2, gate2. Every ControlNet joint block has a full context stream.
    identity_gates={"norm1.linear": {6: (2, 5), 9: (2, 5, 8)}, "norm1_context.linear": {6: (2, 5)}},
    indexed_keys=("dual_attention_layers",),
)


class PrunedSD3Transformer(PrunedTransformerMixin, SD3Transformer2DModel):
    """A depth-pruned ``SD3Transformer2DModel`` (SD3 and SD3.5); config keys as :class:`PrunedPixArtTransformer`.
    LoRA through the stock class's ``PeftAdapterMixin``."""

    family = "sd3"


def build_tiny_sd3_pipeline(
    num_layers: int = 6, *, sample_size: int = 8, seed: int = 0, dual_attention_layers: tuple[int, ...] = ()
):
    """A complete tiny ``StableDiffusion3Pipeline`` (two CLIP text encoders with projection, a T5, ``AutoencoderKL``
    with 4 latent channels, ``SD3Transformer2DModel``), random weights. ``dual_attention_layers`` makes
    it SD3.5-Medium-like. Images are ``2 * sample_size`` pixels square."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    clip_tokenizer = build_clip_tokenizer()
    t5_tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = build_tiny_clip_text_encoder(len(clip_tokenizer), 16, with_projection=True)
    text_encoder_2 = build_tiny_clip_text_encoder(len(clip_tokenizer), 16, with_projection=True)
    text_encoder_3 = build_tiny_t5_encoder(len(t5_tokenizer), d_model=32)
    vae = build_flow_vae(4, seed=seed + 1, sample_size=2 * sample_size)
    torch.manual_seed(seed + 2)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=4,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,  # the T5 width; the two CLIPs' 16 + 16 are zero-padded to it
        caption_projection_dim=16,
        pooled_projection_dim=32,  # the two CLIPs' pooled projections, concatenated
        out_channels=4,
        pos_embed_max_size=sample_size,
        dual_attention_layers=tuple(dual_attention_layers),
        qk_norm="rms_norm" if dual_attention_layers else None,
    ).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=build_clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer,
    )


SD35_MEDIUM_TRANSFORMER = dict(  # stabilityai/stable-diffusion-3.5-medium
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
)


FAMILY = ModelFamily(
    name="sd3",
    title="Stable Diffusion 3 / 3.5",
    transformer_class="SD3Transformer2DModel",
    pipeline_classes=("StableDiffusion3Pipeline",),
    stacks=(
        BlockStack(attr="transformer_blocks", depth_key="num_layers", kind="joint", hidden_from_output=second_tensor),
    ),
    pruned_class=lambda: PrunedSD3Transformer,
    forward=forward,
    encode=encode,
    random_text=pooled_random_text,
    call_kwargs=call_kwargs,
    prune_config=prune_config,
    adapt_state=adapt_state,
    ip_adapter=IP_ADAPTER,
    adapt_lora=adapt_lora,
    objective="flow",
    # train_dreambooth_lora_sd3.py's defaults: logit-normal noise levels (Esser et al.'s best), EDM preconditioning,
    # and the scheduler's shift (3.0), which its noise-level table carries
    caption_images=True,  # train_distill encodes image-caption datasets with the family's VAE (image_data.vae_latents)
    training_objective=dict(weighting_scheme="logit_normal", precondition_outputs=1, timestep_shift="scheduler"),
    text_keys=("prompt_embeds", "pooled_prompt_embeds"),
    real_size=lambda config: (config.get("joint_attention_dim") or 0) >= 4096,  # T5-XXL conditioning
    defaults=real_defaults(max_sequence_length=256, num_inference_steps=40, guidance_scale=4.5),
    hub_ids=("stabilityai/stable-diffusion-3.5-medium", "stabilityai/stable-diffusion-3-medium-diffusers"),
    references=("sd3",),
    controlnet=CONTROLNET,
    single_file=SingleFileLayout(
        pieces=original_pieces,
        converter="convert_sd3_transformer_checkpoint_to_diffusers",
        gguf_arch="sd3",
        # ComfyUI's MMDiT takes its block count from the width (hidden size / 64), not from the keys
        comfyui="ComfyUI cannot load a depth-pruned SD3 file: it builds as many joint blocks as the width implies "
        "(24 for SD3.5 Medium) whatever the file holds, so blocks are missing and the last kept block has the wrong "
        "shape. Use the diffusers snippet above.",
    ),
    hub_tag="sd3",
    citations={
        "sd3": "Esser et al., Scaling Rectified Flow Transformers for High-Resolution Image Synthesis, ICML 2024."
    },
    tiny_pipeline=build_tiny_sd3_pipeline,
    published=PublishedConfig(
        hub_id="stabilityai/stable-diffusion-3.5-medium",
        title="SD3.5 Medium",
        config=SD35_MEDIUM_TRANSFORMER,
        vae_factor=8,
        text_tokens=333,  # 77 CLIP tokens + 256 T5 tokens
    ),
)

__all__ = ["FAMILY", "PrunedSD3Transformer", "build_tiny_sd3_pipeline", "SD35_MEDIUM_TRANSFORMER"]
