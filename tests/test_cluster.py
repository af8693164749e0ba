"""`job tune` on a Ray cluster of several nodes: real raylets on this machine (`ray.cluster_utils.Cluster`), the
experiment, the data and the output on the test S3 server, `job tune` joined through RAY_ADDRESS as a KubeRay
driver is. Nodes are removed while trials run on them; GPUs are advertised by nodes that have none."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

from tests.conftest import RESNET, TINY, make_folder, start_job

SLOW = [*RESNET, "--epochs", "8", "--set", "startup_trials=2"]  # epochs of a second or more: time to lose a node


@pytest.fixture
def cluster(s3_server, monkeypatch, short_tmp):
    """A head without CPUs (KubeRay's head runs the driver only) and what the test adds. Every node has the S3
    credentials in its environment, as KubeRay's pods have them from their Secret."""
    from ray.cluster_utils import Cluster

    home = short_tmp("cl")
    for key, value in {**s3_server.env, "RAY_TMPDIR": str(home), "RAY_USAGE_STATS_ENABLED": "0"}.items():
        monkeypatch.setenv(key, value)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        yield c, home
    finally:
        c.shutdown()


def upload(s3_server, folder: Path) -> tuple[str, str]:
    """A folder of images as an s3:// data set in a new bucket: (bucket, url)."""
    bucket = s3_server.bucket()
    client = s3_server.client()
    for f in folder.rglob("*.png"):
        client.upload_file(str(f), bucket, f"data/{f.relative_to(folder).as_posix()}")
    return bucket, f"s3://{bucket}/data"


@pytest.fixture(scope="module")
def s3_data(s3_server, images):
    return upload(s3_server, images)


@pytest.fixture(scope="module")
def s3_slow_data(s3_server, tmp_path_factory):
    """Enough images for epochs of a second or more (with SLOW): time for a test to act while trials run."""
    return upload(s3_server, make_folder(tmp_path_factory.mktemp("slow-data"), classes=3, per_class=40))


def start_tune(c, home: Path, args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`job tune ARGS` joined to the cluster as KubeRay's driver is (RAY_ADDRESS), with a cache of its own."""
    return start_job(["tune", *args], env={"RAY_ADDRESS": c.address, "JOB_CACHE": str(home / "cache"), **(env or {})},
                     cwd=home, stdout=subprocess.PIPE)


def _trials(node) -> set[str]:
    """The ids of the trials whose workers a node holds: Ray moves a trial's worker into the trial's folder
    (trial_<number>_<id>), also when it hands the worker on to the next trial. (Not its process title: a function
    trainable's worker is `ray::ImplicitFunc.train` only while Ray waits for its next result.)"""
    import psutil

    found = set()
    try:
        for w in psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True):
            if " ".join(w.cmdline()).startswith("ray::ImplicitFunc"):
                found.add(Path(w.cwd()).name.rsplit("_", 1)[-1])
    except psutil.Error:
        pass
    return found


def test_a_search_survives_losing_nodes_and_says_so_in_one_line(cluster, s3_server, s3_slow_data):
    """Two nodes lost, in whichever order the search gives: one as ASHA stops a trial and its worker is handed the
    next one (if that is the node lost, Ray ends the next trial before it runs: its settings run again in a new
    trial), one while a trial with checkpoints trains on it (retried from its latest checkpoint, not from
    scratch). Each is set off by a progress line that every search has: a stop (ASHA stops some of 6 trials over
    lr 1e-4 to 1e-1 with SGD) and a trial past epoch 2 that is not at a rung (the first to reach a rung goes on)."""
    c, home = cluster
    bucket, data = s3_slow_data
    nodes = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    # SGD gives trials of unequal worth, so ASHA stops some (with AdamW's defaults every trial reached val_acc 1.0 on
    # these images, and none was stopped); 6 trials, so that trials are still waiting when the first is stopped;
    # every trial from the sampler, as when this was measured (not the training settings first)
    p = start_tune(c, home, ["--data", data, *SLOW, "--set", "optimizer=sgd", "--lr-range", "1e-4,1e-1",
                             "--set", "enqueue_default=false",
                             "--num-samples", "6", "--storage", f"s3://{bucket}/ray", "--output", f"s3://{bucket}/best"])
    # the nodes removed as a worker is handed on, and the trial whose node was removed while it trained
    lines, epochs, handed, trained = [], {}, None, None
    for line in p.stderr:
        lines.append(line)
        reached = [(trial, int(epoch)) for trial, epoch in re.findall(r"\] (\w+) .* epoch (\d)/8 ", line)]
        epochs.update(reached)
        for trial in re.findall(r"\] (\w+) (?:completed|stopped|ended|errored)", line):
            epochs.pop(trial, None)
        node = None
        if handed is None and " stopped after epoch " in line:
            # the node of the stopped trial's worker, or of the next trial it is being handed (none has an epoch yet)
            held = {n: _trials(n) for n in nodes}
            node = handed = next((n for n in nodes if held[n] and not held[n] & set(epochs)), None)
        for trial, epoch in reached:
            # not at one of ASHA's rungs (grace_period 1, reduction_factor 2) nor the last epoch: the trial goes on
            if trained is None and node is None and epoch not in (1, 2, 4, 8):
                node = next((n for n in nodes if trial in _trials(n)), None)
                trained = trial if node else None
        if node is None:
            continue
        c.remove_node(node)
        nodes.remove(node)
        nodes.append(c.add_node(num_cpus=1))  # the replacement pod
    out, _ = p.communicate(timeout=600)
    log = "".join(lines)
    assert p.returncode == 0, log[-4000:]
    assert handed and trained, log[-4000:]
    assert "Traceback" not in log and "ActorDiedError" not in log and "Warning" not in log, log[-4000:]
    lost = [line for line in lines if " lost on node " in line]
    assert all(re.search(r"lost on node [\d.]+ \(its node died\): retried from ", line) for line in lost), log[-4000:]
    assert len(lost) == 2, log[-4000:]
    assert any(re.search(rf"\] {trained} lost on node .* retried from its epoch [2-7] checkpoint", line)
               for line in lost), log[-4000:]
    replaced = re.findall(r"\] (\w+) ended by Ray before its retry \(its node died\): its settings run again in a new "
                          r"trial \| .* 0 errored", log)
    assert not replaced or any(f"{replaced[0]} lost on node" in line and "retried from the start" in line
                               for line in lost), log[-4000:]

    client = s3_server.client()
    trials = json.loads(client.get_object(Bucket=bucket, Key="best/trials.json")["Body"].read())
    assert len(trials) == 6 and all(t["status"] != "errored" for t in trials), trials
    assert not {t["trial_id"] for t in trials} & set(replaced), trials
    for t in trials:  # no trial started again from scratch: each trial's first epoch reported once
        assert sum(f"{t['trial_id']} " in line and " epoch 1/8 " in line for line in lines) == 1, (t, log[-4000:])
        assert t["epochs"] == 8 or t["status"] == "stopped early (ASHA)", t
        assert [h["epoch"] for h in t["history"]] == list(range(1, t["epochs"] + 1)) or any(
            t["trial_id"] in line for line in lost), t
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "best/best/bundle.json" in keys and "best/trials.csv" in keys


def test_the_driver_on_a_cpu_less_head_neither_syncs_nor_decodes_the_data(cluster, s3_data):
    """The nodes have their own cache (JOB_CACHE in their environment, as a worker pod's volume); the driver's
    stays empty: a worker node syncs and decodes the data, once, and its trials use that."""
    c, home = cluster
    bucket, data = s3_data
    os.environ["JOB_CACHE"] = str(home / "node-cache")  # the raylet started next, and its workers, take this one
    try:
        c.add_node(num_cpus=1)
    finally:
        del os.environ["JOB_CACHE"]
    c.wait_for_nodes()
    p = start_tune(c, home, ["--data", data, *TINY, "--epochs", "1", "--num-samples", "1", "--storage",
                             f"s3://{bucket}/ray-2", "--output", f"s3://{bucket}/best-2"])
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert "preparing the data set on a worker node" in err
    driver_cache = home / "cache"
    assert not (driver_cache / "prepared").exists() and not list(driver_cache.glob("s3/**/*.png")), \
        sorted(str(p) for p in driver_cache.rglob("*"))[:20]
    assert len(list((home / "node-cache" / "prepared").glob("*.npy"))) == 2  # train and val, decoded once


def test_bad_data_fails_before_any_trial_with_the_workers_message(cluster, s3_server):
    c, home = cluster
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    bucket = s3_server.bucket()
    s3_server.client().put_object(Bucket=bucket, Key="data/only/one.png", Body=b"not a png")
    p = start_tune(c, home, ["--data", f"s3://{bucket}/data", *TINY, "--epochs", "1", "--num-samples", "1",
                             "--storage", f"s3://{bucket}/ray", "--output", f"s3://{bucket}/best"])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "RayTaskError" not in err, err[-3000:]
    assert re.search(r"^job: error: .*\(on Ray node [\d.]+, in its environment\)$", err, re.M), err[-3000:]
    assert " epoch " not in err  # no trial ran


def test_a_worker_node_without_s3_credentials_is_named_before_any_trial(cluster, s3_server, s3_data, monkeypatch):
    """The driver has the keys, the only worker node does not (a pod without the Secret): one line naming the node."""
    c, home = cluster
    bucket, data = s3_data
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)  # for the raylet started next
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    p = start_tune(c, home, ["--data", data, *TINY, "--epochs", "1", "--num-samples", "1", "--storage",
                             f"s3://{bucket}/ray-6", "--output", f"s3://{bucket}/best-6"], env=s3_server.env)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert re.search(r"^job: error: no S3 credentials .*\(on Ray node [\d.]+, in its environment\)$", err, re.M), err


