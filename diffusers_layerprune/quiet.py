"""Quiet library output: what ``layerprune`` shows by default is its own stage lines, one progress bar per stage
and the final tables; ``--verbose`` brings back the libraries' INFO lines and their loading bars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def quiet_libraries() -> None:
    """diffusers and transformers log errors only; their bars (loading components and weights, writing shards) and
    those of huggingface_hub and datasets are off. For the rest of the process."""
    import datasets
    import huggingface_hub
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    datasets.disable_progress_bars()


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
