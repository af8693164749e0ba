"""results.py: trials from what a search recorded, the best one that can still be exported, and --json's shape."""

import pytest

from job.errors import JobError
from job.results import Result, Trial, best_readable, rank

ACC = ("val_acc", "max")


def history(*accs, loss=1.0):
    return [{"epoch": i + 1, "val_acc": a, "val_loss": loss} for i, a in enumerate(accs)]


@pytest.mark.parametrize("epochs, error, cut, status", [
    (4, "", set(), "completed"), (2, "", set(), "stopped early (ASHA)"), (2, "", {"abc"}, "stopped (time budget)"),
    (1, "Diverged: lower lr", set(), "errored"),
])
def test_a_trials_status_follows_how_it_ended(epochs, error, cut, status):
    t = Trial.of("trial_007_abc", {"lr": 0.1}, history(*[0.5] * epochs), ACC, 4, error, cut)
    assert (t.number, t.trial_id, t.status, t.epochs, t.best_epoch) == (7, "abc", status, epochs, 1)
    assert t.row() == {"number": 7, "trial_id": "abc", "lr": 0.1, "epochs": epochs, "val_acc": 0.5, "best_epoch": 1,
                       "status": status, "error": error}


def test_the_best_trial_is_the_best_epoch_anywhere_ties_to_lower_loss_and_a_lost_checkpoint_is_passed_over(capsys):
    a = Trial.of("trial_001_a", {}, history(0.5, 0.9), ACC, 2, "", set())
    b = Trial.of("trial_002_b", {}, history(0.9, 0.6, loss=0.5), ACC, 2, "", set())
    c = Trial.of("trial_003_c", {}, history(0.95), ACC, 2, "", set())
    states = {"a": {"best_epoch": 2}, "b": {"best_epoch": 1}}

    def state_of(t):
        if t.trial_id not in states:
            raise FileNotFoundError(t.trial_id)
        return states[t.trial_id]

    best, state = best_readable([a, b, c], state_of, "exp")
    assert best.trial_id == "b" and state == {"best_epoch": 1}  # c's checkpoint is gone; b ties a at 0.9, lower loss
    assert "warning: trial c (val_acc 0.9500) has no readable checkpoint left: passed over" in capsys.readouterr().err
    with pytest.raises(JobError, match="no trial has a readable checkpoint under exp"):
        best_readable([c], state_of, "exp")


def test_a_storage_failure_while_the_best_checkpoint_is_read_stops_the_search_instead_of_passing_trials_over(capsys):
    # passing every trial over would end in "run again with --restart", advice that throws a finished search away
    t = Trial.of("trial_001_a", {}, history(0.9), ACC, 1, "", set())

    def unreachable(_):
        raise JobError("S3 failure while reading the checkpoint s3://b/ck: run the same command again")

    with pytest.raises(JobError, match="S3 failure while reading the checkpoint"):
        best_readable([t], unreachable, "exp")
    assert "passed over" not in capsys.readouterr().err


def test_a_trial_retried_from_a_checkpoint_has_one_row_per_epoch_and_the_best_its_checkpoints_history():
    """After a lost node, Ray's record of a trial may repeat epochs (reported again after the retry) or lack some
    (its result log restored from storage): the trial counts each epoch once, and the exported best trial takes
    the whole history its checkpoint carries."""
    recorded = [history(0.5, 0.6)[1], *history(0.5, 0.6, 0.7, 0.8)[1:]]  # epoch 1 lost, epoch 2 twice
    t = Trial.of("trial_001_a", {}, recorded, ACC, 4, "", set())
    assert [h["epoch"] for h in t.history] == [2, 3, 4] and t.epochs == 4 and t.status == "completed"
    best, _ = best_readable([t], lambda _: {"best_epoch": 4, "history": history(0.5, 0.6, 0.7, 0.8)}, "x")
    assert [h["epoch"] for h in best.history] == [1, 2, 3, 4] and best.value == 0.8


def test_summary_of_a_train_run_and_of_a_search():
    t = Trial.of("trial_001_a", {"lr": 0.1}, history(0.5), ACC, 1, "", set())
    train = Result("out", "out/best", 1, {"val_acc": 0.5}, t.history, seconds=1.234, skipped=2)
    assert train.summary() == {"output": "out", "bundle": "out/best", "best_epoch": 1, "best": {"val_acc": 0.5},
                               "epochs": 1, "seconds": 1.2, "resumed_from_epoch": 0, "skipped_images": 2}
    search = Result("out", "out/best", 1, {"val_acc": 0.5}, t.history, experiment="exp", trials=[t], best_trial=t)
    assert search.summary()["best"] == t.row() and search.summary()["trials"] == [t.row()]


@pytest.mark.parametrize("stop_at", range(1, 9))
def test_an_export_stopped_at_any_write_is_never_taken_as_finished_and_the_rerun_completes(tmp_path, monkeypatch, stop_at):
    """Ctrl-C or SIGTERM at each step of a search's export: the same command exports again, whole."""
    from job import bundle, files, model
    from job.errors import BadInput
    from job.results import write_search

    weights = model.create("tiny_cnn", "none", 2).state_dict()
    state = {"best_model": None, "model": weights, "best_epoch": 1, "classes": ["a", "b"], "data_fingerprint": "f",
             "preprocessing": {"image_size": 32, "resize_size": 36, "mean": [0.5] * 3, "std": [0.5] * 3,
                               "interpolation": "bilinear"}}
    t = Trial.of("trial_001_a", {"lr": 0.1}, history(0.5), ACC, 1, "", set())
    out = tmp_path / "out"
    write_search(out, state, t, [t], {"model": "tiny_cnn"}, "exp")  # an earlier export, complete
    real, writes = files.write_atomic, []

    def interrupted(path, data):
        writes.append(path)
        if len(writes) == stop_at:
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(files, "write_atomic", interrupted)
    for module in ("job.checkpoint", "job.report"):
        monkeypatch.setattr(f"{module}.write_atomic", interrupted)
    state["best_model"] = {k: v + 1 for k, v in weights.items() if v.is_floating_point()} | {
        k: v for k, v in weights.items() if not v.is_floating_point()}  # the new export's weights differ
    try:
        write_search(out, state, t, [t], {"model": "tiny_cnn"}, "exp")
    except KeyboardInterrupt:
        try:  # whatever was left: the old bundle whole, or none at all, never a mix
            manifest = bundle.read(out / "best")
            assert manifest["files"]["model.pt"]["sha256"] == files.sha256(out / "best" / "model.pt")
        except BadInput:
            pass
    monkeypatch.undo()
    write_search(out, state, t, [t], {"model": "tiny_cnn"}, "exp")  # the same command again
    assert bundle.read(out / "best")["best_epoch"] == 1


def test_a_minimised_metric_picks_the_lowest_epoch_and_ranks_trials_lowest_first():
    a = Trial.of("trial_001_a", {}, history(0.5, 0.6, loss=0.4), ("val_loss", "min"), 2, "", set())
    b = Trial.of("trial_002_b", {}, history(0.7, 0.8, loss=0.3), ("val_loss", "min"), 2, "", set())
    c = Trial.of("trial_003_c", {}, history(0.9, loss=0.3), ("val_loss", "min"), 2, "", set())
    assert a.best_epoch == 1 and a.value == 0.4 and a.row()["val_loss"] == 0.4 and "val_acc" not in a.row()
    # b and c tie on val_loss: the higher val_acc at the best epoch wins (c), then the earlier trial
    assert [t.trial_id for t in sorted([a, b, c], key=rank, reverse=True)] == ["c", "b", "a"]
