"""LoRA adapters and depth pruning: write a trained LoRA as stock tools read it, and carry a parent's LoRA over to a
pruned model.

A LoRA adds ``scale * B @ A`` to a Linear weight; a pruned model's block ``i`` *is* its parent's block
``kept_layers[i]`` with the same weights, so a parent's LoRA applies exactly to the kept blocks once its block indices
are renumbered: pruning the parent after fusing the LoRA and loading the renumbered LoRA into the pruned model give the
same transformer. What lived in removed blocks is lost; :func:`adapt_lora` measures how much.

Formats (the family record's ``lora_format``):

- ``diffusers``: ``pytorch_lora_weights.safetensors`` with ``transformer.``-prefixed peft keys and diffusers' adapter
  metadata (the ``LoraConfig`` keys, prefixed the same way), what ``Pipeline.save_lora_weights`` writes and
  ``Pipeline.load_lora_weights`` reads (Sana, SD3, Flux).
- ``peft``: a folder with ``adapter_config.json`` and ``adapter_model.safetensors``, which
  ``peft.PeftModel.from_pretrained(pipe.transformer, folder)`` reads (PixArt: diffusers has no loader for it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LayerPruneError
from ..records import read_json
from .record import LoraRecord
from .sources import file_sha256, local_or_hub, pruned_target

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHT_NAME = "adapter_model.safetensors"
RECORD_NAME = "layerprune_lora.json"  # what a LoRA folder was made from (uploaded with it: no local paths)
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
TRANSFORMER = "transformer"  # prefix of the transformer's keys in a pipeline LoRA file
PEFT_PREFIX = "base_model.model."  # prefix of a PeftModel's keys in adapter_model.safetensors
# Files an earlier version wrote: train_distill's lora/ (save_lora_adapter: keys without the transformer. prefix)
# and a checkpoint's transformer_lora/ (no adapter metadata; rank and alpha in the checkpoint record).
OLD_CHECKPOINT_WEIGHTS = "adapter_model.safetensors"
OLD_CHECKPOINT_RECORD = "layerprune_checkpoint.json"


@dataclass
class LoraWeights:
    """A transformer's LoRA in peft's key layout, keys relative to the transformer (``<module>.lora_A.weight``).

    Attributes:
        state: the LoRA tensors (``lora_A`` ``[r, in]``, ``lora_B`` ``[out, r]``, optional ``lora_B`` biases).
        config: ``LoraConfig`` keyword arguments (diffusers' adapter metadata); ``None``: the stock loader derives
            them from the weights and :attr:`alphas` (rank from the shapes, alpha equal to rank where none is given).
        alphas: ``<module>.alpha`` -> alpha, the per-layer alphas of kohya-style files (Flux's loader reads them).
        other: tensors of other components (text encoders), keys with their prefix, carried over unchanged.
        other_metadata: adapter metadata of other components, keys with their prefix.
    """

    state: dict
    config: dict | None = None
    alphas: dict = field(default_factory=dict)
    other: dict = field(default_factory=dict)
    other_metadata: dict = field(default_factory=dict)

    def modules(self) -> list[str]:
        """The transformer modules the LoRA changes, in key order."""
        return list(dict.fromkeys(key.split(".lora_")[0] for key in self.state))

    def lora_config(self):
        """The ``peft.LoraConfig`` the stock loader builds for these weights."""
        from dataclasses import fields

        from peft import LoraConfig

        if self.config is not None:
            known = {f.name for f in fields(LoraConfig)}
            return LoraConfig(**{k: v for k, v in self.config.items() if k in known})
        from diffusers.utils.peft_utils import get_peft_kwargs

        # the rank dictionary diffusers' load_lora_adapter builds before calling get_peft_kwargs
        ranks = {f"^{k}": v.shape[1] for k, v in self.state.items() if "lora_B" in k and v.ndim > 1}
        return LoraConfig(**get_peft_kwargs(ranks, self.alphas or None, self.state))

    def scales(self) -> dict[str, float]:
        """``module -> alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), as peft scales each layer."""
        from peft.utils.other import get_pattern_key

        config = self.lora_config()
        out = {}
        for module in self.modules():
            r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
            alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
            out[module] = alpha / (r**0.5 if config.use_rslora else r)
        return out

    def delta_norms(self) -> dict[str, float]:
        """``module -> ||scale * B @ A||_F``, the Frobenius norm of the weight change the LoRA makes there."""
        norms = {}
        for module, scale in self.scales().items():
            a = self.state.get(f"{module}.lora_A.weight")
            b = self.state.get(f"{module}.lora_B.weight")
            if a is None or b is None or a.ndim != 2 or b.ndim != 2:
                continue
            a, b = a.double(), b.double()
            # ||BA||_F^2 = sum((B^T B) * (A A^T)): r x r products instead of the out x in delta
            norms[module] = abs(scale) * float(((b.T @ b) * (a @ a.T)).sum().clamp_min(0).sqrt())
        return norms


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def _json_ready(config: Mapping) -> dict:
    """A ``LoraConfig.to_dict()`` as JSON (sets as sorted lists, enums by value)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, set):
            value = sorted(value)
        elif hasattr(value, "value") and isinstance(value.value, str):
            value = value.value
        out[key] = value
    return out


