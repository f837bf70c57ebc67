"""Evaluation of a (pruned) pipeline against its teacher: preference scores, CLIP score, parameters, latency,
speed-up, and on the toy world the judge's accuracies. Same prompts, same seeds, same run.

The report is a plain dict (``report.json``); :func:`write_report` also renders ``report.md`` and a PNG grid of
teacher vs student images.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from .data import PromptSet, encode_prompts

# Extra per-image checks by prompt-set name (the toy world registers its judge here):
# fn(images [N,3,H,W] in [0,1], prompts) -> {"metric": per-image values in [0, 1]}.
IMAGE_CHECKS: dict[str, Callable[[torch.Tensor, Sequence[str]], dict[str, torch.Tensor]]] = {}


def _toy_judge(images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """The toy world's judge: per-image correctness of colour, position, shape, size and all four."""
    from .toy.judge import judge

    report = judge(images, list(prompts))
    return {f"judge_{name}": torch.tensor(values, dtype=torch.float32) for name, values in report.correct.items()}


IMAGE_CHECKS["toy"] = _toy_judge


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
) -> dict[str, dict[str, float]]:
    """Median forward latency (ms) of each transformer on the same random inputs, timed interleaved.

    ``batch_size=2`` is one image with classifier-free guidance, i.e. one denoising step. Each timed sample runs
    ``calls_per_sample`` back-to-back forwards, enough for the fastest model to take ``min_sample_seconds``
    (as ``timeit`` does), and the same count for every model: a lone forward of a small model lasts milliseconds,
    and one scheduler hiccup on a shared CPU then decides the speed-up (a toy run measured a 9-of-12-block model
    at 0.96x its teacher with single-forward samples; 1.29-1.31x otherwise).
    """
    first = next(iter(transformers.values()))
    device, dtype = first.device, first.dtype
    latent = resolution // vae_scale_factor
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(batch_size, first.config.in_channels, latent, latent, generator=g).to(device, dtype),
        encoder_hidden_states=torch.randn(batch_size, text_tokens, first.config.caption_channels, generator=g).to(
            device, dtype
        ),
        timestep=torch.full((batch_size,), 500, device=device),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )
    times: dict[str, list[float]] = {name: [] for name in transformers}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(model, calls: int) -> float:
        """Seconds per forward over ``calls`` back-to-back forwards."""
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            model(**inputs)
        sync()
        return (time.perf_counter() - start) / calls

    with torch.inference_mode():
        fastest = math.inf
        for _ in range(max(1, warmup)):
            for model in transformers.values():
                fastest = min(fastest, timed(model, 1))
        calls = max(1, math.ceil(min_sample_seconds / fastest))
        for _ in range(repeats):
            for name, model in transformers.items():
                times[name].append(timed(model, calls))
    return {
        name: {
            "median_ms": statistics.median(t) * 1e3,
            "min_ms": min(t) * 1e3,
            "max_ms": max(t) * 1e3,
            "calls_per_sample": calls,
        }
        for name, t in times.items()
    }


def summarize(values: torch.Tensor) -> dict[str, float]:
    """Mean, population std and standard error of per-image values."""
    v = values.double()
    n = v.numel()
    std = v.std(unbiased=False).item() if n > 1 else 0.0
    return {"mean": v.mean().item(), "std": std, "sem": std / math.sqrt(n) if n > 1 else 0.0, "n": n}


