"""Prompt-routed depth: a router maps each prompt to one of ``K`` architecture codes (sets of blocks to run, all
sharing one set of weights) so that the mean number of blocks run meets a budget (in the spirit of APTP, Adaptive
Prompt-Tailored Pruning, applied to the depth of a diffusion transformer).

    from diffusers_layerprune.routing import RoutedPixArtSigmaPipeline, train_routed
    routed = train_routed(pipe, prompts, num_codes=4, budget=0.75)      # fit router + codes (weights frozen)
    routed.routing.record.codes                                          # blocks, share, closest prompts per code
    out = routed(prompts, generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))])
    routed.save_pretrained("runs/routed")                                # stock pipeline folder + routing files
    RoutedPixArtSigmaPipeline.from_pretrained("runs/routed")

``layerprune route`` does the same from the command line (:func:`route_to_folder`). Public names load lazily.
"""

from __future__ import annotations

from importlib import import_module

MARGINALS = ("uniform", "budget", "none")
"""Balance of the prompt -> code assignment: ``uniform``: every code gets the same share; ``budget``: the most even
shares whose mean depth is the budget (:func:`budget_marginals`); ``none``: no optimal transport (the router's own
softmax is the target). Defined here, not in ``transport``, so that building the CLI parser imports no torch."""

_EXPORTS = {
    "RoutedPixArtSigmaPipeline": "pipeline",
    "RoutedPipelineOutput": "pipeline",
    "train_routed": "train",
    "route_to_folder": "train",
    "RoutingSettings": "train",
    "budget_blocks": "record",
    "Routing": "record",
    "RoutingRecord": "record",
    "CodeStats": "record",
    "load_routing": "record",
    "read_routing_record": "record",
    "has_routing": "record",
    "PromptRouter": "router",
    "pooled_text_embedding": "router",
    "RoutingCodes": "codes",
    "sinkhorn": "transport",
    "budget_marginals": "transport",
    "budgeted_assignment": "transport",
    "gated_blocks": "gating",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
