"""The built-in data set, materialised from Debian's Fashion-MNIST files into the cache (job/builtin.py)."""

import pytest

from job import builtin
from job.errors import JobError


def test_a_damaged_built_in_data_set_is_said_in_one_line_and_written_again(tmp_path, capsys):
    root = builtin.materialise("fashion-mnist", tmp_path, 3, 2)
    written = {f.relative_to(root): f.read_bytes() for f in root.rglob("*.png")}
    assert len(written) == 50 and (root / builtin.SIZES).is_file()
    assert builtin.materialise("fashion-mnist", tmp_path, 3, 2) == root and not capsys.readouterr().err  # as it is
    cut, gone = sorted(written)[:2]
    (root / cut).write_bytes(written[cut][:40])
    (root / gone).unlink()
    assert builtin.materialise("fashion-mnist", tmp_path, 3, 2) == root
    assert capsys.readouterr().err == f"the built-in data set in {root} is damaged (1 missing, 1 cut short or changed): " \
                                      "writing it again\n"
    assert {f.relative_to(root): f.read_bytes() for f in root.rglob("*.png")} == written
    assert [p.name for p in tmp_path.joinpath("datasets").iterdir()] == [root.name]  # the damaged copy is gone


def test_a_built_in_data_set_whose_sizes_cannot_be_read_is_written_again(tmp_path, capsys):
    root = builtin.materialise("fashion-mnist", tmp_path, 1, 1)
    (root / builtin.SIZES).write_text("[]")
    builtin.materialise("fashion-mnist", tmp_path, 1, 1)
    assert capsys.readouterr().err.endswith(f"is damaged ({builtin.SIZES} cannot be read): writing it again\n")
    assert builtin._damage(root) == ""


def test_a_full_disk_while_writing_the_built_in_data_set_names_the_folder_and_leaves_nothing(tmpfs):
    with pytest.raises(JobError) as e:  # 1,500 files of ~4 kB on a 1 MiB disk; PIL's failing write names no file
        builtin.materialise("fashion-mnist", tmpfs, 100, 50)
    assert str(e.value).startswith(f"no space left in {tmpfs / 'datasets'} to write the built-in data set fashion-mnist")
    assert "set JOB_CACHE" in str(e.value)
    assert list((tmpfs / "datasets").iterdir()) == []  # no half-written copy, which a later run would take as finished
