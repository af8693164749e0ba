"""The Optuna study behind `job tune` (study.py) and the Ray searcher over it (tune.StudySearcher), without a cluster:
one Optuna trial per Ray trial, never more than num_samples (also across a resume), pruned and failed trials told
as such, and the journal readable by Optuna itself."""

import optuna
import pytest
from optuna.trial import TrialState

import job.tune as tune
from job.config import SearchConfig, TrainConfig, check_search
from job.study import JOURNAL, Objective, Space, Study

SPACE = Space.of(check_search(TrainConfig(epochs=4), SearchConfig(gamma_range=(0.1, 0.1))))


def study(folder, num_samples=3, seed=0) -> Study:
    return Study(folder / JOURNAL, "s", SPACE, Objective("val_acc", "max", max_steps=4), "tpe", seed, 2, num_samples)


def test_asks_at_most_num_samples_and_the_same_settings_again_for_a_known_trial(tmp_path):
    s = study(tmp_path)
    first = s.ask("a")
    assert set(first) == {"lr", "step_size", "gamma"} and first["gamma"] == 0.1  # min = max: fixed, not searched
    assert 1e-4 <= first["lr"] <= 1e-1 and 1 <= first["step_size"] <= 4
    assert s.ask("a") == first
    assert s.ask("b") and s.ask("c") and s.ask("d") is None


def test_a_resumed_study_counts_the_trials_of_the_first_run_and_keeps_their_outcome(tmp_path):
    s = study(tmp_path)
    a = s.ask("a")
    s.report("a", 1, {"val_acc": 0.5})
    s.report("a", 2, {"val_acc": 0.7})
    s.tell("a", 2, {"val_acc": 0.6}, failed=False)  # stopped early after 2 of 4 epochs: pruned, best value kept
    s.ask("b")
    s.tell("b", 4, {"val_acc": 0.8}, failed=False)
    s.ask("c")
    s.tell("c", 1, None, failed=True)
    again = study(tmp_path)  # a new process, the same journal
    assert again.ask("a") == a and again.ask("new") is None
    trials = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / JOURNAL)))).trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    assert trials[0].intermediate_values == {1: 0.5, 2: 0.7} and trials[1].value == 0.8
    assert [t.user_attrs["ray_trial_id"] for t in trials] == ["a", "b", "c"]


def test_epochs_reported_again_by_a_retried_trial_are_told_once(tmp_path, recwarn):
    """A trial retried from its checkpoint (its node lost) reports the epochs after that checkpoint again: Optuna is
    told each step once, with no warning on the search's output."""
    s = study(tmp_path)
    s.ask("a")
    for step, value in ((1, 0.5), (2, 0.6), (2, 0.65), (3, 0.7)):
        s.report("a", step, {"val_acc": value})
    s.tell("a", 4, {"val_acc": 0.7}, failed=False)
    assert s.study.trials[0].intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.7}  # the last comes with the end
    assert not [w for w in recwarn if "already reported" in str(w.message)]


def test_a_trial_the_study_never_asked_for_reports_and_ends_without_error(tmp_path):
    """After a kill, the experiment may continue a trial the journal does not hold: it still runs and counts."""
    s = study(tmp_path)
    s.report("lost-in-snapshot", 1, {"val_acc": 0.7})
    s.tell("lost-in-snapshot", 4, {"val_acc": 0.7}, failed=False)
    assert s.ask("a") is not None and len(s.study.trials) == 1


