"""Run a transformer with a per-sample soft or hard mask over its blocks: block ``i`` of sample ``b`` computes
``h + m[b, i] * (block(h) - h)``, so ``m = 0`` passes the hidden states through (the block is skipped) and
``m = 1`` runs it. Training uses this to backpropagate into the masks; generation skips blocks for real
(:func:`~diffusers_layerprune.blocks.skip_blocks`), which is what a hard mask computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..blocks import block_layout, get_blocks, removing


class BlockGates:
    """Holder of the current mask ``[B, num_layers]``; set :attr:`mask` before each forward pass."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None


@contextmanager
def gated_blocks(model: nn.Module) -> Iterator[BlockGates]:
    """Hooks that blend each block's output with its input by the mask in the yielded :class:`BlockGates`.
    With classifier-free guidance the batch is doubled; the mask's rows are then repeated to match."""
    layout = block_layout(model)
    gates = BlockGates()
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for index, block in enumerate(get_blocks(model)):

        def pre(module, args, kwargs, index=index):
            inputs[index] = args[0] if args else kwargs[layout.hidden_input_name]

        def post(module, args, output, index=index):
            if gates.mask is None:
                return output
            h_in = inputs.pop(index)
            h_out = layout.hidden_from_output(output)
            m = gates.mask[:, index].to(h_out.dtype)
            if m.shape[0] != h_out.shape[0]:
                m = m.repeat(h_out.shape[0] // m.shape[0])
            m = m.view(-1, *([1] * (h_out.ndim - 1)))
            mixed = h_in + m * (h_out - h_in)
            return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post))
    with removing(handles):
        yield gates
