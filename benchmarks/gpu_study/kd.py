"""Section c (kd): one knowledge-distillation step of PixArt-Sigma-XL pruned by 25% against its floor."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import nullcontext

import torch

from diffusers_layerprune.evaluation import elapsed_seconds, latency_inputs
from diffusers_layerprune.families import get_family

from .common import PRUNE_FRACTIONS, Progress, Settings, build_transformer, is_oom, model_spec, release, spread


def kd_setup(settings: Settings, batch: int):
    """Teacher (run dtype, frozen), a 25%-pruned student factory (float32 master weights, as train_distill keeps
    them under mixed precision), the batch and the family's forward."""
    spec = model_spec("pixart", settings)
    family = get_family("pixart")
    teacher = build_transformer(spec, settings)
    total = family.depth(teacher.config)
    kept = spread(total, total - int(total * PRUNE_FRACTIONS[0] + 0.5))
    latents, timestep, text = latency_inputs(teacher, **spec.latency_shape(), batch_size=batch)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(latents.shape, generator=g).to(latents.device, latents.dtype)
    timestep = torch.randint(0, 1000, (batch,), generator=g).to(latents.device)
    noisy = latents + noise  # epsilon objective: the target is the added noise (PixArt predicts epsilon)

    def student_factory(checkpointing: bool):
        student = family.pruned_class().from_transformer(teacher, kept_layers=kept, copy_weights=True).float()
        student.requires_grad_(True).train()
        if checkpointing:
            student.enable_gradient_checkpointing()
        return student, torch.optim.AdamW(student.parameters(), lr=1e-5)

    return spec, family, teacher, kept, student_factory, dict(noisy=noisy, noise=noise, timestep=timestep, text=text)


def make_steps(settings: Settings, family, teacher, batch: dict, students: dict) -> dict[str, Callable[[], None]]:
    """``kd``: what train_distill runs each step (``kd_step_losses``, backward, AdamW); ``floor``: a teacher forward
    without hooks, then the student on the task loss alone (the least a KD step can cost)."""
    from diffusers_layerprune.distill import KDWeights, block_pairs, kd_step_losses

    noisy, noise, timestep, text = batch["noisy"], batch["noise"], batch["timestep"], batch["text"]
    channels = noise.shape[1]

    def autocast():  # mixed precision as train_distill runs it: float32 student weights, half-precision compute
        if settings.torch_dtype == torch.float32:
            return None
        return torch.autocast(torch.device(settings.device).type, dtype=settings.torch_dtype)

    def cond(model, x):
        return family.forward(model, x, timestep, text)

    steps = {}
    for mode, (student, optimizer) in students.items():
        pairs = block_pairs(student, teacher)

        def kd(student=student, optimizer=optimizer, pairs=pairs):
            losses = kd_step_losses(student, teacher, noisy, cond, noise, pairs, KDWeights(), autocast=autocast())
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()

        def floor(student=student, optimizer=optimizer):
            with torch.no_grad():
                cond(teacher, noisy)
            with autocast() or nullcontext():
                out = cond(student, noisy)
            loss = torch.nn.functional.mse_loss(out[:, :channels].float(), noise.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps[mode] = kd if mode == "kd" else floor
    return steps


def step_memory(settings: Settings, step: Callable[[], None]) -> int | None:
    """Peak bytes allocated during one step after a warm one (AdamW's state exists by then): the whole training
    state, teacher included, since only this mode's student is alive."""
    if not settings.cuda:
        return None
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def kd_attempt(settings: Settings, family, teacher, batch: dict, student_factory, checkpointing: bool) -> dict:
    """Peak memory of each mode (one student alive at a time, so each peak is that mode's whole training state),
    then both modes timed interleaved (drift hits both alike)."""
    memory = {}
    for mode in ("floor", "kd"):
        students = {mode: student_factory(checkpointing)}
        memory[mode] = step_memory(settings, make_steps(settings, family, teacher, batch, students)[mode])
        del students
        release()
    students = {mode: student_factory(checkpointing) for mode in ("kd", "floor")}
    steps = make_steps(settings, family, teacher, batch, students)
    for _ in range(settings.kd_warmup):
        for step in steps.values():
            step()
    samples = {mode: [] for mode in steps}
    for _ in range(settings.kd_repeats):
        for mode, step in steps.items():
            samples[mode].append(elapsed_seconds(step, settings.device) * 1e3)
    median = {mode: statistics.median(v) for mode, v in samples.items()}
    return {
        "gradient_checkpointing": checkpointing,
        "ms_per_step": median,
        "samples_ms": samples,
        "kd_over_floor": median["kd"] / median["floor"],
        "peak_bytes": memory,
        "trainable_parameters": sum(p.numel() for p in students["kd"][0].parameters()),
    }


def section_kd(settings: Settings, progress: Progress) -> dict:
    batch_size = settings.kd_batch
    spec, family, teacher, kept, student_factory, batch = kd_setup(settings, batch_size)
    attempts = []
    for checkpointing in (False, True):  # gradient checkpointing only when the plain step does not fit
        message = None
        try:
            attempts.append(kd_attempt(settings, family, teacher, batch, student_factory, checkpointing))
        except Exception as error:
            if not is_oom(error):
                raise
            message = str(error).splitlines()[0]
        if message is None:
            break
        release()  # after the except block: the exception (and the frames holding the tensors) is gone
        attempts.append({"gradient_checkpointing": checkpointing, "error": message})
    del teacher, batch, student_factory
    release()
    return {
        "family": "pixart",
        "model": spec.model,
        "spec": spec.jsonable(),
        "batch": batch_size,
        "kept_layers": kept,
        "student_dtype": "float32" + (f" weights, autocast {settings.dtype}" if settings.dtype != "float32" else ""),
        "teacher_dtype": settings.dtype,
        "optimizer": "AdamW",
        "losses": "task + output + variance + feature (KDWeights defaults)",
        "attempts": attempts,
    }
