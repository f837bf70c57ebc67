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


def pruned_target(source: str, pruned, output, *, overwrite: bool) -> tuple[list[str], dict, object]:
    """What an ``adapt-*`` command checks before reading the adapter ``source``: ``output`` may be written (not one
    of the inputs; an existing folder only with ``overwrite``) and ``pruned`` is a pruned model's folder. Returns
    ``(local inputs, the pruned transformer's config, its family)``."""
    from ..families import family_of_config
    from ..modeling import read_transformer_config
    from ..outputs import check_output_dir
    from ..provenance import local_inputs

    inputs = local_inputs(source, pruned)
    check_output_dir(output, overwrite=overwrite, inputs=inputs)
    config = read_transformer_config(pruned)
    if config is None or config.get("kept_layers") is None:
        raise LayerPruneError(
            f"{pruned} records no kept blocks (kept_layers): give a folder written by layerprune prune"
        )
    return inputs, config, family_of_config(config, str(pruned))
