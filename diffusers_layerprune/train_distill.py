"""Distil a depth-pruned PixArt transformer from its full teacher (output KD + feature KD + task loss; full or LoRA).

    accelerate launch -m diffusers_layerprune.train_distill --teacher_model toy --student_model runs/pruned \
        --output_dir runs/kd
    accelerate launch training/train_distill.py ...        # the same script, from a source checkout

Student block i learns to reproduce teacher block kept_layers[i] (read from the student's config). Losses, pairing
and data preparation live in diffusers_layerprune (distill.py, data.py); this script parses arguments, builds,
loops and saves. Flag names follow the diffusers example training scripts. It lives inside the package so that a
``pip install`` (not editable) ships it; ``training/train_distill.py`` is a thin launcher for it.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

from diffusers_layerprune.elastic import add_elastic_args, check_elastic_flags
from diffusers_layerprune.flow_objective import add_objective_arguments, add_optimizer_arguments
from diffusers_layerprune.launch import check_mixed_precision
from diffusers_layerprune.validation import (
    CACHE_DTYPE_NAMES,
    FEATURE_LOSS_NAMES,
    OneLineArgumentParser,
    beta,
    dropout,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    revision_name,
)

REPORT_TO = ("tensorboard", "wandb", "all", "none")


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineArgumentParser(
        prog="train_distill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("models")
    g.add_argument(
        "--pretrained_model_name_or_path",
        "--teacher_model",
        dest="teacher_model",
        default="toy",
        help="the teacher, a full pipeline: short name, folder or Hub id (default: toy)",
    )
    g.add_argument("--revision", default=None, type=revision_name, help="Hub revision of the teacher")
    g.add_argument("--variant", default=None, help="variant of the teacher's weight files, e.g. fp16")
    g.add_argument(
        "--student_model",
        required=True,
        help="the pruned student (layerprune prune): a pipeline or transformer folder, or a Hub id",
    )
    g.add_argument("--student_revision", default=None, type=revision_name, help="Hub revision of --student_model")
    g.add_argument("--output_dir", required=True, help="where the distilled pipeline, checkpoints and logs go")
    g.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start over in an --output_dir that holds an earlier run of this script (its contents are removed); "
        "a folder holding anything else is always refused",
    )
    g.add_argument("--cache_dir", default=None, help="cache for text embeddings and teacher latents")
    g.add_argument(
        "--cache_dtype",
        default="bfloat16",
        choices=list(CACHE_DTYPE_NAMES),
        help="dtype of the cached text embeddings and latents (default bfloat16; float32 stores them exactly)",
    )

    g = p.add_argument_group("data (default: prompt-only KD on the toy world's training captions)")
    g.add_argument(
        "--dataset_name", default=None, help="datasets Hub name (image-caption, or prompts with --prompt_column)"
    )
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--train_data_dir", default=None, help="local image folder (datasets imagefolder with metadata)")
    g.add_argument("--image_column", default="image")
    g.add_argument("--caption_column", default="text")
    g.add_argument("--prompt_column", default=None, help="prompt-only mode: the teacher generates the training latents")
    g.add_argument(
        "--prompts",
        default=None,
        help="prompt-only mode from a prompt set: a .txt/.jsonl/.csv file, a dataset folder, a Hub dataset as "
        "user/name[:config][:split][@column], or toy:train (default: the teacher's training prompts; Pick-a-Pic "
        "prompts for PixArt-Sigma); deduplicated",
    )
    g.add_argument(
        "--exclude_prompts",
        default=None,
        metavar="SPEC",
        help="prompt-only mode: drop training prompts that are also in this set (e.g. the evaluation prompts, hpdv2)",
    )
    g.add_argument("--max_train_samples", type=positive_int, default=None)
    g.add_argument(
        "--resolution", type=positive_int, default=None, help="image side (default: the teacher's native size)"
    )
    g.add_argument("--max_sequence_length", type=positive_int, default=None, help="text tokens (default: the model's)")
    g.add_argument(
        "--proportion_empty_prompts",
        type=dropout,
        default=0.0,
        help="share of training samples whose caption is replaced by the empty prompt (caption dropout, as in "
        "diffusers' train_text_to_image): the unconditional prediction that classifier-free guidance uses is "
        "distilled too (default 0: every sample keeps its caption)",
    )
    g.add_argument(
        "--teacher_inference_steps", type=positive_int, default=None, help="prompt-only mode: teacher sampling steps"
    )
    g.add_argument(
        "--teacher_guidance_scale", type=non_negative_float, default=None, help="prompt-only mode: teacher guidance"
    )

    g = p.add_argument_group("losses")
    g.add_argument(
        "--lambda_task", type=non_negative_float, default=1.0, help="weight of MSE(student prediction, true target)"
    )
    g.add_argument(
        "--lambda_out",
        type=non_negative_float,
        default=1.0,
        help="weight of MSE(student prediction, teacher prediction)",
    )
    g.add_argument(
        "--lambda_var", type=non_negative_float, default=1.0, help="weight of MSE on the learned-variance channels"
    )
    g.add_argument(
        "--lambda_feat", type=non_negative_float, default=1.0, help="weight of the summed block-feature losses"
    )
    g.add_argument(
        "--feature_loss", default="mse", choices=FEATURE_LOSS_NAMES, help="mse (BK-SDM) or normalized (LAPTOP-Diff)"
    )

    add_objective_arguments(p)

    g = p.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=positive_int, default=8)
    g.add_argument("--num_train_epochs", type=positive_int, default=100)
    g.add_argument("--max_train_steps", type=positive_int, default=None, help="overrides --num_train_epochs")
    g.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    g.add_argument(
        "--gradient_checkpointing", action="store_true", help="recompute block activations in the backward pass"
    )
    g.add_argument("--learning_rate", type=positive_float, default=1e-4)
    g.add_argument("--scale_lr", action="store_true", help="multiply lr by batch size x accumulation x processes")
    g.add_argument(
        "--lr_scheduler",
        default="constant",
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
    )
    g.add_argument("--lr_warmup_steps", type=non_negative_int, default=0)
    g.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW (pip install bitsandbytes)")
    add_optimizer_arguments(g)
    g.add_argument(
        "--use_ema",
        action="store_true",
        help="keep an exponential moving average of the student's weights (diffusers' EMAModel); the EMA weights "
        "are what is validated, saved and evaluated",
    )
    g.add_argument("--ema_decay", type=beta, default=0.9999, help="EMA decay (warmed up as (1+t)/(10+t))")
    g.add_argument("--adam_beta1", type=beta, default=0.9)
    g.add_argument("--adam_beta2", type=beta, default=0.999)
    g.add_argument("--adam_weight_decay", type=non_negative_float, default=1e-2)
    g.add_argument("--adam_epsilon", type=positive_float, default=1e-8)
    g.add_argument("--max_grad_norm", type=non_negative_float, default=1.0)
    g.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    g.add_argument(
        "--transformer_only",
        action="store_true",
        help="save only the distilled transformer (config + safetensors at the top of --output_dir), not the pipeline",
    )
    g.add_argument(
        "--save_dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="dtype of the saved pipeline (default: auto, the teacher's: bfloat16 for PixArt-Sigma, float32 for toy)",
    )
    g.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere or newer GPUs (faster)")
    g.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("LoRA (peft)")
    g.add_argument("--use_lora", action="store_true", help="train LoRA adapters instead of all student weights")
    g.add_argument("--rank", type=positive_int, default=16)
    g.add_argument("--lora_alpha", type=positive_float, default=None, help="default: equal to --rank")
    g.add_argument("--lora_target_modules", default="to_q,to_k,to_v,to_out.0")
    g.add_argument("--lora_dropout", type=dropout, default=0.0, help="dropout probability of the LoRA layers")
    g.add_argument(
        "--init_lora",
        default=None,
        metavar="LORA",
        help="start the student's LoRA from this one (file, folder or Hub id; e.g. layerprune adapt-lora's output), "
        "with its rank, alpha and target modules (--rank, --lora_alpha, --lora_target_modules are not used); "
        "implies --use_lora",
    )
    g.add_argument(
        "--teacher_lora",
        default=None,
        metavar="LORA",
        help="fuse this LoRA of the teacher (the parent's LoRA: file, folder or Hub id; its transformer part) into "
        "the teacher before distilling: with --init_lora, recovers the LoRA's effect on the pruned model",
    )

    g = p.add_argument_group("checkpoints, validation, logging, Hub")
    g.add_argument("--checkpointing_steps", type=positive_int, default=500)
    g.add_argument(
        "--checkpoints_total_limit",
        type=positive_int,
        default=None,
        help="keep at most this many checkpoints; older ones are removed once a new one is complete",
    )
    g.add_argument("--resume_from_checkpoint", default=None, help='a checkpoint folder or "latest"')
    g.add_argument(
        "--resume_mismatch",
        default="refuse",
        choices=["refuse", "restart"],
        help="when the checkpoint to resume was saved under other settings (learning rate, batch size, data, "
        "schedule, losses, student, LoRA...): refuse, naming the setting (default), or restart: start over in "
        "--output_dir, whose earlier run is removed",
    )
    g.add_argument("--validation_prompts", nargs="*", default=None)
    g.add_argument("--num_validation_images", type=positive_int, default=1)
    g.add_argument("--validation_steps", type=positive_int, default=None, help="default: at each checkpoint")
    g.add_argument("--validation_inference_steps", type=positive_int, default=None)
    g.add_argument(
        "--report_to",
        default=None,
        choices=REPORT_TO,
        help="tracker for losses and validation images (tensorboard logs are uploaded with the model); default: "
        "tensorboard when it is installed (pip install 'diffusers-layerprune[train]'), else none",
    )
    g.add_argument("--logging_dir", default="logs")
    g.add_argument("--tracker_project_name", default="layerprune-distill")
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_private_repo", action="store_true")
    g.add_argument(
        "--verbose", action="store_true", help="INFO logs of accelerate (each checkpoint's files) and loading bars"
    )
    add_elastic_args(p)
    args = p.parse_args(argv)

    if args.dataset_name and args.train_data_dir:
        p.error("give --dataset_name or --train_data_dir, not both")
    if args.prompts and (args.dataset_name or args.train_data_dir):
        p.error("--prompts (prompt-only KD) cannot be combined with --dataset_name/--train_data_dir")
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id user/name")
    if args.init_lora:
        if args.lora_dropout:
            p.error("--lora_dropout applies to a new adapter; --init_lora trains the LoRA with its own settings")
        args.use_lora = True
    check_ignored_flags(p, args)
    check_elastic_flags(p, args)
    if args.lora_alpha is None:
        args.lora_alpha = float(args.rank)
    return args


# Flags that do something only together with another one: given without it, they would be ignored without a word.
ONLY_WITH = {
    "use_lora": ("rank", "lora_alpha", "lora_target_modules", "lora_dropout"),
    "use_ema": ("ema_decay",),
    "push_to_hub": ("hub_private_repo",),
    "validation_prompts": ("validation_steps", "num_validation_images", "validation_inference_steps"),
    "resume_from_checkpoint": ("resume_mismatch",),
}


def check_ignored_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (one line, exit 2) a flag set to a value of its own where the chosen path ignores it: LoRA settings
    without --use_lora, dataset columns in prompt-only mode, teacher sampling with an image-caption dataset..."""
    for needs, flags in ONLY_WITH.items():
        if not getattr(args, needs):
            given = [f for f in flags if getattr(args, f) != parser.get_default(f)]
            if given:
                parser.error(f"--{given[0]} applies only with --{needs}: add --{needs} or leave it out")
    dataset = bool(args.dataset_name or args.train_data_dir)
    images = dataset and not args.prompt_column  # image-caption data: the teacher does not generate
    if not dataset:
        if args.prompt_column is not None or args.dataset_config_name is not None:
            flag = "prompt_column" if args.prompt_column is not None else "dataset_config_name"
            parser.error(f"--{flag} applies to --dataset_name/--train_data_dir; for a prompt file use --prompts")
    elif args.exclude_prompts:
        parser.error("--exclude_prompts applies to prompt sets (--prompts), not to --dataset_name/--train_data_dir")
    columns = [f for f in ("image_column", "caption_column") if getattr(args, f) != parser.get_default(f)]
    if columns and not images:
        parser.error(f"--{columns[0]} applies to image-caption datasets; prompt-only data uses --prompt_column")
    sampling = [f for f in ("teacher_inference_steps", "teacher_guidance_scale") if getattr(args, f) is not None]
    if sampling and images:
        parser.error(f"--{sampling[0]} applies to prompt-only data (the teacher generates); this dataset has images")


