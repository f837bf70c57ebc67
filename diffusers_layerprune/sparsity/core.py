"""Sparsify a pipeline's text encoder and/or transformer in place, measure sparsity, save a folder stock diffusers
loads.

    plan = plan_sparsity("both", sparsity=0.5, method="magnitude")          # checks every setting, loads nothing
    record = sparsify_pipeline(pipe, "transformer", sparsity=0.5, method="wanda", prompts=prompt_set)
    sparsify_to_folder("toy", "runs/sparse", component="transformer", sparsity=0.5)

Zeros are stored densely: a saved folder has the dense folder's size (see docs/sparsity.md for real savings).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LayerPruneError
from ..validation import is_transformer_folder
from ..validation import resolve_local_model as _resolve_local
from .layers import COMPONENTS, sparsifiable_layers
from .masks import Pattern, global_masks, layer_mask, n_m_mask, parse_pattern, row_mask
from .record import FILE_NAME, SparsityRecord, _module_of, measure_sparsity, read_sparsity_record
from .registry import METHOD_MODULES, get_method

SCOPES = ("layer", "global")
COMPONENT_CHOICES = (*COMPONENTS, "both")


@dataclass(frozen=True)
class SparsityPlan:
    """A checked description of what to prune; build it with :func:`plan_sparsity`.

    Attributes:
        method: registered method name.
        targets: ``{component: sparsity}``, components in run order.
        pattern: unstructured or ``N:M``.
        scope: ``layer`` or ``global`` (unstructured only).
        include_final_projection: prune the transformer's ``proj_out`` too.
    """

    method: str
    targets: dict[str, float]
    pattern: Pattern
    scope: str = "layer"
    include_final_projection: bool = False


def _check_fraction(value, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise LayerPruneError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if not 0 <= value < 1:
        raise LayerPruneError(
            f"{what} {value:g} is outside [0, 1): give the fraction of weights to zero, e.g. 0.5 for half"
        )
    return value


def plan_sparsity(
    component: str = "transformer",
    *,
    sparsity: float | None = None,
    text_encoder_sparsity: float | None = None,
    transformer_sparsity: float | None = None,
    method: str = "magnitude",
    pattern: str | Pattern = "unstructured",
    scope: str = "layer",
    include_final_projection: bool = False,
) -> SparsityPlan:
    """Check a sparsification request without touching a model; raises :class:`LayerPruneError` naming the fix.

    ``component``: ``text_encoder``, ``transformer`` or ``both``. Each pruned component takes its own sparsity
    (``text_encoder_sparsity`` / ``transformer_sparsity``) or else ``sparsity``. An ``N:M`` pattern fixes the
    sparsity at ``1 - N/M``; sparsities given with it must equal that.
    """
    if component not in COMPONENT_CHOICES:
        raise LayerPruneError(f"unknown component {component!r}; choose {', '.join(COMPONENT_CHOICES)}")
    spec = get_method(method)
    pattern = parse_pattern(pattern)
    if scope not in SCOPES:
        raise LayerPruneError(f"unknown scope {scope!r}; choose {' or '.join(SCOPES)}")
    if scope == "global" and pattern.structured:
        raise LayerPruneError(
            f"the {pattern} pattern compares weights within groups of {pattern.m}; drop --scope global"
        )
    if scope == "global" and not spec.supports_global:
        raise LayerPruneError(
            f"{method} compares weights within each output row; --scope global is for: "
            + ", ".join(m for m in METHOD_MODULES if get_method(m).supports_global)
        )
    chosen = list(COMPONENTS) if component == "both" else [component]
    specific = {"text_encoder": text_encoder_sparsity, "transformer": transformer_sparsity}
    flag = {"text_encoder": "--text-encoder-sparsity", "transformer": "--transformer-sparsity"}
    for what, value in (("--sparsity", sparsity), *((flag[k], v) for k, v in specific.items())):
        if value is not None:
            _check_fraction(value, what)
    for name, value in specific.items():
        if value is not None and name not in chosen:
            raise LayerPruneError(f"{flag[name]} given but --component is {component}; use --component both")
    targets = {}
    for name in chosen:
        value = specific[name] if specific[name] is not None else sparsity
        if value is None:
            if not pattern.structured:
                raise LayerPruneError(f"no sparsity for the {name}: pass --sparsity S (or {flag[name]} S)")
            value = pattern.sparsity
        value = float(value)
        if pattern.structured and abs(value - pattern.sparsity) > 1e-9:
            raise LayerPruneError(
                f"the {pattern} pattern zeroes {pattern.sparsity:g} of the weights, but the {name} sparsity is "
                f"{value:g}; drop the sparsity or give {pattern.sparsity:g}"
            )
        targets[name] = value
    return SparsityPlan(method, targets, pattern, scope, include_final_projection)


def check_components(pipe_or_components, components, model_name: str = "the pipeline") -> None:
    """Raise when the pipeline lacks one of ``components`` (e.g. a pipeline saved without its text encoder)."""
    for name in components:
        if _module_of(pipe_or_components, name) is None:
            raise LayerPruneError(f"{model_name} has no {name} to sparsify; choose another --component")


def _prune_component(module, component: str, sparsity: float, plan: SparsityPlan, norms: dict | None) -> None:
    """Zero the component's lowest-scoring weights in place, one layer at a time (a mask of every layer at once would
    be 4.7 GB for T5-XXL). Every layer is checked before any is changed."""
    spec = get_method(plan.method)
    layers = sparsifiable_layers(module, component, include_final_projection=plan.include_final_projection)
    pattern = plan.pattern
    if pattern.structured:  # every layer must split into whole groups; fail before zeroing anything
        for name, layer in layers.items():
            if layer.in_features % pattern.m:
                n_m_mask(torch.zeros(1, layer.in_features), pattern.n, pattern.m, name=f"{component}.{name}")

    def scores(name):
        return spec.score(layers[name].weight, None if norms is None else norms[name])

    if pattern.structured:
        masks = (n_m_mask(scores(name), pattern.n, pattern.m, name=name) for name in layers)
    elif plan.scope == "global":
        masks = global_masks([lambda name=name: scores(name) for name in layers], sparsity)
    else:
        per_group = row_mask if spec.group == "row" else layer_mask
        masks = (per_group(scores(name), sparsity) for name in layers)
    with torch.no_grad():
        # global_masks reads each layer's scores only up to its own turn, so zeroing earlier layers is safe
        for layer, keep in zip(layers.values(), masks, strict=True):
            layer.weight.masked_fill_(~keep.to(layer.weight.device), 0)


def sparsify_pipeline(
    pipe,
    component: str = "transformer",
    *,
    sparsity: float | None = None,
    text_encoder_sparsity: float | None = None,
    transformer_sparsity: float | None = None,
    method: str = "magnitude",
    pattern: str | Pattern = "unstructured",
    scope: str = "layer",
    include_final_projection: bool = False,
    prompts=None,
    input_norms=None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    max_sequence_length: int | None = None,
    resolution: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    previous: SparsityRecord | None = None,
) -> SparsityRecord:
    """Zero the lowest-scoring weights of the pipeline's ``component`` (``text_encoder``, ``transformer``, ``both``)
    **in place** and return the :class:`SparsityRecord` of what was done (``copy.deepcopy(pipe)`` first to keep the
    dense model).

    Settings are those of :func:`plan_sparsity`. A calibrated method (``wanda``) takes ``input_norms`` from
    :func:`~.calibration.collect_input_norms`, or computes them from ``prompts`` (a ``PromptSet`` or list of
    strings) in one pass of the dense model; the pass uses the model's generation defaults unless
    ``num_inference_steps`` / ``guidance_scale`` / ``max_sequence_length`` / ``resolution`` are given, and prompt
    ``i`` uses seed ``seed + i``. ``previous``: the record the pipeline already carried (it goes to the history).
    """
    plan = plan_sparsity(
        component,
        sparsity=sparsity,
        text_encoder_sparsity=text_encoder_sparsity,
        transformer_sparsity=transformer_sparsity,
        method=method,
        pattern=pattern,
        scope=scope,
        include_final_projection=include_final_projection,
    )
    check_components(pipe, plan.targets, type(pipe).__name__)
    spec = get_method(plan.method)
    calibration = None
    if spec.needs_calibration:
        if input_norms is None:
            if prompts is None or len(prompts) == 0:
                raise LayerPruneError(f"{plan.method} needs calibration prompts; pass --prompts (e.g. toy:train)")
            input_norms = _calibrate(
                pipe, plan, prompts, num_inference_steps, guidance_scale, max_sequence_length, resolution, seed,
                batch_size,
            )  # fmt: skip
        missing = [c for c in plan.targets if c not in input_norms.norms]
        if missing:
            raise LayerPruneError(f"the input norms hold no {', '.join(missing)}; calibrate every pruned component")
        calibration = dict(input_norms.settings)
        uncalibrated = {
            c: [name for name, n in input_norms.tokens[c].items() if n == 0] for c in plan.targets
        }  # layers the pass never ran: their norms are zero, so they fall back to |W|
        calibration["uncalibrated_layers"] = {c: names for c, names in uncalibrated.items() if names}
    elif prompts is not None or input_norms is not None:
        raise LayerPruneError(f"{plan.method} uses no calibration prompts; drop --prompts")

    for name, target in plan.targets.items():
        module = getattr(pipe, name)
        norms = None
        if spec.needs_calibration:
            norms = {
                layer: value if input_norms.tokens[name][layer] else torch.ones_like(value)
                for layer, value in input_norms.norms[name].items()
            }
        _prune_component(module, name, target, plan, norms)

    from .. import __version__

    history = () if previous is None else (*previous.history, previous.summary())
    return SparsityRecord(
        method=plan.method,
        pattern=str(plan.pattern),
        scope=plan.scope,
        components=measure_sparsity(pipe, plan.targets, include_final_projection=plan.include_final_projection),
        include_final_projection=plan.include_final_projection,
        calibration=calibration,
        source_model=_source_name(pipe),
        history=history,
        package_version=__version__,
    )


def _source_name(pipe) -> str | None:
    # sparsity.json is uploaded with the model: a local folder is named by its folder name only (provenance)
    from ..provenance import public_name

    name = getattr(pipe, "name_or_path", None)
    return public_name(str(name)) if name else None


def _calibrate(pipe, plan, prompts, steps, guidance, max_length, resolution, seed, batch_size):
    from ..modeling import generation_defaults
    from .calibration import collect_input_norms

    defaults = generation_defaults(pipe.name_or_path or "", pipe)
    return collect_input_norms(
        pipe,
        list(plan.targets),
        prompts,
        num_inference_steps=steps or defaults["num_inference_steps"],
        guidance_scale=defaults["guidance_scale"] if guidance is None else guidance,
        resolution=resolution or defaults["resolution"],
        max_sequence_length=max_length or defaults["max_sequence_length"],
        seed=seed,
        batch_size=batch_size,
        include_final_projection=plan.include_final_projection,
    )


# ----------------------------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------------------------


def model_components(model: str | os.PathLike, *, revision: str | None = None) -> set[str] | None:
    """Components ``model`` holds, read from its ``model_index.json`` without loading weights (``{"transformer"}``
    for a transformer folder; ``None`` for short names built in code)."""
    from ..aliases import ALIAS_FOLDERS, MODEL_ALIASES
    from ..modeling import _first_line

    name = str(model)
    if name in MODEL_ALIASES:
        if name not in ALIAS_FOLDERS:
            return None
        path = ALIAS_FOLDERS[name]()
    else:
        path = _resolve_local(name)
    if path is not None and is_transformer_folder(path):
        return {"transformer"}
    try:
        if path is not None:
            index_file = path / "model_index.json"
        else:
            from huggingface_hub import hf_hub_download

            index_file = hf_hub_download(name, "model_index.json", revision=revision)
        index = json.loads(Path(index_file).read_text())
    except Exception as error:
        raise LayerPruneError(f"could not read the model_index.json of {name!r}: {_first_line(error, name)}") from error
    return {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None}


def check_model_components(model: str | os.PathLike, components, *, revision: str | None = None) -> None:
    """Raise before loading when ``model`` lacks one of ``components``."""

    held = model_components(model, revision=revision)
    if held is None:
        return
    local = None if str(model) in _aliases() else _resolve_local(str(model))
    for name in components:
        if name in held:
            continue
        if local is not None and is_transformer_folder(local):
            raise LayerPruneError(
                f"{model} holds only a transformer, no {name}; use --component transformer, or sparsify the {name} "
                "of its base pipeline"
            )
        raise LayerPruneError(
            f"{model} has no {name} (its components: {', '.join(sorted(held))}); choose another --component"
        )


def sparsify_to_folder(
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    component: str = "transformer",
    *,
    sparsity: float | None = None,
    text_encoder_sparsity: float | None = None,
    transformer_sparsity: float | None = None,
    method: str = "magnitude",
    pattern: str = "unstructured",
    scope: str = "layer",
    include_final_projection: bool = False,
    prompts: str | None = None,
    prompt_column: str | None = None,
    num_prompts: int | None = 128,
    num_inference_steps: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    revision: str | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
    log=None,
) -> SparsityRecord:
    """Load ``model``, sparsify it (:func:`sparsify_pipeline`) and save it to ``output_dir`` with ``sparsity.json``.

    Every setting, the output folder, the components and the prompts are checked before any weights load; the
    folder appears complete or not at all. A pipeline folder is saved as a pipeline whose ``model_index.json`` names
    stock classes (``DiffusionPipeline.from_pretrained`` loads it without this package); a transformer folder
    (``--transformer-only``) is saved as a transformer folder. ``prompts`` is a ``--prompts`` spec
    (:func:`~diffusers_layerprune.data.load_prompts`), the first ``num_prompts`` of it are used.
    """
    from ..data import load_prompts
    from ..families import family_of
    from ..modeling import load_pipeline, resolve_dtype, save_pruned_pipeline
    from ..outputs import atomic_output_dir, check_output_dir

    log = log or (lambda *a: None)
    plan = plan_sparsity(
        component,
        sparsity=sparsity,
        text_encoder_sparsity=text_encoder_sparsity,
        transformer_sparsity=transformer_sparsity,
        method=method,
        pattern=pattern,
        scope=scope,
        include_final_projection=include_final_projection,
    )
    spec = get_method(plan.method)
    if spec.needs_calibration and not prompts:
        raise LayerPruneError(f"{plan.method} needs calibration prompts; pass --prompts (e.g. toy:train)")
    if prompts and not spec.needs_calibration:
        raise LayerPruneError(f"{plan.method} uses no calibration prompts; drop --prompts")
    if num_prompts is not None and num_prompts < 1:
        raise LayerPruneError(f"--num-prompts must be at least 1, got {num_prompts}")
    from ..modeling import check_device, read_transformer_config
    from ..provenance import local_inputs, publish_configs

    inputs = local_inputs(model, base_model)
    check_output_dir(output_dir, overwrite=overwrite, inputs=inputs)
    read_transformer_config(model, revision=revision)  # a wrong path or model family fails here, cheaply
    check_model_components(model, plan.targets, revision=revision)
    prompt_set = load_prompts(prompts, column=prompt_column, limit=num_prompts) if prompts else None
    torch_dtype = resolve_dtype(dtype, model)
    check_device(device, torch_dtype)

    local = None if str(model) in _aliases() else _resolve_local(str(model))
    transformer_folder = local is not None and is_transformer_folder(local)
    pipe = load_pipeline(model, torch_dtype=torch_dtype, revision=revision, base_model=base_model, device=device)
    pipe.set_progress_bar_config(disable=True)
    log(f"loaded {model} ({str(torch_dtype).removeprefix('torch.')})")
    record = sparsify_pipeline(
        pipe,
        component,
        sparsity=sparsity,
        text_encoder_sparsity=text_encoder_sparsity,
        transformer_sparsity=transformer_sparsity,
        method=plan.method,
        pattern=plan.pattern,
        scope=plan.scope,
        include_final_projection=plan.include_final_projection,
        prompts=prompt_set,
        num_inference_steps=num_inference_steps,
        seed=seed,
        batch_size=batch_size,
        previous=read_sparsity_record(local),
    )
    if transformer_folder:
        source = pipe.transformer.config.get("source_model")
        local = {"source_model": source} if source else None
        with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs, kind="transformer", local=local) as tmp:
            pipe.transformer.save_pretrained(tmp, safe_serialization=True)
            _name_stock_class(tmp / "config.json", family_of(pipe.transformer).transformer_class)
            (tmp / FILE_NAME).write_text(record.to_json())
            publish_configs(tmp)
    else:
        extra = {FILE_NAME: record.to_json()}
        save_pruned_pipeline(pipe, output_dir, overwrite=overwrite, inputs=inputs, extra_files=extra)
    return record


def _aliases():
    from ..aliases import MODEL_ALIASES

    return MODEL_ALIASES


def _name_stock_class(config_path: Path, stock_class: str) -> None:
    # A stock transformer already writes the stock name; a pruned one writes it through to_json_string.
    config = json.loads(config_path.read_text())
    if config.get("_class_name") != stock_class:
        config["_class_name"] = stock_class
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
