"""Sections a (pixart) and b (families): latency and peak memory of the full and depth-pruned transformers."""

from __future__ import annotations

from diffusers_layerprune.evaluation import latency_inputs, transformer_latency
from diffusers_layerprune.families import FAMILIES, get_family

from .common import (
    PRUNE_FRACTIONS,
    Progress,
    Settings,
    build_transformer,
    forward_memory,
    is_oom,
    model_spec,
    pruned_view,
    release,
)


def depth_figures(name: str, settings: Settings) -> dict:
    """Latency (interleaved, median) and peak memory of the full transformer and of its pruned variants."""
    spec = model_spec(name, settings)
    if spec is None:
        return {"family": name, "skipped": "no published config shipped (testing.PUBLISHED_TRANSFORMERS)"}
    family = get_family(name)
    full = build_transformer(spec, settings)
    total = family.depth(full.config)
    models, kept_of = {"full": full}, {"full": None}
    for fraction in PRUNE_FRACTIONS:
        label = f"pruned {round(100 * fraction)}%"
        models[label], kept_of[label] = pruned_view(full, fraction)
    batch = family.step_batch
    measure = spec.latency_shape()
    latency = transformer_latency(
        models,
        **measure,
        batch_size=batch,
        warmup=settings.warmup,
        repeats=settings.repeats,
        min_sample_seconds=settings.min_sample_seconds,
    )
    inputs = latency_inputs(full, **measure, batch_size=batch)
    full_ms = latency["full"]["median_ms"]
    rows = []
    for label, model in models.items():
        blocks = family.depth(model.config)
        stats = latency[label]
        speedup, ideal = full_ms / stats["median_ms"], total / blocks
        rows.append(
            {
                "variant": label,
                "blocks": blocks,
                "stack_depths": family.stack_depths(model.config),
                "kept_layers": kept_of[label],
                **{k: stats[k] for k in ("median_ms", "q1_ms", "q3_ms", "calls_per_sample", "samples_ms")},
                "speedup": speedup,
                "ideal_speedup": ideal,
                "of_ideal": speedup / ideal,
                **forward_memory(model, inputs, settings),
            }
        )
    del models, full, inputs
    release()
    return {
        "family": name,
        "title": family.title,
        "model": spec.model,
        "spec": spec.jsonable(),
        "batch": batch,
        "rows": rows,
    }


def section_pixart(settings: Settings, progress: Progress) -> dict:
    return depth_figures("pixart", settings)


def section_families(settings: Settings, progress: Progress) -> dict:
    out = {}
    for name in FAMILIES:
        if name == "pixart":  # section a
            continue
        result = progress.get(name)
        if result is None:
            progress.check_time()
            try:
                result = depth_figures(name, settings)
            except Exception as error:  # out of memory in one family leaves the others measured
                if not is_oom(error):
                    raise
                result = {"family": name, "error": f"out of memory: {error}".splitlines()[0]}
            release()  # after the except block, which held the failed family's tensors
            progress.put(name, result)
        out[name] = result
    return {"families": out}
