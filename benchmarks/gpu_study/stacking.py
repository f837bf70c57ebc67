"""Section e (stacking): depth x cache (First Block Cache, TaylorSeer) x int8, a denoising loop's latency."""

from __future__ import annotations

import statistics
from contextlib import nullcontext

import torch

from diffusers_layerprune.evaluation import elapsed_seconds, latency_inputs
from diffusers_layerprune.families import get_family

from .common import (
    CACHES,
    STACK_FAMILIES,
    STACK_FRACTION,
    Progress,
    Settings,
    build_transformer,
    is_oom,
    model_spec,
    pruned_view,
    release,
)


def cache_config(cache: str, family):
    """diffusers' config of ``cache`` with its default settings; TaylorSeer predicts whole blocks (its default hooks
    modules named ``...attn``, which misses PixArt's ``attn1`` / ``attn2``)."""
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if cache == "first_block":
        return FirstBlockCacheConfig()
    if cache == "taylorseer":
        return TaylorSeerCacheConfig(cache_identifiers=[rf"^{stack.attr}\.\d+$" for stack in family.stacks])
    if cache == "none":
        return None
    raise ValueError(f"unknown cache {cache!r}")


def apply_cache(model, cache: str, family) -> int:
    """Put one of diffusers' caches on ``model``; returns the number of modules it hooked."""
    from diffusers.hooks import HookRegistry, apply_first_block_cache, apply_taylorseer_cache

    config = cache_config(cache, family)
    if config is None:
        return 0
    (apply_first_block_cache if cache == "first_block" else apply_taylorseer_cache)(model, config)
    HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()
    return sum(
        1 for m in model.modules() if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks
    )


def remove_hooks(model) -> None:
    """Remove every diffusers hook under ``model`` (only the cache put there by :func:`apply_cache` exists)."""
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            for name in list(registry.hooks):
                registry.remove_hook(name, recurse=False)


def denoise(model, family, latents, timestep_batch: int, text, steps: int, cached: bool) -> None:
    """A denoising loop of ``steps`` forwards on random inputs: timesteps from 1000 down, an Euler-like update with
    the prediction's first channels. Its values mean nothing (random weights); its cost is the sampler's, and caches
    see a changing input as they do in a pipeline (each forward inside ``cache_context``, as pipelines call it)."""
    from diffusers.hooks import HookRegistry
    from diffusers.models.cache_utils import CacheMixin

    if cached:
        HookRegistry.check_if_exists_or_initialize(model).reset_stateful_hooks()
    x = latents
    for i in range(steps):
        t = torch.full((timestep_batch,), 1000.0 * (1 - i / steps), device=latents.device)
        # CacheMixin.cache_context only sets the hooks' context on the module: PixArt's class lacks the mixin
        context = CacheMixin.cache_context(model, "cond", step_index=i, num_inference_steps=steps) if cached else None
        with context or nullcontext():
            prediction = family.forward(model, x, t, text)
        x = x - prediction[:, : x.shape[1]] / steps


def last_block_counter(model, family):
    """Counts forwards that computed the last block (a cache that reuses the step skips its layers)."""
    last = getattr(model, family.stacks[-1].attr)[-1]
    linear = next(m for m in last.modules() if isinstance(m, torch.nn.Linear))
    calls = [0]
    handle = linear.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


def quantize_int8(model) -> str | None:
    """torchao int8 weight-only quantization in place; the reason when it cannot run."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        return f"torchao not installed ({error})"
    try:
        quantize_(model, Int8WeightOnlyConfig())
    except Exception as error:  # e.g. a torchao release built for another torch: the bf16 rows still count
        return f"torchao int8 failed: {error!r}"[:300]
    return None


def section_stacking(settings: Settings, progress: Progress) -> dict:
    out = {}
    for name in STACK_FAMILIES:
        spec = model_spec(name, settings)
        family = get_family(name)
        steps = settings.loop_steps or int(family.defaults.get("num_inference_steps", 20))
        combos = [
            (fraction, int8, cache) for fraction in (0.0, STACK_FRACTION) for int8 in (False, True) for cache in CACHES
        ]

        def key(fraction, int8, cache, name=name):
            return f"{name}|depth-{round(100 * fraction)}%|{'int8' if int8 else settings.dtype}|{cache}"

        if all(progress.get(key(*c)) is not None for c in combos):  # finished before a cut-off
            out[name] = {"model": spec.model, "steps": steps, "rows": [progress.done[key(*c)] for c in combos]}
            continue
        progress.check_time()
        full = build_transformer(spec, settings)
        batch = family.step_batch
        latents, _, text = latency_inputs(full, **spec.latency_shape(), batch_size=batch)
        # the pruned view first: it has its own modules over the full model's tensors, so quantizing it leaves the
        # full model alone; the full model is quantized in place last
        for fraction in (STACK_FRACTION, 0.0):
            todo = [c for c in combos if c[0] == fraction and progress.done.get(key(*c)) is None]
            if not todo:
                continue
            view = pruned_view(full, fraction)[0] if fraction else full
            for int8 in (False, True):
                if not [c for c in todo if c[1] == int8]:
                    continue
                skipped = quantize_int8(view) if int8 else None
                for cache in CACHES:
                    if (fraction, int8, cache) not in todo:
                        continue
                    progress.check_time()
                    row = {
                        "depth": f"{round(100 * fraction)}% pruned" if fraction else "full",
                        "blocks": family.depth(view.config),
                        "weights": "int8 weight-only (torchao)" if int8 else settings.dtype,
                        "cache": cache,
                        "steps": steps,
                    }
                    if skipped:
                        row["skipped"] = skipped
                    else:
                        try:
                            row.update(time_loop(view, family, latents, batch, text, steps, cache, settings))
                        except Exception as error:  # one combination failing (a cache on a model) leaves the rest
                            if is_oom(error):
                                raise
                            row["skipped"] = f"failed: {error!r}"[:300]
                    progress.put(key(fraction, int8, cache), row)
            del view
            release()
        del full, latents, text
        release()
        out[name] = {"model": spec.model, "steps": steps, "rows": [progress.done[key(*c)] for c in combos]}
    # speed-ups against each model's full-depth, un-cached, un-quantized loop
    for result in out.values():
        base = result["rows"][0].get("loop_ms")
        for row in result["rows"]:
            row["speedup"] = base / row["loop_ms"] if base and row.get("loop_ms") else None
    return {"families": out, "stack_fraction": STACK_FRACTION}


def time_loop(model, family, latents, batch: int, text, steps: int, cache: str, settings: Settings) -> dict:
    cached = cache != "none"
    hooked = apply_cache(model, cache, family)
    calls, handle = last_block_counter(model, family)
    try:
        with torch.inference_mode():
            denoise(model, family, latents, batch, text, min(2, steps), cached)  # warm-up: both cache paths
            samples, computed = [], []
            for _ in range(settings.loop_repeats):
                calls[0] = 0
                samples.append(
                    elapsed_seconds(
                        lambda: denoise(model, family, latents, batch, text, steps, cached), settings.device
                    )
                    * 1e3
                )
                computed.append(calls[0])
    finally:
        handle.remove()
        remove_hooks(model)
    loop_ms = statistics.median(samples)
    return {
        "loop_ms": loop_ms,
        "ms_per_step": loop_ms / steps,
        "samples_ms": samples,
        "last_block_computed": computed[-1],
        "hooked_modules": hooked,
        "cache_config": repr(cache_config(cache, family)),
    }
