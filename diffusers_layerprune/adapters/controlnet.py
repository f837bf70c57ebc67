"""A parent's ControlNet on its depth-pruned model: ``layerprune adapt-controlnet``.

Flux, SD3 and Sana ControlNets hand the transformer one residual ("sample") per ControlNet block, and the transformer
picks the sample for its block ``i`` by arithmetic on its own depth (Flux: ``i // ceil(blocks / samples)``, SD3:
``int(i / (blocks / samples))``, Sana: ``i - 1``; the family's :class:`~diffusers_layerprune.families.ControlNetLayout` holds the
exact rule). A pruned transformer has fewer blocks, so the stock pipeline silently sends residuals to other blocks.

:func:`adapt_controlnet` rewrites the ControlNet so that, under the stock arithmetic on the pruned depth, every kept
block receives exactly the residual its source block received in the parent. The ControlNet's blocks run in a chain
(sample ``k`` is its projection ``k`` of the hidden states after its block ``k``), so a sample cannot be moved alone:
the rewritten ControlNet is a new chain of copies of the original blocks, where a copy whose residual gates are zeroed
passes its input on unchanged (an *identity* block), to repeat a sample for several kept blocks. Its projections are
copies of the originals (zero where no kept block reads the position). Everything else is copied unchanged, so stock
``<ControlNetClass>.from_pretrained`` loads it and the stock pipeline runs it.

Where no chain works under the stock arithmetic, the command refuses in one line (docs/controlnet.md says when).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import LayerPruneError
from .record import ControlNetRecord
from .sources import file_sha256

ADAPTATION_FILE = "controlnet_adaptation.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_ZERO = "zero"  # a position some kept block reads but whose source block received no residual: zero projection


@dataclass(frozen=True)
class StackPlan:
    """The rewritten chain of one ControlNet block list.

    Attributes:
        blocks: per new block position, the source ControlNet block it is a copy of.
        identity: per new position, whether the copy's residual gates are zeroed (it passes its input on).
        projections: per new position, the source projection copied, or ``None`` for a zero projection.
        reads: per kept transformer block (pruned numbering), the parent sample it receives (``None``: none).
    """

    blocks: tuple[int, ...]
    identity: tuple[bool, ...]
    projections: tuple[int | None, ...]
    reads: tuple[int | None, ...]

    @property
    def length(self) -> int:
        return len(self.blocks)


def _chain(
    required: Sequence[int | None], samples: int, need_final: bool, positions: Sequence[int | None], length: int
) -> StackPlan | None:
    """A chain of ``length`` blocks in which ``positions[i]`` (the position the stock arithmetic gives kept block
    ``i``) holds the hidden states after source block ``required[i]``, or ``None`` if there is none."""
    constraint: dict[int, int | str] = {}
    for want, p in zip(required, positions, strict=True):
        if p is None:
            if want is not None:
                return None
            continue
        if not 0 <= p < length:
            return None
        if constraint.setdefault(p, _ZERO if want is None else want) != (_ZERO if want is None else want):
            return None
    targets = sorted((p, k) for p, k in constraint.items() if k != _ZERO)
    if need_final:  # a later stack starts from this stack's last hidden states
        targets.append((length - 1, samples - 1))
    # Each position runs one block: the state (source blocks run so far) advances by 0 (identity) or 1 per position.
    last_p, last_k = -1, -1
    for p, k in targets:
        if not 0 <= k - last_k <= p - last_p:
            return None
        last_p, last_k = p, k
    blocks, identity, state, j = [], [], -1, 0
    for p in range(length):
        while j < len(targets) and targets[j][0] < p:
            j += 1
        goal = targets[j][1] if j < len(targets) else state
        if state < goal:
            state += 1
            blocks.append(state)
            identity.append(False)
        else:
            blocks.append(max(state, 0))
            identity.append(True)
    projections = tuple(
        constraint[p] if constraint.get(p, _ZERO) != _ZERO else None for p in range(length)
    )  # unread positions get a zero projection too
    return StackPlan(tuple(blocks), tuple(identity), projections, tuple(required))


def _reads(layout, stack: int, blocks: Sequence[int], depth: int, samples: int, config: Mapping) -> list[int | None]:
    return [None if samples == 0 else layout.sample_read(stack, b, depth, samples, config) for b in blocks]


def plan_controlnet(family, kept_layers: Sequence[int], source_depths: Sequence[int], controlnet_config: Mapping):
    """The shortest exact chain per ControlNet block list, or a one-line :class:`LayerPruneError` where none exists.

    Args:
        family: the :class:`~diffusers_layerprune.families.ModelFamily` (with a ``controlnet`` layout).
        kept_layers: kept blocks in the source's global numbering (the pruned config's record).
        source_depths: the source transformer's depth per stack.
        controlnet_config: the ControlNet's ``config.json``.

    Returns:
        one :class:`StackPlan` per stack.
    """
    layout = family.controlnet
    kept = family.split(kept_layers, source_depths)
    counts = [int(controlnet_config.get(s.depth_key) or 0) for s in layout.stacks]
    plans: list[StackPlan] = [None] * len(layout.stacks)  # type: ignore[list-item]
    for s in reversed(range(len(layout.stacks))):
        samples, kind = counts[s], family.stacks[s].kind
        required = _reads(layout, s, kept[s], source_depths[s], samples, controlnet_config)
        if samples == 0:
            plans[s] = StackPlan((), (), (), tuple(required))
            continue
        need_final = any(plan.length for plan in plans[s + 1 :])
        n = len(kept[s])
        lengths = range(1, (n + 1) * (samples + 1) + samples + 1)
        for i, want in enumerate(required):
            if want is not None and all(layout.sample_read(s, i, n, k, controlnet_config) is None for k in lengths):
                depth = source_depths[s]
                needed = [
                    b
                    for b in range(depth)
                    if all(layout.sample_read(s, b, depth, k, controlnet_config) is None for k in lengths)
                ]
                raise LayerPruneError(
                    f"kept {_named(kind)} {kept[s][i]} becomes the pruned model's {_named(kind)} {i}, to which the "
                    f"stock {family.transformer_class} adds no ControlNet residual, but it received sample {want} in "
                    f"the parent: no rewritten ControlNet can feed it; keep source {_named(kind)}(s) {needed} when "
                    "pruning for ControlNet use (docs/controlnet.md)"
                )
        # Longer chains spread the positions the kept blocks read (SD3) or add unread positions at the end; past
        # (n + 1) * (samples + 1) + samples neither gives room for more, and a layout seen before fails again.
        seen = set()
        for length in lengths:
            positions = [layout.sample_read(s, i, n, length, controlnet_config) for i in range(n)]
            last = max((p for p in positions if p is not None), default=-1)
            key = (tuple(positions), min(length - 1 - last, samples + 1))
            if key in seen:
                continue
            seen.add(key)
            plan = _chain(required, samples, need_final, positions, length)
            if plan is not None:
                plans[s] = plan
                break
        else:
            raise LayerPruneError(
                _gap_message(family, s, kept[s], required, source_depths[s], samples, need_final, controlnet_config)
            )
    return plans


def _named(kind: str) -> str:
    """``double block`` for a stack kind, ``block`` for one-stack families whose kind is ``block``."""
    return kind if kind == "block" else f"{kind} block"


def _gap_message(family, s, kept, required, depth, samples, need_final, config) -> str:
    layout, kind = family.controlnet, family.stacks[s].kind
    read = sorted({k for k in required if k is not None})
    top = samples - 1 if need_final else (read[-1] if read else -1)
    missing = [k for k in range(top + 1) if k not in read]
    fed = {k: [b for b in range(depth) if layout.sample_read(s, b, depth, samples, config) == k] for k in missing}
    groups = "; ".join(f"sample {k}: source {_named(kind)}s {blocks}" for k, blocks in fed.items())
    return (
        f"no exact ControlNet remap for the kept {_named(kind)}s {list(kept)}: no kept block reads ControlNet sample(s) "
        f"{missing}, but the samples after them need their ControlNet blocks to run, and under the stock "
        f"{family.transformer_class} index arithmetic the positions the kept blocks read leave them no room; keep at "
        f"least one block of each group ({groups}) when pruning (docs/controlnet.md)"
    )


def residual_routing(family, kept_layers, source_depths, controlnet_config) -> list[list[dict]]:
    """Which residual each kept block receives: in the parent, and from the unchanged ControlNet under the stock
    arithmetic on the pruned depth. One list per stack of ``{"block": source index (global), "parent": sample,
    "stock": sample}`` (``None``: no residual)."""
    layout = family.controlnet
    kept = family.split(kept_layers, source_depths)
    out, start = [], 0
    for s, stack in enumerate(layout.stacks):
        samples = int(controlnet_config.get(stack.depth_key) or 0)
        parent = _reads(layout, s, kept[s], source_depths[s], samples, controlnet_config)
        stock = _reads(layout, s, range(len(kept[s])), len(kept[s]), samples, controlnet_config)
        out.append(
            [{"block": start + b, "parent": p, "stock": q} for b, p, q in zip(kept[s], parent, stock, strict=True)]
        )
        start += source_depths[s]
    return out


@contextmanager
def residuals_as_in_parent(controlnet, family, kept_layers, source_depths) -> Iterator:
    """The reference a pruned model with a ControlNet is held to: inside the context, ``controlnet`` (a stock
    ControlNet module, called with ``return_dict=False`` as the stock pipelines do) hands a *parent* transformer run
    with the removed blocks skipped (:func:`diffusers_layerprune.blocks.skip_blocks`) one residual per kept block:
    the one its source block receives in the full parent (zeros where it received none). No weights are copied.
    """
    import torch

    layout = family.controlnet
    kept = family.split(kept_layers, source_depths)
    config = controlnet.config
    # Per stack: the samples list the skipped parent reads, as (list position, parent sample) pairs: with as many
    # samples as kept blocks, the stock arithmetic gives kept block i position positions[i].
    routes = []
    for s, (stack, blocks) in enumerate(zip(layout.stacks, kept, strict=True)):
        n, samples = len(blocks), int(config.get(stack.depth_key) or 0)
        picks = _reads(layout, s, blocks, source_depths[s], samples, config)
        positions = _reads(layout, s, range(n), n, n, config)
        route: dict[int, int | None] = {}
        for i, (block, pick, q) in enumerate(zip(blocks, picks, positions, strict=True)):
            if q is None and pick is not None and i == n - 1 > 0 and i not in positions:
                # a skipped parent keeps its blocks' structure (SD3's last kept block is no context_pre_only block
                # when the source's last block is removed), so it reads its own position where a pruned one reads none
                q = i
            if q is None and pick is not None or route.setdefault(q, pick) != pick:
                raise LayerPruneError(
                    f"{layout.model_class}: the skipped parent cannot receive its source block {block}'s residual"
                )
        routes.append((n, route))
    original = controlnet.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        if not isinstance(out, tuple):
            raise TypeError("call the ControlNet with return_dict=False, as the stock pipelines do")
        routed = []
        for samples, (n, route) in zip(out, routes, strict=True):
            if samples is None:
                routed.append(None)
                continue
            zero = torch.zeros_like(samples[0])
            routed.append([zero if route.get(q) is None else samples[route[q]] for q in range(n)])
        return tuple(routed)

    controlnet.forward = forward
    try:
        yield controlnet
    finally:
        del controlnet.forward


# ----------------------------------------------------------------------------------------------------------------
# Reading the inputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrunedRecord:
    """What the pruned folder says about its blocks: family, kept blocks (source numbering), source depths, width."""

    family: object
    kept_layers: tuple[int, ...]
    source_depths: tuple[int, ...]
    config: dict


def read_pruned(folder: str | os.PathLike) -> PrunedRecord:
    """The kept-block record of a pruned pipeline or transformer folder, or one line saying what is missing."""
    from ..families import family_of_config
    from ..modeling import read_transformer_config

    if not Path(folder).is_dir():
        raise LayerPruneError(f"--pruned {folder} is not a folder; give the folder `layerprune prune` wrote")
    config = read_transformer_config(folder)
    family = family_of_config(config, str(folder))
    kept = config.get("kept_layers")
    if not kept:
        raise LayerPruneError(
            f"{folder} has no kept-block record (kept_layers in its transformer config): it is not a model "
            "`layerprune prune` wrote; prune the parent with `layerprune prune` first"
        )
    depths = config.get("source_stack_depths") or [config.get("source_num_layers")]
    if None in depths or len(depths) != len(family.stacks):
        raise LayerPruneError(f"{folder}: its kept-block record lacks the source depth (source_num_layers)")
    if family.controlnet is None:
        raise LayerPruneError(f"diffusers has no ControlNet for {family.title}: nothing to adapt")
    return PrunedRecord(family, tuple(int(k) for k in kept), tuple(int(d) for d in depths), dict(config))


def check_paths(controlnet: str | os.PathLike, pruned: str | os.PathLike) -> None:
    """Mistyped paths, refused before torch or diffusers load."""
    if not Path(pruned).is_dir():
        raise LayerPruneError(f"--pruned {pruned} is not a folder; give the folder `layerprune prune` wrote")
    name = str(controlnet)
    if not Path(name).expanduser().exists() and (name.count("/") != 1 or name.startswith((".", "/", "~"))):
        raise LayerPruneError(f"ControlNet {name} does not exist (give a ControlNet folder or a Hub id user/name)")


def resolve_controlnet(name: str, revision: str | None = None) -> Path:
    """A ControlNet's local folder: ``name`` itself, or the Hub snapshot of the repository ``name``."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise LayerPruneError(f"{name} has no config.json: give a ControlNet folder that from_pretrained reads")
        return path
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise LayerPruneError(f"ControlNet {name} does not exist (give a ControlNet folder or a Hub id user/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                name, revision=revision, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"]
            )
        )
    except Exception as error:  # offline, missing repository, no access: one line
        raise LayerPruneError(f"could not fetch ControlNet {name}: {str(error).splitlines()[0]}") from error


