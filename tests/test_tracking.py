"""Tracking where users already look: `tensorboard --logdir runs` (the real TensorBoard server, through its HTTP API)
shows a `job train` run and every trial of a `job tune` search on the same tags, with each epoch's values."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import TINY, run_job

pytestmark = pytest.mark.slow  # a real search and a real TensorBoard server


def tensorboard(logdir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir", str(logdir),
                               "--port", str(port), "--host", "127.0.0.1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def get(path: str, **query):
        url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
        return json.loads(urllib.request.urlopen(url, timeout=30).read())

    for _ in range(150):
        try:
            get("/data/runs")
            break
        except OSError:
            time.sleep(0.2)
    return server, get


def test_tensorboard_shows_a_train_run_and_every_trial_with_their_epochs(images, tmp_path):
    runs = tmp_path / "runs"
    r = run_job("train", "--data", images, *TINY, "--epochs", "2", "--output", runs / "train", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_job("tune", "--data", images, *TINY, "--epochs", "2", "--num-samples", "2", "--storage", runs / "ray",
                "--output", runs / "tune", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    trials = json.loads((runs / "tune" / "trials.json").read_text())
    history = json.loads((runs / "train" / "history.json").read_text())
    server, get = tensorboard(runs)
    try:
        time.sleep(2)  # TensorBoard loads the event files in the background after it starts
        tags = get("/data/plugin/scalars/tags")
        assert "train/tensorboard" in tags
        by_trial = {run: t for run in tags for t in trials if t["trial_id"] in run}
        assert len(by_trial) == 2, sorted(tags)
        assert all(not tag.startswith("ray/") for run in tags for tag in tags[run])  # one tag scheme, job's
        assert {"job/val_acc", "job/lr", "job/images_per_s", "job/train_loss"} <= set(tags["train/tensorboard"])
        values = get("/data/plugin/scalars/scalars", run="train/tensorboard", tag="job/val_acc")
        assert [(step, pytest.approx(v, abs=1e-6)) for _, step, v in values] == [(h["epoch"], h["val_acc"]) for h in history]
        for run, t in by_trial.items():
            values = get("/data/plugin/scalars/scalars", run=run, tag="job/val_acc")
            assert [step for _, step, _ in values] == [h["epoch"] for h in t["history"]]
    finally:
        server.terminate()
        server.wait(10)