def _own(tensor):
    """A CPU copy with its own storage: converted layouts share one ``lora_A`` between q, k and v, which safetensors
    refuses to write."""
    return tensor.detach().to("cpu", copy=True).contiguous()


def write_lora(family, lora: LoraWeights, folder: str | os.PathLike) -> list[str]:
    """Write ``lora`` into the existing ``folder`` in the format stock tools read for ``family``; returns the file
    names written."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if family.lora_format == "peft":
        if lora.other:
            raise LayerPruneError(
                f"{family.title} LoRAs are written as peft folders of the transformer only; this LoRA also changes "
                f"{sorted({k.split('.')[0] for k in lora.other})}"
            )
        config = lora.lora_config()
        config.base_model_name_or_path = None  # never a local path in a file that may be uploaded
        config.inference_mode = True
        config.save_pretrained(str(folder))
        state = {PEFT_PREFIX + k: _own(v) for k, v in lora.state.items()}
        save_file(state, str(folder / PEFT_WEIGHT_NAME), metadata={"format": "pt"})
        return [PEFT_CONFIG_NAME, PEFT_WEIGHT_NAME]
    if family.lora_format != "diffusers":
        raise ValueError(f"unknown lora_format {family.lora_format!r} of {family.name}")
    import torch
    from diffusers.loaders.lora_base import LoraBaseMixin

    # The writer Pipeline.save_lora_weights ends in, given the prefixed keys and metadata it would build: files of
    # other components and per-layer alphas go through unchanged.
    state = {f"{TRANSFORMER}.{k}": _own(v) for k, v in lora.state.items()}
    state.update({f"{TRANSFORMER}.{k}": torch.tensor(float(v)) for k, v in lora.alphas.items()})
    state.update({k: _own(v) for k, v in lora.other.items()})
    metadata = {f"{TRANSFORMER}.{k}": v for k, v in _json_ready(lora.config or {}).items()}
    metadata.update(lora.other_metadata)
    LoraBaseMixin.write_lora_layers(
        state_dict=state,
        save_directory=str(folder),
        is_main_process=True,
        weight_name=LORA_WEIGHT_NAME,
        save_function=None,
        safe_serialization=True,
        lora_adapter_metadata=metadata or None,
    )
    return [LORA_WEIGHT_NAME]


def trained_lora(model, adapter_name: str = "default") -> LoraWeights:
    """The LoRA adapter ``adapter_name`` of a peft-wrapped transformer (``add_adapter``), with its ``LoraConfig``."""
    from peft.utils import get_peft_model_state_dict

    state = {k: v.detach() for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}
    config = _json_ready(model.peft_config[adapter_name].to_dict())
    config["base_model_name_or_path"] = None
    return LoraWeights(state=state, config=config)


def save_trained_lora(model, folder: str | os.PathLike, adapter_name: str = "default") -> list[str]:
    """Write a trained transformer's LoRA into ``folder`` (created) as its family's stock tools read it: the
    pipeline's ``load_lora_weights(folder)``, or for PixArt ``PeftModel.from_pretrained(pipe.transformer, folder)``."""
    from ..families import family_of

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return write_lora(family_of(model), trained_lora(model, adapter_name), folder)


