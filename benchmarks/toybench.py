"""Pieces the benchmark scripts share: writing a result, rendering captions with fixed seeds, judging, summaries.

Each benchmark stays a short script that states its question; what every one of them does the same way lives here,
so a fix (say, to how seeds map to captions) reaches all of them at once. Scripts run as ``python benchmarks/x.py``,
which puts this folder on ``sys.path``; ``import toybench`` therefore needs no path set-up.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import time
from pathlib import Path


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented JSON to ``path``, parents created, atomically (a reader never sees half a file)."""
    from paper.cells import write_text

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(data, indent=2) + "\n")
    return out


def write_result(path: str | os.PathLike, result: dict, note: str = "") -> Path:
    """:func:`write_json` ``result`` to ``path`` and print where it went (``note`` appended, e.g. the duration)."""
    out = write_json(path, result)
    print(f"wrote {out}{note}")
    return out


# The toy judge's metrics, in the order every toy page and result JSON lists them.
METRICS = ("overall", "colour", "position", "shape", "size")


def judged(images, captions: list[str], scorer, correct: bool = False) -> dict:
    """The toy judge's accuracy per metric and the toy score's mean for ``images`` of ``captions``.

    ``correct`` adds the judge's per-caption all-four-right verdicts (for paired bootstraps across cells). Callers
    add their own timing field after these keys, so each benchmark's records keep their key order.
    """
    from diffusers_layerprune.toy.judge import judge

    report = judge(images, captions)
    record = {
        "accuracy": {m: float(report.accuracy[m]) for m in METRICS},
        "toy_score": float(scorer(images, captions).mean()),
    }
    if correct:
        record["correct"] = [bool(x) for x in report.correct["overall"]]
    return record


def mean_std(values, *, spread: bool = True) -> dict:
    """``mean``, ``std`` (the sample standard deviation; 0 for one value) and ``n`` of ``values``; with ``spread``
    also ``min`` and ``max`` (after ``std``) and the ``values`` themselves (last), as the paper's tables read them."""
    values = [float(v) for v in values]
    out = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    if spread:
        out.update(min=min(values), max=max(values))
    out["n"] = len(values)
    if spread:
        out["values"] = values
    return out


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (``successes`` of ``n``); NaNs for ``n == 0``."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def render(pipe, captions: list[str], settings, seeds: list[int], batch_size: int | None = None):
    """Images (float, CPU, ``output_type="pt"``) of ``captions`` from ``pipe`` at ``settings`` (a ``ScanSettings``).

    Caption ``i`` is drawn with ``torch.Generator().manual_seed(seeds[i])``, so a caption's image does not depend on
    the batch it falls in; ``batch_size`` (default: all captions at once) only bounds memory.
    """
    import torch

    step = batch_size or len(captions)
    images = []
    with torch.inference_mode():
        for start in range(0, len(captions), step):
            batch = captions[start : start + step]
            out = pipe(
                batch,
                num_inference_steps=settings.num_inference_steps,
                guidance_scale=settings.guidance_scale,
                height=settings.resolution,
                width=settings.resolution,
                generator=[torch.Generator().manual_seed(s) for s in seeds[start : start + step]],
                output_type="pt",
                use_resolution_binning=False,
                max_sequence_length=settings.max_sequence_length,
                clean_caption=False,
            )
            images.append(out.images.float().cpu())
    return torch.cat(images)


def write_render_folder(folder: str | os.PathLike, items) -> Path:
    """An image folder (``00000.png``.., ``metadata.jsonl`` with ``file_name`` and ``text``) of ``items``, pairs of
    an image ``[3, H, W]`` in [0, 1] and its caption, in order; written under ``FOLDER.partial`` and renamed when
    complete, so a stopped run leaves no folder that looks whole."""
    from PIL import Image

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, caption) in enumerate(items):
        pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(pixels).save(tmp / f"{i:05d}.png")
        rows.append(json.dumps({"file_name": f"{i:05d}.png", "text": caption}))
    (tmp / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    tmp.replace(folder)
    return folder


def run_logged(cmd: list[str], log: Path, in_process: bool = False) -> dict:
    """Run ``cmd`` (this checkout's package first, one thread), output appended to ``log``; its cost.
    ``in_process`` (the smoke test) calls the module's ``main`` here instead: the same pieces without the start-up
    of a new interpreter."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if in_process:
        import contextlib
        import importlib

        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        with log.open("a") as f, contextlib.redirect_stdout(f):
            importlib.import_module(cmd[2]).main(cmd[3:])
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {"cpu_seconds": cpu, "wall_seconds": time.perf_counter() - start}
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with log.open("a") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"{cmd[2]} failed ({log}):\n" + "".join(log.read_text().splitlines(True)[-20:]))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_seconds": cpu, "wall_seconds": time.perf_counter() - start}


def load_with_settings(model: str, batch_size: int, num_inference_steps: int | None = None):
    """``(pipe, settings)``: ``model``'s pipeline (progress bars off) and a ``ScanSettings`` of its generation defaults.

    ``num_inference_steps`` overrides the default step count when given.
    """
    from diffusers_layerprune.importance import ScanSettings
    from diffusers_layerprune.modeling import generation_defaults, load_pipeline

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    d = generation_defaults(model, pipe)
    settings = ScanSettings(
        num_inference_steps=num_inference_steps or d["num_inference_steps"],
        guidance_scale=d["guidance_scale"],
        resolution=d["resolution"],
        max_sequence_length=d["max_sequence_length"],
        batch_size=batch_size,
    )
    return pipe, settings


def saved_or_computed(path: str | os.PathLike, compute, *, plot: bool = True):
    """``(importance, seconds)``: the ``LayerImportance`` an earlier run saved at ``path`` (``seconds`` is ``None``),
    or else ``compute()``'s, saved there (``plot``: its plot beside it), with the seconds ``compute`` took."""
    from diffusers_layerprune.importance import LayerImportance

    path = Path(path)
    if path.is_file():
        return LayerImportance.load(path), None
    start = time.perf_counter()
    importance = compute()
    seconds = time.perf_counter() - start
    importance.save(path, plot=plot)
    return importance, seconds
