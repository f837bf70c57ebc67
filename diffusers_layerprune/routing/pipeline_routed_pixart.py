"""Prompt-routed PixArt-Sigma for diffusers' ``custom_pipeline`` loader, without diffusers-layerprune installed.

diffusers-layerprune writes this file into every routed pipeline folder (beside ``routing.json`` and
``router.safetensors``), so that stock diffusers can run the routed model:

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(
        "user/routed-model", custom_pipeline="pipeline_routed_pixart", trust_remote_code=True
    )
    out = pipe(prompts, generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))])
    out.images, out.codes        # images in the order of the prompts, the code each prompt ran with

``trust_remote_code=True`` means: diffusers executes this file, as any Python code, with your permissions. Read it
first; it imports only torch, numpy, safetensors, huggingface_hub and diffusers. Without ``custom_pipeline`` the
same folder loads as the ordinary full-depth ``PixArtSigmaPipeline``.

It must stay self-contained (one file, no import of diffusers_layerprune). Its :func:`run_routed` is the one routed
generation loop: ``diffusers_layerprune.routing.RoutedPixArtSigmaPipeline`` runs through it too, adding the checks
this file leaves out (the router's weight fingerprint against the transformer) and budget-enforced routing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import PixArtSigmaPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

ROUTING_FORMAT = "diffusers-layerprune/routing"


class _PromptRouter(nn.Module):
    # the layout of diffusers_layerprune.routing.router.PromptRouter (its safetensors keys load here unchanged)
    def __init__(self, text_dim, num_codes, hidden_dim=128, embed_dim=32, temperature=0.1):
        super().__init__()
        self.temperature = temperature
        self.norm = nn.LayerNorm(text_dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))
        self.centres = nn.Parameter(torch.zeros(num_codes, embed_dim))

    def forward(self, pooled):
        points = F.normalize(self.mlp(self.norm(pooled.float())), dim=-1)
        return points @ F.normalize(self.centres, dim=-1).T / self.temperature


@dataclass
class RoutedPixArtOutput(BaseOutput):
    """``images`` in the order of the prompts; ``codes``: the code each prompt ran with."""

    images: list | np.ndarray | torch.Tensor
    codes: list


class PixArtSigmaRoutedPipeline(PixArtSigmaPipeline):
    """``PixArtSigmaPipeline`` whose depth is chosen per prompt: each prompt is routed to a code (a set of blocks),
    the prompts sharing a code run as one batch with the other blocks skipped, and images return in input order."""

    def load_routing(self, where: str | None = None, revision: str | None = None):
        """Read ``routing.json`` and ``router.safetensors`` from ``where`` (a folder or Hub repo id; default: where
        this pipeline was loaded from). Called on first use."""
        from safetensors.torch import load_file

        where = str(where or self.config._name_or_path)
        if os.path.isdir(where):
            record_path, weights_path = os.path.join(where, "routing.json"), os.path.join(where, "router.safetensors")
        else:
            from huggingface_hub import hf_hub_download

            record_path = hf_hub_download(where, "routing.json", revision=revision)
            weights_path = hf_hub_download(where, "router.safetensors", revision=revision)
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
        if record.get("format") != ROUTING_FORMAT or record.get("format_version", 0) > 1:
            raise ValueError(f"{record_path} is not a routing file this pipeline reads (format version 1)")
        depth = len(self.transformer.transformer_blocks)
        if record["num_layers"] != depth:
            raise ValueError(f"{record_path} routes a {record['num_layers']}-block model, this one has {depth} blocks")
        router = _PromptRouter(**record["router"])
        router.load_state_dict(load_file(weights_path), strict=True)
        self._routing = (record, router.eval().to(self.transformer.device))
        return self._routing

    @property
    def routing(self):
        return getattr(self, "_routing", None) or self.load_routing()

    @torch.no_grad()
    def route(self, prompt_embeds: torch.Tensor, prompt_attention_mask: torch.Tensor) -> list:
        """The code of each prompt from its T5 embeddings ``[B, L, D]`` and mask ``[B, L]`` (masked mean, then the
        nearest code centre, less the record's depth penalty per block a code runs)."""
        record, router = self.routing
        mask = prompt_attention_mask.to(prompt_embeds.device, torch.float32).unsqueeze(-1)
        pooled = (prompt_embeds.float() * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        router.to(self.transformer.device)  # the pipeline may have moved since the router was read
        scores = router(pooled.to(self.transformer.device)).cpu()
        penalty = float(record.get("depth_penalty") or 0.0)  # routers over given codes (elastic depths) have one
        if penalty:
            depths = torch.tensor([float(len(code["kept_layers"])) for code in record["codes"]], dtype=torch.float64)
            scores = scores.double() - penalty * depths
        return scores.argmax(-1).tolist()

    @torch.no_grad()
    def __call__(
        self,
        prompt,
        code=None,
        generator=None,
        latents=None,
        height=None,
        width=None,
        max_sequence_length: int = 300,
        output_type: str = "pil",
        **kwargs,
    ) -> RoutedPixArtOutput:
        """Route every prompt (or use ``code`` for all) and generate each group of prompts sharing a code as one batch
        of the stock pipeline with the code's other blocks skipped. The initial noise of the whole batch is drawn
        first, in input order (``generator``: one, or one per prompt), so an image does not depend on its group."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if kwargs.get("num_images_per_prompt", 1) != 1:
            raise ValueError("num_images_per_prompt is not supported by the routed pipeline; repeat the prompt")
        if isinstance(generator, list) and len(generator) != len(prompts):
            raise ValueError(f"{len(generator)} generators for {len(prompts)} prompts: give one per prompt")
        record, _ = self.routing
        embeds, mask, _, _ = self.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            device=self.transformer.device,
            clean_caption=False,
            max_sequence_length=max_sequence_length,
        )
        if code is None:
            codes = self.route(embeds, mask)
        elif isinstance(code, int) and 0 <= code < len(record["codes"]):
            codes = [code] * len(prompts)
        else:
            raise ValueError(f"code {code!r} does not exist: this router has codes 0..{len(record['codes']) - 1}")
        images = run_routed(
            self,
            lambda **call: PixArtSigmaPipeline.__call__(self, **call),
            embeds,
            mask,
            codes,
            [c["kept_layers"] for c in record["codes"]],
            generator=generator,
            latents=latents,
            height=height,
            width=width,
            max_sequence_length=max_sequence_length,
            output_type=output_type,
            **kwargs,
        )
        return RoutedPixArtOutput(images=images, codes=codes)


def run_routed(pipe, stock_call, embeds, mask, codes, kept, *, generator, latents, height, width, **kwargs):
    """The routed generation of both routed pipelines (this file's, and diffusers-layerprune's
    ``RoutedPixArtSigmaPipeline``, which calls this function): the initial noise of the whole batch is drawn first,
    in input order, exactly as the stock pipeline draws it (``generator``: one, or one per prompt); then each group
    of prompts sharing a code runs as one batch of ``stock_call`` (the stock pipeline's ``__call__``) with the
    transformer's block list holding only ``kept[code]``; the images return in input order.

    ``embeds`` / ``mask``: T5 embeddings ``[B, L, D]`` and masks ``[B, L]`` of the prompts; ``codes``: one code per
    prompt; other keyword arguments go to ``stock_call``."""
    device = pipe.transformer.device
    height = height or pipe.transformer.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.transformer.config.sample_size * pipe.vae_scale_factor
    if latents is None:
        shape = (
            len(codes),
            pipe.transformer.config.in_channels,
            int(height) // pipe.vae_scale_factor,
            int(width) // pipe.vae_scale_factor,
        )
        latents = randn_tensor(shape, generator=generator, device=device, dtype=embeds.dtype)
    images = [None] * len(codes)
    blocks = pipe.transformer.transformer_blocks
    for k in sorted(set(codes)):
        index = [i for i, c in enumerate(codes) if c == k]
        keep = set(kept[k])
        group_generator = [generator[i] for i in index] if isinstance(generator, list) else generator
        pipe.transformer.transformer_blocks = nn.ModuleList(b for i, b in enumerate(blocks) if i in keep)
        try:
            out = stock_call(
                prompt_embeds=embeds[index],
                prompt_attention_mask=mask[index],
                latents=latents[index],
                generator=group_generator,
                height=height,
                width=width,
                **kwargs,
            ).images
        finally:
            pipe.transformer.transformer_blocks = blocks
        for j, i in enumerate(index):
            images[i] = out[j]
    if isinstance(images[0], torch.Tensor):
        return torch.stack(images)
    if isinstance(images[0], np.ndarray):
        return np.stack(images)
    return images
