"""Evaluation of a (pruned) pipeline against its teacher: preference scores, CLIP score, parameters, latency,
speed-up, and on the toy world the judge's accuracies. Same prompts, same seeds, same run.

:func:`evaluate_pipeline` is the ``eval`` stage (what ``layerprune eval`` and ``layerprune run`` call); it returns an
:class:`EvalReport`, the one type ``report.json`` is written from and read into (:meth:`EvalReport.save` /
:meth:`EvalReport.load`). :func:`write_report` also renders ``report.md`` and a PNG grid of teacher vs student
images. The teacher's images and scores are cached (:class:`TeacherEvalCache`): evaluating several students against
one teacher generates the teacher's images once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .data import PromptSet
from .errors import LayerPruneError

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


def latency_entries(
    latency: dict[str, dict], num_inference_steps: int, wall: dict[str, float], reference: str
) -> dict[str, Latency]:
    """:class:`Latency` per model from :func:`transformer_latency`'s result: speed-up = ``reference``'s median over
    the model's, with the interquartile range of the per-repeat ratios (interleaved samples, so each repeat's ratio
    compares models measured moments apart). ``wall``: end-to-end seconds per image by model name."""
    ref = latency[reference]
    out = {}
    for name, stats in latency.items():
        ratios = [a / b for a, b in zip(ref["samples_ms"], stats["samples_ms"], strict=True)]
        out[name] = Latency(
            transformer_ms_per_step=stats["median_ms"],
            transformer_s_per_image=stats["median_ms"] * num_inference_steps / 1e3,
            pipeline_s_per_image=wall.get(name, float("nan")),
            speedup=ref["median_ms"] / stats["median_ms"],
            transformer_ms_iqr=[stats["q1_ms"], stats["q3_ms"]],
            speedup_iqr=list(quartiles(ratios)),
            shared_with=stats["pooled_with"] if len(stats["pooled_with"]) > 1 else None,
        )
    return out


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


# ----------------------------------------------------------------------------------------------------------------
# The report: one versioned type, written and read here only
# ----------------------------------------------------------------------------------------------------------------

REPORT_FORMAT = "diffusers-layerprune/eval-report"
REPORT_FORMAT_VERSION = 1


@dataclass
class ScoreSummary:
    """Mean, population std and standard error of per-image values (``per_prompt``: the values themselves)."""

    mean: float
    std: float = 0.0
    sem: float = 0.0
    n: int = 0
    per_prompt: list[float] | None = None

    @classmethod
    def of(cls, values: torch.Tensor, keep_values: bool = False) -> ScoreSummary:
        stats = summarize(values)
        return cls(**stats, per_prompt=values.tolist() if keep_values else None)

    def to_dict(self) -> dict:
        out = {"mean": self.mean, "std": self.std, "sem": self.sem, "n": self.n}
        if self.per_prompt is not None:
            out["per_prompt"] = self.per_prompt
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ScoreSummary:
        return cls(**{k: data[k] for k in ("mean", "std", "sem", "n", "per_prompt") if k in data})


@dataclass
class Latency:
    """Median transformer forward time (ms) for one denoising step, per image (all steps), end-to-end seconds per
    image, and the speed-up over the teacher, measured in the same run (interleaved, after warm-up)."""

    transformer_ms_per_step: float
    transformer_s_per_image: float
    pipeline_s_per_image: float
    speedup: float
    # interquartile ranges of the latency samples and of the per-repeat speed-ups (None in older reports)
    transformer_ms_iqr: list[float] | None = None
    speedup_iqr: list[float] | None = None
    # models of identical architecture whose samples were pooled into this one latency (their names in the
    # measurement, e.g. ["pruned", "distilled"]); None when no other model shares it
    shared_with: list[str] | None = None


@dataclass
class ModelEval:
    """One evaluated model (the student or the teacher) of an :class:`EvalReport`."""

    model: str | None
    num_layers: int
    kept_layers: list[int] | None
    parameters: dict[str, int]
    latency: Latency
    scores: dict[str, ScoreSummary] = field(default_factory=dict)
    checks: dict[str, ScoreSummary] = field(default_factory=dict)  # the toy world's judge: accuracies in [0, 1]
    hpdv2: dict[str, dict] = field(default_factory=dict)  # scorer -> HPDv2 protocol summary (hpdv2_summary)

    def to_dict(self) -> dict:
        out = {
            "model": self.model,
            "num_layers": self.num_layers,
            "kept_layers": self.kept_layers,
            "parameters": self.parameters,
            "latency": dataclasses.asdict(self.latency),
            "scores": {k: v.to_dict() for k, v in self.scores.items()},
        }
        if self.hpdv2:
            out["hpdv2"] = self.hpdv2
        if self.checks:
            out["checks"] = {k: v.to_dict() for k, v in self.checks.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ModelEval:
        return cls(
            model=data.get("model"),
            num_layers=data["num_layers"],
            kept_layers=data.get("kept_layers"),
            parameters=dict(data.get("parameters", {})),
            latency=Latency(**data["latency"]),
            scores={k: ScoreSummary.from_dict(v) for k, v in data.get("scores", {}).items()},
            checks={k: ScoreSummary.from_dict(v) for k, v in data.get("checks", {}).items()},
            hpdv2=dict(data.get("hpdv2", {})),
        )


@dataclass
class EvalSettings:
    """How an :class:`EvalReport` was measured (prompt set, sampler, seeds, latency protocol, device)."""

    prompts: str | None
    num_prompts: int
    scorers: list[str]
    num_inference_steps: int
    guidance_scale: float
    resolution: int
    max_sequence_length: int
    seed: int = 0
    batch_size: int = 8
    latency_repeats: int = 5
    latency_calls_per_sample: int = 1
    # every model timed in the same interleaved measurement as this report's (e.g. teacher, pruned, distilled of
    # one ``layerprune run``), when it covered more than the report's teacher and student
    latency_models: list[str] | None = None
    dtype: str = "torch.float32"
    device: str = "cpu"
    prompt_fingerprint: str | None = None
    prompt_set: dict | None = None
    # {"reused": bool, "key": str, "seconds": float}: whether the teacher's images and scores came from the cache
    teacher_cache: dict | None = None


@dataclass
class EvalReport:
    """``report.json``: a model evaluated against its teacher on the same prompts and seeds.

    ``models`` maps ``"student"`` (and ``"teacher"``) to :class:`ModelEval`. Models, prompt sets and scorers are
    recorded by public name (the report is uploaded with the model).
    """

    model: str | None
    teacher: str | None
    settings: EvalSettings
    models: dict[str, ModelEval]
    prompts: list[str] = field(default_factory=list)
    environment: dict = field(default_factory=dict)

    @property
    def student(self) -> ModelEval:
        return self.models["student"]

    @property
    def teacher_entry(self) -> ModelEval | None:
        return self.models.get("teacher")

    def to_dict(self) -> dict:
        return {
            "format": REPORT_FORMAT,
            "format_version": REPORT_FORMAT_VERSION,
            "model": self.model,
            "teacher": self.teacher,
            "settings": dataclasses.asdict(self.settings),
            "models": {k: v.to_dict() for k, v in self.models.items()},
            "prompts": list(self.prompts),
            "environment": self.environment,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "report data") -> EvalReport:
        if not isinstance(data, dict) or not {"models", "settings"} <= set(data):
            raise LayerPruneError(f"{source} is not an evaluation report (written by `layerprune eval`)")
        if data.get("format", REPORT_FORMAT) != REPORT_FORMAT:
            raise LayerPruneError(f"{source} is not an evaluation report (format {data.get('format')!r})")
        if data.get("format_version", 0) > REPORT_FORMAT_VERSION:
            raise LayerPruneError(f"{source} was written by a newer diffusers-layerprune; upgrade the package")
        known = {f.name for f in dataclasses.fields(EvalSettings)}
        try:
            return cls(
                model=data.get("model"),
                teacher=data.get("teacher"),
                settings=EvalSettings(**{k: v for k, v in data["settings"].items() if k in known}),
                models={k: ModelEval.from_dict(v) for k, v in data["models"].items()},
                prompts=list(data.get("prompts", [])),
                environment=dict(data.get("environment", {})),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            if isinstance(error, LayerPruneError):
                raise
            raise LayerPruneError(
                f"{source} is damaged or hand-edited (not a complete evaluation report: {type(error).__name__}: "
                f"{error}); re-create it with `layerprune eval`"
            ) from error

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write ``report.json`` atomically."""
        from .outputs import atomic_output_file

        with atomic_output_file(path, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvalReport:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise LayerPruneError(f"report {path} does not exist") from error
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise LayerPruneError(f"report {path} is damaged ({error}); re-create it with `layerprune eval`") from error
        return cls.from_dict(data, str(path))


def settings_sentence(report: EvalReport) -> str:
    """One sentence saying how ``report`` was measured."""
    s = report.settings
    return (
        f"{s.num_prompts} prompts from `{s.prompts}`, {s.num_inference_steps} steps, guidance "
        f"{s.guidance_scale}, {s.resolution} px, fixed seeds (prompt i: seed {s.seed} + i), {s.device}, "
        f"{s.dtype}; scores are mean ± standard error over prompts; latency is the median of "
        f"{s.latency_repeats} interleaved repeats after warm-up"
        + (f", each of {s.latency_calls_per_sample} back-to-back forwards" if s.latency_calls_per_sample > 1 else "")
        + (
            f", in one measurement of {', '.join(s.latency_models)} (models of identical architecture share one "
            "latency)."
            if s.latency_models
            else "."
        )
    )


def metrics_table(report: EvalReport) -> str:
    """The markdown table of a report: one column per model, one row per metric (report.md, model cards)."""
    models = report.models
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]

    def row(label, get, fmt):
        cells = []
        for entry in models.values():
            try:
                cells.append(fmt(get(entry)))
            except (KeyError, TypeError, AttributeError):
                cells.append("")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("transformer blocks", lambda m: m.num_layers, str)
    row("transformer parameters", lambda m: m.parameters["transformer"], format_count)
    row("pipeline parameters", lambda m: m.parameters["total"], format_count)
    row("transformer ms / step", lambda m: m.latency.transformer_ms_per_step, lambda v: f"{v:.2f}")
    row("transformer s / image", lambda m: m.latency.transformer_s_per_image, lambda v: f"{v:.3f}")
    row("pipeline s / image", lambda m: m.latency.pipeline_s_per_image, lambda v: f"{v:.3f}")
    row("speed-up (transformer)", lambda m: m.latency.speedup, lambda v: f"{v:.2f}x")
    if any(m.latency.speedup_iqr for m in models.values()):
        row("speed-up, IQR of repeats", lambda m: m.latency.speedup_iqr, lambda v: f"{v[0]:.2f}-{v[1]:.2f}x")
    for scorer in report.settings.scorers:
        row(scorer, lambda m, s=scorer: m.scores[s], lambda v: f"{v.mean:.4f} ± {v.sem:.4f}")
    for check in next(iter(models.values())).checks:
        row(check, lambda m, c=check: m.checks[c].mean, lambda v: f"{100 * v:.1f}%")
    return "\n".join(lines)


