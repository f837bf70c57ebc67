"""Prompt sets: where prompts come from (the toy world's splits, HPDv2's benchmark, a text/CSV/JSON/parquet file,
a saved or Hub ``datasets`` corpus with a column) and how they are read (``--prompts`` specs, :func:`load_prompts`),
normalised and encoded. The cached tensors built from them live in ``data``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import LayerPruneError, first_line, user_errors

logger = logging.getLogger(__name__)

HPDV2_STYLES = ("anime", "concept-art", "paintings", "photo")
PROMPT_COLUMNS = ("prompt", "text", "caption", "prompts", "captions")


def normalize_prompt(prompt: str) -> str:
    """The form prompts are compared in (duplicates, overlap between sets): whitespace collapsed, case folded."""
    return " ".join(str(prompt).split()).casefold()


@dataclass
class PromptSet:
    """An ordered list of prompts with where it came from; ``groups`` labels each prompt (e.g. HPDv2 style).

    ``meta`` records what loading did: ``rows`` read, ``empty`` and ``duplicates`` dropped, ``excluded`` (prompts
    shared with another set, e.g. the evaluation prompts), ``limit``.
    """

    prompts: list[str]
    source: str
    groups: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def fingerprint(self) -> str:
        """A short hash of the prompts (order matters)."""
        return hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()[:16]

    def head(self, n: int | None) -> PromptSet:
        if n is None or n >= len(self.prompts):
            return self
        groups = self.groups[:n] if self.groups is not None else None
        return PromptSet(self.prompts[:n], self.source, groups, dict(self.meta, limit=n))

    def _keep(self, keep: list[bool], **meta) -> PromptSet:
        groups = [g for g, k in zip(self.groups, keep, strict=True) if k] if self.groups is not None else None
        kept = [p for p, k in zip(self.prompts, keep, strict=True) if k]
        return PromptSet(kept, self.source, groups, {**self.meta, **meta})

    def cleaned(self) -> PromptSet:
        """Prompts stripped, empty ones and duplicates (same :func:`normalize_prompt`) dropped; first kept."""
        stripped = PromptSet([str(p).strip() for p in self.prompts], self.source, self.groups, dict(self.meta))
        seen: set[str] = set()
        keep = []
        for prompt in stripped.prompts:
            key = normalize_prompt(prompt)
            keep.append(bool(key) and key not in seen)
            seen.add(key)
        empty = sum(not p for p in stripped.prompts)
        return stripped._keep(keep, rows=len(self.prompts), empty=empty, duplicates=len(keep) - sum(keep) - empty)

    def without(self, other: Sequence[str] | PromptSet) -> PromptSet:
        """This set minus every prompt that also appears in ``other`` (compared with :func:`normalize_prompt`)."""
        taken = {normalize_prompt(p) for p in (other.prompts if isinstance(other, PromptSet) else other)}
        keep = [normalize_prompt(p) not in taken for p in self.prompts]
        return self._keep(keep, excluded=self.meta.get("excluded", 0) + len(keep) - sum(keep))

    def record(self) -> dict:
        """What outputs store about the set: source, count, fingerprint and what loading dropped."""
        return {"source": self.source, "count": len(self), "fingerprint": self.fingerprint(), **self.meta}


# name -> loader(split) for built-in prompt sets; the toy world registers "toy" here.
PROMPT_SETS: dict[str, Callable[[str | None], PromptSet]] = {}
# Built-in sets that are fixed benchmarks: kept exactly as published (no deduplication), so their protocol holds.
BENCHMARK_SETS = {"hpdv2"}


def _hpdv2(style: str | None) -> PromptSet:
    """HPDv2 benchmark prompts (Wu et al., 2023): 800 per style, from the ``zhwang/HPDv2`` Hub dataset."""
    from huggingface_hub import hf_hub_download

    styles = HPDV2_STYLES if style in (None, "all") else (style,)
    unknown = [s for s in styles if s not in HPDV2_STYLES]
    if unknown:
        raise LayerPruneError(f"unknown HPDv2 style {unknown[0]!r}; choose from {', '.join(HPDV2_STYLES)} or all")
    prompts, groups = [], []
    for s in styles:
        try:
            path = hf_hub_download("zhwang/HPDv2", f"{s}.json", subfolder="benchmark", repo_type="dataset")
        except Exception as error:
            raise LayerPruneError(
                f"could not download the HPDv2 {s} prompts (dataset zhwang/HPDv2): "
                f"{_first_line(error, 'zhwang/HPDv2')}; or pass --prompts with a local prompt file"
            ) from error
        loaded = json.loads(Path(path).read_text())
        prompts += loaded
        groups += [s] * len(loaded)
    return PromptSet(prompts, "hpdv2" if style in (None, "all") else f"hpdv2:{style}", groups)


PROMPT_SETS["hpdv2"] = _hpdv2


def _toy(split: str | None) -> PromptSet:
    """Captions of the bundled toy world: ``train``, ``heldout`` (default) or ``all``."""
    from .toy.world import captions

    split = split or "heldout"
    if split not in ("train", "heldout", "all"):
        raise LayerPruneError(f"unknown toy split {split!r}; use toy:train, toy:heldout or toy:all")
    return PromptSet(captions(split), f"toy:{split}")


PROMPT_SETS["toy"] = _toy


def _first_line(error: BaseException, dataset: str | None = None) -> str:
    """The first line of ``error``'s message, or for a failed Hub download what happened and what fixes it."""
    from .errors import hub_error_fix

    first = first_line(error)
    fix = hub_error_fix(error, dataset and f"datasets/{dataset}")
    if fix is None:
        return first + _offline_hint()
    return fix.replace("REPO", f"{dataset or 'ORG/NAME'} --repo-type dataset")  # the fix says what happened


