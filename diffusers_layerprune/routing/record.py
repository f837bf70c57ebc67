"""``routing.json`` + ``router.safetensors``: the codes and the router of a routed pipeline, in files of their own
beside a folder that stock diffusers loads as the full-depth (shared-weight) pipeline. Written and read here only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import LayerPruneError
from ..records import Record, read_json
from .router import PromptRouter

FORMAT = "diffusers-layerprune/routing"
FORMAT_VERSION = 1
FILE_NAME = "routing.json"
ROUTER_FILE = "router.safetensors"


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and values, in sorted name order (so a module and the
    safetensors files it was saved to give the same value)."""
    import hashlib

    from ..evaluation import tensor_digest

    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(tensor_digest(state[name]).encode())
    return h.hexdigest()


def transformer_fingerprint(transformer) -> str:
    """SHA-256 of the transformer's weights: the router and codes were fitted to exactly these."""
    return state_fingerprint(transformer.state_dict())


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """:func:`transformer_fingerprint` of the transformer saved in ``folder/transformer`` (safetensors), read
    without building the model."""
    from safetensors.torch import load_file

    files = sorted((Path(folder) / "transformer").glob("*.safetensors"))
    if not files:
        raise LayerPruneError(f"{folder} has no transformer/*.safetensors to check the router against")
    state = {}
    for path in files:
        state.update(load_file(str(path)))
    return state_fingerprint(state)


@dataclass
class CodeStats:
    """What one code does on the prompts it was fitted on.

    Attributes:
        kept_layers: blocks the code runs (indices into the model's block list).
        share: fraction of the training prompts the router sends to it.
        closest_prompts: training prompts nearest to the code's centre on the router's sphere, nearest first.
    """

    kept_layers: list[int]
    share: float = 0.0
    closest_prompts: list[str] = field(default_factory=list)


@dataclass
class RoutingRecord(Record):
    """Everything but the router's weights.

    Attributes:
        num_layers: blocks of the shared-weight transformer (all codes index into it).
        budget: target mean number of blocks run per prompt; ``mean_blocks`` is what the router achieves on the
            training prompts (``<= budget``).
        codes: one :class:`CodeStats` per code.
        router: :class:`PromptRouter` constructor arguments.
        transformer_sha256: fingerprint of the weights the routing belongs to (:func:`transformer_fingerprint`).
        source_model: public name of the model routed; ``source_num_layers`` / ``kept_layers`` when that model was
            itself pruned (the budget then counts blocks of the pruned model).
        training: settings and losses of the run (public names only).
        depth_penalty: ``lam >= 0`` subtracted from each code's router score per block it runs before the argmax
            (``score - lam * blocks``): what makes a router over given codes (an elastic run's depths) meet the
            budget on its training prompts (:func:`~diffusers_layerprune.routing.transport.budgeted_assignment`);
            0 for learned codes, which are trimmed to the budget instead.
        elastic: for a router over an elastic run's depths: ``depths`` (largest first, code ``k`` is
            ``depths[k]``) and ``kept_layers`` (each depth's blocks in the source's numbering), from its
            ``elastic.json``.
    """

    KIND = "routing"
    SCHEMA_VERSION = FORMAT_VERSION
    FORMAT = FORMAT
    WHAT = "layerprune routing file"
    FIX = "write it again with layerprune route"
    REQUIRED = {"num_layers": int, "budget": float, "codes": list, "router": dict, "transformer_sha256": str}
    OPTIONAL = {
        "mean_blocks": float,
        "source_model": str,
        "source_num_layers": int,
        "kept_layers": list,
        "training": dict,
        "depth_penalty": float,
        "elastic": dict,
    }

    num_layers: int
    budget: float
    codes: list[CodeStats]
    router: dict
    transformer_sha256: str
    mean_blocks: float = 0.0
    source_model: str | None = None
    source_num_layers: int | None = None
    kept_layers: list[int] | None = None
    training: dict = field(default_factory=dict)
    depth_penalty: float = 0.0
    elastic: dict | None = None

    @property
    def num_codes(self) -> int:
        return len(self.codes)

    def skipped_layers(self, code: int) -> list[int]:
        kept = set(self.codes[code].kept_layers)
        return [i for i in range(self.num_layers) if i not in kept]

    @classmethod
    def from_body(cls, data: dict) -> RoutingRecord:
        record = cls(**{**data, "codes": [CodeStats(**c) for c in data["codes"]]})
        for k, c in enumerate(record.codes):
            if not c.kept_layers or any(not 0 <= i < record.num_layers for i in c.kept_layers):
                raise LayerPruneError(f"code {k} has blocks outside 0..{record.num_layers - 1}")
        return record

    def model_name(self) -> str | None:
        return self.source_model


