"""Credentials that expire while a search runs: a loopback container-credentials endpoint (what ECS and EKS Pod
Identity give a pod through AWS_CONTAINER_CREDENTIALS_FULL_URI) hands out new keys every few seconds, each made on
the S3 server and revoked there soon after, as role credentials expire. `job tune` must keep reading and writing
its experiment and output with whatever keys are current, in the driver (boto3, pyarrow) and in Ray's workers."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from datetime import datetime, timezone

import pytest

pytestmark = pytest.mark.slow

from tests.conftest import TINY, run_job


class RotatingKeys:
    """Keys made on SeaweedFS's IAM (`weed shell s3.configure`) every `every` seconds and served as container
    credentials, each said to expire `lifetime` seconds after it is made and revoked on the server then. Clients
    refresh credentials that expire within minutes at once, so every request should carry the newest key."""

    # Short enough for two keys to be revoked within a search of TINY trials (17.6 s from the command to its end on
    # the CI machine once the search started Ray at once; 4 s and 10 s were longer than that search).
    def __init__(self, server, every: float = 2.0, lifetime: float = 5.0):
        self.server, self.every, self.lifetime = server, every, lifetime
        self.keys: list[tuple[str, str, str, float]] = []  # (user, access key, secret, made at)
        self.revoked, self.served = 0, 0
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self._new_key()
        handler = self._handler()
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v2/credentials"
        self.threads = [threading.Thread(target=self.http.serve_forever, daemon=True),
                        threading.Thread(target=self._rotate, daemon=True)]
        for t in self.threads:
            t.start()

    def _new_key(self) -> None:
        user, key, secret = f"rot{uuid.uuid4().hex[:8]}", f"ROT{uuid.uuid4().hex[:17].upper()}", uuid.uuid4().hex
        self.server.shell(f"s3.configure -user={user} -access_key={key} -secret_key={secret} "
                          "-actions=Read,Write,List,Tagging,Admin -apply")
        with self.lock:
            self.keys.append((user, key, secret, time.time()))

    def _rotate(self) -> None:
        while not self.stopped.wait(self.every):
            self._new_key()
            with self.lock:
                expired = [k for k in self.keys[:-1] if time.time() - k[3] > self.lifetime]
            for user, key, _, _ in expired:
                self.server.shell(f"s3.configure -user={user} -access_key={key} -delete -apply")
                with self.lock:
                    self.keys.remove(next(k for k in self.keys if k[1] == key))
                    self.revoked += 1

    def _handler(self):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with outer.lock:
                    _, key, secret, made = outer.keys[-1]
                    outer.served += 1
                expires = datetime.fromtimestamp(made + outer.lifetime, timezone.utc)
                body = json.dumps({"AccessKeyId": key, "SecretAccessKey": secret, "Token": "",
                                   "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def close(self) -> None:
        self.stopped.set()
        self.http.shutdown()
        for t in self.threads:
            t.join(timeout=30)


@pytest.fixture
def rotating(s3_server):
    if not s3_server.master:
        pytest.skip("rotating keys need the local SeaweedFS's IAM (JOB_TEST_S3_ENDPOINT names another server)")
    keys = RotatingKeys(s3_server)
    try:
        yield keys
    finally:
        keys.close()


def test_a_search_outlives_its_credentials(s3_server, rotating, images):
    bucket = s3_server.bucket()
    env = {k: v for k, v in s3_server.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = rotating.url  # and no keys: the role is all there is
    started = time.time()
    r = run_job("tune", "--data", images, *TINY, "--epochs", "4", "--num-samples", "4", "--set", "startup_trials=2",
                "--storage", f"s3://{bucket}/ray", "--output", f"s3://{bucket}/best", "--json", env=env)
    took = time.time() - started
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["best"]["val_acc"] is not None
    # keys were made and revoked while the search ran, and job's processes asked for new ones as they expired
    assert rotating.revoked >= 2 and took > rotating.lifetime + 2 * rotating.every, (rotating.revoked, took)
    assert rotating.served >= 4, rotating.served
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert "best/best/bundle.json" in keys and "ray/job-tune/job-tune.json" in keys
    for _, key, secret, _ in rotating.keys:
        assert secret not in r.stdout + r.stderr
