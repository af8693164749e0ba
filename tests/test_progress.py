"""progress.py: the lines a person reads while a search runs, and its summary."""

from job.progress import Counts, SearchView, describe, search_summary
from job.results import Result, Trial


def test_one_line_per_epoch_and_per_ended_trial_with_the_best_so_far():
    lines = []
    view = SearchView(num_samples=4, epochs=3, metric="val_acc", out=lines.append)
    view.trial_started("a")
    view.trial_result("a", {"lr": 0.00123, "step_size": 2}, 1, {"val_acc": 0.5}, Counts(1, 0, 0))
    view.trial_result("b", {"lr": 0.2, "step_size": 1}, 1, {"val_acc": 0.25}, Counts(2, 0, 0))
    view.trial_ended("a", 1, Counts(1, 1, 0))
    view.trial_retried("b", "10.0.3.7", 1, Counts(2, 0, 0), "its node died")
    view.trial_retried("c", "", 0, Counts(2, 0, 0))
    view.trial_retried("d", "10.0.3.8", 2, Counts(2, 0, 0), "RuntimeError: CUDA out of memory", lost=False)
    view.trial_errored("b", Counts(0, 1, 1), "job.loop.Diverged: training diverged in epoch 1")
    assert [line.split("] ", 1)[1] for line in lines] == [
        "a lr 1.23e-03 step_size 2 epoch 1/3 val_acc 0.5000 | 1 running, 0/4 ended, 0 errored | best 0.5000 (a)",
        "b lr 0.2 step_size 1 epoch 1/3 val_acc 0.2500 | 2 running, 0/4 ended, 0 errored | best 0.5000 (a)",
        "a stopped after epoch 1 | 1 running, 1/4 ended, 0 errored | best 0.5000 (a)",
        "b lost on node 10.0.3.7 (its node died): retried from its epoch 1 checkpoint | 2 running, 0/4 ended, 0 errored | best 0.5000 (a)",
        "c lost: retried from the start (it had no checkpoint yet) | 2 running, 0/4 ended, 0 errored | best 0.5000 (a)",
        "d failed on node 10.0.3.8 (RuntimeError: CUDA out of memory): retried from its epoch 2 checkpoint | 2 running, 0/4 ended, 0 errored | best 0.5000 (a)",
        "b errored (job.loop.Diverged: training diverged in epoch 1) | 0 running, 1/4 ended, 1 errored | best 0.5000 (a)",
    ]
    assert view.active == set()
    quiet = SearchView(4, 3, "val_acc", enabled=False, out=lines.append)
    quiet.trial_result("c", {}, 1, {"val_acc": 0.9}, Counts(1, 0, 0))
    assert len(lines) == 7 and quiet.best == (0.9, "c")


def test_summary_names_the_best_trial_its_settings_and_the_importances():
    t = Trial.of("trial_002_b", {"lr": 0.01, "gamma": 0.5}, [{"epoch": 1, "val_acc": 0.8, "val_loss": 0.3}],
                 ("val_acc", "max"), 2, "", set())
    r = Result("o", "o/best", 1, {}, t.history, seconds=12.4, trials=[t], best_trial=t, resumed=True,
               importances={"lr": 0.9, "gamma": 0.1})
    assert search_summary(r) == ["job tune: done in 12s (resumed): 1 stopped early (ASHA)",
                                 "best trial b: val_acc 0.8000 at epoch 1 (lr 0.01 gamma 0.5)",
                                 "parameter importances: lr 0.90, gamma 0.10"]
    assert describe({"lr": 1e-5, "n": 3, "f": 12345.0}) == "lr 1.00e-05 n 3 f 1.23e+04"