def test_the_ray_searcher_forwards_to_the_live_study_and_finishes(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setattr(tune.LIVE, "study", study(tmp_path, num_samples=1))
    searcher = pickle.loads(pickle.dumps(tune.StudySearcher("val_acc", "max")))  # as Ray brings it back from the experiment
    config = searcher.suggest("t1")
    assert set(config) == {"lr", "step_size", "gamma"}
    searcher.on_trial_result("t1", {"training_iteration": 1, "val_acc": 0.4})
    searcher.on_trial_complete("t1", {"training_iteration": 4, "val_acc": 0.5})
    assert searcher.suggest("t2") == tune.Searcher.FINISHED
    assert tune.LIVE.study.study.trials[0].value == 0.5
    assert tune.LIVE.study.study.trials[0].intermediate_values == {1: 0.4, 4: 0.5}  # the last epoch comes with the end


def test_a_replaced_trial_no_longer_counts_and_its_settings_run_again_also_after_a_resume(tmp_path, monkeypatch):
    """Ray ended trial "b" before it ran (its node lost as its worker was handed to it, tune.ProgressEvents): a new
    trial takes its settings and the search still runs num_samples trials. The searcher does not say FINISHED while
    a trial that may yet be replaced runs: Ray would never ask again."""
    monkeypatch.setattr(tune.LIVE, "study", study(tmp_path, num_samples=2))
    searcher = tune.StudySearcher("val_acc", "max")
    searcher.suggest("a")
    b = searcher.suggest("b")
    assert searcher.suggest("c") is None  # none to ask for now, but not FINISHED: "a" and "b" run
    searcher.on_trial_complete("b", None, error=True)
    assert tune.LIVE.study.replace("b") and not tune.LIVE.study.replace("never-asked")
    assert searcher.suggest("c") == b  # the same settings, a new trial
    searcher.on_trial_complete("a", {"training_iteration": 4, "val_acc": 0.5})
    assert searcher.suggest("d") is None
    searcher.on_trial_complete("c", {"training_iteration": 4, "val_acc": 0.6})
    assert searcher.suggest("d") == tune.Searcher.FINISHED
    trials = tune.LIVE.study.study.trials
    assert [(t.user_attrs["ray_trial_id"], t.state) for t in trials] == [
        ("a", TrialState.COMPLETE), ("b", TrialState.FAIL), ("c", TrialState.COMPLETE)]
    again = study(tmp_path, num_samples=2)  # resumed: Ray's experiment holds all three, "b" errored
    again.reconcile({"a", "b", "c"})
    assert again.ask("d") is None and again.replaced == {"b"} and again.finished()
    (tmp_path / "running").mkdir()
    first = study(tmp_path / "running", num_samples=1)
    first.ask("a")
    resumed = study(tmp_path / "running", num_samples=1)  # killed while "a" ran; Ray restores it unfinished
    resumed.reconcile({"a"}, unfinished={"a"})
    assert not resumed.finished()  # "a" may yet be replaced: the searcher must not say FINISHED
    resumed.tell("a", 4, {"val_acc": 0.5}, failed=False)
    assert resumed.finished()
    (tmp_path / "untold").mkdir()
    untold = study(tmp_path / "untold", num_samples=1)
    untold.ask("a")
    assert not untold.finished()
    untold.ended({"a"})  # Ray ended "a" without telling the searcher: the search must not wait for it forever
    assert untold.finished()


def test_importances_name_the_searched_settings(tmp_path):
    s = study(tmp_path, num_samples=6)
    for i in range(6):
        params = s.ask(str(i))
        s.tell(str(i), 4, {"val_acc": -abs(params["lr"] - 0.01)}, failed=False)
    assert set(s.importances()) == {"lr", "step_size"}


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_resumed_search_does_not_repeat_the_first_runs_settings(tmp_path, sampler):
    first = Study(tmp_path / JOURNAL, "s", SPACE, Objective("val_acc", "max", 4), sampler, 0, 10, 4)
    a = [first.ask(k)["lr"] for k in ("a", "b")]
    second = Study(tmp_path / JOURNAL, "s", SPACE, Objective("val_acc", "max", 4), sampler, 0, 10, 4)
    b = [second.ask(k)["lr"] for k in ("c", "d")]
    assert not set(a) & set(b)


def test_a_resumed_search_runs_num_samples_trials_whichever_record_a_kill_left_behind(tmp_path):
    """Killed between the study recording a new trial and Ray's next snapshot, or the other way round: the resumed
    search still runs num_samples trials, also when it is resumed again."""
    s = study(tmp_path, num_samples=3)
    for key in ("a", "b", "c"):
        s.ask(key)
    again = study(tmp_path, num_samples=3)
    assert again.ask("d") is None  # the journal says three exist
    again.reconcile({"a", "b"})  # the restored experiment holds two: "c" never ran
    assert again.ask("d") is not None and again.ask("e") is None
    assert again.study.trials[2].state == TrialState.FAIL
    third = study(tmp_path, num_samples=3)
    assert third.ask("d") is not None and third.ask("f") is None  # "c" stays forgotten
    (tmp_path / "other").mkdir()
    ahead = study(tmp_path / "other", num_samples=3)
    ahead.ask("a")
    ahead.reconcile({"a", "x", "y"})  # the experiment holds two trials whose records did not reach the journal
    assert ahead.ask("z") is None
    (tmp_path / "quick").mkdir()
    quick = study(tmp_path / "quick", num_samples=3)
    for key in ("a", "b", "c"):
        quick.ask(key)
        quick.tell(key, 4, {"val_acc": 0.5}, failed=False)
    resumed = study(tmp_path / "quick", num_samples=3)
    resumed.reconcile({"a", "b"})  # "c" ran to its end between two of Ray's snapshots: the experiment has no "c"
    assert resumed.ask("d") is not None and resumed.ask("e") is None and not resumed.finished()
    assert resumed.study.trials[2].state == TrialState.COMPLETE  # its result stays the sampler's
    assert study(tmp_path / "quick", num_samples=3).ask("e") is None  # resumed again: a, b and d count


def finished_search(folder, n=4, metric="val_acc", mode="max"):
    """An earlier search's study: n trials, the first stopped early (PRUNED) after 2 of 4 epochs, the rest complete."""
    s = Study(folder / JOURNAL, "old", SPACE, Objective(metric, mode, max_steps=4), "random", 0, 2, n)
    for i in range(n):
        key = f"t{i}"
        s.ask(key)
        steps = 2 if i == 0 else 4
        for step in range(1, steps + 1):
            s.report(key, step, {metric: 0.1 * i + 0.01 * step})
        s.tell(key, steps, None, failed=False)
    return s


def test_a_warm_start_feeds_an_earlier_searchs_finished_trials_to_the_sampler_and_still_runs_num_samples(tmp_path):
    from job.study import WARM_FROM, warm_trials

    (tmp_path / "old").mkdir()
    old = finished_search(tmp_path / "old")
    warm = warm_trials(tmp_path / "old" / JOURNAL, "runs/ray/old", SPACE, Objective("val_acc", "max", 4))
    assert len(warm) == 4 and [t.state for t in warm] == [TrialState.PRUNED] + [TrialState.COMPLETE] * 3
    assert warm[0].intermediate_values == {1: 0.01, 2: 0.02} and warm[3].value == old.study.trials[3].value
    s = Study(tmp_path / JOURNAL, "new", SPACE, Objective("val_acc", "max", 4), "tpe", 0, 2, num_samples=2, warm=warm)
    assert s.ask("a") and s.ask("b") and s.ask("c") is None  # warm trials are the sampler's, not the search's
    trials = s.study.trials
    assert len(trials) == 6 and trials[0].user_attrs[WARM_FROM] == "runs/ray/old trial 0"
    assert s.study.user_attrs["metric"] == "val_acc"


@pytest.mark.parametrize("space, objective, fragment", [
    (SPACE, Objective("val_loss", "min", 4), "optimised val_acc (max), this search val_loss (min)"),
    (Space.of(check_search(TrainConfig(epochs=4), SearchConfig(space={"lr": {"loguniform": [1e-4, 1e-1]}}))),
     Objective("val_acc", "max", 4), "searched lr, step_size, this space searches lr"),
    (Space.of(check_search(TrainConfig(epochs=4), SearchConfig(lr_range=(0.5, 0.6), gamma_range=(0.1, 0.1)))),
     Objective("val_acc", "max", 4), "none of the 4 finished trials"),
])
def test_a_warm_start_from_a_search_that_does_not_fit_is_refused(tmp_path, space, objective, fragment):
    from job.errors import BadInput
    from job.study import warm_trials

    finished_search(tmp_path)
    with pytest.raises(BadInput, match="warm start: .*" + fragment.replace("(", r"\(").replace(")", r"\)")):
        warm_trials(tmp_path / JOURNAL, "old", space, objective)


def test_the_training_settings_run_first_when_the_space_holds_them_and_fail_only_where_demanded(tmp_path):
    from job.errors import BadInput
    from job.study import first_trial

    first = first_trial(SPACE, TrainConfig(lr=0.01, step_size=2).to_dict(), required=False)
    s = Study(tmp_path / JOURNAL, "s", SPACE, Objective("val_acc", "max", 4), "tpe", 0, 2, 3, first=first)
    assert s.ask("a") == {"lr": 0.01, "step_size": 2, "gamma": 0.1}
    assert s.ask("b")["lr"] != 0.01
    outside = TrainConfig(lr=0.5).to_dict()  # above lr_range's 1e-2
    assert first_trial(SPACE, outside, required=False) is None  # by default: the search starts from the sampler
    with pytest.raises(BadInput, match="lr = 0.5 lie outside the space"):
        first_trial(SPACE, outside, required=True)  # --enqueue-default asked for them: refused


def test_a_study_in_an_rdb_url_and_a_fresh_one_drops_the_old(tmp_path):
    from job.errors import BadInput
    from job.study import redact, storage_of

    url = f"sqlite:///{tmp_path}/study.db"
    s = Study(url, "s", SPACE, Objective("val_acc", "max", 4), "tpe", 0, 2, 3)
    s.ask("a")
    again = Study(url, "s", SPACE, Objective("val_acc", "max", 4), "tpe", 0, 2, 3)
    assert len(again.study.trials) == 1
    fresh = Study(url, "s", SPACE, Objective("val_acc", "max", 4), "tpe", 0, 2, 3, fresh=True)
    assert len(fresh.study.trials) == 0
    with pytest.raises(BadInput, match=r"postgresql://u:\*\*\*@127.0.0.1:9/db cannot be opened"):
        storage_of("postgresql://u:secret@127.0.0.1:9/db")
    assert redact("mysql://me:pw@host/db") == "mysql://me:***@host/db"
    with pytest.raises(BadInput, match="study_storage holds a password"):
        SearchConfig(study_storage="postgresql://u:secret@host/db")


def test_a_warm_start_source_is_an_experiment_folder_its_journal_or_a_url(tmp_path):
    from job.errors import BadInput
    from job.experiment import study_source

    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / JOURNAL).write_text("")
    assert study_source(str(tmp_path / "exp"), None, tmp_path / "cache") == tmp_path / "exp" / JOURNAL
    assert study_source(str(tmp_path / "exp" / JOURNAL), None, tmp_path / "cache") == tmp_path / "exp" / JOURNAL
    assert study_source("sqlite:///x.db#s", None, tmp_path / "cache") == "sqlite:///x.db#s"
    with pytest.raises(BadInput, match="holds no optuna.journal"):
        study_source(str(tmp_path / "nothing"), None, tmp_path / "cache")
