"""The library API (`import job`): the README's example runs as written, and the caller's process is left as found."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import job
from tests.conftest import pattern

ROOT = Path(__file__).resolve().parent.parent


def photos(root: Path) -> Path:
    """photos/cat/1.jpg ... and photos/dog/..., as the README's example expects."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("cat", "dog")):
        (root / "photos" / name).mkdir(parents=True)
        for i in range(1, 9):
            Image.fromarray(pattern(label, rng)).save(root / "photos" / name / f"{i}.jpg")
    return root / "photos"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_train_load_predict_evaluate_and_the_callers_process_is_untouched(tmp_path, monkeypatch, default_sigint):
    monkeypatch.chdir(tmp_path)
    photos(tmp_path)
    env, handlers = dict(os.environ), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    settings = {"data": "photos/", "epochs": 2, "model": "tiny_cnn", "image_size": 32}
    result = job.train(settings, "runs/photos")
    assert isinstance(result, job.Result) and len(result.history) == 2 and result.bundle.endswith("best")
    model = job.load("runs/photos", device="cpu")
    rows = model.predict(["photos/cat/1.jpg", "photos/dog"], top_k=1)
    assert len(rows) == 9 and rows[0]["predictions"][0]["label"] in ("cat", "dog")
    assert model.evaluate("photos/").images == 16
    assert dict(os.environ) == env
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    with pytest.raises(job.BadInput, match="epochs = 0 is out of range"):
        job.train({"data": "photos/", "epochs": 0})
    resumed = job.train({"epochs": 3}, resume="runs/photos/")
    assert resumed.resumed_from == 2 and len(resumed.history) == 3


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path, short_tmp):
    """The example itself (EfficientNet-Lite0, a real Ray Tune search), in a fresh interpreter as a user runs it."""
    photos(tmp_path)
    r = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, capture_output=True, text=True,
                       timeout=900, env={**os.environ, "RAY_TMPDIR": str(short_tmp("api"))})
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and lines[0].split()[1].endswith("runs/photos/best"), lines
    assert lines[3].endswith(" 4"), lines  # four trials
