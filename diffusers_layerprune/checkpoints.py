"""Checkpoints of a distillation run: the ``checkpoint-<step>`` folders, and the record in each
(``layerprune_checkpoint.json``) that says which run it belongs to, so that a resume with another student, LoRA, EMA
or settings is refused before anything is loaded."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import LayerPruneError
from .records import Record


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-<step>`` folders in ``output_dir``, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def remove_old_checkpoints(output_dir: str | os.PathLike, keep: int | None, newest: Path | None = None) -> list[Path]:
    """Delete checkpoints so that at most ``keep`` remain: ``newest`` (the one just completed) and the latest others.

    Called after a checkpoint is complete, never before: a run killed while saving still has its previous
    checkpoints.
    """
    if keep is None:
        return []
    existing = checkpoints(output_dir)
    if newest is not None:
        existing = [p for p in existing if p.name != Path(newest).name] + [Path(newest)]
    doomed = existing[: max(0, len(existing) - max(1, keep))]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def move_into(src: Path, dst: Path, *, last: str = "model_index.json") -> None:
    """Move every entry of ``src`` into ``dst`` (replacing same-named entries), ``last`` at the very end, so that a
    folder holding ``model_index.json`` is always a complete pipeline."""
    dst.mkdir(parents=True, exist_ok=True)
    entries = sorted(src.iterdir(), key=lambda p: p.name == last)
    for entry in entries:
        target = dst / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    src.rmdir()


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: which run a checkpoint belongs to
# ----------------------------------------------------------------------------------------------------------------

CHECKPOINT_RECORD = "layerprune_checkpoint.json"
_IDENTITY_KEYS = (
    "kept_layers",
    "num_layers",
    "source_num_layers",
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "caption_channels",
    "patch_size",
)


def checkpoint_identity(
    student_config: Mapping,
    *,
    use_lora: bool = False,
    rank: int | None = None,
    lora_alpha: float | None = None,
    lora_target_modules: Sequence[str] = (),
    use_ema: bool = False,
    settings: Mapping | None = None,
) -> dict:
    """What a checkpoint must match to be resumed by a run: the student's structure (which teacher blocks it kept,
    its widths), what is trained (all weights or which LoRA adapters), whether an EMA copy is kept, and
    ``settings``: every option that shapes the optimizer state and the data it saw, by flag name (learning rate,
    batch size, schedule, losses, data and its content, teacher, seed...; see ``train_distill.run_settings``)."""
    identity = {
        "student": {k: student_config.get(k) for k in _IDENTITY_KEYS},
        "lora": {"rank": rank, "alpha": lora_alpha, "target_modules": list(lora_target_modules)} if use_lora else None,
        "ema": bool(use_ema),
    }
    if settings is not None:  # as JSON gives it back (tuples as lists), so a record compares equal to itself
        identity["settings"] = json.loads(json.dumps(dict(settings)))
    return identity


class CheckpointMismatch(LayerPruneError):
    """A checkpoint that another run (other student, LoRA, EMA or settings) saved. ``reason`` says what differs,
    without the fix, for a run that starts over instead (``--resume_mismatch restart``)."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason}; {fix}")
        self.reason = reason


def _shown(value) -> str:
    return "(not set)" if value is None else str(value)


@dataclass
class CheckpointRecord(Record):
    """``layerprune_checkpoint.json``: the step a checkpoint was saved at and the identity of its run
    (:func:`checkpoint_identity`: the student's structure, LoRA settings, EMA, and the run's settings by flag name;
    ``settings`` is ``None`` in records of versions that kept none)."""

    KIND = "distill-checkpoint"
    FORMAT = "diffusers-layerprune/distill-checkpoint"
    WHAT = "checkpoint record"
    FIX = "resume from another checkpoint, or start a new --output_dir"
    REQUIRED = {"step": int, "student": dict, "lora": (dict, type(None)), "ema": bool}
    OPTIONAL = {"settings": dict}

    step: int
    student: dict
    lora: dict | None
    ema: bool
    settings: dict | None = None

    def body(self) -> dict:
        data = {"step": self.step, "student": self.student, "lora": self.lora, "ema": self.ema}
        return data if self.settings is None else {**data, "settings": self.settings}


def write_checkpoint_record(folder: str | os.PathLike, identity: dict, step: int) -> None:
    CheckpointRecord(step=step, **identity).save(Path(folder, CHECKPOINT_RECORD))


def check_checkpoint(path: str | os.PathLike, identity: dict) -> None:
    """Refuse (before anything is loaded or written) to resume from a checkpoint of another run: a different
    student, LoRA instead of full training, or with/without EMA."""
    path = Path(path)
    if not path.is_dir():
        raise LayerPruneError(f"checkpoint {path} does not exist")
    record_file = path / CHECKPOINT_RECORD
    if not record_file.is_file():
        _check_legacy_checkpoint(path, identity)
        return
    record = CheckpointRecord.load(record_file)
    mine, theirs = identity["student"], record.student
    new_dir = "start a new --output_dir, or pass --resume_mismatch restart to start over in this one"
    for key in _IDENTITY_KEYS:
        if theirs.get(key) != mine.get(key):
            raise CheckpointMismatch(
                f"checkpoint {path} belongs to another run: its student has {key} {theirs.get(key)}, this student "
                f"{mine.get(key)}",
                f"resume with the student it was trained from, or {new_dir}",
            )
    if record.lora != identity["lora"]:
        what = lambda lora: f"LoRA {lora}" if lora else "full fine-tuning"  # noqa: E731
        raise CheckpointMismatch(
            f"checkpoint {path} belongs to another run ({what(record.lora)}, this run: {what(identity['lora'])})",
            f"pass the same LoRA options, or {new_dir}",
        )
    if record.ema != identity["ema"]:
        raise CheckpointMismatch(
            f"checkpoint {path} was saved {'with' if record.ema else 'without'} --use_ema",
            f"resume it {'with' if record.ema else 'without'} --use_ema, or {new_dir}",
        )
    saved, now = record.settings, identity.get("settings")
    if saved is None or now is None:
        return  # an earlier version recorded no settings: only the checks above can be made
    # A setting this version records and the checkpoint's did not is not a difference.
    changed = [key for key in now if key in saved and saved[key] != now[key]]
    if changed:
        key = changed[0]
        more = f" (and {', '.join('--' + k for k in changed[1:])})" if changed[1:] else ""
        raise CheckpointMismatch(
            f"checkpoint {path} was trained with --{key} {_shown(saved[key])}, this run has "
            f"{_shown(now[key])}{more}: resuming would continue its optimizer state and data order under other "
            "settings",
            f"resume with the same value, or {new_dir}",
        )


def _check_legacy_checkpoint(path: Path, identity: dict) -> None:
    """A checkpoint of an earlier version (accelerate's ``model.safetensors``, no record): its block count must be
    the student's."""
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise LayerPruneError(f"{path} is not a checkpoint of train_distill (no {CHECKPOINT_RECORD})")
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        blocks = {int(k.split(".")[1]) for k in f.keys() if k.startswith("transformer_blocks.")}
    expected = identity["student"].get("num_layers")
    if expected is not None and len(blocks) != expected:
        raise LayerPruneError(
            f"checkpoint {path} belongs to another run: it holds {len(blocks)} blocks, this student {expected}"
        )
