"""What every section of the GPU check shares: the run's settings (GPU or CPU smoke), the machine's description,
the section files and their per-measurement progress, the models at their published configs and how they are timed
and measured."""

from __future__ import annotations

import gc
import json
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from diffusers_layerprune.evaluation import elapsed_seconds
from diffusers_layerprune.families import family_of, get_family
from diffusers_layerprune.outputs import atomic_output_file

ROOT = Path(__file__).resolve().parents[2]
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

    def latency_shape(self) -> dict:
        """The image and text sizes ``latency_inputs`` and ``transformer_latency`` take (batch size aside)."""
        return dict(resolution=self.resolution, vae_scale_factor=self.vae_scale_factor, text_tokens=self.text_tokens)

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
