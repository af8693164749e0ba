"""The README stays true: its config table and test command match the code and CI."""

import re
from pathlib import Path

from job import config

ROOT = Path(__file__).resolve().parent.parent


def test_config_table_lists_every_key_with_its_default():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", readme, flags=re.M))
    expected = [row for section in config.SECTIONS for row in config.describe(section)]
    assert rows == {key: default for key, default, _ in expected}


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = ".venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -q"
    assert command in readme
    assert (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1] == command


def test_the_readmes_space_example_its_flag_form_and_yaml_form_are_one_valid_search(tmp_path):
    """The README's [tune.space] example, as a file, is a search `job tune` accepts; its --space flags and its YAML
    line say the same."""
    readme = (ROOT / "README.md").read_text()
    toml = re.search(r"```toml\n(\[tune\]\n.*?)```", readme, re.S).group(1)
    (tmp_path / "search.toml").write_text(toml)
    search = config.resolve(tmp_path / "search.toml", env={}, cls=config.SearchConfig)
    dims = {d.name: d for d in config.check_search(config.TrainConfig(), search)}
    assert config.objective(search) == ("val_f1_macro", "max") and dims["momentum"].kind == "fixed"
    flags = re.search(r"each entry\s+is\s+a\s+flag,\s+`([^`]+)`", readme).group(1).split()
    entries = [flags[i + 1] for i, f in enumerate(flags) if f == "--space"]
    from_flags = config.resolve(None, env={"JOB_TUNE_SPACE": " ".join(entries)}, cls=config.SearchConfig)
    assert all(from_flags.space[k] == search.space[k] for k in from_flags.space)
    yaml_line = re.search(r"YAML takes the same shape \(`([^`]+)`\)", readme).group(1)
    (tmp_path / "search.yaml").write_text(yaml_line)
    from_yaml = config.resolve(tmp_path / "search.yaml", env={}, cls=config.SearchConfig)
    assert from_yaml.space["lr"] == search.space["lr"]
