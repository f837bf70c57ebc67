"""Where an adapter made for the parent model comes from: a local path or a Hub id, and the record of it that may be
uploaded (its public name, the Hub commit, the weights' sha256). Shared by ``adapt-lora``, ``adapt-controlnet`` and
``adapt-ip-adapter``; how each kind finds its weight file inside a folder or repo stays with the kind."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from ..errors import LayerPruneError


def local_or_hub(source: str, what: str, hint: str, download: Callable[[], Path]) -> tuple[Path, dict]:
    """``source`` as a local path, else as a Hub repo id fetched by ``download()`` (a path in the Hub cache), and the
    record ``{"source": public name[, "revision": commit of the cached snapshot]}``. A name that is neither an
    existing path nor shaped like ``org/name`` is refused with ``what`` and ``hint`` (what to give instead)."""
    from ..provenance import public_name

    path = Path(source).expanduser()
    record: dict = {"source": public_name(source)}
    if not path.exists():
        if str(source).count("/") != 1 or str(source).startswith((".", "/", "~")):
            raise LayerPruneError(f"{what} {source} does not exist ({hint})")
        path = download()
        parts = path.parts
        if "snapshots" in parts:
            record["revision"] = parts[parts.index("snapshots") + 1]
    return path, record


def file_sha256(path: str | Path) -> str:
    """The sha256 of a (possibly large) file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
