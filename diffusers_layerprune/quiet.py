"""Quiet library output: what ``layerprune`` shows by default is its own stage lines, one progress bar per stage
and the final tables; ``--verbose`` brings back the libraries' INFO lines and their loading bars."""

from __future__ import annotations

import importlib.abc
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _quiet_diffusers() -> None:
    from diffusers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _quiet_transformers() -> None:
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    enable_progress_bars()  # transformers turns huggingface_hub's bars off too: downloads stay visible (see below)


# huggingface_hub's bars are left on: they show downloads from the Hub, the longest wait of a real run (a
# PixArt-Sigma pipeline is ~20 GB), and without them a first run looks frozen. They show nothing for cached files.


def _quiet_datasets() -> None:
    from datasets import disable_progress_bars

    disable_progress_bars()


_QUIETERS: dict[str, Callable[[], None]] = {
    "transformers": _quiet_transformers,
    "diffusers": _quiet_diffusers,
    "datasets": _quiet_datasets,
}


class _WhenImported(importlib.abc.MetaPathFinder):
    """Runs a function right after a top-level package is first imported: the command line quiets the libraries
    without importing them, so a command that stops at a one-line error never pays for them (~10 CPU-seconds)."""

    def __init__(self) -> None:
        self.pending: dict[str, Callable[[], None]] = {}

    def find_spec(self, fullname, path=None, target=None):
        # Libraries probe each other with importlib.util.find_spec without importing: act only when the module runs.
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if finder is not self and find else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_quiet(module) -> None:
            exec_module(module)
            action = self.pending.pop(fullname, None)
            if not self.pending and self in sys.meta_path:
                sys.meta_path.remove(self)
            if action is not None:
                action()

        loader.exec_module = exec_then_quiet
        return spec


_hook = _WhenImported()

# Loggers that speak while a library is being imported, before any quieting after the import can act: torchao's CPU
# builds report their CUDA-only kernels as "Failed to load ...so", torch warns about torchao's Enum registrations, and
# diffusers says it cannot use torchao's tensor types. Environment noise, not about the user's model; a level set on
# these loggers before the import holds.
IMPORT_TIME_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")


def quiet_libraries() -> None:
    """diffusers and transformers log errors only; their bars (loading components and weights, writing shards) and
    those of datasets are off; huggingface_hub's download bars stay on. For the rest of the process. A library not imported yet is
    quieted when it is first imported (this call imports none of them)."""
    for name in IMPORT_TIME_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name, apply in _QUIETERS.items():
        if name in sys.modules:
            apply()
        else:
            _hook.pending[name] = apply
    if _hook.pending and _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


@contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """:func:`quiet_libraries` inside the block (when ``enabled``); the libraries' settings are restored after."""
    if not enabled:
        yield
        return
    import datasets
    import huggingface_hub
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = (
        diffusers_logging.get_verbosity(),
        transformers_logging.get_verbosity(),
        diffusers_logging.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
        huggingface_hub.utils.are_progress_bars_disabled(),
        datasets.is_progress_bar_enabled(),
    )
    quiet_libraries()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])
        if before[2]:
            diffusers_logging.enable_progress_bar()
        if before[3]:
            transformers_logging.enable_progress_bar()
        if not before[4]:
            huggingface_hub.utils.enable_progress_bars()
        if before[5]:
            datasets.enable_progress_bars()
