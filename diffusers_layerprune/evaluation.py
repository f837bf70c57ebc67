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
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from .data import PromptSet
from .errors import LayerPruneError
from .eval_report import (
    EvalReport,
    EvalSettings,
    ModelEval,
    ScoreSummary,
    check_report_output,
    grid_path,
    latency_entries,
    render_report_md,
)
from .latency import (  # noqa: F401 (elapsed_seconds, latency_inputs: benchmarks/gpu_check.py imports them from here)
    elapsed_seconds,
    latency_inputs,
    pipeline_parameters,
    pipeline_seconds,
    transformer_latency,
)
from .records import Record

# Extra per-image checks by prompt-set name (the toy world registers its judge here):
# fn(images [N,3,H,W] in [0,1], prompts) -> {"metric": per-image values in [0, 1]}.
IMAGE_CHECKS: dict[str, Callable[[torch.Tensor, Sequence[str]], dict[str, torch.Tensor]]] = {}


def _toy_judge(images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """The toy world's judge: per-image correctness of colour, position, shape, size and all four."""
    from .toy.judge import judge

    report = judge(images, list(prompts))
    return {f"judge_{name}": torch.tensor(values, dtype=torch.float32) for name, values in report.correct.items()}


IMAGE_CHECKS["toy"] = _toy_judge


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


def grid_captions(prompts: Sequence[str], width: int = 40) -> list[str]:
    """One caption per prompt, at most about ``width`` characters, and no two alike: prompts that share their first
    ``width`` characters show their start and end, and a prompt given twice gets its number."""
    short = [p if len(p) <= width else p[: width - 3] + "..." for p in prompts]
    half = (width - 3) // 2
    alike = {text for text in short if short.count(text) > 1}
    short = [
        p[:half] + "..." + p[-half:] if t in alike and len(p) > width else t
        for p, t in zip(prompts, short, strict=True)
    ]
    return [f"{i + 1}. {text}" if short.count(text) > 1 else text for i, text in enumerate(short)]


def image_grid(rows: dict[str, torch.Tensor], prompts: Sequence[str], path: Path, max_columns: int = 8) -> None:
    """Save a PNG grid: one row per model, the teacher's first (the model card says so), one column per prompt,
    same seeds; each column captioned by its own prompt (:func:`grid_captions`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(max_columns, len(prompts))
    rows = {name: rows[name] for name in sorted(rows, key=lambda name: name != "teacher")}
    captions = grid_captions(prompts[:n])
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
                ax.set_title(captions[c], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


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


@dataclasses.dataclass
class TeacherCacheEntry(Record):
    """``record.json`` of a teacher-cache entry: the teacher's :class:`ModelEval` (``entry``, latency left out) and
    the seconds its generation took, under the cache ``key`` and layout ``version``."""

    KIND = "teacher-eval-cache"
    WHAT = "teacher cache entry"
    FIX = "it is generated again on the next evaluation"
    REQUIRED = {"version": int, "key": str, "entry": dict, "seconds": float}

    version: int
    key: str
    entry: dict
    seconds: float


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
            record = TeacherCacheEntry.load(entry / "record.json")
            from safetensors.torch import load_file

            images = load_file(entry / "grid.safetensors")["images"].float() / 255
        except (OSError, ValueError, KeyError):  # LayerPruneError is a ValueError
            return None
        if record.version != TEACHER_CACHE_VERSION or record.key != key:
            return None
        return dataclasses.asdict(record), images

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
                TeacherCacheEntry(TEACHER_CACHE_VERSION, key, **record).save(tmp / "record.json")
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
            batch_size=family_of(pipe.transformer).denoising_batch(guidance_scale, pipe.transformer.config),
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
    images = {name: images[name] for name in models}  # the teacher's row first, also when its images were cached

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
    """Write ``report.json``, ``report.md`` and ``report_grid.png`` (named after ``output``) together: each is
    written to a temporary file first and the three are renamed into place only when all were written, so a failure
    (a full disk) leaves none of them new or half-written."""
    from contextlib import ExitStack

    from .outputs import atomic_output_file

    output = Path(output)
    with ExitStack() as stack:
        json_tmp, md_tmp, grid_tmp = (
            stack.enter_context(atomic_output_file(path, overwrite=overwrite))
            for path in (output, output.with_suffix(".md"), grid_path(output))
        )
        report.save(json_tmp, overwrite=True)
        md_tmp.write_text(render_report_md(report))
        image_grid(images, report.prompts, grid_tmp, max_columns=GRID_COLUMNS)
    return output


def write_report_files(report: EvalReport, output: str | Path) -> Path:
    """Rewrite ``report.json`` and ``report.md`` of an existing report (the image grid is left as it is)."""
    from .outputs import atomic_output_file

    output = Path(output)
    report.save(output, overwrite=True)
    with atomic_output_file(output.with_suffix(".md"), overwrite=True) as tmp:
        tmp.write_text(render_report_md(report))
    return output


def scorer_names(scorers: Sequence[str] | str | None) -> list[str] | None:
    """``--scorers`` as a list of names: a comma-separated string is split; ``None`` (the model's defaults) stays."""
    if isinstance(scorers, str):
        scorers = [s.strip() for s in scorers.split(",") if s.strip()]
        if not scorers:  # "" or "," would otherwise fall back to the default scorers without a word
            raise LayerPruneError("--scorers names no scorer; give e.g. hpsv2.1,clip, or leave it out for the defaults")
    return None if scorers is None else list(scorers)


@dataclasses.dataclass
class EvalSetup:
    """What ``layerprune eval`` loads once: the pipeline, its teacher (or ``None``), the prompts, the loaded scorers
    and the model's generation defaults (:func:`~diffusers_layerprune.modeling.generation_defaults`)."""

    pipe: object
    teacher_pipe: object | None
    teacher_name: str | None
    prompt_set: PromptSet
    scorers: dict[str, Callable]
    defaults: dict

    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        *,
        teacher: str | None,
        no_teacher: bool,
        prompts: str | None,
        prompt_column: str | None,
        num_prompts: int | None,
        scorers: Sequence[str] | None,
        device: str | None,
        dtype: str,
        revision: str | None = None,
        base_model: str | None = None,
    ) -> EvalSetup:
        """Load ``model`` and its teacher (``teacher``, else the ``source_model`` it records; none with
        ``no_teacher``), the prompts and the scorers (``None``: the model's defaults)."""
        from .data import load_prompts
        from .modeling import check_device, generation_defaults, load_pipeline, model_defaults, resolve_dtype
        from .scorers import load_scorer

        torch_dtype = resolve_dtype(dtype, model)
        check_device(device, torch_dtype)
        eval_prompts = prompts or model_defaults(model)["eval_prompts"]
        prompt_set = load_prompts(eval_prompts, column=prompt_column, limit=num_prompts)
        pipe = load_pipeline(model, torch_dtype=torch_dtype, revision=revision, device=device, base_model=base_model)
        defaults = generation_defaults(model, pipe)
        loaded = {name: load_scorer(name, device=device or "cpu") for name in (scorers or defaults["scorers"])}
        teacher_name = None if no_teacher else (teacher or pipe.transformer.config.get("source_model"))
        teacher_pipe = None
        if teacher_name:
            # The student's text encoder encodes the prompts for both models; the teacher does not load its own.
            teacher_pipe = load_pipeline(
                teacher_name, torch_dtype=torch_dtype, device=device, text_encoder=None, tokenizer=None
            )
        return cls(pipe, teacher_pipe, teacher_name, prompt_set, loaded, defaults)

    def evaluate(
        self,
        pipe=None,
        *,
        model_name: str,
        steps: int | None,
        guidance: float | None,
        resolution: int | None,
        **kwargs,
    ) -> tuple[EvalReport, dict[str, torch.Tensor]]:
        """:func:`evaluate` of ``pipe`` (default: the loaded one) against the teacher; ``steps``, ``guidance`` and
        ``resolution`` left ``None`` take the model's defaults; ``kwargs`` go to :func:`evaluate` as they are."""
        return evaluate(
            self.pipe if pipe is None else pipe,
            self.teacher_pipe,
            model_name=model_name,
            teacher_name=self.teacher_name,
            prompt_set=self.prompt_set,
            scorers=self.scorers,
            num_inference_steps=steps or self.defaults["num_inference_steps"],
            guidance_scale=guidance if guidance is not None else self.defaults["guidance_scale"],
            resolution=resolution or self.defaults["resolution"],
            max_sequence_length=self.defaults["max_sequence_length"],
            **kwargs,
        )


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
    from .modeling import check_resolution_for, read_transformer_config

    if output is not None:
        output = Path(output).expanduser()
        if output.is_dir():
            raise LayerPruneError(f"--output {output} is a folder; give a file name such as {output / 'report.json'}")
        check_report_output(output, overwrite=overwrite)
    for name, value in (("num-prompts", num_prompts), ("steps", steps), ("resolution", resolution)):
        if value is not None and value < 1:
            raise LayerPruneError(f"--{name} must be at least 1, got {value}")
    scorers = scorer_names(scorers)

    # Everything that can be wrong is checked before the (large) pipeline is loaded: path, family, device, prompts.
    check_resolution_for(model, resolution, read_transformer_config(model, revision=revision))
    setup = EvalSetup.load(
        model,
        teacher=teacher,
        no_teacher=no_teacher,
        prompts=prompts,
        prompt_column=prompt_column,
        num_prompts=num_prompts,
        scorers=scorers,
        device=device,
        dtype=dtype,
        revision=revision,
        base_model=base_model,
    )
    cache = None
    if teacher_cache is not False and setup.teacher_pipe is not None:
        cache = TeacherEvalCache(None if teacher_cache is True else teacher_cache)
    report, images = setup.evaluate(
        model_name=str(model),
        steps=steps,
        guidance=guidance,
        resolution=resolution,
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
