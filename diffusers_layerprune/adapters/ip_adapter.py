"""IP-Adapters across pruning: ``layerprune adapt-ip-adapter``.

diffusers' IP-Adapter loaders (``FluxIPAdapterMixin``, ``SD3IPAdapterMixin``) give IP-Adapter layer ``i`` to the
``i``-th attention processor they walk, not to the block the layer was trained for. On a pruned Flux the kept double
blocks silently get the layers of the parent's first blocks; on a pruned SD3 the loader fails with a ``KeyError`` on
the first layer numbered beyond the new depth. This module keeps the image projection and the layers of the kept
blocks, renumbered in the loader's order, and writes them in the file format both loaders read
(``ip-adapter.safetensors`` with ``image_proj.*`` / ``ip_adapter.*`` keys), with ``layerprune_ip_adapter.json``
recording the source beside it.

Which stack carries IP-Adapter layers, which names a layer holds and which widths fit a model are family facts:
:class:`~diffusers_layerprune.families.base.IPAdapterLayout` in each family's module. The command's parser lives in
:mod:`diffusers_layerprune.adapters.cli` with the other adapters'.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import LayerPruneError, first_line, user_errors
from .record import IpAdapterRecord
from .sources import file_sha256, local_or_hub, pruned_target

WEIGHT_NAME = "ip-adapter.safetensors"  # SD3IPAdapterMixin.load_ip_adapter's default weight_name
RECORD_NAME = "layerprune_ip_adapter.json"

# The key prefixes and renames FluxIPAdapterMixin.load_ip_adapter reads from a .safetensors file (XLabs' original
# layout besides diffusers' own); SD3IPAdapterMixin reads the diffusers prefixes only, which is what we write.
_IMAGE_PROJ_PREFIXES = ("image_proj.", "ip_adapter_proj_model.")
_LAYER_PREFIXES = ("ip_adapter.", "double_blocks.")
_LAYER_RENAMES = (
    ("ip_adapter_double_stream_k_proj", "to_k_ip"),
    ("ip_adapter_double_stream_v_proj", "to_v_ip"),
    ("processor.", ""),
)


def read_ip_adapter(path: str | os.PathLike) -> dict:
    """An IP-Adapter file as diffusers' loaders see it: ``{"image_proj": {...}, "ip_adapter": {"<i>.<name>": ...}}``.

    ``.safetensors`` files are read with the key prefixes and renames of diffusers' Flux reader (``image_proj.`` /
    ``ip_adapter.``, and XLabs' ``ip_adapter_proj_model.`` / ``double_blocks.N.processor.ip_adapter_double_stream_*``);
    other files (``.bin``) must hold that two-part dict and are read with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            state: dict = {"image_proj": {}, "ip_adapter": {}}
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    head, _, rest = key.partition(".")
                    if key.startswith(_IMAGE_PROJ_PREFIXES):
                        state["image_proj"][rest] = f.get_tensor(key)
                    elif key.startswith(_LAYER_PREFIXES):
                        for old, new in _LAYER_RENAMES:
                            rest = rest.replace(old, new)
                        state["ip_adapter"][rest] = f.get_tensor(key)
        else:
            import torch

            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise LayerPruneError(f"cannot read the IP-Adapter {path.name}: {first_line(error)}") from error
    if not isinstance(state, Mapping) or not state.get("image_proj") or not state.get("ip_adapter"):
        raise LayerPruneError(
            f"{path.name} is not an IP-Adapter: it holds no image_proj and ip_adapter weights "
            "(the two parts diffusers' load_ip_adapter reads)"
        )
    return {"image_proj": dict(state["image_proj"]), "ip_adapter": dict(state["ip_adapter"])}


def resolve_ip_adapter_source(
    source: str, *, revision: str | None = None, weight_name: str | None = None
) -> tuple[Path, dict]:
    """The local IP-Adapter file ``source`` names and a record of it that may be uploaded: ``source`` by public name,
    the Hub ``revision`` (commit) and the file's ``sha256``.

    ``source``: a file; a folder (``weight_name`` picks the file, else its one ``.safetensors`` or ``.bin`` file);
    or a Hub repo id (``weight_name`` required unless the repo holds one weight file)."""
    path, record = local_or_hub(
        source, "IP-Adapter", "give a file, a folder or a Hub id", lambda: _download(source, revision, weight_name)
    )
    if path.is_dir():
        if weight_name:
            weights = path / weight_name
            if not weights.is_file():
                raise LayerPruneError(f"IP-Adapter folder {source} has no {weight_name}")
        else:
            found = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
            if len(found) != 1:
                what = "no .safetensors or .bin file" if not found else f"{len(found)} weight files"
                raise LayerPruneError(f"IP-Adapter folder {source} holds {what}; name the file (--weight-name NAME)")
            weights = found[0]
    else:
        weights = path
    record.update(weight_name=weights.name, sha256=file_sha256(weights))
    return weights, record


