"""``SparsityRecord``: what was pruned, how, and how sparse the weights are; written beside the weights as
``sparsity.json`` and read back by one piece of code (this module)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import LayerPruneError
from ..records import Record
from .layers import count_zeros, sparsifiable_layers

FORMAT = "diffusers-layerprune/sparsity"
FORMAT_VERSION = 1
FILE_NAME = "sparsity.json"


@dataclass(frozen=True)
class ComponentSparsity:
    """Target and measured sparsity of one pipeline component's pruned layers.

    Attributes:
        target: the sparsity asked for (fraction of weights zeroed, ``[0, 1)``).
        zeros / weights: zero weights and all weights of the pruned layers (biases, embeddings, norms not counted).
        layers: ``{layer name: [zeros, weights]}`` per pruned ``nn.Linear``.
    """

    target: float
    zeros: int
    weights: int
    layers: dict[str, list[int]] = field(default_factory=dict)

    @property
    def achieved(self) -> float:
        """Measured fraction of zero weights over the pruned layers."""
        return self.zeros / self.weights if self.weights else 0.0

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "achieved": self.achieved,
            "zeros": self.zeros,
            "weights": self.weights,
            "layers": self.layers,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ComponentSparsity:
        return cls(float(data["target"]), int(data["zeros"]), int(data["weights"]), dict(data.get("layers") or {}))


@dataclass(frozen=True)
class SparsityRecord(Record):
    """How a pipeline's weights were sparsified and how sparse they are now.

    Attributes:
        method: registered method name (``magnitude``, ``wanda``).
        pattern: ``unstructured`` or ``N:M`` (e.g. ``2:4``).
        scope: comparison group of unstructured pruning: ``layer`` (per layer; Wanda: per output row) or ``global``.
        components: ``{component: ComponentSparsity}`` for each pruned component, measured on the saved weights.
        include_final_projection: whether the transformer's ``proj_out`` was pruned too.
        calibration: for calibrated methods, the prompts (source, count, fingerprint) and the pass's settings.
        source_model: the model that was sparsified.
        history: later or earlier steps that changed the weights, oldest first: ``{"action": "sparsify", ...}`` of an
            earlier sparsification, ``{"action": "prune", "kept_layers": [...]}``, ``{"action": "distill", ...}``.
        package_version: diffusers-layerprune version that wrote the record.
    """

    KIND = "sparsity"
    SCHEMA_VERSION = FORMAT_VERSION
    FORMAT = FORMAT
    WHAT = "sparsity record"
    FIX = "write it again with `layerprune sparsify`"
    INDENT = 1
    REQUIRED = {"method": str, "pattern": str, "scope": str, "components": dict}
    OPTIONAL = {
        "include_final_projection": bool,
        "calibration": dict,
        "source_model": str,
        "history": list,
        "package_version": str,
    }

    method: str
    pattern: str
    scope: str
    components: dict[str, ComponentSparsity]
    include_final_projection: bool = False
    calibration: dict | None = None
    source_model: str | None = None
    history: tuple[dict, ...] = ()
    package_version: str = ""

    def body(self) -> dict:
        return {
            "method": self.method,
            "pattern": self.pattern,
            "scope": self.scope,
            "include_final_projection": self.include_final_projection,
            "components": {name: c.to_dict() for name, c in self.components.items()},
            "calibration": self.calibration,
            "source_model": self.source_model,
            "history": list(self.history),
            "package_version": self.package_version,
        }

    @classmethod
    def from_body(cls, data: dict) -> SparsityRecord:
        return cls(
            method=data["method"],
            pattern=data["pattern"],
            scope=data["scope"],
            components={k: ComponentSparsity.from_dict(v) for k, v in data["components"].items()},
            include_final_projection=bool(data.get("include_final_projection", False)),
            calibration=data.get("calibration"),
            source_model=data.get("source_model"),
            history=tuple(data.get("history") or ()),
            package_version=data.get("package_version", ""),
        )

    def model_name(self) -> str | None:
        return self.source_model

    def summary(self) -> dict:
        """The settings as one history entry (what a later step appends when it re-measures)."""
        return {
            "action": "sparsify",
            "method": self.method,
            "pattern": self.pattern,
            "scope": self.scope,
            "targets": {name: c.target for name, c in self.components.items()},
            "achieved": {name: c.achieved for name, c in self.components.items()},
            "calibration": self.calibration,
        }

    def remeasured(self, pipe_or_components, event: dict) -> SparsityRecord:
        """This record with every component measured again on ``pipe_or_components`` (a pipeline, or
        ``{component: module}``) and ``event`` appended to the history (e.g. after depth pruning or distillation).
        Components the new owner does not hold are dropped."""
        targets = {name: c.target for name, c in self.components.items()}
        measured = measure_sparsity(
            pipe_or_components, targets, include_final_projection=self.include_final_projection, missing_ok=True
        )
        return replace(self, components=measured, history=(*self.history, event))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/sparsity.json`` (atomically)."""
        return super().save(Path(folder) / FILE_NAME)


def read_sparsity_record(folder: str | os.PathLike | None) -> SparsityRecord | None:
    """The record in ``folder/sparsity.json``, or ``None`` when ``folder`` is not a local folder or holds none."""
    if folder is None:
        return None
    path = Path(folder).expanduser() / FILE_NAME
    if not path.is_file():
        return None
    return SparsityRecord.load(path)


def _module_of(pipe_or_components, component: str):
    if isinstance(pipe_or_components, Mapping):
        return pipe_or_components.get(component)
    return getattr(pipe_or_components, component, None)


def measure_sparsity(
    pipe_or_components,
    targets: Mapping[str, float],
    *,
    include_final_projection: bool = False,
    missing_ok: bool = False,
) -> dict[str, ComponentSparsity]:
    """Zero weights of each component's pruned layers, as :class:`ComponentSparsity` with the given targets."""
    measured = {}
    for name, target in targets.items():
        module = _module_of(pipe_or_components, name)
        if module is None:
            if missing_ok:
                continue
            raise LayerPruneError(f"the pipeline has no {name} to measure")
        counts = count_zeros(sparsifiable_layers(module, name, include_final_projection=include_final_projection))
        measured[name] = ComponentSparsity(
            target=float(target),
            zeros=sum(z for z, _ in counts.values()),
            weights=sum(n for _, n in counts.values()),
            layers={layer: [z, n] for layer, (z, n) in counts.items()},
        )
    return measured
