"""The scan runner: the work every criterion shares, done once, resumable, and split across processes.

One :class:`ImportanceScan` holds a pipeline, a prompt set and the sampling settings. It

- encodes every prompt once (``pipe.encode_prompt``) and reuses the embeddings for every variant, so the text
  encoder can be freed after encoding (the 4.7B T5 of PixArt-Sigma);
- runs variants of the model with :func:`~diffusers_layerprune.blocks.skip_blocks` (no copies of the model);
- gives prompt ``i`` the same initial noise in every variant (its own generator seeded ``seed + i``), so a variant's
  difference to the full model is the effect of the skipped blocks, not of the noise;
- runs work as *units* ``(variant, prompt batch)``: each finished unit's result is appended to a JSONL progress
  file next to the output, so a killed scan restarts with the finished units and ends with the same numbers;
- splits units across the processes of ``accelerate launch`` (unit ``j`` of the remaining list goes to process
  ``j % num_processes``) and gathers the results on every process.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..blocks import block_names, capture_block_features, num_blocks, skip_blocks
from ..data import PromptSet, cache_key
from ..errors import LayerPruneError
from ..families import encode_text, family_of
from ..families.base import to_device
from .result import LayerImportance

Variant = tuple[int, ...]
"""Blocks skipped in one variant of the model (``()`` is the full model), sorted."""
Unit = tuple[Variant, int]
"""One piece of work: a variant and the index of a prompt batch."""


@dataclass(frozen=True)
class ScanSettings:
    """Sampling settings of a scan; every criterion of the scan uses the same ones.

    Attributes:
        num_inference_steps: sampler steps of each generation.
        guidance_scale: classifier-free guidance scale (``<= 1`` disables guidance).
        resolution: image side in pixels (square images).
        max_sequence_length: text tokens the prompts are padded/truncated to.
        seed: prompt ``i`` uses seed ``seed + i`` for its initial noise and its probe noise.
        batch_size: prompts per unit of work; a unit's numbers do not depend on which process runs it.
        num_timesteps: probe timesteps per prompt for the forward-pass criteria (block influence, angular distance,
            output loss), stratified over the training timesteps.
    """

    num_inference_steps: int = 20
    guidance_scale: float = 4.5
    resolution: int = 1024
    max_sequence_length: int = 300
    seed: int = 0
    batch_size: int = 8
    num_timesteps: int = 4

    def __post_init__(self) -> None:
        for name in ("num_inference_steps", "resolution", "max_sequence_length", "batch_size", "num_timesteps"):
            if getattr(self, name) < 1:
                raise LayerPruneError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class Probe:
    """Noised latents of one prompt batch for forward-pass criteria.

    ``latents [T, B, C, h, w]`` = ``sqrt(a_t) x0 + sqrt(1 - a_t) eps`` (DDPM-trained models: PixArt) or
    ``(1 - s) x0 + s eps`` with ``s = t / num_train_timesteps`` (flow-matching models: Sana, SD3, Flux) where ``x0``
    is the full model's generation of each prompt and ``t [T, B]`` are the sampled training timesteps; ``text`` the
    batch's conditioning (``ModelFamily.encode``: ``prompt_embeds [B, L, D]`` and a mask or pooled embeddings).
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    text: dict[str, torch.Tensor]

    @property
    def embeds(self) -> torch.Tensor:
        return self.text["prompt_embeds"]

    @property
    def mask(self) -> torch.Tensor | None:
        return self.text.get("prompt_attention_mask")


