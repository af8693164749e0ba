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
