"""``LayerImportance``: the one result type every criterion returns and every consumer (plans, prune, reports) reads."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LayerPruneError
from ..outputs import atomic_output_file
from ..records import Record, read_json

FORMAT = "diffusers-layerprune/layer-importance"
FORMAT_VERSION = 1


@dataclass
class LayerImportance(Record):
    """Per-block importance of one model under one criterion, with how it was measured.

    Attributes:
        values: one float per block, in block order (``len == num_layers``).
        criterion: registered criterion name (``preference``, ``block_influence``, ...).
        higher_is_more_important: orientation of ``values``. Every built-in criterion reports ``True`` (a larger
            preference drop, a larger output change, a larger weight norm = a block that matters more).
        stderr: standard error of each value over prompts, when the criterion averages over prompts.
        per_prompt: ``[num_layers][num_prompts]`` contributions whose mean over prompts is ``values`` (e.g. the
            preference drop of each prompt), when the criterion has them.
        metadata: how it was measured: ``model``, ``num_layers``, ``scorer``, ``prompts`` (source, fingerprint,
            count), ``seed``, ``num_inference_steps``, ``guidance_scale``, ``resolution``, ``package_version``, ...
        extra: criterion-specific results, e.g. ``span_distance`` for angular distance (``{n: [d(l, n) for l]}``),
            ``additivity`` for output loss, ``greedy_order`` when a greedy plan was scored.
    """

    KIND = "layer-importance"
    SCHEMA_VERSION = FORMAT_VERSION
    FORMAT = FORMAT
    WHAT = "layer-importance file"
    FIX = "write one with `layerprune score`"
    REQUIRED = {"values": list, "criterion": str}
    OPTIONAL = {
        "higher_is_more_important": bool,
        "num_layers": int,
        "stderr": list,
        "per_prompt": list,
        "metadata": dict,
        "extra": dict,
    }

    values: list[float]
    criterion: str
    higher_is_more_important: bool = True
    stderr: list[float] | None = None
    per_prompt: list[list[float]] | None = None
    metadata: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = [float(v) for v in self.values]
        if not self.values:
            raise LayerPruneError("a layer importance needs at least one block value")
        for name in ("stderr", "per_prompt"):
            given = getattr(self, name)
            if given is not None and len(given) != len(self.values):
                raise LayerPruneError(f"{name} has {len(given)} entries but there are {len(self.values)} blocks")

    @property
    def num_layers(self) -> int:
        return len(self.values)

    @property
    def model(self) -> str | None:
        return self.metadata.get("model")

    @property
    def block_labels(self) -> list[str]:
        """A label per block: its stack and index there for many-stack families (Flux: ``double 3``, ``single 0``,
        recorded as ``metadata["block_names"]``), else its index."""
        names = self.metadata.get("block_names")
        if isinstance(names, list) and len(names) == self.num_layers:
            return [str(name) for name in names]
        return [str(i) for i in range(self.num_layers)]

    def ranking(self) -> list[int]:
        """Block indices from least to most important; ties keep block order (lower index counts as less important)."""
        sign = 1.0 if self.higher_is_more_important else -1.0
        # NaN (a block the criterion could not measure) sorts as most important, so it is never dropped by accident.
        return sorted(range(self.num_layers), key=lambda i: (_nan_last(sign * self.values[i]), i))

    def least_important(self, k: int) -> list[int]:
        """The ``k`` least important blocks, sorted by index."""
        self._check_k(k)
        return sorted(self.ranking()[:k])

    def most_important(self, k: int) -> list[int]:
        """The ``k`` most important blocks, sorted by index."""
        self._check_k(k, allow_all=True)
        return sorted(self.ranking()[self.num_layers - k :])

    def kept_layers(self, num_removed: int) -> list[int]:
        """Blocks kept when the ``num_removed`` least important are dropped, sorted."""
        removed = set(self.least_important(num_removed))
        return [i for i in range(self.num_layers) if i not in removed]

    def _check_k(self, k: int, allow_all: bool = False) -> None:
        top = self.num_layers if allow_all else self.num_layers - 1
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= top:
            raise LayerPruneError(
                f"number of blocks must be between 1 and {top} for a model of {self.num_layers} blocks, got {k!r}"
            )

    # ------------------------------------------------------------------------------------------------------------
    # Persistence
    # ------------------------------------------------------------------------------------------------------------

    def body(self) -> dict:
        return {
            "criterion": self.criterion,
            "higher_is_more_important": self.higher_is_more_important,
            "num_layers": self.num_layers,
            "values": self.values,
            "stderr": self.stderr,
            "ranking": self.ranking(),
            "per_prompt": self.per_prompt,
            "metadata": self.metadata,
            "extra": self.extra,
        }

    @classmethod
    def from_body(cls, data: dict) -> LayerImportance:
        not_numbers = [v for v in data["values"] if isinstance(v, bool) or not isinstance(v, (int, float))]
        if not_numbers:  # float() would take "0.3" and true as numbers
            raise LayerPruneError(
                f"values must be a list of numbers, one per block; found {not_numbers[0]!r}; re-run layerprune score"
            )
        result = cls(
            values=data["values"],
            criterion=data["criterion"],
            higher_is_more_important=data.get("higher_is_more_important", True),
            stderr=data.get("stderr"),
            per_prompt=data.get("per_prompt"),
            metadata=data.get("metadata") or {},
            extra=data.get("extra") or {},
        )
        if data.get("num_layers", result.num_layers) != result.num_layers:
            raise LayerPruneError(f"num_layers {data['num_layers']} but {result.num_layers} values")
        return result

    def model_name(self) -> str | None:
        return self.model

    def save(self, path: str | os.PathLike, *, plot: bool = True, overwrite: bool = True) -> Path:
        """Write the JSON (atomically) and, with ``plot``, the bar chart next to it (``<path>.png`` stem)."""
        path = super().save(path, overwrite=overwrite)
        if plot:
            self.plot(path.with_suffix(".png"))
        return path

    def plot(self, path: str | os.PathLike) -> Path:
        """A PNG bar chart of the values per block (error bars = stderr), least important blocks highlighted."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = self.num_layers
        stability = self.extra.get("stability") if isinstance(self.extra.get("stability"), dict) else None
        k = max(1, round(0.25 * n)) if n > 1 else 0
        if stability is not None and isinstance(stability.get("remove"), int) and 0 < stability["remove"] < n:
            k = stability["remove"]
        low = set(self.least_important(k)) if k else set()
        tied = set(stability.get("tied") or []) if stability is not None else set()
        colours = ["#d62728" if i in low else "#1f77b4" for i in range(n)]
        fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * n + 1.5), 3.4 if stability is None else 3.7), dpi=100)
        bars = ax.bar(range(n), self.values, color=colours, yerr=self.stderr, capsize=2 if self.stderr else 0)
        for i in tied:  # statistically tied at the cut: hatched
            if 0 <= i < n:
                bars[i].set_hatch("///")
                bars[i].set_edgecolor("black")
        labels = self.block_labels
        ax.set_xlabel("block" if labels[-1] == str(n - 1) else "block (stack and index in it)")
        ax.set_xticks(range(n), labels, rotation=0 if labels[-1] == str(n - 1) else 90)
        ax.tick_params(axis="x", labelsize=7)
        direction = "higher = more important" if self.higher_is_more_important else "lower = more important"
        ax.set_ylabel(f"{self.criterion} ({direction})", fontsize=8)
        model = self.metadata.get("model") or "model"
        subtitle = f"red: the {k} least important blocks"
        if stability is not None and isinstance(stability.get("probability"), (int, float)):
            subtitle += f"\nsame {k} in {stability['probability']:.0%} of bootstrap resamples of the prompts"
            subtitle += "; hatched: tied at the cut" if tied else ""
        ax.set_title(f"{self.criterion}: {Path(str(model)).name}\n{subtitle}", fontsize=9)
        fig.tight_layout()
        path = Path(path)
        with atomic_output_file(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return path


def is_importance_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a layer-importance JSON written by :meth:`LayerImportance.save`."""
    try:
        data = read_json(path)
    except LayerPruneError:
        return False
    return isinstance(data, dict) and (data.get("format") == FORMAT or data.get("kind") == LayerImportance.KIND)


def _nan_last(value: float) -> float:
    return math.inf if math.isnan(value) else value


def check_importance_matches(
    importance: LayerImportance, num_layers: int, model: str | None = None, family: str | None = None
) -> None:
    """Refuse an importance file measured on another model: another model family, different depth, or a different
    recorded model id.

    Files record a local model by its folder name only (``provenance.public_name``), so ``model`` is compared by
    that name: ``./pipe`` and ``/abs/pipe`` match.
    """
    from ..provenance import public_name

    recorded = importance.metadata.get("model")
    recorded_family = importance.metadata.get("family")
    if family is not None and recorded_family is not None and recorded_family != family:
        raise LayerPruneError(
            f"the importance file was measured on a {recorded_family} model ({recorded}), but {model or 'the model'} "
            f"is a {family} model; score this model with `layerprune score`"
        )
    if importance.num_layers != num_layers:
        raise LayerPruneError(
            f"the importance file has {importance.num_layers} blocks (model {recorded}) but the model has "
            f"{num_layers}; score this model with `layerprune score`"
        )
    if model is not None and recorded is not None and public_name(recorded) != public_name(model):
        raise LayerPruneError(
            f"the importance file was measured on {recorded}, not {model}; pass --model {recorded} or re-score"
        )


def normalise_model_id(model: str | os.PathLike) -> str:
    """A model id comparable across spellings: local folders as absolute paths, Hub ids and short names as given."""
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        return str(path.resolve())
    return text.rstrip("/")