@dataclass
class Routing:
    """A fitted router and its codes (:class:`RoutingRecord` + :class:`PromptRouter`)."""

    record: RoutingRecord
    router: PromptRouter

    def route(self, pooled: torch.Tensor, *, enforce_budget: bool | float = False) -> torch.Tensor:
        """Code index of each prompt ``[B]`` from pooled text embeddings ``[B, D]``.

        The router meets ``record.budget`` on its training prompts; on other prompts the mean depth can be a little
        above it (docs/routing.md measures how much). ``enforce_budget=True`` makes this batch meet the budget
        (``a number``: that mean instead, a block count or a fraction of the depth) by the budget-constrained
        assignment of :func:`~diffusers_layerprune.routing.transport.budgeted_assignment`: a batch within budget is
        routed as usual, otherwise the prompts the router is least sure about move to shallower codes. Each image
        then depends on the other prompts of its batch, and a batch of one prompt can only run codes within budget.
        """
        if enforce_budget is False or enforce_budget is None:
            return self.scores(pooled).argmax(-1)
        from .transport import budgeted_assignment

        budget = self.record.budget if enforce_budget is True else budget_blocks(enforce_budget, self.record.num_layers)
        depths = [len(c.kept_layers) for c in self.record.codes]
        return budgeted_assignment(self.scores(pooled), depths, budget)[0]

    @torch.no_grad()
    def scores(self, pooled: torch.Tensor) -> torch.Tensor:
        """Routing scores ``[B, K]`` (on the CPU): the router's logits less ``record.depth_penalty`` per block each
        code runs; a prompt goes to the code of the highest."""
        device = next(self.router.parameters()).device
        scores = self.router(pooled.to(device)).cpu()
        if self.record.depth_penalty:  # in float64, as train_routed chose the penalty (the same argmax)
            depths = torch.tensor([float(len(c.kept_layers)) for c in self.record.codes], dtype=torch.float64)
            scores = scores.double() - self.record.depth_penalty * depths
        return scores

    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.router.state_dict().items()}
        save_file(state, str(folder / ROUTER_FILE), metadata={"format": FORMAT})
        self.record.save(folder / FILE_NAME)


def has_routing(folder: str | os.PathLike) -> bool:
    return (Path(folder) / FILE_NAME).is_file()


def read_routing_record(folder: str | os.PathLike) -> RoutingRecord:
    """The ``routing.json`` of ``folder`` (a folder, or the file itself)."""
    path = Path(folder)
    path = path / FILE_NAME if path.is_dir() else path
    if not path.is_file():
        raise LayerPruneError(f"{path} not found: the folder holds no router (make one with layerprune route)")
    return RoutingRecord.from_dict(read_json(path, "routing file", RoutingRecord.FIX), str(path))


