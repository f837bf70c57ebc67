"""One base for every JSON record the package writes (importance, evaluation report, routing, sparsity, distillation
settings and checkpoints, run state, caches, adapter records), so that a record mistake is caught the same way
everywhere.

A record is a dataclass deriving from :class:`Record`. Written, it carries three keys besides its own:
``kind`` (what it is), ``schema_version`` (the layout of its keys) and ``tool_version`` (the diffusers-layerprune
that wrote it); records that had a ``format`` / ``format_version`` pair before keep writing it, so older readers
still read new files. It is written atomically (a temporary file renamed into place) and read strictly: a file that
is not JSON or cut short, a missing key, a key of the wrong type, a schema newer than this package reads, a record of
another kind, and a record of another model than the one asked for each raise one
:class:`~diffusers_layerprune.errors.LayerPruneError` of one line naming the file and the fix. Files written before
the header existed (no ``schema_version``) read as version 1 (or as their ``format_version``).

This module imports nothing of the package but its errors and atomic writers, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import LayerPruneError
from .outputs import atomic_output_file

R = TypeVar("R", bound="Record")

HEADER_KEYS = ("kind", "schema_version", "tool_version")


def _type_names(types: type | tuple[type, ...]) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number",
             bool: "true or false", type(None): "null"}  # fmt: skip
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in types)


def _has_type(value: Any, types: type | tuple[type, ...]) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):  # JSON's true is no number
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def same_model(recorded: str, asked: str) -> bool:
    """Whether two spellings name the same model: Hub ids and short names as given, local paths by their folder name
    (records that may be uploaded keep the folder name only, see ``provenance.public_name``)."""

    def name(text: str) -> str:
        text = str(text).rstrip("/\\")
        local = os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or os.path.exists(text)
        return Path(os.path.abspath(os.path.expanduser(text))).name if local else text

    return name(recorded) == name(asked)


class Record:
    """Base of the package's JSON records; subclasses are dataclasses and set the class attributes below.

    Class attributes:
        KIND: what the record is, written as ``kind`` (``layer-importance``, ``eval-report``...).
        SCHEMA_VERSION: the layout this code writes and the newest it reads.
        WHAT: the record in words for messages (``importance file``).
        FIX: how a user makes a good one again (``write it again with `layerprune score```).
        REQUIRED: ``{key: type or tuple of types}`` every record of this kind holds (checked before decoding).
        OPTIONAL: keys a record may hold, type-checked when present and not null.
        FORMAT: the ``format`` value records of this kind carried before the header existed; when set, it is still
            written (with ``format_version``) and a file of another ``format`` is refused.
        FORMAT_REQUIRED: whether a file without header must carry ``FORMAT`` (older files of some kinds had none).
        WRITES_FORMAT_VERSION: write ``format_version`` (= ``SCHEMA_VERSION``) without ``FORMAT`` (kinds that had
            only that key).
        INDENT / SORT_KEYS: JSON layout of the file.

    Subclasses give their own keys with :meth:`body` / :meth:`from_body` (default: the dataclass fields as they
    are) and, when the record names the model it belongs to, :meth:`model_name`.
    """

    KIND: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "record"
    FIX: ClassVar[str] = "write it again"
    REQUIRED: ClassVar[Mapping[str, type | tuple[type, ...]]] = {}
    OPTIONAL: ClassVar[Mapping[str, type | tuple[type, ...]]] = {}
    FORMAT: ClassVar[str | None] = None
    FORMAT_REQUIRED: ClassVar[bool] = True
    WRITES_FORMAT_VERSION: ClassVar[bool] = False
    INDENT: ClassVar[int | None] = 2
    SORT_KEYS: ClassVar[bool] = False

    # -- what subclasses give ----------------------------------------------------------------------------------

    def body(self) -> dict:
        """The record's own keys (default: the dataclass fields, nested dataclasses as dicts)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_body(cls: type[R], data: dict) -> R:
        """Build the record from a dict that passed the checks (default: the dataclass fields found in ``data``)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    def model_name(self) -> str | None:
        """The model the record belongs to, when it names one (checked by ``load(..., model=)``)."""
        return None

    # -- writing ---------------------------------------------------------------------------------------------------

    def header(self) -> dict:
        from . import __version__

        legacy = {"format": self.FORMAT} if self.FORMAT else {}
        if self.FORMAT or self.WRITES_FORMAT_VERSION:
            legacy["format_version"] = self.SCHEMA_VERSION
        return {**legacy, "kind": self.KIND, "schema_version": self.SCHEMA_VERSION, "tool_version": __version__}

    def to_dict(self) -> dict:
        """The record as written: header keys first, then the record's own."""
        body = {k: v for k, v in self.body().items() if k not in HEADER_KEYS and k not in ("format", "format_version")}
        return {**self.header(), **body}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=self.INDENT, sort_keys=self.SORT_KEYS) + "\n"

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write the record to ``path`` atomically (complete or not at all)."""
        path = Path(path)
        with atomic_output_file(path, overwrite=overwrite) as tmp:
            tmp.write_text(self.to_json(), encoding="utf-8")
        return path

    # -- reading ---------------------------------------------------------------------------------------------------

    @classmethod
    def _refuse(cls, source: str, problem: str) -> LayerPruneError:
        return LayerPruneError(f"{source} {problem}; {cls.FIX}")

    @classmethod
    def _damaged(cls, source: str, problem: str) -> LayerPruneError:
        return cls._refuse(source, f"is damaged or hand-edited: {problem}")

    @classmethod
    def _wrong_type(cls, source: str, key: str, value: Any, types) -> LayerPruneError:
        return cls._damaged(source, f"{key} must be {_type_names(types)}, not {_type_names(type(value))}")

    @classmethod
    def check(cls, data: Any, source: str = "") -> dict:
        """Refuse ``data`` that is not a record of this kind and schema, or lacks a key, or holds one of a wrong
        type. Returns ``data``."""
        source = source or cls.WHAT
        if not isinstance(data, dict):
            raise cls._refuse(source, f"is not {_a(cls.WHAT)} (a JSON object was expected)")
        kind = data.get("kind")
        if kind is not None and kind != cls.KIND:
            raise cls._refuse(source, f"is {_a(str(kind))} record, not {_a(cls.WHAT)}")
        if cls.FORMAT is not None:
            if "format" in data and data["format"] != cls.FORMAT:
                raise cls._refuse(source, f"is not {_a(cls.WHAT)} (format {data['format']!r})")
            if "format" not in data and "schema_version" not in data and cls.FORMAT_REQUIRED:
                raise cls._refuse(source, f"is not {_a(cls.WHAT)} (no format key)")
        for key in ("schema_version", "format_version"):
            version = data.get(key, 1)
            if not _has_type(version, int):
                raise cls._wrong_type(source, key, version, int)
            if version > cls.SCHEMA_VERSION:
                raise LayerPruneError(
                    f"{source} was written by a newer diffusers-layerprune ({cls.WHAT} schema version {version}, this "
                    f"one reads up to {cls.SCHEMA_VERSION}); upgrade the package (pip install -U diffusers-layerprune)"
                )
        for key, types in cls.REQUIRED.items():
            if key not in data and "schema_version" not in data:  # an older file, or no record of ours at all
                raise cls._refuse(source, f"is not {_a(cls.WHAT)} (no {key!r} key)")
            if key not in data:
                raise cls._damaged(source, f"the key {key!r} is missing")
            if not _has_type(data[key], types):
                raise cls._wrong_type(source, key, data[key], types)
        for key, types in cls.OPTIONAL.items():
            if data.get(key) is not None and not _has_type(data[key], types):
                raise cls._wrong_type(source, key, data[key], types)
        return data

    @classmethod
    def from_dict(cls: type[R], data: Any, source: str = "", *, model: str | None = None) -> R:
        """The record held by ``data`` (as read from JSON), checked as :meth:`check` says; with ``model``, refuse a
        record that names another model."""
        source = source or cls.WHAT
        cls.check(data, source)
        body = {k: v for k, v in data.items() if k not in HEADER_KEYS and k not in ("format", "format_version")}
        try:
            record = cls.from_body(body)
        except LayerPruneError as error:
            if str(error).startswith(source):
                raise
            raise LayerPruneError(f"{source}: {error}") from error
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            what = f"missing key {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
            raise cls._damaged(source, what) from error
        recorded = record.model_name()
        if model is not None and recorded is not None and not same_model(recorded, str(model)):
            raise LayerPruneError(
                f"{source} is {_a(cls.WHAT)} of the model {recorded}, not of {model}; use the one made for {model}"
            )
        return record

    @classmethod
    def load(cls: type[R], path: str | os.PathLike, *, model: str | None = None) -> R:
        """Read the record at ``path`` (see :meth:`from_dict`); a missing file or one that is not JSON (or cut short)
        raises :class:`LayerPruneError`."""
        return cls.from_dict(read_json(path, cls.WHAT, cls.FIX), str(path), model=model)


def read_json(path: str | os.PathLike, what: str = "file", fix: str = "write it again") -> Any:
    """The JSON value in ``path``; a missing, unreadable, truncated or non-JSON file raises one line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LayerPruneError(f"{what} {path} does not exist; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = getattr(error, "msg", None) or str(error)
        raise LayerPruneError(
            f"{what} {path} is damaged: it is not valid JSON, or cut short ({reason}); {fix}"
        ) from error