def process_state():
    """The ``accelerate.PartialState`` of this process (one process outside ``accelerate launch``).

    ``PartialState`` joins a multi-process CPU run only when told it runs on the CPU (``Accelerator`` reads
    ``ACCELERATE_USE_CPU`` itself; ``PartialState`` does not), so pass that on, and treat a machine without CUDA as CPU.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def encode_floats(array: torch.Tensor | np.ndarray) -> str:
    """Float64 array -> base64 text (exact round trip through JSON)."""
    data = np.ascontiguousarray(np.asarray(array, dtype=np.float64))
    return base64.b64encode(data.tobytes()).decode("ascii")


def decode_floats(text: str, shape: Sequence[int] | None = None) -> np.ndarray:
    array = np.frombuffer(base64.b64decode(text), dtype=np.float64)
    return array.reshape(shape) if shape is not None else array


def check_progress_files(output: str | os.PathLike) -> None:
    """Refuse progress files of ``output`` holding a readable line that is not a scan record (a hand-edited or
    foreign file), before any model is loaded. Lines cut short by a kill are left to the scan, which skips them."""
    for _ in read_progress(output):
        pass


def read_progress(output: str | os.PathLike) -> Iterator[tuple[Path, int, dict | None, str]]:
    """Each line of the progress files of a scan writing ``output``: ``(file, line number, entry, start_over)``, with
    ``entry`` ``None`` for a line cut short by a kill. A readable line that is not a scan record is refused with
    ``start_over`` (how to start the scan over)."""
    for path in progress_files(output):
        start_over = f"delete {path} (and the other {Path(output).name}.progress* files) to start the scan over"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise LayerPruneError(f"progress file {path} is not a scan's progress file; {start_over}") from error
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                yield path, number, None, start_over
                continue
            if not isinstance(entry, dict) or not {"key", "variant", "batch", "record"} <= set(entry):
                raise LayerPruneError(f"progress file {path} line {number} is not a scan record; {start_over}")
            yield path, number, entry, start_over


def progress_files(output: str | os.PathLike) -> list[Path]:
    """The progress files of a scan writing ``output`` (one per process that took part)."""
    output = Path(output)
    return sorted(output.parent.glob(f"{output.name}.progress*.jsonl"))


class ImportanceScan:
    """Shared state of an importance scan of ``pipe`` over ``prompts``.

    Args:
        pipe: a pipeline of a supported family (``diffusers_layerprune.families``); its transformer is modified only inside
            :func:`skip_blocks` contexts.
        prompts: the prompt set (a :class:`~diffusers_layerprune.data.PromptSet` or a list of strings); ``None`` for
            criteria that run no prompts (``weight_norm``, ``random``).
        settings: sampling settings.
        model_id: recorded in the result metadata (and checked by ``layerprune prune``).
        scorer: ``scorer(images [B, 3, H, W] in [0, 1], prompts) -> [B]`` for the preference criterion.
        scorer_name: recorded in the metadata.
        progress_path: the output the scan is for; finished units go to ``<output>.progress.jsonl`` (process 0) and
            ``<output>.progress.rank<r>.jsonl`` (process ``r``). ``None`` keeps results in memory only.
        free_text_encoder: drop ``pipe.text_encoder`` after encoding the prompts (only when you own the pipeline).
        show_progress: a tqdm bar over variants x prompts on the main process.
        state: an ``accelerate.PartialState`` (default: the current one; a plain run is one process).
    """

    def __init__(
        self,
        pipe,
        prompts: PromptSet | Sequence[str] | None,
        settings: ScanSettings | None = None,
        *,
        model_id: str | None = None,
        scorer: Callable | None = None,
        scorer_name: str | None = None,
        progress_path: str | os.PathLike | None = None,
        free_text_encoder: bool = False,
        show_progress: bool = True,
        state=None,
    ) -> None:
        if prompts is not None and not isinstance(prompts, PromptSet):
            prompts = PromptSet([str(p) for p in prompts], "list")
        if prompts is not None and len(prompts) == 0:
            raise LayerPruneError("the prompt set is empty; give at least one prompt")
        if state is None:
            state = process_state()
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.prompts = prompts
        self.settings = settings or ScanSettings()
        self.model_id = model_id if model_id is not None else (pipe.name_or_path or None)
        self.scorer = scorer
        self.scorer_name = scorer_name if scorer_name is not None else getattr(scorer, "name", None)
        self.progress_path = Path(progress_path) if progress_path is not None else None
        self.free_text_encoder = free_text_encoder
        self.show_progress = show_progress
        self.state = state
        self.family = family_of(self.transformer)
        self.num_layers = num_blocks(self.transformer)
        self.units_computed = 0  # units this process computed (not loaded from progress files): for tests/benchmarks
        self._embeds: dict[str, torch.Tensor] | None = None
        self._negative: dict[str, torch.Tensor] | None = None
        self._probe_cache: dict[int, Probe] = {}
        self._eps_cache: dict[int, torch.Tensor] = {}
        self._records: dict[str, dict[Unit, dict]] = {}  # finished units by scan key, so greedy steps reuse them
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)

    # ------------------------------------------------------------------------------------------------------------
    # Shared inputs
    # ------------------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def batches(self) -> list[range]:
        """Prompt index ranges of the units, ``batch_size`` prompts each (the last may be shorter)."""
        n, size = len(self.prompts), self.settings.batch_size
        return [range(start, min(start + size, n)) for start in range(0, n, size)]

    @property
    def do_guidance(self) -> bool:
        return self.settings.guidance_scale > 1.0

    def embeddings(self) -> dict[str, torch.Tensor]:
        """The prompts' text conditioning (``ModelFamily.encode``: ``prompt_embeds [N, L, D]`` plus
        ``prompt_attention_mask [N, L]`` or ``pooled_prompt_embeds [N, P]``) on the CPU, encoded once per scan."""
        if self._embeds is None:
            if self.prompts is None:
                raise LayerPruneError("this criterion needs prompts; give a prompt set")
            if getattr(self.pipe, "text_encoder", None) is None:
                raise LayerPruneError("the pipeline has no text encoder to encode the prompts with")
            length = self.settings.max_sequence_length
            self._embeds = encode_text(self.pipe, self.prompts.prompts, max_sequence_length=length)
            if self.do_guidance:
                # The pipelines' own negative prompt is "" (PixArt, Sana; SD3's None), encoded like the prompts.
                self._negative = encode_text(self.pipe, [""], max_sequence_length=length)
            if self.free_text_encoder:
                for name in list(self.pipe.components):
                    if name.startswith(("text_encoder", "tokenizer")):
                        setattr(self.pipe, name, None)
        return self._embeds

    def seed_of(self, prompt_index: int) -> int:
        return self.settings.seed + prompt_index

    def generate(self, batch: int, skipped: Variant = ()) -> torch.Tensor:
        """Final latents ``[B, C, h, w]`` (float32, CPU) of prompt batch ``batch`` with blocks ``skipped`` removed."""
        from ..modeling import generate_from_conditioning

        text = self.embeddings()
        rows = self.batches[batch]
        with torch.inference_mode(), skip_blocks(self.transformer, skipped):
            latents = generate_from_conditioning(
                self.pipe,
                {k: v[rows.start : rows.stop] for k, v in text.items()},
                self._negative,
                seeds=[self.seed_of(i) for i in rows],
                num_inference_steps=self.settings.num_inference_steps,
                guidance_scale=self.settings.guidance_scale,
                resolution=self.settings.resolution,
                max_sequence_length=self.settings.max_sequence_length,
                batch_size=len(rows),
                output_type="latent",
            )
        return self.family.unpack_latents(latents, self.settings.resolution, self.pipe.vae_scale_factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents ``[B, C, h, w]`` -> images ``[B, 3, H, W]`` in [0, 1], as the pipeline decodes them."""
        with torch.inference_mode():  # as the family's pipeline decodes (ModelFamily.decode)
            return self.family.decode(self.pipe, latents)

    def probe(self, batch: int) -> Probe:
        """The noised latents of prompt batch ``batch`` (cached for the most recent batch)."""
        if batch not in self._probe_cache:
            self._probe_cache.clear()
            self._eps_cache.clear()
            x0 = self.generate(batch)
            text = self.embeddings()
            rows = self.batches[batch]
            steps, count = self.settings.num_timesteps, self._num_train_timesteps()
            alphas = getattr(self.pipe.scheduler, "alphas_cumprod", None)  # None: a flow-matching scheduler
            latents, timesteps = [], []
            for row, i in enumerate(rows):
                # A generator of its own per prompt (offset from the initial-noise seeds): same probe in any batch.
                g = torch.Generator().manual_seed(10_000_019 + self.seed_of(i))
                u = torch.rand(steps, generator=g, dtype=torch.float64)
                t = ((torch.arange(steps, dtype=torch.float64) + u) / steps * count).long().clamp(max=count - 1)
                eps = torch.randn((steps, *x0.shape[1:]), generator=g)
                if alphas is not None:
                    a = alphas.double()[t].view(-1, 1, 1, 1)
                    latents.append((a.sqrt() * x0[row].double() + (1 - a).sqrt() * eps.double()).float())
                else:  # rectified flow: straight path from the image (s = 0) to the noise (s = 1)
                    sigma = (t.double() / count).view(-1, 1, 1, 1)
                    latents.append(((1 - sigma) * x0[row].double() + sigma * eps.double()).float())
                timesteps.append(t)
            self._probe_cache[batch] = Probe(
                latents=torch.stack(latents, dim=1),
                timesteps=torch.stack(timesteps, dim=1),
                text={k: v[rows.start : rows.stop] for k, v in text.items()},
            )
        return self._probe_cache[batch]

    def _num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    def predict_noise(self, probe: Probe, skipped: Variant = (), on_step: Callable[[int], None] | None = None):
        """The model's noise prediction ``[T, B, C, h, w]`` (float32, CPU) on the probe, blocks ``skipped`` removed.

        ``on_step(k)`` runs after the forward pass of probe timestep ``k`` (e.g. to read captured features).
        Learned-variance outputs (PixArt-Sigma: 8 channels) keep their first ``in_channels``: the noise.
        """
        dtype, channels = self.transformer.dtype, self.family.latent_channels(self.transformer.config)
        text = to_device(probe.text, self.device, dtype)
        forward = self.family.forward  # the family's forward arguments
        outputs = []
        with torch.inference_mode(), skip_blocks(self.transformer, skipped):
            for k in range(probe.latents.shape[0]):
                latents = probe.latents[k].to(self.device, dtype)
                out = forward(self.transformer, latents, probe.timesteps[k].to(self.device), text)
                outputs.append(out[:, :channels].float().cpu())
                if on_step is not None:
                    on_step(k)
        return torch.stack(outputs)

    def full_noise(self, batch: int) -> torch.Tensor:
        """:meth:`predict_noise` of the full model on :meth:`probe` ``(batch)``, cached with the probe."""
        probe = self.probe(batch)
        if batch not in self._eps_cache:
            self._eps_cache[batch] = self.predict_noise(probe)
        return self._eps_cache[batch]

    def hidden_states(self, batch: int, skipped: Variant = ()) -> list[tuple[list[int], list[torch.Tensor]]]:
        """Run the probe of ``batch`` and return per-timestep hidden states at block boundaries.

        Returns a list over probe timesteps of ``(blocks, states)``: ``blocks`` are the executed block indices in
        order and ``states`` a list of ``len(blocks) + 1`` tensors ``[B, N, D]`` (float32, CPU): the input of each
        executed block followed by the output of the last one.
        """
        probe = self.probe(batch)
        executed = [i for i in range(self.num_layers) if i not in set(skipped)]
        collected = []
        with (
            capture_block_features(self.transformer, executed, outputs=False) as ins,
            capture_block_features(self.transformer, executed[-1:], inputs=False) as outs,
        ):

            def read(_k: int) -> None:
                states = [ins.inputs[i].float().cpu() for i in executed] + [outs.outputs[executed[-1]].float().cpu()]
                collected.append((executed, states))
                ins.clear()
                outs.clear()

            self.predict_noise(probe, skipped, on_step=read)
        return collected

    def prompts_of(self, batch: int) -> list[str]:
        rows = self.batches[batch]
        return self.prompts.prompts[rows.start : rows.stop]

    # ------------------------------------------------------------------------------------------------------------
    # Units of work: resumable and split across processes
    # ------------------------------------------------------------------------------------------------------------

    def key(self, criterion: str) -> str:
        """Identifies a scan's settings in progress files: records of any other scan are ignored."""
        return cache_key(
            criterion=criterion,
            model=self.model_id,
            prompts=self.prompts.fingerprint() if self.prompts is not None else None,
            num_prompts=len(self.prompts) if self.prompts is not None else 0,
            settings=asdict(self.settings),
            scorer=self.scorer_name,
            dtype=str(self.transformer.dtype),
            num_layers=self.num_layers,
        )

    def _progress_file(self) -> Path | None:
        if self.progress_path is None:
            return None
        rank = self.state.process_index
        suffix = ".progress.jsonl" if rank == 0 else f".progress.rank{rank}.jsonl"
        return self.progress_path.with_name(self.progress_path.name + suffix)

    def _load_progress(self, key: str) -> dict[Unit, dict]:
        done: dict[Unit, dict] = {}
        if self.progress_path is None:
            return done
        for path, number, entry, start_over in read_progress(self.progress_path):
            if entry is None:
                # A line cut short by a kill (later runs append after it): that unit simply runs again.
                if self.state.is_main_process:
                    print(f"warning: skipped an incomplete line {number} of {path} (a killed run); it runs again")
                continue
            if entry["key"] != key:
                continue  # another criterion or other settings: not this scan's work
            try:
                unit = (tuple(int(b) for b in entry["variant"]), int(entry["batch"]))
            except (TypeError, ValueError):
                raise LayerPruneError(f"progress file {path} line {number} has a damaged unit; {start_over}") from None
            if not isinstance(entry["record"], dict) or not 0 <= unit[1] < len(self.batches):
                raise LayerPruneError(f"progress file {path} line {number} does not fit this scan; {start_over}")
            done[unit] = entry["record"]
        return done

    def _append_progress(self, key: str, unit: Unit, record: dict) -> None:
        path = self._progress_file()
        if path is None:
            return
        line = json.dumps({"key": key, "variant": list(unit[0]), "batch": unit[1], "record": record})
        path.parent.mkdir(parents=True, exist_ok=True)  # the output's folder may not exist yet
        with open(path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # the previous run was killed mid-line: start a fresh line
                    f.write(b"\n")
            f.write(line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def run(self, criterion: str, units: Sequence[Unit], compute: Callable[[Unit], dict]) -> dict[Unit, dict]:
        """Compute ``compute(unit)`` (a JSON-serialisable dict) for every unit not already in the progress files.

        Returns ``{unit: record}`` for all ``units`` on every process.
        """
        from tqdm.auto import tqdm

        units = [(tuple(sorted(v)), int(b)) for v, b in units]
        key = self.key(criterion)
        loaded, memory = self._load_progress(key), self._records.setdefault(key, {})
        done = {**loaded, **memory}
        self.state.wait_for_everyone()  # every process reads the same progress before any process appends
        todo = [u for u in dict.fromkeys(units) if u not in done]
        mine = todo[self.state.process_index :: self.state.num_processes]
        resumed = len({u for u in units if u in loaded and u not in memory})
        if resumed and self.state.is_main_process:
            print(f"{criterion}: {resumed} of {len(set(units))} units already done (resuming from progress files)")
        total = sum(len(self.batches[b]) for _, b in mine)
        bar = tqdm(
            total=total,
            desc=f"{criterion}: variants x prompts",
            unit="img",
            disable=not (self.show_progress and self.state.is_main_process),
        )
        fresh = []
        for unit in mine:
            record = compute(unit)
            self.units_computed += 1
            self._append_progress(key, unit, record)
            fresh.append((unit, record))
            bar.update(len(self.batches[unit[1]]))
        bar.close()
        if self.state.num_processes > 1:
            from accelerate.utils import gather_object

            fresh = gather_object(fresh)
        for unit, record in fresh:
            done[(tuple(unit[0]), int(unit[1]))] = record
        self._records[key].update(done)
        missing = [u for u in units if u not in done]
        if missing:
            raise RuntimeError(f"scan finished without results for {len(missing)} units, e.g. {missing[0]}")
        return {u: done[u] for u in units}

    def remove_progress(self) -> None:
        """Delete the progress files once the result is written (main process, after all processes finished)."""
        self.state.wait_for_everyone()
        if self.state.is_main_process and self.progress_path is not None:
            for path in progress_files(self.progress_path):
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------------------------
    # Metadata
    # ------------------------------------------------------------------------------------------------------------

    def metadata(self, criterion: str, **extra) -> dict:
        """What a result needs to say how it was measured."""
        import diffusers

        from .. import __version__
        from ..provenance import public_name

        s = self.settings
        # Importance files travel with pruned models (push uploads them): local paths by their names only.
        meta = {
            "model": public_name(self.model_id),
            "num_layers": self.num_layers,
            "family": self.family.name,
            # each block's stack and index there, for many-stack families (Flux: "double 3", "single 0")
            "block_names": block_names(self.transformer) if len(self.family.stacks) > 1 else None,
            "criterion": criterion,
            "scorer": public_name(self.scorer_name),
            "prompts": None
            if self.prompts is None
            else {**self.prompts.record(), "source": public_name(self.prompts.source)},
            "seed": s.seed,
            "seeds": f"prompt i uses seed {s.seed} + i",
            "num_inference_steps": s.num_inference_steps,
            "guidance_scale": s.guidance_scale,
            "resolution": s.resolution,
            "max_sequence_length": s.max_sequence_length,
            "batch_size": s.batch_size,
            "num_timesteps": s.num_timesteps,
            "dtype": str(self.transformer.dtype).removeprefix("torch."),
            "prediction_type": self.pipe.scheduler.config.get("prediction_type"),
            "num_processes": self.state.num_processes,
            "package_version": __version__,
            "torch_version": torch.__version__,
            "diffusers_version": diffusers.__version__,
        }
        meta.update(extra)
        return meta


def mean_and_stderr(per_prompt: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean over the last axis and its standard error (``std(ddof=1) / sqrt(n)``; 0 for a single prompt)."""
    per_prompt = np.asarray(per_prompt, dtype=np.float64)
    n = per_prompt.shape[-1]
    mean = per_prompt.mean(axis=-1)
    stderr = per_prompt.std(axis=-1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
    return mean.tolist(), stderr.tolist()


def per_prompt_importance(
    scan: ImportanceScan, criterion: str, per_prompt: np.ndarray, skipped, extra: dict | None = None
) -> LayerImportance:
    """A criterion's result from its values per block and prompt ``[num_layers, prompts]`` (NaN for blocks not
    measured): the mean and its standard error per block (:func:`mean_and_stderr`), the values themselves and the
    scan's metadata with the blocks ``skipped`` throughout; ``extra`` as the criterion reports it."""
    values, stderr = mean_and_stderr(per_prompt)
    return LayerImportance(
        values=values,
        criterion=criterion,
        stderr=stderr,
        per_prompt=per_prompt.tolist(),
        metadata=scan.metadata(criterion, skipped=list(skipped)),
        extra=extra if extra is not None else {},
    )
