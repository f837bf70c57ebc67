"""Model cards and Hub upload for pruned (and distilled, evaluated) pipelines.

The card is rendered from what the folder holds: ``transformer/config.json`` (kept blocks, source model),
``importance.json`` / ``importance.png`` (how blocks were chosen), ``distill_config.json`` / ``loss_curve.png``
(distillation), ``report.json`` / ``report_grid.png`` (evaluation). What the folder does not record is left out of
the card, never invented. The token comes from huggingface_hub's usual sources and is never written anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from .config_record import expose_record
from .errors import LayerPruneError
from .upload import (
    UPLOAD_IGNORE,
    check_upload_links,
    report_extras,
    report_uploads,
    review_upload,
    source_aliases,
    upload_plan,
)

# Shipped inside the package (model_cards/ at the top of a checkout links here), so a wheel install can render it.
TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "pruned_pixart.md"


# Citations of the method and the scorers; each family's papers are in its module (``ModelFamily.citations``).
CITATIONS = {
    "dit-pruner": "DiT-Pruner: pruning Diffusion Transformers guided by human preference (HPS), with knowledge "
    "distillation; PixArt-Sigma (ECCV 2024 workshop).",
    "hps": "Wu et al., Human Preference Score v2: A Solid Benchmark for Evaluating Human Preferences of "
    "Text-to-Image Synthesis, 2023.",
    "pickscore": "Kirstain et al., Pick-a-Pic: An Open Dataset of User Preferences for Text-to-Image Generation, 2023.",
    "clip": "Hessel et al., CLIPScore: A Reference-free Evaluation Metric for Image Captioning, EMNLP 2021.",
    "block_influence": "Men et al., ShortGPT: Layers in Large Language Models are More Redundant Than You Expect, 2024.",
    "angular_distance": "Gromov et al., The Unreasonable Ineffectiveness of the Deeper Layers, 2024.",
    "output_loss": "Zhang et al., LAPTOP-Diff: Layer Pruning and Normalized Distillation for Compressing Diffusion "
    "Models, 2024.",
    "latent": "Castells et al., LD-Pruner: Efficient Pruning of Latent Diffusion Models using Task-Agnostic "
    "Insights, 2024.",
    "bk-sdm": "Kim et al., BK-SDM: A Lightweight, Fast, and Cheap Version of Stable Diffusion, 2023.",
    "lora": "Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022.",
    "aptp": "Ganjdanesh et al., Not All Prompts Are Made Equal: Prompt-based Pruning of Text-to-Image Diffusion "
    "Models, 2024 (APTP; prompt-routed depth here follows it).",
}


def _read_json(path: Path) -> dict | None:
    """A JSON record of the folder (``None`` when absent); a damaged one is refused with the file named: the card
    would otherwise be rendered from, or crash on, a half-written file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LayerPruneError(
            f"{path} is damaged ({error}); re-create it (e.g. re-run the command that wrote it) or remove it"
        ) from error
    if not isinstance(data, dict):
        raise LayerPruneError(f"{path} is damaged (expected a JSON object); re-create it or remove it")
    return data


def check_pipeline_folder(folder: str | os.PathLike) -> Path:
    """``folder`` if it is a pipeline folder (``model_index.json`` + ``transformer/config.json``) or a folder that
    holds only a transformer (``config.json`` + weights, as ``--transformer-only`` writes); else one clear error."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise LayerPruneError(f"{folder} does not exist or is not a folder")
    if (folder / "model_index.json").is_file():
        if not (folder / "transformer" / "config.json").is_file():
            raise LayerPruneError(f"{folder} is a pipeline folder without transformer/config.json")
    elif not (folder / "config.json").is_file():
        raise LayerPruneError(
            f"{folder} is neither a pipeline folder (model_index.json) nor a transformer folder (config.json)"
        )
    return folder


def transformer_dir(folder: Path) -> Path:
    """Where the transformer of a checked folder is: ``transformer/``, or the folder itself (transformer only)."""
    return folder / "transformer" if (folder / "model_index.json").is_file() else folder


def check_repo_id(repo_id: str) -> str:
    """``user/name`` with the Hub's allowed characters, or a :class:`LayerPruneError`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise LayerPruneError(f"invalid repo id {repo_id!r}: {str(error).splitlines()[0]}") from error
    if repo_id.count("/") != 1:
        raise LayerPruneError(f"invalid repo id {repo_id!r}: expected user/name or org/name")
    return repo_id