def read_trained_lora_state(folder: str | os.PathLike) -> dict:
    """The LoRA tensors (keys as ``get_peft_model_state_dict`` names them) of a folder :func:`save_trained_lora`
    wrote, for ``set_peft_model_state_dict`` when a training run resumes."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / PEFT_WEIGHT_NAME).is_file():
        state = load_file(str(folder / PEFT_WEIGHT_NAME))
        return {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}
    state = load_file(str(folder / LORA_WEIGHT_NAME))
    return {k.removeprefix(f"{TRANSFORMER}."): v for k, v in state.items() if k.startswith(f"{TRANSFORMER}.")}


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


def _split_components(state: Mapping, metadata: Mapping | None, alphas: Mapping | None = None) -> LoraWeights:
    """Pipeline-level LoRA keys -> the transformer's part (prefix removed) and the rest. A file without any
    ``transformer.`` key holds the transformer's keys unprefixed (``save_lora_adapter``'s layout)."""
    import torch

    prefix = f"{TRANSFORMER}."
    prefixed = any(k.startswith(prefix) for k in state)
    lora = LoraWeights(state={})
    for key, value in state.items():
        if not prefixed:
            lora.state[key] = value
        elif key.startswith(prefix):
            lora.state[key[len(prefix) :]] = value
        else:
            lora.other[key] = value
    for key, value in (alphas or {}).items():
        if key.startswith(prefix):
            lora.alphas[key[len(prefix) :]] = float(value)
        else:
            lora.other[key] = value if hasattr(value, "shape") else torch.tensor(float(value))
    if metadata:
        meta_prefixed = any(k.startswith(prefix) for k in metadata)
        config = {}
        for key, value in metadata.items():
            if not meta_prefixed:
                config[key] = value
            elif key.startswith(prefix):
                config[key[len(prefix) :]] = value
            else:
                lora.other_metadata[key] = value
        lora.config = config or None
    if lora.state and "lora_A" not in next(iter(lora.state)):  # older diffusers layouts (lora.down / lora.up)
        from diffusers.utils import convert_unet_state_dict_to_peft

        lora.state = convert_unet_state_dict_to_peft(lora.state)
    return lora


def _file_metadata(path: Path) -> dict | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        text = (f.metadata() or {}).get(METADATA_KEY)
    return json.loads(text) if text else None


def read_lora(family, path: str | os.PathLike) -> LoraWeights:
    """Read a LoRA file or peft folder for ``family``: a peft folder as it is; a file through the family pipeline's
    stock ``lora_state_dict`` (which converts the layouts its ``load_lora_weights`` accepts: kohya and original
    layouts for Flux), or for a family without a loader as diffusers' layout."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir() and not (path / PEFT_CONFIG_NAME).is_file():  # a diffusers folder: its weight file
        path = resolve_lora_source(str(path))[0]
    try:
        if path.is_dir():  # a peft folder
            config = json.loads((path / PEFT_CONFIG_NAME).read_text())
            state = load_file(str(path / PEFT_WEIGHT_NAME))
            state = {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}
            return _split_components(state, None) if not config else LoraWeights(state=state, config=config)
        if family.lora_format != "diffusers":
            return _split_components(load_file(str(path)), _file_metadata(path))
        import inspect

        import diffusers

        pipeline = getattr(diffusers, family.pipeline_classes[0])
        with_alphas = "return_alphas" in inspect.signature(pipeline.lora_state_dict).parameters
        extra = {"return_alphas": True} if with_alphas else {}
        out = pipeline.lora_state_dict(str(path), return_lora_metadata=True, **extra)
    except LayerPruneError:
        raise
    except Exception as error:  # a corrupt file or a layout the stock converters reject
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LayerPruneError(f"cannot read the LoRA {path.name} as a {family.title} LoRA: {first}") from error
    state, alphas, metadata = out if with_alphas else (out[0], None, out[1])
    return _split_components(state, metadata, alphas)


