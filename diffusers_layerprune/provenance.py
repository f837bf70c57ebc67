"""Where models came from, recorded without exposing the user's machine.

Files that ``push`` uploads (configs, ``importance.json``, ``distill_config.json``, ``report.json/.md``, the card)
name models, prompt sets and scorers by their *public name*: a Hub id or short name as given, a local folder or
file by its name only (:func:`public_name`). The full local path is kept in the folder's hidden marker
(``outputs.MARKER``, never uploaded), so local tools still find the teacher: :func:`local_source` reads it back and
:func:`restore_local_source` puts it into a loaded transformer's config. ``push`` checks every file it would upload
for local paths of this machine before uploading anything (:func:`find_local_paths`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .config_record import hide_record, is_model_config, stored_name

# Pipeline component folders: ``<pipeline>/vae`` is named after ``<pipeline>``.
COMPONENT_FOLDERS = {"transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"}
# Config keys in which diffusers / transformers / this package record where a model was loaded from.
SOURCE_KEYS = ("_name_or_path", "name_or_path", "source_model", stored_name("source_model"))
_HUB_CACHE = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]")


def _is_local(text: str) -> bool:
    """Whether ``text`` names a local path rather than a Hub id (``org/name``) or a short name (``toy``)."""
    expanded = os.path.expanduser(text)
    return (
        os.path.isabs(expanded)
        or text.startswith((".", "~"))
        or "\\" in text
        or text.count("/") > 1
        or os.path.exists(expanded)
    )


def public_name(value: str | os.PathLike | None) -> str | None:
    """What a file that may be uploaded records for a model, prompt set or scorer ``value``.

    Hub ids and short names are kept as they are; a Hub cache path becomes its ``org/name``; a local path becomes
    its folder (or file) name, with a pipeline component folder (``.../teacher/vae``) named after its pipeline; the
    bundled toy pipeline is ``toy``.
    """
    if value is None:
        return None
    text = str(value).rstrip("/\\")
    if not text:
        return text
    cached = _HUB_CACHE.search(text)
    if cached:
        return f"{cached[1]}/{cached[2]}"
    if not _is_local(text):
        return text
    parts = [p for p in re.split(r"[/\\]", os.path.expanduser(text)) if p not in ("", ".")]
    from .toy.paths import assets_dir

    try:
        if Path(text).expanduser().resolve().is_relative_to(assets_dir().resolve()):
            return "toy"
    except (OSError, RuntimeError):
        pass
    if len(parts) > 1 and parts[-1] in COMPONENT_FOLDERS:
        parts = parts[:-1]
    name = parts[-1] if parts else text
    return Path(os.path.abspath(os.path.expanduser(text))).name if name == ".." else name


def publish_configs(folder: str | os.PathLike) -> list[Path]:
    """Replace local paths in the source keys (``_name_or_path``, ``source_model``) of a saved pipeline's JSON
    configs (``model_index.json``, ``<component>/*.json``) by their public names, and store a model config's
    kept-block record under its quiet names (``config_record``); returns the files changed."""
    folder = Path(folder)
    changed = []
    for path in [*folder.glob("*.json"), *folder.glob("*/*.json")]:
        if path.name.startswith(".") or path.is_symlink():
            continue
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        fixed = {k: public_name(v) if k in SOURCE_KEYS and isinstance(v, str) else v for k, v in data.items()}
        if path.name == "config.json" and is_model_config(fixed):  # a stock class saved it: store the record quietly
            fixed = hide_record(fixed)
        if fixed != data:
            path.write_text(json.dumps(fixed, indent=2, sort_keys=True) + "\n")
            changed.append(path)
    return changed


def local_inputs(*models: str | os.PathLike | None) -> list[str]:
    """The local paths a command reads (models, files), which its outputs must stay apart from: each given value,
    and for the short name ``toy`` the bundled pipeline's folder."""
    from .aliases import ALIAS_FOLDERS, MODEL_ALIASES

    inputs = []
    for model in filter(None, models):
        name = str(model)
        if name in ALIAS_FOLDERS:  # a short name is never a folder of the working directory (./toy is)
            inputs.append(str(ALIAS_FOLDERS[name]()))
        elif name not in MODEL_ALIASES:  # built in code: nothing local is read
            inputs.append(name)
    return inputs


def full_local(value: str | os.PathLike | None) -> str | None:
    """An existing local path made absolute (links kept), anything else (Hub id, short name) as given."""
    if value is None:
        return None
    from .aliases import MODEL_ALIASES

    if str(value) in MODEL_ALIASES:  # a short name stays one, whatever folders the working directory holds
        return str(value)
    text = os.path.expanduser(str(value))
    return os.path.abspath(text) if os.path.exists(text) else str(value)


def local_source(folder: str | os.PathLike, key: str = "source_model") -> str | None:
    """The full local path (or Hub id) recorded under ``key`` in ``folder``'s marker, when it still exists here."""
    from .outputs import read_marker

    marker = read_marker(folder) if folder is not None and Path(folder).is_dir() else None
    value = (marker or {}).get("local", {}).get(key)
    if value is None:
        return None
    return value if not _is_local(value) or Path(value).exists() else None


def restore_local_source(transformer, folder: str | os.PathLike, *fallbacks: str | None) -> None:
    """Put the full source of ``transformer`` back into its in-memory config (``source_model``).

    The saved config holds the public name only; the full path comes from the marker of ``folder`` (the pipeline it
    was loaded from) or, failing that, from the first of ``fallbacks`` (e.g. the teacher given for distillation)
    whose public name matches the recorded one.
    """
    recorded = transformer.config.get("source_model")
    if recorded is None:
        return
    for candidate in (local_source(folder), *fallbacks):
        if candidate and str(candidate) != recorded and public_name(candidate) == recorded:
            transformer.register_to_config(source_model=str(candidate))
            return


# ----------------------------------------------------------------------------------------------------------------
# Upload check
# ----------------------------------------------------------------------------------------------------------------


def _prefix(path: Path) -> str | None:
    """The first two components of an absolute path (``/home/alice``, ``/tmp/pytest-of-alice``), or ``None``."""
    parts = path.parts
    return str(Path(*parts[:3])) if len(parts) >= 3 else None


def local_path_needles(folder: str | os.PathLike, extra: Iterable[str] = ()) -> list[str]:
    """Path prefixes that identify this machine's files for ``folder``: those of the folder (as given and resolved),
    the home and current folders, this package's install location, and the full local paths kept in the marker."""
    from .outputs import read_marker

    folder = Path(folder)
    paths = [Path(os.path.abspath(folder)), folder.resolve(), Path.home(), Path.cwd(), Path(__file__).resolve()]
    marker = read_marker(folder) or {}
    paths += [Path(v) for v in [*marker.get("local", {}).values(), *extra] if os.path.isabs(str(v))]
    needles = {_prefix(p) for p in paths}
    return sorted(n for n in needles if n)


def _readable_bytes(path: Path, limit: int = 64 * 2**20) -> bytes:
    """The whole file, or for a large ``.safetensors`` file its header (where metadata strings live)."""
    size = path.stat().st_size
    if size <= limit:
        return path.read_bytes()
    with path.open("rb") as f:
        if path.suffix == ".safetensors":
            header = int.from_bytes(f.read(8), "little")
            return f.read(min(header, limit))
        return f.read(limit)


def find_local_path(data: bytes | str, needles: Iterable[str]) -> str | None:
    """The first needle that occurs in ``data`` as a path (followed by a separator, a quote or the end)."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    for needle in needles:
        for variant in {needle, needle.replace("/", "\\/")}:  # JSON may escape slashes
            if re.search(re.escape(variant) + r"(?![\w.-])", text):
                return needle
    return None


def find_local_paths(folder: Path, files: Iterable[str], needles: Iterable[str]) -> tuple[str, str] | None:
    """``(relative file, needle)`` for the first of ``files`` (relative to ``folder``) holding a local path."""
    needles = list(needles)
    for rel in files:
        found = find_local_path(_readable_bytes(folder / rel), needles)
        if found:
            return rel, found
    return None
