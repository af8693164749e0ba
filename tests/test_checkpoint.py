import os
import signal

import pytest
import torch

from job import checkpoint, signals
from job.errors import BadInput


def state(epoch: int, **extra) -> dict:
    """A checkpoint's shape, with small values."""
    return {"format": "job-checkpoint/1", "model": {"w": torch.ones(1000)}, "optimizer": {}, "scheduler": {},
            "scaler": {}, "epoch": epoch, "best_epoch": epoch, "best_model": None, "history": [],
            "config": {}, "classes": ["a", "b"], "preprocessing": {}, "data_fingerprint": "f", **extra}


def test_a_signal_during_save_waits_for_the_file_to_be_complete(tmp_path, default_sigint):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(state(1), path)
    with pytest.raises(KeyboardInterrupt):
        with signals.critical():
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-write
            checkpoint.save(state(2), path)
    assert checkpoint.load(path)["epoch"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_save_leaves_no_temporary_files_and_load_refuses_foreign_or_damaged_files(tmp_path):
    checkpoint.save(state(3), tmp_path / "checkpoint.pt")
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    assert checkpoint.load(tmp_path)["epoch"] == 3
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(BadInput, match="not a job checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(BadInput, match="cannot be read"):
        checkpoint.load(tmp_path / "junk.pt")
    checkpoint.save(state(3) | {"epoch": "three"}, tmp_path / "edited.pt")
    with pytest.raises(BadInput, match="'epoch' is missing or of the wrong type"):
        checkpoint.load(tmp_path / "edited.pt")
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])  # truncated: a copy cut short
    with pytest.raises(BadInput, match="cannot be read"):
        checkpoint.load(tmp_path / "cut.pt")
