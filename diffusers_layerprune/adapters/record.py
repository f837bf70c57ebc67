"""The record written beside every adapted adapter (``layerprune_lora.json``, ``layerprune_ip_adapter.json``,
``controlnet_adaptation.json``): what it was made from (the source by public name, revision and digests), for which
pruned model, and what the adaptation kept or dropped. Uploaded with the adapter, so it holds no local paths."""

from __future__ import annotations

from dataclasses import dataclass

from ..records import Record


@dataclass
class AdapterRecord(Record):
    """An adaptation's record: ``fields`` are its keys as written (each kind lists the ones it must hold)."""

    FIX = "adapt the adapter again with layerprune"

    fields: dict

    def body(self) -> dict:
        return dict(self.fields)

    @classmethod
    def from_body(cls, data: dict) -> AdapterRecord:
        return cls(dict(data))

    def model_name(self) -> str | None:
        return self.fields.get("pruned_model")


class LoraRecord(AdapterRecord):
    KIND = "lora-adaptation"
    FORMAT = "diffusers-layerprune/lora"
    WHAT = "LoRA record"
    REQUIRED = {"action": str, "family": str, "source_lora": dict, "pruned_model": str, "kept_layers": list}


class IpAdapterRecord(AdapterRecord):
    KIND = "ip-adapter-adaptation"
    FORMAT = "diffusers-layerprune/ip-adapter"
    WHAT = "IP-Adapter record"
    REQUIRED = {"action": str, "family": str, "source_ip_adapter": dict, "pruned_model": str, "kept_layers": list}


class ControlNetRecord(AdapterRecord):
    KIND = "controlnet-adaptation"
    FORMAT = "diffusers-layerprune/controlnet-adaptation"
    WHAT = "ControlNet adaptation record"
    REQUIRED = {"source_controlnet": str, "family": str, "pruned_model": str, "kept_layers": list, "stacks": list}
