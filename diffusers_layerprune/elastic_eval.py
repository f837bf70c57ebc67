"""``layerprune eval`` of an elastic run's folder: every trained depth evaluated in one go (one load of the pipeline
and the teacher, the teacher's images generated once), a report per depth and quality against depth (JSON + plot).

Each depth is evaluated as the pruned model ``layerprune extract`` would write (built in memory, sharing the run's
weights), so its parameters and latency are those of that depth, not of the largest one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SUMMARY_FORMAT = "diffusers-layerprune/elastic-eval"


def output_paths(output: str | os.PathLike, depths) -> tuple[dict[int, Path], Path, Path]:
    """``(report per depth, summary JSON, plot)`` named after ``output``: ``X-depth9.json``..., ``X-depths.json``,
    ``X-depths.png``."""
    output = Path(output).expanduser()
    reports = {d: output.with_name(f"{output.stem}-depth{d}.json") for d in depths}
    summary = output.with_name(f"{output.stem}-depths.json")
    return reports, summary, summary.with_suffix(".png")


def evaluate_elastic(
    folder: str | os.PathLike,
    *,
    output: str | os.PathLike,
    overwrite: bool = False,
    teacher: str | None = None,
    no_teacher: bool = False,
    prompts: str | None = None,
    prompt_column: str | None = None,
    num_prompts: int | None = None,
    scorers=None,
    steps: int | None = None,
    guidance: float | None = None,
    resolution: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    latency_repeats: int = 5,
    device: str | None = None,
    dtype: str = "auto",
    teacher_cache: bool = True,
    progress: bool = True,
) -> dict:
    """Evaluate every trained depth of the elastic run in ``folder`` against its teacher (same prompts, seeds and
    settings as ``layerprune eval``); write a report per depth, the summary and the plot (:func:`output_paths`).
    Returns the summary. Every output is checked before anything is loaded."""
    from .elastic import check_elastic_folder
    from .eval_report import check_report_output
    from .outputs import check_output_file

    record, _ = check_elastic_folder(folder)
    reports, summary_path, plot_path = output_paths(output, record.depths)
    for path in reports.values():
        check_report_output(path, overwrite=overwrite)
    for path in (summary_path, plot_path):
        check_output_file(path, overwrite=overwrite)

    from .evaluation import EvalSetup, TeacherEvalCache, scorer_names, write_report
    from .families import family_of
    from .modeling import with_transformer
    from .provenance import public_name

    scorers = scorer_names(scorers)
    model = str(folder)
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
    )
    pipe, teacher_name = setup.pipe, setup.teacher_name
    # The teacher's images are generated for the first depth and reused by the others (same prompts and seeds);
    # without the shared cache, a cache of this run only.
    import tempfile

    scratch = tempfile.TemporaryDirectory(prefix="layerprune-elastic-eval-")
    cache = None
    if setup.teacher_pipe is not None:
        cache = TeacherEvalCache(scratch.name if teacher_cache is False else None)

    largest = record.kept(record.depths[0])
    rows, teacher_row = {}, None
    for depth in record.depths:
        keep = set(record.kept(depth))
        local = [i for i, source in enumerate(largest) if source in keep]
        transformer = pipe.transformer
        if len(local) < len(largest):
            transformer = (
                family_of(transformer)
                .pruned_class()
                .from_transformer(transformer, kept_layers=local, copy_weights=False)
            )
        report, images = setup.evaluate(
            with_transformer(pipe, transformer),
            model_name=f"{model}@depth{depth}",
            steps=steps,
            guidance=guidance,
            resolution=resolution,
            seed=seed,
            batch_size=batch_size,
            latency_repeats=latency_repeats,
            progress=progress,
            teacher_cache=cache,
        )
        write_report(report, images, reports[depth], overwrite=True)
        rows[str(depth)] = _row(report.student, reports[depth].name)
        if report.teacher_entry is not None:
            teacher_row = _row(report.teacher_entry, None)
    summary = {
        "format": SUMMARY_FORMAT,
        "format_version": 1,
        "model": public_name(model),
        "teacher": public_name(teacher_name),
        "source_num_layers": record.source_num_layers,
        "depths": record.depths,
        "by_depth": rows,
        "teacher_scores": teacher_row,
    }
    scratch.cleanup()
    from .outputs import atomic_output_file

    with atomic_output_file(summary_path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    plot_quality_against_depth(summary, plot_path)
    return summary


def _row(entry, report_name: str | None) -> dict:
    row = {
        "num_layers": entry.num_layers,
        "kept_layers": entry.kept_layers,
        "scores": {k: v.mean for k, v in entry.scores.items()},
        "scores_sem": {k: v.sem for k, v in entry.scores.items()},
        "checks": {k: v.mean for k, v in entry.checks.items()},
        "transformer_ms_per_step": entry.latency.transformer_ms_per_step,
        "speedup": entry.latency.speedup,
    }
    if report_name:
        row["report"] = report_name
    return row


def plot_quality_against_depth(summary: dict, path: Path) -> Path:
    """One panel per score (and judge check): each depth's mean with its standard error, the teacher dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .outputs import atomic_output_file

    depths = summary["depths"]
    rows = [summary["by_depth"][str(d)] for d in depths]
    metrics = [("scores", k) for k in rows[0]["scores"]] + [("checks", k) for k in rows[0]["checks"] if k == "overall"]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4 * max(1, len(metrics)), 3.4), squeeze=False)
    for ax, (kind, name) in zip(axes[0], metrics, strict=False):
        values = [r[kind][name] for r in rows]
        errors = [r.get(f"{kind}_sem", {}).get(name, 0.0) for r in rows]
        ax.errorbar(depths, values, yerr=errors, marker="o", capsize=3, label="elastic depths")
        teacher = (summary.get("teacher_scores") or {}).get(kind, {}).get(name)
        if teacher is not None:
            ax.axhline(teacher, linestyle=":", color="grey", label=f"teacher ({summary['source_num_layers']} blocks)")
        ax.set_xticks(depths)
        ax.set_xlabel("blocks")
        ax.set_title("judge: all four right" if kind == "checks" else name)
        ax.legend(fontsize=7)
    fig.suptitle(f"{summary['model']}: quality against depth", fontsize=9)
    fig.tight_layout()
    with atomic_output_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def cmd_eval_elastic(args, output: Path) -> int:
    """``layerprune eval`` of an elastic folder (``cli._cmd_eval`` hands it over): a table of quality by depth."""
    from .errors import LayerPruneError

    if args.base_model or args.revision:
        flag = "--base-model" if args.base_model else "--revision"
        raise LayerPruneError(f"{flag} does not apply to an elastic run's folder (a local pipeline): leave it out")
    summary = evaluate_elastic(
        args.model, output=output, overwrite=args.overwrite, teacher=args.teacher, no_teacher=args.no_teacher,
        prompts=args.prompts, prompt_column=args.prompt_column, num_prompts=args.num_prompts, scorers=args.scorers,
        steps=args.steps, guidance=args.guidance, resolution=args.resolution, seed=args.seed,
        batch_size=args.batch_size, latency_repeats=args.latency_repeats, device=args.device, dtype=args.dtype,
        teacher_cache=not args.no_teacher_cache,
    )  # fmt: skip
    reports, summary_path, plot_path = output_paths(output, summary["depths"])
    teacher = summary.get("teacher_scores")
    for depth, row in [("teacher", teacher), *((str(d), summary["by_depth"][str(d)]) for d in summary["depths"])]:
        if row is None:
            continue
        values = {**row["scores"], **{f"judge {k}": v for k, v in row["checks"].items() if k == "overall"}}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items())
        print(f"{depth:>8} ({row['num_layers']} blocks): {shown}")
    print(f"wrote {', '.join(str(p) for p in reports.values())}, {summary_path} and {plot_path}")
    return 0
