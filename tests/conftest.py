"""Shared fixtures: small real image folders on disk, the real CLI (in-process, or in a subprocess where a test needs
a process of its own), a private cache."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from job.config import ENV_NOT_SETTINGS
from tests.s3server import NoServer, S3Server
from tests.s3server import s3_server as start_s3_server

# The fastest configuration, for tests of wiring: job's few-layer CNN at 32 px (trains in milliseconds).
TINY = ["--model", "tiny_cnn", "--weights", "none", "--image-size", "32", "--batch-size", "16"]
# A real torchvision model at 32 px, no pretrained weights: where a test needs a model that really learns.
RESNET = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "16"]


def pytest_collection_modifyitems(items):
    """A test that needs the S3 server is slow (the server starts in seconds, each upload is a real request)."""
    for item in items:
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture
def short_tmp() -> Iterator:
    """short_tmp(name): a new folder /tmp/job-NAME-XXXX, deleted after the test. For Ray's temporary files: its socket
    paths must stay under 108 characters, which a pytest tmp_path does not promise."""
    made = []

    def make(name: str) -> Path:
        made.append(Path(tempfile.mkdtemp(prefix=f"job-{name}-", dir="/tmp")))
        return made[-1]

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def default_sigint():
    """Ctrl-C raises KeyboardInterrupt for the test, whatever this process inherited (SIG_IGN under nohup or `&`)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """A shared, read-only DIR/<class>/* folder: 3 classes x 12 images."""
    return make_folder(tmp_path_factory.mktemp("images"))


@contextlib.contextmanager
def _environment(env: dict | None, cwd: Path | None):
    saved, here = dict(os.environ), os.getcwd()
    os.environ.update(env or {})
    if cwd:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved)


def run_job(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real CLI's entry point, `job.cli.main(argv)`, called in this process with its output captured (as
    fastapi-cli's tests do). `job tune` starts Ray, which keeps state in its process: it runs as a subprocess."""
    if args and args[0] == "tune":
        return run_job_process(*args, env=env, timeout=timeout, cwd=cwd)
    from job import cli

    out, err = io.StringIO(), io.StringIO()
    argv = list(map(str, args))
    with _environment(env, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse: usage errors, --help
            code = e.code if isinstance(e.code, int) else 2
    return subprocess.CompletedProcess(["job", *argv], code, out.getvalue(), err.getvalue())


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a child of a shell that ignores SIGINT (nohup, `&`) inherits that


def run_job_process(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed command in a process of its own, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "job", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd, preexec_fn=_default_sigint)


def start_job(args: list[str], env: dict | None = None, cwd: Path | None = None, **kwargs) -> subprocess.Popen:
    """`job ARGS` started in its own process group, with Ctrl-C's default disposition, stderr piped."""
    return subprocess.Popen([sys.executable, "-m", "job", *map(str, args)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
                            preexec_fn=_default_sigint, **kwargs)


def saved_statuses(experiment: str, env: dict | None = None) -> dict[str, str]:
    """{trial id: status} in the newest experiment state Ray has saved under `experiment` (a folder or s3://)."""
    import json

    from job.storage import Location

    with _environment(env, None):
        where = Location.parse(experiment)
        if where.remote:
            names = sorted(k for k in where.store.listing(where.url) if k.startswith("experiment_state-"))
            state = where.read_json(names[-1]) if names else None
        else:
            names = sorted(where.path.glob("experiment_state-*.json"))
            state = json.loads(names[-1].read_text()) if names else None
    if not state:
        return {}
    trials = [json.loads(entry[0]) for entry in state["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def kill_after_trials_end(args: list[str], count: int, env: dict | None = None, cwd: Path | None = None) -> list[str]:
    """Run `job ARGS` until `count` trials have ended and Ray's saved experiment state says so, then SIGKILL its whole
    process group, as when a pod dies. Returns the ids of the trials that ended, read from the progress lines
    ('[  21s] c9d7ccb4 completed | ...')."""
    experiment = f"{args[args.index('--storage') + 1]}/job-tune"
    proc = start_job(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    ended, deadline = [], time.monotonic() + 400
    for line in proc.stderr:
        m = re.match(r"\[\s*\d+s\] (\w+) (completed|stopped after)", line)
        if m:
            ended.append(m.group(1))
        if len(ended) >= count or time.monotonic() > deadline:
            break
    # wait on the event itself: the experiment state on storage records them (Ray snapshots it every second)
    while time.monotonic() < deadline and proc.poll() is None:
        statuses = saved_statuses(experiment, env)
        if all(statuses.get(t) == "TERMINATED" for t in ended[:count]):
            break
        time.sleep(0.2)  # polling interval while waiting for that file, not a guess at how long it takes
    kill_session(proc)
    assert len(ended) >= count, "the search did not get far enough before the deadline"
    return ended


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the session `proc` leads (see start_job), as when its pod dies, and wait until they
    are gone. Killing its process group is not enough: Ray puts each trial's worker in a process group of its own,
    and a worker left running goes on writing into the pod's folders and storage."""
    def members() -> list[int]:
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state, _, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
            except (OSError, ValueError):
                continue  # gone meanwhile
            if int(session) == proc.pid and state != "Z":
                pids.append(int(stat.parent.name))
        return pids

    deadline = time.monotonic() + 60
    while (pids := members()) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)  # a killed process leaves /proc once the kernel has torn it down
    proc.wait()
    assert not members(), "processes of the killed job outlived SIGKILL"


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


def chromium(page: Path, out: Path) -> tuple[str, "np.ndarray"]:
    """`page` opened by headless Chromium (Debian's package, `.ci/run` installs it): (the DOM as the browser built
    it, a full-page screenshot as an RGB array)."""
    from PIL import Image

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed (apt-get install chromium)"
    flags = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={out / 'chromium-profile'}", "--window-size=1200,4000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = out / "screenshot.png"
    r = subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    return dom.stdout, np.asarray(Image.open(shot).convert("RGB"))


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB file system: a disk that is full after the first large write."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (CI runs as root): the full-disk tests did not run")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)
