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


def test_mlflow_holds_a_train_run_and_a_search_with_a_child_run_per_trial(images, tmp_path):
    """tracking = mlflow, local by default: runs/mlflow.db (SQLite) and runs/mlartifacts beside the outputs."""
    from mlflow.tracking import MlflowClient

    runs = tmp_path / "runs"
    common = ["--data", images, *TINY, "--epochs", "2", "--set", "tracking=mlflow"]
    r = run_job("train", *common, "--output", runs / "train", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "mlflow" not in r.stderr.lower()  # MLflow's own set-up notes stay quiet
    r = run_job("tune", *common, "--num-samples", "2", "--storage", runs / "ray", "--output", runs / "tune", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert sorted(p.name for p in runs.iterdir()) == ["mlartifacts", "mlflow.db", "ray", "train", "tune"]
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "job"]
    found = client.search_runs([experiment.experiment_id])
    train = next(run for run in found if run.info.run_name == str(runs / "train"))
    history = json.loads((runs / "train" / "history.json").read_text())
    assert [(m.step, m.value) for m in client.get_metric_history(train.info.run_id, "val_acc")] == \
        [(h["epoch"], pytest.approx(h["val_acc"])) for h in history]
    assert train.data.params["model"] == "tiny_cnn" and train.info.status == "FINISHED"
    assert "bundle/bundle.json" in [a.path for a in client.list_artifacts(train.info.run_id, "bundle")]
    search = next(run for run in found if run.info.run_name.startswith("tune "))
    children = [run for run in found if run.data.tags.get("mlflow.parentRunId") == search.info.run_id]
    assert sorted(c.info.run_name for c in children) == sorted(t["trial_id"] for t in result["trials"])
    for child in children:
        trial = next(t for t in result["trials"] if t["trial_id"] == child.info.run_name)
        assert len(client.get_metric_history(child.info.run_id, "val_acc")) == trial["epochs"]
        assert float(child.data.params["lr"]) == pytest.approx(trial["lr"])
    assert search.data.tags["best_trial"] == result["best"]["trial_id"] and search.info.status == "FINISHED"
    assert "bundle/bundle.json" in [a.path for a in client.list_artifacts(search.info.run_id, "bundle")]
