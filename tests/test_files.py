"""files.py: atomic writes and names from outside that must stay inside their folder."""

import os

import pytest

from job.errors import BadInput
from job.files import inside, write_atomic, write_json


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
