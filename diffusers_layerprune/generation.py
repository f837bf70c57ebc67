"""Generation from cached text conditioning, for every family: the one place a pipeline is called on embeddings.

Scans, evaluation, teacher-latent caches and sparsity calibration all generate through here, so a prompt's image
depends only on its embedding, its seed and the sampler settings, never on batch size or which command asked.
"""

from __future__ import annotations

import torch

from .families import family_of_pipeline
from .families.base import expand, rows, to_device


def generate_from_embeddings(
    pipe,
    embeds: torch.Tensor,
    masks: torch.Tensor,
    negative: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    seeds,
    num_inference_steps: int,
    guidance_scale: float,
    resolution: int,
    max_sequence_length: int,
    batch_size: int = 8,
    output_type: str = "pt",
    progress=None,
) -> torch.Tensor:
    """Generate from precomputed prompt embeddings ``[N, L, D]`` / masks ``[N, L]`` (PixArt, Sana: the families
    whose conditioning is an embedding and a mask); prompt ``i`` uses ``seeds[i]``. See
    :func:`generate_from_conditioning`, which this calls, for every family."""
    text = {"prompt_embeds": embeds, "prompt_attention_mask": masks}
    neg = None if negative is None else {"prompt_embeds": negative[0], "prompt_attention_mask": negative[1]}
    return generate_from_conditioning(
        pipe,
        text,
        neg,
        seeds=seeds,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        resolution=resolution,
        max_sequence_length=max_sequence_length,
        batch_size=batch_size,
        output_type=output_type,
        progress=progress,
    )


def generate_from_conditioning(
    pipe,
    text: dict[str, torch.Tensor],
    negative: dict[str, torch.Tensor] | None,
    *,
    seeds,
    num_inference_steps: int,
    guidance_scale: float,
    resolution: int,
    max_sequence_length: int,
    batch_size: int = 8,
    output_type: str = "pt",
    progress=None,
) -> torch.Tensor:
    """Generate from cached text conditioning (``ModelFamily.encode``'s dict, ``N`` prompts); prompt ``i`` uses
    ``seeds[i]``. The pipeline's call arguments come from the family (``ModelFamily.call_kwargs``).

    Each image's initial noise depends on its own seed only, so results do not change with ``batch_size``.
    ``negative`` is the encoded empty prompt (one row), used when ``guidance_scale > 1``.
    Returns images ``[N, 3, R, R]`` in [0, 1] (``output_type="pt"``) or latents (``"latent"``), float32 on the CPU.
    ``progress(n)`` is called after each batch.
    """
    family = family_of_pipeline(pipe)
    device, dtype = pipe.transformer.device, pipe.transformer.dtype
    total = len(text["prompt_embeds"])
    out = []
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        batch = to_device(rows(text, start, stop), device, dtype)
        neg = None
        if guidance_scale > 1 and negative is not None:
            neg = to_device(expand(negative, stop - start), device, dtype)
        result = pipe(
            **family.call_kwargs(batch, neg, resolution, max_sequence_length),
            num_inference_steps=num_inference_steps,
            **family.guidance_kwargs(guidance_scale, pipe.transformer.config),
            generator=[torch.Generator().manual_seed(int(s)) for s in seeds[start:stop]],
            output_type=output_type,
        ).images
        result = result.float().cpu()
        out.append(result.clamp(0, 1) if output_type == "pt" else result)
        if progress is not None:
            progress(stop - start)
    return torch.cat(out)
