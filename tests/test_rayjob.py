"""KubeRay's RayJob path without Kubernetes: a Ray head and a worker started with `ray start` from this installation
(as KubeRay's pods start them, the settings and the S3 credentials in their environment), then the RayJob
manifest's own entrypoint submitted through Ray's job server with `ray job submit`, as KubeRay's submitter does."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rayjob() -> dict:
    return next(d for d in yaml.safe_load_all((ROOT / "k8s/rayjob.yaml").read_text()) if d and d["kind"] == "RayJob")


def settings() -> dict[str, str]:
    return next(d for d in yaml.safe_load_all((ROOT / "k8s/settings.yaml").read_text())
                if d and d["kind"] == "ConfigMap")["data"]


@pytest.fixture
def ray_cluster(s3_server, images, short_tmp):
    """A head (no CPUs for trials, its job server on loopback) and one worker node, both `ray start --block` in
    process groups of their own; the pods' environment: settings.yaml's ConfigMap with its S3 endpoint, bucket and
    sizes swapped for the test server's and small ones, and the credentials of the Secret."""
    home = short_tmp("rj")
    bucket = s3_server.bucket()
    client = s3_server.client()
    for f in images.rglob("*.png"):
        client.upload_file(str(f), bucket, f"data/{f.relative_to(images).as_posix()}")
    entry = shlex.split(rayjob()["spec"]["entrypoint"])
    output = entry[entry.index("--output") + 1]
    env = {**os.environ, **settings(), **s3_server.env, "RAY_TMPDIR": str(home), "RAY_USAGE_STATS_ENABLED": "0",
           "JOB_CACHE": str(home / "cache"), "AWS_ENDPOINT_URL_S3": s3_server.endpoint,
           "JOB_TUNE_STORAGE": f"s3://{bucket}/ray", "JOB_DATA": f"s3://{bucket}/data",
           "JOB_TUNE_NUM_SAMPLES": "2", "JOB_EPOCHS": "1", "JOB_MODEL": "tiny_cnn", "JOB_WEIGHTS": "none",
           "JOB_IMAGE_SIZE": "32", "JOB_BATCH_SIZE": "16"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `job` on the PATH, as in the image
    env.pop("RAY_ADDRESS", None)
    # Ray's token authentication, on as a secured cluster has it: one token for the nodes, the submitter and the driver
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    gcs, dashboard = _free_port(), _free_port()
    head_params = rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    started = []

    def start(args):
        p = subprocess.Popen([RAY, "start", "--block", *args], env=env, cwd=home, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(p)

    start(["--head", f"--port={gcs}", f"--num-cpus={head_params['num-cpus']}", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats"])
    address = f"http://127.0.0.1:{dashboard}"
    try:
        for _ in range(120):  # the job server answers
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
                break
            except urllib.error.HTTPError:  # it answers (401 when Ray's token authentication is on)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("Ray's job server did not start: is ray[default] installed?")
        start([f"--address=127.0.0.1:{gcs}", "--num-cpus=2"])
        yield address, env, bucket, output
    finally:
        for p in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in started:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def test_the_rayjob_entrypoint_runs_through_ray_job_submit(ray_cluster, s3_server):
    address, env, bucket, output = ray_cluster
    entrypoint = rayjob()["spec"]["entrypoint"]
    # the manifest's output bucket is the test server's new one: the rest of the entrypoint as written
    entrypoint = entrypoint.replace(output, output.replace("s3://job/", f"s3://{bucket}/", 1))
    r = subprocess.run([RAY, "job", "submit", f"--address={address}", "--", *shlex.split(entrypoint)], env=env,
                       capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "job tune: done" in log and "preparing the data set on a worker node" in log, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    prefix = output.replace("s3://job/", "", 1)
    manifest = s3_server.client().get_object(Bucket=bucket, Key=f"{prefix}/best/bundle.json")["Body"].read()
    assert json.loads(manifest)["model"] == "tiny_cnn"
    assert s3_server.secret_key not in log and env["RAY_AUTH_TOKEN"] not in log