def resolve_lora_source(
    source: str, *, revision: str | None = None, weight_name: str | None = None
) -> tuple[Path, dict]:
    """The local LoRA file (or peft folder) that ``source`` names, and a record of it for files that may be
    uploaded: ``source`` by public name, the Hub ``revision`` (commit) and the ``sha256`` of the weights.

    ``source``: a ``.safetensors`` file; a folder holding ``pytorch_lora_weights.safetensors``, a peft adapter or one
    ``.safetensors`` file; or a Hub repo id (``weight_name`` picks the file; default ``pytorch_lora_weights``)."""
    path, record = local_or_hub(
        source,
        "LoRA",
        "give a .safetensors file, a folder or a Hub id",
        lambda: _download(source, revision, weight_name),
    )
    if path.is_dir():
        if (path / PEFT_CONFIG_NAME).is_file():
            weights = path / PEFT_WEIGHT_NAME
            if not weights.is_file():
                raise LayerPruneError(f"peft folder {source} has {PEFT_CONFIG_NAME} but no {PEFT_WEIGHT_NAME}")
        elif weight_name:
            weights = path / weight_name
        elif (path / LORA_WEIGHT_NAME).is_file():
            weights = path / LORA_WEIGHT_NAME
        else:
            found = sorted(p for p in path.glob("*.safetensors"))
            if len(found) != 1:
                what = "no .safetensors file" if not found else f"{len(found)} .safetensors files"
                raise LayerPruneError(f"LoRA folder {source} holds {what}; name the file (--weight-name NAME)")
            weights = found[0]
        if not weights.is_file():
            raise LayerPruneError(f"LoRA folder {source} has no {weights.name}")
    else:
        weights = path
        if path.suffix != ".safetensors":
            raise LayerPruneError(f"LoRA {source} is not a .safetensors file (only safetensors LoRAs are read)")
    record.update(weight_name=weights.name, sha256=file_sha256(weights))
    return (path if path.is_dir() and weights.name == PEFT_WEIGHT_NAME else weights), record


def _download(repo_id: str, revision: str | None, weight_name: str | None) -> Path:
    """A Hub LoRA's weight file (or its peft folder) in the local cache."""
    from huggingface_hub import hf_hub_download, list_repo_files

    try:
        if weight_name is None:
            files = list_repo_files(repo_id, revision=revision)
            if PEFT_CONFIG_NAME in files:
                hf_hub_download(repo_id, PEFT_CONFIG_NAME, revision=revision)
                return Path(hf_hub_download(repo_id, PEFT_WEIGHT_NAME, revision=revision)).parent
            candidates = [f for f in files if f.endswith(".safetensors")]
            weight_name = LORA_WEIGHT_NAME if LORA_WEIGHT_NAME in files else (candidates or [LORA_WEIGHT_NAME])[0]
            if LORA_WEIGHT_NAME not in files and len(candidates) > 1:
                raise LayerPruneError(f"{repo_id} holds {len(candidates)} .safetensors files; pass --weight-name NAME")
        return Path(hf_hub_download(repo_id, weight_name, revision=revision))
    except LayerPruneError:
        raise
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LayerPruneError(f"cannot fetch the LoRA {repo_id} from the Hub: {first}") from error


# ----------------------------------------------------------------------------------------------------------------
# Adapting a parent's LoRA to a pruned model
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptReport:
    """What :func:`adapt_lora` did. Norms are Frobenius norms of each layer's weight change ``scale * B @ A``,
    summed over layers."""

    layers_kept: int
    layers_dropped: int
    norm_total: float
    norm_removed: float

    @property
    def removed_share(self) -> float:
        """Share of the LoRA's summed weight-change norm that lived in removed blocks."""
        return self.norm_removed / self.norm_total if self.norm_total > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "layers_kept": self.layers_kept,
            "layers_dropped": self.layers_dropped,
            "norm_total": self.norm_total,
            "norm_removed": self.norm_removed,
            "removed_share": self.removed_share,
            "norm": "sum over LoRA layers of the Frobenius norm of scale * B @ A",
        }


def _source_depths(family, config: Mapping) -> list[int]:
    depths = config.get("source_stack_depths")
    if depths is None and len(family.stacks) == 1 and config.get("source_num_layers") is not None:
        depths = [config["source_num_layers"]]
    if depths is None:
        raise LayerPruneError("the pruned model does not record its parent's block depths (source_stack_depths)")
    return [int(d) for d in depths]


def _renamer(family, kept_by_stack, source_depths, where: str) -> Callable[[str], str | None]:
    """``module path -> its path in the pruned model`` (``None``: in a removed block); refuses a block index beyond
    the parent's depth."""
    positions = [{source: target for target, source in enumerate(local)} for local in kept_by_stack]

    def rename(path: str) -> str | None:
        for s, stack in enumerate(family.stacks):
            head = stack.attr + "."
            if path.startswith(head):
                index, _, rest = path[len(head) :].partition(".")
                if not index.isdigit():
                    return path
                if int(index) >= source_depths[s]:
                    raise LayerPruneError(
                        f"{where} names {stack.attr}.{index}, but the parent has {source_depths[s]} "
                        f"{stack.kind} blocks (0..{source_depths[s] - 1}); a LoRA of a deeper model?"
                    )
                target = positions[s].get(int(index))
                return None if target is None else f"{head}{target}" + (f".{rest}" if rest else "")
        return path

    return rename


