"""One prepared GPU check: every figure that only a GPU shows, in one command under 8 minutes on one H100.

    python benchmarks/gpu_check.py --output benchmarks/results/gpu          # on the GPU (see docs/gpu.md)
    python benchmarks/gpu_check.py --output /tmp/gpu-smoke --smoke          # the same code paths, tiny, on CPU
    python benchmarks/gpu_check.py --output benchmarks/results/gpu --report-only   # docs' GPU sections from JSON

Every model is built from a published config shipped in the package (``testing.PUBLISHED_TRANSFORMERS``, T5-XXL's
encoder from ``testing.T5_XXL_ENCODER``) with random weights (speed and memory do not depend on the values), in
bfloat16, at 1024 px. Sections run in this order; each writes ``DIR/<section>.json`` (atomically) as soon as it ends,
and the long ones also save each finished measurement in ``DIR/<section>.partial.json``, so a run that is cut off
loses at most the measurement in flight. A rerun skips finished sections (``--force`` redoes them) and finished
measurements. At the end every section is merged into ``gpu_<card>.json`` beside ``DIR``. After ``--time-limit``
seconds (420 by default on a GPU) no new section or measurement starts, so one call ends inside 8 minutes even
when the estimates below are off; the rerun finishes the set.

a  pixart     PixArt-Sigma-XL transformer: latency and peak memory of the full model and of 25% / 40% pruned ones
              (blocks evenly spread), speed-up against the ideal (the depth ratio).                      ~20 s
b  families   the same for every other family at its published config (Sana 1.6B, SD3.5 Medium, Flux.1-dev).
                                                                                                            ~70 s
c  kd         one knowledge-distillation step of PixArt-Sigma-XL pruned by 25% (``distill.kd_step_losses``:
              teacher forward keeping paired block outputs, student forward and backward, AdamW) against its
              floor (teacher forward + a plain student step), and each one's peak memory.              ~40 s
d  sparsity   2:4 semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``) of the T5-XXL encoder's
              and of the PixArt-Sigma-XL transformer's linears: speed-up and output error.              ~45 s
e  stacking   depth x cache (diffusers.hooks First Block Cache, TaylorSeer) x int8 (torchao weight-only, when
              installed) on Flux.1-dev and PixArt-Sigma-XL: latency of a denoising loop.              ~110 s

The times are estimates for one H100 from FLOP counts (no GPU was available when this was written), start-up and
model builds included; each section's JSON records its measured time. Timing: CUDA events around the timed work
after ``torch.cuda.synchronize`` (``evaluation.elapsed_seconds``), warm-up first, median of repeats, models of a
comparison interleaved (``evaluation.transformer_latency``). Peak memory: the allocator's peak during one forward over
what was allocated before it, plus the model's own weights (a pruned model shares its weights with the full one here,
so its weights are counted by its own tensors).

``--smoke`` runs the same code on CPU in float32 with the package's tiny random models (their depth doubled so that
25% and 40% pruning differ) and few repeats, in under a minute (about 20 CPU-seconds). The CUDA-only parts fall back and say so in the
JSON: the wall clock instead of CUDA events, no peak memory (no allocator statistics), and 2:4 as a mask on dense
weights (a dense matmul) instead of the sparse kernels. Smoke results are not measurements; ``--report-only`` refuses
to write them into the repository's docs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP waits stall on shared cores
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # the paper package (replace_section)

import torch  # noqa: E402
from paper.cells import GPU_END as END  # noqa: E402
from paper.cells import GPU_START as START  # noqa: E402
from paper.cells import replace_section, write_text  # noqa: E402

from diffusers_layerprune.evaluation import elapsed_seconds, latency_inputs, transformer_latency  # noqa: E402
from diffusers_layerprune.families import FAMILIES, family_of, get_family  # noqa: E402
from diffusers_layerprune.outputs import atomic_output_file  # noqa: E402
from diffusers_layerprune.quiet import quiet  # noqa: E402

SCHEMA = 1
DOCS = ROOT / "docs"
COMMAND = "python benchmarks/gpu_check.py --output benchmarks/results/gpu"
PRUNE_FRACTIONS = (0.25, 0.40)  # sections a, b
STACK_FRACTION = 0.25  # section e: the pruned depth stacked with caches and int8
STACK_FAMILIES = ("flux", "pixart")
CACHES = ("none", "first_block", "taylorseer")
SMOKE_TEXT_TOKENS = 16
# No new measurement starts after this (seconds): with the sections' estimates (~5 min) it keeps one call under
# 8 minutes even when a measurement takes twice its estimate; a rerun measures what is left.
GPU_TIME_LIMIT = 420.0


# ----------------------------------------------------------------------------------------------------------------
# Settings of a run
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How much work a run does. ``GPU`` is sized for under 8 minutes on one H100; ``SMOKE`` for under a minute on a
    CPU."""

    smoke: bool
    device: str
    dtype: str
    warmup: int  # forwards (or steps) before timing
    repeats: int  # timed samples per model
    min_sample_seconds: float  # each latency sample repeats the forward until it lasts this long
    loop_repeats: int  # timed denoising loops per combination (section e)
    loop_steps: int | None  # denoising steps per loop; None: the family's default
    kd_batch: int
    kd_warmup: int
    kd_repeats: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


GPU = Settings(
    smoke=False,
    device="cuda",
    dtype="bfloat16",
    warmup=3,
    repeats=10,
    min_sample_seconds=0.05,
    loop_repeats=1,  # one loop is already the mean of its steps (28 for Flux.1-dev)
    loop_steps=None,
    kd_batch=4,
    kd_warmup=2,
    kd_repeats=5,
)
SMOKE = Settings(
    smoke=True,
    device="cpu",
    dtype="float32",
    warmup=1,
    repeats=2,
    min_sample_seconds=0.0,
    loop_repeats=1,
    loop_steps=4,
    kd_batch=2,
    kd_warmup=1,
    kd_repeats=1,
)


