"""Writing outputs so that nothing of the user's is lost: every folder or file appears complete or not at all, only
folders this package wrote are ever replaced, and nothing is written through a symbolic link.

Every folder the package creates (pruned pipelines, distillation runs, recipe runs, caches) holds a small hidden
marker, ``.layerprune.json``: what wrote it, its top-level entries, and a ``local`` record (full local paths of the
models it came from) that never leaves the machine (hidden files are not uploaded, see ``upload.UPLOAD_IGNORE``).
``--overwrite`` replaces a folder only when it carries the marker and holds nothing but entries this package writes.

Temporary names are ``.NAME.tmp-PID-XXXX`` (being written) and ``.NAME.old-PID`` (being replaced): the next run
removes those whose process is gone (:func:`clean_stale_temps`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

from .errors import LayerPruneError

MARKER = ".layerprune.json"
MARKER_FORMAT = "diffusers-layerprune/output"

# Top-level entries the package writes into folders it owns: pipelines (plus the files eval / push / the recipe add
# beside them), distillation runs and recipe runs. Anything else found there belongs to the user.
OWN_ENTRIES = (
    MARKER,
    "model_index.json",
    "transformer",
    "vae",
    "text_encoder",
    "tokenizer",
    "scheduler",
    "README.md",
    "importance.json",
    "importance.png",
    "importance.json.progress*.jsonl",
    "report.json",
    "report.md",
    "report_grid.png",
    "report-depth*",  # layerprune eval of an elastic run: a report per depth and quality against depth
    "distill_config.json",
    "elastic.json",  # train_distill --elastic_depths (elastic.py)
    "sparsity.json",
    "routing.json",
    "router.safetensors",
    "loss_curve.png",
    "train_log.jsonl",
    "checkpoint-*",
    ".checkpoint-*.tmp",
    "logs",
    "validation",
    "lora",
    "pytorch_lora_weights.safetensors",  # LoRA folders (adapters/lora.py)
    "adapter_config.json",
    "adapter_model.safetensors",
    "layerprune_lora.json",
    "run.json",
    "summary.json",
    "pruned",
    "distilled",
    "depth-*",  # layerprune run --elastic-depths: the extracted smaller depths
    "transformer*.gguf",  # layerprune export beside the pipeline
    "transformer*.safetensors",
    ".*.tmp-*",
    ".*.old-*",
)

_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-[^/]*)?$")


# ----------------------------------------------------------------------------------------------------------------
# Ownership marker
# ----------------------------------------------------------------------------------------------------------------


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The folder's ``.layerprune.json`` as a dict, or ``None`` when the package did not write the folder."""
    path = Path(folder) / MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else None