def _weight_files(folder: Path) -> list[Path]:
    index = folder / f"{WEIGHTS_NAME}.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    raise LayerPruneError(f"{folder} has no {WEIGHTS_NAME}: save the ControlNet with save_pretrained (safetensors)")


def check_pair(record: PrunedRecord, config: Mapping, where: str) -> None:
    """Refuse a ControlNet of another family or width than the pruned transformer."""
    layout = record.family.controlnet
    found = config.get("_class_name")
    if found != layout.model_class:
        raise LayerPruneError(
            f"{where} is a {found}, but the pruned model is {record.family.title}, whose ControlNets are "
            f"{layout.model_class}; give a ControlNet trained on the parent"
        )
    for key in ("num_attention_heads", "attention_head_dim"):
        if config.get(key) != record.config.get(key):
            raise LayerPruneError(
                f"{where} has {key}={config.get(key)}, the pruned transformer {record.config.get(key)}: it belongs "
                "to another model; give a ControlNet trained on the parent"
            )


# ----------------------------------------------------------------------------------------------------------------
# Rewriting
# ----------------------------------------------------------------------------------------------------------------


def _identity(block: dict, gates: Mapping[str, Mapping[int, tuple[int, ...]]], dim: int, where: str) -> dict:
    """``block``'s parameters (keys relative to the block) with every residual gate's rows zeroed."""
    out, zeroed = dict(block), False
    for path, chunks_by_count in gates.items():
        for suffix in ("weight", "bias"):
            key = f"{path}.{suffix}"
            if key not in out:
                continue
            value = out[key].clone()
            chunks = chunks_by_count.get(value.shape[0] // dim)
            if chunks is None or value.shape[0] % dim:
                raise LayerPruneError(f"{where}: {key} has {value.shape[0]} rows, not a known modulation layout")
            for c in chunks:
                value[c * dim : (c + 1) * dim] = 0
            out[key], zeroed = value, True
    if not zeroed:
        raise LayerPruneError(f"{where}: found none of the residual gates {sorted(gates)} in a block")
    return out


def adapt_state_dict(state: Mapping, layout, plans: Sequence[StackPlan], dim: int, where: str = "ControlNet") -> dict:
    """The rewritten ControlNet's weights (every tensor its own copy: safetensors stores no shared tensors)."""
    import torch

    prefixes = [f"{stack.blocks}." for stack in layout.stacks] + [f"{stack.projections}." for stack in layout.stacks]
    out = {key: value.clone() for key, value in state.items() if not key.startswith(tuple(prefixes))}
    for stack, plan in zip(layout.stacks, plans, strict=True):
        for p, (source, identity) in enumerate(zip(plan.blocks, plan.identity, strict=True)):
            head = f"{stack.blocks}.{source}."
            block = {key[len(head) :]: value for key, value in state.items() if key.startswith(head)}
            if not block:
                raise LayerPruneError(f"{where} has no weights for {stack.blocks}.{source}")
            if identity:
                block = _identity(block, layout.identity_gates, dim, where)
            out.update({f"{stack.blocks}.{p}.{key}": value.clone() for key, value in block.items()})
        for p, source in enumerate(plan.projections):
            for suffix in ("weight", "bias"):
                like = state.get(f"{stack.projections}.0.{suffix}")
                if like is None:
                    raise LayerPruneError(f"{where} has no {stack.projections}.0.{suffix}")
                key = f"{stack.projections}.{source}.{suffix}"
                value = torch.zeros_like(like) if source is None else state[key].clone()
                out[f"{stack.projections}.{p}.{suffix}"] = value
    return out


def adapt_config(config: Mapping, layout, plans: Sequence[StackPlan]) -> dict:
    """The rewritten ControlNet's ``config.json``: new depths, block-indexed keys moved with their blocks."""
    out = dict(config)
    for stack, plan in zip(layout.stacks, plans, strict=True):
        out[stack.depth_key] = plan.length
    for key in layout.indexed_keys:  # they index the first block list
        if out.get(key):
            old = {int(i) for i in out[key]}
            out[key] = [p for p, source in enumerate(plans[0].blocks) if source in old]
    return out


@dataclass(frozen=True)
class AdaptedControlNet:
    """What :func:`adapt_controlnet` wrote: the output folder, the plan per stack and the routing it fixed."""

    output: Path
    family: object
    plans: tuple[StackPlan, ...]
    source_depths: tuple[int, ...]
    original_depths: tuple[int, ...]
    routing: list

    def summary(self) -> list[str]:
        """One line per block stack: how many kept blocks the unchanged ControlNet misroutes, the new depth."""
        lines = []
        for stack, plan, original, routing in zip(
            self.family.stacks, self.plans, self.original_depths, self.routing, strict=True
        ):
            wrong = sum(r["parent"] != r["stock"] for r in routing)
            lines.append(
                f"{_named(stack.kind)}s: the unchanged ControlNet feeds {wrong} of {len(routing)} kept blocks another "
                f"residual than in the parent; rewritten: {original} -> {plan.length} ControlNet blocks "
                f"(identity copies: {sum(plan.identity)})"
            )
        return lines


def adapt_controlnet(
    controlnet: str | os.PathLike,
    pruned: str | os.PathLike,
    output: str | os.PathLike,
    *,
    revision: str | None = None,
    overwrite: bool = False,
) -> AdaptedControlNet:
    """Rewrite a parent's ControlNet (folder or Hub id) for the pruned pipeline or transformer folder ``pruned`` and
    save it to ``output`` (``config.json`` + ``diffusion_pytorch_model.safetensors``, the stock class loads it, plus
    ``controlnet_adaptation.json`` recording the source and the plan). Exact: the stock pipeline on ``pruned`` with
    the output gives the images of the parent + ``controlnet`` with the removed blocks skipped
    (:func:`residuals_as_in_parent`). Raises :class:`LayerPruneError` (nothing written) for a ControlNet of another
    family or width, a folder without a kept-block record, an output that exists or lies in an input, or a pruning
    no ControlNet can follow exactly."""
    from ..outputs import atomic_output_dir, check_output_dir

    inputs = [str(controlnet), str(pruned)]
    check_output_dir(output, overwrite=overwrite, inputs=inputs)
    check_paths(controlnet, pruned)
    from safetensors.torch import load_file, save_file  # after the cheap checks: it imports torch

    record = read_pruned(pruned)
    folder = resolve_controlnet(str(controlnet), revision)
    check_output_dir(output, overwrite=overwrite, inputs=[*inputs, str(folder)])
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LayerPruneError(f"could not read {folder / 'config.json'}: {error}") from error
    check_pair(record, config, str(controlnet))
    layout = record.family.controlnet
    plans = plan_controlnet(record.family, record.kept_layers, record.source_depths, config)
    state: dict = {}
    digests = {}
    for file in _weight_files(folder):
        state.update(load_file(file))
        digests[file.name] = file_sha256(file)
    dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    new_state = adapt_state_dict(state, layout, plans, dim, str(controlnet))
    new_config = adapt_config(config, layout, plans)
    routing = residual_routing(record.family, record.kept_layers, record.source_depths, config)
    original = tuple(int(config.get(s.depth_key) or 0) for s in layout.stacks)
    adaptation = {
        "source_controlnet": str(controlnet),
        "revision": revision,
        "source_sha256": digests,
        "pruned_model": Path(pruned).name,
        "family": record.family.name,
        "kept_layers": list(record.kept_layers),
        "source_depths": list(record.source_depths),
        "stacks": [
            {"kind": k.kind, "original_blocks": o, **asdict(p)}
            for k, o, p in zip(record.family.stacks, original, plans, strict=True)
        ],
    }
    local = {"source_controlnet": str(Path(controlnet).resolve()) if Path(controlnet).exists() else None}
    with atomic_output_dir(
        output, overwrite=overwrite, inputs=[*inputs, str(folder)], kind="controlnet", local=local
    ) as tmp:
        save_file(new_state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")
        ControlNetRecord(adaptation).save(tmp / ADAPTATION_FILE)
    return AdaptedControlNet(Path(output), record.family, tuple(plans), record.source_depths, original, routing)