def timer_name(settings: Settings) -> str:
    if settings.cuda:
        return "CUDA events after torch.cuda.synchronize"
    return "wall clock (CPU smoke run: no CUDA events)"


# ----------------------------------------------------------------------------------------------------------------
# Environment, files
# ----------------------------------------------------------------------------------------------------------------


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no NVML: the driver stays unknown rather than failing the run
        return None


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def environment(settings: Settings) -> dict:
    """What every section's JSON records about the machine: card, driver, torch, diffusers (and the rest)."""
    import diffusers

    from diffusers_layerprune import __version__

    card = torch.cuda.get_device_name() if settings.cuda else "cpu"
    return {
        "card": card,
        "card_slug": card_slug(card, settings.smoke),
        "driver": _driver_version() if settings.cuda else None,
        "cuda": torch.version.cuda,
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())) if settings.cuda else None,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": _version("transformers"),
        "torchao": _version("torchao"),
        "diffusers_layerprune": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def card_slug(card: str, smoke: bool) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3`` (file names); smoke runs are ``cpu-smoke``."""
    return "cpu-smoke" if smoke else re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically: a run killed mid-write leaves the previous file or none."""
    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class OutOfTime(Exception):
    """The run's ``--time-limit`` has passed: what is finished is saved, a rerun measures the rest."""


class Progress:
    """Finished measurements of one section, saved one by one to ``DIR/<section>.partial.json`` so a run that is cut
    off keeps them; the next run of the section reuses them and measures only the rest. ``deadline`` (a
    ``time.perf_counter`` value): :meth:`check_time` stops the section before it starts another measurement."""

    def __init__(self, path: Path, identity: dict, deadline: float | None = None) -> None:
        self.path = path
        self.deadline = deadline
        saved = read_json(path) or {}
        # measurements of another card or mode are not reused
        self.done: dict = saved.get("done", {}) if saved.get("identity") == identity else {}
        self.identity = identity
        self.reused = len(self.done)  # measurements a run cut off earlier left

    def get(self, key: str):
        return self.done.get(key)

    def put(self, key: str, value) -> None:
        self.done[key] = value
        write_json(self.path, {"identity": self.identity, "done": self.done})

    def check_time(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise OutOfTime


def release() -> None:
    """Return freed tensors' memory, so the next model's peak is not inflated by the last one's cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    family: str
    model: str  # the checkpoint whose config this is
    config: dict
    vae_scale_factor: int
    text_tokens: int
    resolution: int

    def jsonable(self) -> dict:
        out = asdict(self)
        out["config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()}
        return out


def model_spec(name: str, settings: Settings) -> ModelSpec | None:
    """The published config of family ``name`` at 1024 px, or for a smoke run the package's tiny model of the family
    with every block stack twice as deep. ``None`` when the package ships no published config for the family."""
    from diffusers_layerprune.testing import PUBLISHED_TRANSFORMERS, TINY_BUILDERS, TINY_RESOLUTION

    family = get_family(name)
    if settings.smoke:
        pipe = TINY_BUILDERS[name]()
        config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
        for stack in family.stacks:
            config[stack.depth_key] = 2 * int(config[stack.depth_key])
        return ModelSpec(
            name, f"tiny-random-{name}", config, pipe.vae_scale_factor, SMOKE_TEXT_TOKENS, TINY_RESOLUTION[name]
        )
    if name not in PUBLISHED_TRANSFORMERS:
        return None
    config, factor, tokens = PUBLISHED_TRANSFORMERS[name]
    model = family.hub_ids[0] if family.hub_ids else family.title
    return ModelSpec(name, model, dict(config), factor, tokens, 1024)


def build_transformer(spec: ModelSpec, settings: Settings, seed: int = 0):
    """The family's stock transformer of ``spec.config``, random weights, built on the device (a 12B Flux does not
    need to pass through host memory), in eval mode without gradients, cast to the run's dtype."""
    import diffusers

    cls = getattr(diffusers, get_family(spec.family).transformer_class)
    torch.manual_seed(seed)
    with torch.device(settings.device):
        model = cls(**spec.config)
    model = model.eval().requires_grad_(False)
    return model if settings.torch_dtype == torch.float32 else model.to(settings.torch_dtype)


def spread(total: int, keep: int) -> list[int]:
    """``keep`` block indices evenly spread over ``0..total-1``, first and last included (which blocks are kept
    does not change the cost, only how many of each kind)."""
    if keep >= total:
        return list(range(total))
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def pruned_view(model, fraction: float):
    """A pruned transformer of ``model`` without ``fraction`` of its blocks (rounded half up, evenly spread), with
    its own modules over ``model``'s tensors; and the kept block indices."""
    family = family_of(model)
    total = family.depth(model.config)
    removed = int(total * fraction + 0.5)
    kept = spread(total, total - removed)
    return family.pruned_class().from_transformer(model, kept_layers=kept, copy_weights=False).eval(), kept


