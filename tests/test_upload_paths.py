"""No absolute path of the user's machine goes up with `layerprune push` (issue 27, point 1).

Every file that would be uploaded is searched (JSON: every key and value, nested; text; the metadata of binary
files). A path in JSON or text is rewritten to its public name in what is sent (the folder keeps its own files); a log
or image holding one is left out; a weights or tokenizer file holding one refuses the push. `--dry-run` lists exactly
what a real push sends. The Hub is never reached: `HfApi` is replaced and the files it receives are checked.
"""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.provenance import binary_strings, find_machine_paths

# Paths of other machines (not only this one): home folders one part deep, Windows, temporary and work folders.
LEAKS = {
    "root": "/root/models/PixArt-Sigma/transformer",
    "home": "/home/alice/data/prompts.txt",
    "mac": "/Users/bob/runs/pruned",
    "windows": "C:\\Users\\carol\\datasets\\captions.csv",
    "tmp": "/tmp/pytest-of-dave/run1/out",
    "work": "/work/team/teacher",
    "tilde": "~/secrets/notes",
    "file_url": "file:///home/erin/a.txt",
}


class FakeApi:
    commits: list = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        pass

    def upload_folder(self, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        folder = Path(kwargs["folder_path"])
        files = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
        kept = filter_repo_objects(files, ignore_patterns=kwargs["ignore_patterns"])
        FakeApi.commits.append({rel: (folder / rel).read_bytes() for rel in kept})
        return type("Info", (), {"commit_url": "https://huggingface.co/me/x/commit/1"})()

    def create_commit(self, repo_id, operations, **kwargs):
        sent = {}
        for op in operations:
            source = op.path_or_fileobj
            sent[op.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
        FakeApi.commits.append(sent)
        return type("Info", (), {"commit_url": "https://huggingface.co/me/x/commit/2"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.commits = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token_not_real")
    return FakeApi.commits


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("upload")
    from diffusers_layerprune.testing import save_tiny_pixart_pipeline

    save_tiny_pixart_pipeline(root / "teacher", num_layers=4)
    assert cli(["prune", "--model", str(root / "teacher"), "--drop", "1", "--output", str(root / "pruned")]) == 0
    return root / "pruned"


def leaky_copy(pruned: Path, tmp_path: Path) -> Path:
    """The pruned folder with local paths in a config (`_name_or_path`), a nested record, a note and a log."""
    folder = tmp_path / "leaky"
    shutil.copytree(pruned, folder)
    config = folder / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "_name_or_path": LEAKS["root"]}, indent=2))
    record = {
        "runs": [{"data": LEAKS["home"], "args": ["--out", LEAKS["mac"]]}],
        LEAKS["tmp"]: {"note": f"copied from {LEAKS['windows']}"},
        "url": "https://huggingface.co/org/name",
        "ratio": "1/2",
    }
    (folder / "record.json").write_text(json.dumps(record))
    (folder / "NOTES.md").write_text(f"Trained in {LEAKS['work']}, see {LEAKS['tilde']} and {LEAKS['file_url']}.\n")
    (folder / "logs").mkdir()
    (folder / "logs" / "events.out.tfevents.1.host").write_bytes(b"\x00\x01hparams\x00" + LEAKS["tmp"].encode())
    return folder


def assert_no_machine_path(sent: dict[str, bytes]) -> None:
    for rel, data in sent.items():
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = binary_strings(data, Path(rel).suffix)
        assert find_machine_paths(text) == [], rel
        for leak in LEAKS.values():
            assert leak not in text and json.dumps(leak)[1:-1] not in text, (rel, leak)


def test_push_rewrites_every_local_path_and_leaves_out_what_it_cannot(pruned, tmp_path, fake_hub, capsys):
    folder = leaky_copy(pruned, tmp_path)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert cli(["push", str(folder), "--repo-id", "me/x", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert cli(["push", str(folder), "--repo-id", "me/x"]) == 0
    out = capsys.readouterr().out
    (sent,) = fake_hub
    assert_no_machine_path(sent)
    # rewritten to public names, everything else kept
    config = json.loads(sent["transformer/config.json"])
    assert config == {**json.loads((folder / "transformer/config.json").read_text()), "_name_or_path": "PixArt-Sigma"}
    record = json.loads(sent["record.json"])
    assert record["runs"] == [{"data": "prompts.txt", "args": ["--out", "pruned"]}]
    assert record["out"] == {"note": "copied from captions.csv"}
    assert record["url"] == "https://huggingface.co/org/name" and record["ratio"] == "1/2"
    assert sent["NOTES.md"].decode() == "Trained in teacher, see notes and a.txt.\n"
    # the log cannot be rewritten: left out, and the user is told
    assert "logs/events.out.tfevents.1.host" not in sent
    assert "left out logs/events.out.tfevents.1.host" in out and LEAKS["tmp"] in out
    assert "transformer/config.json" in out and f"{LEAKS['root']} -> PixArt-Sigma" in out
    # the dry run listed exactly what went up
    listed = {line.split()[1] for line in dry.splitlines() if line.startswith("  ")}
    assert listed == set(sent)
    assert dry.split("to me/x:")[1] == out.split("to me/x:")[1].split("commit:")[0]
    # the folder's own files are unchanged (only the card was written)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert {p for p in after if after[p] != before.get(p)} == {folder / "README.md"}
    # the weights went up as they are
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert sent[weights] == (folder / weights).read_bytes()


def test_push_names_the_source_hub_id_with_base_model(pruned, tmp_path, fake_hub):
    folder = leaky_copy(pruned, tmp_path)
    vae = folder / "vae" / "config.json"
    vae.write_text(json.dumps({**json.loads(vae.read_text()), "_name_or_path": str(pruned.parent / "teacher/vae")}))
    base = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    assert cli(["push", str(folder), "--repo-id", "me/x", "--base-model", base]) == 0
    (sent,) = fake_hub
    assert json.loads(sent["vae/config.json"])["_name_or_path"] == base  # the local source folder, by its Hub id
    assert json.loads(sent["transformer/config.json"])["_name_or_path"] == "PixArt-Sigma"  # another folder: its name
    assert_no_machine_path(sent)


def test_push_transformer_only_sends_rewritten_files_at_the_top(pruned, tmp_path, fake_hub):
    folder = leaky_copy(pruned, tmp_path)
    assert cli(["push", str(folder), "--repo-id", "me/x", "--transformer-only"]) == 0
    (sent,) = fake_hub
    assert json.loads(sent["config.json"])["_name_or_path"] == "PixArt-Sigma"
    assert "vae/config.json" not in sent
    assert_no_machine_path(sent)


@pytest.mark.parametrize("where", ["weights", "tokenizer"])
def test_push_refuses_a_weights_or_tokenizer_file_holding_a_local_path(pruned, tmp_path, fake_hub, capsys, where):
    folder = tmp_path / "leaky"
    shutil.copytree(pruned, folder)
    if where == "weights":
        path = folder / "transformer" / "diffusion_pytorch_model.safetensors"
        save_file(load_file(path), path, metadata={"source": LEAKS["home"]})
    else:
        path = folder / "tokenizer" / "spiece.model"
        path.write_bytes(b"\x0a\x05piece\x12" + LEAKS["root"].encode() + b"\x00" * 2**20)
    capsys.readouterr()
    assert cli(["push", str(folder), "--repo-id", "me/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and path.name in err and "local path" in err and "nothing was uploaded" in err
    assert fake_hub == [] and not (folder / "README.md").exists()


@pytest.mark.parametrize(
    "text, found",
    [
        ("/root/models/teacher", ["/root/models/teacher"]),  # a root user's home: one part deep
        ("/home/alice", ["/home/alice"]),
        ("/Users/bob/x.png", ["/Users/bob/x.png"]),
        ("C:\\Users\\carol\\data", ["C:\\Users\\carol\\data"]),
        ("C:/Users/carol/data", ["C:/Users/carol/data"]),
        ("\\\\server\\share\\x", ["\\\\server\\share\\x"]),
        ("saved in /tmp/run1/out.", ["/tmp/run1/out"]),
        ("(/work/team/teacher)", ["/work/team/teacher"]),
        ("~/runs/pruned", ["~/runs/pruned"]),
        ("file:///home/erin/a.txt", ["file:///home/erin/a.txt"]),
        ("/usr/lib/python3", ["/usr/lib/python3"]),  # an existing top-level folder of this machine
        ("https://huggingface.co/org/name", []),
        ("org/name", []),
        ("1/2 of the blocks, 3 it/s", []),
        ("</td></s>", []),
        ("/nonexistent-top/x", []),
    ],
)
def test_machine_paths_are_found_and_urls_are_not(text, found):
    assert find_machine_paths(text) == found


def test_binary_weight_files_are_checked_by_their_metadata_only(tmp_path):
    """Quantized or raw weight bytes can spell a path by chance: a GGUF file is read by its metadata and a
    safetensors file by its header, so only a path stored there refuses the push."""
    import gguf
    import numpy as np
    import torch

    from diffusers_layerprune.provenance import clean_upload_file

    spelled = np.frombuffer(b"\x01/usr/lib/not/a/path\x02" + b"\0" * 11, dtype=np.uint8).copy()  # 32 weight bytes

    def write_gguf(path, metadata):
        writer = gguf.GGUFWriter(str(path), arch="flux")
        for key, value in metadata.items():
            writer.add_string(key, value)
        writer.add_tensor("weights", spelled.view(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    write_gguf(tmp_path / "clean.gguf", {"general.name": "pruned"})
    write_gguf(tmp_path / "leaky.gguf", {"general.source.url": "/root/models/teacher"})
    save_file({"w": torch.from_numpy(spelled)}, tmp_path / "clean.safetensors")
    save_file({"w": torch.from_numpy(spelled)}, tmp_path / "leaky.safetensors", metadata={"src": "/root/models/t"})
    for name in ("clean.gguf", "clean.safetensors"):
        assert b"/usr/lib/not/a/path" in (tmp_path / name).read_bytes()
        assert clean_upload_file(tmp_path / name, name, frozenset(), {}) == ("as is", None, [])
    for name, path in (("leaky.gguf", "/root/models/teacher"), ("leaky.safetensors", "/root/models/t")):
        assert clean_upload_file(tmp_path / name, name, frozenset(), {}) == ("refused", None, [(path, "")])