def _download(repo_id: str, revision: str | None, weight_name: str | None) -> Path:
    from huggingface_hub import hf_hub_download, list_repo_files

    with user_errors(f"cannot fetch the IP-Adapter {repo_id} from the Hub"):
        if weight_name is None:
            files = [f for f in list_repo_files(repo_id, revision=revision) if f.endswith((".safetensors", ".bin"))]
            if len(files) != 1:
                raise LayerPruneError(f"{repo_id} holds {len(files)} weight files; pass --weight-name NAME")
            weight_name = files[0]
        return Path(hf_hub_download(repo_id, weight_name, revision=revision))


@dataclass(frozen=True)
class IPAdaptReport:
    """What :func:`adapt_ip_adapter` did. ``kept`` / ``dropped``: the parent's IP-Adapter layers (= block indices in
    the stack that carries them) kept, in their new order, and dropped. Norms: sums over layers of the Frobenius norms
    of ``to_k_ip`` and ``to_v_ip`` weights."""

    kept: tuple[int, ...]
    dropped: tuple[int, ...]
    norm_total: float
    norm_removed: float

    @property
    def removed_share(self) -> float:
        return self.norm_removed / self.norm_total if self.norm_total > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "ip_layers_kept": list(self.kept),
            "ip_layers_dropped": list(self.dropped),
            "norm_total": self.norm_total,
            "norm_removed": self.norm_removed,
            "removed_share": self.removed_share,
            "norm": "sum over IP-Adapter layers of the Frobenius norms of the to_k_ip and to_v_ip weights",
        }


def _layers(state: Mapping, where: str) -> dict[int, dict]:
    """``{"<i>.<name>": t}`` -> ``{i: {name: t}}``."""
    layers: dict[int, dict] = {}
    for key, value in state["ip_adapter"].items():
        index, _, name = key.partition(".")
        if not index.isdigit() or not name:
            raise LayerPruneError(f"{where} has a layer key {key!r} that names no layer number (expected '<i>.<name>')")
        layers.setdefault(int(index), {})[name] = value
    return layers


def ip_adapter_layout(family, config: Mapping, where: str = "the IP-Adapter"):
    """The family's :class:`~diffusers_layerprune.families.base.IPAdapterLayout`, or a :class:`LayerPruneError` when
    diffusers has no IP-Adapter loader for the family or for this configuration of it."""
    layout = family.ip_adapter
    if layout is None:
        raise LayerPruneError(
            f"diffusers has no IP-Adapter loader for {family.title} (load_ip_adapter exists for Flux.1 and SD3 only)"
        )
    problem = layout.unsupported(config)
    if problem:
        raise LayerPruneError(f"cannot adapt {where}: {problem}")
    return layout


