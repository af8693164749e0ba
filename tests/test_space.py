"""The declarative search space (job/space.py, config.check_search): one shape from a TOML or YAML file, the
environment and --space flags; every entry checked against the training settings before Ray starts."""

import json
import tomllib

import pytest

from job import config
from job.config import SearchConfig, TrainConfig, check_search, objective, resolve
from job.errors import EXIT_BAD_INPUT, BadInput
from job.study import Space
from tests.conftest import assert_error, run_job

TOML = """
[tune]
metric = "val_f1_macro"
[tune.space]
lr = { loguniform = [1e-4, 1e-1] }
optimizer = { choice = ["sgd", "adamw"] }
label_smoothing = { uniform = [0.0, 0.2] }
step_size = { int = [1, 5] }
batch_size = { int = [16, 128], log = true }
model = { choice = ["efficientnet_lite0", "mobilenet_v3_large"] }
momentum = 0.95
"""

YAML = """
tune:
  metric: val_f1_macro
  space:
    lr: {loguniform: [1.0e-4, 1.0e-1]}
    optimizer: {choice: [sgd, adamw]}
    label_smoothing: {uniform: [0.0, 0.2]}
    step_size: {int: [1, 5]}
    batch_size: {int: [16, 128], log: true}
    model: {choice: [efficientnet_lite0, mobilenet_v3_large]}
    momentum: 0.95
"""

FLAGS = {"lr": "loguniform:1e-4,1e-1", "optimizer": "choice:sgd,adamw", "label_smoothing": "uniform:0.0,0.2",
         "step_size": "int:1,5", "batch_size": "int:16,128:log", "model": "choice:efficientnet_lite0,mobilenet_v3_large",
         "momentum": "0.95"}


def dims(search: SearchConfig, **train):
    return {d.name: d for d in check_search(TrainConfig(**train), search)}


