"""Running the sections: which to run, the folder's card check, each section's file (or error file) and the
merged JSON, resuming what a cut-off run left."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from .common import SCHEMA, OutOfTime, Progress, Settings, environment, read_json, release, timer_name, write_json
from .depth import section_families, section_pixart
from .kd import section_kd
from .sparsity import section_sparsity
from .stacking import section_stacking


@dataclass(frozen=True)
class Section:
    letter: str
    name: str
    title: str
    expected_seconds: int  # on one H100, estimated from FLOP counts (docstring); the JSON records the measured time
    run: Callable[[Settings, Progress], dict]

    @property
    def file(self) -> str:
        return f"{self.letter}_{self.name}"


SECTIONS = (
    Section("a", "pixart", "PixArt-Sigma-XL: depth-pruned latency and peak memory", 20, section_pixart),
    Section(
        "b", "families", "Every family at its published config: depth-pruned latency and memory", 70, section_families
    ),  # fmt: skip
    Section("c", "kd", "One KD step at full size against its floor", 40, section_kd),
    Section("d", "sparsity", "2:4 semi-structured sparsity: T5-XXL encoder and transformer", 45, section_sparsity),
    Section("e", "stacking", "Depth x cache x int8: denoising-loop latency", 110, section_stacking),
)


def select_sections(text: str | None) -> list[Section]:
    if not text:
        return list(SECTIONS)
    by_key = {s.letter: s for s in SECTIONS} | {s.name: s for s in SECTIONS}
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [w for w in wanted if w not in by_key]
    if unknown:
        names = ", ".join(f"{s.letter} ({s.name})" for s in SECTIONS)
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}: choose from {names}")
    chosen = {by_key[w].letter for w in wanted}
    return [s for s in SECTIONS if s.letter in chosen]


def check_folder(output: Path, env: dict, smoke: bool) -> None:
    """Refuse to mix results of another card or of a smoke run into ``output`` (``--force`` redoes them)."""
    for section in SECTIONS:
        path = output / f"{section.file}.json"
        record = read_json(path) or {}
        if "environment" not in record:
            continue
        if record.get("smoke") != smoke or record["environment"].get("card") != env["card"]:
            theirs = "a smoke run" if record.get("smoke") else record["environment"].get("card")
            raise SystemExit(
                f"{output} holds results of {theirs} ({path.name}); use another --output, or --force to redo them"
            )


def run_sections(
    sections: list[Section], settings: Settings, output: Path, force: bool, time_limit: float | None = None
) -> dict[str, dict]:
    """Run ``sections`` in order into ``output``; after ``time_limit`` seconds no new section or measurement starts
    (finished ones are saved; a rerun measures the rest)."""
    deadline = None if not time_limit else time.perf_counter() + time_limit
    env = environment(settings)
    print(
        f"{env['card']} (driver {env['driver']}, CUDA {env['cuda']}), torch {env['torch']}, diffusers "
        f"{env['diffusers']}, torchao {env['torchao'] or 'not installed: int8 rows will say skipped'}",
        flush=True,
    )
    if not force:
        check_folder(output, env, settings.smoke)
    output.mkdir(parents=True, exist_ok=True)
    identity = {"card": env["card"], "smoke": settings.smoke, "schema": SCHEMA}
    records = {}
    for section in sections:
        path = output / f"{section.file}.json"
        error_path = output / f"{section.file}.error.json"
        partial = output / f"{section.file}.partial.json"
        if path.is_file() and not force:
            print(f"[{section.letter}] {section.title}: done already ({path}); --force redoes it", flush=True)
            records[section.file] = read_json(path)
            continue
        if force:
            partial.unlink(missing_ok=True)
        if deadline is not None and time.perf_counter() > deadline:
            left = ", ".join(s.letter for s in sections[sections.index(section) :])
            print(f"time limit of {time_limit:.0f} s reached: sections {left} left for a rerun", flush=True)
            break
        print(f"[{section.letter}] {section.title} (about {section.expected_seconds} s on an H100) ...", flush=True)
        progress = Progress(partial, identity, deadline)
        started = time.perf_counter()
        try:
            result = section.run(settings, progress)
        except OutOfTime:
            release()
            print(
                f"[{section.letter}] time limit of {time_limit:.0f} s reached: {len(progress.done)} measurements "
                f"saved in {partial.name}; rerun the same command to finish",
                flush=True,
            )
            break
        except Exception as error:  # the next sections still run; the rerun retries this one
            release()
            write_json(
                error_path,
                {
                    "section": section.file,
                    "environment": env,
                    "error": repr(error),
                    "traceback": traceback.format_exc(),
                },
            )
            print(f"[{section.letter}] FAILED: {error!r} (details in {error_path})", flush=True)
            continue
        seconds = time.perf_counter() - started
        record = {
            "schema": SCHEMA,
            "section": section.file,
            "title": section.title,
            "smoke": settings.smoke,
            "environment": env,
            "settings": asdict(settings),
            "timer": timer_name(settings),
            "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": seconds,
            "expected_seconds": section.expected_seconds,
            "reused_measurements": progress.reused,
            "result": result,
        }
        write_json(path, record)
        error_path.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
        records[section.file] = record
        print(f"[{section.letter}] done in {seconds:.0f} s -> {path}", flush=True)
    return records


def merge(output: Path, merged: Path | None) -> Path | None:
    """Every finished section of ``output`` in one file, ``gpu_<card>.json`` beside the folder by default."""
    records = load_records(output)
    if not records:
        return None
    env = next(iter(records.values()))["environment"]
    path = merged or output.parent / f"gpu_{env['card_slug']}.json"
    write_json(path, {"schema": SCHEMA, "environment": env, "sections": records})
    return path


def load_records(output: Path) -> dict[str, dict]:
    records = {}
    for section in SECTIONS:
        record = read_json(output / f"{section.file}.json")
        if record is not None:
            records[section.file] = record
    return records
