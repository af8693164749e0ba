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
