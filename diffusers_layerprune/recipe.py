"""The whole recipe in one call: score -> prune -> distill -> eval -> model card (-> push).

Each stage writes into the run folder and records its settings in ``run.json``; running again with the same folder
reuses every finished stage whose settings did not change (a changed setting re-runs that stage and the ones after
it). A recipe can be given as YAML with the same field names as :class:`Recipe`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LayerPruneError

# The distillation script is a module of the package, so a wheel install runs it too.
TRAIN_MODULE = "diffusers_layerprune.train_distill"


@dataclass
class Recipe:
    """Settings of a full run (YAML keys use the same names)."""

    model: str = "toy"
    criterion: str = "preference"
    scorer: str | None = None  # default: the model's (toy on the toy world, hpsv2.1 otherwise)
    prompts: str | None = None  # scoring prompts; default: the model's (toy:train; Pick-a-Pic for PixArt-Sigma)
    train_prompts: str | None = None  # distillation prompts; default: the model's (toy:train; Pick-a-Pic train)
    dtype: str = "auto"  # weights dtype; auto: the model's (bfloat16 for PixArt-Sigma, float32 for the toy)
    transformer_only: bool = False  # pruned/ and distilled/ hold only the transformer; the rest stays in `model`
    base_model: str | None = None  # Hub id of `model` for the card when `model` is a local folder
    num_prompts: int | None = 64
    scan_steps: int | None = None  # sampling steps while scoring; default: the model's
    num_layers: int | None = None  # pruned depth (blocks kept); or remove, or ratio
    remove: int | None = None  # blocks to remove
    ratio: float | None = 0.25  # fraction of blocks to remove
    plan: str = "one_shot"
    distill_steps: int = 300
    distill_batch_size: int = 16
    learning_rate: float = 2e-4
    use_lora: bool = False
    rank: int = 16
    eval_prompts: str | None = None
    eval_num_prompts: int | None = 200
    seed: int = 0
    output: str = "runs/toy"
    repo_id: str | None = None
    push: bool = False
    private: bool = False
    extra_train_args: list[str] = field(default_factory=list)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> Recipe:
        """Read a recipe file (fields as in the class); ``overrides`` (e.g. command-line flags) win.

        A YAML syntax error names the file, line and column; an unknown field or a value of the wrong type names
        the field and what it expects."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise LayerPruneError(f"recipe file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as error:
            raise LayerPruneError(f"recipe {path} is not UTF-8 text") from error
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise LayerPruneError(f"recipe {path}:{where}: {problem}") from error
        if not isinstance(data, dict):
            raise LayerPruneError(f"recipe {path} must be a mapping of field: value")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise LayerPruneError(f"recipe {path}: unknown field(s) {unknown}; known: {', '.join(sorted(known))}")
        for name, value in data.items():
            _check_field_type(cls, name, value, f"recipe {path}")
        return cls(**{**data, **overrides})

    def check(self) -> None:
        if sum(v is not None for v in (self.num_layers, self.remove, self.ratio)) != 1:
            raise LayerPruneError(
                "give exactly one of num_layers (blocks to keep), remove (blocks to remove) or ratio (fraction to "
                "remove)"
            )
        from .modeling import read_transformer_config

        config = read_transformer_config(self.model)  # a wrong model or depth fails before anything is written
        if config is not None:
            from .importance import num_to_remove

            num_to_remove(config["num_layers"], self.num_layers, self.ratio, remove=self.remove)
        if self.distill_steps < 0:
            raise LayerPruneError("distill_steps must be >= 0 (0 skips distillation)")
        if self.push and not self.repo_id:
            raise LayerPruneError("push needs repo_id (user/name)")
        if self.repo_id:
            from .hub import check_repo_id

            check_repo_id(self.repo_id)
        if self.base_model:
            from .hub import check_base_model

            check_base_model(self.base_model)