def _offline_hint() -> str:
    from huggingface_hub import constants

    return "; HF_HUB_OFFLINE is set and it is not cached" if constants.HF_HUB_OFFLINE else ""


def _pick_column(columns: Sequence[str], column: str | None, source: str) -> str:
    if column is not None:
        if column not in columns:
            raise LayerPruneError(f"{source} has no column {column!r}; its columns are {', '.join(columns)}")
        return column
    for name in PROMPT_COLUMNS:
        for candidate in columns:
            if candidate.lower() == name:
                return candidate
    raise LayerPruneError(
        f"{source}: say which column holds the prompts with --prompt-column or SPEC@column "
        f"(columns: {', '.join(columns)})"
    )


def _from_records(records: list, column: str | None, source: str) -> list[str]:
    if all(isinstance(r, str) for r in records):
        return records
    if all(isinstance(r, dict) for r in records):
        name = _pick_column(list(records[0]) if records else [], column, source)
        return [r[name] for r in records]
    raise LayerPruneError(f"{source}: expected a list of strings or of objects with a prompt field")


def _from_file(path: Path, column: str | None) -> list[str]:
    """Prompts of a local file. Tables are read directly: no datasets cache is written for a prompt file."""
    import csv

    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            return path.read_text(encoding="utf-8").splitlines()
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                key = _pick_column(list(data), column, str(path))
                data = data[key]
            if not isinstance(data, list):
                raise LayerPruneError(f"{path}: expected a list of prompts")
            return _from_records(data, column, str(path))
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            return _from_records(rows, column, str(path))
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                name = _pick_column(list(reader.fieldnames or []), column, str(path))
                return [row[name] or "" for row in reader]
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        raise LayerPruneError(
            f"{path} is not a readable UTF-8 {suffix[1:]} prompt file: {_first_line(error)}"
        ) from error
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as error:
            raise LayerPruneError(f"{path} is not a readable parquet file: {_first_line(error)}") from error
        return table.column(_pick_column(table.column_names, column, str(path))).to_pylist()
    raise LayerPruneError(
        f"{path}: unsupported prompt file type {suffix!r} (use .txt, .json, .jsonl, .csv or .parquet)"
    )


DATA_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