def check_base_model(base_model: str) -> str:
    """A Hub id for the card's ``base_model`` (``org/name``); a local path would put the user's machine in the card."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .provenance import public_name

    try:
        validate_repo_id(base_model)
    except HFValidationError as error:
        raise LayerPruneError(f"--base-model {base_model!r} is not a Hub id such as org/name") from error
    if public_name(base_model) != base_model:
        raise LayerPruneError(f"--base-model {base_model!r} is a local path; give the source's Hub id (org/name)")
    return base_model


def _hub_id(source: str | None) -> str | None:
    """``source`` if it names a Hub repo (owner/name, not a local path), else None."""
    if source and re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not Path(source).exists():
        return source
    return None


def _transformer_parameters(folder: Path) -> tuple[int, int, int]:
    """(parameters of this transformer, of one block of its first stack, of the source transformer), read from the
    safetensors header. The source size counts each removed block at the size of its stack's first block: exact for
    PixArt, Sana and Flux (blocks of one stack have one shape); for SD3 the first joint block stands in for removed
    ones (SD3.5's dual-attention blocks are larger, so the source size is then a lower bound)."""
    from safetensors import safe_open

    from .families import family_of_config

    config = expose_record(_read_json(transformer_dir(folder) / "config.json") or {})
    family = family_of_config(config, str(folder))
    firsts = [stack.attr + ".0." for stack in family.stacks]
    total, first_block = 0, [0] * len(firsts)
    for file in sorted(transformer_dir(folder).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in f.keys():
                n = f.get_slice(key).get_shape()
                count = 1
                for d in n:
                    count *= d
                total += count
                for s, prefix in enumerate(firsts):
                    if key.startswith(prefix):
                        first_block[s] += count
    depths = family.stack_depths(config)
    if len(depths) == 1:
        source_depths = [config.get("source_num_layers") or depths[0]]
    else:
        source_depths = config.get("source_stack_depths") or depths
    removed = sum((src - now) * size for src, now, size in zip(source_depths, depths, first_block, strict=True))
    return total, first_block[0], total + removed


def _base_license(source: str | None) -> dict:
    """The base model's licence from its card (local folder or Hub), when it can be read: ``{"license": ...}``, with
    ``license_name`` and ``license_link`` for a licence ``other`` (the Hub shows those for it); else ``{}``.

    Only a Hub id is looked up online: a short name such as ``toy`` is no repo, and asking the Hub for it cost the
    offline recipe ~23 s of retries."""
    local = Path(source) / "README.md" if source else None
    target = local if local is not None and local.is_file() else _hub_id(source)
    if target is None:
        return {}
    try:
        from huggingface_hub import ModelCard

        data = ModelCard.load(target).data
    except Exception:  # offline, gated, missing or unreadable: the card says nothing rather than guessing
        return {}
    if not data.license:
        return {}
    found = {"license": data.license}
    if data.license == "other":
        found.update({k: getattr(data, k, None) for k in ("license_name", "license_link") if getattr(data, k, None)})
    return found


def render_model_card(folder: str | os.PathLike, repo_id: str, **kwargs) -> str:
    """The README.md for ``folder`` (see :func:`_render_model_card`); a hand-edited or damaged record in the folder
    (``importance.json``, ``distill_config.json``, ``report.json``, the transformer config) is one clear error."""
    try:
        return _render_model_card(folder, repo_id, **kwargs)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
        if isinstance(error, LayerPruneError):
            raise
        raise LayerPruneError(
            f"a record in {folder} is damaged or hand-edited ({type(error).__name__}: {error}); re-create it by "
            "re-running the command that wrote it"
        ) from error


def _render_model_card(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    license: str | None = None,
    base_model: str | None = None,
    transformer_only: bool = False,
    report: str | os.PathLike | None = None,
) -> str:
    """The README.md for ``folder`` (see the module docstring for what it reads).

    ``base_model`` is the Hub id of the source model, for folders pruned from a local copy (their files name the
    source by its folder name only). Models, prompt sets and scorers appear by their public names (``provenance``).
    ``transformer_only`` (implied for a folder that holds only a transformer): the repo holds just the transformer,
    and the card shows how to load it into the base pipeline. ``report``: an evaluation report written outside the
    folder (``layerprune eval``'s default), shown instead of the folder's ``report.json``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from . import __version__
    from .distill import DISTILL_CONFIG, DistillConfig
    from .eval_report import EvalReport, format_count, metrics_table, settings_sentence
    from .provenance import local_source, public_name
    from .routing.record import check_routing_folder

    folder = check_pipeline_folder(folder)
    routing = check_routing_folder(folder) if (folder / "model_index.json").is_file() else None
    if routing is not None and transformer_only:
        raise LayerPruneError(
            f"{folder} is a routed pipeline (routing.json): its router needs the whole pipeline folder; push it "
            "without --transformer-only"
        )
    transformer_only = transformer_only or not (folder / "model_index.json").is_file()
    config = expose_record(_read_json(transformer_dir(folder) / "config.json") or {})
    kept = config.get("kept_layers")
    from .families import family_of_config

    family = family_of_config(config, str(folder))
    depths = family.stack_depths(config)
    source_depth = config.get("source_num_layers") or sum(depths)
    removed = [i for i in range(source_depth) if kept is not None and i not in kept]
    recorded = config.get("source_model")
    local = local_source(folder)  # the full local path behind the recorded name, to read the base's license
    local = local if local and public_name(local) == public_name(recorded) else recorded
    source = base_model or public_name(recorded)
    importance = _read_json(folder / "importance.json")
    if importance is not None:
        from .importance.result import LayerImportance

        LayerImportance.from_dict(importance, source=str(folder / "importance.json"))  # refuses a damaged file
    distill = DistillConfig.load(folder) if (folder / DISTILL_CONFIG).is_file() else None
    report_file = Path(report) if report is not None else folder / "report.json"
    given, report = report, EvalReport.load(report_file) if report_file.is_file() else None
    if given is not None and report is not None and report.student.kept_layers != config.get("kept_layers"):
        raise LayerPruneError(
            f"{report_file} evaluated a model that kept blocks {report.student.kept_layers}, not this one "
            f"({config.get('kept_layers')}): pass the report of {folder}"
        )
    params_after, _, params_before = _transformer_parameters(folder)

    cites = ["dit-pruner", *family.references]
    tags = ["pruned", "layer-pruning", "diffusers-layerprune", "text-to-image", family.hub_tag]
    if routing is not None:  # a routed pipeline: shared full-depth weights + router; "pruned" only if they are
        cites = ([] if not routing.kept_layers else ["dit-pruner"]) + [*family.references, "aptp"]
        tags = ["prompt-routing", "dynamic-depth", "diffusers-layerprune", "text-to-image", family.hub_tag]
        if routing.kept_layers:
            tags[2:2] = ["pruned", "layer-pruning"]
    stacks = kept_by_stack = None
    if len(family.stacks) > 1 and kept is not None:
        source_depths = config.get("source_stack_depths") or depths
        from .pruned import describe_stacks

        stacks = describe_stacks(family, source_depths)
        split = family.split(kept, source_depths)
        kept_by_stack = "; ".join(f"{st.kind} `{local}`" for st, local in zip(family.stacks, split, strict=True))
    importance_lines = []
    if importance:
        meta = importance.get("metadata", importance)
        criterion = meta.get("criterion") or importance.get("criterion")
        fields = (
            ("criterion", "criterion"),
            ("scorer", "scorer"),
            ("prompt set", "prompts"),
            ("plan", "plan"),
            ("inference steps", "num_inference_steps"),
            ("guidance scale", "guidance_scale"),
            ("seed", "seed"),
        )
        for label, key in fields:
            value = meta.get(key)
            if isinstance(value, dict) and "source" in value:  # a prompt-set record
                value = public_name(value["source"]) + (f", {value['count']} prompts" if value.get("count") else "")
            elif key == "scorer":
                value = public_name(value)
            if value is not None:
                importance_lines.append((label, value))
        if criterion in CITATIONS:
            cites.append(criterion)
        if meta.get("scorer", "") and str(meta.get("scorer")).startswith("hps"):
            cites.append("hps")
    distillation = None
    if distill:
        tags.append("knowledge-distillation")
        load = None
        if distill.lora:  # the adapter alone, for the undistilled pruned model (these weights already hold it)
            load = (
                f'peft.PeftModel.from_pretrained(pipe.transformer, "{repo_id}", subfolder="lora")'
                if family.lora_format == "peft"
                else f'pipe.load_lora_weights("{repo_id}", subfolder="lora")'
            )
        distillation = {
            **dataclasses.asdict(distill),
            "teacher": public_name(distill.teacher_model),
            "data": public_name(distill.data),
            "lora_load": load,
            "elastic_line": card_line(distill.elastic) if distill.elastic else None,  # one run, nested depths
        }
        w = distill.weights
        cites.append("bk-sdm")
        if w.feature_loss == "normalized":
            cites.append("output_loss")
        if distill.lora:
            cites.append("lora")
    evaluation_settings = evaluation = None
    if report:
        evaluation_settings, evaluation = settings_sentence(report), metrics_table(report)
        for scorer in report.settings.scorers:
            key = "hps" if scorer.startswith("hps") else scorer
            if key in CITATIONS:
                cites.append(key)

    # the weights were trained (distilled, or a routed pipeline's shared weights fine-tuned), or are the source's
    trained = bool(distill) or bool(routing and routing.training.get("settings", {}).get("finetune_steps"))
    if license is not None and not license.strip():
        raise LayerPruneError("--license is empty; give an SPDX id such as apache-2.0, or leave it out")
    licence = {"license": license} if license else _base_license(base_model or local)
    base = base_model or _hub_id(source)
    name = repo_id.split("/")[-1]
    eval_results = card_eval_results(report)
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-image",
        base_model=base,
        # The Hub knows four relations (adapter, merge, quantized, finetune) and infers "finetune" when none is
        # given. A distilled model was trained: finetune. A pruned model without training is a compressed copy of
        # the base's own weights, which is what the Hub files under "quantized" (its tree lists such copies as
        # Quantizations); the card's summary says that it is pruned, not quantized.
        base_model_relation=("finetune" if trained else "quantized") if base else None,
        **licence,
        datasets=card_datasets(importance, distill, report) or None,
        tags=list(dict.fromkeys(tags)),
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )
    summary = (
        f"A depth-pruned version of `{source or 'its source model'}`: {len(removed)} of {source_depth} transformer "
        f"blocks removed ({sum(depths)} kept)"
        + (", then fine-tuned by knowledge distillation from the full model." if distill else ".")
        + (
            " Its weights are the source's own, not trained further (the Hub lists it with the source's compressed "
            "copies, as `quantized`, the closest of its relations; it is not quantized)."
            if base and not trained
            else ""
        )
    )
    routing_section = None
    if routing is not None:
        from .routing.pipeline import CUSTOM_PIPELINE
        from .routing.record import routing_summary

        summary = routing_summary(routing)
        routing_section = dict(
            num_layers=routing.num_layers,
            num_codes=routing.num_codes,
            finetune_steps=routing.training.get("settings", {}).get("finetune_steps") or 0,
            mean_blocks=routing.mean_blocks,
            num_prompts=routing.training.get("num_prompts", ""),
            budget=routing.budget,
            codes=[
                dict(
                    blocks=len(c.kept_layers),
                    skipped=routing.skipped_layers(k),
                    share=c.share,
                    closest=c.closest_prompts,
                )
                for k, c in enumerate(routing.codes)
            ],
            kept_layers=routing.kept_layers,
            source_model=routing.source_model,
            source_num_layers=routing.source_num_layers,
            custom_pipeline=CUSTOM_PIPELINE if (folder / f"{CUSTOM_PIPELINE}.py").is_file() else None,
        )
    from .export import exported_files

    exports = [
        dict(name=f.name, size=_size_text(f.stat().st_size), kind=_export_kind(f)) for f in
        exported_files(folder)
    ]  # fmt: skip
    card = ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        exports=exports,
        export_example=next((e for e in exports if e["name"].endswith(".gguf")), exports[0] if exports else None),
        family_title=family.title,
        comfyui_note=family.single_file.comfyui if family.single_file else "",
        title=f"{name}",
        summary=summary,
        show_removed=routing is None or bool(routing.kept_layers),
        routing=routing_section,
        source_model=source or "unknown",
        source_link=f"https://huggingface.co/{base}" if base else None,
        source_num_layers=source_depth,
        num_layers=sum(depths),
        stacks=stacks,
        kept_by_stack=kept_by_stack,
        stock_class=family.transformer_class,
        pipeline_class=family.pipeline_classes[0],
        pruned_class=family.pruned_class().__name__,
        kept_layers=kept,
        removed_layers=removed,
        params_before=format_count(params_before),
        params_after=format_count(params_after),
        pipeline_params_before=format_count(report.teacher_entry.parameters["total"])
        if report and report.teacher_entry
        else None,
        pipeline_params_after=format_count(report.student.parameters["total"]) if report else None,
        importance=importance_lines,
        importance_plot="importance.png" if (folder / "importance.png").is_file() else None,
        distillation=distillation,
        loss_plot="loss_curve.png" if (folder / "loss_curve.png").is_file() else None,
        evaluation=evaluation,
        evaluation_settings=evaluation_settings,
        grid="report_grid.png" if report_extras(report_file)[1].is_file() else None,
        repo_id=repo_id,
        transformer_only=transformer_only,
        base_id=base or source or "BASE_MODEL_ID",
        # real checkpoints run in their family's half precision; tiny ones (the toy world) in float32, as layerprune
        # runs them
        dtype=family.defaults.get("dtype", "bfloat16") if family.real_size(config) else "float32",
        prompt_keyword="prompt=" if family.prompt_keyword else "",
        call_args="".join(f", {k}={v!r}" for k, v in family.card_call_args(config).items()),
        config_path="config.json" if transformer_only else "transformer/config.json",
        citations=[{**CITATIONS, **family.citations}[c] for c in dict.fromkeys(cites)],
        version=__version__,
    )
    return str(card)


def _size_text(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _export_kind(path: Path) -> str:
    """``GGUF Q8_0`` / ``safetensors BF16``: the file's type, read from the file (GGUF file type; safetensors dtype)."""
    if path.suffix == ".gguf":
        import gguf

        reader = gguf.GGUFReader(str(path))
        file_type = reader.fields["general.file_type"].contents()
        return f"GGUF {gguf.LlamaFileType(file_type).name.removeprefix('MOSTLY_')}"
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        dtypes = sorted({f.get_slice(k).get_dtype() for k in f.keys()})
    return f"safetensors {'/'.join(dtypes)}"


def is_our_card(path: Path) -> bool:
    """Whether ``path`` is a model card this package rendered (its metadata carries the package's tag)."""
    import yaml

    try:
        text = path.read_text()
        meta = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
    except (OSError, UnicodeDecodeError, IndexError, yaml.YAMLError):
        return False
    return isinstance(meta, dict) and "diffusers-layerprune" in (meta.get("tags") or [])


def write_model_card(folder: Path, card: str) -> Path:
    """Write ``card`` as ``folder/README.md`` atomically; a README the package did not render is never replaced."""
    from .outputs import atomic_output_file, check_output_file

    path = check_output_file(Path(folder) / "README.md", owned=is_our_card)
    with atomic_output_file(path) as tmp:
        tmp.write_text(card)
    return path


def push_pipeline(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    license: str | None = None,
    base_model: str | None = None,
    transformer_only: bool = False,
    report: str | os.PathLike | None = None,
) -> dict:
    """Render ``README.md`` into ``folder`` and upload the folder to ``repo_id`` in one commit.

    ``report``: an evaluation report kept outside the folder (``layerprune eval``'s default output): shown in the
    card and uploaded with it as ``report.json`` / ``report.md`` / ``report_grid.png``.

    ``transformer_only`` uploads just the transformer (at the top of the repo) with the card and reports, not the
    text encoder, VAE, tokenizer or scheduler (see :func:`upload_plan`); a folder that holds only a transformer is
    uploaded that way anyway.

    Before anything is written or sent, the folder is checked: no symbolic link to a file outside it, no README.md
    the package did not render, and no absolute local path in the card or any file to upload. ``base_model`` names
    the Hub id of a source that was a local folder. With ``dry_run`` nothing remote is touched: the card is written
    and the file list returned. Returns ``{"repo_id", "files": [(path, bytes)], "commit_url"}``.
    """
    from .outputs import check_output_file

    folder = check_pipeline_folder(folder)
    check_repo_id(repo_id)
    if base_model is not None:
        check_base_model(base_model)
    check_upload_links(folder)
    from .validation import check_weight_files

    check_weight_files(folder)  # a truncated or damaged weight file is named, never uploaded
    check_output_file(folder / "README.md", owned=is_our_card)
    token = None
    if not dry_run:
        from huggingface_hub import get_token

        token = get_token()
        if not token:
            raise LayerPruneError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (or use --dry-run)")
    extra = report_uploads(folder, report) if report is not None else []
    card = render_model_card(
        folder, repo_id, license=license, base_model=base_model, transformer_only=transformer_only, report=report
    )
    from .provenance import _rewrite_text, _roots_of

    card = _rewrite_text(card, _roots_of(folder), [])  # the card names models by public names; this is the net
    plan = upload_plan(folder, transformer_only=transformer_only) + extra
    if not any(rel == "README.md" for rel, _, _ in plan):
        plan = sorted([*plan, ("README.md", "README.md", len(card.encode()))], key=lambda row: row[1])
    aliases = source_aliases(folder, base_model)
    # Every file is reviewed before the card is written: a refusal leaves the folder as it was.
    review = review_upload(folder, [row for row in plan if row[0] != "README.md"], aliases=aliases)
    write_model_card(folder, card)
    review += review_upload(folder, [row for row in plan if row[0] == "README.md"], aliases=aliases)
    review.sort(key=lambda row: row["target"])
    sent = [row for row in review if row["verdict"] != "left out"]
    result = {
        "repo_id": repo_id,
        "files": [(row["target"], row["size"]) for row in sent],
        "rewritten": [(row["target"], row["changes"]) for row in sent if row["verdict"] == "rewritten"],
        "left_out": [(row["target"], row["changes"][0][0]) for row in review if row["verdict"] == "left out"],
        "commit_url": None,
    }
    if dry_run:
        return result

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    routed = (folder / "routing.json").is_file()
    message = commit_message or f"Upload {'prompt-routed' if routed else 'pruned'} pipeline with diffusers-layerprune"
    if all(row["rel"] == row["target"] and row["verdict"] == "as is" for row in review):
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=message,
            ignore_patterns=UPLOAD_IGNORE,
        )
    else:  # files move (transformer/* to the top) or were rewritten: one commit of explicit additions
        from huggingface_hub import CommitOperationAdd

        operations = [
            CommitOperationAdd(
                path_in_repo=row["target"],
                path_or_fileobj=row["data"] if row["data"] is not None else str(folder / row["rel"]),
            )
            for row in sent
        ]
        info = api.create_commit(
            repo_id=repo_id, operations=operations, commit_message=message, repo_type="model", revision=revision
        )
    result["commit_url"] = getattr(info, "commit_url", None) or str(info)
    return result


# Built-in prompt sets that live in a Hub dataset (for the card's `datasets:`); the toy world's are in the package.
BUILTIN_PROMPT_DATASETS = {"hpdv2": "zhwang/HPDv2"}


def prompt_dataset_id(source: str | None) -> str | None:
    """The Hub dataset a ``--prompts`` spec reads (``user/name[:split][@column]`` -> ``user/name``), ``None`` for
    local files and folders and the toy world: only public datasets go into a card's ``datasets:``."""
    if not source:
        return None
    from .data import parse_prompt_spec

    try:
        name = parse_prompt_spec(str(source)).name
    except LayerPruneError:
        return None
    if name in BUILTIN_PROMPT_DATASETS:
        return BUILTIN_PROMPT_DATASETS[name]
    return _hub_id(name)


def card_datasets(importance: dict | None, distill, report) -> list[str]:
    """Hub datasets the model was made or measured with: scoring prompts, distillation data, evaluation prompts.
    ``distill`` is a :class:`~diffusers_layerprune.distill.DistillConfig`, ``report`` an
    :class:`~diffusers_layerprune.evaluation.EvalReport` (or ``None``)."""
    sources = []
    if importance:
        prompts = importance.get("metadata", {}).get("prompts")
        sources.append(prompts.get("source") if isinstance(prompts, dict) else prompts)
    if distill:
        record = distill.prompt_set
        sources.append(record.get("source") if isinstance(record, dict) else distill.data)
    if report:
        sources.append(report.settings.prompts)
    return list(dict.fromkeys(d for d in map(prompt_dataset_id, sources) if d))


def card_eval_results(report) -> list:
    """``model-index`` results of the card: each scorer's mean, the judge's accuracies (toy world) and the speed-up
    over the teacher, from the report's (:class:`~diffusers_layerprune.evaluation.EvalReport`) student entry."""
    from huggingface_hub import EvalResult

    if not report or "student" not in report.models:
        return []
    settings, student = report.settings, report.student
    source = settings.prompts
    dataset = dict(
        dataset_type=prompt_dataset_id(source) or str(source).split(":")[0],
        dataset_name=f"{source} ({settings.num_prompts} prompts)",
    )
    results = [
        EvalResult(
            task_type="text-to-image", metric_type=name, metric_name=name, metric_value=round(v.mean, 6), **dataset
        )
        for name, v in [*student.scores.items(), *student.checks.items()]
    ]
    results.append(
        EvalResult(
            task_type="text-to-image",
            metric_type="speedup",
            metric_name="transformer speed-up over the teacher",
            metric_value=round(student.latency.speedup, 4),
            **dataset,
        )
    )
    return results


def card_line(elastic: dict) -> str:
    """The model card's line for a model of an elastic run (``distill_config.json``'s ``elastic`` entry)."""
    depths = ", ".join(map(str, elastic.get("depths") or []))
    if elastic.get("extracted_depth") is not None:
        return (
            f"extracted at depth {elastic['extracted_depth']} from an elastic run that distilled the nested depths "
            f"{depths} together (weight-shared, sandwich rule); `layerprune extract` wrote it"
        )
    return f"elastic run: the nested depths {depths} were distilled together (weight-shared, sandwich rule)"
