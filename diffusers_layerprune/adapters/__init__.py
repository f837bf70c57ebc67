"""Adapters across pruning: LoRAs (``lora``), ControlNets (``controlnet``); each kind one module with its CLI in
``cli``."""