def _rename_keys(items: Mapping, rename, split: str) -> dict:
    out = {}
    for key, value in items.items():
        module, sep, rest = key.partition(split)
        new = rename(module)
        if new is not None:
            out[new + sep + rest] = value
    return out


def _rename_config(config: dict | None, rename) -> dict | None:
    """Module names in ``target_modules`` / ``rank_pattern`` / ``alpha_pattern`` renumbered (names of removed blocks
    dropped); generic names (``to_q``) and regular expressions stay as they are."""
    if config is None:
        return None
    if config.get("layers_to_transform") is not None:
        raise LayerPruneError("LoRAs with layers_to_transform (peft) cannot be renumbered yet")

    def one(name: str) -> str | None:
        anchored = name.startswith("^")
        new = rename(name[1:] if anchored else name)
        return None if new is None else ("^" if anchored else "") + new

    out = dict(config)
    targets = config.get("target_modules")
    if isinstance(targets, (list, tuple, set)):
        out["target_modules"] = sorted({n for n in map(one, targets) if n is not None})
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            out[key] = {new: v for k, v in config[key].items() if (new := one(k)) is not None}
    return out


def _pruned_skeleton(family, config: Mapping):
    """The pruned transformer without weights (meta tensors): module names and shapes to check a LoRA against."""
    import torch

    with torch.device("meta"):
        return family.pruned_class().from_config(dict(config))


def _check_against(lora: LoraWeights, adapted: LoraWeights, modules: Mapping, family, rename, where: str) -> None:
    """Refuse a LoRA whose layers name no module of the pruned model's family, or modules of another width: every
    adapted layer must exist in the pruned model with its widths, every layer of a removed block in some block of the
    same stack."""
    by_stack_rest = set()
    for name in modules:
        for stack in family.stacks:
            head = stack.attr + "."
            if name.startswith(head):
                by_stack_rest.add((stack.attr, name[len(head) :].partition(".")[2]))
    unmatched = []
    for module in lora.modules():
        if rename(module) is None:
            stack, _, rest = module.partition(".")
            if (stack, rest.partition(".")[2]) not in by_stack_rest:
                unmatched.append(module)
    for module in adapted.modules():
        target = modules.get(module)
        if target is None:
            unmatched.append(module)
            continue
        weight = getattr(target, "weight", None)
        a, b = adapted.state.get(f"{module}.lora_A.weight"), adapted.state.get(f"{module}.lora_B.weight")
        if weight is not None and weight.ndim == 2 and a is not None and b is not None:
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != weight.shape[1] or b.shape[0] != weight.shape[0]:
                raise LayerPruneError(
                    f"{where}: its layer {module} maps {a.shape[-1]} -> {b.shape[0]} features, the pruned "
                    f"{family.title} model's {weight.shape[1]} -> {weight.shape[0]}; a LoRA of another model or width"
                )
    if unmatched:
        total = len(lora.modules())
        what = "none" if len(unmatched) >= total else f"{total - len(unmatched)}"
        raise LayerPruneError(
            f"{where}: {what} of its {total} LoRA layers match a module of the {family.title} transformer "
            f"(first that does not: {unmatched[0]}); a LoRA of another model family?"
        )