def _is_saved_dataset(path: Path) -> bool:
    # datasets.save_to_disk writes state.json (a Dataset) or dataset_dict.json (a DatasetDict)
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def load_hf_dataset(name: str | os.PathLike, config: str | None = None, split: str | None = None):
    """``datasets.load_dataset`` for a Hub name, a local data file (csv/json/jsonl/parquet/txt), a local data folder,
    or a folder written by ``save_to_disk``.

    Errors (missing file, unknown dataset or split, no network) become one :class:`LayerPruneError` line.
    """
    from datasets import DatasetDict, load_dataset, load_from_disk

    text = str(name)
    path = Path(text).expanduser()
    with user_errors(f"could not load dataset {text!r}", lambda error: _first_line(error, text)):
        if path.is_file():
            builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise LayerPruneError(f"{text}: unsupported data file type {path.suffix!r}")
            return load_dataset(builder, data_files=str(path), split=split or "train")
        if path.is_dir():
            if _is_saved_dataset(path):
                loaded = load_from_disk(str(path))
                if isinstance(loaded, DatasetDict):
                    wanted = split or ("train" if "train" in loaded else next(iter(loaded)))
                    if wanted not in loaded:
                        raise LayerPruneError(f"{text} has no split {wanted!r}; its splits are {', '.join(loaded)}")
                    loaded = loaded[wanted]
                return loaded
            return load_dataset(str(path), config, split=split or "train")
        if text.startswith((".", "/", "~")) or path.suffix.lower() in DATA_FILE_BUILDERS:
            raise LayerPruneError(f"dataset {text} does not exist")
        return load_dataset(text, config, split=split or "train")


@dataclass(frozen=True)
class PromptSpec:
    """A parsed ``--prompts`` value: ``name[:config][:split][@column]`` for datasets, or a built-in / file."""

    name: str
    config: str | None = None
    split: str | None = None
    column: str | None = None


def parse_prompt_spec(source: str) -> PromptSpec:
    """Split ``source`` into dataset name, config, split and column.

    ``user/corpus:validation@caption`` -> split ``validation``, column ``caption``; ``user/corpus:cfg:train`` -> config
    ``cfg``, split ``train``. A built-in name keeps its single ``:part`` (``toy:train``, ``hpdv2:photo``) as the split.
    An existing local path is taken whole (``@`` and ``:`` may be part of a file name).
    """
    if Path(source).expanduser().exists():
        return PromptSpec(source)
    body, at, column = source.rpartition("@") if "@" in source else (source, "", "")
    if at and (not column or "/" in column):
        raise LayerPruneError(f"--prompts {source!r}: expected name[:config][:split][@column]")
    parts = re.split(r":(?![^\[]*\])", body)  # not inside a split slice such as train[:1000]
    if len(parts) > 3 or not all(parts):
        raise LayerPruneError(f"--prompts {source!r}: expected name[:config][:split][@column]")
    name, rest = parts[0], parts[1:]
    config, split = (None, rest[0]) if len(rest) == 1 else (tuple(rest) if rest else (None, None))
    return PromptSpec(name, config, split, column or None)


def check_prompt_cells(prompts: Sequence, source: str) -> None:
    """Refuse prompt cells that are not text (a number, a null, a list): turned into strings they would be prompts
    such as ``"5"``, ``"None"`` or ``"['a', 'b']"``, trained and scored without a word."""
    bad = [(i, cell) for i, cell in enumerate(prompts) if not isinstance(cell, str)]
    if bad:
        row, cell = bad[0]
        raise LayerPruneError(
            f"prompt set {source!r}: {len(bad)} of {len(prompts)} prompt cells are not text (row {row + 1}: "
            f"{cell!r}, {type(cell).__name__}); every prompt must be a string: fix those rows or pick the text "
            "column with SPEC@column"
        )