if __name__ == "__main__":  # python -m ...: --help and argument mistakes answer before torch loads (~12 CPU-s)
    parse_args()

# ruff: noqa: E402 (the imports below come after the early parse on purpose)
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from diffusers_layerprune import LayerPruneError
from diffusers_layerprune.adapters.lora import (
    fuse_lora_into,
    read_lora,
    read_trained_lora_state,
    resolve_lora_source,
    save_trained_lora,
    start_from_lora,
)
from diffusers_layerprune.checkpoints import (
    CheckpointMismatch,
    check_checkpoint,
    checkpoint_identity,
    checkpoints,
    move_into,
    remove_old_checkpoints,
    write_checkpoint_record,
)
from diffusers_layerprune.data import (
    CacheCollator,
    check_prompt_cells,
    default_cache_dir,
    load_hf_dataset,
    load_prompts,
    teacher_latents_dataset,
)
from diffusers_layerprune.distill import (
    DistillConfig,
    KDWeights,
    block_pairs,
    check_student_teacher,
    empty_prompt_rows,
    flow_noising,
    kd_step_losses,
    read_student_config,
    step_noise,
    student_location,
    task_target,
    with_empty_prompts,
)
from diffusers_layerprune.elastic import distill_record as elastic_distill_record
from diffusers_layerprune.elastic import elastic_settings, plan_from_args, save_elastic_record
from diffusers_layerprune.families import all_families, encode_text, family_of, family_of_config, family_of_pipeline
from diffusers_layerprune.families.base import to_device
from diffusers_layerprune.flow_objective import (
    OBJECTIVE_FLAGS,
    PRODIGY_FLAGS,
    FlowSchedule,
    build_optimizer,
    check_optimizer_args,
    check_resume_objective,
    objective_record,
    optimizer_record,
    resolve_objective,
)
from diffusers_layerprune.image_data import check_image_folder, image_latents_dataset
from diffusers_layerprune.modeling import (
    check_resolution_for,
    generation_defaults,
    load_pipeline,
    read_transformer_config,
    resolve_dtype,
    save_pruned_pipeline,
    save_pruned_transformer,
    with_transformer,
)
from diffusers_layerprune.outputs import check_training_output_dir, prepare_training_output_dir, write_marker
from diffusers_layerprune.provenance import full_local, local_inputs, public_name, restore_local_source
from diffusers_layerprune.sparsity.keep import WeightMasks
from diffusers_layerprune.sparsity.record import FILE_NAME as SPARSITY_FILE
from diffusers_layerprune.sparsity.record import read_sparsity_record

