"""experiment.py: a search's experiment on storage: its settings, the resume check, its study's journal."""

import pytest

from job.config import SearchConfig, TrainConfig
from job.errors import BadInput
from job.experiment import SETTINGS_FILE, Experiment


def test_a_new_experiment_then_the_same_settings_resume_and_others_are_refused(tmp_path):
    cfg, search = TrainConfig(epochs=3), SearchConfig(storage=str(tmp_path / "ray"), name="e")
    experiment = Experiment(search, None)
    assert experiment.check(cfg, search, restart=False) is False  # nothing there yet
    experiment.start(cfg, search, tmp_path / "cache", "fp")
    assert (tmp_path / "ray" / "e" / SETTINGS_FILE).is_file()
    assert experiment.check(cfg, search, restart=False) is True
    # how it runs may change; what it searches may not
    assert experiment.check(TrainConfig(epochs=3, workers=2), SearchConfig(storage=str(tmp_path / "ray"), name="e",
                                                                           max_concurrent=1), restart=False)
    with pytest.raises(BadInput, match=r"started with other settings \(epochs\).*--restart"):
        experiment.check(TrainConfig(epochs=4), search, restart=False)
    assert experiment.check(TrainConfig(epochs=4), search, restart=True) is False
    experiment.check_data("fp", restart=False)
    with pytest.raises(BadInput, match="the data changed since experiment"):
        experiment.check_data("other", restart=False)


def test_a_folder_that_is_not_a_job_experiment_is_left_alone(tmp_path):
    (tmp_path / "ray" / "e").mkdir(parents=True)
    (tmp_path / "ray" / "e" / "precious.txt").write_text("x")
    search = SearchConfig(storage=str(tmp_path / "ray"), name="e")
    with pytest.raises(BadInput, match="is not a job tune experiment"):
        Experiment(search, None).check(TrainConfig(), search, restart=True)
    assert (tmp_path / "ray" / "e" / "precious.txt").read_text() == "x"


def test_a_new_experiment_never_reuses_an_earlier_study(tmp_path):
    search = SearchConfig(storage=str(tmp_path / "ray"), name="e")
    experiment = Experiment(search, None)
    experiment.start(TrainConfig(), search, tmp_path / "cache", "fp")
    journal = experiment.journal(tmp_path / "cache")
    journal.write_text("an earlier study's records")
    experiment.start(TrainConfig(), search, tmp_path / "cache", "fp")
    assert not journal.exists()


def test_one_search_at_a_time_and_a_dead_holders_lock_is_taken_over(tmp_path):
    import subprocess
    import sys

    from job.experiment import Lock

    search = SearchConfig(storage=str(tmp_path / "ray"), name="e")
    experiment = Experiment(search, None)
    with Lock(experiment):
        with pytest.raises(BadInput, match=r"is being searched right now by process \d+ on this machine"):
            Lock(experiment).acquire()
    assert not (tmp_path / "ray" / ".e.lock.json").exists()  # released
    # a holder that was killed (SIGKILL: no release) on this machine does not block the next search
    code = ("from job.config import SearchConfig; from job.experiment import Experiment, Lock; import os; "
            "Lock(Experiment(SearchConfig(storage=%r, name='e'), None)).acquire(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code % str(tmp_path / "ray")], check=True)
    assert (tmp_path / "ray" / ".e.lock.json").exists()
    with Lock(experiment):
        pass


def test_a_lock_held_on_another_machine_is_waited_for_then_refused_or_taken(tmp_path, monkeypatch):
    import time

    from job.experiment import Lock

    search = SearchConfig(storage=str(tmp_path / "ray"), name="e")
    where = Experiment(search, None).storage
    where.check_writable("storage")
    other = {"host": "elsewhere", "pid": 1, "token": "t", "expires": time.time() + 30}
    where.write_json(".e.lock.json", other)
    renewals = iter(range(100))

    def renewing(seconds):  # the other machine renews its lease while we wait: it is alive
        where.write_json(".e.lock.json", other | {"expires": time.time() + 30 + next(renewals)})

    with pytest.raises(BadInput, match="being searched right now by process 1 on elsewhere"):
        Lock(Experiment(search, None), wait=renewing).acquire()
    where.write_json(".e.lock.json", other | {"expires": time.time() - 1})  # its lease ran out: it died
    lock = Lock(Experiment(search, None), wait=lambda s: None)
    lock.acquire()
    assert where.read_json(".e.lock.json")["token"] == lock.me["token"]
    lock.release()


def test_experiment_storage_that_other_users_may_write_is_refused(tmp_path):
    import os

    search = SearchConfig(storage=str(tmp_path / "ray"), name="e")
    (tmp_path / "ray" / "e").mkdir(parents=True)
    os.chmod(tmp_path / "ray" / "e", 0o777)
    with pytest.raises(BadInput, match="may be written by other users.*chmod go-w"):
        Experiment(search, None).check(TrainConfig(), search, restart=False)
    os.chmod(tmp_path / "ray" / "e", 0o755)
    os.chmod(tmp_path / "ray", 0o1777)  # like /tmp: others may add files, not change ours
    assert Experiment(search, None).check(TrainConfig(), search, restart=False) is False


def test_damaged_experiment_settings_are_named_not_crashed_on(tmp_path):
    search = SearchConfig(storage=str(tmp_path / "ray"), name="e")
    (tmp_path / "ray" / "e").mkdir(parents=True)
    (tmp_path / "ray" / "e" / SETTINGS_FILE).write_text('{"train": {"lr": 0.0')  # cut short
    with pytest.raises(BadInput, match="job-tune.json' is damaged"):
        Experiment(search, None).check(TrainConfig(), search, restart=False)
