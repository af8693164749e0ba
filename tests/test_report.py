"""report.py: tables, history files and plots."""

import csv
import json

from job import report


def test_table_aligns_numbers_right_and_text_left():
    text = report.table([["a", 1.5, 3], ["bbb", 0.25, 10]], ["name", "x", "n"])
    assert text.splitlines() == ["name       x   n", "----  ------  --", "a     1.5000   3", "bbb   0.2500  10"]


def test_a_name_with_a_newline_or_a_tab_stays_on_its_row():
    """File and class names come from the user's data set: a newline in one escaped, the table a row a line."""
    text = report.table([["x\ny.png", "cl\tass 0.5"], ["é.png", "b 0.5"]], ["file", "top-1"])
    assert text.splitlines() == ["file      top-1", "--------  -----------", "x\\ny.png  cl\\tass 0.5",
                                 "é.png     b 0.5"]


def test_history_and_trials_are_written_as_json_and_csv_with_the_searched_columns(tmp_path):
    history = [{"epoch": 1, "train_loss": 1.0, "val_acc": 0.5}]
    report.write_history(tmp_path, history)
    assert json.loads((tmp_path / "history.json").read_text()) == history
    assert (tmp_path / "history.csv").read_text().splitlines()[0] == "epoch,train_loss,val_acc"
    trials = [{"number": 1, "trial_id": "a", "optimizer": "sgd", "epochs": 1, "val_acc": 0.5, "best_epoch": 1,
               "status": "completed", "error": "", "history": history}]
    report.write_trials(tmp_path, trials, ["optimizer"])
    assert list(csv.DictReader(open(tmp_path / "trials.csv")))[0]["optimizer"] == "sgd"
    report.plot_trials(tmp_path / "trials.png", trials, "a")
    report.plot_history(tmp_path / "curves.png", [h | {"val_loss": 1, "train_acc": 0.4, "val_f1_macro": 0.3}
                                                  for h in history], 1)
    report.plot_confusion(tmp_path / "confusion.png", [[2, 0], [1, 3]], ["x", "y"])
    for name in ("trials.png", "curves.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
