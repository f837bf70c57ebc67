"""Input-activation norms for Wanda, captured with forward hooks during one calibration pass.

Per pruned ``nn.Linear`` and input feature ``j``: ``||X_j||_2 = sqrt(sum over calibration tokens of x_j^2)``.

The pass (:func:`collect_input_norms`) runs the dense model once:

- **text encoder**: the calibration prompts are encoded as the pipeline encodes them (``max_sequence_length``,
  padded); only real tokens count (the attention mask's ones), so padding, which PixArt-Sigma's cross-attention
  masks out, does not dilute the norms of a 300-token T5 context.
- **transformer**: the prompts are generated with the pipeline's sampler for ``num_inference_steps`` steps
  (``output_type="latent"``, no VAE decode), classifier-free guidance included; every token the transformer
  processes counts: image tokens at every step, and for the caption projection and cross-attention keys/values the
  padded caption tokens as the pipeline feeds them.

Norms come from the dense model for every layer at once (one pass). The Wanda paper recomputes each block's inputs
on the already-pruned earlier blocks; the one-pass variant costs one generation per prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..blocks import removing
from .layers import sparsifiable_layers


class InputNormRecorder:
    """Accumulates ``sum x_j^2`` and the token count for each layer while its hooks are registered."""

    def __init__(self, layers: dict[str, nn.Linear]) -> None:
        self.layers = layers
        self.sumsq = {name: torch.zeros(layer.in_features, dtype=torch.float64) for name, layer in layers.items()}
        self.tokens = dict.fromkeys(layers, 0)
        self.token_mask: torch.Tensor | None = None  # [batch, length] of the current forward, when known

    def add(self, name: str, x: torch.Tensor) -> None:
        x = x.detach()
        mask = self.token_mask
        if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            x = x[mask.to(x.device).bool()]
        x = x.reshape(-1, x.shape[-1]).float()
        self.sumsq[name] += x.pow(2).sum(0).double().cpu()
        self.tokens[name] += x.shape[0]

    def norms(self) -> dict[str, torch.Tensor]:
        """``{name: ||X||_2 per input feature [in_features]}`` (float32)."""
        return {name: value.sqrt().float() for name, value in self.sumsq.items()}


@contextmanager
def record_input_norms(
    layers: dict[str, nn.Linear], *, mask_source: nn.Module | None = None
) -> Iterator[InputNormRecorder]:
    """Hook ``layers`` for the duration of the block; the recorder holds their input norms afterwards.

    ``mask_source``: a module called with an ``attention_mask`` keyword (the text encoder); inside its forward,
    inputs shaped ``[batch, length, features]`` count only the tokens the mask marks.
    """
    recorder = InputNormRecorder(layers)
    handles = []
    for name, layer in layers.items():

        def pre_hook(module, args, name=name):
            recorder.add(name, args[0])

        handles.append(layer.register_forward_pre_hook(pre_hook))
    if mask_source is not None:

        def set_mask(module, args, kwargs):
            recorder.token_mask = kwargs.get("attention_mask")

        def clear_mask(module, args, kwargs, output):
            recorder.token_mask = None

        handles.append(mask_source.register_forward_pre_hook(set_mask, with_kwargs=True))
        handles.append(mask_source.register_forward_hook(clear_mask, with_kwargs=True))
    with removing(handles):
        yield recorder


@dataclass
class InputNorms:
    """Input norms of every pruned layer of the calibrated components, and how they were measured.

    Attributes:
        norms: ``{component: {layer name: [in_features] float32}}``.
        tokens: ``{component: {layer name: tokens counted}}``.
        settings: the calibration record written to ``sparsity.json`` (prompts, steps, guidance, seed, ...).
    """

    norms: dict[str, dict[str, torch.Tensor]]
    tokens: dict[str, dict[str, int]]
    settings: dict = field(default_factory=dict)


def collect_input_norms(
    pipe,
    components: Sequence[str],
    prompts,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    resolution: int,
    max_sequence_length: int,
    seed: int = 0,
    batch_size: int = 8,
    include_final_projection: bool = False,
) -> InputNorms:
    """One calibration pass over ``prompts`` (a ``PromptSet`` or a list of strings); see the module docstring.

    Prompt ``i`` is generated from seed ``seed + i``.
    """
    from ..data import PromptSet, encode_prompts
    from ..modeling import generate_from_embeddings

    prompt_set = prompts if isinstance(prompts, PromptSet) else PromptSet(list(prompts), "given")
    texts = prompt_set.prompts
    norms: dict[str, dict[str, torch.Tensor]] = {}
    tokens: dict[str, dict[str, int]] = {}
    with torch.no_grad():
        te_layers = (
            sparsifiable_layers(pipe.text_encoder, "text_encoder", include_final_projection=include_final_projection)
            if "text_encoder" in components
            else {}
        )
        with record_input_norms(te_layers, mask_source=pipe.text_encoder if te_layers else None) as te:
            embeds, masks = encode_prompts(pipe, texts, max_sequence_length=max_sequence_length, batch_size=batch_size)
        if te_layers:
            norms["text_encoder"], tokens["text_encoder"] = te.norms(), dict(te.tokens)
        if "transformer" in components:
            negative = None
            if guidance_scale > 1:
                negative = encode_prompts(pipe, [""], max_sequence_length=max_sequence_length)
            layers = sparsifiable_layers(
                pipe.transformer, "transformer", include_final_projection=include_final_projection
            )
            with record_input_norms(layers) as tf:
                generate_from_embeddings(
                    pipe,
                    embeds,
                    masks,
                    negative,
                    seeds=[seed + i for i in range(len(texts))],
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    resolution=resolution,
                    max_sequence_length=max_sequence_length,
                    batch_size=batch_size,
                    output_type="latent",
                )
            norms["transformer"], tokens["transformer"] = tf.norms(), dict(tf.tokens)
    from ..provenance import public_name

    record = prompt_set.record()
    settings = {
        "prompts": {**record, "source": public_name(record["source"])},  # uploaded with the model: no local paths
        "text_encoder_tokens": "real tokens (attention mask)",
        "transformer_pass": "generation" if "transformer" in components else None,
        "num_inference_steps": num_inference_steps if "transformer" in components else None,
        "guidance_scale": guidance_scale if "transformer" in components else None,
        "resolution": resolution if "transformer" in components else None,
        "max_sequence_length": max_sequence_length,
        "seed": seed,
    }
    return InputNorms(norms=norms, tokens=tokens, settings=settings)
