"""Every JSON record the package writes is one :class:`~diffusers_layerprune.records.Record`: written with its kind,
schema version and the writing tool's version, read back equal, files of earlier versions (no header) still read,
and each mistake refused the same way, with one line naming the file: not JSON or cut short, a missing key, a key of
the wrong type, a newer schema, a record of another kind, a record of another model."""

import importlib
import json
import pkgutil

import pytest

import diffusers_layerprune
from diffusers_layerprune import LayerPruneError, __version__
from diffusers_layerprune.adapters.record import ControlNetRecord, IpAdapterRecord, LoraRecord
from diffusers_layerprune.checkpoints import CheckpointRecord
from diffusers_layerprune.data import CacheManifest
from diffusers_layerprune.distill import DistillConfig, KDWeights
from diffusers_layerprune.eval_report import EvalReport, EvalSettings, Latency, ModelEval, ScoreSummary
from diffusers_layerprune.evaluation import TeacherCacheEntry
from diffusers_layerprune.importance.result import LayerImportance
from diffusers_layerprune.records import Record
from diffusers_layerprune.routing.record import CodeStats, RoutingRecord
from diffusers_layerprune.run_state import RunRecord, RunSummary
from diffusers_layerprune.sparsity.record import ComponentSparsity, SparsityRecord


def _report() -> EvalReport:
    entry = ModelEval("org/pruned", 2, [0, 2], {"transformer": 10}, Latency(1.0, 0.02, 0.5, 1.3))
    entry.scores["toy"] = ScoreSummary(0.5, 0.1, 0.05, 2, [0.4, 0.6])
    settings = EvalSettings("toy:heldout", 2, ["toy"], 20, 4.5, 32, 16)
    return EvalReport("org/pruned", "toy", settings, {"student": entry}, ["a", "b"], {"torch": "x"})


# record, a required key, a value of the wrong type for it, the model it names (None: it names none)
RECORDS = {
    "importance": (LayerImportance([0.3, 0.1, 0.2], "block_influence", metadata={"model": "org/m"}), "criterion", 3, "org/m"),
    "eval_report": (_report(), "models", [], "org/pruned"),
    "routing": (
        RoutingRecord(4, 3.0, [CodeStats([0, 1, 3], 1.0)], {"text_dim": 8, "num_codes": 1}, "ab" * 32, source_model="org/m"),
        "transformer_sha256",
        7,
        "org/m",
    ),
    "sparsity": (
        SparsityRecord("magnitude", "2:4", "layer", {"transformer": ComponentSparsity(0.5, 2, 4)}, source_model="org/m"),
        "components",
        "all",
        "org/m",
    ),
    "distill_config": (DistillConfig("toy", "org/student", [0, 2], 4, steps=3, weights=KDWeights()), "steps", "3", "org/student"),
    "checkpoint": (CheckpointRecord(5, {"num_layers": 2}, None, False, {"learning_rate": 1e-3}), "student", [], None),
    "run": (RunRecord({"score": {"settings": {"seed": 0}, "seconds": 1.0}}, {"score": {"seed": 0}}), "stages", [], None),
    "run_summary": (RunSummary("runs/x/distilled", [{"model": "teacher"}], {"score": {"status": "ran"}}, 1.5), "rows", {}, None),
    "cache_manifest": (CacheManifest("k" * 20, "bfloat16", {"model": "toy"}, 8), "rows", "8", None),
    "teacher_cache": (TeacherCacheEntry(1, "k" * 24, {"num_layers": 2}, 0.5), "entry", [], None),
    "lora": (
        LoraRecord({"action": "adapt-lora", "family": "pixart", "source_lora": {"source": "org/lora"}, "pruned_model": "org/m", "kept_layers": [0, 2]}),
        "source_lora",
        "org/lora",
        "org/m",
    ),
    "ip_adapter": (
        IpAdapterRecord({"action": "adapt-ip-adapter", "family": "flux", "source_ip_adapter": {"source": "x"}, "pruned_model": "org/m", "kept_layers": [1]}),
        "kept_layers",
        1,
        "org/m",
    ),
    "controlnet": (
        ControlNetRecord({"source_controlnet": "org/cn", "family": "sd3", "pruned_model": "org/m", "kept_layers": [0], "stacks": []}),
        "stacks",
        {},
        "org/m",
    ),
}  # fmt: skip


def test_every_record_type_of_the_package_is_covered_here():
    for module in pkgutil.walk_packages(diffusers_layerprune.__path__, "diffusers_layerprune."):
        if module.name.split(".")[-1] not in ("train_distill", "__main__"):
            importlib.import_module(module.name)

    def leaves(cls):
        for sub in cls.__subclasses__():
            yield from leaves(sub)
            if sub.KIND:
                yield sub

    assert {type(r) for r, *_ in RECORDS.values()} == set(leaves(Record))


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_a_record_round_trips_with_its_header_and_refuses_each_mistake_in_one_line(name, tmp_path):
    record, required, wrong, model = RECORDS[name]
    cls = type(record)
    path = record.save(tmp_path / "record.json") if not isinstance(record, (SparsityRecord, DistillConfig)) else None
    path = path or record.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["kind"] == cls.KIND and data["schema_version"] == cls.SCHEMA_VERSION
    assert data["tool_version"] == __version__
    assert cls.load(path) == record
    # a file of an earlier version: no header (and the format keys it had then, where it had them) still reads
    legacy = {k: v for k, v in data.items() if k not in ("kind", "schema_version", "tool_version")}
    assert cls.from_dict(legacy, "old") == record
    assert not list(tmp_path.glob(".*tmp*"))  # the write left no temporary behind

    def refused(text: str, match: str, **kwargs) -> None:
        path.write_text(text)
        with pytest.raises(LayerPruneError, match=match) as caught:
            cls.load(path, **kwargs)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)

    refused(json.dumps(data)[: len(json.dumps(data)) // 2], "not valid JSON")  # cut short
    refused(json.dumps({k: v for k, v in data.items() if k != required}), f"the key '{required}' is missing")
    refused(json.dumps({**data, required: wrong}), f"{required} must be")
    refused(json.dumps({**data, "schema_version": cls.SCHEMA_VERSION + 1}), "newer diffusers-layerprune")
    other = "run" if cls.KIND != "run" else "sparsity"
    refused(json.dumps({**data, "kind": other}), f"is an? {other} record, not an? {cls.WHAT}")
    if model is not None:
        path.write_text(json.dumps(data))
        assert cls.load(path, model=model) == record
        refused(json.dumps(data), "not of org/other", model="org/other")
    else:
        assert record.model_name() is None


def test_a_record_newer_by_its_older_format_version_key_is_refused_too(tmp_path):
    record = RECORDS["importance"][0]
    data = {**record.to_dict(), "format_version": 2}
    data.pop("schema_version")
    with pytest.raises(LayerPruneError, match="newer diffusers-layerprune"):
        LayerImportance.from_dict(data, "old.json")


def test_a_model_is_matched_by_its_public_name():
    from diffusers_layerprune.records import same_model

    assert same_model("pruned", "/abs/runs/pruned") and same_model("pruned", "./pruned/")
    assert same_model("org/m", "org/m") and not same_model("org/m", "/abs/m") and not same_model("a", "b")
