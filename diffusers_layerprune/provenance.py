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
    bundled toy pipelines are ``toy`` and ``toy-flux``.
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
    from .aliases import ALIAS_FOLDERS
    from .toy.paths import assets_dir

    try:
        resolved = Path(text).expanduser().resolve()
        for alias, folder in ALIAS_FOLDERS.items():  # toy-flux's folder is inside the assets too
            if alias != "toy" and resolved.is_relative_to(folder().resolve()):
                return alias
        if resolved.is_relative_to(assets_dir().resolve()):
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
# Upload check: every file that push would send is searched for absolute paths of a machine
# ----------------------------------------------------------------------------------------------------------------

# Top-level folders that hold a user's or a run's own files on the usual systems (Linux, macOS, clusters, notebooks):
# a path under one of them names someone's machine even when it does not exist here.
PRIVATE_ROOTS = frozenset(
    {"root", "home", "Users", "tmp", "var", "private", "work", "workspace", "mnt", "media", "scratch", "data",
     "content", "kaggle", "nfs", "gpfs", "lustre", "srv", "opt", "storage", "shared", "run", "Volumes"}
)  # fmt: skip
# A path part: no blanks, quotes, brackets, separators or characters that end a path in prose or code.
_PART = r"[^\s\"'`<>|;,()\[\]{}*?=:/\\]+"
# /a/b... not preceded by a character that makes it part of a URL, a fraction or a word (http://x/y, 1/2, a/b).
_POSIX = re.compile(rf"(?<![\w.:/\\~@+%-])/{_PART}(?:/{_PART})+/?")
_WINDOWS = re.compile(rf"(?<![\w])[A-Za-z]:(?:\\\\|\\|/){_PART}(?:(?:\\\\|\\|/){_PART})*")
_UNC = re.compile(rf"(?<![\w\\])\\\\{_PART}(?:\\{_PART})+")
_TILDE = re.compile(rf"(?<![\w/])~[\w.-]*/{_PART}(?:/{_PART})*")
_FILE_URL = re.compile(r"file:/+[^\s\"'<>]+")
# Trailing characters that end a sentence, not a path ("saved in /tmp/run.").
_TRAILING = ".,"


def _is_machine_path(candidate: str, roots: frozenset[str]) -> bool:
    """Whether a POSIX-looking ``/a/b...`` names a machine's files: under a private root (``/home/x``, ``/root/...``,
    ``/tmp/...``) or under a top-level folder that exists on this machine (``/usr/...``, a cluster's ``/gpfs``)."""
    first = candidate.split("/")[1]
    return first in roots or os.path.isdir("/" + first)


def find_machine_paths(text: str, roots: Iterable[str] = ()) -> list[str]:
    """Every absolute path of a machine in ``text``, in order: POSIX paths of at least two parts under a private or
    existing top-level folder, Windows drive and UNC paths, ``~`` paths and ``file:`` URLs. URLs (``https://...``),
    Hub ids (``org/name``) and fractions are not paths. ``roots`` adds top-level folders to treat as private."""
    roots = PRIVATE_ROOTS | frozenset(roots)
    found: list[tuple[int, str]] = []
    taken: list[range] = []
    for pattern in (_FILE_URL, _WINDOWS, _UNC, _TILDE, _POSIX):
        for match in pattern.finditer(text):
            span = range(match.start(), match.end())
            if any(match.start() in t for t in taken):
                continue
            value = match.group().rstrip(_TRAILING)
            if pattern is _POSIX and not _is_machine_path(value, roots):
                continue
            found.append((match.start(), value))
            taken.append(span)
    return [value for _, value in sorted(found)]


def path_replacement(path: str) -> str:
    """What an uploaded file says instead of the machine path ``path``: its public name (``/root/models/teacher`` ->
    ``teacher``, a Hub cache path -> ``org/name``, ``file:///x/y.txt`` -> ``y.txt``)."""
    text = re.sub(r"^file:/+", "/", path)
    return public_name(text) or "."


def _roots_of(folder: str | os.PathLike, extra: Iterable[str] = ()) -> frozenset[str]:
    """Top-level folders of the paths this folder is known to come from: the folder itself, the home and current
    folders, the package's install location and the full local paths kept in the marker (never uploaded)."""
    from .outputs import read_marker

    folder = Path(folder)
    paths = [os.path.abspath(folder), str(folder.resolve()), str(Path.home()), os.getcwd(), __file__]
    marker = read_marker(folder) or {}
    paths += [str(v) for v in [*marker.get("local", {}).values(), *extra] if os.path.isabs(str(v))]
    return frozenset(Path(p).parts[1] for p in paths if len(Path(p).parts) > 1)


def _rewrite_text(text: str, roots: frozenset[str], changes: list[tuple[str, str]]) -> str:
    """``text`` with every machine path replaced by :func:`path_replacement`; ``changes`` collects (old, new)."""
    for path in dict.fromkeys(find_machine_paths(text, roots)):
        new = path_replacement(path)
        changes.append((path, new))
        text = text.replace(path, new)
    return text