def adapt_ip_adapter(state: Mapping, family, pruned_config: Mapping, where: str = "the IP-Adapter") -> tuple:
    """The parent's IP-Adapter ``state`` (as :func:`read_ip_adapter` returns it) for the pruned model of
    ``pruned_config``: the image projection unchanged, the layers of kept blocks renumbered to their new positions.

    Returns ``(adapted_state, IPAdaptReport)``. Raises :class:`LayerPruneError` for an IP-Adapter of another family
    or width, one naming blocks beyond the parent's depth or missing some, and families without a stock loader."""
    layout = ip_adapter_layout(family, pruned_config, where)
    layers = _layers(state, where)
    names = set().union(*layers.values())
    if names ^ layout.layer_names:
        raise LayerPruneError(
            f"{where} is not a {family.title} IP-Adapter: its layers hold {sorted(names)[:4]}, "
            f"diffusers' {family.title} loader reads {sorted(layout.layer_names)[:4]}"
        )
    incomplete = {i: sorted(layout.layer_names - set(layer)) for i, layer in sorted(layers.items())}
    incomplete = {i: missing for i, missing in incomplete.items() if missing}
    if incomplete:  # the stock loader loads each layer strictly
        i, missing = next(iter(incomplete.items()))
        raise LayerPruneError(f"{where} is damaged: its layer {i} has no {', '.join(missing)}")
    problem = layout.check_widths(pruned_config, state)
    if problem:
        raise LayerPruneError(f"{where} does not fit this {family.title} model: {problem}")

    stack_index = [stack.attr for stack in family.stacks].index(layout.stack)
    depths = pruned_config.get("source_stack_depths")
    if depths is None and len(family.stacks) == 1:
        depths = [pruned_config.get("source_num_layers")]
    if depths is None or depths[stack_index] is None:
        raise LayerPruneError("the pruned model does not record its parent's depth (source_stack_depths)")
    depths = [int(d) for d in depths]
    parent_depth = depths[stack_index]
    kind = family.stacks[stack_index].kind
    beyond = sorted(i for i in layers if i >= parent_depth)
    if beyond:
        raise LayerPruneError(
            f"{where} names {kind} blocks {beyond[:5]} beyond the parent's depth ({parent_depth} {kind} blocks, "
            f"0..{parent_depth - 1}): it was made for another model"
        )
    missing = [i for i in range(parent_depth) if i not in layers]
    if missing:
        raise LayerPruneError(
            f"{where} has no layers for {kind} blocks {missing[:5]} of the parent's {parent_depth}: it was made for "
            "another model (the stock loader would fail on the parent too)"
        )

    kept = family.split(pruned_config["kept_layers"], depths)[stack_index]
    ip_layers = {}
    for new, source in enumerate(kept):
        for name, value in layers[source].items():
            ip_layers[f"{new}.{name}"] = value
    kept_set = set(kept)

    def norm(index: int) -> float:
        return sum(float(v.float().norm()) for n, v in layers[index].items() if n.endswith("_ip.weight"))

    norms = {i: norm(i) for i in layers}
    report = IPAdaptReport(
        kept=tuple(kept),
        dropped=tuple(i for i in sorted(layers) if i not in kept_set),
        norm_total=sum(norms.values()),
        norm_removed=sum(n for i, n in norms.items() if i not in kept_set),
    )
    return {"image_proj": dict(state["image_proj"]), "ip_adapter": ip_layers}, report


def write_ip_adapter(state: Mapping, path: str | os.PathLike) -> None:
    """Write ``state`` as the ``.safetensors`` file diffusers' ``load_ip_adapter`` reads (``image_proj.<key>``,
    ``ip_adapter.<i>.<name>``)."""
    from safetensors.torch import save_file

    # clone: tensors read from a .bin may share storage (slices of one buffer), which save_file refuses
    flat = {f"{part}.{key}": value.detach().contiguous().clone() for part in ("image_proj", "ip_adapter")
            for key, value in state[part].items()}  # fmt: skip
    save_file(flat, str(path))


def adapt_ip_adapter_to_folder(
    source: str,
    pruned: str | os.PathLike,
    output: str | os.PathLike,
    *,
    revision: str | None = None,
    weight_name: str | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> IPAdaptReport:
    """``layerprune adapt-ip-adapter``: read the parent's IP-Adapter ``source``, keep the layers of the blocks
    ``pruned`` kept, renumbered, and write ``output/ip-adapter.safetensors`` (what ``pipe.load_ip_adapter(output,
    weight_name="ip-adapter.safetensors")`` reads) and ``output/layerprune_ip_adapter.json`` (the source's public
    name, Hub revision and sha256, and the layers kept). Nothing is written on error."""
    from ..outputs import atomic_output_dir
    from ..provenance import public_name

    inputs, config, family = pruned_target(source, pruned, output, overwrite=overwrite)
    ip_adapter_layout(family, config)  # before reading a possibly large file
    path, source_record = resolve_ip_adapter_source(source, revision=revision, weight_name=weight_name)
    adapted, report = adapt_ip_adapter(read_ip_adapter(path), family, config, f"IP-Adapter {source_record['source']}")
    record = {
        "action": "adapt-ip-adapter",
        "family": family.name,
        "source_ip_adapter": source_record,
        "pruned_model": public_name(str(pruned)),
        "kept_layers": list(config["kept_layers"]),
        "weight_name": WEIGHT_NAME,
        **report.to_dict(),
    }
    with atomic_output_dir(output, overwrite=overwrite, inputs=inputs, kind="ip-adapter") as tmp:
        write_ip_adapter(adapted, tmp / WEIGHT_NAME)
        IpAdapterRecord(record).save(tmp / RECORD_NAME)
    if log is not None:
        kind = next(s.kind for s in family.stacks if s.attr == family.ip_adapter.stack)
        log(f"IP-Adapter layers kept ({kind} blocks of the parent, in their new order): {list(report.kept)}")
        log(
            f"dropped with the removed blocks: {list(report.dropped)}; {report.removed_share:.1%} of the layers' "
            "weight norm (sum of ||to_k_ip||_F + ||to_v_ip||_F) was in removed blocks; image_proj kept unchanged"
        )
    return report