logger = get_logger(__name__)


def build_dataset(args, pipe, defaults, cache_dir, accelerator):
    """The cached (prompt, prompt_embeds, prompt_attention_mask, latents) dataset; built by the main process."""
    model_id = str(args.teacher_model)
    if getattr(args, "teacher_lora_record", None):  # the teacher's latents depend on the LoRA fused into it
        model_id += f"+lora:{args.teacher_lora_record['sha256']}"
    common = dict(
        cache_dir=cache_dir,
        model_id=model_id,
        resolution=args.resolution,
        max_sequence_length=args.max_sequence_length,
        cache_dtype=args.cache_dtype,
        progress=accelerator.is_local_main_process,
    )
    if args.dataset_name or args.train_data_dir:
        if args.dataset_name:
            raw = load_hf_dataset(args.dataset_name, args.dataset_config_name)
        else:
            from datasets import load_dataset

            if not Path(args.train_data_dir).is_dir():
                raise LayerPruneError(f"--train_data_dir {args.train_data_dir} is not a folder")
            raw = load_dataset("imagefolder", data_dir=args.train_data_dir, split="train")
        if args.max_train_samples:
            raw = raw.select(range(min(args.max_train_samples, len(raw))))
        if args.prompt_column:  # prompt-only corpus on the Hub
            if args.prompt_column not in raw.column_names:
                raise LayerPruneError(
                    f"dataset has no column {args.prompt_column!r}; columns: {', '.join(raw.column_names)}"
                )
            prompts = list(raw[args.prompt_column])
            check_prompt_cells(prompts, f"{args.dataset_name or args.train_data_dir}@{args.prompt_column}")
        else:
            return image_latents_dataset(
                pipe,
                raw,
                image_column=args.image_column,
                caption_column=args.caption_column,
                dataset_id=args.dataset_name or args.train_data_dir,
                **common,
            )
    else:
        exclude = load_prompts(args.exclude_prompts) if args.exclude_prompts else None
        prompt_set = load_prompts(
            args.prompts or defaults["train_prompts"], limit=args.max_train_samples, exclude=exclude
        )
        args.prompt_set_record = prompt_set.record()
        prompts = prompt_set.prompts
    if not prompts:
        raise LayerPruneError("the training prompt set is empty")
    return teacher_latents_dataset(
        pipe,
        prompts,
        num_inference_steps=args.teacher_inference_steps,
        guidance_scale=args.teacher_guidance_scale,
        seed=args.seed,
        **common,
    )


def check_args(args) -> None:
    """Refuse, before anything is loaded or written, options that cannot run here (on one line, exit 2)."""
    import importlib.util

    if args.overwrite_output_dir and args.resume_from_checkpoint:
        raise LayerPruneError("--overwrite_output_dir starts over, --resume_from_checkpoint continues: pass one")
    check_optimizer_args(args)  # Prodigy: its flags, its package
    if args.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        raise LayerPruneError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes (or leave the flag out)")
    if args.use_ema and args.use_lora:
        raise LayerPruneError("--use_ema averages all student weights; it does not go with --use_lora")
    # "all" means every tracker that is installed (accelerate's meaning); a named one must be installed, while the
    # default uses tensorboard only where it is, so a base install trains as it is.
    if args.report_to is None:
        args.report_to = "tensorboard" if importlib.util.find_spec("tensorboard") is not None else "none"
    elif args.report_to in ("tensorboard", "wandb") and importlib.util.find_spec(args.report_to) is None:
        extra = " (or pip install 'diffusers-layerprune[train]')" if args.report_to == "tensorboard" else ""
        raise LayerPruneError(
            f"--report_to {args.report_to} needs {args.report_to}: pip install {args.report_to}{extra}, or "
            "--report_to none"
        )


# Options that shape a checkpoint's optimizer state and the data it saw: a resume must use the values it was saved
# with. Left out on purpose: what only changes how a run is watched or saved (checkpointing, validation, logging,
# push, save dtype, workers, gradient checkpointing, TF32), and --max_train_steps / --num_train_epochs under a
# constant schedule (training longer is a legitimate resume; a decaying schedule depends on the length).
SHAPING_OPTIONS = (
    "teacher_model", "revision", "variant", "student_model", "student_revision",
    "prompts", "exclude_prompts", "dataset_name", "dataset_config_name", "train_data_dir", "image_column",
    "caption_column", "prompt_column", "max_train_samples", "resolution", "max_sequence_length",
    "teacher_inference_steps", "teacher_guidance_scale", "cache_dtype",
    "lambda_task", "lambda_out", "lambda_var", "lambda_feat", "feature_loss",
    "train_batch_size", "gradient_accumulation_steps", "learning_rate", "scale_lr", "lr_scheduler",
    "lr_warmup_steps", "use_8bit_adam", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon",
    "max_grad_norm", "mixed_precision", "seed",
    *OBJECTIVE_FLAGS, "guidance_scale", "optimizer", *PRODIGY_FLAGS, "lora_dropout",
)  # fmt: skip
LOCAL_OPTIONS = ("teacher_model", "student_model", "prompts", "exclude_prompts", "train_data_dir")


