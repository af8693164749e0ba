"""files.py: atomic writes, names from outside that must stay inside their folder, and a run folder's lock."""

import os

import pytest

from job.errors import BadInput
from job.files import LOCK, hold, inside, new_folder, unmake, write_atomic, write_json


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    write_json(path, {"status": "running"})
    real_replace = os.replace

    def killed(*args):
        raise KeyboardInterrupt  # the process stops between writing and renaming

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, '{"status": "do')
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_text() == '{\n  "status": "running"\n}\n'  # the old file, whole
    assert os.listdir(tmp_path) == ["run.json"]


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "", "a\\..\\x", "a\x00b"])
def test_a_name_that_would_leave_its_folder_is_refused(tmp_path, name):
    with pytest.raises(BadInput, match="would leave"):
        inside(tmp_path, name)


def test_a_plain_relative_name_stays_inside(tmp_path):
    assert inside(tmp_path, "class_0/img.png") == tmp_path / "class_0" / "img.png"


def test_a_held_folder_keeps_its_lock_only_when_something_was_written(tmp_path):
    with hold(tmp_path / "a" / "run", "output"):
        pass
    assert not (tmp_path / "a").exists()  # made for the block, and nothing written: gone
    (tmp_path / "kept").mkdir()
    with hold(tmp_path / "kept", "output"):
        pass
    assert os.listdir(tmp_path / "kept") == []  # the user's folder stays, without the lock file
    with hold(tmp_path / "run", "output"):
        (tmp_path / "run" / "run.json").write_text("{}")
    assert sorted(os.listdir(tmp_path / "run")) == [LOCK, "run.json"]


def test_a_lock_won_on_a_lock_file_its_holder_removed_is_refused(tmp_path, monkeypatch):
    """A second job opened the lock file, then the first ended and removed it: the flock the second then wins is on
    a file no third job would see, so it is refused rather than taken as holding the folder."""
    real_open = os.open

    def opened_then_removed(path, *args):
        fd = real_open(path, *args)
        os.unlink(path)
        return fd

    monkeypatch.setattr(os, "open", opened_then_removed)
    with pytest.raises(BadInput, match="output was being written by another job a moment ago: run again"):
        with hold(tmp_path / "run", "output"):
            pass


def test_a_new_folder_is_never_one_another_process_took(tmp_path):
    first, second = new_folder(tmp_path / "runs" / "train-1"), new_folder(tmp_path / "runs" / "train-1")
    assert first == [tmp_path / "runs" / "train-1", tmp_path / "runs"] and second == [tmp_path / "runs" / "train-1-2"]
    (second[0] / "run.json").write_text("{}")
    unmake(second)
    unmake(first)
    assert os.listdir(tmp_path / "runs") == ["train-1-2"]  # only the empty folders go
