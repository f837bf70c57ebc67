"""The flow-matching training objective of ``train_distill`` (SD3 / 3.5, Flux.1, Sana), with the flags and defaults
of diffusers' own training examples (``examples/dreambooth/train_dreambooth_lora_{sd3,flux,sana}.py``).

Each optimisation step draws a noise level ``sigma`` per sample, noises the cached latents on the straight path
``x_t = (1 - sigma) x0 + sigma eps`` and runs student and teacher on the same ``x_t`` at timestep ``sigma * T``:

- ``--weighting_scheme`` ``logit_normal`` / ``mode`` draw ``u`` from diffusers'
  ``training_utils.compute_density_for_timestep_sampling``; the others draw it uniformly. As in the examples, ``u``
  picks entry ``int(u * T)`` of the scheduler's descending sigma table (``1 .. 1/T``). ``sigma_sqrt`` / ``cosmap``
  weight the loss per sample with ``compute_loss_weighting_for_sd3``; ``none`` is uniform sampling, uniform loss.
- ``--timestep_shift`` moves the table as the teacher's scheduler does when sampling: ``scheduler`` takes its static
  ``shift`` (Sana's ``flow_shift``) or, with ``use_dynamic_shifting`` (Flux.1), the resolution-dependent shift
  ``mu`` of FluxPipeline (``calculate_shift`` of the image sequence length, then the scheduler's ``time_shift``); a
  number is a fixed shift; ``none`` keeps the table unshifted.
- ``--precondition_outputs 1`` (EDM, the SD3 example's default) compares ``x_t - sigma * v`` with ``x0``.

The weighting and the preconditioning apply to the task and output-KD losses (both compare a prediction at
``x_t``); the block-feature losses are not weighted. The family's default objective (its ``training_objective``) is
its example's; ``docs/families.md`` lists them. With every setting at ``none``/0 the script draws the timesteps of
earlier versions (uniform integers ``t``, ``sigma = t / T``), so an existing run trains exactly as before.

This module imports no torch at import time: the training script's argument errors stay instant.
"""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import LayerPruneError
from .validation import beta, finite_float, non_negative_float, positive_float

WEIGHTING_SCHEMES = ("sigma_sqrt", "logit_normal", "mode", "cosmap", "none")
OPTIMIZERS = ("adamw", "prodigy")
# The mode density maps [0, 1] onto [0, 1] monotonically only for scales in [-1, 2 / (pi - 2)] (Esser et al., 2024,
# eq. 20); outside, u leaves [0, 1] and picks no entry of the sigma table.
MODE_SCALE_RANGE = (-1.0, 2.0 / (math.pi - 2.0))
# What a flow family trains with unless its family record says otherwise (the Flux and Sana examples' defaults).
FLOW_DEFAULTS = {"weighting_scheme": "none", "precondition_outputs": 0, "timestep_shift": "none"}
OBJECTIVE_FLAGS = (
    "weighting_scheme",
    "logit_mean",
    "logit_std",
    "mode_scale",
    "precondition_outputs",
    "timestep_shift",
)
PRODIGY_FLAGS = ("prodigy_beta3", "prodigy_decouple", "prodigy_use_bias_correction", "prodigy_safeguard_warmup")
PRODIGY_EXTRA = "pip install prodigyopt (or pip install 'diffusers-layerprune[train]')"


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


def boolean(text: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``): the examples' Prodigy flags take a value, and
    ``--prodigy_decouple False`` must mean False (argparse's ``type=bool`` would read any text as True)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")


def mode_scale(text: str) -> float:
    value = finite_float(text)
    low, high = MODE_SCALE_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:.4f}] (a monotone density), got {text}")
    return value


def timestep_shift(text: str) -> str:
    """``none``, ``scheduler`` or a shift > 0 (kept as text, so the checkpoint settings compare what was given)."""
    if text in ("none", "scheduler"):
        return text
    try:
        value = positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be none, scheduler or a number > 0, got {text!r}") from None
    return repr(value)