def write_marker(
    folder: str | os.PathLike, kind: str, *, local: dict | None = None, entries: Iterable[str] | None = None
) -> Path:
    """Write (or update) the marker of ``folder``: ``kind`` says what wrote it (``pipeline``, ``distillation``,
    ``run``, ``folder``); ``local`` holds full local paths, merged into what an existing marker keeps.

    ``entries`` are the top-level names the package wrote there besides :data:`OWN_ENTRIES` (default: everything in
    the folder, right for a folder only the package has written so far, such as a temporary one). Folders filled in
    place (a training run, a recipe run) pass none, so that a file a user adds meanwhile never counts as ours.
    """
    from . import __version__

    folder = Path(folder)
    old = read_marker(folder) or {}
    if entries is None:
        entries = [p.name for p in folder.iterdir() if p.name != MARKER]
    entries = sorted(set(entries) | set(old.get("entries", [])))
    data = {
        "format": MARKER_FORMAT,
        "format_version": 1,
        "kind": kind,
        "package_version": __version__,
        "entries": entries,
        "local": {**old.get("local", {}), **{k: str(v) for k, v in (local or {}).items() if v is not None}},
    }
    path = folder / MARKER
    if path.is_symlink():
        path.unlink()
    fd, name = tempfile.mkstemp(prefix=f".{MARKER}.tmp-{os.getpid()}-", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    _usual_permissions(Path(name))
    os.replace(name, path)
    return path


def _usual_permissions(path: Path) -> None:
    """The permissions a plain ``open(path, "w")`` would give (mkstemp makes files private to the owner)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """Top-level entries of ``folder`` the package does not write (all of them when the folder has no marker)."""
    folder = Path(folder)
    marker = read_marker(folder)
    names = sorted(p.name for p in folder.iterdir())
    if marker is None:
        return names
    known = set(marker.get("entries", []))
    return [n for n in names if n not in known and not any(fnmatch(n, pattern) for pattern in OWN_ENTRIES)]


def _holds_anything(folder: Path) -> bool:
    """Whether ``folder`` holds anything but the package's marker (a run that failed early leaves just that)."""
    return any(entry.name != MARKER for entry in folder.iterdir())


def _listing(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------------


def _absolute(path: str | os.PathLike) -> Path:
    """``path`` made absolute without following symbolic links (``.`` becomes the current folder's full path)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or child.is_relative_to(parent)


def check_not_symlink(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse to write ``path`` when it is a symbolic link: the write would land wherever the link points."""
    path = Path(path)
    if path.is_symlink():
        raise LayerPruneError(
            f"{what} {path} is a symbolic link (to {os.readlink(path)}); give the real path or remove the link"
        )


def link_points_outside(link: Path, root: Path) -> bool:
    """Whether the symbolic link ``link`` leads outside the (resolved) folder ``root``; a link that loops counts."""
    try:
        return not _inside(link.resolve(), root)
    except (OSError, RuntimeError):  # a loop of links
        return True


def check_no_outside_links(folder: str | os.PathLike, what: str = "output folder") -> None:
    """Refuse a folder holding a symbolic link whose target lies outside it: writing there would reach the target."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            entry = Path(dirpath) / name
            if entry.is_symlink() and link_points_outside(entry, root):
                raise LayerPruneError(
                    f"{entry} is a symbolic link to {os.readlink(entry)}, outside the {what} {folder}; "
                    "remove the link (or replace it with a copy) and run again"
                )


def check_apart_from_inputs(output: str | os.PathLike, inputs: Iterable, what: str = "output") -> None:
    """Refuse an output that is, or lies inside, an input folder, and an input that lies inside the output.

    ``inputs`` are paths of models, students, teachers (Hub ids and short names that are no local path are skipped).
    Paths are compared with symbolic links resolved.
    """
    out = _absolute(output).resolve()
    for given in inputs:
        if given is None or not str(given):
            continue
        source = Path(str(given)).expanduser()
        if not source.exists():
            continue
        src = source.resolve()
        if _inside(out, src):
            where = "is" if out == src else "is inside"
            raise LayerPruneError(
                f"{what} {output} {where} the input {given}; write the output to a folder outside the input"
            )
        if _inside(src, out):
            raise LayerPruneError(
                f"the input {given} is inside the {what} folder {output}; write the output to another folder"
            )


def check_output_parent(path: str | os.PathLike) -> None:
    """Refuse an output whose folder cannot exist: a file stands where a parent folder should be. (Missing parent
    folders are created when the output is written.)"""
    for parent in _absolute(path).parents:
        if parent.exists():
            if not parent.is_dir():
                raise LayerPruneError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise LayerPruneError(f"cannot write {path}: no permission to write in {parent}")
            return


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    """Fail early (before any heavy work, writing nothing) when ``path`` cannot be written as an output folder.

    A new or empty folder is fine. A non-empty folder is replaced only with ``overwrite`` and only when this
    package wrote it (marker present, no foreign entries). The output may not be a symbolic link, the current folder
    (or one above it), an input folder or inside one, and may not hold an input. Returns the absolute path.
    """
    given = path
    path = _absolute(path)
    check_not_symlink(path)
    check_output_parent(path)
    if path.exists() and not path.is_dir():
        raise LayerPruneError(f"output {given} exists and is a file, not a folder")
    cwd = Path.cwd().resolve()
    if _inside(cwd, path.resolve()):
        raise LayerPruneError(
            f"output {given} is the current folder or contains it; give a new folder, e.g. {Path(given) / 'pruned'}"
        )
    check_apart_from_inputs(path, inputs)
    if path.exists() and _holds_anything(path):
        foreign = foreign_entries(path)
        if foreign:
            raise LayerPruneError(
                f"output folder {given} holds files layerprune did not write ({_listing(foreign)}); "
                "choose a new folder (nothing was changed)"
            )
        if not overwrite:
            raise LayerPruneError(f"output folder {given} already exists; pass --overwrite to replace it")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Stale temporaries of killed runs
# ----------------------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID`` entries of ``folder`` left by processes that are gone.

    Only names this module gives its temporaries are touched, only when their process no longer runs, and an
    ``.old`` copy only when ``NAME`` itself exists (otherwise it may be the only copy left). ``name`` limits the
    clean-up to one output name.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if not match or (name is not None and match["name"] != name) or _alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not (folder / match["name"]).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# ----------------------------------------------------------------------------------------------------------------
# Atomic writers
# ----------------------------------------------------------------------------------------------------------------


@contextmanager
def atomic_output_dir(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable = (),
    kind: str = "folder",
    local: dict | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it to ``path`` only if the block finishes without error.

    The folder gets the package's marker (``kind``, ``local``) before it appears. With ``overwrite`` an existing
    ``path`` that the package wrote is replaced after the new folder is complete (see :func:`check_output_dir`); on
    failure the temporary folder is removed and ``path`` is left as it was.
    """
    inputs = list(inputs)
    path = check_output_dir(path, overwrite=overwrite, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        with removing_partial(tmp, path):
            yield tmp
            write_marker(tmp, kind, local=local)
        # Checked again: the folder may have changed while the block ran.
        if path.exists():
            check_output_dir(path, overwrite=overwrite, inputs=inputs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_file(path: str | os.PathLike, *, overwrite: bool = True, owned=None) -> Path:
    """Fail when ``path`` cannot be written as an output file: a folder, a symbolic link, or an existing file
    without ``overwrite`` or that ``owned(path)`` does not recognise as written by the package."""
    path = Path(path).expanduser()
    check_not_symlink(path)
    if path.is_dir():
        raise LayerPruneError(f"output {path} is a folder, expected a file path")
    if path.exists():
        if owned is not None and not owned(path):
            raise LayerPruneError(
                f"output file {path} exists and was not written by layerprune; choose another file name "
                "(nothing was changed)"
            )
        if not overwrite:
            raise LayerPruneError(f"output file {path} already exists; pass --overwrite to replace it")
    return path


@contextmanager
def atomic_output_file(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it onto ``path`` when the block succeeds.

    ``path`` may not be a symbolic link (the rename would replace the link, the write was meant for its target).
    The file gets the usual permissions (umask), not the private ones of a temporary file.
    """
    path = check_output_file(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with removing_partial(tmp, path):
            yield tmp
        _usual_permissions(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Folders written in place (training runs, recipe runs)
# ----------------------------------------------------------------------------------------------------------------


def check_training_output_dir(
    path: str | os.PathLike, *, inputs: Iterable = (), overwrite: bool = False, resume: bool = False
) -> str:
    """What a training run may do with its ``--output_dir``, decided before anything is loaded or written.

    Returns ``"new"`` (missing or empty), ``"resume"`` (a run of ours, ``resume`` asked) or ``"overwrite"`` (a run
    of ours, ``overwrite`` asked: its contents are removed first). Refused: a non-empty folder holding anything the
    package does not write, a run of ours without either flag, a symbolic link (as the folder or inside it, pointing
    out), and a folder that is, lies inside or holds one of ``inputs`` (the student, the teacher).
    """
    given = path
    path = _absolute(path)
    check_not_symlink(path, "--output_dir")
    if path.exists() and not path.is_dir():
        raise LayerPruneError(f"--output_dir {given} is a file, not a folder")
    check_apart_from_inputs(path, inputs, what="--output_dir")
    if not path.exists() or not _holds_anything(path):
        return "new"
    foreign = foreign_entries(path)
    if foreign:
        raise LayerPruneError(
            f"--output_dir {given} is not empty and holds files layerprune did not write ({_listing(foreign)}); "
            "choose a new or empty folder (nothing was changed)"
        )
    check_no_outside_links(path, "--output_dir")
    if overwrite:
        return "overwrite"
    if resume:
        return "resume"
    raise LayerPruneError(
        f"--output_dir {given} already holds a distillation run; pass --resume_from_checkpoint latest to continue "
        "it or --overwrite_output_dir to start over"
    )


def prepare_training_output_dir(path: str | os.PathLike, action: str, *, local: dict | None = None) -> Path:
    """Make ``path`` ready for a run that :func:`check_training_output_dir` allowed (main process only): create it,
    empty it for ``"overwrite"``, remove temporaries of killed runs, and write the marker."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if action == "overwrite":
        for entry in path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    else:
        clean_stale_temps(path)
        for entry in path.glob(".checkpoint-*.tmp"):  # a checkpoint cut short by a kill (one run per folder)
            shutil.rmtree(entry, ignore_errors=True)
    write_marker(path, "distillation", local=local, entries=())
    return path


def check_work_dir(path: str | os.PathLike, *, inputs: Iterable = (), what: str = "run folder") -> Path:
    """A folder that a command fills in place (``layerprune run``): new, empty or made by the package; not a
    symbolic link, holding none pointing out, apart from ``inputs``. Returns the absolute path."""
    given = path
    path = _absolute(path)
    check_not_symlink(path, what)
    if path.exists() and not path.is_dir():
        raise LayerPruneError(f"{what} {given} is a file, not a folder")
    check_apart_from_inputs(path, inputs, what=what)
    if path.exists() and any(path.iterdir()) and read_marker(path) is None:
        raise LayerPruneError(
            f"{what} {given} is not empty and was not made by layerprune ({_listing(sorted(os.listdir(path)))}); "
            "choose a new folder (nothing was changed)"
        )
    check_no_outside_links(path, what)
    return path


# ----------------------------------------------------------------------------------------------------------------
# A full disk while saving
# ----------------------------------------------------------------------------------------------------------------


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or one it was raised from) says the disk or the user's quota is full: an ``OSError`` with
    ``ENOSPC``/``EDQUOT``, or safetensors' own error type, which carries the OS error in its text."""
    import errno

    from .errors import _chain

    for cause in _chain(error):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(cause)
        if "No space left on device" in text or "os error 28" in text or "StorageFull" in text:
            return True
    return False


def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes of the files under ``path`` (a file or a folder; 0 if missing)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += (Path(dirpath) / name).stat().st_size
            except OSError:
                pass
    return total


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def disk_full_error(folder: str | os.PathLike, *, written: int = 0, needed: int | None = None) -> LayerPruneError:
    """One line for a save that filled the disk: the folder, the space free there and the space needed (``needed``
    when the caller knows it, else more than the ``written`` bytes that fit), and that the partial output is gone."""
    folder = _absolute(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    need = f"about {human_size(needed)}" if needed else f"more than the {human_size(written)} written before it filled"
    return LayerPruneError(
        f"the disk holding {folder} is full ({human_size(free)} free; the save needs {need}); the partial output was "
        "removed: free space there or write to a folder on another disk"
    )


@contextmanager
def removing_partial(partial: str | os.PathLike, target: str | os.PathLike, *, needed: int | None = None):
    """Run a save into ``partial`` (a temporary file or folder that becomes ``target``): if it fills the disk,
    ``partial`` is removed and :func:`disk_full_error` raised instead (one line naming ``target``'s folder)."""
    partial = Path(partial)
    try:
        yield
    except Exception as error:
        if not is_disk_full(error):
            raise
        written = size_on_disk(partial)
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise disk_full_error(Path(target).parent, written=written, needed=needed) from error


def checkpoint_size(output_dir: str | os.PathLike) -> int | None:
    """Bytes of the newest ``checkpoint-N`` folder in ``output_dir`` (the next one needs as much), or ``None``."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    if not found:
        return None
    return size_on_disk(max(found, key=lambda p: int(p.name.split("-", 1)[1])))