def tensor_bytes(model) -> int:
    """Bytes of the model's own parameters and buffers (each tensor once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def forward_memory(model, inputs, settings: Settings) -> dict:
    """Peak memory of one forward: the model's weights plus the allocator's peak over what was allocated before."""
    weights = tensor_bytes(model)
    if not settings.cuda:
        return {"weights_bytes": weights, "forward_extra_bytes": None, "peak_bytes": None}
    family = family_of(model)
    release()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.inference_mode():
        family.forward(model, *inputs)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    return {"weights_bytes": weights, "forward_extra_bytes": extra, "peak_bytes": weights + extra}


def time_fn(fn: Callable[[], object], settings: Settings, *, warmup: int | None = None) -> dict:
    """Median, quartiles and samples (ms) of ``fn`` after a warm-up."""
    with torch.inference_mode():
        for _ in range(settings.warmup if warmup is None else warmup):
            fn()
        samples = [elapsed_seconds(fn, settings.device) * 1e3 for _ in range(settings.repeats)]
    q = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else [samples[0]] * 3
    return {"median_ms": statistics.median(samples), "q1_ms": q[0], "q3_ms": q[2], "samples_ms": samples}


# ----------------------------------------------------------------------------------------------------------------
# Sections a and b: depth-pruned latency and memory
# ----------------------------------------------------------------------------------------------------------------


def depth_figures(name: str, settings: Settings) -> dict:
    """Latency (interleaved, median) and peak memory of the full transformer and of its pruned variants."""
    spec = model_spec(name, settings)
    if spec is None:
        return {"family": name, "skipped": "no published config shipped (testing.PUBLISHED_TRANSFORMERS)"}
    family = get_family(name)
    full = build_transformer(spec, settings)
    total = family.depth(full.config)
    models, kept_of = {"full": full}, {"full": None}
    for fraction in PRUNE_FRACTIONS:
        label = f"pruned {round(100 * fraction)}%"
        models[label], kept_of[label] = pruned_view(full, fraction)
    batch = family.step_batch
    measure = dict(resolution=spec.resolution, vae_scale_factor=spec.vae_scale_factor, text_tokens=spec.text_tokens)
    latency = transformer_latency(
        models,
        **measure,
        batch_size=batch,
        warmup=settings.warmup,
        repeats=settings.repeats,
        min_sample_seconds=settings.min_sample_seconds,
    )
    inputs = latency_inputs(full, **measure, batch_size=batch)
    full_ms = latency["full"]["median_ms"]
    rows = []
    for label, model in models.items():
        blocks = family.depth(model.config)
        stats = latency[label]
        speedup, ideal = full_ms / stats["median_ms"], total / blocks
        rows.append(
            {
                "variant": label,
                "blocks": blocks,
                "stack_depths": family.stack_depths(model.config),
                "kept_layers": kept_of[label],
                **{k: stats[k] for k in ("median_ms", "q1_ms", "q3_ms", "calls_per_sample", "samples_ms")},
                "speedup": speedup,
                "ideal_speedup": ideal,
                "of_ideal": speedup / ideal,
                **forward_memory(model, inputs, settings),
            }
        )
    del models, full, inputs
    release()
    return {
        "family": name,
        "title": family.title,
        "model": spec.model,
        "spec": spec.jsonable(),
        "batch": batch,
        "rows": rows,
    }


def section_pixart(settings: Settings, progress: Progress) -> dict:
    return depth_figures("pixart", settings)


def section_families(settings: Settings, progress: Progress) -> dict:
    out = {}
    for name in FAMILIES:
        if name == "pixart":  # section a
            continue
        result = progress.get(name)
        if result is None:
            progress.check_time()
            try:
                result = depth_figures(name, settings)
            except Exception as error:  # out of memory in one family leaves the others measured
                if not is_oom(error):
                    raise
                result = {"family": name, "error": f"out of memory: {error}".splitlines()[0]}
            release()  # after the except block, which held the failed family's tensors
            progress.put(name, result)
        out[name] = result
    return {"families": out}


# ----------------------------------------------------------------------------------------------------------------
# Section c: one KD step against its floor
# ----------------------------------------------------------------------------------------------------------------


def kd_setup(settings: Settings, batch: int):
    """Teacher (run dtype, frozen), a 25%-pruned student factory (float32 master weights, as train_distill keeps
    them under mixed precision), the batch and the family's forward."""
    spec = model_spec("pixart", settings)
    family = get_family("pixart")
    teacher = build_transformer(spec, settings)
    total = family.depth(teacher.config)
    kept = spread(total, total - int(total * PRUNE_FRACTIONS[0] + 0.5))
    latents, timestep, text = latency_inputs(
        teacher,
        resolution=spec.resolution,
        vae_scale_factor=spec.vae_scale_factor,
        text_tokens=spec.text_tokens,
        batch_size=batch,
    )
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


# ----------------------------------------------------------------------------------------------------------------
# Section d: 2:4 semi-structured sparsity
# ----------------------------------------------------------------------------------------------------------------


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output.float() - reference.float()).norm() / reference.float().norm())


@torch.no_grad()
def mask_two_four(module, component: str) -> int:
    """Zero the 2 smallest-magnitude weights of every 4 along the input of each linear the sparsifier prunes
    (``sparsity.sparsifiable_layers``, ``magnitude_scores``, ``n_m_mask``: ``layerprune sparsify``'s rule)."""
    from diffusers_layerprune.sparsity import sparsifiable_layers
    from diffusers_layerprune.sparsity.magnitude import magnitude_scores
    from diffusers_layerprune.sparsity.masks import n_m_mask

    layers = sparsifiable_layers(module, component)
    for layer in layers.values():
        layer.weight.masked_fill_(~n_m_mask(magnitude_scores(layer.weight), 2, 4), 0)
    return len(layers)


def to_semi_structured(module, component: str) -> tuple[int, dict[str, str]]:
    """Replace each masked linear weight by its packed 2:4 form; a layer the kernels refuse stays dense (and is
    listed with the reason). Returns ``(converted, refused)``."""
    from torch.sparse import to_sparse_semi_structured

    from diffusers_layerprune.sparsity import sparsifiable_layers

    converted, refused = 0, {}
    for name, layer in sparsifiable_layers(module, component).items():
        try:
            packed = to_sparse_semi_structured(layer.weight.detach())
        except Exception as error:  # shape or dtype the kernels do not take: that layer stays dense
            refused[name] = str(error).splitlines()[0][:200]
            continue
        layer.weight = torch.nn.Parameter(packed, requires_grad=False)
        converted += 1
    return converted, refused


