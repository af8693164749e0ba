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
        ({"epochs": "0"}, "epochs must be >= 1"),
        ({"batch_size": "0"}, "batch_size must be >= 1"),
        ({"epochs": "two"}, "epochs = 'two' in the command line is not a int"),
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
    with pytest.raises(BadInput, match="did you mean JOB_GAMMA"):
        config.resolve(env={"JOB_GAMA": "0.5"})


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