def _content_digest(path: Path) -> str | None:
    """A digest of a local data file's bytes (a folder: its files' names and sizes), so an edited prompt file under
    the same name is a different setting; ``None`` for anything that is not a local file or folder."""
    import hashlib

    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    if path.is_dir():
        listing = sorted((p.relative_to(path).as_posix(), p.stat().st_size) for p in path.rglob("*") if p.is_file())
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    return None


def run_settings(args) -> dict:
    """The settings a checkpoint of this run records and a resume must match (:data:`SHAPING_OPTIONS`), by flag
    name: local paths made absolute, the content digest of local data files under ``<flag> content``, the number
    of processes (the global batch), the EMA decay with --use_ema and the run length under a decaying schedule."""
    settings = {}
    for name in SHAPING_OPTIONS:
        value = getattr(args, name)
        settings[name] = full_local(value) if name in LOCAL_OPTIONS else value
        if name in ("prompts", "exclude_prompts", "train_data_dir") and value is not None:
            digest = _content_digest(Path(str(value)).expanduser())
            if digest is not None:
                settings[f"{name} content"] = digest
    settings["num_processes"] = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch for each process
    if args.use_ema:
        settings["ema_decay"] = args.ema_decay
    if args.proportion_empty_prompts:  # absent at 0, so checkpoints of earlier versions resume
        settings["proportion_empty_prompts"] = args.proportion_empty_prompts
    if args.lr_scheduler not in ("constant", "constant_with_warmup"):
        settings["max_train_steps"] = args.max_train_steps
        settings["num_train_epochs"] = None if args.max_train_steps else args.num_train_epochs
    settings.update(elastic_settings(args))
    return settings


def check_lora_targets(targets: list[str], location: str, subfolder: str | None) -> None:
    """Refuse LoRA target modules that match no layer of a local student (peft's rule: a module whose name is the
    target or ends with ``.target``), from the names in its safetensors headers: no weights are read."""
    from safetensors import safe_open

    folder = Path(location) / subfolder if subfolder else Path(location)
    if not folder.is_dir():
        return  # a Hub student: peft checks when the adapter is added
    modules = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            modules |= {key.rsplit(".", 1)[0] for key in f.keys()}
    missing = [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]
    if missing or not targets:
        linear = sorted({m.rsplit(".", 1)[-1] for m in modules if "." in m and not m.rsplit(".", 1)[-1].isdigit()})
        raise LayerPruneError(
            f"--lora_target_modules {','.join(missing) or '(empty)'} match no layer of the student; its layer names "
            f"include {', '.join(linear[:12])}"
        )


def check_prompt_file(args) -> None:
    """Load a local --prompts / --exclude_prompts set now (cheap) so that a bad file or cell is refused before the
    teacher is loaded; Hub datasets are checked when they are downloaded."""
    from diffusers_layerprune.data import parse_prompt_spec

    for spec in (args.prompts, args.exclude_prompts):
        if spec is None:
            continue
        name = parse_prompt_spec(spec).name
        local = Path(name).expanduser().exists() or name.startswith((".", "/", "~"))
        file_like = Path(name).suffix.lower() in (".txt", ".json", ".jsonl", ".csv", ".parquet")
        downloads = name == "hpdv2" or ("/" in name and not local and not file_like)  # Hub datasets
        if not downloads:
            load_prompts(spec)


def check_local_weight_files(teacher: str, checkpoint: Path | None) -> None:
    """Refuse a damaged or truncated weight file of a local teacher folder or of the checkpoint to resume, naming
    it (headers and archive indexes only: nothing is loaded or unpickled)."""
    from diffusers_layerprune.aliases import MODEL_ALIASES
    from diffusers_layerprune.validation import check_weight_files, resolve_local_model

    local = None if str(teacher) in MODEL_ALIASES else resolve_local_model(str(teacher))
    if local is not None and local.is_dir():
        check_weight_files(local)
    if checkpoint is not None:
        check_weight_files(checkpoint, (".safetensors", ".bin", ".pkl", ".pt"))


def find_resume_checkpoint(args, output_dir: Path) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names: ``latest`` in ``--output_dir`` (``None`` when there is
    none), a checkpoint folder, or a ``checkpoint-N`` name inside ``--output_dir``."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        return (checkpoints(output_dir) or [None])[-1]
    path = Path(args.resume_from_checkpoint).expanduser()
    if not path.exists() and (output_dir / path.name).is_dir():
        path = output_dir / path.name
    if not path.is_dir():
        raise LayerPruneError(f"checkpoint {args.resume_from_checkpoint} does not exist")
    return path


