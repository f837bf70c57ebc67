"""The kept-block record in a pruned transformer's ``config.json``: which keys it has and how they are stored.

A pruned transformer records ``kept_layers`` (the source block each block came from), ``source_num_layers``,
``source_model`` and, for many-stack families, ``source_stack_depths``. In memory (a loaded model's ``config``, the
dict :func:`~diffusers_layerprune.modeling.read_transformer_config` returns) they go by those plain names. On disk
they are stored with a leading underscore (``_kept_layers``): stock diffusers passes ``config.json`` keys its class's
``__init__`` does not take to a warning on *every* load ("... are not expected and will be ignored. Please verify your
config.json"), which users read as a broken checkpoint, while keys that start with ``_`` are dropped from the
``__init__`` arguments without a word (``ConfigMixin.extract_init_dict``) and still kept in the loaded model's
``config``. Folders written before this change hold the plain names; both spellings are read.

This module imports nothing of the package: every writer and reader of configs uses it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

RECORD_KEYS = ("kept_layers", "source_num_layers", "source_model", "source_stack_depths")


def stored_name(key: str) -> str:
    """The name ``key`` of the record has in a saved ``config.json`` (``kept_layers`` -> ``_kept_layers``)."""
    return "_" + key


def hide_record(config: Mapping) -> dict:
    """``config`` as it is saved: the record's plain keys renamed to their stored names (a plain key wins over a
    stale stored one, since in memory the plain key is the one code updates)."""
    out = dict(config)
    for key in RECORD_KEYS:
        if key in out:
            out[stored_name(key)] = out.pop(key)
    return out


def expose_record(config: Mapping) -> dict:
    """``config`` as code reads it: stored names renamed back to the plain ones (a plain key, written by an older
    version, is kept as it is)."""
    out = dict(config)
    for key in RECORD_KEYS:
        hidden = stored_name(key)
        if hidden in out:
            value = out.pop(hidden)
            out.setdefault(key, value)
    return out


def is_model_config(config: Mapping) -> bool:
    """A diffusers model ``config.json`` (the files whose record is stored hidden), not one of our JSON records."""
    return "_class_name" in config and "_diffusers_version" in config


def source_id(name_or_path: str | None) -> str | None:
    """The Hub id or folder a model was loaded from, given a ``_name_or_path``.

    Models loaded as part of a pipeline record ``<folder>/transformer``, and from the Hub a cache path
    ``.../models--org--name/snapshots/<sha>/transformer``: map those back to ``<folder>`` and ``org/name``.
    """
    if not name_or_path:
        return None
    text = str(name_or_path).rstrip("/")
    cached = re.search(r"models--([^/]+?)--([^/]+)/snapshots/", text)
    if cached:
        return f"{cached[1]}/{cached[2]}"
    return text.removesuffix("/transformer") or None
