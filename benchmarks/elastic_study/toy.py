"""What both elastic benchmarks (elastic_toy.py, elastic_routing_toy.py) do the same way: the toy teacher with its
held-out captions encoded and the nested depths of the preference importance, the held-out images of a model with
some blocks skipped, and a distillation run with its CPU cost."""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path

from paper.distil import distil

from .claims import EVAL_SEED


def score_importance(path: Path) -> Path:
    """``path``, first written by ``layerprune score`` (preference, 64 training captions, seed 0) when missing."""
    if not path.is_file():
        cmd = [sys.executable, "-m", "diffusers_layerprune.cli", "score", "--model", "toy", "--criterion",
               "preference", "--num-prompts", "64", "--seed", "0", "--output", str(path), "--no-progress"]  # fmt: skip
        subprocess.run(cmd, check=True)
    return path


def timed_distil(student: Path, output: Path, *, steps: int, batch_size: int, learning_rate: float, seed: int,
                 extra=()) -> dict:  # fmt: skip
    """Distil ``student`` into ``output`` (reproduce_paper.py's recipe; a half-written ``output`` of a killed run is
    removed first, so the cost is one uninterrupted run's): ``{"cpu_seconds", "wall_seconds", "steps"}``, the CPU
    time being user + system of the training process."""
    if output.exists():
        shutil.rmtree(output)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = distil(
        "toy", student, output, steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        log=output.parent / f"{output.name}.log", extra_args=tuple(str(a) for a in extra),
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_seconds": cpu, "wall_seconds": wall, "steps": steps}


class ToyTeacher:
    """The toy teacher and what judging its held-out captions needs; :meth:`load_teacher` fills the attributes."""

    def load_teacher(self, importance: Path, eval_prompts: int, depths: list[int]) -> None:
        """Load the teacher, encode the first ``eval_prompts`` held-out captions, and nest ``depths`` (largest
        first) by the preference importance in ``importance`` (scored first when missing)."""
        from diffusers_layerprune.data import encode_prompts
        from diffusers_layerprune.elastic import nested_kept_layers
        from diffusers_layerprune.importance import LayerImportance
        from diffusers_layerprune.modeling import generation_defaults, load_pipeline
        from diffusers_layerprune.scorers import load_scorer
        from diffusers_layerprune.toy import world

        self.pipe = load_pipeline("toy")
        self.pipe.set_progress_bar_config(disable=True)
        self.defaults = generation_defaults("toy", self.pipe)
        self.scorer = load_scorer("toy")
        self.captions = world.captions("heldout")[:eval_prompts]
        length = self.defaults["max_sequence_length"]
        self.embeds = encode_prompts(self.pipe, self.captions, max_sequence_length=length)
        self.negative = encode_prompts(self.pipe, [""], max_sequence_length=length)
        self.importance = LayerImportance.load(score_importance(importance))
        self.source_depth = len(self.pipe.transformer.transformer_blocks)
        largest = self.importance.most_important(depths[0])
        self.kept = nested_kept_layers(self.importance.ranking(), largest, depths, [self.source_depth])

    def heldout_images(self, pipe, dropped, seed: int):
        """``pipe``'s images of the held-out captions with the blocks ``dropped`` skipped; caption i of seed ``s`` from
        noise seed ``EVAL_SEED + 1000 s + i`` (reproduce_paper.py's), so models compare image for image."""
        from diffusers_layerprune.blocks import skip_blocks
        from diffusers_layerprune.generation import generate_from_embeddings

        d = self.defaults
        seeds = [EVAL_SEED + 1000 * seed + i for i in range(len(self.captions))]
        with skip_blocks(pipe.transformer, list(dropped)):
            return generate_from_embeddings(
                pipe, *self.embeds, self.negative, seeds=seeds, num_inference_steps=d["num_inference_steps"],
                guidance_scale=d["guidance_scale"], resolution=d["resolution"],
                max_sequence_length=d["max_sequence_length"], batch_size=16,
            )  # fmt: skip

    @staticmethod
    def _load(folder: Path):
        from diffusers_layerprune.modeling import load_pipeline

        pipe = load_pipeline(str(folder))
        pipe.set_progress_bar_config(disable=True)
        return pipe
