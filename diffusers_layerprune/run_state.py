"""What a recipe run folder records about itself: ``run.json`` (:class:`RunRecord`: which stages finished with which
settings, so a rerun reuses them), ``summary.json`` (:class:`RunSummary`) and the summary table printed at the end."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LayerPruneError
from .records import Record

# stage -> the stages that use its output, directly or not
DOWNSTREAM = {
    "score": ("prune", "distill", "extract", "eval_pruned", "eval_distilled"),
    "prune": ("distill", "extract", "eval_pruned", "eval_distilled"),
    "distill": ("extract", "eval_distilled"),
    "extract": (),  # an elastic run's smaller depths (their reports are written by eval_distilled)
    "eval_pruned": (),
    "eval_distilled": (),
}


@dataclass
class RunRecord(Record):
    """``run.json``: per stage, the settings and results of its last finished run (``stages``) and the settings of
    its last started attempt (``attempts``)."""

    KIND = "run"
    WHAT = "run record"
    FIX = "delete it to run every stage again (outputs are replaced)"
    REQUIRED = {"stages": dict}
    OPTIONAL = {"attempts": dict}

    stages: dict = field(default_factory=dict)
    attempts: dict | None = None

    def body(self) -> dict:
        return {"stages": self.stages} if self.attempts is None else {"stages": self.stages, "attempts": self.attempts}

    @classmethod
    def from_body(cls, data: dict) -> RunRecord:
        for name, entry in data["stages"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("settings", {}), dict):
                raise LayerPruneError(f"stage {name!r} holds no settings")
        return cls(data["stages"], data.get("attempts"))


@dataclass
class RunSummary(Record):
    """``summary.json``: the final model, the table of the run (one row per evaluated model) and each stage's
    status and seconds."""

    KIND = "run-summary"
    WHAT = "run summary"
    FIX = "run `layerprune run` again to write it"
    REQUIRED = {"final_model": str, "rows": list, "stages": dict}
    OPTIONAL = {"teacher_seconds_saved": float, "depth_models": dict}

    final_model: str
    rows: list
    stages: dict
    teacher_seconds_saved: float = 0.0
    depth_models: dict | None = None  # an elastic run: the folder of each trained depth


class RunState:
    """``run.json`` (:class:`RunRecord`) as a run reads and updates it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "run.json"
        self.data = {"stages": {}}
        if self.path.is_file():
            self.data = RunRecord.load(self.path).body()

    def done(self, stage: str, settings: dict) -> bool:
        entry = self.data["stages"].get(stage)
        return entry is not None and entry["settings"] == json.loads(json.dumps(settings, default=str))

    def attempt(self, stage: str) -> dict | None:
        """Settings of the last started attempt of ``stage`` (finished or not)."""
        return self.data.get("attempts", {}).get(stage)

    def start(self, stage: str, settings: dict) -> None:
        """Record that ``stage`` starts with ``settings``: it and the stages after it are no longer finished, so a
        run killed after the stage replaced its output but before :meth:`mark` never reuses that output under the
        old settings."""
        for name in (stage, *DOWNSTREAM[stage]):
            self.data["stages"].pop(name, None)
        self.data.setdefault("attempts", {})[stage] = json.loads(json.dumps(settings, default=str))
        self._save()

    def mark(self, stage: str, settings: dict, seconds: float, **results) -> None:
        self.data["stages"][stage] = {
            "settings": json.loads(json.dumps(settings, default=str)),
            "seconds": round(seconds, 1),
            **results,
        }
        # Stages built on this one's output must run again.
        for later in DOWNSTREAM[stage]:
            self.data["stages"].pop(later, None)
        self._save()

    def _save(self) -> None:
        RunRecord(self.data["stages"], self.data.get("attempts")).save(self.path)

    def get(self, stage: str) -> dict:
        return self.data["stages"][stage]


STAGE_TITLES = {
    "score": "score blocks",
    "prune": "prune",
    "distill": "distill",
    "extract": "extract depths",
    "eval_pruned": "evaluate pruned",
    "eval_distilled": "evaluate distilled",
}


def summary_rows(reports: dict) -> list[dict]:
    rows = []
    first = next(iter(reports.values()))
    labelled = [("teacher", first.teacher_entry)] if first.teacher_entry else []
    labelled += [("pruned", reports["eval_pruned"].student)]
    if "eval_distilled" in reports:
        labelled += [("pruned + distilled", reports["eval_distilled"].student)]
    # an elastic run: each trained depth of the one distillation, largest first
    labelled += [
        (f"elastic, {k[len('eval_depth') :]} blocks", r.student)
        for k, r in reports.items()
        if k.startswith("eval_depth")
    ]
    for label, entry in labelled:
        row = {
            "model": label,
            "blocks": entry.num_layers,
            "transformer_params": entry.parameters["transformer"],
            "speedup": entry.latency.speedup,
            "speedup_iqr": entry.latency.speedup_iqr,
            "latency_shared_with": entry.latency.shared_with,
        }
        row.update({f"score:{k}": v.mean for k, v in entry.scores.items()})
        row.update({f"judge:{k}": v.mean for k, v in entry.checks.items()})
        rows.append(row)
    return rows


def format_stages(timings: dict[str, tuple[str, float]], saved: float) -> str:
    """The stages' wall times of this run (reused stages cost nothing)."""
    titles = {**STAGE_TITLES, "card": "model card", "latency": "time models"}
    lines = [f"{'stage':<20}{'':>10}{'seconds':>10}"]
    for name, (status, seconds) in timings.items():
        lines.append(f"{titles.get(name, name):<20}{status:>10}{seconds:>10.1f}")
    lines.append(f"{'total':<20}{'':>10}{sum(s for _, s in timings.values()):>10.1f}")
    if saved:
        lines.append(f"teacher images and scores reused from the teacher cache: {saved:.1f} s of generation saved")
    return "\n".join(lines)


def format_summary(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("model", "speedup_iqr", "latency_shared_with")]
    labels = {"transformer_params": "params", "speedup": "speed-up"}
    head = f"{'':<20}" + "".join(f"{labels.get(k, k.split(':')[-1].removeprefix('judge_'))[-14:]:>15}" for k in keys)
    lines = [head]
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k)
            if k == "transformer_params":
                cells.append(f"{v / 1e6:>14.2f}M")
            elif k == "speedup":
                cells.append(f"{v:>14.2f}x")
            elif k.startswith("judge:"):
                cells.append(f"{100 * v:>14.1f}%")
            elif isinstance(v, float):
                cells.append(f"{v:>15.4f}")
            else:
                cells.append(f"{v!s:>15}")
        lines.append(f"{row['model']:<20}" + "".join(cells))
    spread = [
        f"{r['model']} {r['speedup_iqr'][0]:.2f}-{r['speedup_iqr'][1]:.2f}x" for r in rows if r.get("speedup_iqr")
    ]
    if spread:
        lines.append(
            "speed-up: teacher / model transformer latency, medians of interleaved repeats in one measurement; IQR "
            "of the per-repeat ratios: " + ", ".join(spread)
        )
    shared = {tuple(r["latency_shared_with"]) for r in rows if r.get("latency_shared_with")}
    for names in sorted(shared):
        lines.append(f"{' and '.join(names)} have one architecture: one latency, pooled over both models' samples")
    return "\n".join(lines)
