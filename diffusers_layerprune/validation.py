"""Checks every entry point runs before it loads a model or creates anything: argument types for ranges, a
one-line argparse error, image sizes the model can produce, and the integrity of the package's own artifacts
(pruned model folders). The CLI and the training script use these same helpers, so a mistake reads the same
everywhere: one line, exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .errors import LayerPruneError, first_line

# ----------------------------------------------------------------------------------------------------------------
# argparse: one-line errors and range types
# ----------------------------------------------------------------------------------------------------------------


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``prog: error: message``, exit 2), without the usage block:
    the same shape as every other error of the package. ``--help`` still shows the usage."""

    def error(self, message: str):  # noqa: D401 (argparse's name)
        from .launch import report_error

        report_error(self.prog, message)  # launched by `layerprune run`: that process says it, once
        self.exit(2)


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, batch sizes, prompt counts)."""
    return _in_range(_int(text), lambda v: v >= 1, "must be a positive integer", text)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (e.g. a step count where 0 means "skip")."""
    return _in_range(_int(text), lambda v: v >= 0, "must be 0 or more", text)


def any_int(text: str) -> int:
    """Any integer (seeds)."""
    return _int(text)


def finite_float(text: str) -> float:
    """A finite float (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def weight_list(text: str) -> list[float]:
    """Comma-separated finite numbers >= 0, not all 0, such as ``2,1,1`` (relative weights)."""
    try:
        weights = [float(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected weights such as 2,1,1, got {text!r}") from None
    if not weights or min(weights) < 0 or sum(weights) <= 0 or not all(math.isfinite(w) for w in weights):
        raise argparse.ArgumentTypeError(f"expected finite weights >= 0, not all 0, such as 2,1,1, got {text!r}")
    return weights


def non_negative_float(text: str) -> float:
    """A finite float >= 0 (loss weights, guidance, weight decay)."""
    return _in_range(finite_float(text), lambda v: v >= 0, "must be 0 or more", text)


def positive_float(text: str) -> float:
    """A finite float > 0 (learning rates, epsilons)."""
    return _in_range(finite_float(text), lambda v: v > 0, "must be greater than 0", text)


def open_fraction(text: str) -> float:
    """A fraction strictly between 0 and 1 (the share of blocks to remove)."""
    return _in_range(finite_float(text), lambda v: 0.0 < v < 1.0, "must be between 0 and 1 (exclusive)", text)


def revision_name(text: str) -> str:
    """A Hub revision: a branch, tag or commit name as git allows it. Refused: empty, ``..`` (a name that walks out of
    the repo, and out of the download cache's folder), a leading or trailing ``/``, ``//``, backslashes, blanks and
    the characters git forbids (``~^:?*[``)."""
    bad = (
        not text
        or ".." in text
        or text.startswith("/")
        or text.endswith(("/", ".lock", "."))
        or "//" in text
        or any(c in text for c in "\\~^:?*[ \t\n")
        or any(ord(c) < 32 or ord(c) == 127 for c in text)
    )
    if bad:
        raise argparse.ArgumentTypeError(f"{text!r} is not a branch, tag or commit name")
    return text


def beta(text: str) -> float:
    """An Adam beta in [0, 1)."""
    return _in_range(finite_float(text), lambda v: 0.0 <= v < 1.0, "must be in [0, 1)", text)


def dropout(text: str) -> float:
    """A dropout probability in [0, 1)."""
    return _in_range(finite_float(text), lambda v: 0.0 <= v < 1.0, "must be in [0, 1)", text)


def _in_range(value, accept, must: str, text: str):
    """``value`` (parsed from ``text``) when ``accept(value)``, else the one-line argparse error "MUST, got TEXT"."""
    if not accept(value):
        raise argparse.ArgumentTypeError(f"{must}, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


# ----------------------------------------------------------------------------------------------------------------
# Names of choices the training script offers (here, without torch, so that its --help stays instant)
# ----------------------------------------------------------------------------------------------------------------

CACHE_DTYPE_NAMES = ("bfloat16", "float16", "float32")
"""Dtypes the cached text embeddings and latents may be stored in (``data.CACHE_DTYPES`` maps them to torch's)."""
FEATURE_LOSS_NAMES = ("mse", "normalized")
"""Block-feature losses of the distillation (``distill.FEATURE_LOSSES``)."""


# ----------------------------------------------------------------------------------------------------------------
# Sizes a model can produce
# ----------------------------------------------------------------------------------------------------------------


def check_resolution(resolution: int | None, transformer_config: dict | None, vae_scale_factor: int | None) -> None:
    """Refuse an image side the VAE and the transformer's patches cannot tile: it must be a multiple of
    ``vae_scale_factor * patch_size`` (16 px for PixArt-Sigma). ``None`` (the model's own size), or a model whose
    sizes are not known before loading, is not checked here."""
    if resolution is None or transformer_config is None or vae_scale_factor is None:
        return
    step = vae_scale_factor * int(transformer_config.get("patch_size") or 1)
    if resolution < step or resolution % step:
        lower = max(step, resolution // step * step)
        raise LayerPruneError(
            f"--resolution {resolution} is not a multiple of {step} (VAE factor {vae_scale_factor} x patch size "
            f"{transformer_config.get('patch_size')}); use e.g. {lower} or {lower + step}"
        )


def vae_scale_factor_of(pipeline_folder: str | os.PathLike | None) -> int | None:
    """The VAE's downsampling factor of a pipeline folder, from ``vae/config.json``; ``None`` when not readable."""
    if pipeline_folder is None:
        return None
    try:
        config = json.loads((Path(pipeline_folder) / "vae" / "config.json").read_text())
        return 2 ** (len(config["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# Model paths (no torch: a mistyped path is refused before any heavy import)
# ----------------------------------------------------------------------------------------------------------------


def looks_like_path(name: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything else that does not exist is a mistyped local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def is_transformer_folder(path: str | os.PathLike) -> bool:
    """A single-model folder (``config.json`` + weights, no ``model_index.json``): a transformer saved alone, as
    ``--transformer-only`` writes it."""
    path = Path(path).expanduser()
    return (path / "config.json").is_file() and not (path / "model_index.json").is_file()


def resolve_local_model(name: str) -> Path | None:
    """The local pipeline or transformer folder ``name`` points to, ``None`` for a Hub id; raises for a broken
    local path. Short names (``toy``) are the caller's to handle first."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file() and not is_transformer_folder(path):
            raise LayerPruneError(
                f"{name} is not a diffusers pipeline folder (no model_index.json) nor a transformer folder "
                "(no config.json)"
            )
        return path
    if looks_like_path(name):
        raise LayerPruneError(f"model path {name} does not exist")
    return None


def check_model_path(model: str | os.PathLike | None) -> None:
    """Refuse a model argument that is written as a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``) but is missing
    or not a model folder. Imports nothing heavy, so the command line runs it before loading torch; short names and
    Hub ids are checked when they are loaded."""
    if model is not None and looks_like_path(str(model)):
        resolve_local_model(str(model))


# ----------------------------------------------------------------------------------------------------------------
# Integrity of pruned model folders
# ----------------------------------------------------------------------------------------------------------------


def check_transformer_config(config: dict, source: str, depth_keys: tuple[str, ...] = ("num_layers",)) -> None:
    """Refuse a transformer config whose pruning record contradicts itself: ``kept_layers`` must have one entry per
    block (the sum of the ``depth_keys``, e.g. Flux's ``num_layers + num_single_layers``), strictly increasing, within
    ``0..source_num_layers-1``."""
    for key in depth_keys:
        value = config.get(key)
        if not isinstance(value, int) or value < 1:
            raise LayerPruneError(f"{source}: {key} must be a positive integer, got {value!r}")
    depth = sum(config[key] for key in depth_keys)
    kept = config.get("kept_layers")
    if kept is None:
        return
    where = f"{source} (edit it back or prune the source model again)"
    if not isinstance(kept, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
        raise LayerPruneError(f"kept_layers in {where} must be a list of block indices, got {kept!r}")
    if len(kept) != depth:
        what = " + ".join(depth_keys)
        raise LayerPruneError(f"kept_layers in {where} has {len(kept)} entries but {what} is {depth}")
    if any(b <= a for a, b in zip(kept[:-1], kept[1:], strict=True)):
        raise LayerPruneError(f"kept_layers in {where} must be strictly increasing, got {kept}")
    total = config.get("source_num_layers")
    if total is not None and (not isinstance(total, int) or total < depth):
        raise LayerPruneError(f"source_num_layers in {where} must be an integer >= num_layers, got {total!r}")
    if kept and (kept[0] < 0 or (total is not None and kept[-1] >= total)):
        raise LayerPruneError(f"kept_layers in {where}: {kept} out of range for a source of {total} blocks")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_no_pickled_weights(folder: str | os.PathLike) -> None:
    """Refuse a model folder (or any of its component folders) whose weights are pickles without a safetensors copy:
    loading would unpickle them, and a pickle runs code when it is opened. Nothing is read but file names."""
    folder = Path(folder)
    parts = [folder]
    index = folder / "model_index.json"
    if index.is_file():  # the component folders diffusers loads (not checkpoints, logs or validation images)
        try:
            components = json.loads(index.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            components = {}
        parts += [folder / k for k, v in components.items() if isinstance(v, list) and (folder / k).is_dir()]
    for part in parts:
        pickles = sorted(p for p in part.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        if pickles and not any(part.glob("*.safetensors")):
            raise LayerPruneError(
                f"{pickles[0]} holds pickled weights, which layerprune never loads (opening a pickle can run code): "
                "use the model's .safetensors files, or convert it where you trust its source "
                "(from_pretrained(...).save_pretrained(...) writes safetensors)"
            )


def damaged_weight_file(file: str | os.PathLike) -> str | None:
    """Why ``file`` cannot be read, or ``None``: a ``.safetensors`` file's header is read (safetensors refuses a
    header that does not cover the file, so a truncated file is found without reading the weights); a file that
    ``torch.save`` wrote (``.bin``, ``.pkl``, ``.pt`` of a training checkpoint) must be a whole zip archive (its index
    sits at the end: a truncated file has none). Nothing is unpickled."""
    file = Path(file)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), "pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as error:
            return first_line(error)
        return None
    import zipfile

    try:
        with zipfile.ZipFile(file) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"not a whole torch.save archive: {error}"
    return None


def check_weight_files(folder: str | os.PathLike, suffixes: tuple[str, ...] = (".safetensors",)) -> None:
    """Refuse, naming the file, a damaged or truncated weight file anywhere under ``folder`` (see
    :func:`damaged_weight_file`), before anything is loaded from it."""
    for file in sorted(Path(folder).rglob("*")):
        if file.suffix in suffixes and file.is_file():
            reason = damaged_weight_file(file)
            if reason:
                kind = "a safetensors file" if file.suffix == ".safetensors" else "whole"
                raise LayerPruneError(f"{file} is damaged or not {kind} ({reason}); re-create or re-download it")


def check_weights_cover_blocks(
    folder: str | os.PathLike, num_layers: int, block_attr: str = "transformer_blocks"
) -> None:
    """Read the safetensors headers of a transformer folder (no weights loaded) and refuse a damaged file or weights
    whose blocks do not match ``num_layers`` (a hand-edited config would load random or missing blocks)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        check_no_pickled_weights(folder)
        raise LayerPruneError(f"{folder} has no .safetensors weights")
    blocks: set[int] = set()
    for file in files:
        try:
            with safe_open(str(file), "pt") as f:
                keys = list(f.keys())
        except (SafetensorError, OSError, ValueError) as error:
            raise LayerPruneError(
                f"{file} is damaged or not a safetensors file ({first_line(error)}); re-create or re-download it"
            ) from error
        for key in keys:
            if key.startswith(block_attr + "."):
                index = key.split(".", 2)[1]
                if index.isdigit():
                    blocks.add(int(index))
    if blocks != set(range(num_layers)):
        found = f"{len(blocks)} blocks (indices {min(blocks)}..{max(blocks)})" if blocks else "no blocks"
        raise LayerPruneError(
            f"{folder}: the weights hold {found} of {block_attr} but config.json says {num_layers}; the config was edited "
            "or the weights are from another model"
        )


# ----------------------------------------------------------------------------------------------------------------
# Debugging
# ----------------------------------------------------------------------------------------------------------------


def debug_enabled(argv: list[str] | None = None) -> bool:
    """Tracebacks instead of one-line errors: ``--debug`` on the command line or ``LAYERPRUNE_DEBUG=1``."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("LAYERPRUNE_DEBUG", "") not in ("", "0")
