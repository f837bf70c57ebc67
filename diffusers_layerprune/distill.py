"""Knowledge-distillation losses and student <-> teacher block pairing.

    L = lambda_task * MSE(pred_s, target) + lambda_out * MSE(pred_s, pred_t)
        + lambda_var * MSE(var_s, var_t) + lambda_feat * sum_i F(h_s^i, h_t^{kept_layers[i]})

Output and feature KD follow BK-SDM (Kim et al., 2023: plain MSE, feature losses summed over pairs, all weights 1.0);
the ``normalized`` feature loss follows LAPTOP-Diff (Zhang et al., 2024): each pair's MSE is divided by the mean
squared value of the teacher feature, so blocks whose activations are large do not dominate.

PixArt-Sigma predicts epsilon and a learned variance (``out_channels = 8``): channels ``[:4]`` are epsilon, ``[4:]``
the variance interpolation. The prediction (epsilon, or x0 / v for models trained so) is what sampling uses, so it
carries the task and output losses; the variance
channels are distilled with their own weight (``lambda_var``, default 1.0) because schedulers that use the learned
variance (e.g. DDPM with ``variance_type="learned_range"``) need them, and matching them costs nothing extra.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LayerPruneError

FEATURE_LOSSES = ("mse", "normalized")


def block_pairs(student: nn.Module, teacher: nn.Module) -> list[tuple[int, int]]:
    """``[(student_block, teacher_block), ...]``: student block ``i`` is paired with teacher ``kept_layers[i]``.

    Raises :class:`LayerPruneError` when the student does not record ``kept_layers`` or does not come from a
    teacher of this depth and width.
    """
    check_student_teacher(student.config, teacher.config)
    return list(enumerate(student.config.kept_layers))


def check_student_teacher(student_config: Mapping, teacher_config: Mapping) -> None:
    """Fail before training when the student cannot be distilled from this teacher."""
    kept = student_config.get("kept_layers")
    if kept is None:
        raise LayerPruneError(
            "the student's config has no kept_layers: prune it with `layerprune prune` or "
            "PrunedPixArtTransformer.from_transformer so each block knows its teacher block"
        )
    teacher_depth = teacher_config["num_layers"]
    source_depth = student_config.get("source_num_layers")
    if source_depth is not None and source_depth != teacher_depth:
        raise LayerPruneError(
            f"the student was pruned from a {source_depth}-block model but the teacher has {teacher_depth} blocks"
        )
    if max(kept) >= teacher_depth:
        raise LayerPruneError(f"student kept_layers {kept} do not fit a teacher of {teacher_depth} blocks")
    for key in ("num_attention_heads", "attention_head_dim", "caption_channels", "in_channels", "out_channels"):
        if student_config.get(key) != teacher_config.get(key):
            raise LayerPruneError(
                f"student and teacher differ in {key} ({student_config.get(key)} vs {teacher_config.get(key)}): "
                "the student must be pruned from this teacher"
            )


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Loss between one pair of block features ``[B, N, D]``; ``teacher`` is treated as a constant."""
    teacher = teacher.detach().float()
    mse = F.mse_loss(student.float(), teacher)
    if kind == "mse":
        return mse
    if kind == "normalized":
        return mse / teacher.pow(2).mean().clamp_min(1e-12)
    raise LayerPruneError(f"unknown feature loss {kind!r}; choose one of {', '.join(FEATURE_LOSSES)}")


def feature_kd_loss(
    student_features: Mapping[int, torch.Tensor],
    teacher_features: Mapping[int, torch.Tensor],
    pairs: Sequence[tuple[int, int]],
    kind: str = "mse",
) -> torch.Tensor:
    """Sum over ``pairs`` of :func:`feature_loss` between student block outputs and their teacher blocks."""
    terms = [feature_loss(student_features[s], teacher_features[t], kind) for s, t in pairs]
    return torch.stack(terms).sum()


@dataclass
class KDWeights:
    """Loss weights (BK-SDM uses 1.0 for each)."""

    task: float = 1.0
    output: float = 1.0
    variance: float = 1.0
    feature: float = 1.0
    feature_loss: str = "mse"

    def __post_init__(self) -> None:
        if self.feature_loss not in FEATURE_LOSSES:
            raise LayerPruneError(
                f"unknown feature loss {self.feature_loss!r}; choose one of {', '.join(FEATURE_LOSSES)}"
            )
        if min(self.task, self.output, self.variance, self.feature) < 0:
            raise LayerPruneError("loss weights must be >= 0")