def configure_logging(verbose: bool) -> None:
    """Without ``--verbose``: warnings only (no INFO line per saved checkpoint file), no loading bars."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if verbose else logging.WARNING
    )
    if not verbose:
        from diffusers_layerprune.quiet import quiet_libraries

        quiet_libraries()


def main(argv=None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    configure_logging(args.verbose)

    # 1. Check the pair, the options, the output folder and the checkpoint to resume before loading anything heavy.
    # Every process runs these read-only checks before the Accelerator exists, so a refusal stops all of them alike
    # and none waits for the others.
    check_args(args)
    student_cfg = read_student_config(args.student_model, args.student_revision)
    # A sparsified student (sparsity.json, local folders) keeps its zeros: the masks are re-applied after every
    # optimiser step.
    location, subfolder = student_location(args.student_model, args.student_revision)
    sparsity = read_sparsity_record(Path(location)) if Path(location).is_dir() else None
    full_depth_sparse = (
        sparsity is not None and "transformer" in sparsity.components and student_cfg.get("kept_layers") is None
    )
    if full_depth_sparse:  # sparsified but not depth-pruned: student block i learns from teacher block i
        depth = student_cfg["num_layers"]
        student_cfg = {**student_cfg, "kept_layers": list(range(depth)), "source_num_layers": depth}
    family = family_of_config(student_cfg, args.student_model)
    if not family.caption_images and (args.dataset_name or args.train_data_dir) and not args.prompt_column:
        raise LayerPruneError(  # before anything is loaded or written
            f"{args.student_model} is a {family.title} model: image-caption datasets are encoded with the VAE "
            f"conventions of {' and '.join(f.title for f in all_families() if f.caption_images)} only; distil it on "
            "prompts (--prompts, or --prompt_column of the dataset)"
        )
    resolve_objective(args, family, student_cfg)  # a flag the family does not train with is refused here
    if args.train_data_dir and not args.prompt_column:  # captions and images readable, before anything is loaded
        check_image_folder(args.train_data_dir, args.caption_column)
    teacher_cfg = read_transformer_config(args.teacher_model, revision=args.revision)
    if teacher_cfg is not None:
        check_student_teacher(student_cfg, teacher_cfg)
    check_resolution_for(args.teacher_model, args.resolution, teacher_cfg)
    elastic = plan_from_args(args, student_cfg, family)  # nested depths (elastic.py); None for one depth
    output_action = check_training_output_dir(
        output_dir,
        inputs=local_inputs(args.student_model, args.teacher_model),
        overwrite=args.overwrite_output_dir,
        resume=bool(args.resume_from_checkpoint),
    )
    # LoRAs to start from / fuse into the teacher: read (and checked against the family) before anything is written
    init_lora = teacher_lora = None
    if args.init_lora:
        path, _ = resolve_lora_source(args.init_lora)
        init_lora = read_lora(family, path)
    if args.teacher_lora:
        path, args.teacher_lora_record = resolve_lora_source(args.teacher_lora)
        teacher_lora = read_lora(family, path)
    lora_targets = [m.strip() for m in args.lora_target_modules.split(",") if m.strip()]
    if args.use_lora:
        check_lora_targets(lora_targets, location, subfolder)
    # accelerate launch --mixed_precision reaches the script as ACCELERATE_MIXED_PRECISION, not as the flag
    check_mixed_precision(args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION"))
    check_prompt_file(args)
    identity = checkpoint_identity(
        student_cfg,
        use_lora=args.use_lora,
        rank=args.rank,
        lora_alpha=args.lora_alpha,
        lora_target_modules=lora_targets,
        use_ema=args.use_ema,
        settings=run_settings(args),
    )
    resume_path = find_resume_checkpoint(args, output_dir)
    check_local_weight_files(args.teacher_model, resume_path)  # a truncated file: named before anything is written
    if resume_path is not None:
        try:
            check_checkpoint(resume_path, identity)
            check_resume_objective(resume_path, args)
        except CheckpointMismatch as mismatch:
            if args.resume_mismatch != "restart":
                raise
            # Start over, not resume: the earlier run's checkpoints would otherwise sit beside the new ones and a
            # later "latest" could pick one of them.
            if os.environ.get("RANK", "0") == "0":
                print(
                    f"{mismatch.reason}: starting over (--resume_mismatch restart)"
                    + ("; the earlier run in --output_dir is removed" if output_action == "resume" else "")
                )
            output_action = "overwrite" if output_action == "resume" else output_action
            resume_path, args.resume_from_checkpoint = None, None

    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    accelerator.wait_for_everyone()  # every process has checked --output_dir before the main one writes to it
    if accelerator.is_main_process:
        prepare_training_output_dir(output_dir, output_action, local=_local_record(args))
    accelerator.wait_for_everyone()
    set_seed(args.seed)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    # 2. Teacher pipeline, generation defaults, data (main process first; the others read its cache).
    teacher = load_pipeline(args.teacher_model, torch_dtype=weight_dtype, revision=args.revision, variant=args.variant)
    if teacher_lora is not None:  # the teacher is the parent with its LoRA fused
        fuse_lora_into(teacher.transformer, teacher_lora, f"--teacher_lora {args.teacher_lora}")
    teacher.to(accelerator.device)
    teacher.set_progress_bar_config(disable=True)
    defaults = generation_defaults(args.teacher_model, teacher)
    args.resolution = args.resolution or defaults["resolution"]
    args.max_sequence_length = args.max_sequence_length or defaults["max_sequence_length"]
    args.teacher_inference_steps = args.teacher_inference_steps or defaults["num_inference_steps"]
    args.teacher_guidance_scale = (
        args.teacher_guidance_scale if args.teacher_guidance_scale is not None else defaults["guidance_scale"]
    )
    args.validation_inference_steps = args.validation_inference_steps or defaults["num_inference_steps"]
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    with accelerator.main_process_first():
        dataset = build_dataset(args, teacher, defaults, cache_dir, accelerator)
    if len(dataset) == 0:
        raise LayerPruneError("the training dataset is empty")
    validation = None
    if args.validation_prompts:
        length = args.max_sequence_length
        validation = (
            encode_text(teacher, args.validation_prompts, max_sequence_length=length),
            encode_text(teacher, [""], max_sequence_length=length),
        )
    empty_prompt = None  # caption dropout: the empty prompt's conditioning, encoded as the pipeline encodes it
    if args.proportion_empty_prompts:
        empty_prompt = encode_text(teacher, [""], max_sequence_length=args.max_sequence_length)
    # The text encoders (4.7B parameters for PixArt-Sigma's T5) are not needed any more: embeddings are cached.
    for name in list(teacher.components):
        if name.startswith(("text_encoder", "tokenizer")):
            setattr(teacher, name, None)
    gc.collect()

    # 3. Models.
    pruned_class = family_of_pipeline(teacher).pruned_class()  # the teacher's family decides the student class
    student = pruned_class.from_pretrained(location, subfolder=subfolder, revision=args.student_revision)
    restore_local_source(student, location, args.teacher_model)  # the saved config names the source by folder name
    if full_depth_sparse:
        student.register_to_config(
            kept_layers=student_cfg["kept_layers"], source_num_layers=student_cfg["source_num_layers"]
        )
    # Taken before LoRA wraps the layers (its own Linear layers are not pruned weights).
    masks = WeightMasks.from_record(student, "transformer", sparsity)
    if masks is not None:
        logger.info(f"keeping {masks.num_pruned():,d} pruned weights at zero (sparsity.json)", main_process_only=True)
    teacher_tf = teacher.transformer.requires_grad_(False).eval()
    pairs = block_pairs(student, teacher_tf)
    if init_lora is not None:
        student.requires_grad_(False)
        start_from_lora(student, init_lora, f"--init_lora {args.init_lora}")
    elif args.use_lora:
        from peft import LoraConfig

        student.requires_grad_(False)
        student.add_adapter(
            LoraConfig(
                r=args.rank,
                lora_alpha=args.lora_alpha,
                init_lora_weights="gaussian",
                target_modules=lora_targets,
                lora_dropout=args.lora_dropout,
            )
        )
    else:
        student.requires_grad_(True)
    student.train()
    if args.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    student.to(accelerator.device)
    if masks is not None:
        masks.to(accelerator.device)
    params = [p for p in student.parameters() if p.requires_grad]
    ema = None
    if args.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(student.parameters(), decay=args.ema_decay, model_cls=pruned_class, model_config=student.config)
        ema.to(accelerator.device)

    flow = None
    if family_of_pipeline(teacher).objective == "flow":  # velocity target on the straight noising path
        noise_scheduler, prediction_type = None, "flow"
        num_train_timesteps = int(teacher.scheduler.config.get("num_train_timesteps", 1000))
        flow = FlowSchedule.from_args(args, family, teacher.scheduler.config, teacher.transformer.config)
    else:
        noise_scheduler = DDPMScheduler.from_config(teacher.scheduler.config)
        prediction_type = teacher.scheduler.config.get("prediction_type", "epsilon")
        num_train_timesteps = noise_scheduler.config.num_train_timesteps
    weights = KDWeights(args.lambda_task, args.lambda_out, args.lambda_var, args.lambda_feat, args.feature_loss)

    # 4. Data loader, optimiser, schedule. The cache holds each caption's real tokens only; the collator re-pads
    # them to max_sequence_length with their attention mask, which gives the transformer the tensors of the
    # uncached pipeline path (same shapes, masked padding).
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        num_workers=args.dataloader_num_workers,
        drop_last=len(dataset) >= args.train_batch_size,
        collate_fn=CacheCollator(args.max_sequence_length),
    )
    if args.scale_lr:
        args.learning_rate *= args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    optimizer = build_optimizer(args, params)  # AdamW (8-bit with --use_8bit_adam) or Prodigy
    if args.optimizer == "prodigy" and args.learning_rate <= 0.1:
        logger.warning(f"Prodigy is usually run with --learning_rate 1.0 (this run: {args.learning_rate})")
    updates_per_epoch = math.ceil(len(loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * updates_per_epoch
    # accelerate steps a prepared scheduler once per process at each optimisation step (as diffusers' examples count)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    student, optimizer, loader, lr_scheduler = accelerator.prepare(student, optimizer, loader, lr_scheduler)
    unwrapped = accelerator.unwrap_model(student)
    register_checkpoint_hooks(accelerator, unwrapped, ema, use_lora=args.use_lora)
    updates_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)

    if accelerator.is_main_process:
        # Logs are uploaded with the model: every value by its public name (a local path by its folder name).
        config = {
            k: public_name(v) if isinstance(v, str) else v
            for k, v in vars(args).items()
            if isinstance(v, (int, float, str, bool))
        }
        accelerator.init_trackers(args.tracker_project_name, config=config)

    # 5. Resume.
    global_step = 0
    if args.resume_from_checkpoint:
        if resume_path is None:
            accelerator.print("no checkpoint found in --output_dir; starting from scratch")
        else:
            accelerator.load_state(str(resume_path))
            global_step = int(resume_path.name.split("-")[-1])
            accelerator.print(f"resumed from {resume_path} at step {global_step}")
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    # 6. Train.
    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        kept = [
            line
            for line in (log_path.read_text().splitlines() if log_path.exists() else [])
            if json.loads(line)["step"] <= global_step
        ]
        log_path.write_text("".join(line + "\n" for line in kept))
    forward = family_of(teacher_tf).forward  # the family's forward arguments (PixArt: its micro-conditions)
    # guidance-distilled models (Flux.1-dev): the guidance value student and teacher get (resolve_objective)
    guidance = {} if args.guidance_scale is None else {"guidance": args.guidance_scale}
    text_keys = family_of(teacher_tf).text_keys
    # Each optimisation step draws the noise of its whole global batch and every micro-batch takes its slice
    # (distill.step_noise): the split over processes and accumulation steps does not change what a sample gets.
    global_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    micro_batch = 0
    progress = tqdm(
        total=args.max_train_steps, initial=global_step, desc="distill", disable=not accelerator.is_local_main_process
    )
    done = global_step >= args.max_train_steps
    for epoch in range(first_epoch, num_epochs):
        if done:
            break
        loader.set_epoch(epoch)
        batches = (
            accelerator.skip_first_batches(loader, skip_batches) if epoch == first_epoch and skip_batches else loader
        )
        for batch in batches:
            with accelerator.accumulate(student):
                latents = batch["latents"].to(accelerator.device, weight_dtype)
                offset = (micro_batch * accelerator.num_processes + accelerator.process_index) * args.train_batch_size
                noise, timesteps = step_noise(
                    args.seed,
                    global_step,
                    latents.shape,
                    global_batch_size=global_batch,
                    offset=offset,
                    num_train_timesteps=num_train_timesteps,
                )
                noise, timesteps = noise.to(latents), timesteps.to(accelerator.device)
                sample_weights = precondition = None
                if flow is not None and not flow.legacy:  # the examples' objective (flow_objective)
                    noisy, target, timesteps, sample_weights, precondition = flow.batch(
                        latents, noise, args.seed, global_step, global_batch_size=global_batch, offset=offset
                    )
                elif noise_scheduler is None:  # rectified flow: x_t = (1 - s) x0 + s eps, s = t / T, uniform t
                    noisy, target = flow_noising(latents, noise, timesteps, num_train_timesteps)
                else:
                    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                    target = task_target(prediction_type, latents, noise, noise_scheduler, timesteps)
                # the family's conditioning: embeddings with a mask (PixArt, Sana) or with pooled ones (SD3, Flux)
                text = to_device({k: batch[k] for k in text_keys}, accelerator.device, weight_dtype)
                if empty_prompt is not None:
                    rows = empty_prompt_rows(
                        args.seed, global_step, args.proportion_empty_prompts, global_batch_size=global_batch,
                        offset=offset, batch=latents.shape[0],
                    )  # fmt: skip
                    text = with_empty_prompts(text, empty_prompt, rows)

                def cond(model, x, timesteps=timesteps, text=text, precondition=precondition):
                    out = forward(model, x, timesteps, text, **guidance)
                    return out if precondition is None else precondition(out)

                # elastic depth (elastic.py): the step's nested depths, each with its dropped blocks skipped
                losses = kd_step_losses if elastic is None else elastic.step(args, global_step, accelerator.autocast)
                parts = losses(
                    student,
                    teacher_tf,
                    noisy,
                    cond,
                    target,
                    pairs,
                    weights,
                    student_blocks=unwrapped,
                    autocast=accelerator.autocast(),
                    sample_weights=sample_weights,
                )
                finite = accelerator.gather(torch.isfinite(parts["loss"].detach()).reshape(1)).all()
                if not finite:
                    last = checkpoints(output_dir)
                    raise LayerPruneError(
                        f"non-finite loss at step {global_step} ({ {k: float(v.detach()) for k, v in parts.items()} }); "
                        f"stopped. Last good checkpoint: {last[-1] if last else 'none'} (lower --learning_rate?)"
                    )
                accelerator.backward(parts["loss"])
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                if masks is not None:
                    masks.apply()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                micro_batch += 1
                continue
            micro_batch = 0
            if ema is not None:
                ema.step(unwrapped.parameters())
            global_step += 1
            progress.update(1)
            logs = {k: accelerator.reduce(v.detach(), reduction="mean").item() for k, v in parts.items()}
            logs["lr"] = lr_scheduler.get_last_lr()[0]
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            accelerator.log(logs, step=global_step)
            if accelerator.is_main_process:
                with log_path.open("a") as f:
                    f.write(json.dumps({"step": global_step, **logs}) + "\n")

            if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
                save_checkpoint(
                    accelerator, output_dir, global_step, identity=identity, limit=args.checkpoints_total_limit
                )
            if (
                validation is not None
                and accelerator.is_main_process
                and (
                    global_step % (args.validation_steps or args.checkpointing_steps) == 0
                    or global_step == args.max_train_steps
                )
            ):
                with ema_weights(ema, unwrapped):
                    run_validation(args, teacher, unwrapped, validation, global_step, accelerator)
            if global_step >= args.max_train_steps:
                done = True
                break
    progress.close()

    # 7. Save: merged pruned pipeline (+ the LoRA adapter with its alpha), recipe, loss curve.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(student)
        final.eval()
        if ema is not None:  # the averaged weights are the model
            ema.copy_to(final.parameters())
        if args.use_lora:  # the format the family's stock loader reads (adapters/lora.py)
            save_trained_lora(final, output_dir / "lora")
            final.fuse_lora()
            final.unload_lora()
            if masks is not None:  # the merged LoRA update is dense: keep the pruned weights at zero
                masks.apply()
        # Saved in the model's dtype (bfloat16 for PixArt-Sigma): a float32 save would re-save its 4.7B-parameter
        # text encoder at ~19 GB.
        save_dtype = resolve_dtype(args.save_dtype, args.teacher_model)
        final.to(save_dtype)
        # A hidden temporary name of outputs.py's pattern: the next run removes it if this one is killed here.
        with tempfile.TemporaryDirectory(dir=output_dir, prefix=f".save.tmp-{os.getpid()}-") as tmp:
            if args.transformer_only:  # the text encoder and VAE stay in the teacher's repo
                extra = {}
                if sparsity is not None:
                    event = {"action": "distill", "steps": global_step, "masks_kept": masks is not None}
                    extra[SPARSITY_FILE] = sparsity.remeasured({"transformer": final}, event).to_json()
                save_pruned_transformer(final, Path(tmp) / "transformer", extra_files=extra)
                move_into(Path(tmp) / "transformer", output_dir, last="config.json")
            else:
                # A student whose text encoder was sparsified keeps it (training used the teacher's embeddings).
                sparse_text = sparsity is not None and "text_encoder" in sparsity.components
                pipe = load_pipeline(
                    args.student_model if sparse_text else args.teacher_model,
                    torch_dtype=save_dtype,
                    revision=args.student_revision if sparse_text else args.revision,
                    variant=None if sparse_text else args.variant,
                    transformer=final,
                )
                extra = {}
                if sparsity is not None:
                    event = {"action": "distill", "steps": global_step, "masks_kept": masks is not None}
                    extra[SPARSITY_FILE] = sparsity.remeasured(pipe, event).to_json()
                save_pruned_pipeline(pipe, Path(tmp) / "pipeline", extra_files=extra)
                move_into(Path(tmp) / "pipeline", output_dir)
        if elastic is not None:  # the depths and their nested blocks, beside the largest depth's model
            save_elastic_record(output_dir, elastic, final.config, args=args, steps=global_step)
        write_marker(output_dir, "distillation", local=_local_record(args), entries=())
        # distill_config.json is uploaded with the model: models and data by public name (full paths in the marker).
        DistillConfig(
            teacher_model=public_name(args.teacher_model),
            student_model=public_name(args.student_model),
            kept_layers=final.config.kept_layers,
            source_num_layers=final.config.source_num_layers,
            steps=global_step,
            weights=weights,
            lora=args.use_lora,
            rank=args.rank if args.use_lora else None,
            lora_alpha=args.lora_alpha if args.use_lora else None,
            learning_rate=args.learning_rate,
            train_batch_size=args.train_batch_size,
            num_processes=accelerator.num_processes,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=accelerator.mixed_precision,
            use_ema=args.use_ema,
            ema_decay=args.ema_decay if args.use_ema else None,
            train_samples=len(dataset),
            prompt_set=_public_record(getattr(args, "prompt_set_record", None)),
            data=public_name(args.dataset_name or args.train_data_dir or args.prompts or defaults["train_prompts"]),
            save_dtype=str(save_dtype).removeprefix("torch."),
            transformer_only=args.transformer_only,
            resolution=args.resolution,
            max_sequence_length=args.max_sequence_length,
            cache_dtype=args.cache_dtype,
            seed=args.seed,
            teacher_revision=args.revision,
            teacher_variant=args.variant,
            student_revision=args.student_revision,
            sparsity_masks_kept=masks is not None,
            objective=objective_record(args),
            optimizer=optimizer_record(args),
            lora_dropout=args.lora_dropout if args.use_lora and not args.init_lora else None,
            proportion_empty_prompts=args.proportion_empty_prompts or None,
            elastic=elastic_distill_record(elastic, args),
        ).save(output_dir)
        plot_losses(log_path, output_dir / "loss_curve.png")
        if args.push_to_hub:
            from diffusers_layerprune.hub import push_pipeline

            push_pipeline(
                output_dir,
                args.hub_model_id,
                private=args.hub_private_repo,
                commit_message=f"Distilled pruned model ({global_step} steps)",
            )
        accelerator.print(f"saved distilled pipeline to {output_dir}")
    accelerator.end_training()


def _public_record(record: dict | None) -> dict | None:
    """A prompt-set record as uploaded files keep it: its source by public name."""
    return None if record is None else {**record, "source": public_name(record["source"])}


def _local_record(args) -> dict:
    """Full local paths of the run's models, kept in the output's hidden marker (never uploaded)."""
    return {"teacher_model": full_local(args.teacher_model), "student_model": full_local(args.student_model)}


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: accelerate's state, with the student saved as a loadable transformer folder
# ----------------------------------------------------------------------------------------------------------------

LORA_STATE = "adapter_model.safetensors"  # a checkpoint's transformer_lora/ of earlier versions
LORA_FOLDER = "lora"  # a checkpoint's LoRA, as the family's stock loader reads it


def transformer_state_dict(model) -> dict[str, torch.Tensor]:
    """The student's weights under the stock diffusers names; LoRA adapters are merged in (the model is not
    changed), so the result loads into ``PixArtTransformer2DModel``."""
    deltas: dict[str, torch.Tensor] = {}
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is a dependency; without it there are no adapters to merge
        LoraLayer = ()
    for name, module in model.named_modules():
        if LoraLayer and isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    delta = module.get_delta_weight(adapter).detach()
                    key = f"{name}.weight"
                    deltas[key] = deltas[key] + delta if key in deltas else delta
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        clean = key.replace(".base_layer.", ".")
        value = value.detach()
        if clean in deltas:
            value = value + deltas[clean].to(value.dtype)
        state[clean] = value.contiguous()
    return state


def save_transformer_folder(model, folder: Path) -> None:
    """``config.json`` + ``diffusion_pytorch_model.safetensors``: the stock class's ``from_pretrained`` (and the
    pruned class's) load it."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    state = {k: v.cpu() for k, v in transformer_state_dict(model).items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


