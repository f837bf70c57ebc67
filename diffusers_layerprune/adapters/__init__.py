"""Carry what users made for the parent model (LoRAs, ControlNets, IP-Adapters) over to a pruned model."""