def open_unit(text: str) -> float:
    value = beta(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def add_objective_arguments(parser: argparse.ArgumentParser) -> None:
    """The flow-matching objective's flags (diffusers' example names; their default is the family's)."""
    g = parser.add_argument_group(
        "flow-matching objective (SD3, Flux, Sana; names and defaults of diffusers' training examples)"
    )
    g.add_argument(
        "--weighting_scheme",
        default=None,
        choices=WEIGHTING_SCHEMES,
        help="how noise levels are drawn and the KD loss weighted: logit_normal / mode draw sigma non-uniformly, "
        "sigma_sqrt / cosmap weight the loss, none is uniform (default: the family's, docs/families.md: "
        "logit_normal for SD3, none for Flux and Sana)",
    )
    g.add_argument("--logit_mean", type=finite_float, default=None, help="logit_normal's mean (default 0.0)")
    g.add_argument("--logit_std", type=positive_float, default=None, help="logit_normal's std (default 1.0)")
    g.add_argument(
        "--mode_scale", type=mode_scale, default=None, help="the mode scheme's scale in [-1, 1.75] (default 1.29)"
    )
    g.add_argument(
        "--precondition_outputs",
        type=int,
        choices=(0, 1),
        default=None,
        help="1: compare x_t - sigma * v with x0 (EDM preconditioning, the SD3 example); default: the family's "
        "(1 for SD3, 0 for Flux and Sana)",
    )
    g.add_argument(
        "--timestep_shift",
        type=timestep_shift,
        default=None,
        help="shift of the noise levels: scheduler (the teacher scheduler's shift; Flux's use_dynamic_shifting: by "
        "the image sequence length, as the pipeline does), none, or a number (default: the family's: scheduler for "
        "SD3, none for Flux and Sana, as their examples train)",
    )
    g.add_argument(
        "--guidance_scale",
        type=non_negative_float,
        default=None,
        help="guidance-distilled models (a guidance embedding, e.g. Flux.1-dev): the guidance value student and "
        "teacher get in training (default: the family's, 3.5 for Flux.1)",
    )


def add_optimizer_arguments(group) -> None:
    """``--optimizer`` and the Prodigy flags, as the examples name them."""
    group.add_argument(
        "--optimizer",
        type=str.lower,
        default="adamw",
        choices=OPTIMIZERS,
        help="adamw (default) or prodigy (pip install prodigyopt; usually with --learning_rate 1.0); the --adam_* "
        "betas, weight decay and epsilon apply to both",
    )
    group.add_argument(
        "--prodigy_beta3",
        type=open_unit,
        default=None,
        help="Prodigy's step-size running-average coefficient (default: sqrt(adam_beta2))",
    )
    group.add_argument(
        "--prodigy_decouple", type=boolean, default=None, help="AdamW-style decoupled weight decay (default true)"
    )
    group.add_argument(
        "--prodigy_use_bias_correction", type=boolean, default=None, help="Adam's bias correction (default true)"
    )
    group.add_argument(
        "--prodigy_safeguard_warmup",
        type=boolean,
        default=None,
        help="leave the lr out of the D estimate's denominator during warm-up (default true)",
    )


# ----------------------------------------------------------------------------------------------------------------
# Checks and resolved settings (before any model is loaded)
# ----------------------------------------------------------------------------------------------------------------


def check_optimizer_args(args) -> None:
    """Refuse Prodigy flags without ``--optimizer prodigy``, Prodigy without its package or with 8-bit Adam; fill in
    the Prodigy defaults of the examples."""
    import importlib.util

    if args.optimizer != "prodigy":
        given = [f for f in PRODIGY_FLAGS if getattr(args, f) is not None]
        if given:
            raise LayerPruneError(f"--{given[0]} applies only with --optimizer prodigy: add it or leave the flag out")
        return
    if args.use_8bit_adam:
        raise LayerPruneError("--use_8bit_adam is an AdamW; it does not go with --optimizer prodigy")
    if importlib.util.find_spec("prodigyopt") is None:
        raise LayerPruneError(f"--optimizer prodigy needs the prodigyopt package: {PRODIGY_EXTRA}")
    for flag in PRODIGY_FLAGS[1:]:
        if getattr(args, flag) is None:
            setattr(args, flag, True)


def takes_guidance(family) -> bool:
    """Whether the family's forward takes a ``guidance`` value (its models may carry a guidance embedding)."""
    return "guidance" in inspect.signature(family.forward).parameters


def resolve_objective(args, family, student_config: Mapping) -> None:
    """Check the objective flags against the student's family and fill in the family's defaults, so the run records
    (checkpoint settings, ``distill_config.json``) hold the values trained with. A flag that does not apply is
    refused (:class:`LayerPruneError`, one line) before anything is loaded."""
    given = [f for f in OBJECTIVE_FLAGS if getattr(args, f) is not None]
    if family.objective != "flow":
        if given:
            raise LayerPruneError(
                f"--{given[0]} applies to flow-matching models; {args.student_model} is a {family.title} model, "
                f"trained on its {family.objective.upper()} schedule: leave the flag out"
            )
    else:
        defaults = {**FLOW_DEFAULTS, **dict(family.training_objective)}
        for flag in ("weighting_scheme", "precondition_outputs", "timestep_shift"):
            if getattr(args, flag) is None:
                setattr(args, flag, defaults[flag])
        scheme = args.weighting_scheme
        for flag, needs, default in (
            ("logit_mean", "logit_normal", 0.0),
            ("logit_std", "logit_normal", 1.0),
            ("mode_scale", "mode", 1.29),
        ):
            if getattr(args, flag) is not None and scheme != needs:
                raise LayerPruneError(
                    f"--{flag} applies only with --weighting_scheme {needs} (this run: {scheme}): add it or leave "
                    "the flag out"
                )
            if scheme == needs and getattr(args, flag) is None:
                setattr(args, flag, default)
    guided = bool(student_config.get("guidance_embeds")) and family.objective == "flow" and takes_guidance(family)
    if args.guidance_scale is not None and not guided:
        raise LayerPruneError(
            f"--guidance_scale applies to guidance-distilled models (a guidance embedding, e.g. Flux.1-dev); "
            f"{args.student_model} ({family.title}) has none: leave the flag out"
        )
    if guided and args.guidance_scale is None:
        args.guidance_scale = float(family.defaults.get("guidance_scale", 3.5))


def check_resume_objective(checkpoint, args) -> None:
    """A checkpoint saved before these flags existed records no objective: it was trained with uniform, unshifted,
    unweighted noise levels. Resuming it under another objective (SD3's default now) is a changed setting like any
    other (:class:`~diffusers_layerprune.checkpoints.CheckpointMismatch`, so ``--resume_mismatch restart`` applies)."""
    from pathlib import Path

    from .checkpoints import CHECKPOINT_RECORD, CheckpointMismatch, CheckpointRecord

    try:
        settings = CheckpointRecord.load(Path(checkpoint) / CHECKPOINT_RECORD).settings
    except ValueError:  # LayerPruneError: no record, or one refused by checkpoints.check_checkpoint
        return
    if not isinstance(settings, dict) or "weighting_scheme" in settings or args.weighting_scheme is None:
        return
    legacy = {f: FLOW_DEFAULTS[f] for f in ("weighting_scheme", "precondition_outputs", "timestep_shift")}
    now = {f: getattr(args, f) for f in legacy}
    if now != legacy:
        earlier = " ".join(f"--{k} {v}" for k, v in legacy.items())
        raise CheckpointMismatch(
            f"checkpoint {checkpoint} was saved by an earlier version, which trained with {earlier}; this run has "
            + " ".join(f"--{k} {v}" for k, v in now.items()),
            f"resume with {earlier}, or start a new --output_dir, or pass --resume_mismatch restart to start over in "
            "this one",
        )


def objective_record(args) -> dict | None:
    """The objective as ``distill_config.json`` keeps it (``None`` for a DDPM family)."""
    if args.weighting_scheme is None:
        return None
    record = {f: getattr(args, f) for f in ("weighting_scheme", "precondition_outputs", "timestep_shift")}
    for flag in ("logit_mean", "logit_std", "mode_scale", "guidance_scale"):
        if getattr(args, flag) is not None:
            record[flag] = getattr(args, flag)
    return record


def optimizer_record(args) -> dict:
    record = {"name": args.optimizer}
    if args.optimizer == "prodigy":
        record.update({f: getattr(args, f) for f in PRODIGY_FLAGS})
    return record


def build_optimizer(args, params):
    """AdamW (torch's, or bitsandbytes' 8-bit with ``--use_8bit_adam``) or Prodigy, with the examples' arguments."""
    import torch

    common = dict(betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    if args.optimizer == "prodigy":
        import prodigyopt

        return prodigyopt.Prodigy(
            params,
            lr=args.learning_rate,
            beta3=args.prodigy_beta3,
            decouple=args.prodigy_decouple,
            use_bias_correction=args.prodigy_use_bias_correction,
            safeguard_warmup=args.prodigy_safeguard_warmup,
            **common,
        )
    if args.use_8bit_adam:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=args.learning_rate, **common)
    return torch.optim.AdamW(params, lr=args.learning_rate, **common)


# ----------------------------------------------------------------------------------------------------------------
# The noise levels of a step
# ----------------------------------------------------------------------------------------------------------------


def _sigma_generator(seed: int, step: int):
    """The noise-level RNG of one step: apart from the noise's (``distill.step_generator``), so changing the scheme
    leaves each sample's noise as it was."""
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + 7919)