def adapt_lora(lora: LoraWeights, family, pruned_config: Mapping, where: str = "the LoRA") -> tuple:
    """A parent's LoRA renumbered to the blocks a pruned model kept (``pruned_config``: the pruned transformer's
    config with ``kept_layers`` and the parent's depths); layers of removed blocks are dropped.

    Returns ``(adapted LoraWeights, AdaptReport)``. Exact: the pruned model with the adapted LoRA equals the parent
    with the LoRA fused, then pruned."""
    if not lora.state:
        raise LayerPruneError(f"{where} holds no transformer LoRA weights")
    kept = pruned_config.get("kept_layers")
    if kept is None:
        raise LayerPruneError("the pruned model records no kept blocks (kept_layers); prune it with layerprune prune")
    source_depths = _source_depths(family, pruned_config)
    kept_by_stack = family.split(list(kept), source_depths)
    rename = _renamer(family, kept_by_stack, source_depths, where)
    adapted = LoraWeights(
        state=_rename_keys(lora.state, rename, ".lora_"),
        config=_rename_config(lora.config, rename),
        alphas=_rename_keys(lora.alphas, rename, ".alpha"),
        other=dict(lora.other),
        other_metadata=dict(lora.other_metadata),
    )
    if family.adapt_lora is not None:  # a block whose structure changes with its new position (SD3's last)
        source_config = {**pruned_config}
        source_config.update({s.depth_key: d for s, d in zip(family.stacks, source_depths, strict=True)})
        adapted.state = family.adapt_lora(adapted.state, source_config, kept_by_stack)
    _check_against(lora, adapted, dict(_pruned_skeleton(family, pruned_config).named_modules()), family, rename, where)
    if not adapted.state:
        raise LayerPruneError(f"{where}: every one of its LoRA layers is in a removed block; nothing is left to adapt")

    norms = lora.delta_norms()
    remaining = set(adapted.modules())
    # dropped: layers of removed blocks, and layers whose output no kept block reads (SD3's new last block)
    dropped = [m for m in lora.modules() if rename(m) not in remaining]
    report = AdaptReport(
        layers_kept=len(remaining),
        layers_dropped=len(dropped),
        norm_total=sum(norms.values()),
        norm_removed=sum(norms.get(m, 0.0) for m in dropped),
    )
    return adapted, report


