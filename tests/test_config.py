import dataclasses

import pytest

from job import config
from job.config import TrainConfig
from job.errors import BadInput


def test_precedence_defaults_file_env_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('lr = 0.05\nepochs = 7\nbatch_size = 8\nmean = [0.1, 0.2, 0.3]\n')
    cfg = config.resolve(f, env={"JOB_EPOCHS": "9", "JOB_BATCH_SIZE": "4"}, overrides={"batch_size": "2"})
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (0.05, 9, 2)
    assert cfg.mean == (0.1, 0.2, 0.3)
    assert cfg.gamma == TrainConfig().gamma


def test_yaml_file_and_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("freeze_backbone: true\nimage_size: 48\noptimizer: adamw\n")
    cfg = config.resolve(f, env={"JOB_SKIP_BAD_IMAGES": "true", "JOB_IMAGE_SIZE": "none"})
    assert cfg.freeze_backbone is True and cfg.skip_bad_images is True
    assert cfg.image_size is None and cfg.optimizer == "adamw"


def test_round_trip_through_dict():
    cfg = config.resolve(env={}, overrides={"std": "0.2,0.2,0.2", "lr": "1e-3"})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"lr": "0"}, "lr = 0.0 is out of range"),
        ({"lr": "-1"}, "lr = -1.0"),
        ({"step_size": "0"}, "step_size must be >= 1"),
        ({"gamma": "1.5"}, "gamma must be in (0, 1]"),
        ({"gamma": "0"}, "gamma"),
        ({"epochs": "0"}, "epochs must be between 1 and 10000"),
        ({"batch_size": "1"}, "batch_size must be between 2"),
        ({"epochs": "two"}, "epochs = 'two' in the command line is not an int"),
        ({"optimizer": "adam"}, "choose one of sgd, adamw"),
        ({"learning_rate": "0.1"}, "unknown config key 'learning_rate'"),
        ({"mean": "0.5,0.5"}, "give 3 numbers"),
    ],
)
def test_bad_values_name_the_key(overrides, fragment):
    with pytest.raises(BadInput, match=None) as e:
        config.resolve(env={}, overrides=overrides)
    assert fragment in str(e.value)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(BadInput, match="did you mean 'step_size'"):
        config.resolve(env={}, overrides={"stepsize": "2"})
    warnings = []
    config.resolve(env={"JOB_GAMA": "0.5"}, warn=warnings.append)
    assert warnings and warnings[0].endswith("did you mean JOB_GAMMA?")


def test_bad_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("lr = = 1\n")
    with pytest.raises(BadInput, match="does not parse"):
        config.resolve(f, env={})
    with pytest.raises(BadInput, match="does not exist"):
        config.resolve(tmp_path / "missing.toml", env={})
    (tmp_path / "c.ini").write_text("x")
    with pytest.raises(BadInput, match="neither .toml nor .yaml"):
        config.resolve(tmp_path / "c.ini", env={})


def test_describe_covers_every_key():
    assert [row[0] for row in config.describe()] == [f.name for f in dataclasses.fields(config.TrainConfig)]


def test_search_settings_come_from_the_tune_table_env_and_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('epochs = 6\n[tune]\nnum_samples = 12\nlr_range = [0.001, 0.5]\nstep_size_range = [1, 3]\n')
    env = {"JOB_TUNE_GAMMA_RANGE": "0.1,0.5", "JOB_EPOCHS": "7"}
    search = config.resolve(f, env=env, overrides={"num_samples": "16"}, cls=config.SearchConfig)
    assert (search.num_samples, search.lr_range, search.step_size_range, search.gamma_range) == (16, (0.001, 0.5), (1, 3), (0.1, 0.5))
    assert config.resolve(f, env=env).epochs == 7  # the [tune] table and JOB_TUNE_* do not leak into training


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"lr_range": "0.1,0.01"}, "lr_range = 0.1,0.01 is empty or inverted"),
        ({"lr_range": "0,0.01"}, "lr_range = 0,0.01 is empty or inverted"),
        ({"gamma_range": "0.2,1.5"}, "gamma_range max 1.5 is above 1"),
        ({"step_size_range": "4,2"}, "step_size_range = 4,2 is empty or inverted"),
        ({"step_size_range": "1.5,2"}, "give 2 integers, e.g. step_size_range = 1,1"),
        ({"num_samples": "0"}, "num_samples = 0 is out of range"),
        ({"reduction_factor": "1"}, "reduction_factor = 1"),
        ({"name": "../x"}, "is not a plain folder name"),
    ],
)
def test_bad_search_settings_name_the_key(overrides, fragment):
    with pytest.raises(BadInput) as e:
        config.resolve(env={}, overrides=overrides, cls=config.SearchConfig)
    assert fragment in str(e.value)


def test_unknown_env_vars_are_ignored_with_a_warning_that_suggests_the_right_one():
    warnings = []
    cfg = config.resolve(env={"JOB_NUM_SAMPLES": "4", "JOB_NAME": "build-42", "JOB_XYZZY": "1"}, warn=warnings.append)
    assert cfg == TrainConfig()
    assert warnings == ["warning: environment variable JOB_NUM_SAMPLES is not a job setting (ignored): "
                        "did you mean JOB_TUNE_NUM_SAMPLES?",
                        "warning: environment variable JOB_XYZZY is not a job setting (ignored)"]


@pytest.mark.parametrize("overrides", [{"lr": "inf"}, {"lr": "nan"}, {"gamma": "-inf"}, {"lr": float("nan")}])
def test_non_finite_numbers_are_refused_by_name(overrides):
    key = next(iter(overrides))
    with pytest.raises(BadInput, match=f"{key} = .* is not a finite number"):
        config.resolve(env={}, overrides=overrides)
    with pytest.raises(BadInput, match="lr_range = .* is not a finite number"):
        config.resolve(env={}, overrides={"lr_range": "0.001,inf"}, cls=config.SearchConfig)
    with pytest.raises(BadInput, match="time_budget_s = 'nan'"):
        config.resolve(env={}, overrides={"time_budget_s": "nan"}, cls=config.SearchConfig)
