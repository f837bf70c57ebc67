"""What a recipe's run folder holds besides its records: finished model folders, the scored importance copied beside
each model, and an elastic run's smaller depths (``OUTPUT/depth-N``) with their reports."""

from __future__ import annotations

import shutil
from pathlib import Path


def is_model_folder(folder: Path) -> bool:
    """A finished pipeline (model_index.json is written last) or transformer-only folder."""
    return (folder / "model_index.json").is_file() or (folder / "config.json").is_file()


def copy_importance(importance_path: Path, folder: Path) -> None:
    """The score stage's importance (JSON and plot) beside a model, where its card reads it."""
    from .outputs import atomic_output_file

    for suffix in (".json", ".png"):
        source = importance_path.with_suffix(suffix)
        if source.is_file():
            with atomic_output_file(folder / f"importance{suffix}") as tmp:
                shutil.copyfile(source, tmp)


def depth_folders_of(recipe, out: Path) -> dict[int, Path]:
    """An elastic recipe's extracted depths: ``OUTPUT/depth-N`` for every trained depth but the largest (which is
    ``OUTPUT/distilled`` itself); empty for a one-depth recipe."""
    if not recipe.elastic_depths or recipe.distill_steps <= 0:
        return {}
    return {depth: out / f"depth-{depth}" for depth in recipe.elastic_depths[1:]}


def extract_depths(final: Path, depth_folders: dict[int, Path], out: Path, importance_path: Path, log) -> None:
    """Every smaller trained depth of the elastic model in ``final`` as an ordinary pruned folder, with the run's
    importance beside it; depth folders of an earlier run with other depths are removed (the recipe checked before
    its first stage that they are ours)."""
    from .elastic import extract_depth

    for stale in sorted(out.glob("depth-*")):
        if stale not in depth_folders.values() and stale.is_dir():
            shutil.rmtree(stale)
    for depth, folder in depth_folders.items():
        log(f"[3/5] extracting depth {depth} into {folder}")
        extract_depth(final, depth, folder, overwrite=True)
        copy_importance(importance_path, folder)


def place_depth_reports(final: Path, depth_folders: dict[int, Path], depths) -> None:
    """Each depth's report (``report-depthN.*``, written by the elastic evaluation beside the run's model) also as
    ``report.*`` of the folder holding that depth, where its card and ``layerprune push`` read it."""
    from .eval_report import grid_path
    from .outputs import atomic_output_file

    for depth in depths:
        source = final / f"report-depth{depth}.json"
        target = depth_folders.get(depth, final) / "report.json"
        for a, b in ((source, target), (source.with_suffix(".md"), target.with_suffix(".md")),
                     (grid_path(source), grid_path(target))):  # fmt: skip
            if a.is_file():
                with atomic_output_file(b, overwrite=True) as tmp:
                    shutil.copyfile(a, tmp)
