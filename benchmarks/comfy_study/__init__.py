"""The pieces of benchmarks/comfy_check.py: the files it writes with this package (:mod:`.files`) and the ComfyUI
side that reads them in its own interpreter (:mod:`.reader`)."""
