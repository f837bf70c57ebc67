"""benchmarks/gpu_check.py: the GPU check's smoke run (the same code paths, tiny models, CPU), resuming after a
cut-off, and the docs' GPU sections rebuilt from its JSON."""

import importlib.util
import json
import shutil

import pytest
import torch

from helpers import ROOT, load_benchmark

SECTION_FILES = ["a_pixart", "b_families", "c_kd", "d_sparsity", "e_stacking"]


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


@pytest.fixture(scope="module")
def smoke(gpu_check, tmp_path_factory):
    """One smoke run of every section, shared by the module: treat its folder as read-only."""
    output = tmp_path_factory.mktemp("gpu") / "results"
    records = gpu_check.main(["--output", str(output), "--smoke"])
    return output, records


@pytest.mark.slow  # reads the benchmark script's smoke run (an end-to-end run, ~16 s)
def test_smoke_run_writes_every_section_with_the_machine_and_the_fallbacks_it_used(smoke):
    output, records = smoke
    assert sorted(records) == SECTION_FILES
    for name in SECTION_FILES:
        record = json.loads((output / f"{name}.json").read_text())
        assert record["smoke"] is True and record["section"] == name
        env = record["environment"]
        assert env["card"] == "cpu" and env["torch"] == torch.__version__
        assert {"driver", "diffusers", "cuda"} <= set(env) and env["diffusers"]
        assert "no CUDA events" in record["timer"]  # the CPU fallback is said, not hidden
    assert not list(output.glob("*.partial.json")) and not list(output.glob("*.error.json"))
    merged = json.loads((output.parent / "gpu_cpu-smoke.json").read_text())
    assert sorted(merged["sections"]) == SECTION_FILES


@pytest.mark.slow  # reads the benchmark script's smoke run (an end-to-end run, ~16 s)
def test_depth_sections_time_the_full_and_both_pruned_depths_of_every_family(smoke):
    _, records = smoke
    a = records["a_pixart"]["result"]
    families = records["b_families"]["result"]["families"]
    from diffusers_layerprune.families import DEFAULT_FAMILY, FAMILIES

    assert sorted(families) == sorted(n for n in FAMILIES if n != DEFAULT_FAMILY)  # section a: the first family
    for result in [a, *families.values()]:
        rows = {row["variant"]: row for row in result["rows"]}
        assert [rows[v]["blocks"] for v in ("full", "pruned 25%", "pruned 40%")] == [12, 9, 7]
        assert rows["pruned 40%"]["ideal_speedup"] == pytest.approx(12 / 7)
        assert all(row["median_ms"] > 0 and row["speedup"] > 0 for row in rows.values())
        # a pruned model holds fewer weights; CPU smoke runs have no allocator peak and say so with None
        assert rows["pruned 40%"]["weights_bytes"] < rows["full"]["weights_bytes"]
        assert rows["full"]["peak_bytes"] is None
    assert families["flux"]["batch"] == 1 and a["batch"] == 2  # Flux.1-dev's guidance is an input: one forward


@pytest.mark.slow  # reads the benchmark script's smoke run (an end-to-end run, ~16 s)
def test_kd_section_times_the_kd_step_against_its_floor(smoke):
    _, records = smoke
    result = records["c_kd"]["result"]
    (attempt,) = result["attempts"]  # fits without gradient checkpointing
    assert attempt["gradient_checkpointing"] is False and attempt["kd_over_floor"] > 0
    assert len(result["kept_layers"]) == 9 and attempt["trainable_parameters"] > 0


@pytest.mark.slow  # reads the benchmark script's smoke run (an end-to-end run, ~16 s)
def test_sparsity_section_masks_2_4_and_says_the_kernels_were_replaced(smoke):
    _, records = smoke
    result = records["d_sparsity"]["result"]
    for part in (result["text_encoder"], result["transformer"]):
        assert part["layers_masked"] > 0 and 0 < part["masked_relative_error"] < 1
        assert "CPU smoke run" in part["kernel"] and "packed" not in part


def test_mask_two_four_leaves_two_of_every_four_weights(gpu_check):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 4))
    assert gpu_check.mask_two_four(model, "text_encoder") == 2
    for layer in model:
        groups = layer.weight.reshape(layer.weight.shape[0], -1, 4)
        assert ((groups != 0).sum(-1) == 2).all()


