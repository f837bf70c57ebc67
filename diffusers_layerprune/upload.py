"""What ``push`` uploads from a folder, and the checks made before anything is sent: the files (minus
:data:`UPLOAD_IGNORE`: checkpoints, hidden files, logs), where each lands in the repo (a transformer-only upload puts
``transformer/*`` at the top and leaves the other components to the base model), an evaluation report kept outside
the folder, symbolic links pointing out of it, and the local paths of this machine that a file would reveal."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import LayerPruneError

# Files of a run folder that are not part of the published model.
# TensorBoard logs (logs/) are uploaded, as diffusers' training scripts do: the Hub shows them as training metrics.
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", ".*", "**/.*", "validation/**", "*.jsonl", "*.tmp*"]


def report_extras(report_file: Path) -> tuple[Path, Path]:
    """``report.md`` and the image grid written beside ``report_file`` (``layerprune eval`` names them after it)."""
    from .evaluation import grid_path

    return report_file.with_suffix(".md"), grid_path(report_file)


def report_uploads(folder: Path, report: str | os.PathLike) -> list[tuple[str, str, int]]:
    """Upload rows (:func:`upload_plan`'s form, with absolute sources) for an evaluation report kept outside
    ``folder``: its JSON, Markdown and grid go up as ``report.json``, ``report.md`` and ``report_grid.png``."""
    report = Path(report).expanduser()
    if not report.is_file():
        raise LayerPruneError(f"--report {report} does not exist; pass the report.json that layerprune eval wrote")
    if (Path(folder) / "report.json").exists():
        raise LayerPruneError(f"{folder} holds a report.json already; push without --report, or remove that one")
    md, grid = report_extras(report)
    pairs = [(report, "report.json"), (md, "report.md"), (grid, "report_grid.png")]
    return [(str(path.resolve()), target, path.stat().st_size) for path, target in pairs if path.is_file()]


def _ignored(rel: str) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(rel, pattern) for pattern in UPLOAD_IGNORE)


def files_to_upload(folder: Path) -> list[tuple[str, int]]:
    """``(relative path, size in bytes)`` of every file an upload sends, in upload order.

    Like ``HfApi.upload_folder``: files (a symbolic link to a file counts as its target), not following links to
    folders, minus :data:`UPLOAD_IGNORE`.
    """
    folder = Path(folder)
    out = []
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and not _ignored(rel):
                out.append((rel, path.stat().st_size))
    return sorted(out)


# Pipeline parts a transformer-only upload leaves to the base model.
BASE_PARTS = ("model_index.json", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler")


def upload_plan(folder: Path, *, transformer_only: bool = False) -> list[tuple[str, str, int]]:
    """``(path in folder, path in the repo, bytes)`` of every file an upload sends, in upload order.

    With ``transformer_only`` a pipeline folder uploads ``transformer/*`` at the top of the repo (where
    ``PixArtTransformer2DModel.from_pretrained(repo_id)`` looks) with the card, plots, reports and the LoRA adapter,
    and none of the other components (``BASE_PARTS``): those stay in the base model's repo.
    """
    files = files_to_upload(folder)
    if not transformer_only or not (Path(folder) / "model_index.json").is_file():
        return [(rel, rel, size) for rel, size in files]
    plan = []
    for rel, size in files:
        top = rel.split("/", 1)[0]
        if top == "transformer":
            plan.append((rel, rel.split("/", 1)[1], size))
        elif top not in BASE_PARTS:
            plan.append((rel, rel, size))
    targets = [target for _, target, _ in plan]
    clash = sorted({t for t in targets if targets.count(t) > 1})
    if clash:
        raise LayerPruneError(f"{folder}: {clash[0]} exists both in transformer/ and at the top; remove one")
    return sorted(plan, key=lambda row: row[1])


def check_upload_links(folder: Path) -> None:
    """Refuse to upload a folder holding a symbolic link (not ignored) whose target lies outside the folder: the
    upload would send the target, a file from elsewhere on the machine. Links inside the folder are fine."""
    from .outputs import link_points_outside

    folder = Path(folder)
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if not path.is_symlink() or _ignored(rel) or _ignored(rel + "/"):
                continue
            if link_points_outside(path, root):
                raise LayerPruneError(
                    f"{path} is a symbolic link to {os.readlink(path)}, outside the folder; push uploads no files "
                    "from outside it: replace the link with a copy of the file or remove it"
                )


def source_aliases(folder: Path, base_model: str | None) -> dict[str, str]:
    """Public name of the recorded source -> ``base_model``: with ``--base-model`` a config's ``_name_or_path`` that
    named the local source folder names the source's Hub id instead of a folder name."""
    if not base_model:
        return {}
    from .modeling import read_transformer_config
    from .provenance import public_name

    recorded = (read_transformer_config(folder) or {}).get("source_model")
    return {public_name(recorded): base_model} if recorded else {}


def review_upload(
    folder: Path, plan: list[tuple[str, str, int]], *, aliases: dict[str, str] | None = None
) -> list[dict]:
    """What each file of ``plan`` (:func:`upload_plan`) sends, after searching it for absolute paths of a machine
    (:func:`~diffusers_layerprune.provenance.find_machine_paths`: every JSON key and value, nested, and every text).

    Returns one dict per file, in plan order: ``rel``, ``target``, ``size``, ``verdict`` (``"as is"``,
    ``"rewritten"``: ``data`` holds the bytes that go up, with each path replaced by its public name, or the Hub id
    in ``aliases`` for a source key; ``"left out"``: a log or image holding a path, not sent) and ``changes``
    (``(old, new)`` pairs). A weights or tokenizer file holding a path is refused: one :class:`LayerPruneError`
    naming the file and the path, before anything is sent. The folder's own files are never changed.
    """
    from .provenance import _roots_of, clean_upload_file

    roots = _roots_of(folder)
    rows = []
    for rel, target, size in plan:
        verdict, data, changes = clean_upload_file(Path(folder) / rel, rel, roots, aliases or {})
        if verdict == "refused":
            raise LayerPruneError(
                f"{Path(folder) / rel} holds a local path ({changes[0][0]}) that push cannot rewrite in a weights "
                "or tokenizer file: re-save the file without it (nothing was uploaded)"
            )
        rows.append(
            dict(rel=rel, target=target, size=len(data) if data is not None else size, verdict=verdict, data=data,
                 changes=changes)
        )  # fmt: skip
    return rows
