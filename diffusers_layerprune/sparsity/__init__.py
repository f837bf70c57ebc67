"""Post-training weight sparsity of a pipeline's text encoder and/or transformer: magnitude and Wanda, unstructured
or ``N:M`` (2:4), per layer or global. One small module per method, registered by name (:mod:`.registry`).

    from diffusers_layerprune.sparsity import sparsify_pipeline
    record = sparsify_pipeline(pipe, "both", sparsity=0.5, method="magnitude")    # in place
    record = sparsify_pipeline(pipe, "transformer", method="wanda", pattern="2:4", prompts=["a red circle", ...])
    save_pruned_pipeline(pipe, "out", extra_files={"sparsity.json": record.to_json()})

``layerprune sparsify`` does the same from the command line (:func:`sparsify_to_folder`). What was done is recorded
in ``sparsity.json`` (:class:`SparsityRecord`). Public names load lazily so that the CLI parser stays light.
"""

from __future__ import annotations

from importlib import import_module

from .registry import METHOD_MODULES, get_method

_EXPORTS = {
    "sparsify_pipeline": "core",
    "sparsify_to_folder": "core",
    "plan_sparsity": "core",
    "measure_sparsity": "record",
    "SparsityPlan": "core",
    "SparsityRecord": "record",
    "ComponentSparsity": "record",
    "read_sparsity_record": "record",
    "FILE_NAME": "record",
    "collect_input_norms": "calibration",
    "record_input_norms": "calibration",
    "InputNorms": "calibration",
    "sparsifiable_layers": "layers",
    "COMPONENTS": "layers",
    "Pattern": "masks",
    "parse_pattern": "masks",
    "WeightMasks": "keep",
}

__all__ = ["METHOD_MODULES", "get_method", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