def test_toml_yaml_environment_and_flags_give_the_same_space(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    (tmp_path / "c.yaml").write_text(YAML)
    from_toml = resolve(tmp_path / "c.toml", env={}, cls=SearchConfig)
    from_yaml = resolve(tmp_path / "c.yaml", env={}, cls=SearchConfig)
    env = {"JOB_TUNE_SPACE": " ".join(f"{k}={v}" for k, v in FLAGS.items()), "JOB_TUNE_METRIC": "val_f1_macro"}
    from_env = resolve(None, env=env, cls=SearchConfig)
    shown = [{k: dims(s)[k].describe() for k in FLAGS} for s in (from_toml, from_yaml, from_env)]
    assert shown[0] == shown[1] == shown[2]
    d = dims(from_toml)
    assert d["lr"].kind == "loguniform" and d["lr"].values == (1e-4, 1e-1)
    assert d["batch_size"].kind == "int" and d["batch_size"].log and d["batch_size"].values == (16, 128)
    assert d["optimizer"].values == ("sgd", "adamw") and d["momentum"].kind == "fixed" and d["momentum"].values == (0.95,)
    assert objective(from_toml) == ("val_f1_macro", "max")
    space = Space.of(list(d.values()))
    assert set(space.searched) == set(FLAGS) - {"momentum"} and space.fixed == {"momentum": 0.95}
    assert space.names == tuple(FLAGS)


def test_flags_change_the_entries_they_name_and_keep_the_files_others(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    s = resolve(tmp_path / "c.toml", env={}, cls=SearchConfig,
                overrides={"space": {"lr": "loguniform:1e-3,1e-2", "weight_decay": "loguniform:1e-6,1e-3"}})
    d = dims(s)
    assert d["lr"].values == (1e-3, 1e-2) and d["weight_decay"].kind == "loguniform" and "optimizer" in d


def test_without_a_space_the_search_is_todays_lr_step_size_gamma():
    d = dims(SearchConfig(lr_range=(1e-3, 1e-3)), epochs=4)
    assert list(d) == ["lr", "step_size", "gamma"]
    assert d["lr"].kind == "fixed" and d["step_size"].values == (1, 4) and d["gamma"].kind == "uniform"
    assert objective(SearchConfig()) == ("val_acc", "max") and objective(SearchConfig(metric="val_loss")) == ("val_loss", "min")
    assert objective(SearchConfig(metric="val_loss", mode="max")) == ("val_loss", "max")


def test_the_space_round_trips_through_its_saved_form_and_print_config(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    s = resolve(tmp_path / "c.toml", env={}, cls=SearchConfig)
    assert SearchConfig.from_dict(json.loads(json.dumps(s.to_dict()))) == s  # as the experiment saves it
    r = run_job("tune", "--config", tmp_path / "c.toml", "--space", "lr=0.003", "--print-config")
    assert r.returncode == 0, r.stderr
    printed = tomllib.loads(r.stdout)
    assert printed["tune"]["space"]["lr"] == 0.003 and printed["tune"]["space"]["batch_size"] == {"int": [16, 128], "log": True}
    (tmp_path / "printed.toml").write_text(r.stdout)
    again = resolve(tmp_path / "printed.toml", env={}, cls=SearchConfig)
    assert dims(again)["lr"].kind == "fixed" and dims(again)["optimizer"].values == ("sgd", "adamw")


@pytest.mark.parametrize("space, fragments", [
    ({"lrr": "loguniform:1e-4,1e-1"}, ["'lrr' is not a training setting", "did you mean 'lr'"]),
    ({"epochs": "int:1,5"}, ["epochs cannot be searched", "--epochs"]),
    ({"data": "choice:a,b"}, ["data cannot be searched", "same images"]),
    ({"seed": "int:0,5"}, ["seed cannot be searched"]),
    ({"lr": "uniform:0.1,0.01"}, ["lr = uniform [0.1, 0.01] is inverted"]),
    ({"lr": "loguniform:0,0.1"}, ["lr = 0.0 is refused", "lr must be > 0"]),
    ({"gamma": "uniform:0.5,2"}, ["gamma = 2.0 is refused", "(0, 1]"]),
    ({"optimizer": "choice:sgd,adam"}, ["optimizer = 'adam' is refused", "sgd, adamw"]),
    ({"optimizer": "uniform:0,1"}, ["optimizer takes str values, not a uniform range", "choice"]),
    ({"step_size": "loguniform:1,4"}, ["step_size takes int values", "int (with log = true"]),
    ({"lr": "int:1,2"}, ["lr takes float values, not an int range"]),
    ({"step_size": "int:1,9"}, ["step_size max 9 is above epochs = 5"]),
    ({"batch_size": "choice:16,16"}, ["lists a choice twice"]),
    ({"batch_size": "choice:16,1"}, ["batch_size = 1 is refused"]),
    ({"lr": "fast"}, ["lr = 'fast'", "not a float"]),
    ({"label_smoothing": "uniform:0,nan"}, ["not a finite number"]),
    ({"mean": "0.5"}, ["mean cannot be searched"]),
    # a range written another way (Ray Tune's calls, a misspelt kind): the form job reads, not "is not a float"
    ({"lr": "loguniform(1e-4, 1e-1)"}, ["lr = 'loguniform(1e-4, 1e-1)' is not a range job reads",
                                        "--space lr=loguniform:1e-4,1e-1", "lr = { loguniform = [1e-4, 1e-1] }"]),
    ({"lr": "logunifrom:1e-4,1e-1"}, ["'logunifrom:1e-4,1e-1' is not a range job reads"]),
    ({"step_size": "randint(1, 5)"}, ["is not a range job reads", "--space step_size=int:1,5"]),
    ({"optimizer": "choise:sgd,adamw"}, ["is not a range job reads", 'optimizer = { choice = ["a", "b"] }']),
    ({"model": 'choice("tiny_cnn", "resnet18")'}, ["is not a range job reads"]),
])
def test_bad_spaces_are_refused_by_name(space, fragments):
    with pytest.raises(BadInput) as e:
        dims(resolve(None, env={}, cls=SearchConfig, overrides={"space": space}))
    assert all(f in str(e.value) for f in fragments), str(e.value)


@pytest.mark.parametrize("text, fragments", [
    ("lr", ["space entry 'lr'", "NAME=SPEC"]),
    ("lr=uniform:0,1:log", ["only int takes ':log'"]),
    ("lr=uniform:1", ["uniform takes [MIN, MAX]"]),
    ('{"lr": [0.1, 0.2]}', ["space entry lr", "is a list", 'choice = [0.1, 0.2]']),
    ('{"lr": {"loguniform": [1, 2], "uniform": [1, 2]}}', ["give one of loguniform, uniform, int, choice"]),
    ('{"lr": ', ["not a JSON object"]),
])
def test_badly_shaped_entries_say_how_to_write_them(text, fragments):
    with pytest.raises(BadInput) as e:
        resolve(None, env={"JOB_TUNE_SPACE": text}, cls=SearchConfig)
    assert all(f in str(e.value) for f in fragments), str(e.value)


def test_old_range_keys_with_a_space_are_refused_with_the_new_spelling():
    s = SearchConfig(lr_range=(1e-3, 1e-2), space={"optimizer": {"choice": ["sgd", "adamw"]}})
    with pytest.raises(BadInput, match=r"lr_range is the old spelling.*lr = \{ loguniform = \[0.001, 0.01\] \}"):
        check_search(TrainConfig(), s)


def test_a_searched_setting_set_elsewhere_is_refused_and_a_fixed_one_may_be_set():
    with pytest.raises(BadInput, match="optimizer = 'sgd' is set, but job tune searches it"):
        check_search(TrainConfig(optimizer="sgd"), SearchConfig(space={"optimizer": {"choice": ["sgd", "adamw"]}}))
    assert check_search(TrainConfig(lr=0.05), SearchConfig(space={"optimizer": {"choice": ["sgd", "adamw"]}}))


def test_the_cli_refuses_a_bad_space_with_one_line_and_exit_2(tmp_path):
    r = run_job("tune", "--space", "optimizer=choice:sgd,rmsprop", "--storage", tmp_path / "ray", "--output", tmp_path / "o")
    assert_error(r, EXIT_BAD_INPUT, "optimizer = 'rmsprop' is refused")
    r = run_job("tune", "--metric", "accuracy", "--print-config")
    assert_error(r, EXIT_BAD_INPUT, "metric = 'accuracy' is not known", "val_f1_macro")
    assert config.describe(SearchConfig)[0][0] == "space"


def test_a_text_setting_may_hold_a_colon_or_a_bracket():
    got = dims(resolve(None, env={}, cls=SearchConfig, overrides={"space": {"weights": "s3://b/w(1).pth"}}))
    assert got["weights"].kind == "fixed" and got["weights"].values == ("s3://b/w(1).pth",)
