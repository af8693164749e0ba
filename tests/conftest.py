"""Shared fixtures: small real image folders on disk, the real CLI in a subprocess, a private cache."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from job.config import ENV_NOT_SETTINGS
from tests.s3server import NoServer, S3Server
from tests.s3server import s3_server as start_s3_server

# A tiny, fast configuration for tests: a real torchvision model at 32 px, no pretrained weights needed.
TINY = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "16"]


def pattern(label: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """An RGB image whose class is visible: stripes of a class-specific orientation and colour, plus noise."""
    y, x = np.mgrid[0:size, 0:size]
    period = 6 + rng.integers(0, 3)
    waves = [np.sin(x / period * 2 * np.pi), np.sin(y / period * 2 * np.pi), np.sin((x + y) / period * 2 * np.pi)]
    base = waves[label % 3] > 0
    colour = np.array([[255, 60, 60], [60, 255, 60], [60, 60, 255], [230, 230, 40]][label % 4])
    img = base[..., None] * colour + rng.normal(0, 25, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root: Path, classes: int = 3, per_class: int = 12, split: bool = False, seed: int = 0,
                suffixes: tuple[str, ...] = (".png",)) -> Path:
    """DIR/<class>/*.png (or DIR/train|val/<class>/*) with learnable class patterns."""
    rng = np.random.default_rng(seed)
    parts = [("train", per_class), ("val", max(2, per_class // 3))] if split else [("", per_class)]
    for part, n in parts:
        for c in range(classes):
            folder = root / part / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(pattern(c, rng)).save(folder / f"img_{i:03d}{suffixes[i % len(suffixes)]}")
    return root


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _private_cache(cache, monkeypatch):
    monkeypatch.setenv("JOB_CACHE", str(cache))
    for key in list(os.environ):
        if key.startswith("JOB_") and not key.startswith(ENV_NOT_SETTINGS):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """A shared, read-only DIR/<class>/* folder: 3 classes x 12 images."""
    return make_folder(tmp_path_factory.mktemp("images"))


def run_job(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real CLI, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "job", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)


def kill_after_trials_end(args: list[str], count: int, env: dict | None = None, cwd: Path | None = None) -> list[str]:
    """Run `job ARGS` until `count` trials have ended, then SIGKILL its whole process group, as when a pod dies.
    Returns the ids of the trials that ended, read from the progress lines ('[  21s] c9d7ccb4 completed | ...')."""
    proc = subprocess.Popen([sys.executable, "-m", "job", *map(str, args)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})}, cwd=cwd,
                            start_new_session=True)
    ended, deadline = [], time.monotonic() + 400
    for line in proc.stderr:
        m = re.match(r"\[\s*\d+s\] (\w+) (completed|stopped after)", line)
        if m:
            ended.append(m.group(1))
        if len(ended) >= count or time.monotonic() > deadline:
            break
    time.sleep(2)  # let the experiment snapshot (every second) record them
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(ended) >= count, "the search did not get far enough before the deadline"
    return ended


def assert_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """A known error: one line on stderr naming the problem, the given exit code, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if re.match(r"job( \w+)?: error:", line)]  # ours or argparse's
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    try:
        with start_s3_server(tmp_path_factory.mktemp("seaweedfs")) as server:
            yield server
    except NoServer as e:
        pytest.fail(str(e))
