"""The evaluation report (``report.json``): its typed record (:class:`EvalReport`, written and read by one piece of code),
its markdown rendering, and the checks on where a report may be written."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import LayerPruneError
from .latency import quartiles
from .records import Record


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
class EvalReport(Record):
    """``report.json``: a model evaluated against its teacher on the same prompts and seeds.

    ``models`` maps ``"student"`` (and ``"teacher"``) to :class:`ModelEval`. Models, prompt sets and scorers are
    recorded by public name (the report is uploaded with the model).
    """

    KIND = "eval-report"
    SCHEMA_VERSION = REPORT_FORMAT_VERSION
    FORMAT = REPORT_FORMAT
    FORMAT_REQUIRED = False  # the first reports had no format key
    WHAT = "evaluation report"
    FIX = "re-create it with `layerprune eval`"
    REQUIRED = {"settings": dict, "models": dict}
    OPTIONAL = {"model": str, "teacher": str, "prompts": list, "environment": dict}

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

    def body(self) -> dict:
        return {
            "model": self.model,
            "teacher": self.teacher,
            "settings": dataclasses.asdict(self.settings),
            "models": {k: v.to_dict() for k, v in self.models.items()},
            "prompts": list(self.prompts),
            "environment": self.environment,
        }

    @classmethod
    def from_body(cls, data: dict) -> EvalReport:
        known = {f.name for f in dataclasses.fields(EvalSettings)}
        return cls(
            model=data.get("model"),
            teacher=data.get("teacher"),
            settings=EvalSettings(**{k: v for k, v in data["settings"].items() if k in known}),
            models={k: ModelEval.from_dict(v) for k, v in data["models"].items()},
            prompts=list(data.get("prompts", [])),
            environment=dict(data.get("environment", {})),
        )

    def model_name(self) -> str | None:
        return self.model


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


def summarize(values: torch.Tensor) -> dict[str, float]:
    """Mean, population std and standard error of per-image values."""
    v = values.double()
    n = v.numel()
    std = v.std(unbiased=False).item() if n > 1 else 0.0
    return {"mean": v.mean().item(), "std": std, "sem": std / math.sqrt(n) if n > 1 else 0.0, "n": n}


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