def task_target(prediction_type: str, latents: torch.Tensor, noise: torch.Tensor, scheduler, timesteps) -> torch.Tensor:
    """What the model is trained to predict: the noise (``epsilon``), the clean latents (``sample``) or the
    velocity (``v_prediction``), following the scheduler's ``prediction_type``."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return latents
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise LayerPruneError(f"unsupported prediction_type {prediction_type!r} (epsilon, sample or v_prediction)")


def kd_losses(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    target: torch.Tensor,
    student_features: Mapping[int, torch.Tensor],
    teacher_features: Mapping[int, torch.Tensor],
    pairs: Sequence[tuple[int, int]],
    weights: KDWeights,
) -> dict[str, torch.Tensor]:
    """All loss terms and their weighted sum ``"loss"``.

    Args:
        student_out / teacher_out: transformer outputs ``[B, C, H, W]``; with ``C == 2 * target channels`` the second
            half is the learned variance.
        target: the task target (:func:`task_target`; the added noise for PixArt's epsilon prediction),
            ``[B, C_pred, H, W]``.
    """
    c = target.shape[1]
    pred_s, pred_t = student_out[:, :c].float(), teacher_out[:, :c].detach().float()
    parts = {
        "task": F.mse_loss(pred_s, target.float()),
        "output": F.mse_loss(pred_s, pred_t),
    }
    if student_out.shape[1] > c:
        parts["variance"] = F.mse_loss(student_out[:, c:].float(), teacher_out[:, c:].detach().float())
    if pairs and weights.feature > 0:
        parts["feature"] = feature_kd_loss(student_features, teacher_features, pairs, weights.feature_loss)
    scale = {"task": weights.task, "output": weights.output, "variance": weights.variance, "feature": weights.feature}
    parts["loss"] = sum(scale[name] * value for name, value in parts.items())
    return parts


# ----------------------------------------------------------------------------------------------------------------
# Training-run helpers used by training/train_distill.py
# ----------------------------------------------------------------------------------------------------------------


def student_config_path(student: str | os.PathLike) -> tuple[Path, str | None]:
    """``(folder, subfolder)`` of a student given as a pipeline folder or a transformer folder."""
    path = Path(student).expanduser()
    if not path.exists():
        raise LayerPruneError(f"student model {student} does not exist (expected a folder written by layerprune prune)")
    if (path / "model_index.json").is_file():
        if not (path / "transformer" / "config.json").is_file():
            raise LayerPruneError(f"{student} has no transformer/config.json")
        return path, "transformer"
    if (path / "config.json").is_file():
        return path, None
    raise LayerPruneError(f"{student} is neither a pipeline folder nor a transformer folder")


def read_student_config(student: str | os.PathLike) -> dict:
    """The student's transformer config, checked like every pruned folder (``validation``): readable JSON, a
    consistent ``kept_layers`` record, and weights whose blocks match ``num_layers``."""
    from .validation import check_transformer_config, check_weights_cover_blocks

    folder, subfolder = student_config_path(student)
    config_dir = (folder / subfolder) if subfolder else folder
    try:
        config = json.loads(config_dir.joinpath("config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LayerPruneError(f"{config_dir / 'config.json'} is not a readable JSON config ({error})") from error
    if not isinstance(config, dict):
        raise LayerPruneError(f"{config_dir / 'config.json'} is not a model config")
    check_transformer_config(config, str(config_dir / "config.json"))
    check_weights_cover_blocks(config_dir, config["num_layers"])
    return config


def step_generator(seed: int, step: int, process_index: int = 0) -> torch.Generator:
    """The RNG for one optimisation step: noise and timesteps depend only on (seed, step, process), so a resumed
    run draws exactly what an uninterrupted run draws."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + process_index)


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-<step>`` folders in ``output_dir``, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def remove_old_checkpoints(output_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete the oldest checkpoints so that, with the one about to be saved, at most ``keep`` remain."""
    if keep is None:
        return []
    existing = checkpoints(output_dir)
    doomed = existing[: max(0, len(existing) - keep + 1)]
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
