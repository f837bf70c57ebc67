"""What every pruned transformer class shares: building one from a full model, strict loading, stock class names.

A pruned transformer is its family's stock class with fewer blocks, renumbered ``0..N-1`` in each stack, whose config
also records ``kept_layers`` (the source block each block came from, in the source's global numbering: Flux's double
blocks first, then its single blocks), ``source_num_layers`` (the source's global depth) and ``source_model``. Each
family's pruned class is ``class PrunedX(PrunedTransformerMixin, XTransformer2DModel)``; its ``__init__`` takes every
stock ``__init__`` parameter (diffusers' config round trip needs them explicit) plus those three
(:meth:`PrunedTransformerMixin.__init_subclass__` writes it).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Sequence

import torch

from .blocks import resolve_kept_layers
from .config_record import expose_record, hide_record, source_id
from .errors import LayerPruneError
from .families import family_of, get_family

# The pruned record's config keys, after the stock class's own; ``source_stack_depths`` on many-stack classes only.
RECORD_PARAMETERS = ("kept_layers", "source_num_layers", "source_model")


class PrunedTransformerMixin:
    """Mixin of the pruned classes; ``family`` names the :class:`~diffusers_layerprune.families.ModelFamily`,
    ``depth_keys`` the config keys of its stacks' depths (its ``BlockStack.depth_key`` values, in order)."""

    family: str = ""
    depth_keys: tuple[str, ...] = ("num_layers",)

    def __init_subclass__(cls, **kwargs):
        # ``class PrunedX(PrunedTransformerMixin, XTransformer2DModel)`` gets the stock ``__init__`` with the record's
        # parameters added: diffusers' config round trip reads the parameters off the signature, so they must be
        # explicit; taking them from the stock class keeps them in step with the installed diffusers.
        super().__init_subclass__(**kwargs)
        if PrunedTransformerMixin in cls.__bases__ and "__init__" not in vars(cls):
            cls.__init__ = _pruned_init(cls)

    @classmethod
    def family_record(cls):
        return get_family(cls.family)

    def _check_pruned(self, kept_layers, depths: Sequence[int], source_num_layers: int | None) -> None:
        """Validate the pruned-model config keys at construction (``register_to_config`` records them afterwards)."""
        if kept_layers is not None:
            check_kept_layers(list(kept_layers), sum(depths), source_num_layers)

    @property
    def pruned_layers(self) -> list[int] | None:
        """Source block indices that were removed (``None`` when the source depth is unknown)."""
        kept, total = self.config.kept_layers, self.config.source_num_layers
        if kept is None or total is None:
            return None
        return [i for i in range(total) if i not in set(kept)]

    @classmethod
    def from_transformer(
        cls,
        transformer,
        kept_layers: Iterable[int] | None = None,
        pruned_layers: Iterable[int] | None = None,
        *,
        source_model: str | None = None,
        copy_weights: bool = True,
    ):
        """Build a pruned transformer from ``transformer`` keeping (or dropping) the given block indices.

        Args:
            transformer: a model of this class's family (a pruned one too: indices then refer to its blocks, and
                ``kept_layers`` is recorded in the original source's numbering).
            kept_layers / pruned_layers: exactly one; global block indices of ``transformer`` (stacks in execution
                order: Flux's ``num_layers`` double blocks, then its ``num_single_layers`` single blocks).
            source_model: hub id or path recorded in the config (default: the transformer's ``_name_or_path``).
            copy_weights: copy tensors (default) so the teacher stays independent; ``False`` shares storage.

        The kept blocks are renumbered ``0..N-1`` within their stack with their weights unchanged: each block computes
        exactly what it computed in the source model (SD3's new last joint block drops its context output, which
        nothing reads). Removing every block of one stack of a many-stack family is refused.
        """
        family = family_of(transformer)  # raises the "not a supported diffusion transformer" error
        if family.name != cls.family:
            raise LayerPruneError(
                f"{type(transformer).__name__} is a {family.title} transformer, not {cls.family_record().title}; "
                f"use {family.pruned_class().__name__}"
            )
        depths = family.stack_depths(transformer.config)
        kept = check_selection(family, depths, kept_layers, pruned_layers)
        kept_by_stack = family.split(kept, depths)

        parent_kept = transformer.config.get("kept_layers")
        source_num_layers = transformer.config.get("source_num_layers") or sum(depths)
        recorded = [parent_kept[i] for i in kept] if parent_kept is not None else kept
        if source_model is None:
            source_model = transformer.config.get("source_model") or source_id(transformer.config.get("_name_or_path"))

        init_keys = cls._get_init_keys(cls) - {"self", "kwargs"}
        config = {k: v for k, v in transformer.config.items() if k in init_keys}
        config.update({stack.depth_key: len(local) for stack, local in zip(family.stacks, kept_by_stack, strict=True)})
        config.update(family.prune_config(transformer.config, kept_by_stack))
        config.update(kept_layers=recorded, source_num_layers=source_num_layers, source_model=source_model)
        if "source_stack_depths" in init_keys:
            config["source_stack_depths"] = list(transformer.config.get("source_stack_depths") or depths)
        with torch.device("meta"):
            student = cls(**config)

        positions = [{source: target for target, source in enumerate(local)} for local in kept_by_stack]
        prefixes = {stack.attr + ".": s for s, stack in enumerate(family.stacks)}
        state = {}
        for key, value in transformer.state_dict().items():
            name = _renamed(key, family, prefixes, positions)
            if name is None:
                continue
            state[name] = value.detach().clone() if copy_weights else value.detach()
        if family.adapt_state is not None:
            state = family.adapt_state(state, student, transformer.config, kept_by_stack)
        student.load_state_dict(state, strict=True, assign=True)

        # Non-persistent buffers (e.g. sin-cos position tables) are not in the state dict: take them over too.
        inverse = [{t: s for s, t in p.items()} for p in positions]
        source_buffers = dict(transformer.named_buffers())
        for name, buffer in list(student.named_buffers()):
            if buffer.is_meta:
                module_name, _, buffer_name = name.rpartition(".")
                module = student.get_submodule(module_name) if module_name else student
                value = source_buffers[_renamed(name, family, prefixes, inverse)]
                setattr(module, buffer_name, value.clone() if copy_weights else value)
        # Tensors kept as plain attributes (Qwen-Image's rotary tables) are neither: take them over as well.
        for module_name, module in student.named_modules():
            for attr, value in list(vars(module).items()):
                if isinstance(value, torch.Tensor) and value.is_meta:
                    full = f"{module_name}.{attr}" if module_name else attr
                    owner, _, leaf = _renamed(full, family, prefixes, inverse).rpartition(".")
                    value = getattr(transformer.get_submodule(owner) if owner else transformer, leaf)
                    setattr(module, attr, value.clone() if copy_weights else value)
        leftover = [n for n, t in [*student.named_parameters(), *student.named_buffers()] if t.is_meta]
        if leftover:  # would mean a parameter the state dict does not cover: never ship uninitialised weights
            raise RuntimeError(f"pruned model has uninitialised tensors: {leftover[:5]}")
        if source_model is not None:
            student.register_to_config(_name_or_path=str(source_model))
        # The source's own layerprune markers (e.g. families.flux.TRUE_CFG_KEY): how the model is to be run
        student.register_to_config(**{k: v for k, v in transformer.config.items() if k.startswith("_layerprune_")})
        return student.train(transformer.training)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """``ModelMixin.from_pretrained`` that refuses checkpoints with missing or unexpected keys.

        diffusers otherwise fills missing blocks with random weights and only warns; a pruned checkpoint whose
        block numbering has gaps would load as a silently broken model.
        """
        want_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("use_safetensors", True)  # never a pickle (opening one can run code)
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        problems = {k: info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
        if problems:
            summary = "; ".join(f"{k}: {sorted(v)[:4]}{' ...' if len(v) > 4 else ''}" for k, v in problems.items())
            raise LayerPruneError(
                f"checkpoint {pretrained_model_name_or_path} does not match its config ({summary}); "
                "its blocks must be numbered 0..num_layers-1"
            )
        return (model, info) if want_info else model

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # The record is saved under underscore names (config_record): give them back to __init__.
        return super().extract_init_dict(expose_record(config_dict), **kwargs)

    def to_json_string(self) -> str:
        # Name the stock class so that AutoModel / DiffusionPipeline load our folders without this package, and
        # store the record under names stock loading passes over without a warning.
        config = hide_record(json.loads(super().to_json_string()))
        config["_class_name"] = self.family_record().transformer_class
        return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _pruned_init(cls):
    """The ``__init__`` of pruned class ``cls``: its stock base's parameters, then :data:`RECORD_PARAMETERS` (and
    ``source_stack_depths`` for many-stack families), all recorded by ``register_to_config``."""
    from diffusers.configuration_utils import register_to_config

    stock = next(base for base in cls.__mro__[1:] if base is not PrunedTransformerMixin and "__init__" in vars(base))
    stock_signature = inspect.signature(stock.__init__)
    names = RECORD_PARAMETERS + (("source_stack_depths",) if len(cls.depth_keys) > 1 else ())
    added = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in names]
    signature = stock_signature.replace(parameters=[*stock_signature.parameters.values(), *added])
    # A config.json gives lists where the stock defaults are tuples (rotary axes, SD3.5's dual-attention layers).
    tuples = {n for n, p in stock_signature.parameters.items() if isinstance(p.default, tuple)}

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["self"]
        record = {n: values.pop(n) for n in names}
        stock.__init__(self, **{k: tuple(v) if k in tuples and v is not None else v for k, v in values.items()})
        self._check_pruned(record["kept_layers"], [values[k] for k in cls.depth_keys], record["source_num_layers"])

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__doc__ = f"``{stock.__name__}``'s parameters, then ``{'``, ``'.join(names)}``."
    return register_to_config(__init__)


