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

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config_record import expose_record
from .errors import LayerPruneError
from .records import Record
from .validation import FEATURE_LOSS_NAMES

FEATURE_LOSSES = FEATURE_LOSS_NAMES


def block_pairs(student: nn.Module, teacher: nn.Module) -> list[tuple[int, int]]:
    """``[(student_block, teacher_block), ...]``: student block ``i`` is paired with teacher ``kept_layers[i]``.

    Raises :class:`LayerPruneError` when the student does not record ``kept_layers`` or does not come from a
    teacher of this depth and width.
    """
    from .families import family_of

    check_student_teacher(student.config, teacher.config, family_of(teacher))
    return list(enumerate(student.config.kept_layers))


def check_student_teacher(student_config: Mapping, teacher_config: Mapping, family=None) -> None:
    """Fail before training when the student cannot be distilled from this teacher: it must be a pruned
    transformer (``kept_layers``: distinct teacher block indices in increasing order, one per student block) of a
    teacher of this depth and width."""
    kept = student_config.get("kept_layers")
    if kept is None:
        raise LayerPruneError(
            "the student's config has no kept_layers: prune it with `layerprune prune` or "
            "the family's pruned class (from_transformer) so each block knows its teacher block"
        )
    from .families import DEFAULT_FAMILY, family_by_class_name, get_family

    if family is None:  # from the config's class name; configs without one are the first family's (one stack)
        family = family_by_class_name(str(teacher_config.get("_class_name"))) or get_family(DEFAULT_FAMILY)
    teacher_depth = family.depth(teacher_config)  # global numbering over all stacks (Flux: double + single)
    source_depth = student_config.get("source_num_layers")
    if source_depth is not None and source_depth != teacher_depth:
        raise LayerPruneError(
            f"the student was pruned from a {source_depth}-block model but the teacher has {teacher_depth} blocks"
        )
    if (
        not isinstance(kept, list)
        or not kept
        or any(isinstance(i, bool) or not isinstance(i, int) for i in kept)
        or min(kept) < 0
        or max(kept) >= teacher_depth
    ):
        raise LayerPruneError(
            f"student kept_layers {kept} do not fit a teacher of {teacher_depth} blocks (out of its range "
            f"0..{teacher_depth - 1}): the student must be pruned from this teacher"
        )
    if any(b <= a for a, b in zip(kept, kept[1:], strict=False)):
        raise LayerPruneError(f"student kept_layers {kept} must be distinct teacher blocks in increasing order")
    student_depth = sum(student_config.get(s.depth_key) or 0 for s in family.stacks)
    if student_config.get("num_layers") is not None and student_depth != len(kept):
        raise LayerPruneError(f"the student has {student_depth} blocks but kept_layers lists {len(kept)}")
    for key in (
        "num_attention_heads",
        "attention_head_dim",
        "caption_channels",
        "in_channels",
        "out_channels",
        "patch_size",
    ):
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