def adapt_lora_to_folder(
    source: str,
    pruned: str | os.PathLike,
    output: str | os.PathLike,
    *,
    revision: str | None = None,
    weight_name: str | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> AdaptReport:
    """``layerprune adapt-lora``: read the parent's LoRA ``source``, renumber it to the blocks ``pruned`` kept and
    write it to the new folder ``output`` in the format the family's stock tools read, with ``layerprune_lora.json``
    recording the source (public name, Hub revision, sha256) and what was kept. Nothing is written on error."""
    from ..outputs import atomic_output_dir
    from ..provenance import public_name

    inputs, config, family = pruned_target(source, pruned, output, overwrite=overwrite)
    path, record = resolve_lora_source(source, revision=revision, weight_name=weight_name)
    where = f"LoRA {record['source']}"
    adapted, report = adapt_lora(read_lora(family, path), family, config, where)
    record = {
        "action": "adapt-lora",
        "family": family.name,
        "lora_format": family.lora_format,
        "source_lora": record,
        "pruned_model": public_name(str(pruned)),
        "kept_layers": list(config["kept_layers"]),
        **report.to_dict(),
    }
    with atomic_output_dir(output, overwrite=overwrite, inputs=inputs, kind="lora") as tmp:
        write_lora(family, adapted, tmp)
        LoraRecord(record).save(tmp / RECORD_NAME)
    if log is not None:
        log(
            f"LoRA layers kept: {report.layers_kept}, dropped with the removed blocks: {report.layers_dropped}; "
            f"{report.removed_share:.1%} of the LoRA's weight-change norm (sum of ||scale*B@A||_F) was in removed blocks"
        )
    return report


# ----------------------------------------------------------------------------------------------------------------
# Converting adapters written by earlier versions
# ----------------------------------------------------------------------------------------------------------------


def convert_old_lora(
    old: str | os.PathLike, output: str | os.PathLike, *, model: str | None = None, overwrite: bool = False
) -> Path:
    """Rewrite a LoRA folder written by an earlier ``train_distill --use_lora`` (``lora/`` with unprefixed keys, or a
    checkpoint's ``transformer_lora/``) as the family's stock tools read it. The family comes from ``model`` or the
    training output around ``old``."""
    from safetensors.torch import load_file

    from ..families import family_of_config
    from ..modeling import read_transformer_config
    from ..outputs import atomic_output_dir, check_output_dir

    old = Path(old).expanduser()
    check_output_dir(output, overwrite=overwrite, inputs=[str(old)])
    if not old.is_dir():
        raise LayerPruneError(f"{old} is not a LoRA folder")
    where = model or str(old.parent)
    try:
        config = read_transformer_config(where)
    except LayerPruneError as error:
        raise LayerPruneError(f"{error} (pass --model with the pruned model this LoRA was trained on)") from None
    family = family_of_config(config or {}, where)
    if (old / LORA_WEIGHT_NAME).is_file():
        path = old / LORA_WEIGHT_NAME
        lora = _split_components(load_file(str(path)), _file_metadata(path))
    elif (old / OLD_CHECKPOINT_WEIGHTS).is_file() and not (old / PEFT_CONFIG_NAME).is_file():
        record_file = old.parent / OLD_CHECKPOINT_RECORD
        # read leniently: checkpoints of that time may lack keys the current checkpoint record requires
        settings = (read_json(record_file, "checkpoint record") or {}).get("lora") if record_file.is_file() else None
        if not settings:
            raise LayerPruneError(f"{old} has no {OLD_CHECKPOINT_RECORD} beside it with the LoRA's rank and alpha")
        state = load_file(str(old / OLD_CHECKPOINT_WEIGHTS))
        lora = LoraWeights(
            state=state,
            config={
                "r": settings["rank"],
                "lora_alpha": settings["alpha"],
                "target_modules": list(settings["target_modules"]),
            },
        )
    else:
        raise LayerPruneError(f"{old} holds no LoRA of an earlier train_distill ({LORA_WEIGHT_NAME} or checkpoint)")
    if not lora.state:
        raise LayerPruneError(f"{old} holds no transformer LoRA weights")
    with atomic_output_dir(output, overwrite=overwrite, inputs=[str(old)], kind="lora") as tmp:
        write_lora(family, lora, tmp)
    return Path(output)


# ----------------------------------------------------------------------------------------------------------------
# Recovery training: a student starting from an adapted LoRA, a teacher with its LoRA fused
# ----------------------------------------------------------------------------------------------------------------

FUSED_ADAPTER = "layerprune_fused"


def load_lora_for(model, source: str, *, revision: str | None = None) -> tuple[LoraWeights, dict]:
    """Read ``source`` (file, folder or Hub id) as a LoRA of ``model``'s family; returns it and its source record."""
    from ..families import family_of

    family = family_of(model)
    path, record = resolve_lora_source(source, revision=revision)
    return read_lora(family, path), record


def _inject(model, lora: LoraWeights, adapter_name: str, where: str) -> None:
    """Add ``lora`` to ``model`` as adapter ``adapter_name`` with its weights; refuses weights that match nothing.
    Models with diffusers' ``PeftAdapterMixin`` get it through ``add_adapter`` (which also records its config)."""
    from peft import inject_adapter_in_model
    from peft.utils import set_peft_model_state_dict

    if not lora.state:
        raise LayerPruneError(f"{where} holds no transformer LoRA weights")
    config = lora.lora_config()
    try:
        if hasattr(model, "add_adapter"):
            model.add_adapter(config, adapter_name=adapter_name)
        else:
            inject_adapter_in_model(config, model, adapter_name=adapter_name)
    except ValueError as error:  # peft: "Target modules ... not found in the base model"
        raise LayerPruneError(f"{where} does not fit this model: {str(error).splitlines()[0]}") from error
    result = set_peft_model_state_dict(model, lora.state, adapter_name=adapter_name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise LayerPruneError(f"{where}: {len(unexpected)} LoRA weights match no layer of the model ({unexpected[0]})")


def fuse_lora_into(model, lora: LoraWeights, where: str = "the LoRA") -> None:
    """Merge ``lora`` into ``model``'s weights (``W += scale * B @ A``) and leave plain modules behind, as
    ``pipe.fuse_lora(); pipe.unload_lora_weights()`` does (the teacher of ``train_distill --teacher_lora``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    _inject(model, lora, FUSED_ADAPTER, where)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge(adapter_names=[FUSED_ADAPTER])
                setattr(module, child_name, child.get_base_layer())
    if getattr(model, "peft_config", None) is not None:
        model.peft_config.pop(FUSED_ADAPTER, None)
        if not model.peft_config and hasattr(model, "_hf_peft_config_loaded"):
            model._hf_peft_config_loaded = False


def start_from_lora(model, lora: LoraWeights, where: str = "the LoRA", adapter_name: str = "default") -> None:
    """Add ``lora`` to ``model`` (a pruned transformer) as the trainable adapter ``adapter_name``
    (``train_distill --init_lora``): its rank, alpha and target modules come from the LoRA."""
    _inject(model, lora, adapter_name, where)
