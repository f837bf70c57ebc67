"""Checks of a :class:`~diffusers_layerprune.recipe.Recipe` that run before its first stage: every value's name and
range, the prompt sets that are read without a download, the cache folders, and ``extra_train_args`` as the training
script parses them. A refusal is one :class:`LayerPruneError` line; nothing has been written when it is raised."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import LayerPruneError

DTYPES = ("auto", "float32", "float16", "bfloat16")
# Recipe fields and the training script's flags they set: extra_train_args must not set them a second time (the
# training script would take the later value, while run.json and the card record the recipe's).
RECIPE_TRAIN_FLAGS = {
    "teacher_model": "model",
    "student_model": "(the pruned model)",
    "output_dir": "output",
    "max_train_steps": "distill_steps",
    "train_batch_size": "distill_batch_size",
    "learning_rate": "learning_rate",
    "seed": "seed",
    "save_dtype": "dtype",
    "prompts": "train_prompts",
    "exclude_prompts": "eval_prompts",
    "use_lora": "use_lora",
    "rank": "rank",
    "use_ema": "use_ema",
    "transformer_only": "transformer_only",
    "resume_from_checkpoint": "(re-run the recipe: finished stages are reused)",
    "overwrite_output_dir": "(the run folder)",
    "mixed_precision": "mixed_precision",
    "elastic_depths": "elastic_depths",
    "importance": "elastic_depths (the score stage's importance file orders the depths)",
}
SEED_MAX = 2**32 - 1  # numpy's seed range (accelerate's set_seed seeds numpy too)


def _local_prompt_source(spec: str) -> bool:
    """Whether prompt source ``spec`` is read here without a download: a built-in set, or a local file or folder
    (a Hub dataset is checked when it is downloaded)."""
    from .prompts import BENCHMARK_SETS, DATA_FILE_BUILDERS, parse_prompt_spec

    parsed = parse_prompt_spec(spec)
    if parsed.name in BENCHMARK_SETS:  # downloaded from the Hub
        return False
    path = Path(parsed.name).expanduser()
    local_looking = spec.startswith((".", "/", "~")) or path.suffix.lower() in DATA_FILE_BUILDERS
    return path.exists() or local_looking or "/" not in parsed.name


def check_recipe_values(recipe) -> None:  # recipe: a Recipe (not imported: recipe.py imports this module)
    """One line per wrong value, before the first stage: names (criterion, scorer, plan, dtype), ranges (counts and
    steps >= 1, a learning rate > 0 and finite, a rank >= 1, a seed the generators accept), flags the recipe ignores
    (``private`` without ``push``), the prompt sets read without a download, and ``extra_train_args`` as the training
    script parses them."""
    import math

    from .importance.plans import PLANS
    from .importance.registry import CRITERIA_MODULES

    if recipe.criterion not in CRITERIA_MODULES:
        raise LayerPruneError(f"unknown criterion {recipe.criterion!r}; known criteria: {', '.join(CRITERIA_MODULES)}")
    if recipe.plan not in PLANS:
        raise LayerPruneError(f"unknown plan {recipe.plan!r}; known plans: {', '.join(PLANS)}")
    if recipe.dtype not in DTYPES:
        raise LayerPruneError(f"unknown dtype {recipe.dtype!r}; choose {', '.join(DTYPES)}")
    if recipe.scorer is not None:
        from .scorers import SCORERS

        path = Path(recipe.scorer).expanduser()
        if recipe.scorer not in SCORERS and not path.exists():
            raise LayerPruneError(
                f"unknown scorer {recipe.scorer!r}; known scorers: {', '.join(sorted(SCORERS))}, or the path of a "
                "CLIPModel folder or an open_clip .pt checkpoint"
            )
    for name in ("num_prompts", "eval_num_prompts", "scan_steps"):
        value = getattr(recipe, name)
        if value is not None and value < 1:
            raise LayerPruneError(f"{name} must be at least 1, got {value}")
    if not (math.isfinite(recipe.learning_rate) and recipe.learning_rate > 0):
        raise LayerPruneError(f"learning_rate must be a number greater than 0, got {recipe.learning_rate}")
    if recipe.rank < 1:
        raise LayerPruneError(f"rank must be at least 1, got {recipe.rank}")
    if not 0 <= recipe.seed <= SEED_MAX:
        raise LayerPruneError(f"seed must be between 0 and {SEED_MAX} (what the random generators accept)")
    if recipe.private and not recipe.push:
        raise LayerPruneError("private applies only with push: add push: true (and repo_id) or leave private out")
    _check_prompt_sources(recipe)
    _check_cache_folders(recipe)
    if recipe.extra_train_args and recipe.distill_steps > 0:
        _check_extra_train_args(recipe)


def _check_prompt_sources(recipe) -> None:
    """Read the scoring, training and evaluation prompts now when that needs no download (a missing file, an unknown
    set, text cells, and scoring prompts that the evaluation prompts leave empty are refused here, not after the
    scan)."""
    from .modeling import model_defaults
    from .prompts import load_prompts

    defaults = model_defaults(recipe.model)
    evaluation = recipe.eval_prompts or defaults["eval_prompts"]
    held_out = load_prompts(evaluation) if _local_prompt_source(evaluation) else None
    for source in (recipe.prompts or defaults["score_prompts"], recipe.train_prompts or defaults["train_prompts"]):
        if _local_prompt_source(source):
            load_prompts(source, exclude=held_out)


def _check_cache_folders(recipe) -> None:
    """The caches the stages write to (``LAYERPRUNE_CACHE``, a ``--cache_dir`` in ``extra_train_args``) must be
    folders apart from the model read; the run folder must not hold a run of another model (its finished stages,
    a distilled model among them, would be replaced)."""
    import os

    from .data import default_cache_dir
    from .provenance import full_local, local_inputs

    caches = [("LAYERPRUNE_CACHE", default_cache_dir())]
    args = [str(a) for a in recipe.extra_train_args]
    for i, arg in enumerate(args):
        if arg == "--cache_dir" and i + 1 < len(args):
            caches.append(("extra_train_args --cache_dir", Path(args[i + 1])))
        elif arg.startswith("--cache_dir="):
            caches.append(("extra_train_args --cache_dir", Path(arg.split("=", 1)[1])))
    for what, folder in caches:
        folder = folder.expanduser()
        if folder.exists() and not folder.is_dir():
            raise LayerPruneError(f"the cache folder {folder} ({what}) is a file; give a folder")
        for given in local_inputs(recipe.model):  # a cache inside a model folder would write into it (one way only:
            source = Path(given).expanduser()  # a model kept under the cache folder, e.g. in the Hub cache, is fine)
            if source.is_dir() and folder.resolve().is_relative_to(source.resolve()):
                raise LayerPruneError(
                    f"the cache folder {folder} ({what}) is inside the input {given}; give a folder outside it"
                )
    record = Path(recipe.output).expanduser() / "run.json"
    if record.is_file():
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # a damaged record is refused by RunState with its own message
        entries = [*(data.get("stages") or {}).values(), *((data.get("attempts") or {}).values())]
        models = {str(e.get("settings", e).get("model")) for e in entries if isinstance(e, dict)} - {"None"}
        other = sorted(m for m in models if full_local(m) != full_local(recipe.model) and os.path.basename(m))
        if other:
            raise LayerPruneError(
                f"run folder {recipe.output} holds a run of {other[0]}, not {recipe.model}: its stages would be "
                "replaced; choose another --output (or delete that folder)"
            )


def _check_extra_train_args(recipe) -> None:
    """Parse ``extra_train_args`` with the training script's own parser (an unknown flag or a bad value is refused
    now, not after the scan and pruning), and refuse flags that the recipe sets from its own fields."""
    import contextlib
    import io

    from . import train_distill

    base = ["--teacher_model", str(recipe.model), "--student_model", "student", "--output_dir", "out"]
    if recipe.elastic_depths:  # so that --elastic_feature_kd / --elastic_inplace_distill parse as they will run
        base += ["--elastic_depths", ",".join(map(str, recipe.elastic_depths)), "--importance", "importance.json"]
    base += ["--use_lora"] if recipe.use_lora else []
    base += ["--use_ema"] if recipe.use_ema else []
    extra = [str(a) for a in recipe.extra_train_args]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            plain = vars(train_distill.parse_args(base))
            given = vars(train_distill.parse_args([*base, *extra]))
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()[-1:] or ["cannot be parsed"]
        raise LayerPruneError(
            f"extra_train_args {extra}: {message[0].removeprefix('train_distill: error: ')}"
        ) from None
    for dest, field_name in RECIPE_TRAIN_FLAGS.items():
        if plain.get(dest) != given.get(dest):
            raise LayerPruneError(
                f"extra_train_args sets --{dest}, which the recipe sets itself from {field_name}: set it there"
            )


def depth_request(recipe) -> tuple[int | None, float | None, int | None]:
    """``(num_layers, ratio, remove)`` of the prune stage: the recipe's, or with ``elastic_depths`` and none of the
    three given, the largest elastic depth (the student the elastic distillation starts from)."""
    if recipe.elastic_depths and recipe.num_layers is None and recipe.ratio is None and recipe.remove is None:
        return recipe.elastic_depths[0], None, None
    return recipe.num_layers, recipe.ratio, recipe.remove


def check_elastic_depths(recipe, config: dict | None) -> None:
    """``elastic_depths`` of a recipe, before the first stage: two or more depths, descending, not repeated, each
    within the model's depth (one block per stack kept), distillation on, and a ``num_layers`` / ``remove`` /
    ``ratio`` that, when given, prunes to the largest depth (the elastic student). ``config``: the model's
    transformer config (``None``: built from the short name)."""
    depths = recipe.elastic_depths
    if depths is None:
        return
    if isinstance(depths, (str, bytes)) or not isinstance(depths, (list, tuple)):
        raise LayerPruneError(f"elastic_depths must be a list of block counts such as [9, 7], got {depths!r}")
    if any(isinstance(d, bool) or not isinstance(d, int) for d in depths):
        raise LayerPruneError(f"elastic_depths must be whole block counts such as [9, 7], got {list(depths)}")
    if recipe.distill_steps <= 0:
        raise LayerPruneError(
            "elastic_depths trains the depths during distillation: give distill_steps > 0, or leave elastic_depths out"
        )
    if recipe.transformer_only:  # the evaluation of every depth loads the elastic run as a whole pipeline
        raise LayerPruneError(
            "elastic_depths does not support transformer_only yet: leave transformer_only out (the run's folders then "
            "hold whole pipelines)"
        )
    from .elastic import check_depths
    from .families import family_of_config

    if config is None:
        from .modeling import load_transformer

        transformer = load_transformer(recipe.model)  # short names are built in code (cheap for those)
        config = dict(transformer.config, _class_name=type(transformer).__name__)
    family = family_of_config(config, str(recipe.model))
    source_depth = family.depth(config)
    try:
        check_depths(depths, source_depth, min_depth=len(family.stacks))
    except LayerPruneError as error:  # the message names train_distill's flag; the recipe's field is meant here
        raise LayerPruneError(str(error).replace("--elastic_depths", "elastic_depths")) from None
    num_layers, ratio, remove = depth_request(recipe)
    given = [
        (name, v) for name, v in (("num_layers", num_layers), ("remove", remove), ("ratio", ratio)) if v is not None
    ]
    if len(given) == 1:
        from .importance import num_to_remove

        kept = source_depth - num_to_remove(source_depth, num_layers, ratio, remove=remove)
        if kept != depths[0]:
            name, value = given[0]
            raise LayerPruneError(
                f"{name} {value} keeps {kept} blocks but elastic_depths starts with {depths[0]}: the pruned model is "
                f"the largest elastic depth; leave {name} out (null in a recipe file, None in Python) or make it keep "
                f"{depths[0]}"
            )