def flow_noising(
    latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, num_train_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified-flow training pair (Esser et al., 2024; Sana, SD3, Flux): ``x_t = (1 - s) x0 + s eps`` with
    ``s = t / num_train_timesteps``, and the velocity target ``eps - x0`` the model predicts. Returns ``(x_t,
    target)``, shaped like ``latents``."""
    sigma = (timesteps.to(torch.float32) / num_train_timesteps).view(-1, *([1] * (latents.dim() - 1))).to(latents)
    return (1 - sigma) * latents + sigma * noise, noise - latents


def kd_losses(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    target: torch.Tensor,
    student_features: Mapping[int, torch.Tensor],
    teacher_features: Mapping[int, torch.Tensor],
    pairs: Sequence[tuple[int, int]],
    weights: KDWeights,
    sample_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All loss terms and their weighted sum ``"loss"``.

    Args:
        student_out / teacher_out: transformer outputs ``[B, C, H, W]``; with ``C == 2 * target channels`` the second
            half is the learned variance.
        target: the task target (:func:`task_target`; the added noise for PixArt's epsilon prediction),
            ``[B, C_pred, H, W]``.
        sample_weights: ``[B]`` weights of each sample's task and output losses (a flow-matching weighting scheme,
            ``flow_objective``): ``mean_b(w_b * mean(diff_b ** 2))``, as diffusers' examples weight their loss.
    """
    c = target.shape[1]
    pred_s, pred_t = student_out[:, :c].float(), teacher_out[:, :c].detach().float()

    def mse(a, b):
        if sample_weights is None:
            return F.mse_loss(a, b)
        return (sample_weights.to(a.device, torch.float32) * (a - b).pow(2).flatten(1).mean(1)).mean()

    parts = {
        "task": mse(pred_s, target.float()),
        "output": mse(pred_s, pred_t),
    }
    if student_out.shape[1] > c:
        parts["variance"] = F.mse_loss(student_out[:, c:].float(), teacher_out[:, c:].detach().float())
    if pairs and weights.feature > 0:
        parts["feature"] = feature_kd_loss(student_features, teacher_features, pairs, weights.feature_loss)
    scale = {"task": weights.task, "output": weights.output, "variance": weights.variance, "feature": weights.feature}
    parts["loss"] = sum(scale[name] * value for name, value in parts.items())
    return parts


def kd_step_losses(
    student: nn.Module,
    teacher: nn.Module,
    noisy: torch.Tensor,
    cond: Mapping | Callable[[nn.Module, torch.Tensor], torch.Tensor],
    target: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    weights: KDWeights,
    *,
    student_blocks: nn.Module | None = None,
    autocast=None,
    sample_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One distillation forward: the teacher without gradients (keeping the outputs of its paired blocks), the
    student with them, and :func:`kd_losses`. What ``train_distill`` runs each step and ``bench_train`` times.

    ``student`` is what is called (e.g. the DDP-wrapped model); ``student_blocks`` the module whose blocks are
    watched (the unwrapped model; default ``student``); ``autocast`` a context for the student's forward (mixed
    precision). ``cond`` is the transformer's keyword arguments besides ``noisy``, or ``(model, noisy) ->
    prediction`` (a family's forward, ``ModelFamily.forward``, with the batch's timesteps and text bound).
    ``sample_weights``: per-sample loss weights, see :func:`kd_losses`.
    """
    from contextlib import nullcontext

    from .blocks import capture_block_features

    def run(model):
        return cond(model, noisy) if callable(cond) else model(noisy, **cond).sample

    with torch.no_grad(), capture_block_features(teacher, [t for _, t in pairs], inputs=False) as t_feat:
        teacher_out = run(teacher)
    watched = student if student_blocks is None else student_blocks
    with capture_block_features(watched, [s for s, _ in pairs], inputs=False, detach=False) as s_feat:
        with autocast or nullcontext():
            student_out = run(student)
    return kd_losses(student_out, teacher_out, target, s_feat.outputs, t_feat.outputs, pairs, weights, sample_weights)


# ----------------------------------------------------------------------------------------------------------------
# Training-run helpers used by training/train_distill.py
# ----------------------------------------------------------------------------------------------------------------


def student_location(student: str | os.PathLike, revision: str | None = None) -> tuple[str, str | None]:
    """``(folder or Hub id, subfolder)`` of a student given as a pipeline or transformer, local or on the Hub.

    A local pipeline folder keeps its transformer in ``transformer/``; a transformer saved alone
    (``--transformer-only``) is the folder itself. A Hub id is looked up the same way (``transformer/config.json``,
    else ``config.json``), at ``revision``.
    """
    return _student_config(student, revision)[:2]


def _student_config(student: str | os.PathLike, revision: str | None) -> tuple[str, str | None, dict]:
    from .families import family_of_config
    from .validation import check_transformer_config, check_weights_cover_blocks

    name = str(student)
    path = Path(name).expanduser()
    if path.exists():
        if (path / "model_index.json").is_file():
            if not (path / "transformer" / "config.json").is_file():
                raise LayerPruneError(f"{student} has no transformer/config.json")
            subfolder = "transformer"
        elif (path / "config.json").is_file():
            subfolder = None
        else:
            raise LayerPruneError(f"{student} is neither a pipeline folder nor a transformer folder")
        config_dir = path / subfolder if subfolder else path
        config = _read_config(config_dir / "config.json")
        family = family_of_config(config, str(student))
        check_transformer_config(config, str(config_dir / "config.json"), tuple(s.depth_key for s in family.stacks))
        for stack in family.stacks:
            check_weights_cover_blocks(config_dir, config[stack.depth_key], stack.attr)
        return str(path), subfolder, config
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or "/" not in name:
        raise LayerPruneError(
            f"student model {student} does not exist (expected a folder written by layerprune prune, or a Hub id "
            "user/name)"
        )
    from huggingface_hub import hf_hub_download

    failure = None
    for subfolder in ("transformer", None):
        try:
            config_file = hf_hub_download(name, "config.json", subfolder=subfolder, revision=revision)
        except Exception as error:  # not found, offline and not cached, no access: try the other layout first
            failure = failure or error
            continue
        config = _read_config(Path(config_file))
        check_transformer_config(config, f"{name}/{subfolder + '/' if subfolder else ''}config.json")
        return name, subfolder, config
    from .modeling import _first_line

    first = _first_line(failure, name)
    raise LayerPruneError(
        f"could not read the student {name!r} from the Hub (transformer/config.json or config.json"
        f"{f' at revision {revision}' if revision else ''}): {first}"
    )


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LayerPruneError(f"{path} is not a readable JSON config ({error})") from error
    if not isinstance(config, dict):
        raise LayerPruneError(f"{path} is not a model config")
    return expose_record(config)


def student_config_path(student: str | os.PathLike) -> tuple[Path, str | None]:
    """``(folder, subfolder)`` of a local student given as a pipeline folder or a transformer folder."""
    folder, subfolder = student_location(student)
    return Path(folder), subfolder


def read_student_config(student: str | os.PathLike, revision: str | None = None) -> dict:
    """The student transformer's ``config.json`` (local folder or Hub id), without loading weights, checked like
    every pruned folder (``validation``): readable JSON, a consistent ``kept_layers`` record, and (local folders)
    weights whose blocks match ``num_layers``."""
    return _student_config(student, revision)[2]


def step_generator(seed: int, step: int, process_index: int = 0) -> torch.Generator:
    """The RNG for one optimisation step: noise and timesteps depend only on (seed, step), so a resumed run draws
    exactly what an uninterrupted run draws. (``process_index`` is kept for callers of the per-process draw of
    earlier versions; :func:`step_noise` draws for the whole global batch and needs none.)"""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + process_index)


def step_noise(
    seed: int,
    step: int,
    latents_shape: Sequence[int],
    *,
    global_batch_size: int,
    offset: int,
    num_train_timesteps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise ``[b, C, H, W]`` and timesteps ``[b]`` of the samples at positions ``offset .. offset + b`` of an
    optimisation step's global batch (``b = latents_shape[0]``).

    The whole global batch (every process, every accumulation micro-batch) is drawn from :func:`step_generator` and
    each micro-batch takes its slice, so a sample gets the same noise and timestep however the global batch is
    split: 2 processes x batch B, 1 process x batch 2B and 1 process x batch B x 2 accumulation steps train alike
    (up to float summation order). A single process without accumulation draws exactly what earlier versions drew.
    """
    b = latents_shape[0]
    total = max(global_batch_size, offset + b)
    g = step_generator(seed, step)
    noise = torch.randn((total, *latents_shape[1:]), generator=g)
    timesteps = torch.randint(0, num_train_timesteps, (total,), generator=g)
    return noise[offset : offset + b], timesteps[offset : offset + b]


def empty_prompt_rows(
    seed: int, step: int, share: float, *, global_batch_size: int, offset: int, batch: int
) -> torch.Tensor:
    """Which samples ``offset .. offset + batch`` of an optimisation step's global batch are trained on the empty
    prompt (``--proportion_empty_prompts``: caption dropout, so the unconditional prediction that classifier-free
    guidance uses is distilled too): a bool ``[batch]``, drawn for the whole global batch from its own RNG, so the
    split over processes does not change it and the noise and timesteps stay what they are without it."""
    total = max(global_batch_size, offset + batch)
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + 104_729)
    return (torch.rand(total, generator=g) < share)[offset : offset + batch]


