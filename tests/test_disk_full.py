"""A disk that fills while saving (a pruned folder, a training checkpoint): one line naming the folder, the space free
there and the space needed, exit 2, and no partial output left behind (simulated with ENOSPC)."""

import errno
import os
import re
from pathlib import Path

import pytest

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.errors import LayerPruneError


def _fill_disk_after(monkeypatch, module, name: str, bytes_written: int = 1000):
    """Make ``module.name`` (a function saving to a path given as its second argument) write a part, then fail as a
    full disk does."""

    def full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * bytes_written)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(module, name, full)


def test_prune_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    _fill_disk_after(monkeypatch, safetensors.torch, "save_file")
    out = tmp_path / "out" / "pruned"
    capsys.readouterr()
    assert cli(["prune", "--model", str(tiny_pipeline_dir), "--drop", "1", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"layerprune prune: error: the disk holding {out.parent} is full (")
    assert re.search(
        r"free; the save needs more than the [\d.]+ KB written before it filled\); the partial output was "
        "removed: free space there",
        err,
    ), err
    assert not out.exists() and os.listdir(out.parent) == []  # no temporary folder either


def test_safetensors_own_error_for_a_full_disk_is_recognised():
    from safetensors import SafetensorError

    from diffusers_layerprune.outputs import is_disk_full

    rust = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })')
    assert is_disk_full(rust) and is_disk_full(OSError(errno.EDQUOT, "quota"))
    assert not is_disk_full(OSError(errno.EACCES, "denied")) and not is_disk_full(ValueError("x"))


class _Accelerator:
    """What save_checkpoint uses of accelerate's Accelerator; save_state fills the disk part-way through."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 5000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "optimizer.bin"))


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_half_checkpoint(tmp_path):
    from diffusers_layerprune.train_distill import save_checkpoint

    earlier = tmp_path / "checkpoint-2"
    earlier.mkdir()
    (earlier / "model.safetensors").write_bytes(b"\0" * 12000)  # the next checkpoint needs as much
    with pytest.raises(LayerPruneError) as caught:
        save_checkpoint(_Accelerator(), tmp_path, 4, identity={}, limit=None)
    message = str(caught.value)
    assert message.startswith(f"the disk holding {tmp_path} is full (") and "needs about 12.0 KB" in message, message
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]  # the earlier checkpoint kept, no half-written one


def test_training_on_a_full_disk_prints_one_line(capsys, monkeypatch):
    """The training script's entry point turns the refusal into one line and exit 2."""
    from diffusers_layerprune import train_distill
    from diffusers_layerprune.outputs import disk_full_error

    def main(argv=None):
        raise disk_full_error("/somewhere", written=10)

    monkeypatch.setattr(train_distill, "main", main)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        train_distill.cli([])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("train_distill: error: the disk holding /somewhere is full")