@pytest.mark.slow  # reads the benchmark script's smoke run (an end-to-end run, ~16 s)
def test_stacking_section_runs_every_depth_cache_and_weight_combination(smoke):
    _, records = smoke
    families = records["e_stacking"]["result"]["families"]
    has_torchao = importlib.util.find_spec("torchao") is not None
    for name in ("flux", "pixart"):
        rows = families[name]["rows"]
        assert len(rows) == 12 and rows[0]["speedup"] == pytest.approx(1.0)
        for row in rows:
            if row["weights"].startswith("int8") and not has_torchao:
                assert row["skipped"].startswith("torchao not installed")
                continue
            assert row["loop_ms"] > 0 and row["steps"] == 4
            if row["cache"] == "none":
                assert row["hooked_modules"] == 0 and row["last_block_computed"] == 4
            else:
                assert row["hooked_modules"] == row["blocks"]  # every block of the depth carries the cache
        taylor = [row for row in rows if row["cache"] == "taylorseer" and "skipped" not in row]
        assert all(row["last_block_computed"] == 3 for row in taylor)  # steps 0-2 computed, step 3 predicted


def test_a_cache_is_removed_after_its_loop(gpu_check):
    from diffusers_layerprune.families import get_family
    from diffusers_layerprune.testing import build_tiny_transformer

    model = build_tiny_transformer(4).eval()
    family = get_family("pixart")
    inputs = gpu_check.latency_inputs(model, resolution=8, vae_scale_factor=1, text_tokens=5, batch_size=2)
    with torch.no_grad():
        before = family.forward(model, *inputs)
        gpu_check.apply_cache(model, "first_block", family)
        gpu_check.remove_hooks(model)
        after = family.forward(model, *inputs)  # without a cache context: would raise if a cache hook were left
    assert torch.equal(before, after)


@pytest.mark.slow  # reads the benchmark script's smoke run (an end-to-end run, ~16 s)
def test_rerun_skips_finished_sections_and_reuses_measurements_of_a_cut_off_one(gpu_check, smoke, tmp_path):
    output = tmp_path / "results"
    shutil.copytree(smoke[0], output)
    finished = (output / "a_pixart.json").read_bytes()
    # section d was cut off after its text encoder: its JSON is missing, its partial file holds that measurement
    (output / "d_sparsity.json").unlink()
    identity = {"card": "cpu", "smoke": True, "schema": gpu_check.SCHEMA}
    saved = {"dense": {"median_ms": 1.0}, "masked_dense": {"median_ms": 1.0}, "masked_relative_error": 0.5,
             "layers_masked": 7, "kernel": "masked dense matmul (CPU smoke run)", "speedup": 1.0}  # fmt: skip
    (output / "d_sparsity.partial.json").write_text(json.dumps({"identity": identity, "done": {"text_encoder": saved}}))
    records = gpu_check.main(["--output", str(output), "--smoke", "--sections", "a,sparsity"])
    assert (output / "a_pixart.json").read_bytes() == finished  # not redone
    d = records["d_sparsity"]
    assert d["reused_measurements"] == 1 and d["result"]["text_encoder"] == saved
    assert d["result"]["transformer"]["layers_masked"] > 0  # the rest was measured
    assert not (output / "d_sparsity.partial.json").exists()


def test_a_failing_section_leaves_an_error_file_and_the_next_sections_run(gpu_check, tmp_path):
    def broken(settings, progress):
        raise RuntimeError("kernel refused")

    def fine(settings, progress):
        return {"value": 1}

    sections = [gpu_check.Section("a", "pixart", "broken", 1, broken), gpu_check.Section("c", "kd", "fine", 1, fine)]
    records = gpu_check.run_sections(sections, gpu_check.SMOKE, tmp_path, force=False)
    assert list(records) == ["c_kd"] and records["c_kd"]["result"] == {"value": 1}
    error = json.loads((tmp_path / "a_pixart.error.json").read_text())
    assert "kernel refused" in error["error"] and not (tmp_path / "a_pixart.json").exists()