def test_half_a_gpu_per_trial_packs_two_trials_on_one_gpu(cluster, s3_slow_data):
    """A node that advertises one GPU (it has none: --device cpu trains on its CPUs): two trials share it at once."""
    c, home = cluster
    bucket, data = s3_slow_data
    c.add_node(num_cpus=2, num_gpus=1)
    c.wait_for_nodes()
    p = start_tune(c, home, ["--data", data, *SLOW, "--epochs", "3", "--num-samples", "2", "--gpus-per-trial", "0.5",
                             "--device", "cpu", "--storage", f"s3://{bucket}/ray-3", "--output", f"s3://{bucket}/best-3"])
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert "2 trials, 2 at a time, 1 CPU + 0.5 GPU each" in err, err[-3000:]
    assert re.search(r"\| 2 running,", err), err[-3000:]  # both at once


def test_more_gpus_per_trial_than_one_are_refused_before_ray_starts(cluster, s3_data):
    c, home = cluster
    bucket, data = s3_data
    p = start_tune(c, home, ["--data", data, *TINY, "--gpus-per-trial", "2", "--storage", f"s3://{bucket}/ray-4",
                             "--output", f"s3://{bucket}/best-4"])
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "gpus_per_trial = 2" in err and "Traceback" not in err, err[-3000:]


def test_a_trial_given_a_gpu_that_torch_cannot_use_fails_clearly(cluster, s3_data):
    c, home = cluster
    bucket, data = s3_data
    c.add_node(num_cpus=1, num_gpus=1)  # a GPU Ray counts and torch cannot see (no driver on the node)
    c.wait_for_nodes()
    p = start_tune(c, home, ["--data", data, *TINY, "--epochs", "1", "--num-samples", "1", "--set", "max_failures=0",
                             "--storage", f"s3://{bucket}/ray-5", "--output", f"s3://{bucket}/best-5"])
    _, err = p.communicate(timeout=600)
    assert p.returncode == 1, err[-3000:]
    assert "torch sees no CUDA device" in err and "--device cpu" in err and "Traceback" not in err, err[-3000:]
