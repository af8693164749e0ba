"""Tracking where users already look: `tensorboard --logdir runs` (the real TensorBoard server, through its HTTP API)
shows a `job train` run and every trial of a `job tune` search on the same tags, with each epoch's values."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TINY, run_job

pytestmark = pytest.mark.slow  # a real search and a real TensorBoard server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorboard(logdir):
    port = free_port()
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


SERVER_VENV = Path(__file__).resolve().parent.parent / ".venv-mlflow-server"  # made by .ci/run


def mlflow_server(folder: Path):
    """A real MLflow tracking server (the full `mlflow` package, in a venv of its own beside job's mlflow-skinny),
    storing runs in SQLite and serving artifacts itself, as a team's server does."""
    mlflow = Path(os.environ.get("JOB_TEST_MLFLOW_SERVER", SERVER_VENV / "bin" / "mlflow"))
    if not mlflow.is_file():
        pytest.fail(f"no MLflow server at {mlflow}: `python3 -m venv .venv-mlflow-server && "
                    ".venv-mlflow-server/bin/pip install mlflow==3.17.2` (as .ci/run does)")
    port = free_port()
    with open(folder / "server.log", "w") as log:  # the server holds its own copy of the descriptor
        server = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers",
                                   "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                                   "--artifacts-destination", str(folder / "artifacts")],
                                  stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=5)
            return server, uri
        except OSError:
            assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
            time.sleep(0.2)
    server.kill()
    pytest.fail(f"the MLflow server did not answer within a minute: {(folder / 'server.log').read_text()[-3000:]}")


def test_a_tracking_server_holds_the_runs_and_its_addresses_never_reach_the_json_on_stdout(images, tmp_path):
    """tracking_uri = http://...: MLflow prints each finished run's address on the server to stdout, which holds
    `--json`'s result; job sends those lines to stderr."""
    from mlflow.tracking import MlflowClient

    server, uri = mlflow_server(tmp_path)
    try:
        common = ["--data", images, *TINY, "--epochs", "1", "--set", "tracking=mlflow", "--set", f"tracking_uri={uri}"]
        train = run_job("train", *common, "--output", tmp_path / "train", "--json")
        assert train.returncode == 0, train.stderr[-3000:]
        tune = run_job("tune", *common, "--num-samples", "2", "--storage", tmp_path / "ray", "--output",
                       tmp_path / "tune", "--json")
        assert tune.returncode == 0, tune.stderr[-3000:]
        trained, searched = json.loads(train.stdout), json.loads(tune.stdout)  # nothing but the JSON
        assert f"View run {tmp_path / 'train'} at: {uri}/" in train.stderr
        assert tune.stderr.count("View run") == 3  # the search and its two trials
        client = MlflowClient(uri)
        found = client.search_runs([client.get_experiment_by_name("job").experiment_id])
        assert sorted(run.info.status for run in found) == ["FINISHED"] * 4
        run = next(run for run in found if run.info.run_name == str(tmp_path / "train"))
        assert run.data.metrics["val_acc"] == pytest.approx(trained["best"]["val_acc"])  # one epoch: the last is the best
        assert "bundle/bundle.json" in [a.path for a in client.list_artifacts(run.info.run_id, "bundle")]
        assert {r.info.run_name for r in found} >= {t["trial_id"] for t in searched["trials"]}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