def _rewrite_json(value, roots: frozenset[str], changes: list, aliases: dict[str, str], key: str | None = None):
    """``value`` (parsed JSON) with machine paths in every string, key and nested value rewritten; a source key
    (``_name_or_path``, ``source_model``) whose public name has a Hub id in ``aliases`` gets that id."""
    if isinstance(value, dict):
        return {
            _rewrite_text(k, roots, changes): _rewrite_json(v, roots, changes, aliases, key=k) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_json(v, roots, changes, aliases) for v in value]
    if isinstance(value, str):
        if key in SOURCE_KEYS and find_machine_paths(value, roots):
            new = aliases.get(public_name(value)) or public_name(value)
            changes.append((value, new))
            return new
        return _rewrite_text(value, roots, changes)
    return value


# Files an upload cannot do without: a machine path in them refuses the push (they cannot be rewritten safely).
ESSENTIAL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".model", ".msgpack", ".h5")
# Text files whose format is known well enough to rewrite paths in place.
TEXT_SUFFIXES = (".md", ".txt", ".py", ".yaml", ".yml", ".csv", ".tsv", ".cfg", ".ini", ".toml", ".html", ".svg")


def binary_strings(data: bytes, suffix: str) -> str:
    """What of a binary file's bytes may hold a path: a ``.safetensors`` file's header (its metadata), else its runs
    of six or more printable ASCII characters, one per line (as ``strings`` shows them: random bytes of weights or
    images do not make paths)."""
    if suffix == ".safetensors":
        size = int.from_bytes(data[:8], "little")
        return data[8 : 8 + size].decode("utf-8", errors="replace")
    return "\n".join(run.decode("ascii") for run in re.findall(rb"[\x20-\x7e]{6,}", data))


def _binary_strings(path: Path, limit: int = 64 * 2**20) -> str:
    """:func:`binary_strings` of ``path``, reading a ``.safetensors`` file's header only and at most ``limit`` bytes of
    another; pickles (``.bin``, ``.pt``) are not read: weights hold no metadata strings to leak."""
    suffix = path.suffix.lower()
    if suffix in (".bin", ".pt", ".pth", ".ckpt"):
        return ""
    if suffix == ".gguf":
        return _gguf_strings(path)
    with path.open("rb") as f:
        if suffix == ".safetensors":
            head = f.read(8)
            return binary_strings(head + f.read(min(int.from_bytes(head, "little"), limit)), suffix)
        return binary_strings(f.read(limit), suffix)


def _gguf_strings(path: Path) -> str:
    """A GGUF file's metadata (every key, every string value, tensor names), one per line: its tensor data is
    quantized weights, whose bytes can spell a path by chance. A file the reader cannot parse is scanned whole."""
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
        lines = []
        for field in reader.fields.values():
            lines.append(field.name)
            value = field.contents()
            values = value if isinstance(value, list) else [value]
            lines += [v for v in values if isinstance(v, str)]
        lines += [tensor.name for tensor in reader.tensors]
        return "\n".join(lines)
    except Exception:  # not GGUF after all (or an older reader): the printable runs, as for any binary file
        with path.open("rb") as f:
            return binary_strings(f.read(64 * 2**20), path.suffix)


def clean_upload_file(
    path: Path, rel: str, roots: frozenset[str], aliases: dict[str, str]
) -> tuple[str, bytes | None, list[tuple[str, str]]]:
    """How ``path`` (``rel`` in the folder) goes up, decided by what it holds.

    Returns ``(verdict, data, changes)``: ``("as is", None, [])``; ``("rewritten", new bytes, [(old, new)])`` for a
    JSON or text file whose machine paths were replaced by public names; ``("left out", None, [(path, "")])`` for
    another file holding one (a log, an image); ``("refused", None, [(path, "")])`` for a weights or tokenizer file
    holding one, which an upload cannot do without.
    """
    suffix = path.suffix.lower()
    raw = path.read_bytes() if suffix in (".json", *TEXT_SUFFIXES) or path.stat().st_size < 2**20 else None
    text = None
    if raw is not None and suffix not in ESSENTIAL_SUFFIXES:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is not None and "\x00" not in text:
        changes: list[tuple[str, str]] = []
        if suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = None
            if data is not None:
                fixed = _rewrite_json(data, roots, changes, aliases)
                if not changes:
                    return "as is", None, []
                return "rewritten", (json.dumps(fixed, indent=2, ensure_ascii=False) + "\n").encode(), changes
        fixed = _rewrite_text(text, roots, changes)
        if not changes:
            return "as is", None, []
        return "rewritten", fixed.encode(), changes
    found = find_machine_paths(_binary_strings(path), roots)
    if not found:
        return "as is", None, []
    top = rel.split("/", 1)[0]
    essential = suffix in ESSENTIAL_SUFFIXES or top in COMPONENT_FOLDERS or "/" not in rel and suffix == ".safetensors"
    return ("refused" if essential else "left out"), None, [(found[0], "")]