def hpdv2_summary(scores: torch.Tensor, groups: Sequence[str], chunks: int = 10, chunk_size: int = 80) -> dict:
    """HPDv2 benchmark protocol (Wu et al., 2023): per style, the mean and population std of ``chunks`` chunk-means
    of ``chunk_size`` images (x100, as the benchmark tables report); ``average`` over all images.

    With fewer images than ``chunks * chunk_size`` per style, the style's images are split into ``chunks`` equal
    chunks (at least one image each) and the sizes used are recorded.
    """
    out = {}
    for style in dict.fromkeys(groups):
        values = scores[[i for i, g in enumerate(groups) if g == style]].double() * 100
        k = min(chunks, len(values))
        size = min(chunk_size, len(values) // k)
        means = torch.stack([values[i * size : (i + 1) * size].mean() for i in range(k)])
        out[style] = {
            "mean": means.mean().item(),
            "std": means.std(unbiased=False).item(),
            "chunks": k,
            "chunk_size": size,
        }
    out["average"] = {"mean": (scores.double() * 100).mean().item()}
    return out


def environment() -> dict:
    import diffusers

    from . import __version__

    return {
        "diffusers_layerprune": __version__,
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def image_grid(rows: dict[str, torch.Tensor], prompts: Sequence[str], path: Path, max_columns: int = 8) -> None:
    """Save a PNG grid: one row per model (e.g. teacher / student), one column per prompt, same seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(max_columns, len(prompts))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.9 * n, 2.1 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(images[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0:
                ax.set_title(prompts[c][:40] + ("..." if len(prompts[c]) > 40 else ""), fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def format_count(n: int | None) -> str:
    """A parameter count for tables: ``1.23B``, ``667.3M``, or the exact number below a million."""
    if n is None:
        return ""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,d}"


def settings_sentence(report: dict) -> str:
    """One sentence saying how ``report`` was measured."""
    s = report["settings"]
    return (
        f"{s['num_prompts']} prompts from `{s['prompts']}`, {s['num_inference_steps']} steps, guidance "
        f"{s['guidance_scale']}, {s['resolution']} px, fixed seeds (prompt i: seed {s['seed']} + i), {s['device']}, "
        f"{s['dtype']}; scores are mean ± standard error over prompts; latency is the median of "
        f"{s['latency_repeats']} interleaved repeats after warm-up"
        + (
            f", each of {s['latency_calls_per_sample']} back-to-back forwards."
            if s.get("latency_calls_per_sample", 1) > 1
            else "."
        )
    )


def metrics_table(report: dict) -> str:
    """The markdown table of ``report.json``: one column per model, one row per metric (report.md, model cards)."""
    models = report["models"]
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]

    def row(label, get, fmt):
        cells = []
        for entry in models.values():
            try:
                cells.append(fmt(get(entry)))
            except (KeyError, TypeError):
                cells.append("")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("transformer blocks", lambda m: m["num_layers"], str)
    row("transformer parameters", lambda m: m["parameters"]["transformer"], format_count)
    row("pipeline parameters", lambda m: m["parameters"]["total"], format_count)
    row("transformer ms / step", lambda m: m["latency"]["transformer_ms_per_step"], lambda v: f"{v:.2f}")
    row("transformer s / image", lambda m: m["latency"]["transformer_s_per_image"], lambda v: f"{v:.3f}")
    row("pipeline s / image", lambda m: m["latency"]["pipeline_s_per_image"], lambda v: f"{v:.3f}")
    row("speed-up (transformer)", lambda m: m["latency"]["speedup"], lambda v: f"{v:.2f}x")
    for scorer in report["settings"]["scorers"]:
        row(scorer, lambda m, s=scorer: m["scores"][s], lambda v: f"{v['mean']:.4f} ± {v['sem']:.4f}")
    for check in next(iter(models.values())).get("checks", {}):
        row(check, lambda m, c=check: m["checks"][c]["mean"], lambda v: f"{100 * v:.1f}%")
    return "\n".join(lines)


def render_report_md(report: dict) -> str:
    """A human-readable summary of ``report.json``."""
    lines = [f"# Evaluation: {report['model']}", "", settings_sentence(report), "", metrics_table(report)]
    if any("hpdv2" in r for r in report["models"].values()):
        lines += ["", "HPDv2 protocol (x100; mean ± std of chunk means):", ""]
        for m, entry in report["models"].items():
            for scorer, styles in entry.get("hpdv2", {}).items():
                cells = ", ".join(
                    f"{k} {v['mean']:.2f}" + (f" ± {v['std']:.2f}" if "std" in v else "") for k, v in styles.items()
                )
                lines.append(f"- {m} / {scorer}: {cells}")
    lines += ["", f"Environment: {json.dumps(report['environment'])}", ""]
    return "\n".join(lines)


def evaluate(
    pipe,
    teacher=None,
    *,
    model_name: str,
    teacher_name: str | None,
    prompt_set: PromptSet,
    scorers: dict[str, Callable],
    num_inference_steps: int,
    guidance_scale: float,
    resolution: int,
    max_sequence_length: int,
    seed: int = 0,
    batch_size: int = 8,
    latency_repeats: int = 5,
    progress: bool = True,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Generate with ``pipe`` (and ``teacher``) on the same prompts and seeds, then score and time both.

    Returns ``(report, images)``; ``images`` maps ``"student"`` / ``"teacher"`` to ``[N, 3, R, R]`` tensors.
    The teacher, when given, must share ``pipe``'s text encoder or have none: prompts are encoded once.
    """
    from tqdm.auto import tqdm

    from .modeling import generate_from_embeddings as generate

    prompts = prompt_set.prompts
    seeds = [seed + i for i in range(len(prompts))]
    embeds, masks = encode_prompts(pipe, prompts, max_sequence_length=max_sequence_length)
    negative = encode_prompts(pipe, [""], max_sequence_length=max_sequence_length) if guidance_scale > 1 else None
    models = {"student": pipe} if teacher is None else {"teacher": teacher, "student": pipe}
    gen = dict(
        seeds=seeds,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        resolution=resolution,
        max_sequence_length=max_sequence_length,
        batch_size=batch_size,
    )
    images: dict[str, torch.Tensor] = {}
    with tqdm(total=len(prompts) * len(models), desc="generate", disable=not progress) as bar:
        for name, p in models.items():
            p.set_progress_bar_config(disable=True)
            images[name] = generate(p, embeds, masks, negative, progress=bar.update, **gen)

    from .provenance import public_name

    report_models = {}
    latency = transformer_latency(
        {name: p.transformer for name, p in models.items()},
        resolution=resolution,
        vae_scale_factor=pipe.vae_scale_factor,
        text_tokens=max_sequence_length,
        batch_size=2 if guidance_scale > 1 else 1,
        repeats=latency_repeats,
    )
    # End-to-end seconds per image (one prompt, all steps, VAE decode), interleaved, median of a few.
    wall = {name: [] for name in models}
    for _ in range(max(1, latency_repeats // 2)):
        for name, p in models.items():
            start = time.perf_counter()
            generate(p, embeds[:1], masks[:1], negative, **dict(gen, seeds=seeds[:1], batch_size=1))
            wall[name].append(time.perf_counter() - start)
    reference = latency.get("teacher", latency["student"])["median_ms"]
    for name, p in models.items():
        entry = {
            "model": public_name(model_name if name == "student" else teacher_name),
            "num_layers": p.transformer.config.num_layers,
            "kept_layers": p.transformer.config.get("kept_layers"),
            "parameters": pipeline_parameters(p, shared=pipe),
            "latency": {
                "transformer_ms_per_step": latency[name]["median_ms"],
                "transformer_s_per_image": latency[name]["median_ms"] * num_inference_steps / 1e3,
                "pipeline_s_per_image": statistics.median(wall[name]),
                "speedup": reference / latency[name]["median_ms"],
            },
            "scores": {},
        }
        for scorer_name, scorer in scorers.items():
            values = torch.cat(
                [
                    scorer(images[name][i : i + batch_size], prompts[i : i + batch_size]).float().cpu()
                    for i in range(0, len(prompts), batch_size)
                ]
            )
            key = public_name(scorer_name)  # a local scorer folder by its name only
            entry["scores"][key] = summarize(values)
            entry["scores"][key]["per_prompt"] = values.tolist()
            if prompt_set.groups is not None and prompt_set.source.startswith("hpdv2"):
                entry.setdefault("hpdv2", {})[key] = hpdv2_summary(values, prompt_set.groups)
        check = IMAGE_CHECKS.get(prompt_set.source.split(":")[0])
        if check is not None:
            entry["checks"] = {k: summarize(v.float()) for k, v in check(images[name], prompts).items()}
        report_models[name] = entry

    # Reports travel with the model (push uploads them): models, prompt files and scorers by public name only.
    report = {
        "model": public_name(model_name),
        "teacher": public_name(teacher_name),
        "settings": {
            "prompts": public_name(prompt_set.source),
            "prompt_fingerprint": prompt_set.fingerprint(),
            "num_prompts": len(prompts),
            "prompt_set": {**prompt_set.record(), "source": public_name(prompt_set.source)},
            "scorers": [public_name(name) for name in scorers],
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "resolution": resolution,
            "max_sequence_length": max_sequence_length,
            "seed": seed,
            "batch_size": batch_size,
            "latency_repeats": latency_repeats,
            "latency_calls_per_sample": next(iter(latency.values()))["calls_per_sample"],
            "dtype": str(pipe.transformer.dtype),
            "device": str(pipe.transformer.device),
        },
        "models": report_models,
        "prompts": list(prompts),
        "environment": environment(),
    }
    return report, images


def write_report(report: dict, images: dict[str, torch.Tensor], output: str | Path, *, overwrite: bool = True) -> Path:
    """Write ``report.json``, ``report.md`` and ``report_grid.png`` (named after ``output``), each atomically."""
    from .outputs import atomic_output_file

    output = Path(output)
    with atomic_output_file(output, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_output_file(output.with_suffix(".md"), overwrite=overwrite) as tmp:
        tmp.write_text(render_report_md(report))
    with atomic_output_file(grid_path(output), overwrite=overwrite) as tmp:
        image_grid(images, report["prompts"], tmp)
    return output


def is_report_file(path: str | Path) -> bool:
    """Whether ``path`` is a ``report.json`` written by :func:`write_report`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and {"models", "settings", "environment"} <= set(data)


def check_report_output(output: str | Path, *, overwrite: bool) -> None:
    """Fail (writing nothing) when the report files of ``output`` (``.json``, ``.md``, ``_grid.png``) cannot be
    written: existing ones are replaced only with ``overwrite`` and only when ``output`` is a report of ours."""
    from .outputs import check_output_file

    output = Path(output)
    for path in (output, output.with_suffix(".md"), grid_path(output)):
        check_output_file(path, overwrite=overwrite, owned=lambda _: is_report_file(output))


def grid_path(report_path: str | Path) -> Path:
    report_path = Path(report_path)
    return report_path.with_name(report_path.stem + "_grid.png")
