"""Parameters and latency of diffusion transformers: one interleaved measurement of several models (same inputs,
same load), its spread, and end-to-end seconds per image. ``evaluate``, ``layerprune run`` and the benchmarks time
through here; speed-ups are ratios within one measurement, because these machines are noisy."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def pipeline_parameters(pipe, shared=None) -> dict[str, int]:
    """Parameters per component and in total; components ``pipe`` lacks (``None``) are counted from ``shared``."""
    components = {
        k: v if v is not None or shared is None else shared.components.get(k) for k, v in pipe.components.items()
    }
    counts = {name: count_parameters(c) for name, c in components.items() if isinstance(c, nn.Module)}
    counts["total"] = sum(counts.values())
    return counts


def transformer_latency(
    transformers: dict[str, nn.Module],
    *,
    resolution: int,
    vae_scale_factor: int,
    text_tokens: int,
    batch_size: int = 2,
    warmup: int = 2,
    repeats: int = 5,
    min_sample_seconds: float = 0.1,
    pool_same_architecture: bool = True,
) -> dict[str, dict]:
    """Median forward latency (ms) of each transformer on the same random inputs, timed interleaved.

    ``batch_size=2`` is one image with classifier-free guidance, i.e. one denoising step. Each timed sample runs
    ``calls_per_sample`` back-to-back forwards, enough for the fastest model to take ``min_sample_seconds``
    (as ``timeit`` does), and the same count for every model: a lone forward of a small model lasts milliseconds,
    and one scheduler hiccup on a shared CPU then decides the speed-up (a toy run measured a 9-of-12-block model
    at 0.96x its teacher with single-forward samples; 1.29-1.31x otherwise).

    With ``pool_same_architecture`` models of identical architecture (same parameter names, shapes, dtype and
    device: e.g. a pruned model and its distilled copy) do the same work per forward, so their samples are pooled
    and they get one latency: a difference between them would be noise (two 9-block toy models measured in separate
    runs read 1.06x and 1.34x). Per model: ``median_ms``, ``q1_ms`` / ``q3_ms`` (interquartile range), ``min_ms``,
    ``max_ms``, ``calls_per_sample``, ``samples_ms`` (one per repeat; for a pooled group the median of its models
    at that repeat) and ``pooled_with`` (the names sharing the latency, this one included).
    On a GPU each sample is timed with CUDA events (:func:`elapsed_seconds`), elsewhere with the wall clock.
    """
    from .families import family_of

    first = next(iter(transformers.values()))
    family = family_of(first)  # the forward arguments and text widths are the family's
    latents, timestep, text = latency_inputs(
        first, resolution=resolution, vae_scale_factor=vae_scale_factor, text_tokens=text_tokens, batch_size=batch_size
    )
    times: dict[str, list[float]] = {name: [] for name in transformers}

    def timed(model, calls: int) -> float:
        """Seconds per forward over ``calls`` back-to-back forwards."""

        def run():
            for _ in range(calls):
                family.forward(model, latents, timestep, text)

        return elapsed_seconds(run, latents.device) / calls

    with torch.inference_mode():
        fastest = math.inf
        for _ in range(max(1, warmup)):
            for model in transformers.values():
                fastest = min(fastest, timed(model, 1))
        calls = max(1, math.ceil(min_sample_seconds / fastest))
        for _ in range(repeats):
            for name, model in transformers.items():
                times[name].append(timed(model, calls))
    groups: dict = {}
    for name, model in transformers.items():
        key = architecture_signature(model) if pool_same_architecture else name
        groups.setdefault(key, []).append(name)
    out = {}
    for names in groups.values():
        pooled = [t for name in names for t in times[name]]
        per_repeat = [statistics.median(times[name][r] for name in names) for r in range(repeats)]
        q1, q3 = quartiles(pooled)
        for name in names:
            out[name] = {
                "median_ms": statistics.median(pooled) * 1e3,
                "q1_ms": q1 * 1e3,
                "q3_ms": q3 * 1e3,
                "min_ms": min(pooled) * 1e3,
                "max_ms": max(pooled) * 1e3,
                "calls_per_sample": calls,
                "samples_ms": [t * 1e3 for t in per_repeat],
                "pooled_with": list(names),
            }
    return {name: out[name] for name in transformers}


def latency_inputs(
    model: nn.Module, *, resolution: int, vae_scale_factor: int, text_tokens: int, batch_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Random inputs of one forward of ``model`` (any supported family) on its device and in its dtype:
    ``(latents [B, C, h, w], timestep [B] = 500, text conditioning of the family's widths)``, ``h = w = resolution /
    vae_scale_factor``. Speed does not depend on the values."""
    from .families import family_of
    from .families.base import to_device

    family = family_of(model)
    device, dtype = model.device, model.dtype
    latent = resolution // vae_scale_factor
    g = torch.Generator().manual_seed(seed)
    channels = family.latent_channels(model.config)
    latents = torch.randn(batch_size, channels, latent, latent, generator=g).to(device, dtype)
    text = to_device(family.random_text(model.config, batch_size, text_tokens, g), device, dtype)
    return latents, torch.full((batch_size,), 500, device=device), text


def elapsed_seconds(fn: Callable[[], object], device: torch.device | str) -> float:
    """Seconds that ``fn()`` takes on ``device``. On a GPU: CUDA events recorded around it, after a synchronize so
    work queued earlier is not counted, read after a synchronize (the kernels' time, not the launch time). Elsewhere:
    the wall clock."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles (``statistics.quantiles``, inclusive method); a single value is both."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def architecture_signature(model: nn.Module) -> tuple:
    """What decides a forward's cost: the model's class, its parameter and buffer names, shapes, dtypes, tensor types
    and layouts (a 2:4 semi-structured sparse weight is another type than a dense one), and the device; not values."""
    state = model.state_dict()
    device = next(iter(state.values())).device if state else None
    tensors = ((k, tuple(v.shape), str(v.dtype), type(v).__name__, str(v.layout)) for k, v in state.items())
    return (type(model).__name__, str(device), *tensors)


def pipeline_seconds(
    pipes: dict, text: dict, negative: dict | None, *, repeats: int, pooled_with: dict | None = None, **sampler
) -> dict[str, float]:
    """End-to-end seconds per image (one prompt: the first of ``text``, all steps, VAE decode) of each pipeline,
    timed interleaved, median of ``repeats``. ``pooled_with`` (name -> names, as :func:`transformer_latency`
    reports): models of one architecture get the median of their pooled samples. ``sampler``: ``seeds`` (one),
    ``num_inference_steps``, ``guidance_scale``, ``resolution``, ``max_sequence_length``."""
    from .modeling import generate_from_conditioning as generate

    first = {k: v[:1] for k, v in text.items()}
    samples: dict[str, list[float]] = {name: [] for name in pipes}
    for _ in range(max(1, repeats)):
        for name, p in pipes.items():
            start = time.perf_counter()
            generate(p, first, negative, batch_size=1, **sampler)
            samples[name].append(time.perf_counter() - start)
    pooled_with = pooled_with or {}
    return {
        name: statistics.median(t for n in pooled_with.get(name, [name]) if n in samples for t in samples[n])
        for name in pipes
    }


def shared_latency(measured: dict[str, dict], student: str, teacher: str = "teacher") -> dict[str, dict]:
    """The ``latency`` argument of :func:`evaluate` / :func:`evaluate_pipeline` for one ``student`` of a
    :func:`transformer_latency` measurement of several models (their names are recorded in the report)."""
    shared = {"student": measured[student], "_models": list(measured)}
    return {"teacher": measured[teacher], **shared} if teacher in measured else shared