@pytest.mark.slow  # reads the benchmark script's smoke run (an end-to-end run, ~16 s)
def test_results_of_another_card_are_not_mixed_in(gpu_check, smoke, tmp_path):
    output = tmp_path / "results"
    shutil.copytree(smoke[0], output)
    record = json.loads((output / "a_pixart.json").read_text())
    record["environment"]["card"], record["smoke"] = "NVIDIA H100 80GB HBM3", False
    (output / "a_pixart.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="NVIDIA H100 80GB HBM3"):
        gpu_check.main(["--output", str(output), "--smoke", "--sections", "c"])


def test_unknown_section_is_refused_with_the_choices(gpu_check):
    with pytest.raises(SystemExit, match="a \\(pixart\\)"):
        gpu_check.select_sections("a,z")
    assert [s.letter for s in gpu_check.select_sections("stacking,a")] == ["a", "e"]  # run in order


@pytest.mark.slow  # reads the benchmark script's smoke run (an end-to-end run, ~16 s)
def test_report_only_rebuilds_the_gpu_sections_and_nothing_else(gpu_check, smoke, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for page in ("scale.md", "families.md", "gpu.md"):
        shutil.copy(ROOT / "docs" / page, docs / page)
    gpu_check.main(["--output", str(smoke[0]), "--report-only", "--docs", str(docs)])
    start, end = gpu_check.START, gpu_check.END
    for page in ("scale.md", "families.md", "gpu.md"):
        old, new = (ROOT / "docs" / page).read_text(), (docs / page).read_text()
        assert old.split(start)[0] == new.split(start)[0] and old.split(end)[1] == new.split(end)[1]
        assert "SMOKE RUN" in new.split(start)[1] and "Not measured yet" not in new.split(start)[1]
    assert "| tiny-random-pixart | pruned 40% | 7 |" in (docs / "scale.md").read_text()
    assert "| tiny-random-flux | pruned 25% | 9 |" in (docs / "families.md").read_text()
    stacking = (docs / "stacking.md").read_text()  # created with its section when missing
    assert stacking.startswith("# ") and "| tiny-random-flux | 25% pruned | 9 |" in stacking
    assert "| e stacking | Depth x cache x int8" in (docs / "gpu.md").read_text()


@pytest.mark.slow  # reads the benchmark script's smoke run (an end-to-end run, ~16 s)
def test_report_only_refuses_smoke_results_for_the_repository_docs(gpu_check, smoke):
    pages = {p: p.read_bytes() for p in (ROOT / "docs").glob("*.md")}
    with pytest.raises(SystemExit, match="smoke results"):
        gpu_check.main(["--output", str(smoke[0]), "--report-only"])
    assert {p: p.read_bytes() for p in (ROOT / "docs").glob("*.md")} == pages


def test_report_without_results_says_not_measured(gpu_check, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "docs" / "scale.md", docs / "scale.md")
    shutil.copy(ROOT / "docs" / "families.md", docs / "families.md")
    shutil.copy(ROOT / "docs" / "gpu.md", docs / "gpu.md")
    gpu_check.report(tmp_path / "nothing", docs)
    assert (docs / "scale.md").read_text().count("Not measured yet") == 3
    assert "Not measured yet" in (docs / "stacking.md").read_text()


def test_rehearsal_page_rebuild_keeps_the_gpu_section(tmp_path):
    rehearse = load_benchmark("rehearse_full_size")
    page = tmp_path / "scale.md"
    shutil.copy(ROOT / "docs" / "scale.md", page)
    section = rehearse.generated_section(page, rehearse.GPU_START, rehearse.GPU_END)
    assert section.startswith(rehearse.GPU_START) and section.endswith(rehearse.GPU_END)
    result = json.loads((ROOT / "benchmarks" / "results" / "rehearse_full_size.json").read_text())
    result["projection"] = rehearse.project(result["flops"])
    result["json_name"] = "benchmarks/results/rehearse_full_size.json"
    rehearse.write_doc(result, page)
    text = page.read_text()
    assert text.startswith("# Real scale") and text.count(section) == 1 and text.endswith(rehearse.GPU_END + "\n")


def test_time_limit_stops_before_new_work_and_keeps_what_is_finished(gpu_check, tmp_path):
    import time

    def slow(settings, progress):
        progress.put("first", {"value": 1})
        time.sleep(0.6)  # past the limit: the next measurement is not started
        progress.check_time()
        progress.put("second", {"value": 2})
        return {}

    def never(settings, progress):
        raise AssertionError("a section started after the time limit")

    sections = [gpu_check.Section("b", "families", "slow", 1, slow), gpu_check.Section("c", "kd", "never", 1, never)]
    records = gpu_check.run_sections(sections, gpu_check.SMOKE, tmp_path, force=False, time_limit=0.5)
    assert records == {}
    saved = json.loads((tmp_path / "b_families.partial.json").read_text())["done"]
    assert saved == {"first": {"value": 1}}  # kept for the rerun
    assert not list(tmp_path.glob("*.error.json")) and not (tmp_path / "b_families.json").exists()