def with_empty_prompts(text: dict[str, torch.Tensor], empty: dict[str, torch.Tensor], rows: torch.Tensor) -> dict:
    """``text`` (a batch's conditioning, the family's keys) with the rows where ``rows`` is true replaced by the empty
    prompt's (``empty``: the family's encoding of ``""``, one row). Masked conditioning (PixArt, Sana) holds trimmed
    embeddings padded to the batch's length: the empty prompt's attended tokens go first, the rest is masked, and the
    batch is padded further if it is shorter than those tokens."""
    if not bool(rows.any()):
        return text
    rows = rows.to(next(iter(text.values())).device)
    out = {k: v.clone() for k, v in text.items()}
    if "prompt_attention_mask" in text:
        n = int(empty["prompt_attention_mask"][0].sum())
        embeds, mask = out["prompt_embeds"], out["prompt_attention_mask"]
        if n > embeds.shape[1]:
            embeds = F.pad(embeds, (0, 0, 0, n - embeds.shape[1]))
            mask = F.pad(mask, (0, n - mask.shape[1]))
        embeds[rows] = 0
        embeds[rows, :n] = empty["prompt_embeds"][0, :n].to(embeds)
        mask[rows] = 0
        mask[rows, :n] = 1
        out["prompt_embeds"], out["prompt_attention_mask"] = embeds, mask
        return out
    for key, value in out.items():
        if empty[key].shape[1:] != value.shape[1:]:
            raise ValueError(
                f"the empty prompt's {key} is {tuple(empty[key].shape[1:])}, the batch's {tuple(value.shape[1:])}"
            )
        value[rows] = empty[key][0].to(value)
    return out