def register_checkpoint_hooks(accelerator, model, ema, *, use_lora: bool) -> None:
    """``save_state`` writes the student as ``transformer/`` (a transformer folder; LoRA merged), the trainable LoRA
    as ``lora/`` (what the family's stock loader reads: ``pipe.load_lora_weights(checkpoint / "lora")``, PixArt's
    a peft folder) and the EMA as ``transformer_ema/`` (diffusers' EMAModel folder); ``load_state`` reads them back.
    Checkpoints of earlier versions (``transformer_lora/``; accelerate's ``model.safetensors``) still load."""

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            folder = Path(output_dir)
            save_transformer_folder(model, folder / "transformer")
            if use_lora:
                save_trained_lora(model, folder / LORA_FOLDER)
            if ema is not None:
                ema.save_pretrained(str(folder / "transformer_ema"))
        while weights:  # saved above: accelerate must not write them again
            weights.pop()

    def load_model_hook(models, input_dir):
        from safetensors.torch import load_file

        folder = Path(input_dir)
        if not (folder / "transformer").is_dir():
            return  # a checkpoint of an earlier version: accelerate loads its model.safetensors
        while models:
            target = accelerator.unwrap_model(models.pop())
            if use_lora:
                from peft.utils import set_peft_model_state_dict

                if (folder / LORA_FOLDER).is_dir():
                    state = read_trained_lora_state(folder / LORA_FOLDER)
                else:
                    state = load_file(str(folder / "transformer_lora" / LORA_STATE))
                set_peft_model_state_dict(target, state)
            else:
                state = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
                target.load_state_dict(state, strict=True)
        if ema is not None:
            from diffusers.training_utils import EMAModel

            loaded = EMAModel.from_pretrained(str(folder / "transformer_ema"), type(model))
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def save_checkpoint(accelerator, output_dir: Path, step: int, *, identity: dict, limit: int | None = None) -> None:
    """accelerate state (student, EMA, optimizer, scheduler, RNG, sampler) written under a temporary name and renamed
    when complete, so a run killed while saving never leaves a half-written checkpoint for --resume_from_checkpoint;
    only then are checkpoints beyond ``limit`` removed, so a kill never leaves none."""
    tmp, final = output_dir / f".checkpoint-{step}.tmp", output_dir / f"checkpoint-{step}"
    accelerator.wait_for_everyone()
    from diffusers_layerprune.outputs import checkpoint_size, removing_partial

    with removing_partial(tmp, final, needed=checkpoint_size(output_dir)):  # a full disk: one line, no half folder
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_checkpoint_record(tmp, identity, step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        remove_old_checkpoints(output_dir, limit, newest=final)
    accelerator.wait_for_everyone()


class ema_weights:
    """Within the block the model holds the EMA weights (validation sees what will be saved); restored after."""

    def __init__(self, ema, model) -> None:
        self.ema, self.model = ema, model

    def __enter__(self):
        if self.ema is not None:
            self.ema.store(self.model.parameters())
            self.ema.copy_to(self.model.parameters())

    def __exit__(self, *exc):
        if self.ema is not None:
            self.ema.restore(self.model.parameters())
        return False


def run_validation(args, teacher, student, validation, step, accelerator):
    """Generate --num_validation_images per validation prompt with the student; save PNGs and log them."""
    text_all, negative = validation
    pipe = with_transformer(teacher, student)
    family = family_of_pipeline(pipe)  # the pipeline's call arguments for cached conditioning
    folder = Path(args.output_dir) / "validation" / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    was_training = student.training
    student.eval()
    images, captions = [], []
    with torch.no_grad():
        for i, prompt in enumerate(args.validation_prompts):
            for j in range(args.num_validation_images):
                text = {k: v[i : i + 1] for k, v in text_all.items()}
                call = family.call_kwargs(
                    to_device(text, accelerator.device, student.dtype),
                    to_device(negative, accelerator.device, student.dtype),
                    args.resolution,
                    args.max_sequence_length,
                )
                out = pipe(
                    **call,
                    num_inference_steps=args.validation_inference_steps,
                    **family.guidance_kwargs(args.teacher_guidance_scale, pipe.transformer.config),
                    generator=torch.Generator().manual_seed(args.seed + j),
                ).images[0]
                out.save(folder / f"prompt{i}-{j}.png")
                images.append(out)
                captions.append(f"{i}: {prompt}")
    student.train(was_training)
    log_validation_images(accelerator.trackers, images, captions, step)


def log_validation_images(trackers, images, captions, step: int) -> None:
    """Log validation images to every active tracker that takes images (TensorBoard, Weights & Biases)."""
    import numpy as np

    for tracker in trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(
                "validation", np.stack([np.asarray(im) for im in images]), step, dataformats="NHWC"
            )
        elif tracker.name == "wandb":
            import wandb

            tracker.log(
                {"validation": [wandb.Image(im, caption=c) for im, c in zip(images, captions, strict=True)]},
                step=step,
            )


def plot_losses(log_path: Path, out: Path) -> None:
    """Loss terms against step, log scale, from train_log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "task", "output", "variance", "feature"):
        if key in rows[0]:
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("distillation losses")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def cli(argv=None) -> None:
    """Command-line entry point: a :class:`LayerPruneError` (or an ``OSError`` such as a full disk) is printed on one
    line and exits 2; ``LAYERPRUNE_DEBUG=1`` shows the traceback instead."""
    from diffusers_layerprune.launch import follow_parent, report_error
    from diffusers_layerprune.validation import debug_enabled

    follow_parent()  # launched by `layerprune run`: stop when it stops
    try:
        main(argv)
    except (LayerPruneError, OSError) as error:
        if debug_enabled([]):
            raise
        message = error if isinstance(error, LayerPruneError) else f"{error.strerror or error}: {error.filename or ''}"
        report_error("train_distill", message)
        raise SystemExit(2) from None
    except Exception as error:  # a bug: its traceback follows; `layerprune run` tells it in one line (and logs it)
        from diffusers_layerprune.launch import report_crash

        report_crash(error)
        raise


if __name__ == "__main__":
    cli()