def load_prompts(
    source: str,
    *,
    column: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    exclude: Sequence[str] | PromptSet | None = None,
) -> PromptSet:
    """Load a prompt set: stripped, empty prompts and duplicates dropped, then ``exclude`` removed, then the first
    ``limit`` kept (what was dropped is in ``meta``).

    ``source`` is one of: a built-in name (``toy``, ``hpdv2``; ``name:part`` picks a split or style, e.g.
    ``toy:heldout``, ``hpdv2:photo``); a local ``.txt`` (one prompt per line) / ``.json`` / ``.jsonl`` / ``.csv`` /
    ``.parquet`` file; a local dataset folder (``save_to_disk`` output or data files); or a ``datasets`` Hub name as
    ``name[:config][:split][@column]`` (default split ``train``). ``column`` (or ``@column``) picks the text column;
    default: the first of ``prompt, text, caption, prompts, captions`` (any case). Built-in benchmarks (HPDv2) are
    kept exactly as published.
    """
    spec = parse_prompt_spec(source)
    column = column or spec.column
    if spec.name in PROMPT_SETS and spec.config is None:
        prompt_set = PROMPT_SETS[spec.name](spec.split or split)
        if spec.name not in BENCHMARK_SETS:
            prompt_set = prompt_set.cleaned()
    else:
        path = Path(spec.name).expanduser()
        if path.is_dir():
            ds = load_hf_dataset(path, spec.config, spec.split or split)
            prompts = list(ds[_pick_column(ds.column_names, column, source)])
        elif path.exists():
            prompts = _from_file(path, column)
        elif path.suffix.lower() in (".txt", ".json", ".jsonl", ".csv", ".parquet") or source.startswith(
            (".", "/", "~")
        ):
            raise LayerPruneError(f"prompt file {source} does not exist")
        elif "/" not in spec.name:
            known = ", ".join(sorted(PROMPT_SETS))
            raise LayerPruneError(
                f"unknown prompt set {source!r}: use a built-in set ({known}), a prompt file (.txt, .json, .jsonl, "
                ".csv, .parquet), a dataset folder, or a Hub dataset as user/name[:split][@column]"
            )
        else:
            try:
                ds = load_hf_dataset(spec.name, spec.config, spec.split or split)
            except LayerPruneError as error:
                raise LayerPruneError(
                    f"prompt set {source!r}: {error}; pass --prompts a local .txt/.jsonl/.csv file or dataset folder"
                ) from error
            prompts = list(ds[_pick_column(ds.column_names, column, source)])
        check_prompt_cells(prompts, source)
        prompt_set = PromptSet(list(prompts), source).cleaned()
        if len(prompt_set) == 1 and prompt_set.meta["rows"] > 1:
            raise LayerPruneError(
                f"prompt set {source!r}: all {prompt_set.meta['rows']} rows are the same prompt; is it the right "
                "file or column?"
            )
    if exclude is not None:
        prompt_set = prompt_set.without(exclude)
    prompt_set = prompt_set.head(limit)
    if not prompt_set.prompts:
        dropped = {k: v for k, v in prompt_set.meta.items() if k in ("rows", "empty", "duplicates", "excluded") and v}
        detail = f" ({', '.join(f'{k}: {v}' for k, v in dropped.items())})" if dropped else ""
        raise LayerPruneError(f"prompt set {source!r} is empty once empty lines and duplicates are dropped{detail}")
    return prompt_set


# ----------------------------------------------------------------------------------------------------------------
# Text embeddings
# ----------------------------------------------------------------------------------------------------------------


def encode_prompts(
    pipe, prompts: Sequence[str], *, max_sequence_length: int, batch_size: int = 32, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts exactly as the pipeline does for generation (``pipe.encode_prompt``, no caption cleaning).

    Returns ``(prompt_embeds [N, L, D], prompt_attention_mask [N, L])`` on the CPU, L = ``max_sequence_length``.
    """
    device = device or pipe.text_encoder.device
    embeds, masks = [], []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            e, m, _, _ = pipe.encode_prompt(
                batch,
                do_classifier_free_guidance=False,
                device=device,
                clean_caption=False,
                max_sequence_length=max_sequence_length,
            )
            embeds.append(e.cpu())
            masks.append(m.cpu())
    return torch.cat(embeds), torch.cat(masks)