@dataclass
class FlowSchedule:
    """How a flow family's training step draws its noise levels and weights its loss.

    Attributes:
        weighting_scheme / logit_mean / logit_std / mode_scale / precondition_outputs: as the flags.
        shift: a fixed shift of the sigma table (1.0: none).
        dynamic: ``image_tokens -> mu`` of the resolution-dependent shift (``None``: static), applied with
            ``time_shift(mu, 1, sigma)``.
        num_train_timesteps: ``T``; the model's timestep is ``sigma * T``.
        image_tokens: ``(h, w) -> tokens`` of the family's latent grid (the sequence length the dynamic shift reads).
    """

    weighting_scheme: str
    logit_mean: float | None
    logit_std: float | None
    mode_scale: float | None
    precondition_outputs: bool
    shift: float
    dynamic: Callable | None
    time_shift: Callable | None
    num_train_timesteps: int
    image_tokens: Callable[[int, int], int]

    @classmethod
    def from_args(cls, args, family, scheduler_config: Mapping, transformer_config: Mapping) -> FlowSchedule:
        num_train_timesteps = int(scheduler_config.get("num_train_timesteps", 1000))
        shift, dynamic, time_shift = 1.0, None, None
        if args.timestep_shift == "scheduler":
            if scheduler_config.get("use_dynamic_shifting"):
                from diffusers import FlowMatchEulerDiscreteScheduler
                from diffusers.pipelines.flux.pipeline_flux import calculate_shift

                c = scheduler_config

                def dynamic(tokens: int) -> float:  # FluxPipeline's mu for this many image tokens
                    return calculate_shift(
                        tokens,
                        c.get("base_image_seq_len", 256),
                        c.get("max_image_seq_len", 4096),
                        c.get("base_shift", 0.5),
                        c.get("max_shift", 1.15),
                    )

                time_shift = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config)).time_shift
            else:  # FlowMatchEulerDiscreteScheduler's shift; DPMSolver's (Sana) flow_shift
                shift = float(scheduler_config.get("shift", scheduler_config.get("flow_shift", 1.0)) or 1.0)
        elif args.timestep_shift != "none":
            shift = float(args.timestep_shift)
        return cls(
            weighting_scheme=args.weighting_scheme,
            logit_mean=args.logit_mean,
            logit_std=args.logit_std,
            mode_scale=args.mode_scale,
            precondition_outputs=bool(args.precondition_outputs),
            shift=shift,
            dynamic=dynamic,
            time_shift=time_shift,
            num_train_timesteps=num_train_timesteps,
            image_tokens=lambda h, w: family.image_tokens(transformer_config, h, w),
        )

    @property
    def legacy(self) -> bool:
        """Uniform, unshifted, unweighted: the draws of earlier versions (``distill.step_noise``'s timesteps)."""
        return (
            self.weighting_scheme == "none"
            and self.shift == 1.0
            and self.dynamic is None
            and not self.precondition_outputs
        )

    def sigmas(self, seed: int, step: int, *, global_batch_size: int, offset: int, batch: int, hw: tuple[int, int]):
        """Noise levels ``[batch]`` (float32, in ``(0, 1]``) of the samples ``offset .. offset + batch`` of a step's
        global batch: drawn for the whole global batch, so the split over processes does not change them."""
        import torch
        from diffusers.training_utils import compute_density_for_timestep_sampling

        total = max(global_batch_size, offset + batch)
        u = compute_density_for_timestep_sampling(
            weighting_scheme=self.weighting_scheme,
            batch_size=total,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            generator=_sigma_generator(seed, step),
        )[offset : offset + batch]
        T = self.num_train_timesteps
        # the examples' table: FlowMatchEulerDiscreteScheduler's sigmas 1 .. 1/T, entry int(u * T)
        index = (u * T).long().clamp(0, T - 1)
        sigma = (T - index).to(torch.float32) / T
        if self.shift != 1.0:
            sigma = self.shift * sigma / (1 + (self.shift - 1) * sigma)
        if self.dynamic is not None:
            sigma = self.time_shift(self.dynamic(self.image_tokens(*hw)), 1.0, sigma).to(torch.float32)
        return sigma

    def loss_weights(self, sigmas):
        """Per-sample loss weights ``[B]`` (diffusers' ``compute_loss_weighting_for_sd3``)."""
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.weighting_scheme, sigmas).float()

    def batch(self, latents, noise, seed: int, step: int, *, global_batch_size: int, offset: int):
        """``(noisy, target, timesteps, sample_weights, precondition)`` of one micro-batch: the model's input at
        ``sigma``, what its (preconditioned) prediction is compared with, the timesteps ``sigma * T`` it is given,
        the loss weights, and ``prediction -> x_t - sigma * prediction`` (``None`` without preconditioning)."""
        shape = (-1, *([1] * (latents.dim() - 1)))
        sigma = self.sigmas(
            seed, step, global_batch_size=global_batch_size, offset=offset, batch=latents.shape[0],
            hw=tuple(latents.shape[-2:]),
        ).to(latents.device)  # fmt: skip
        s = sigma.view(shape).to(latents.dtype)
        noisy = (1 - s) * latents + s * noise
        target = latents if self.precondition_outputs else noise - latents
        precondition = None
        if self.precondition_outputs:

            def precondition(prediction, noisy=noisy, s=s):
                return noisy.to(prediction.dtype) - s.to(prediction.dtype) * prediction

        return noisy, target, sigma * self.num_train_timesteps, self.loss_weights(sigma), precondition
