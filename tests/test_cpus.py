"""cpus.py: the CPUs a process may use in a container, how a search shares a cluster among its trials, and how a
process that runs models is set up."""

import os
import subprocess
import sys

import pytest

from job import cpus
from job.config import SearchConfig
from job.errors import BadInput


def test_cpu_count_follows_the_container_limit(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: 1.5 CPUs
    assert cpus.quota(tmp_path) == 1.5 and cpus.available(tmp_path) == min(2, cpus.available(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    assert cpus.quota(v1) == 0.5 and cpus.available(v1) == 1


@pytest.mark.parametrize("cpu, gpu, settings, device, expected", [
    (2, 0, {}, "auto", ({"cpu": 1, "gpu": 0.0}, 2)),  # two trials of one CPU each on 2 cores
    (16, 0, {"num_samples": 8}, "auto", ({"cpu": 4, "gpu": 0.0}, 4)),
    (16, 2, {}, "auto", ({"cpu": 8, "gpu": 1.0}, 2)),  # one trial per GPU, the CPUs shared out
    (16, 2, {"gpus_per_trial": 0.5}, "auto", ({"cpu": 4, "gpu": 0.5}, 4)),  # two trials per GPU
    (16, 2, {}, "cpu", ({"cpu": 4, "gpu": 0.0}, 4)),  # --device cpu leaves the GPUs alone
    (4, 0, {"max_concurrent": 1}, "auto", ({"cpu": 4, "gpu": 0.0}, 1)),
])
def test_a_search_shares_the_cluster_without_oversubscribing(cpu, gpu, settings, device, expected):
    assert cpus.share(cpu, gpu, SearchConfig(**settings), device) == expected


def test_asking_for_more_than_the_cluster_has_is_refused_by_name():
    with pytest.raises(BadInput, match="gpus_per_trial = 1 but the Ray cluster has 0 GPU"):
        cpus.share(4, 0, SearchConfig(gpus_per_trial=1), "auto")
    with pytest.raises(BadInput, match="cpus_per_trial = 8 but the Ray cluster has 4 CPU"):
        cpus.share(4, 0, SearchConfig(cpus_per_trial=8), "auto")
    with pytest.raises(BadInput, match="gpus_per_trial = 2 is out of range: a trial trains on one GPU"):
        SearchConfig(gpus_per_trial=2)  # before Ray starts: a second GPU would sit idle


FAULTS = """
import resource, sys, threading
from job import cpus
def batches():
    cpus.keep_freed_memory()
    block = b"1" * (64 << 20)  # malloc'ed and written, as a tensor's memory is
    del block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = b"1" * (64 << 20)  # the same again: its pages are faulted in afresh unless freed memory was kept
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
if sys.argv[1] == "thread":  # as Ray Tune runs a trial's function
    threading.Thread(target=batches).start()
else:
    batches()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_kept_for_the_next_batch_unless_the_user_set_malloc():
    # 64 MB is above glibc's mmap ceiling (32 MB): by default each such block is mapped afresh and its 16,384 pages
    # zeroed by the kernel on first touch, which at 224 px cost as much CPU time as the model itself
    assert faults() < 1000
    assert faults(MALLOC_ARENA_MAX="2") > 16000  # the user's own malloc settings: left as they are


def faults(where: str = "main", **env) -> int:
    found = subprocess.run([sys.executable, "-c", FAULTS, where], capture_output=True, text=True, check=True,
                           env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env})
    return int(found.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_trial_training_in_a_thread_keeps_its_freed_memory_through_the_environment_ray_gives_its_workers(
        monkeypatch):
    # a second thread's malloc arena maps a 64 MB block afresh every time, whatever mallopt says: a trial at 224 px
    # took 2.8 s a batch that way, 2.05 s with one arena (cpus.threaded_training_environment)
    assert faults("thread") > 16000
    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    env = cpus.threaded_training_environment()
    assert env and faults("thread", **env) < 1000
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert cpus.threaded_training_environment() == {}  # the user's own malloc settings win