def _check_field_type(cls, name: str, value, where: str) -> None:
    """Refuse a recipe value whose type does not fit the field (``num_prompts: many``, ``use_lora: 3``)."""
    import types
    import typing

    hint = typing.get_type_hints(cls)[name]
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = tuple(t for t in typing.get_args(hint) if t is not type(None)) if is_union else (hint,)
    optional = is_union and type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return
        raise LayerPruneError(f"{where}: {name} cannot be empty")
    origins = tuple(typing.get_origin(t) or t for t in allowed)
    if bool in origins:
        ok = isinstance(value, bool)
    elif float in origins:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif int in origins:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif list in origins:
        ok = isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value)
    else:
        ok = isinstance(value, origins)
    if not ok:
        expected = " or ".join(getattr(t, "__name__", str(t)) for t in origins)
        raise LayerPruneError(f"{where}: {name} must be {expected}, got {value!r}")


# stage -> the stages that use its output, directly or not
DOWNSTREAM = {
    "score": ("prune", "distill", "eval_pruned", "eval_distilled"),
    "prune": ("distill", "eval_pruned", "eval_distilled"),
    "distill": ("eval_distilled",),
    "eval_pruned": (),
    "eval_distilled": (),
}


class RunState:
    """``run.json``: settings and results of finished stages."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "run.json"
        self.data = {"stages": {}}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise LayerPruneError(
                    f"{self.path} is damaged ({error}); delete it to run every stage again (outputs are replaced)"
                ) from error
            stages = self.data.get("stages") if isinstance(self.data, dict) else None
            if not isinstance(stages, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("settings", {}), dict) for v in stages.values()
            ):
                raise LayerPruneError(f"{self.path} is not a run record; delete it to run every stage again")

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
        from .outputs import atomic_output_file

        with atomic_output_file(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")

    def get(self, stage: str) -> dict:
        return self.data["stages"][stage]


def run_recipe(recipe: Recipe, *, log=print) -> dict:
    """Run (or resume) the recipe; returns the summary rows printed at the end."""
    recipe.check()
    state = RunState(Path(recipe.output).expanduser())  # a damaged run.json is refused before anything is written
    out = _prepare_run_folder(recipe)
    importance_path = out / "importance.json"

    # 1. Score the blocks.
    from .modeling import model_defaults

    defaults = model_defaults(recipe.model)
    eval_prompts = recipe.eval_prompts or defaults["eval_prompts"]
    score_settings = {
        k: getattr(recipe, k)
        for k in ("model", "criterion", "scorer", "prompts", "num_prompts", "scan_steps", "seed", "dtype")
    }
    score_settings["exclude"] = eval_prompts
    if not (state.done("score", score_settings) and importance_path.is_file()):
        log(f"[1/5] scoring blocks of {recipe.model} with the {recipe.criterion} criterion")
        start = time.perf_counter()
        state.start("score", score_settings)
        from .importance.cli import score_to_file

        # Score on training prompts, never on evaluation prompts: that would flatter the evaluation.
        score_to_file(
            recipe.model,
            recipe.criterion,
            importance_path,
            scorer=recipe.scorer,
            prompts=recipe.prompts or defaults["score_prompts"],
            exclude_prompts=eval_prompts,
            num_prompts=recipe.num_prompts,
            steps=recipe.scan_steps,
            seed=recipe.seed,
            dtype=recipe.dtype,
            log=log,
        )
        state.mark("score", score_settings, time.perf_counter() - start)
    else:
        log(f"[1/5] reusing {importance_path}")

    # 2. Prune.
    from .importance import LayerImportance, num_to_remove, plan_blocks

    importance = LayerImportance.load(importance_path)
    k = num_to_remove(importance.num_layers, recipe.num_layers, recipe.ratio, remove=recipe.remove)
    drop = sorted(plan_blocks(importance, k, recipe.plan))
    pruned = out / "pruned"
    prune_settings = {"model": recipe.model, "drop": drop, "dtype": recipe.dtype, "only": recipe.transformer_only}
    if not (state.done("prune", prune_settings) and _is_model_folder(pruned)):
        log(f"[2/5] removing blocks {drop} ({k} of {importance.num_layers}, plan {recipe.plan})")
        start = time.perf_counter()
        state.start("prune", prune_settings)
        from .modeling import prune_to_folder
        from .provenance import local_inputs

        prune_to_folder(
            recipe.model,
            pruned,
            pruned_layers=drop,
            transformer_only=recipe.transformer_only,
            dtype=recipe.dtype,
            overwrite=True,
            inputs=local_inputs(recipe.model),
        )
        _copy_importance(importance_path, pruned)
        state.mark("prune", prune_settings, time.perf_counter() - start)
    else:
        log(f"[2/5] reusing {pruned}")

    # 3. Distill (a separate process: the training script, as users run it).
    final = pruned
    if recipe.distill_steps > 0:
        final = out / "distilled"
        distill_settings = {
            k: getattr(recipe, k)
            for k in (
                "distill_steps",
                "distill_batch_size",
                "learning_rate",
                "use_lora",
                "rank",
                "seed",
                "train_prompts",
                "dtype",
                "transformer_only",
                "extra_train_args",
            )
        }
        distill_settings.update(model=recipe.model, drop=drop, exclude=eval_prompts)
        if not (state.done("distill", distill_settings) and _is_model_folder(final)):
            log(f"[3/5] distilling for {recipe.distill_steps} steps" + (" (LoRA)" if recipe.use_lora else ""))
            start = time.perf_counter()
            # Checkpoints are resumed only when they come from an attempt with these very settings; any other
            # output of ours in the folder is removed by the script (--overwrite_output_dir) before it starts.
            same = state.attempt("distill") == json.loads(json.dumps(distill_settings, default=str))
            state.start("distill", distill_settings)
            if same and any(final.glob("checkpoint-*")):
                resume = ["--resume_from_checkpoint", "latest"]
            else:
                resume = ["--overwrite_output_dir"] if final.exists() and any(final.iterdir()) else []
            cmd = [
                sys.executable,
                "-m",
                TRAIN_MODULE,
                "--teacher_model",
                recipe.model,
                "--student_model",
                str(pruned),
                "--output_dir",
                str(final),
                "--max_train_steps",
                str(recipe.distill_steps),
                "--train_batch_size",
                str(recipe.distill_batch_size),
                "--learning_rate",
                str(recipe.learning_rate),
                "--checkpointing_steps",
                str(max(1, recipe.distill_steps // 4)),
                "--checkpoints_total_limit",
                "1",
                "--lr_scheduler",
                "cosine",
                "--lr_warmup_steps",
                str(max(1, recipe.distill_steps // 20)),
                "--seed",
                str(recipe.seed),
                "--report_to",
                "none",
                "--prompts",
                recipe.train_prompts or defaults["train_prompts"],
                "--exclude_prompts",
                eval_prompts,
                "--save_dtype",
                recipe.dtype,
                *resume,
                *recipe.extra_train_args,
            ]
            if recipe.use_lora:
                cmd += ["--use_lora", "--rank", str(recipe.rank)]
            if recipe.transformer_only:
                cmd += ["--transformer_only"]
            if run_child(cmd) != 0:
                raise LayerPruneError(f"distillation failed (see above); re-run to resume from {final}")
            _copy_importance(importance_path, final)
            state.mark("distill", distill_settings, time.perf_counter() - start)
        else:
            log(f"[3/5] reusing {final}")

    # 4. Evaluate the pruned model before and (if distilled) after distillation, each against the teacher.
    reports = {}
    eval_settings = {"prompts": recipe.eval_prompts, "num_prompts": recipe.eval_num_prompts, "seed": recipe.seed}
    for stage, folder in (("eval_pruned", pruned), ("eval_distilled", final if final != pruned else None)):
        if folder is None:
            continue
        report = folder / "report.json"
        if not (state.done(stage, eval_settings) and report.is_file()):
            log(f"[4/5] evaluating {folder}")
            start = time.perf_counter()
            state.start(stage, eval_settings)
            _evaluate(recipe, folder, report)
            state.mark(stage, eval_settings, time.perf_counter() - start)
        else:
            log(f"[4/5] reusing {report}")
        reports[stage] = json.loads(report.read_text())

    # 5. Model card (and push).
    from .hub import push_pipeline, render_model_card, write_model_card

    repo_id = recipe.repo_id or f"your-name/{Path(recipe.output).name}"
    log(f"[5/5] model card {final / 'README.md'}" + (f", pushing to {repo_id}" if recipe.push else ""))
    if recipe.push:
        push_pipeline(final, repo_id, private=recipe.private, base_model=recipe.base_model)
    else:
        write_model_card(final, render_model_card(final, repo_id, base_model=recipe.base_model))

    rows = _summary_rows(reports)
    log(_format_summary(rows))
    from .outputs import atomic_output_file

    with atomic_output_file(out / "summary.json") as tmp:
        tmp.write_text(json.dumps({"final_model": str(final), "rows": rows}, indent=2))
    return rows


def _is_model_folder(folder: Path) -> bool:
    # a finished pipeline (model_index.json is written last) or transformer-only folder
    return (folder / "model_index.json").is_file() or (folder / "config.json").is_file()


def _prepare_run_folder(recipe: Recipe) -> Path:
    """Check the run folder and the stage folders in it before any work (a refusal changes nothing), then create
    it with the package's marker and remove temporaries that killed runs left in it."""
    from .outputs import check_output_dir, check_training_output_dir, check_work_dir, clean_stale_temps, write_marker
    from .provenance import full_local, local_inputs

    inputs = local_inputs(recipe.model)
    out = check_work_dir(recipe.output, inputs=inputs)
    if (out / "pruned").exists():
        check_output_dir(out / "pruned", overwrite=True, inputs=inputs)
    if (out / "distilled").exists():
        check_training_output_dir(out / "distilled", inputs=[*inputs, out / "pruned"], overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "run", local={"model": full_local(recipe.model)}, entries=())
    clean_stale_temps(out)
    return out