def sparse_component(module, fn: Callable[[], torch.Tensor], component: str, settings: Settings) -> dict:
    """Dense vs 2:4 (masked dense; on a GPU also the packed sparse kernels): latency and relative output error."""
    with torch.inference_mode():
        reference = fn()
    out: dict = {"dense": time_fn(fn, settings)}
    out["layers_masked"] = mask_two_four(module, component)
    with torch.inference_mode():
        masked = fn()
    out["masked_dense"] = time_fn(fn, settings)
    out["masked_relative_error"] = relative_error(masked, reference)
    if settings.cuda:
        out["layers_packed"], out["layers_refused"] = to_semi_structured(module, component)
        with torch.inference_mode():
            packed = fn()
        out["packed"] = time_fn(fn, settings)
        out["packed_relative_error"] = relative_error(packed, reference)
        out["packed_vs_masked_relative_error"] = relative_error(packed, masked)  # the kernels' own exactness
        out["kernel"] = "torch.sparse.to_sparse_semi_structured"
        out["speedup"] = out["dense"]["median_ms"] / out["packed"]["median_ms"]
    else:
        out["kernel"] = "masked dense matmul (CPU smoke run: the 2:4 kernels need CUDA)"
        out["speedup"] = out["dense"]["median_ms"] / out["masked_dense"]["median_ms"]
    return out


def build_text_encoder(settings: Settings):
    """T5-XXL v1.1's encoder (24 layers, 4.76B parameters) or, in a smoke run, the package's tiny T5."""
    from transformers import T5Config, T5EncoderModel

    from diffusers_layerprune.testing import T5_XXL_ENCODER, build_tiny_t5_encoder

    torch.manual_seed(0)
    with torch.device(settings.device):
        model = build_tiny_t5_encoder(100) if settings.smoke else T5EncoderModel(T5Config(**T5_XXL_ENCODER))
    model = model.eval().requires_grad_(False)
    return model if settings.torch_dtype == torch.float32 else model.to(settings.torch_dtype)


def section_sparsity(settings: Settings, progress: Progress) -> dict:
    out = {}
    spec = model_spec("pixart", settings)
    batch = get_family("pixart").step_batch  # prompt and negative prompt, as the pipeline encodes them
    if progress.get("text_encoder") is None:
        progress.check_time()
        encoder = build_text_encoder(settings)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(2, encoder.config.vocab_size, (batch, spec.text_tokens), generator=g).to(settings.device)
        mask = torch.ones_like(ids)
        result = sparse_component(
            encoder, lambda: encoder(input_ids=ids, attention_mask=mask).last_hidden_state, "text_encoder", settings
        )
        result.update(parameters=sum(p.numel() for p in encoder.parameters()), tokens=spec.text_tokens, batch=batch)
        progress.put("text_encoder", result)
        del encoder
        release()
    out["text_encoder"] = progress.done["text_encoder"]
    if progress.get("transformer") is None:
        progress.check_time()
        family = get_family("pixart")
        model = build_transformer(spec, settings)
        inputs = latency_inputs(
            model,
            resolution=spec.resolution,
            vae_scale_factor=spec.vae_scale_factor,
            text_tokens=spec.text_tokens,
            batch_size=batch,
        )
        result = sparse_component(model, lambda: family.forward(model, *inputs), "transformer", settings)
        result.update(parameters=sum(p.numel() for p in model.parameters()), batch=batch)
        progress.put("transformer", result)
        del model, inputs
        release()
    out["transformer"] = progress.done["transformer"]
    return {"model": spec.model, "spec": spec.jsonable(), "pattern": "2:4, magnitude", **out}


# ----------------------------------------------------------------------------------------------------------------
# Section e: depth x cache x int8
# ----------------------------------------------------------------------------------------------------------------


def cache_config(cache: str, family):
    """diffusers' config of ``cache`` with its default settings; TaylorSeer predicts whole blocks (its default hooks
    modules named ``...attn``, which misses PixArt's ``attn1`` / ``attn2``)."""
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if cache == "first_block":
        return FirstBlockCacheConfig()
    if cache == "taylorseer":
        return TaylorSeerCacheConfig(cache_identifiers=[rf"^{stack.attr}\.\d+$" for stack in family.stacks])
    if cache == "none":
        return None
    raise ValueError(f"unknown cache {cache!r}")


def apply_cache(model, cache: str, family) -> int:
    """Put one of diffusers' caches on ``model``; returns the number of modules it hooked."""
    from diffusers.hooks import HookRegistry, apply_first_block_cache, apply_taylorseer_cache

    config = cache_config(cache, family)
    if config is None:
        return 0
    (apply_first_block_cache if cache == "first_block" else apply_taylorseer_cache)(model, config)
    HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()
    return sum(
        1 for m in model.modules() if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks
    )


def remove_hooks(model) -> None:
    """Remove every diffusers hook under ``model`` (only the cache put there by :func:`apply_cache` exists)."""
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            for name in list(registry.hooks):
                registry.remove_hook(name, recurse=False)


def denoise(model, family, latents, timestep_batch: int, text, steps: int, cached: bool) -> None:
    """A denoising loop of ``steps`` forwards on random inputs: timesteps from 1000 down, an Euler-like update with
    the prediction's first channels. Its values mean nothing (random weights); its cost is the sampler's, and caches
    see a changing input as they do in a pipeline (each forward inside ``cache_context``, as pipelines call it)."""
    from diffusers.hooks import HookRegistry
    from diffusers.models.cache_utils import CacheMixin

    if cached:
        HookRegistry.check_if_exists_or_initialize(model).reset_stateful_hooks()
    x = latents
    for i in range(steps):
        t = torch.full((timestep_batch,), 1000.0 * (1 - i / steps), device=latents.device)
        # CacheMixin.cache_context only sets the hooks' context on the module: PixArt's class lacks the mixin
        context = CacheMixin.cache_context(model, "cond", step_index=i, num_inference_steps=steps) if cached else None
        with context or nullcontext():
            prediction = family.forward(model, x, t, text)
        x = x - prediction[:, : x.shape[1]] / steps


def last_block_counter(model, family):
    """Counts forwards that computed the last block (a cache that reuses the step skips its layers)."""
    last = getattr(model, family.stacks[-1].attr)[-1]
    linear = next(m for m in last.modules() if isinstance(m, torch.nn.Linear))
    calls = [0]
    handle = linear.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


