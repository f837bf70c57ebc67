"""Adapters across pruning: LoRAs (``lora``); each kind one module with its CLI in ``cli``."""
