"""Block surgery: where a model keeps its blocks, skipping blocks, capturing block features.

Every criterion, the pruning code and the distillation losses reach a model's blocks through this module only. Where
the blocks are comes from the model's :class:`~diffusers_layerprune.families.ModelFamily` (its ``stacks``), so a new
family needs no change here. Blocks are numbered globally in execution order: for Flux, its double-stream blocks
``0..num_layers-1``, then its single-stream blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .errors import LayerPruneError
from .families import BlockLayout, BlockStack, family_of

__all__ = [
    "BlockLayout",
    "BlockStack",
    "block_layout",
    "block_stacks",
    "get_blocks",
    "num_blocks",
    "block_names",
    "resolve_kept_layers",
    "skip_blocks",
    "capture_block_features",
    "BlockFeatures",
]


def block_stacks(model: nn.Module) -> tuple[BlockStack, ...]:
    """The model's block stacks in execution order, or a :class:`LayerPruneError` for an unsupported model."""
    return family_of(model).stacks


def block_layout(model: nn.Module) -> BlockStack:
    """The first (for one-stack families, the only) block stack of ``model``; see :func:`block_stacks`."""
    return block_stacks(model)[0]


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks in execution order (all stacks, global numbering).

    For a one-stack family this is the model's own ``nn.ModuleList``; for Flux a new list of the same modules."""
    stacks = block_stacks(model)
    if len(stacks) == 1:
        return getattr(model, stacks[0].attr)
    return nn.ModuleList([block for stack in stacks for block in getattr(model, stack.attr)])


def num_blocks(model: nn.Module) -> int:
    return sum(len(getattr(model, stack.attr)) for stack in block_stacks(model))


def block_names(model: nn.Module) -> list[str]:
    """A label per global block index: its index, or for many-stack families its stack and local index
    (``double 3``, ``single 0``)."""
    family = family_of(model)
    return family.block_names([len(getattr(model, stack.attr)) for stack in family.stacks])


def _stack_of_each(model: nn.Module) -> list[BlockStack]:
    return [stack for stack in block_stacks(model) for _ in getattr(model, stack.attr)]


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
    skipped = set(_check_indices(model, skipped))
    originals, start = {}, 0
    for stack in block_stacks(model):
        blocks = getattr(model, stack.attr)
        originals[stack.attr] = blocks
        kept = [block for i, block in enumerate(blocks) if start + i not in skipped]
        start += len(blocks)
        setattr(model, stack.attr, nn.ModuleList(kept))
    try:
        yield model
    finally:
        for attr, blocks in originals.items():
            setattr(model, attr, blocks)


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
def removing(handles: list) -> Iterator[None]:
    """Remove the hook ``handles`` (``register_forward_hook``'s and the like; the list may grow inside) on exit, also
    on exception."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
        model: a transformer of a supported family (``diffusers_layerprune.families``).
        indices: blocks to watch (default: all).
        inputs / outputs: which side of each block to record.
        detach: keep ``False`` to backpropagate through the recorded tensors (feature distillation).

    Hooks are removed on exit, also on exception. Attach before entering :func:`skip_blocks` to key features by
    the original block indices.
    """
    stacks = _stack_of_each(model)
    blocks = get_blocks(model)
    indices = _check_indices(model, range(len(blocks)) if indices is None else indices)
    features = BlockFeatures()
    handles = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        return t.detach() if detach else t

    for index in indices:
        block, layout = blocks[index], stacks[index]
        if inputs:

            def pre_hook(module, args, kwargs, index=index, layout=layout):
                if layout.hidden_from_input is not None:
                    hidden = layout.hidden_from_input(args, kwargs)
                else:
                    hidden = args[0] if args else kwargs[layout.hidden_input_name]
                features.inputs[index] = keep(hidden)

            handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
        if outputs:

            def post_hook(module, args, output, index=index, layout=layout):
                features.outputs[index] = keep(layout.hidden_from_output(output))

            handles.append(block.register_forward_hook(post_hook))
    with removing(handles):
        yield features
