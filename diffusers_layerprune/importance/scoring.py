"""Scoring the blocks of a model: the ``score`` stage as a library function.

``layerprune score`` parses its arguments and calls :func:`score_blocks`; ``layerprune run`` calls it too (or, with
several processes, launches ``layerprune score`` through ``accelerate launch``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LayerPruneError


def _check_scorer_name(name: str) -> None:
    # Same rule as load_scorer, without loading anything: a registered name or an existing path.
    from ..scorers import SCORERS

    if name in SCORERS or Path(name).expanduser().exists():
        return
    raise LayerPruneError(f"unknown scorer {name!r}; known scorers: {', '.join(sorted(SCORERS))}, or a path")


def score_blocks(
    model: str,
    criterion: str = "preference",
    output: str | Path | None = None,
    *,
    scorer: str | None = None,
    prompts: str | None = None,
    prompt_column: str | None = None,
    exclude_prompts: str | None = None,
    num_prompts: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    resolution: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    num_timesteps: int = 4,
    greedy_steps: int = 0,
    remove: int | None = None,
    adaptive: bool = False,
    round_prompts: int = 8,
    tolerance: float = 0.05,
    confidence: float = 0.9,
    bootstrap: int = 1000,
    group_size: int | None = None,
    learn_steps: int | None = None,
    learn_micro_batch: int | None = None,
    dtype: str = "auto",
    revision: str | None = None,
    base_model: str | None = None,
    overwrite: bool = True,
    show_progress: bool = True,
    log=None,
):
    """The ``score`` stage: measure the importance of every block of ``model`` with ``criterion``.

    Args:
        model: a short name (``toy``), a local pipeline folder or a Hub id.
        criterion: a registered criterion name (``preference``, ``block_influence``, ...).
        output: JSON file to write (with its PNG bar chart); ``None`` keeps the result in memory only. Finished work
            goes to ``<output>.progress*.jsonl`` while the scan runs, so a killed scan resumes where it stopped.
            Unlike the CLI, an existing ``output`` is replaced unless ``overwrite=False``.
        scorer, prompts, ...: as the options of ``layerprune score``; ``None`` takes the model's defaults
            (``generation_defaults`` / ``scoring_defaults``).
        remove: the number of blocks to remove that the stability report (and an adaptive scan) is for; default
            ``round(0.25 * depth)``. For criteria with per-prompt values the result's ``extra["stability"]`` holds
            :func:`~diffusers_layerprune.importance.stability.selection_stability` for it.
        adaptive: measure adaptively (:mod:`~diffusers_layerprune.importance.adaptive`): prompts in rounds of
            ``round_prompts``, generating only blocks whose side of the cut is uncertain; the prompt set (with
            ``num_prompts``) is the budget. ``tolerance``: the cost a wrong pick may have, as a fraction of the full
            model's mean score; ``confidence``: of the paired intervals.
        bootstrap: resamples of the prompts for the stability report (0: no report).
        group_size, learn_steps: for ``learnable``: blocks per group (must divide the depth; default: the largest
            group with at most 4096 keep-masks) and training steps (default 200).
        learn_micro_batch: for ``learnable``: samples per forward/backward pass (default: as many as fit 8 GiB of
            activations, with gradient checkpointing when needed; the gradients of a step are accumulated).
        log: called with each line of the summary (``print`` in the CLI); ``None`` prints nothing.

    Returns the :class:`~diffusers_layerprune.importance.LayerImportance` on every process. Under
    ``accelerate launch`` the work is split across the processes. Everything a user can get wrong raises
    :class:`LayerPruneError` before the model is loaded.
    """
    from ..outputs import check_output_parent
    from .registry import get_criterion

    spec = get_criterion(criterion)
    if output is not None:
        output = Path(output).expanduser()
        if output.is_dir():
            raise LayerPruneError(f"output {output} is a folder; give a .json file path")
        if output.suffix.lower() != ".json":  # the plot goes beside it as <stem>.png: a .png output would be both
            raise LayerPruneError(f"--output {output} must end in .json (the bar chart is written beside it as .png)")
        check_output_parent(output)
        _check_importance_outputs(output, overwrite)
    for name, value in (
        ("num-prompts", num_prompts),
        ("steps", steps),
        ("resolution", resolution),
        ("batch-size", batch_size),
        ("num-timesteps", num_timesteps),
    ):
        if value is not None and value < 1:
            raise LayerPruneError(f"--{name} must be at least 1, got {value}")
    if bootstrap < 0:
        raise LayerPruneError(f"--bootstrap must be at least 0, got {bootstrap}")
    for name, value, option in (
        ("--group-size", group_size, "group_size"),
        ("--learn-steps", learn_steps, "steps"),
        ("--learn-micro-batch", learn_micro_batch, "micro_batch"),
    ):
        if value is not None and option not in spec.options:
            learned = ", ".join(n for n, c in _all_criteria().items() if option in c.options)
            raise LayerPruneError(f"{name} goes with a learned selection (--criterion {learned})")
        if value is not None and value < 1:
            raise LayerPruneError(f"{name} must be at least 1, got {value}")
    if adaptive:
        from .adaptive import check_adaptive_options

        if greedy_steps:
            raise LayerPruneError("--greedy-steps and --adaptive do not go together (greedy re-scores every block)")
        check_adaptive_options(spec.name, num_prompts, round_prompts, batch_size, tolerance, confidence)

    from ..modeling import check_resolution_for, read_transformer_config, scoring_defaults

    config = read_transformer_config(model, revision=revision)  # a wrong path fails before any loading
    check_resolution_for(model, resolution, config)
    if config is not None and greedy_steps and not 0 < greedy_steps < config["num_layers"]:
        raise LayerPruneError(f"--greedy-steps must be between 1 and {config['num_layers'] - 1}")
    if config is not None and remove is not None:
        _check_remove(remove, config["num_layers"])
    if config is not None and "group_size" in spec.options:
        from .learnable import group_plan

        depth = config["num_layers"]
        group_plan(depth, remove if remove is not None else max(1, round(0.25 * depth)), group_size)
    defaults = scoring_defaults(model)
    scorer_name = None
    if spec.needs_scorer:
        scorer_name = scorer or defaults["scorer"]
        _check_scorer_name(scorer_name)
    if greedy_steps and not spec.greedy:
        raise LayerPruneError(f"--greedy-steps: greedy re-scoring is not defined for the {spec.name} criterion")

    prompt_set = None
    if spec.needs_prompts:
        from ..data import load_prompts

        exclude = load_prompts(exclude_prompts) if exclude_prompts else None
        prompt_set = load_prompts(
            prompts or defaults["score_prompts"], column=prompt_column, limit=num_prompts, exclude=exclude
        )
        if adaptive:
            check_adaptive_options(spec.name, len(prompt_set), round_prompts, batch_size, tolerance, confidence)

    from ..modeling import generation_defaults, load_pipeline, resolve_dtype
    from ..scorers import load_scorer
    from . import compute_importance
    from .plans import greedy_order
    from .result import normalise_model_id
    from .runner import ImportanceScan, ScanSettings, process_state

    state = process_state()
    pipe = load_pipeline(model, torch_dtype=resolve_dtype(dtype, model), revision=revision, base_model=base_model)
    pipe.to(state.device)
    gen = generation_defaults(model, pipe)
    settings = ScanSettings(
        num_inference_steps=steps or gen["num_inference_steps"],
        guidance_scale=gen["guidance_scale"] if guidance is None else guidance,
        resolution=resolution or gen["resolution"],
        max_sequence_length=gen["max_sequence_length"],
        seed=seed,
        batch_size=batch_size,
        num_timesteps=num_timesteps,
    )
    scan = ImportanceScan(
        pipe,
        prompt_set,
        settings,
        model_id=normalise_model_id(model),
        scorer=load_scorer(scorer_name, device=state.device) if scorer_name else None,
        scorer_name=scorer_name,
        progress_path=output,
        free_text_encoder=True,
        show_progress=show_progress,
        state=state,
    )
    if greedy_steps and not 0 < greedy_steps < scan.num_layers:
        raise LayerPruneError(f"--greedy-steps must be between 1 and {scan.num_layers - 1}")
    if remove is not None:
        _check_remove(remove, scan.num_layers)
    k = remove if remove is not None else max(1, round(0.25 * scan.num_layers))
    if adaptive:
        from .adaptive import adaptive_preference

        importance = adaptive_preference(
            scan, k, round_prompts=round_prompts, confidence=confidence, tolerance=tolerance
        )
    else:
        given = {"remove": k, "group_size": group_size, "steps": learn_steps, "micro_batch": learn_micro_batch}
        options = {name: given[name] for name in spec.options if given.get(name) is not None}
        importance = compute_importance(spec.name, scan, **options)
    if greedy_steps:
        importance.extra["greedy_order"] = greedy_order(scan, spec.name, greedy_steps)
    if bootstrap and importance.per_prompt is not None and len(importance.per_prompt[0]) > 1 and scan.num_layers > 1:
        from .stability import selection_stability

        importance.extra["stability"] = selection_stability(importance, k, draws=bootstrap, seed=seed)
    if state.is_main_process and output is not None:
        importance.save(output, overwrite=True)
    if state.is_main_process and log is not None:
        _summary(importance, model, output, log, k)
    scan.remove_progress()
    return importance


def _all_criteria() -> dict:
    from .registry import all_criteria

    return all_criteria()


def _check_remove(remove: int, depth: int) -> None:
    if not 0 < remove < depth:
        raise LayerPruneError(
            f"--remove (blocks to remove) must be between 1 and {depth - 1} for a model of {depth} blocks, got {remove}"
        )


def _check_importance_outputs(output: Path, overwrite: bool) -> None:
    """The JSON, its plot and the progress files: no symbolic links; existing files replaced only with
    ``overwrite`` and only when the JSON is an importance file of ours."""
    from ..outputs import check_not_symlink, check_output_file
    from .result import is_importance_file

    for path in (output, output.with_suffix(".png")):
        check_output_file(path, overwrite=overwrite, owned=lambda _: is_importance_file(output))
    for path in output.parent.glob(f"{output.name}.progress*.jsonl"):  # runner.progress_files, without torch
        check_not_symlink(path, "progress file")
    from .runner import check_progress_files

    check_progress_files(output)


def _summary(importance, model: str, output: Path | None, log, k: int) -> None:
    stability = importance.extra.get("stability")
    adaptive = importance.extra.get("adaptive")
    log(f"{importance.criterion} importance of {model} ({importance.num_layers} blocks)")
    labels = importance.block_labels
    if labels[-1] != str(importance.num_layers - 1):  # many stacks (Flux): name each block's stack
        log("stack  " + " ".join(f"{label.split()[0]:>8s}" for label in labels))
        log("index  " + " ".join(f"{label.split()[-1]:>8s}" for label in labels))
    log("block  " + " ".join(f"{i:>8d}" for i in range(importance.num_layers)))
    log("value  " + " ".join(f"{v:>8.4g}" for v in importance.values))
    if stability:
        chosen, tied = set(stability["selection"]), set(stability["tied"])
        marks = ["cut+tied" if i in chosen and i in tied else "cut" if i in chosen else "tied" if i in tied else ""
                 for i in range(importance.num_layers)]  # fmt: skip
        log("remove " + " ".join(f"{m:>8s}" for m in marks))
    if adaptive:
        log("prompts " + " ".join(f"{c:>8d}" for c in adaptive["prompts_per_block"]))
    log(f"least important {k}: {importance.least_important(k)}")
    if stability:
        log(stability["message"])
    if adaptive:
        state = "settled" if adaptive["settled"] else "not settled (prompt budget spent)"
        log(
            f"adaptive scan: {adaptive['images']} images of the exhaustive {adaptive['exhaustive_images']} "
            f"({adaptive['images'] / adaptive['exhaustive_images']:.0%}), {len(adaptive['rounds'])} rounds, {state}"
        )
        if adaptive["settled"] and stability and not stability["stable"]:
            log(
                f"settled although unstable: the blocks tied at the cut differ by less than --tolerance "
                f"{adaptive['tolerance']:g} ({adaptive['tolerance_units']:.3g} in score units), so removing one rather "
                "than another costs at most that; a lower --tolerance spends more images on a sharper choice"
            )
    if "additivity" in importance.extra:
        a = importance.extra["additivity"]
        log(
            f"additivity: removing {a['blocks']} together costs {a['measured_loss']:.4g}, the single losses sum "
            f"to {a['sum_of_single_losses']:.4g} (ratio {a['ratio']:.2f})"
        )
    if "best_span" in importance.extra:
        start = importance.extra["best_span"][str(k)]
        log(f"best span of {k} consecutive blocks (plan span): {list(range(start, start + k))}")
    if "greedy_order" in importance.extra:
        log(f"greedy removal order: {importance.extra['greedy_order']}")
    if "learnable" in importance.extra:
        learned = importance.extra["learnable"]
        log(
            f"learned selection: remove {learned['removed_blocks']} ({learned['removed_per_group']} of every "
            f"{learned['group_size']} blocks; most probable mask per group: "
            f"{', '.join(f'{p:.0%}' for p in learned['group_mask_probability'])}); distillation loss "
            f"{learned['loss_first']:.4g} -> {learned['loss_last']:.4g} over {learned['steps']} steps"
        )
    if output is not None:
        log(f"wrote {output} and {output.with_suffix('.png')}")
