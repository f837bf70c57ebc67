"""Block surgery: where a model family keeps its blocks, skipping blocks, capturing block features.

Every criterion, the pruning code and the distillation losses reach a model's blocks through this module only,
so supporting another diffusion transformer (Sana, SD3, Flux) means adding one :class:`BlockLayout` to
:data:`BLOCK_LAYOUTS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import LayerPruneError


def _first_tensor(output):
    return output[0] if isinstance(output, (tuple, list)) else output


@dataclass(frozen=True)
class BlockLayout:
    """Where a model family keeps its stack of transformer blocks and how to read a block's hidden states.

    Attributes:
        attr: attribute name of the ``nn.ModuleList`` of blocks on the model.
        num_layers_key: config key holding the depth (kept equal to ``len(blocks)``).
        hidden_from_output: maps a block's return value to its image-token hidden states ``[B, N, D]``.
        hidden_input_name: keyword name of the hidden-states argument, when it is not passed positionally.
    """

    attr: str
    num_layers_key: str = "num_layers"
    hidden_from_output: Callable[[object], torch.Tensor] = field(default=_first_tensor)
    hidden_input_name: str = "hidden_states"


# Class name -> layout. Looked up along the model's MRO, so subclasses (PrunedPixArtTransformer) match.
BLOCK_LAYOUTS: dict[str, BlockLayout] = {
    "PixArtTransformer2DModel": BlockLayout(attr="transformer_blocks"),
}


def block_layout(model: nn.Module) -> BlockLayout:
    """Return the :class:`BlockLayout` of ``model``'s family, or raise a :class:`LayerPruneError`."""
    for klass in type(model).__mro__:
        layout = BLOCK_LAYOUTS.get(klass.__name__)
        if layout is not None:
            return layout
    supported = ", ".join(sorted(BLOCK_LAYOUTS))
    raise LayerPruneError(
        f"{type(model).__name__} is not a supported diffusion transformer (supported: {supported}); "
        "pass a PixArt-Sigma model or pipeline"
    )


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's ``nn.ModuleList`` of transformer blocks, in execution order."""
    return getattr(model, block_layout(model).attr)


def num_blocks(model: nn.Module) -> int:
    return len(get_blocks(model))


def resolve_kept_layers(
    num_layers: int, kept_layers: Iterable[int] | None = None, pruned_layers: Iterable[int] | None = None
) -> list[int]:
    """Validate a keep or drop list against a depth and return the sorted kept block indices.

    Exactly one of ``kept_layers`` / ``pruned_layers`` must be given. Raises :class:`LayerPruneError` for indices
    out of range, duplicates, an empty kept set, or a kept set that is the whole model (nothing pruned).
    """
    if (kept_layers is None) == (pruned_layers is None):
        raise LayerPruneError("give exactly one of kept_layers (blocks to keep) or pruned_layers (blocks to drop)")
    given = list(kept_layers if kept_layers is not None else pruned_layers)
    what = "kept_layers" if kept_layers is not None else "pruned_layers"
    for index in given:
        if isinstance(index, bool) or not isinstance(index, int):
            raise LayerPruneError(f"{what} must hold integers, got {index!r}")
    bad = [i for i in given if not 0 <= i < num_layers]
    if bad:
        raise LayerPruneError(
            f"{what} {bad} out of range: the model has {num_layers} blocks, indices 0..{num_layers - 1}"
        )
    duplicates = sorted({i for i in given if given.count(i) > 1})
    if duplicates:
        raise LayerPruneError(f"{what} lists block(s) {duplicates} more than once")
    kept = sorted(given) if kept_layers is not None else [i for i in range(num_layers) if i not in set(given)]
    if not kept:
        raise LayerPruneError(f"no block would be kept: the model has {num_layers} blocks; keep at least one")
    if len(kept) == num_layers:
        raise LayerPruneError(f"all {num_layers} blocks would be kept: nothing to prune; drop at least one block")
    return kept


def _check_indices(model: nn.Module, indices: Iterable[int]) -> list[int]:
    n = num_blocks(model)
    indices = list(indices)
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise LayerPruneError(f"block indices {bad} out of range: the model has {n} blocks, indices 0..{n - 1}")
    return indices


@contextmanager
def skip_blocks(model: nn.Module, skipped: Iterable[int]) -> Iterator[nn.Module]:
    """Run ``model`` with the blocks at ``skipped`` removed from its forward pass, without copying weights.

    Inside the context the model's block list holds the same module objects minus the skipped ones (so skipped
    blocks cost no compute and receive no hooks' calls); on exit, also on exception, the original list is put back.
    Indices refer to the block list as it is when the context is entered.

    Example::

        with skip_blocks(pipe.transformer, [3]):
            images = pipe(prompt, generator=torch.Generator().manual_seed(0)).images
    """
    layout = block_layout(model)
    original = getattr(model, layout.attr)
    skipped = set(_check_indices(model, skipped))
    reduced = nn.ModuleList([block for i, block in enumerate(original) if i not in skipped])
    setattr(model, layout.attr, reduced)
    try:
        yield model
    finally:
        setattr(model, layout.attr, original)


class BlockFeatures:
    """Hidden states seen at block boundaries during the most recent forward pass.

    ``inputs[i]`` / ``outputs[i]`` are ``[B, N, D]`` tensors keyed by the block's index in the list the capture was
    attached to. Each forward pass overwrites the entries of the blocks it ran; blocks skipped by
    :func:`skip_blocks` keep no entry from that pass, so call :meth:`clear` between passes when that matters.
    """

    def __init__(self) -> None:
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()


@contextmanager
def capture_block_features(
    model: nn.Module,
    indices: Sequence[int] | None = None,
    *,
    inputs: bool = True,
    outputs: bool = True,
    detach: bool = True,
) -> Iterator[BlockFeatures]:
    """Record each block's input and/or output hidden states while the context is open.

    Args:
        model: a supported transformer (see :data:`BLOCK_LAYOUTS`).
        indices: blocks to watch (default: all).
        inputs / outputs: which side of each block to record.
        detach: keep ``False`` to backpropagate through the recorded tensors (feature distillation).

    Hooks are removed on exit, also on exception. Attach before entering :func:`skip_blocks` to key features by
    the original block indices.
    """
    layout = block_layout(model)
    blocks = get_blocks(model)
    indices = _check_indices(model, range(len(blocks)) if indices is None else indices)
    features = BlockFeatures()
    handles = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        return t.detach() if detach else t

    for index in indices:
        block = blocks[index]
        if inputs:

            def pre_hook(module, args, kwargs, index=index):
                hidden = args[0] if args else kwargs[layout.hidden_input_name]
                features.inputs[index] = keep(hidden)

            handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
        if outputs:

            def post_hook(module, args, output, index=index):
                features.outputs[index] = keep(layout.hidden_from_output(output))

            handles.append(block.register_forward_hook(post_hook))
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()