def _renamed(key: str, family, prefixes: dict[str, int], positions: list[dict[int, int]]) -> str | None:
    """``key`` with its block index mapped through ``positions`` of its stack; ``None`` for a block not kept."""
    for prefix, s in prefixes.items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            target = positions[s].get(int(index))
            return None if target is None else f"{prefix}{target}.{rest}"
    return key


def check_selection(family, depths: Sequence[int], kept_layers=None, pruned_layers=None) -> list[int]:
    """Validate a keep or drop list of global block indices against a model of ``family`` with stacks of ``depths``
    and return the kept indices (:func:`~diffusers_layerprune.blocks.resolve_kept_layers`); for many-stack families
    also refuse removing every block of one stack. Needs no weights: commands run it before loading."""
    kept = resolve_kept_layers(sum(depths), kept_layers, pruned_layers)
    if len(family.stacks) > 1:
        for stack, local, depth in zip(family.stacks, family.split(kept, depths), depths, strict=True):
            if depth and not local:
                raise LayerPruneError(
                    f"every {stack.kind} block would be removed ({stack.depth_key}={depth}); "
                    f"keep at least one block of each stack ({describe_stacks(family, depths)})"
                )
    return kept


def describe_stacks(family, depths: Sequence[int]) -> str:
    """``double 0..18 = global 0..18, single 0..37 = global 19..56``."""
    parts, start = [], 0
    for stack, depth in zip(family.stacks, depths, strict=True):
        parts.append(f"{stack.kind} blocks are global indices {start}..{start + depth - 1}")
        start += depth
    return ", ".join(parts)


def check_kept_layers(kept: list[int], depth: int, source_num_layers: int | None) -> None:
    if len(kept) != depth:
        raise LayerPruneError(f"kept_layers has {len(kept)} entries but num_layers is {depth}")
    if any(b <= a for a, b in zip(kept[:-1], kept[1:], strict=True)):
        raise LayerPruneError(f"kept_layers must be strictly increasing, got {kept}")
    if source_num_layers is not None and kept and not 0 <= kept[0] <= kept[-1] < source_num_layers:
        raise LayerPruneError(f"kept_layers {kept} out of range for a source of {source_num_layers} blocks")
