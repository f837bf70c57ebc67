"""Section d (sparsity): 2:4 semi-structured sparsity of the T5-XXL encoder's and PixArt-Sigma-XL's linears."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusers_layerprune.evaluation import latency_inputs
from diffusers_layerprune.families import get_family

from .common import Progress, Settings, build_transformer, model_spec, release, time_fn


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output.float() - reference.float()).norm() / reference.float().norm())


@torch.no_grad()
def mask_two_four(module, component: str) -> int:
    """Zero the 2 smallest-magnitude weights of every 4 along the input of each linear the sparsifier prunes
    (``sparsity.sparsifiable_layers``, ``magnitude_scores``, ``n_m_mask``: ``layerprune sparsify``'s rule)."""
    from diffusers_layerprune.sparsity import sparsifiable_layers
    from diffusers_layerprune.sparsity.magnitude import magnitude_scores
    from diffusers_layerprune.sparsity.masks import n_m_mask

    layers = sparsifiable_layers(module, component)
    for layer in layers.values():
        layer.weight.masked_fill_(~n_m_mask(magnitude_scores(layer.weight), 2, 4), 0)
    return len(layers)


def to_semi_structured(module, component: str) -> tuple[int, dict[str, str]]:
    """Replace each masked linear weight by its packed 2:4 form; a layer the kernels refuse stays dense (and is
    listed with the reason). Returns ``(converted, refused)``."""
    from torch.sparse import to_sparse_semi_structured

    from diffusers_layerprune.sparsity import sparsifiable_layers

    converted, refused = 0, {}
    for name, layer in sparsifiable_layers(module, component).items():
        try:
            packed = to_sparse_semi_structured(layer.weight.detach())
        except Exception as error:  # shape or dtype the kernels do not take: that layer stays dense
            refused[name] = str(error).splitlines()[0][:200]
            continue
        layer.weight = torch.nn.Parameter(packed, requires_grad=False)
        converted += 1
    return converted, refused


def sparse_component(module, fn: Callable[[], torch.Tensor], component: str, settings: Settings) -> dict:
    """Dense vs 2:4 (masked dense; on a GPU also the packed sparse kernels): latency and relative output error."""
    with torch.inference_mode():
        reference = fn()
    out: dict = {"dense": time_fn(fn, settings)}
    out["layers_masked"] = mask_two_four(module, component)
    with torch.inference_mode():
        masked = fn()
    out["masked_dense"] = time_fn(fn, settings)
    out["masked_relative_error"] = relative_error(masked, reference)
    if settings.cuda:
        out["layers_packed"], out["layers_refused"] = to_semi_structured(module, component)
        with torch.inference_mode():
            packed = fn()
        out["packed"] = time_fn(fn, settings)
        out["packed_relative_error"] = relative_error(packed, reference)
        out["packed_vs_masked_relative_error"] = relative_error(packed, masked)  # the kernels' own exactness
        out["kernel"] = "torch.sparse.to_sparse_semi_structured"
        out["speedup"] = out["dense"]["median_ms"] / out["packed"]["median_ms"]
    else:
        out["kernel"] = "masked dense matmul (CPU smoke run: the 2:4 kernels need CUDA)"
        out["speedup"] = out["dense"]["median_ms"] / out["masked_dense"]["median_ms"]
    return out


def build_text_encoder(settings: Settings):
    """T5-XXL v1.1's encoder (24 layers, 4.76B parameters) or, in a smoke run, the package's tiny T5."""
    from transformers import T5Config, T5EncoderModel

    from diffusers_layerprune.testing import T5_XXL_ENCODER, build_tiny_t5_encoder

    torch.manual_seed(0)
    with torch.device(settings.device):
        model = build_tiny_t5_encoder(100) if settings.smoke else T5EncoderModel(T5Config(**T5_XXL_ENCODER))
    model = model.eval().requires_grad_(False)
    return model if settings.torch_dtype == torch.float32 else model.to(settings.torch_dtype)


def section_sparsity(settings: Settings, progress: Progress) -> dict:
    out = {}
    spec = model_spec("pixart", settings)
    batch = get_family("pixart").step_batch  # prompt and negative prompt, as the pipeline encodes them
    if progress.get("text_encoder") is None:
        progress.check_time()
        encoder = build_text_encoder(settings)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(2, encoder.config.vocab_size, (batch, spec.text_tokens), generator=g).to(settings.device)
        mask = torch.ones_like(ids)
        result = sparse_component(
            encoder, lambda: encoder(input_ids=ids, attention_mask=mask).last_hidden_state, "text_encoder", settings
        )
        result.update(parameters=sum(p.numel() for p in encoder.parameters()), tokens=spec.text_tokens, batch=batch)
        progress.put("text_encoder", result)
        del encoder
        release()
    out["text_encoder"] = progress.done["text_encoder"]
    if progress.get("transformer") is None:
        progress.check_time()
        family = get_family("pixart")
        model = build_transformer(spec, settings)
        inputs = latency_inputs(model, **spec.latency_shape(), batch_size=batch)
        result = sparse_component(model, lambda: family.forward(model, *inputs), "transformer", settings)
        result.update(parameters=sum(p.numel() for p in model.parameters()), batch=batch)
        progress.put("transformer", result)
        del model, inputs
        release()
    out["transformer"] = progress.done["transformer"]
    return {"model": spec.model, "spec": spec.jsonable(), "pattern": "2:4, magnitude", **out}
