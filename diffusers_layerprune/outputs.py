"""Writing outputs so that nothing is left half-written: every folder or file appears complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LayerPruneError


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Fail early (before any heavy work) when ``path`` cannot be written as an output folder."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise LayerPruneError(f"output {path} exists and is a file, not a folder")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise LayerPruneError(f"output folder {path} already exists; pass --overwrite to replace it")
    return path


@contextmanager
def atomic_output_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it to ``path`` only if the block finishes without error.

    With ``overwrite`` an existing ``path`` is replaced after the new folder is complete; on failure the temporary
    folder is removed and ``path`` is left as it was.
    """
    path = check_output_dir(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
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


@contextmanager
def atomic_output_file(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it onto ``path`` when the block succeeds."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise LayerPruneError(f"output {path} is a folder, expected a file path")
    if path.exists() and not overwrite:
        raise LayerPruneError(f"output file {path} already exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