def quantize_int8(model) -> str | None:
    """torchao int8 weight-only quantization in place; the reason when it cannot run."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        return f"torchao not installed ({error})"
    try:
        quantize_(model, Int8WeightOnlyConfig())
    except Exception as error:  # e.g. a torchao release built for another torch: the bf16 rows still count
        return f"torchao int8 failed: {error!r}"[:300]
    return None


def section_stacking(settings: Settings, progress: Progress) -> dict:
    out = {}
    for name in STACK_FAMILIES:
        spec = model_spec(name, settings)
        family = get_family(name)
        steps = settings.loop_steps or int(family.defaults.get("num_inference_steps", 20))
        combos = [
            (fraction, int8, cache) for fraction in (0.0, STACK_FRACTION) for int8 in (False, True) for cache in CACHES
        ]

        def key(fraction, int8, cache, name=name):
            return f"{name}|depth-{round(100 * fraction)}%|{'int8' if int8 else settings.dtype}|{cache}"

        if all(progress.get(key(*c)) is not None for c in combos):  # finished before a cut-off
            out[name] = {"model": spec.model, "steps": steps, "rows": [progress.done[key(*c)] for c in combos]}
            continue
        progress.check_time()
        full = build_transformer(spec, settings)
        batch = family.step_batch
        latents, _, text = latency_inputs(
            full,
            resolution=spec.resolution,
            vae_scale_factor=spec.vae_scale_factor,
            text_tokens=spec.text_tokens,
            batch_size=batch,
        )
        # the pruned view first: it has its own modules over the full model's tensors, so quantizing it leaves the
        # full model alone; the full model is quantized in place last
        for fraction in (STACK_FRACTION, 0.0):
            todo = [c for c in combos if c[0] == fraction and progress.done.get(key(*c)) is None]
            if not todo:
                continue
            view = pruned_view(full, fraction)[0] if fraction else full
            for int8 in (False, True):
                if not [c for c in todo if c[1] == int8]:
                    continue
                skipped = quantize_int8(view) if int8 else None
                for cache in CACHES:
                    if (fraction, int8, cache) not in todo:
                        continue
                    progress.check_time()
                    row = {
                        "depth": f"{round(100 * fraction)}% pruned" if fraction else "full",
                        "blocks": family.depth(view.config),
                        "weights": "int8 weight-only (torchao)" if int8 else settings.dtype,
                        "cache": cache,
                        "steps": steps,
                    }
                    if skipped:
                        row["skipped"] = skipped
                    else:
                        try:
                            row.update(time_loop(view, family, latents, batch, text, steps, cache, settings))
                        except Exception as error:  # one combination failing (a cache on a model) leaves the rest
                            if is_oom(error):
                                raise
                            row["skipped"] = f"failed: {error!r}"[:300]
                    progress.put(key(fraction, int8, cache), row)
            del view
            release()
        del full, latents, text
        release()
        out[name] = {"model": spec.model, "steps": steps, "rows": [progress.done[key(*c)] for c in combos]}
    # speed-ups against each model's full-depth, un-cached, un-quantized loop
    for result in out.values():
        base = result["rows"][0].get("loop_ms")
        for row in result["rows"]:
            row["speedup"] = base / row["loop_ms"] if base and row.get("loop_ms") else None
    return {"families": out, "stack_fraction": STACK_FRACTION}


def time_loop(model, family, latents, batch: int, text, steps: int, cache: str, settings: Settings) -> dict:
    cached = cache != "none"
    hooked = apply_cache(model, cache, family)
    calls, handle = last_block_counter(model, family)
    try:
        with torch.inference_mode():
            denoise(model, family, latents, batch, text, min(2, steps), cached)  # warm-up: both cache paths
            samples, computed = [], []
            for _ in range(settings.loop_repeats):
                calls[0] = 0
                samples.append(
                    elapsed_seconds(
                        lambda: denoise(model, family, latents, batch, text, steps, cached), settings.device
                    )
                    * 1e3
                )
                computed.append(calls[0])
    finally:
        handle.remove()
        remove_hooks(model)
    loop_ms = statistics.median(samples)
    return {
        "loop_ms": loop_ms,
        "ms_per_step": loop_ms / steps,
        "samples_ms": samples,
        "last_block_computed": computed[-1],
        "hooked_modules": hooked,
        "cache_config": repr(cache_config(cache, family)),
    }


# ----------------------------------------------------------------------------------------------------------------
# Sections, running
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    letter: str
    name: str
    title: str
    expected_seconds: int  # on one H100, estimated from FLOP counts (docstring); the JSON records the measured time
    run: Callable[[Settings, Progress], dict]

    @property
    def file(self) -> str:
        return f"{self.letter}_{self.name}"


SECTIONS = (
    Section("a", "pixart", "PixArt-Sigma-XL: depth-pruned latency and peak memory", 20, section_pixart),
    Section(
        "b", "families", "Every family at its published config: depth-pruned latency and memory", 70, section_families
    ),  # fmt: skip
    Section("c", "kd", "One KD step at full size against its floor", 40, section_kd),
    Section("d", "sparsity", "2:4 semi-structured sparsity: T5-XXL encoder and transformer", 45, section_sparsity),
    Section("e", "stacking", "Depth x cache x int8: denoising-loop latency", 110, section_stacking),
)


def select_sections(text: str | None) -> list[Section]:
    if not text:
        return list(SECTIONS)
    by_key = {s.letter: s for s in SECTIONS} | {s.name: s for s in SECTIONS}
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [w for w in wanted if w not in by_key]
    if unknown:
        names = ", ".join(f"{s.letter} ({s.name})" for s in SECTIONS)
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}: choose from {names}")
    chosen = {by_key[w].letter for w in wanted}
    return [s for s in SECTIONS if s.letter in chosen]


def check_folder(output: Path, env: dict, smoke: bool) -> None:
    """Refuse to mix results of another card or of a smoke run into ``output`` (``--force`` redoes them)."""
    for section in SECTIONS:
        path = output / f"{section.file}.json"
        record = read_json(path) or {}
        if "environment" not in record:
            continue
        if record.get("smoke") != smoke or record["environment"].get("card") != env["card"]:
            theirs = "a smoke run" if record.get("smoke") else record["environment"].get("card")
            raise SystemExit(
                f"{output} holds results of {theirs} ({path.name}); use another --output, or --force to redo them"
            )


def run_sections(
    sections: list[Section], settings: Settings, output: Path, force: bool, time_limit: float | None = None
) -> dict[str, dict]:
    """Run ``sections`` in order into ``output``; after ``time_limit`` seconds no new section or measurement starts
    (finished ones are saved; a rerun measures the rest)."""
    deadline = None if not time_limit else time.perf_counter() + time_limit
    env = environment(settings)
    print(
        f"{env['card']} (driver {env['driver']}, CUDA {env['cuda']}), torch {env['torch']}, diffusers "
        f"{env['diffusers']}, torchao {env['torchao'] or 'not installed: int8 rows will say skipped'}",
        flush=True,
    )
    if not force:
        check_folder(output, env, settings.smoke)
    output.mkdir(parents=True, exist_ok=True)
    identity = {"card": env["card"], "smoke": settings.smoke, "schema": SCHEMA}
    records = {}
    for section in sections:
        path = output / f"{section.file}.json"
        error_path = output / f"{section.file}.error.json"
        partial = output / f"{section.file}.partial.json"
        if path.is_file() and not force:
            print(f"[{section.letter}] {section.title}: done already ({path}); --force redoes it", flush=True)
            records[section.file] = read_json(path)
            continue
        if force:
            partial.unlink(missing_ok=True)
        if deadline is not None and time.perf_counter() > deadline:
            left = ", ".join(s.letter for s in sections[sections.index(section) :])
            print(f"time limit of {time_limit:.0f} s reached: sections {left} left for a rerun", flush=True)
            break
        print(f"[{section.letter}] {section.title} (about {section.expected_seconds} s on an H100) ...", flush=True)
        progress = Progress(partial, identity, deadline)
        started = time.perf_counter()
        try:
            result = section.run(settings, progress)
        except OutOfTime:
            release()
            print(
                f"[{section.letter}] time limit of {time_limit:.0f} s reached: {len(progress.done)} measurements "
                f"saved in {partial.name}; rerun the same command to finish",
                flush=True,
            )
            break
        except Exception as error:  # the next sections still run; the rerun retries this one
            release()
            write_json(
                error_path,
                {
                    "section": section.file,
                    "environment": env,
                    "error": repr(error),
                    "traceback": traceback.format_exc(),
                },
            )
            print(f"[{section.letter}] FAILED: {error!r} (details in {error_path})", flush=True)
            continue
        seconds = time.perf_counter() - started
        record = {
            "schema": SCHEMA,
            "section": section.file,
            "title": section.title,
            "smoke": settings.smoke,
            "environment": env,
            "settings": asdict(settings),
            "timer": timer_name(settings),
            "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": seconds,
            "expected_seconds": section.expected_seconds,
            "reused_measurements": progress.reused,
            "result": result,
        }
        write_json(path, record)
        error_path.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
        records[section.file] = record
        print(f"[{section.letter}] done in {seconds:.0f} s -> {path}", flush=True)
    return records


def merge(output: Path, merged: Path | None) -> Path | None:
    """Every finished section of ``output`` in one file, ``gpu_<card>.json`` beside the folder by default."""
    records = load_records(output)
    if not records:
        return None
    env = next(iter(records.values()))["environment"]
    path = merged or output.parent / f"gpu_{env['card_slug']}.json"
    write_json(path, {"schema": SCHEMA, "environment": env, "sections": records})
    return path


def load_records(output: Path) -> dict[str, dict]:
    records = {}
    for section in SECTIONS:
        record = read_json(output / f"{section.file}.json")
        if record is not None:
            records[section.file] = record
    return records


# ----------------------------------------------------------------------------------------------------------------
# Docs: the GPU sections of docs/scale.md, docs/families.md, docs/stacking.md and docs/gpu.md
# ----------------------------------------------------------------------------------------------------------------


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f}"


def _ms(n) -> str:
    return "n/a" if n is None else f"{n:.1f}" if n >= 10 else f"{n:.2f}"


def _x(n) -> str:
    return "n/a" if n is None else f"{n:.2f}x"


NOT_MEASURED = (
    f"Not measured yet: no GPU has run `{COMMAND}` (see [gpu.md](gpu.md)); this section is rebuilt from its JSON "
    "by `--report-only`."
)


def provenance(record: dict, *, section_time: bool = True) -> str:
    env = record["environment"]
    where = (
        "**SMOKE RUN: tiny random models on CPU, float32. Not a measurement; it only shows the page's shape.**"
        if record.get("smoke")
        else f"Measured on {env['card']} (driver {env.get('driver') or 'unknown'}, CUDA {env.get('cuda')})"
    )
    took = f"; section took {record['seconds']:.0f} s (`{record['section']}.json`)" if section_time else ""
    return (
        f"{where} torch {env['torch']}, diffusers {env['diffusers']}, {record['measured_at']}; timing: "
        f"{record['timer']}{took}."
    )


def depth_table(results: list[dict]) -> list[str]:
    lines = [
        "| model | variant | blocks | ms / step | speed-up | ideal (depth ratio) | of ideal | weights GiB | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        if "rows" not in result:
            reason = result.get("skipped") or result.get("error")
            lines.append(f"| {result['family']} | {reason} | | | | | | | |")
            continue
        for row in result["rows"]:
            lines.append(
                f"| {result['model']} | {row['variant']} | {row['blocks']} | {_ms(row['median_ms'])} | "
                f"{_x(row['speedup'])} | {_x(row['ideal_speedup'])} | {100 * row['of_ideal']:.0f}% | "
                f"{_gib(row['weights_bytes'])} | {_gib(row['peak_bytes'])} |"
            )
    return lines


def depth_settings(result: dict) -> str:
    spec = result["spec"]
    return (
        f"{result['model']}: {spec['resolution']} px, {spec['text_tokens']} text tokens, batch {result['batch']} per "
        "denoising step"
    )


def render_scale(records: dict) -> str:
    lines = [START, "", "## Measured on a GPU", "", f"Generated by `{COMMAND} --report-only`: edit the script.", ""]
    a, c, d = records.get("a_pixart"), records.get("c_kd"), records.get("d_sparsity")
    lines += ["### Depth-pruned PixArt-Sigma-XL: latency and peak memory", ""]
    if a is None:
        lines += [NOT_MEASURED, ""]
    else:
        result = a["result"]
        lines += [provenance(a), "", depth_settings(result) + ", random weights.", ""]
        lines += depth_table([result]) + [""]
        lines += [
            "ms / step: the transformer's forward (median of interleaved samples); ideal speed-up: blocks of the "
            "full model over blocks kept; peak: the model's weights plus the allocator's peak during one forward.",
            "",
        ]
    lines += ["### One distillation step at full size", ""]
    if c is None:
        lines += [NOT_MEASURED, ""]
    else:
        result = c["result"]
        lines += [provenance(c), ""]
        lines += [
            f"{result['model']} teacher ({result['teacher_dtype']}) and its {len(result['kept_layers'])}-block student "
            f"({result['student_dtype']}), {result['optimizer']}, batch {result['batch']}, "
            f"{result['spec']['resolution']} px; KD = {result['losses']}.",
            "",
            "| gradient checkpointing | KD ms / step | floor ms / step | KD / floor | KD peak GiB | floor peak GiB |",
            "|---|---|---|---|---|---|",
        ]
        for attempt in result["attempts"]:
            if "error" in attempt:
                lines.append(f"| {attempt['gradient_checkpointing']} | {attempt['error']} | | | | |")
                continue
            ms, peak = attempt["ms_per_step"], attempt["peak_bytes"]
            lines.append(
                f"| {attempt['gradient_checkpointing']} | {_ms(ms['kd'])} | {_ms(ms['floor'])} | "
                f"{attempt['kd_over_floor']:.2f} | {_gib(peak['kd'])} | {_gib(peak['floor'])} |"
            )
        lines += ["", "Floor: a teacher forward without hooks, then a plain student step on the task loss.", ""]
    lines += ["### 2:4 semi-structured sparsity", ""]
    if d is None:
        lines += [NOT_MEASURED, ""]
    else:
        result = d["result"]
        lines += [provenance(d), ""]
        lines += [
            "| component | linears 2:4 | dense ms | 2:4 ms | speed-up | error vs dense | kernel vs masked |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, key in (("T5-XXL encoder", "text_encoder"), (result["model"] + " transformer", "transformer")):
            part = result[key]
            sparse = part.get("packed") or part["masked_dense"]
            error = part.get("packed_relative_error", part["masked_relative_error"])
            kernel_error = part.get("packed_vs_masked_relative_error")
            lines.append(
                f"| {label} | {part.get('layers_packed', part['layers_masked'])} of {part['layers_masked']} | "
                f"{_ms(part['dense']['median_ms'])} | {_ms(sparse['median_ms'])} | {_x(part['speedup'])} | "
                f"{error:.3f} | {'n/a' if kernel_error is None else f'{kernel_error:.1e}'} |"
            )
        kernel = result["transformer"]["kernel"]
        lines += [
            "",
            f"Kernel: {kernel}. Error: relative L2 error of the output against the dense model (magnitude 2:4 on "
            "random weights, so larger than on trained ones); kernel vs masked: the packed kernels against the same "
            "masked weights in a dense matmul.",
            "",
        ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def render_families(records: dict) -> str:
    lines = [START, "", "### Measured on a GPU", "", f"Generated by `{COMMAND} --report-only`: edit the script.", ""]
    a, b = records.get("a_pixart"), records.get("b_families")
    if b is None and a is None:
        lines += [NOT_MEASURED, "", END]
        return "\n".join(lines) + "\n"
    results = ([a["result"]] if a else []) + (list(b["result"]["families"].values()) if b else [])
    lines += [provenance(b or a), ""]
    lines += [
        "Every family at its published config with random weights, 1024 px, its pipeline's text length and one "
        "denoising step's batch (2 with classifier-free guidance; 1 for Flux.1-dev, whose guidance is an input); "
        "25% and 40% of the blocks removed, evenly spread.",
        "",
    ]
    lines += depth_table(results) + [""]
    lines += [
        "The ideal speed-up is the depth ratio; for Flux the two block kinds cost differently (see above), so its "
        "ideal by cost differs from the depth ratio.",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def render_stacking(records: dict) -> str:
    lines = [START, "", "## Measured on a GPU: latency", "", f"Generated by `{COMMAND} --report-only`.", ""]
    e = records.get("e_stacking")
    if e is None:
        lines += [NOT_MEASURED, "", END]
        return "\n".join(lines) + "\n"
    lines += [provenance(e), ""]
    lines += [
        "A denoising loop of the transformer alone (random weights, so the values mean nothing) with each "
        "combination of depth, cache (diffusers.hooks defaults: First Block Cache threshold 0.05; TaylorSeer "
        "interval 5 after 3 full steps) and weights. Speed-up against the full-depth, un-cached model in the run's "
        "dtype. *Last block computed*: steps in which the cache did not reuse the model's last block; First Block "
        "Cache decides from the first block's output, which on random weights does not behave like a trained model's, "
        "so its hit rate here is not the one a real model has.",
        "",
        "| model | depth | blocks | weights | cache | loop ms | ms / step | speed-up | last block computed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in e["result"]["families"].values():
        for row in result["rows"]:
            if "skipped" in row:
                lines.append(
                    f"| {result['model']} | {row['depth']} | {row['blocks']} | {row['weights']} | {row['cache']} | "
                    f"skipped: {row['skipped']} | | | |"
                )
                continue
            lines.append(
                f"| {result['model']} | {row['depth']} | {row['blocks']} | {row['weights']} | {row['cache']} | "
                f"{_ms(row['loop_ms'])} | {_ms(row['ms_per_step'])} | {_x(row['speedup'])} | "
                f"{row['last_block_computed']} of {row['steps']} |"
            )
    lines += ["", END]
    return "\n".join(lines) + "\n"


def render_gpu(records: dict) -> str:
    lines = [START, "", "## Results", ""]
    if not records:
        lines += [
            "Not measured yet. Filled in by `--report-only` from the JSON files once a GPU has run the check.",
            "",
            "| section | what | figure | section time |",
            "|---|---|---|---|",
        ]
        lines += [f"| {s.letter} {s.name} | {s.title} | | |" for s in SECTIONS]
        lines += ["", END]
        return "\n".join(lines) + "\n"
    first = next(iter(records.values()))
    lines += [
        provenance(first, section_time=False),
        "",
        "| section | what | figure | section time |",
        "|---|---|---|---|",
    ]
    for section in SECTIONS:
        record = records.get(section.file)
        if record is None:
            lines.append(f"| {section.letter} {section.name} | {section.title} | not measured | |")
            continue
        lines.append(
            f"| {section.letter} {section.name} | {section.title} | {headline(section.file, record['result'])} | "
            f"{record['seconds']:.0f} s (est. {section.expected_seconds} s) |"
        )
    lines += ["", "Full tables: [scale.md](scale.md), [families.md](families.md), [stacking.md](stacking.md).", "", END]
    return "\n".join(lines) + "\n"


def headline(section: str, result: dict) -> str:
    """One line of the most telling figures of a section, for docs/gpu.md."""
    if section == "a_pixart":
        rows = result["rows"]
        return "; ".join(f"{r['variant']} {_x(r['speedup'])} (ideal {_x(r['ideal_speedup'])})" for r in rows[1:])
    if section == "b_families":
        parts = []
        for r in result["families"].values():
            if "rows" in r:
                parts.append(f"{r['model']}: {_x(r['rows'][-1]['speedup'])} at {r['rows'][-1]['variant']}")
        return "; ".join(parts) or "no family measured"
    if section == "c_kd":
        done = [a for a in result["attempts"] if "error" not in a]
        if not done:
            return "out of memory"
        a = done[0]
        return f"KD / floor {a['kd_over_floor']:.2f}, KD peak {_gib(a['peak_bytes']['kd'])} GiB"
    if section == "d_sparsity":
        return "; ".join(
            f"{key.replace('_', ' ')} {_x(result[key]['speedup'])}" for key in ("text_encoder", "transformer")
        )
    if section == "e_stacking":
        best = []
        for r in result["families"].values():
            timed = [row for row in r["rows"] if row.get("speedup")]
            if timed:
                top = max(timed, key=lambda row: row["speedup"])
                best.append(
                    f"{r['model']} best {_x(top['speedup'])} ({top['depth']}, {top['weights']}, {top['cache']})"
                )
        return "; ".join(best)
    return ""


PAGES = {
    "scale.md": (render_scale, None),
    "families.md": (render_families, None),
    "stacking.md": (render_stacking, "# Stacking depth pruning with caches and quantization\n\n"),
    "gpu.md": (render_gpu, None),
}


def report(output: Path, docs: Path) -> list[Path]:
    """Rebuild the GPU sections of the docs pages from the section JSONs in ``output`` (no GPU needed)."""
    records = load_records(output)
    if any(r.get("smoke") for r in records.values()) and docs.resolve() == DOCS.resolve():
        raise SystemExit(
            f"{output} holds smoke results (tiny models on CPU, not measurements): they do not go into {DOCS}; "
            "pass --docs DIR to render them elsewhere"
        )
    written = []
    for page, (render, title) in PAGES.items():
        path = docs / page
        if not path.is_file() and title is not None:  # a page only this check writes: created with its markers
            write_text(path, title + START + "\n" + END + "\n")
        replace_section(path, START, END, render(records))
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder of the section JSONs (e.g. benchmarks/results/gpu)")
    p.add_argument("--smoke", action="store_true", help="tiny models on CPU: the same code paths in under a minute")
    p.add_argument("--report-only", action="store_true", help="rebuild the docs' GPU sections from --output's JSON")
    p.add_argument("--sections", default=None, help="comma-separated letters or names (default: all, in order)")
    p.add_argument("--force", action="store_true", help="redo sections (and measurements) already finished")
    p.add_argument("--merged", default=None, help="merged JSON (default: gpu_<card>.json beside --output)")
    p.add_argument("--docs", default=str(DOCS), help="folder of the pages --report-only rewrites")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help=f"seconds after which no new section or measurement starts (default: {GPU_TIME_LIMIT:.0f} on a GPU, "
        "none with --smoke; 0: none); a rerun finishes the rest",
    )
    args = p.parse_args(argv)
    output = Path(args.output)
    if args.report_only:
        for path in report(output, Path(args.docs)):
            print(f"wrote {path}")
        return load_records(output)
    sections = select_sections(args.sections)
    settings = SMOKE if args.smoke else GPU
    if settings.cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run on a GPU machine (docs/gpu.md), or --smoke for the CPU rehearsal")
    if settings.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()
    with quiet():  # the libraries' warnings about casting random models would bury the section lines
        limit = args.time_limit if args.time_limit is not None else (None if settings.smoke else GPU_TIME_LIMIT)
        records = run_sections(sections, settings, output, args.force, limit)
    merged = merge(output, Path(args.merged) if args.merged else None)
    print(f"total {time.perf_counter() - started:.0f} s; sections in {output}; merged: {merged}")
    return records


if __name__ == "__main__":
    main()
