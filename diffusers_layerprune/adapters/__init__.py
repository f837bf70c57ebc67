"""Adapters across pruning: LoRAs (``lora``), ControlNets (``controlnet``), IP-Adapters (``ip_adapter``); each kind
one module with its CLI in ``cli``."""