# ----------------------------------------------------------------------------------------------------------------
# distill_config.json: the record of a distillation run, one versioned type
# ----------------------------------------------------------------------------------------------------------------

DISTILL_CONFIG = "distill_config.json"
DISTILL_CONFIG_FORMAT = "diffusers-layerprune/distill-config"
DISTILL_CONFIG_FORMAT_VERSION = 1


@dataclass
class DistillConfig(Record):
    """How a distilled model was trained (``distill_config.json``, uploaded with the model: models and data by
    public name only, full paths stay in the folder's hidden marker).

    Attributes:
        teacher_model / student_model: what was distilled from / into.
        kept_layers / source_num_layers: the student's blocks in the teacher's numbering, and the teacher's depth.
        steps: optimisation steps done.
        weights: loss weights and the feature loss (:class:`KDWeights`).
        train_batch_size: per process; the global batch is ``train_batch_size x num_processes x
            gradient_accumulation_steps`` (:attr:`global_batch_size`).
        use_ema / ema_decay: whether the saved weights are an exponential moving average of the trained ones.
        prompt_set: the prompt-set record (source, count, fingerprint) for prompt-only KD.
        objective: flow-matching families: the weighting scheme and its parameters, preconditioning, timestep shift
            and guidance trained with (``flow_objective.objective_record``); ``None`` for DDPM families.
        optimizer: ``{"name": "adamw"}`` or Prodigy with its flags.
        proportion_empty_prompts: the share of samples trained on the empty prompt (caption dropout); ``None``: none.
        elastic: for an elastic-depth run, its depths and their kept blocks; for a depth extracted from one, also
            ``extracted_depth``.
    """

    KIND = "distill-config"
    SCHEMA_VERSION = DISTILL_CONFIG_FORMAT_VERSION
    FORMAT = DISTILL_CONFIG_FORMAT
    FORMAT_REQUIRED = False  # the first configs had no format key
    WHAT = "distillation config"
    FIX = "re-create it by distilling again"
    REQUIRED = {"kept_layers": list, "steps": int}
    OPTIONAL = {"teacher_model": str, "student_model": str, "source_num_layers": int, "weights": dict}

    teacher_model: str | None
    student_model: str | None
    kept_layers: list[int]
    source_num_layers: int | None
    steps: int
    weights: KDWeights = field(default_factory=KDWeights)
    lora: bool = False
    rank: int | None = None
    lora_alpha: float | None = None
    learning_rate: float | None = None
    train_batch_size: int | None = None
    num_processes: int = 1
    gradient_accumulation_steps: int = 1
    mixed_precision: str | None = None
    use_ema: bool = False
    ema_decay: float | None = None
    train_samples: int | None = None
    prompt_set: dict | None = None
    data: str | None = None
    save_dtype: str | None = None
    transformer_only: bool = False
    resolution: int | None = None
    max_sequence_length: int | None = None
    cache_dtype: str | None = None
    seed: int | None = None
    teacher_revision: str | None = None
    teacher_variant: str | None = None
    student_revision: str | None = None
    sparsity_masks_kept: bool = False
    objective: dict | None = None
    optimizer: dict | None = None
    lora_dropout: float | None = None
    proportion_empty_prompts: float | None = None  # caption dropout share (None: none)
    elastic: dict | None = None  # elastic-depth runs (elastic.py): depths, their kept blocks, extracted depth

    @property
    def global_batch_size(self) -> int | None:
        if self.train_batch_size is None:
            return None
        return self.train_batch_size * self.num_processes * self.gradient_accumulation_steps

    def body(self) -> dict:
        data = dataclasses.asdict(self)
        w = data.pop("weights")
        return {
            **data,
            "feature_loss": w["feature_loss"],
            "weights": {k: w[k] for k in ("task", "output", "variance", "feature")},
        }

    @classmethod
    def from_body(cls, data: dict) -> DistillConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"weights"}
        w = data.get("weights") or {}
        weights = KDWeights(
            **{k: w[k] for k in ("task", "output", "variance", "feature") if w.get(k) is not None},
            feature_loss=data.get("feature_loss") or "mse",
        )
        return cls(**{k: v for k, v in data.items() if k in known}, weights=weights)

    def model_name(self) -> str | None:
        return self.student_model

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/distill_config.json`` atomically."""
        return super().save(Path(folder) / DISTILL_CONFIG)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, model: str | None = None) -> DistillConfig:
        """Read ``folder/distill_config.json`` (or the file itself)."""
        path = Path(folder)
        return super().load(path / DISTILL_CONFIG if path.is_dir() else path, model=model)


# ----------------------------------------------------------------------------------------------------------------
# The distill stage: the training script under accelerate launch
# ----------------------------------------------------------------------------------------------------------------


def distill_student(
    teacher: str | os.PathLike,
    student: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    max_train_steps: int = 300,
    global_batch_size: int = 16,
    learning_rate: float = 1e-4,
    lr_scheduler: str = "constant",
    lr_warmup_steps: int = 0,
    seed: int = 0,
    use_lora: bool = False,
    rank: int = 16,
    use_ema: bool = False,
    prompts: str | None = None,
    exclude_prompts: str | None = None,
    save_dtype: str = "auto",
    transformer_only: bool = False,
    checkpointing_steps: int | None = None,
    checkpoints_total_limit: int | None = 1,
    resume_from_checkpoint: str | None = None,
    overwrite_output_dir: bool = False,
    report_to: str = "none",
    launch=None,
    extra_args: Sequence[str] = (),
) -> DistillConfig:
    """The ``distill`` stage: run the training script (``diffusers_layerprune.train_distill``) under
    ``accelerate launch`` and return the :class:`DistillConfig` it wrote.

    ``global_batch_size`` is split over the processes (``launch.num_processes``; each gets
    ``global_batch_size / num_processes`` samples per step), so the number of processes does not change what is
    trained: a 2-process run ends with the weights of a 1-process run up to float summation order.
    ``launch`` is a :class:`~diffusers_layerprune.launch.LaunchSettings` (processes, accelerate config file, mixed
    precision); ``extra_args`` are passed to the script as they are (its ``--help`` lists them). The student, the
    teacher, the output folder and the launch settings are checked here first: a mistake raises
    :class:`LayerPruneError` before any process starts; an error of the script is raised with its own message.
    """
    from .launch import TRAIN_MODULE, LaunchSettings, run_launched
    from .modeling import read_transformer_config
    from .outputs import check_training_output_dir
    from .provenance import local_inputs

    launch = launch or LaunchSettings()
    launch.check()
    n = launch.resolved_num_processes()
    if global_batch_size < 1 or global_batch_size % n:
        raise LayerPruneError(
            f"the batch size {global_batch_size} does not split evenly over {n} processes; give a multiple of {n}"
        )
    if max_train_steps < 1:
        raise LayerPruneError(f"max_train_steps must be at least 1, got {max_train_steps}")
    teacher_config = read_transformer_config(teacher)
    student_config = read_student_config(student)
    if teacher_config is not None:
        check_student_teacher(student_config, teacher_config)
    check_training_output_dir(
        output_dir,
        inputs=local_inputs(student, teacher),
        overwrite=overwrite_output_dir,
        resume=resume_from_checkpoint is not None,
    )
    args = [
        "--pretrained_model_name_or_path", teacher,
        "--student_model", student,
        "--output_dir", output_dir,
        "--max_train_steps", max_train_steps,
        "--train_batch_size", global_batch_size // n,
        "--learning_rate", learning_rate,
        "--lr_scheduler", lr_scheduler,
        "--lr_warmup_steps", lr_warmup_steps,
        "--checkpointing_steps", checkpointing_steps or max(1, max_train_steps // 4),
        "--seed", seed,
        "--report_to", report_to,
        "--save_dtype", save_dtype,
    ]  # fmt: skip
    if checkpoints_total_limit is not None:
        args += ["--checkpoints_total_limit", checkpoints_total_limit]
    if prompts:
        args += ["--prompts", prompts]
    if exclude_prompts:
        args += ["--exclude_prompts", exclude_prompts]
    if use_lora:
        args += ["--use_lora", "--rank", rank]
    if use_ema:
        args += ["--use_ema"]
    if transformer_only:
        args += ["--transformer_only"]
    if resume_from_checkpoint is not None:
        args += ["--resume_from_checkpoint", resume_from_checkpoint]
    if overwrite_output_dir:
        args += ["--overwrite_output_dir"]
    if launch.verbose:
        args += ["--verbose"]
    run_launched(TRAIN_MODULE, [str(a) for a in [*args, *extra_args]], launch, what="distillation")
    return DistillConfig.load(output_dir)