def load_routing(folder: str | os.PathLike, transformer=None, *, device=None) -> Routing:
    """Read ``routing.json`` and ``router.safetensors`` from ``folder``; with ``transformer``, refuse a router made
    for another model (another depth or other weights) with a :class:`LayerPruneError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    record = read_routing_record(folder)
    if transformer is not None:
        check_routing_matches(record, transformer, str(folder / FILE_NAME))
    weights = folder / ROUTER_FILE
    if not weights.is_file():
        raise LayerPruneError(f"{weights} not found: routing.json needs its router weights beside it")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise LayerPruneError(f"{weights} is not a readable safetensors file ({error})") from None
    try:
        router = PromptRouter(**record.router)
    except TypeError as error:
        raise LayerPruneError(f"{folder / FILE_NAME}: bad router settings ({error})") from None
    if router.num_codes != record.num_codes:
        raise LayerPruneError(
            f"{folder / FILE_NAME}: the router has {router.num_codes} codes, the file lists {record.num_codes}"
        )
    missing, unexpected = router.load_state_dict(state, strict=False)
    shapes_ok = all(state[k].shape == v.shape for k, v in router.state_dict().items() if k in state)
    if missing or unexpected or not shapes_ok:
        raise LayerPruneError(
            f"{weights} does not match routing.json (missing {missing}, unexpected {unexpected}); "
            "the two files must come from the same layerprune route run"
        )
    router.eval()
    if device is not None:
        router.to(device)
    return Routing(record, router)


def check_routing_matches(record: RoutingRecord, transformer, where: str) -> None:
    """Raise when ``record`` was fitted to another transformer than ``transformer``."""
    from ..blocks import num_blocks

    depth = num_blocks(transformer)
    if record.num_layers != depth:
        raise LayerPruneError(
            f"{where} routes a {record.num_layers}-block model but this transformer has {depth} blocks: the router "
            "comes from another model; use the routing files saved with this model"
        )
    text_dim = transformer.config.get("caption_channels")
    if text_dim is not None and record.router.get("text_dim") != text_dim:
        raise LayerPruneError(
            f"{where} expects {record.router.get('text_dim')}-wide text embeddings but this model's are {text_dim}: "
            "the router comes from another model"
        )
    if record.transformer_sha256 != transformer_fingerprint(transformer):
        raise LayerPruneError(
            f"{where} was fitted to other transformer weights (fingerprint {record.transformer_sha256[:12]}): the "
            "router comes from another model; route this model with layerprune route"
        )


def check_routing_folder(folder: str | os.PathLike) -> RoutingRecord | None:
    """For a folder with ``routing.json``: check that it belongs to the transformer saved there (depth and weights)
    and that ``router.safetensors`` loads; return the record (``None`` for a folder without routing)."""
    folder = Path(folder)
    if not has_routing(folder):
        return None
    record = read_routing_record(folder)
    where = str(folder / FILE_NAME)
    config_path = folder / "transformer" / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        raise LayerPruneError(f"{config_path} is missing or unreadable; the routed folder is incomplete") from None
    if config.get("num_layers") != record.num_layers:
        raise LayerPruneError(
            f"{where} routes a {record.num_layers}-block model but {folder} holds a {config.get('num_layers')}-block "
            "transformer: the router comes from another model; use the routing files saved with this model"
        )
    if record.transformer_sha256 != folder_fingerprint(folder):
        raise LayerPruneError(
            f"{where} was fitted to other transformer weights than those in {folder}: the router comes from another "
            "model; route this model with layerprune route"
        )
    load_routing(folder)  # the weights file must match the record
    return record


def routing_summary(record: RoutingRecord) -> str:
    """The card's one-line summary of a routed model."""
    depths = sorted({len(c.kept_layers) for c in record.codes})
    if record.elastic:
        return (
            f"A prompt-routed elastic model of `{record.source_model or 'its source model'}`: one set of weights "
            f"distilled at the nested depths {', '.join(map(str, record.elastic['depths']))} together (the folder's "
            f"model is the largest, {record.num_layers} blocks) plus a router that sends each prompt to one of those "
            f"depths, {record.mean_blocks:.2f} blocks per prompt on average over its training prompts (budget "
            f"{record.budget:g})."
        )
    pruned = (
        f", itself depth-pruned to {record.num_layers} of {record.source_num_layers} blocks"
        if record.kept_layers
        else ""
    )
    return (
        f"A prompt-routed version of `{record.source_model or 'its source model'}`{pruned}: one shared set of weights "
        f"({record.num_layers} transformer blocks) plus a router that sends each prompt to one of {record.num_codes} "
        f"codes, sets of blocks to run ({', '.join(map(str, depths))} of {record.num_layers} blocks), "
        f"{record.mean_blocks:.2f} blocks per prompt on average over its training prompts (budget {record.budget:g})."
    )


def budget_blocks(budget: float, num_layers: int) -> float:
    """The budget as a mean number of blocks: a fraction in (0, 1) of ``num_layers``, or a count in [1, depth)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise LayerPruneError(f"--budget must be a number, got {budget!r}")
    if budget <= 0:
        raise LayerPruneError(
            f"--budget {budget:g} must be positive: a fraction of the {num_layers} blocks (e.g. 0.75) or a mean block "
            "count (e.g. 9)"
        )
    blocks = round(budget * num_layers, 6) if budget < 1 else float(budget)
    if blocks >= num_layers:
        raise LayerPruneError(
            f"--budget {budget:g} is the full depth or more ({num_layers} blocks): routing saves nothing; give fewer, "
            f"e.g. {0.75 * num_layers:g} or 0.75"
        )
    return blocks