def run_child(cmd: list[str]) -> int:
    """Run ``cmd`` (the training script) and return its exit code; the child never outlives this process.

    On Linux the child asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), which covers a
    parent killed with SIGKILL. A SIGTERM or Ctrl-C delivered to this process terminates the child, waits for it,
    then goes on as it would have (exception or exit).
    """
    import signal
    import threading

    proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None)
    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_term(signum, frame):
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _die_with_parent(parent: int):
    """A ``preexec_fn`` asking the kernel to send the child SIGTERM when ``parent`` dies."""
    import ctypes
    import signal

    # Resolved here, in the parent: a child forked from a threaded process should not load libraries.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm)
        if os.getppid() != parent:  # the parent died before the request was in place
            os._exit(1)

    return preexec


def _copy_importance(importance_path: Path, folder: Path) -> None:
    from .outputs import atomic_output_file

    for suffix in (".json", ".png"):
        source = importance_path.with_suffix(suffix)
        if source.is_file():
            with atomic_output_file(folder / f"importance{suffix}") as tmp:
                shutil.copyfile(source, tmp)


def _evaluate(recipe: Recipe, folder: Path, report: Path) -> None:
    from .cli import main as cli

    args = [
        "eval",
        "--model",
        str(folder),
        "--output",
        str(report),
        "--overwrite",
        "--seed",
        str(recipe.seed),
        "--latency-repeats",
        "3",
    ]
    if recipe.eval_prompts:
        args += ["--prompts", recipe.eval_prompts]
    if recipe.eval_num_prompts:
        args += ["--num-prompts", str(recipe.eval_num_prompts)]
    if cli(args) != 0:
        raise LayerPruneError(f"evaluation of {folder} failed")


def _summary_rows(reports: dict) -> list[dict]:
    rows = []
    first = next(iter(reports.values()))
    labelled = [("teacher", first["models"]["teacher"])]
    labelled += [("pruned", reports["eval_pruned"]["models"]["student"])]
    if "eval_distilled" in reports:
        labelled += [("pruned + distilled", reports["eval_distilled"]["models"]["student"])]
    for label, entry in labelled:
        row = {
            "model": label,
            "blocks": entry["num_layers"],
            "transformer_params": entry["parameters"]["transformer"],
            "speedup": entry["latency"]["speedup"],
        }
        row.update({f"score:{k}": v["mean"] for k, v in entry["scores"].items()})
        row.update({f"judge:{k}": v["mean"] for k, v in entry.get("checks", {}).items()})
        rows.append(row)
    return rows


def _format_summary(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k != "model"]
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
    return "\n".join(lines)