def render_report_md(report: EvalReport) -> str:
    """A human-readable summary of a report."""
    lines = [f"# Evaluation: {report.model}", "", settings_sentence(report), "", metrics_table(report)]
    if any(entry.hpdv2 for entry in report.models.values()):
        lines += ["", "HPDv2 protocol (x100; mean ± std of chunk means):", ""]
        for m, entry in report.models.items():
            for scorer, styles in entry.hpdv2.items():
                cells = ", ".join(
                    f"{k} {v['mean']:.2f}" + (f" ± {v['std']:.2f}" if "std" in v else "") for k, v in styles.items()
                )
                lines.append(f"- {m} / {scorer}: {cells}")
    cache = report.settings.teacher_cache
    if cache and cache.get("reused"):
        lines += [
            "",
            f"The teacher's images and scores were reused from an earlier evaluation with the same teacher weights, "
            f"prompts, seeds and sampler settings ({cache['seconds']:.1f} s of generation and scoring saved); its "
            "latency was measured again in this run.",
        ]
    lines += ["", f"Environment: {json.dumps(report.environment)}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Teacher evaluation cache
# ----------------------------------------------------------------------------------------------------------------

TEACHER_CACHE_VERSION = 1
GRID_COLUMNS = 8  # images per row of report_grid.png (image_grid's max_columns)


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' dtypes, shapes and bytes (exact identity of their values)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def module_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes, values): what decides its outputs."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor_digest(tensor).encode())
    return h.hexdigest()


def _scorer_identity(name: str, scorer) -> dict:
    model = getattr(scorer, "model", None)
    simple = {k: v for k, v in vars(scorer).items() if isinstance(v, (str, int, float, bool)) and not k.startswith("_")}
    return {
        "name": str(name),
        "type": type(scorer).__name__,
        "settings": simple,
        "weights": module_digest(model) if isinstance(model, nn.Module) else None,
    }


class TeacherEvalCache:
    """The teacher's part of an evaluation (per-prompt scores, judge checks, parameters, the images of the grid),
    stored once per teacher x prompts x seeds x sampler settings x scorers, in ``folder`` (default:
    ``default_cache_dir()/teacher-eval``).

    The key holds everything that decides the teacher's images and scores: the teacher's transformer, VAE and
    scheduler (a digest of their weights, so a copied folder hits and a retrained one misses), the prompt embeddings
    fed to both models (they come from the student pipeline's text encoder), the negative prompt embedding, the
    seeds, steps, guidance, resolution, sequence length, batch size, dtype, device, the scorers (weights and
    settings), the prompt set (for the judge and HPDv2 groups) and the library versions. Entries are written to a
    temporary folder and renamed into place.
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        if folder is None:
            from .data import default_cache_dir

            folder = default_cache_dir() / "teacher-eval"
        self.folder = Path(folder)

    def key(self, **parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def get(self, key: str) -> tuple[dict, torch.Tensor] | None:
        """``(record, grid images)`` of ``key``, or ``None`` (missing or unreadable: treated as a miss)."""
        entry = self.folder / key
        try:
            record = json.loads((entry / "record.json").read_text())
            from safetensors.torch import load_file

            images = load_file(entry / "grid.safetensors")["images"].float() / 255
        except (OSError, ValueError, KeyError):
            return None
        if record.get("version") != TEACHER_CACHE_VERSION or record.get("key") != key:
            return None
        return record, images

    def put(self, key: str, record: dict, images: torch.Tensor) -> None:
        """Store ``record`` and the first :data:`GRID_COLUMNS` images (as 8-bit) under ``key``, atomically; a
        failure to write (read-only disk) only costs the reuse."""
        import shutil
        import tempfile

        from safetensors.torch import save_file

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-{os.getpid()}-", dir=self.folder))
            try:
                grid = (images[:GRID_COLUMNS].clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
                save_file({"images": grid}, str(tmp / "grid.safetensors"))
                data = {"version": TEACHER_CACHE_VERSION, "key": key, **record}
                (tmp / "record.json").write_text(json.dumps(data, indent=2) + "\n")
                target = self.folder / key
                if target.exists():
                    shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------------------------
# Evaluating
# ----------------------------------------------------------------------------------------------------------------


def _model_entry_scores(images, prompts, prompt_set, scorers, batch_size) -> dict:
    """Scores, HPDv2 summaries and judge checks of one model's images."""
    from .provenance import public_name

    scores, hpdv2, checks = {}, {}, {}
    for scorer_name, scorer in scorers.items():
        values = torch.cat(
            [
                scorer(images[i : i + batch_size], prompts[i : i + batch_size]).float().cpu()
                for i in range(0, len(prompts), batch_size)
            ]
        )
        key = public_name(scorer_name)  # a local scorer folder by its name only
        scores[key] = ScoreSummary.of(values, keep_values=True)
        if prompt_set.groups is not None and prompt_set.source.startswith("hpdv2"):
            hpdv2[key] = hpdv2_summary(values, prompt_set.groups)
    check = IMAGE_CHECKS.get(prompt_set.source.split(":")[0])
    if check is not None:
        checks = {k: ScoreSummary.of(v.float()) for k, v in check(images, prompts).items()}
    return {"scores": scores, "hpdv2": hpdv2, "checks": checks}


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
    teacher_cache: TeacherEvalCache | None = None,
    latency: dict[str, dict] | None = None,
) -> tuple[EvalReport, dict[str, torch.Tensor]]:
    """Generate with ``pipe`` (and ``teacher``) on the same prompts and seeds, then score and time both.

    Returns ``(report, images)``; ``images`` maps ``"student"`` / ``"teacher"`` to ``[N, 3, R, R]`` tensors (the
    teacher's only the grid's first :data:`GRID_COLUMNS` when they come from ``teacher_cache``). The teacher, when
    given, must share ``pipe``'s text encoder or have none: prompts are encoded once. With ``teacher_cache`` the
    teacher's images and scores are reused when an earlier evaluation had the same teacher, prompts, seeds and
    settings (see :class:`TeacherEvalCache`); latency is measured in this run either way, interleaved with the
    student's, because a speed-up taken from two runs on a shared machine is not a measurement.

    ``latency``: :func:`transformer_latency`'s result of a measurement that timed these models with others
    (``"student"`` and ``"teacher"`` keys, e.g. teacher, pruned and distilled of one run, so that two students of
    one architecture share one latency); by default the teacher and the student are timed here.
    """
    from tqdm.auto import tqdm

    from .blocks import num_blocks
    from .families import encode_text, family_of
    from .modeling import generate_from_conditioning as generate
    from .provenance import public_name

    prompts = prompt_set.prompts
    seeds = [seed + i for i in range(len(prompts))]
    # the family's text conditioning (PixArt, Sana: embeddings and mask; SD3, Flux: embeddings and pooled)
    text = encode_text(pipe, prompts, max_sequence_length=max_sequence_length)
    negative = encode_text(pipe, [""], max_sequence_length=max_sequence_length) if guidance_scale > 1 else None
    models = {"student": pipe} if teacher is None else {"teacher": teacher, "student": pipe}
    gen = dict(
        seeds=seeds,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        resolution=resolution,
        max_sequence_length=max_sequence_length,
        batch_size=batch_size,
    )

    cached, cache_key = None, None
    if teacher is not None and teacher_cache is not None:
        import diffusers

        from . import __version__

        cache_key = teacher_cache.key(
            transformer=module_digest(teacher.transformer),
            vae=module_digest(teacher.vae),
            scheduler=[type(teacher.scheduler).__name__, dict(teacher.scheduler.config)],
            embeddings=tensor_digest(*text.values(), *(negative.values() if negative else ())),
            prompts=prompt_set.fingerprint(),
            source=prompt_set.source.split(":")[0],
            groups=prompt_set.groups,
            seeds=[seed, len(prompts)],
            generation={k: v for k, v in gen.items() if k != "seeds"},
            dtype=str(teacher.transformer.dtype),
            device=str(teacher.transformer.device),
            scorers=[_scorer_identity(name, scorer) for name, scorer in scorers.items()],
            versions=[__version__, torch.__version__, diffusers.__version__],
        )
        cached = teacher_cache.get(cache_key)

    generated = {name: p for name, p in models.items() if not (name == "teacher" and cached is not None)}
    images: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    with tqdm(total=len(prompts) * len(generated), desc="generate", disable=not progress) as bar:
        for name, p in generated.items():
            p.set_progress_bar_config(disable=True)
            start = time.perf_counter()
            images[name] = generate(p, text, negative, progress=bar.update, **gen)
            seconds[name] = time.perf_counter() - start
    for name in models:
        models[name].set_progress_bar_config(disable=True)

    latency_models, timed_repeats = None, latency_repeats
    if latency is None:
        latency = transformer_latency(
            {name: p.transformer for name, p in models.items()},
            resolution=resolution,
            vae_scale_factor=pipe.vae_scale_factor,
            text_tokens=max_sequence_length,
            batch_size=family_of(pipe.transformer).denoising_batch(guidance_scale),
            repeats=latency_repeats,
        )
    else:
        missing = [name for name in models if name not in latency]
        if missing:
            raise LayerPruneError(f"the latency given holds no {', '.join(missing)}: measure every evaluated model")
        latency_models = list(latency.get("_models") or []) or None
        latency = {name: latency[name] for name in models}
        timed_repeats = len(latency["student"]["samples_ms"])
    # End-to-end seconds per image (one prompt, all steps, VAE decode), interleaved, median of a few; from the
    # shared measurement when it has them.
    if all("pipeline_s" in latency[name] for name in models):
        wall = {name: latency[name]["pipeline_s"] for name in models}
    else:
        sampler = {k: v for k, v in gen.items() if k not in ("seeds", "batch_size")}
        wall = pipeline_seconds(models, text, negative, repeats=latency_repeats // 2, seeds=seeds[:1], **sampler)
    timings = latency_entries(latency, num_inference_steps, wall, "teacher" if "teacher" in latency else "student")

    report_models = {}
    for name, p in models.items():
        timing = timings[name]
        if name == "teacher" and cached is not None:
            record, grid = cached
            entry = ModelEval.from_dict({**record["entry"], "latency": dataclasses.asdict(timing)})
            images["teacher"] = grid
        else:
            start = time.perf_counter()
            results = _model_entry_scores(images[name], prompts, prompt_set, scorers, batch_size)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            entry = ModelEval(
                model=public_name(model_name if name == "student" else teacher_name),
                num_layers=num_blocks(p.transformer),
                kept_layers=p.transformer.config.get("kept_layers"),
                parameters=pipeline_parameters(p, shared=pipe),
                latency=timing,
                **results,
            )
            if name == "teacher" and teacher_cache is not None:
                record = entry.to_dict()
                record.pop("latency")
                teacher_cache.put(cache_key, {"entry": record, "seconds": seconds["teacher"]}, images["teacher"])
        report_models[name] = entry

    teacher_cache_record = None
    if cache_key is not None:
        spent = cached[0]["seconds"] if cached is not None else seconds["teacher"]
        teacher_cache_record = {"reused": cached is not None, "key": cache_key, "seconds": round(spent, 2)}
    # Reports travel with the model (push uploads them): models, prompt files and scorers by public name only.
    report = EvalReport(
        model=public_name(model_name),
        teacher=public_name(teacher_name),
        settings=EvalSettings(
            prompts=public_name(prompt_set.source),
            prompt_fingerprint=prompt_set.fingerprint(),
            num_prompts=len(prompts),
            prompt_set={**prompt_set.record(), "source": public_name(prompt_set.source)},
            scorers=[public_name(name) for name in scorers],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            resolution=resolution,
            max_sequence_length=max_sequence_length,
            seed=seed,
            batch_size=batch_size,
            latency_repeats=timed_repeats,
            latency_calls_per_sample=next(iter(latency.values()))["calls_per_sample"],
            latency_models=latency_models,
            dtype=str(pipe.transformer.dtype),
            device=str(pipe.transformer.device),
            teacher_cache=teacher_cache_record,
        ),
        models=report_models,
        prompts=list(prompts),
        environment=environment(),
    )
    return report, images


def write_report(
    report: EvalReport, images: dict[str, torch.Tensor], output: str | Path, *, overwrite: bool = True
) -> Path:
    """Write ``report.json``, ``report.md`` and ``report_grid.png`` (named after ``output``), each atomically."""
    from .outputs import atomic_output_file

    output = Path(output)
    report.save(output, overwrite=overwrite)
    with atomic_output_file(output.with_suffix(".md"), overwrite=overwrite) as tmp:
        tmp.write_text(render_report_md(report))
    with atomic_output_file(grid_path(output), overwrite=overwrite) as tmp:
        image_grid(images, report.prompts, tmp, max_columns=GRID_COLUMNS)
    return output


def write_report_files(report: EvalReport, output: str | Path) -> Path:
    """Rewrite ``report.json`` and ``report.md`` of an existing report (the image grid is left as it is)."""
    from .outputs import atomic_output_file

    output = Path(output)
    report.save(output, overwrite=True)
    with atomic_output_file(output.with_suffix(".md"), overwrite=True) as tmp:
        tmp.write_text(render_report_md(report))
    return output


def with_latency(report: EvalReport, latency: dict[str, dict]) -> EvalReport:
    """``report`` with its latencies and speed-ups replaced by those of a shared measurement (:func:`shared_latency`;
    end-to-end seconds per image too when the measurement has them)."""
    timings = latency_entries(
        {name: latency[name] for name in report.models},
        report.settings.num_inference_steps,
        {
            name: latency[name].get("pipeline_s", entry.latency.pipeline_s_per_image)
            for name, entry in report.models.items()
        },
        "teacher" if "teacher" in report.models else "student",
    )
    models = {name: dataclasses.replace(entry, latency=timings[name]) for name, entry in report.models.items()}
    settings = dataclasses.replace(
        report.settings,
        latency_repeats=len(latency["student"]["samples_ms"]),
        latency_calls_per_sample=latency["student"]["calls_per_sample"],
        latency_models=list(latency.get("_models") or []) or None,
    )
    return dataclasses.replace(report, models=models, settings=settings)


def is_report_file(path: str | Path) -> bool:
    """Whether ``path`` is a ``report.json`` written by :func:`write_report`."""
    try:
        EvalReport.load(path)
    except LayerPruneError:
        return False
    return True


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


def evaluate_pipeline(
    model: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    teacher: str | None = None,
    no_teacher: bool = False,
    prompts: str | None = None,
    prompt_column: str | None = None,
    num_prompts: int | None = None,
    scorers: Sequence[str] | str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    resolution: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    latency_repeats: int = 5,
    device: str | None = None,
    dtype: str = "auto",
    revision: str | None = None,
    base_model: str | None = None,
    teacher_cache: bool | str | os.PathLike = True,
    progress: bool = True,
    latency: dict[str, dict] | None = None,
) -> EvalReport:
    """The ``eval`` stage: generate with ``model`` and its teacher on the same prompts and seeds, score both, time
    both, and (with ``output``) write ``report.json``, ``report.md`` and ``report_grid.png``.

    Args:
        model: a pipeline or transformer folder, a short name or a Hub id.
        output: the report path; ``None`` writes nothing. An existing report is replaced only with ``overwrite``.
        teacher: the teacher pipeline (default: the ``source_model`` the model records); ``no_teacher`` evaluates
            the model alone.
        prompts, num_prompts, scorers, steps, guidance, resolution: ``None`` takes the model's defaults (the
            toy world: ``toy:heldout``, its scorer and judge; PixArt-Sigma: HPDv2, HPSv2.1/PickScore/CLIP).
        teacher_cache: reuse the teacher's images and scores from an earlier evaluation with identical settings
            (``True``: ``default_cache_dir()/teacher-eval``; a folder; ``False``: always generate).
        latency: a shared measurement for the teacher and this model (see :func:`evaluate`); default: timed here.

    Everything a user can get wrong (output, path, model family, device, prompts, scorers) raises
    :class:`LayerPruneError` before the pipeline is loaded.
    """
    from .data import load_prompts
    from .modeling import (
        check_device,
        check_resolution_for,
        generation_defaults,
        load_pipeline,
        model_defaults,
        read_transformer_config,
        resolve_dtype,
    )
    from .scorers import load_scorer

    if output is not None:
        output = Path(output).expanduser()
        if output.is_dir():
            raise LayerPruneError(f"--output {output} is a folder; give a file name such as {output / 'report.json'}")
        check_report_output(output, overwrite=overwrite)
    for name, value in (("num-prompts", num_prompts), ("steps", steps), ("resolution", resolution)):
        if value is not None and value < 1:
            raise LayerPruneError(f"--{name} must be at least 1, got {value}")
    if isinstance(scorers, str):
        scorers = [s.strip() for s in scorers.split(",") if s.strip()]

    # Everything that can be wrong is checked before the (large) pipeline is loaded: path, family, device, prompts.
    check_resolution_for(model, resolution, read_transformer_config(model, revision=revision))
    torch_dtype = resolve_dtype(dtype, model)
    check_device(device, torch_dtype)
    prompt_set = load_prompts(prompts or model_defaults(model)["eval_prompts"], column=prompt_column, limit=num_prompts)
    pipe = load_pipeline(model, torch_dtype=torch_dtype, revision=revision, device=device, base_model=base_model)
    defaults = generation_defaults(model, pipe)
    scorer_names = list(scorers) if scorers else defaults["scorers"]
    loaded_scorers = {name: load_scorer(name, device=device or "cpu") for name in scorer_names}

    teacher_name = None if no_teacher else (teacher or pipe.transformer.config.get("source_model"))
    teacher_pipe = None
    if teacher_name:
        # The student's text encoder encodes the prompts for both models; the teacher does not load its own.
        teacher_pipe = load_pipeline(
            teacher_name, torch_dtype=torch_dtype, device=device, text_encoder=None, tokenizer=None
        )
    cache = None
    if teacher_cache is not False and teacher_pipe is not None:
        cache = TeacherEvalCache(None if teacher_cache is True else teacher_cache)
    report, images = evaluate(
        pipe,
        teacher_pipe,
        model_name=str(model),
        teacher_name=teacher_name,
        prompt_set=prompt_set,
        scorers=loaded_scorers,
        num_inference_steps=steps or defaults["num_inference_steps"],
        guidance_scale=guidance if guidance is not None else defaults["guidance_scale"],
        resolution=resolution or defaults["resolution"],
        max_sequence_length=defaults["max_sequence_length"],
        seed=seed,
        batch_size=batch_size,
        latency_repeats=latency_repeats,
        progress=progress,
        teacher_cache=cache,
        latency=latency,
    )
    if output is not None:
        write_report(report, images, output, overwrite=True)
    return report
