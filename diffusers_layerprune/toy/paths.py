"""Where the shipped toy artifacts live inside the installed package."""

from __future__ import annotations

from pathlib import Path


def assets_dir() -> Path:
    return Path(__file__).parent / "assets"
