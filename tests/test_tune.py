"""`job tune` end to end: real Ray Tune searches with Optuna and ASHA, through the real CLI."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # real Ray searches; the fast lane covers tune.py through tests/test_study.py

from job.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED
from tests.conftest import RESNET, TINY, assert_error, kill_after_trials_end, kill_session, make_folder, run_job, start_job

# Small real images, a real model at 32 px that learns at some lr and not at others (so ASHA has something to stop):
# each epoch takes well under a second, so the cost is Ray's.
SEARCH = [*RESNET, "--epochs", "4", "--num-samples", "6", "--lr-range", "0.00001,0.3", "--set", "startup_trials=3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("tune-data"), classes=3, per_class=24)


@pytest.fixture(scope="module")
def searched(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    r = run_job("tune", "--data", data, *SEARCH, "--storage", root / "ray", "--output", root / "out", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    return root, json.loads(r.stdout), r.stderr


def test_search_runs_every_trial_and_asha_stops_some_early(searched):
    root, result, log = searched
    trials = result["trials"]
    assert len(trials) == 6 and len({t["trial_id"] for t in trials}) == 6
    stopped = [t for t in trials if t["status"] == "stopped early (ASHA)"]
    assert stopped and all(t["epochs"] < 4 for t in stopped), trials
    assert any(t["status"] == "completed" and t["epochs"] == 4 for t in trials), trials
    assert all(1e-5 <= t["lr"] <= 0.3 and 1 <= t["step_size"] <= 4 and 0.05 <= t["gamma"] <= 0.9 for t in trials)
    # the space holds the training settings, so they run first (by default)
    assert (trials[0]["lr"], trials[0]["step_size"], trials[0]["gamma"]) == (0.001, 2, 0.1), trials
    assert result["best"]["val_acc"] == max(t["val_acc"] for t in trials if t["val_acc"] is not None)
    assert "Traceback" not in log and "Trial status" not in log  # no Ray tables, no tracebacks


def test_trials_csv_json_and_plot(searched):
    root, result, _ = searched
    out = root / "out"
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["trial_id"] for r in rows] == [t["trial_id"] for t in result["trials"]]
    assert set(rows[0]) >= {"lr", "step_size", "gamma", "epochs", "val_acc", "status", "error"}
    trials = json.loads((out / "trials.json").read_text())
    assert all(len(t["history"]) == t["epochs"] for t in trials)
    assert (out / "trials.png").read_bytes()[:4] == b"\x89PNG"


def test_best_bundle_evaluates_to_the_reported_accuracy(searched, data, tmp_path):
    root, result, _ = searched
    manifest = json.loads((root / "out" / "best" / "bundle.json").read_text())
    best = result["best"]
    assert manifest["config"]["lr"] == best["lr"] and manifest["best_epoch"] == best["best_epoch"]
    assert manifest["metrics"]["val_acc"] == best["val_acc"]
    # evaluate on exactly the validation split the search used: the same seeded split of the same folder
    from job import data as jobdata

    folder = jobdata.scan(data, val_fraction=0.2, seed=0)
    val = tmp_path / "val"
    for f, label in zip(map(Path, folder.val.files), folder.val.labels):
        (val / folder.classes[label]).mkdir(parents=True, exist_ok=True)
        (val / folder.classes[label] / f.name).write_bytes(f.read_bytes())
    r = run_job("evaluate", root / "out", "--data", val, "--output", tmp_path / "ev", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["val_acc"] == pytest.approx(best["val_acc"])


def test_rerun_of_a_finished_search_exports_again_without_training(searched, data):
    root, result, _ = searched
    r = run_job("tune", "--data", data, *SEARCH, "--storage", root / "ray", "--output", root / "out", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads(r.stdout)
    assert again["resumed"] and again["best"]["trial_id"] == result["best"]["trial_id"]
    assert " epoch " not in r.stderr  # no trial reported a new epoch


def test_a_best_trial_whose_checkpoint_is_gone_is_passed_over(searched, data, tmp_path):
    """Storage that lost the best trial's checkpoints still yields a bundle: the best trial that has one, said so."""
    root, result, _ = searched
    shutil.copytree(root / "ray", tmp_path / "ray")
    best = result["best"]["trial_id"]
    for folder in (tmp_path / "ray" / "job-tune").glob(f"trial_*_{best}/checkpoint_*"):
        shutil.rmtree(folder)
    r = run_job("tune", "--data", data, *SEARCH, "--storage", tmp_path / "ray", "--output", tmp_path / "out", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"trial {best} " in r.stderr and "passed over" in r.stderr
    again = json.loads(r.stdout)
    assert again["best"]["trial_id"] != best
    manifest = json.loads((tmp_path / "out" / "best" / "bundle.json").read_text())
    assert manifest["metrics"]["val_acc"] == again["best"]["val_acc"]


def test_an_experiment_whose_ray_state_is_damaged_is_one_line_and_restart_starts_it_anew(searched, data, tmp_path):
    root, _, _ = searched
    shutil.copytree(root / "ray", tmp_path / "ray")
    tuner = tmp_path / "ray" / "job-tune" / "tuner.pkl"
    tuner.write_bytes(tuner.read_bytes()[:100])  # cut short, as by a disk that filled or a copy that stopped
    args = ["tune", "--data", data, *SEARCH, "--storage", tmp_path / "ray", "--output", tmp_path / "out"]
    assert_error(run_job(*args), EXIT_BAD_INPUT, f"experiment in {tmp_path}/ray/job-tune cannot be resumed",
                 "damaged (pickle data was truncated)", "--restart")
    r = run_job(*args, "--restart", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not json.loads(r.stdout)["resumed"] and len(json.loads(r.stdout)["trials"]) == 6


def test_killed_search_resumes_without_rerunning_finished_trials(data, tmp_path):
    """SIGKILL to every process of the search, as when a pod dies, then the same command finishes the search."""
    args = ["tune", "--data", str(data), *SEARCH, "--storage", str(tmp_path / "ray"), "--output", str(tmp_path / "out")]
    ended = kill_after_trials_end(args, 2)

    r = run_job(*args, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["resumed"] and len(result["trials"]) == 6
    rerun = [t for t in ended if f"{t} lr" in r.stderr]
    assert not rerun, f"finished trials reported epochs again: {rerun}"


def test_interrupt_saves_the_experiment_and_the_same_command_resumes(data, tmp_path):
    args = ["tune", "--data", str(data), *RESNET, "--epochs", "3", "--num-samples", "3",
            "--storage", str(tmp_path / "ray"), "--output", str(tmp_path / "out")]
    proc = start_job(args, stdout=subprocess.DEVNULL)
    for line in proc.stderr:
        if " epoch " in line:
            break
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == EXIT_INTERRUPTED, err
    assert "run the same command again to resume it" in err and "Traceback" not in err
    r = run_job(*args, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["resumed"] and len(json.loads(r.stdout)["trials"]) == 3


def test_a_full_experiment_disk_is_one_line_and_the_same_command_resumes_once_there_is_room(data, tmp_path, tmpfs):
    """The experiment's disk fills as the trials save their first results: Ray ends each trial, then fails on the
    empty files it left. One line names the experiment and the fix; with room again, the same command finishes."""
    subprocess.run(["mount", "-o", "remount,size=64k", str(tmpfs)], check=True)  # the settings fit, no checkpoint does
    args = ["tune", "--data", str(data), *TINY, "--epochs", "2", "--num-samples", "2", "--set", "max_failures=0",
            "--storage", str(tmpfs / "ray"), "--output", str(tmp_path / "out")]
    assert_error(run_job(*args), EXIT_FAILURE, f"could not keep its experiment in {tmpfs}/ray/job-tune",
                 "free space there", "run the same command again to resume")
    subprocess.run(["mount", "-o", "remount,size=16m", str(tmpfs)], check=True)
    r = run_job(*args, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["resumed"] and [t["status"] for t in result["trials"]] == ["completed"] * 2


def test_a_diverging_trial_errors_with_its_reason_and_the_search_goes_on(data, tmp_path):
    # with seed 0 the study's first four draws from this range are about lr 0.026, 1e10, 156 and 0.014: some diverge
    # with SGD, whose steps grow with lr (AdamW's steps are normalised: with it, no trial of this test diverged)
    r = run_job("tune", "--data", data, *RESNET, "--set", "optimizer=sgd", "--epochs", "1", "--num-samples", "4",
                "--lr-range", "1e-40,1e30", "--set", "startup_trials=4", "--set", "max_failures=1",
                "--storage", tmp_path / "ray", "--output", tmp_path / "out")
    assert r.returncode == 0, r.stderr[-3000:]
    trials = json.loads((tmp_path / "out" / "trials.json").read_text())
    errored = [t for t in trials if t["status"] == "errored"]
    assert errored and all("diverged" in t["error"] and "lower lr" in t["error"] for t in errored), trials
    assert any(t["status"] == "completed" for t in trials), trials
    # one line each, with the reason, not Ray's traceback; the reason is kept for Ray's retry, which ends at once
    assert "Traceback" not in r.stderr and r.stderr.count("errored (") == len(errored), r.stderr
    for t in errored:  # the experiment keeps the reason, and no checkpoint of a diverged trial
        folder = next((tmp_path / "ray" / "job-tune").glob(f"trial_*_{t['trial_id']}"))
        assert "training diverged" in (folder / "error.txt").read_text() and not list(folder.glob("checkpoint_*"))


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--lr-range", "0.1,0.001"], ["lr_range = 0.1,0.001 is empty or inverted"]),
        (["--gamma-range", "0.5,0.4"], ["gamma_range = 0.5,0.4 is empty or inverted"]),
        (["--step-size-range", "3,1"], ["step_size_range = 3,1"]),
        (["--num-samples", "0"], ["num_samples = 0", "between 1 and"]),
        (["--time-budget", "nan"], ["time_budget_s = 'nan'", "not a finite number"]),
        (["--lr-range", "0.001,inf"], ["lr_range = '0.001,inf'", "not a finite number"]),
        (["--set", "sampler=grid"], ["sampler = 'grid' is not known: choose one of tpe, random"]),
        (["--gpus-per-trial", "1"], ["gpus_per_trial = 1", "0 GPU"]),
        (["--storage", "/etc/hostname/ray"], ["storage '/etc/hostname/ray' is not writable"]),
        (["--lr", "0.1"], ["lr = 0.1 is set, but job tune searches it", "--space lr=0.1"]),
        (["--space", "optimizer=choice:sgd,adam"], ["space: optimizer = 'adam' is refused", "sgd, adamw"]),
        (["--metric", "val_top5"], ["val_top5 needs 5 or more classes and the data has 3"]),
    ],
)
def test_bad_search_settings_fail_before_any_trial(data, tmp_path, flags, fragments):
    r = run_job("tune", "--data", data, *TINY, "--output", tmp_path / "out", "--storage", tmp_path / "ray", *flags)
    assert_error(r, EXIT_BAD_INPUT, *fragments)
    assert not (tmp_path / "ray" / "job-tune").exists() or not any((tmp_path / "ray" / "job-tune").glob("trial_*"))


@pytest.mark.parametrize("flags, fragment", [
    (["--space", "model=choice:tiny_cnn,resnet5", "--weights", "none"], "unknown model 'resnet5'"),
    (["--space", "model=choice:tiny_cnn,resnet18"], "weights ResNet18_Weights.IMAGENET1K_V1 are not in the torch cache"),
])
def test_every_model_a_space_can_pick_is_checked_before_the_data_and_any_trial(data, tmp_path, flags, fragment):
    r = run_job("tune", "--data", data, "--image-size", "32", "--output", tmp_path / "o", "--storage", tmp_path / "r", *flags)
    assert_error(r, EXIT_BAD_INPUT, fragment)
    assert "preparing the data set" not in r.stderr


def test_job_tune_reaches_ray_s_start_without_importing_torch(data, tmp_path):
    # torch's import (2-3 s on two cores) overlaps Ray's start only if nothing before it imports torch: the CLI, the
    # search module and every check before Ray starts. An unreachable RAY_ADDRESS ends the command right there.
    r = run_job("tune", "--data", data, *TINY, "--storage", tmp_path / "ray", "--output", tmp_path / "o",
                env={"RAY_ADDRESS": "127.0.0.1:9", "PYTHONPROFILEIMPORTTIME": "1"})
    assert_error(r, EXIT_BAD_INPUT, "RAY_ADDRESS=127.0.0.1:9")
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert {"ray.tune", "optuna"} <= imported
    assert not imported & {"torch", "torchvision", "timm"}


def test_unreachable_ray_address_fails_fast(data, tmp_path):
    started = time.monotonic()
    r = run_job("tune", "--data", data, *TINY, "--storage", tmp_path / "ray", "--output", tmp_path / "o",
                env={"RAY_ADDRESS": "127.0.0.1:9"})
    assert_error(r, EXIT_BAD_INPUT, "RAY_ADDRESS=127.0.0.1:9", "unset RAY_ADDRESS")
    assert time.monotonic() - started < 60


def test_changed_settings_do_not_silently_resume(searched, data):
    root, _, _ = searched
    r = run_job("tune", "--data", data, *SEARCH, "--epochs", "3", "--storage", root / "ray", "--output", root / "out2")
    assert_error(r, EXIT_BAD_INPUT, "started with other settings (epochs", "--restart")




def test_a_killed_trial_worker_is_retried_from_its_checkpoint_and_stdout_stays_json(data, tmp_path):
    """SIGKILL to the Ray worker running a trial (out of memory, a crash): the trial continues from its last
    checkpoint and the search ends with every trial complete; Ray's message about the dead worker does not reach
    stdout, which holds the JSON result."""
    out = tmp_path / "out"
    proc = start_job(["tune", "--data", str(data), *RESNET, "--epochs", "3", "--num-samples", "2", "--set",
                      "early_stopping=none", "--storage", str(tmp_path / "ray"), "--output", str(out), "--json"],
                     stdout=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "ray").glob("*/*/checkpoint_*")):  # a trial has a checkpoint (--json: no progress)
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    workers = subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "ray::ImplicitFunc"], capture_output=True, text=True)
    assert workers.stdout.split(), "no Ray worker running a trial was found"
    os.kill(int(workers.stdout.split()[0]), signal.SIGKILL)
    result, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "A worker died" in err and len(json.loads(result)["trials"]) == 2, result[:3000]
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 2 and all(t["status"] == "completed" and t["epochs"] == 3 for t in trials), trials
    assert "Traceback" not in err


def test_a_second_search_on_a_running_experiment_exits_2_within_seconds_naming_the_first(data, tmp_path):
    args = ["tune", "--data", str(data), *TINY, "--epochs", "50", "--num-samples", "2",
            "--storage", str(tmp_path / "ray"), "--output", str(tmp_path / "out")]
    first = start_job(args, stdout=subprocess.DEVNULL)
    try:
        for line in first.stderr:
            if "new experiment" in line:  # the first one holds the experiment
                break
        started = time.monotonic()
        r = run_job(*args)
        assert_error(r, EXIT_BAD_INPUT, "is being searched right now by process", str(first.pid), "on this machine")
        assert time.monotonic() - started < 30
    finally:
        kill_session(first)


def test_the_private_ray_keeps_its_files_where_only_this_user_can_enter(data, tmp_path):
    import stat
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("job-ray-*"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_TMPDIR", "RAY_ADDRESS")}
    proc = subprocess.Popen([sys.executable, "-m", "job", "tune", "--data", str(data), *TINY, "--epochs", "50",
                             "--num-samples", "2", "--storage", str(tmp_path / "ray"), "--output", str(tmp_path / "out")],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
    try:
        for line in proc.stderr:
            if " epoch 1/50 " in line:
                break
        folders = set(Path(tempfile.gettempdir()).glob("job-ray-*")) - before
        assert len(folders) == 1, folders
        folder = folders.pop()
        assert folder.name.startswith(f"job-ray-{proc.pid}-")  # so that the next search can tell it is stale
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and list(folder.glob("ray/session_*/sockets"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert not folder.exists()  # removed when the search stops


def test_the_private_ray_folders_of_killed_searches_are_deleted_at_the_next_start(tmp_path):
    from job.tune import remove_stale_ray_folders

    ended = subprocess.Popen(["true"])
    ended.wait()  # a PID that no longer runs
    dead, alive = tmp_path / f"job-ray-{ended.pid}-x1", tmp_path / f"job-ray-{os.getpid()}-x2"
    for folder in (dead, alive, tmp_path / "job-ray-nopid-x3", tmp_path / "other"):
        (folder / "ray/session_1").mkdir(parents=True)
        (folder / "ray/session_1/log").write_text("x")
    (tmp_path / f"job-ray-{ended.pid}-link").symlink_to(tmp_path / "other")
    (tmp_path / f"job-ray-{ended.pid}-file").write_text("not a folder")

    assert remove_stale_ray_folders(tmp_path) == [dead]
    assert not dead.exists() and (alive / "ray/session_1/log").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, "job-ray-nopid-x3", "other", f"job-ray-{ended.pid}-link", f"job-ray-{ended.pid}-file"])
    assert (tmp_path / "other/ray/session_1/log").is_file()


def test_a_declared_space_and_metric_drive_the_search_its_tables_and_the_bundle(data, tmp_path):
    """Any setting searched, any metric optimised: here val_loss (mode min) over lr, the optimizer and label
    smoothing, with momentum fixed and step_size left alone."""
    import optuna

    (tmp_path / "c.toml").write_text('[tune]\nmetric = "val_loss"\n[tune.space]\nlr = { loguniform = [1e-3, 1e-1] }\n'
                                     'optimizer = { choice = ["sgd", "adamw"] }\nlabel_smoothing = { uniform = [0.0, 0.2] }\n'
                                     'momentum = 0.8\n')
    common = ["--data", data, *TINY, "--epochs", "3", "--num-samples", "4", "--storage", tmp_path / "ray"]
    r = run_job("tune", *common, "--config", tmp_path / "c.toml", "--output", tmp_path / "out", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    trials = result["trials"]
    assert len(trials) == 4 and all("val_acc" not in t and "step_size" not in t for t in trials)
    assert all(t["momentum"] == 0.8 and t["optimizer"] in ("sgd", "adamw") and 0 <= t["label_smoothing"] <= 0.2
               and 1e-3 <= t["lr"] <= 1e-1 for t in trials)
    best = result["best"]
    assert best["val_loss"] == min(t["val_loss"] for t in trials if t["val_loss"] is not None)
    manifest = json.loads((tmp_path / "out" / "best" / "bundle.json").read_text())
    assert manifest["config"]["optimizer"] == best["optimizer"] and manifest["config"]["momentum"] == 0.8
    assert manifest["config"]["step_size"] == 2  # not searched: the training setting as it was
    history = json.loads((tmp_path / "out" / "trials.json").read_text())
    best_history = next(t["history"] for t in history if t["trial_id"] == best["trial_id"])
    assert manifest["best_epoch"] == min(best_history, key=lambda h: h["val_loss"])["epoch"]  # the epoch by the metric
    header = next(csv.reader(open(tmp_path / "out" / "trials.csv")))
    assert header[2:6] == ["lr", "optimizer", "label_smoothing", "momentum"] and "val_loss" in header
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "ray" / "job-tune" / "optuna.journal")))
    study = optuna.load_study(study_name="job-tune", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert all(set(t.params) == {"lr", "optimizer", "label_smoothing"} for t in study.trials)
    # the same experiment with another space is not resumed as if it were the same search
    r = run_job("tune", *common, "--config", tmp_path / "c.toml", "--space", "optimizer=sgd", "--output", tmp_path / "o2")
    assert_error(r, EXIT_BAD_INPUT, "started with other settings (space)")


def test_optuna_dashboard_shows_the_study_with_every_trial_pruned_ones_and_their_epochs(searched):
    """The journal beside the experiment is Optuna storage that optuna-dashboard itself opens (its HTTP API)."""
    import socket
    import urllib.request

    root, result, _ = searched
    journal = root / "ray" / "job-tune" / "optuna.journal"
    assert result["study"] == str(journal)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "optuna-dashboard"), str(journal),
                                  "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                studies = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5).read())
                break
            except OSError:
                time.sleep(0.2)
        (summary,) = studies["study_summaries"]
        assert summary["study_name"] == "job-tune" and summary["directions"] == ["maximize"]
        study = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10).read())
    finally:
        dashboard.terminate()
        dashboard.wait(10)
    states = {t["user_attrs"][0]["value"] if t["user_attrs"] else t["number"]: t for t in study["trials"]}
    assert len(study["trials"]) == 6
    by_status = {t["trial_id"]: t for t in result["trials"]}
    for ray_id, t in states.items():
        expected = "Pruned" if by_status[ray_id]["status"] == "stopped early (ASHA)" else "Complete"
        assert t["state"] == expected and len(t["intermediate_values"]) == by_status[ray_id]["epochs"]


def test_a_warm_started_search_in_an_rdb_runs_the_default_first_and_learns_from_the_earlier_one(searched, data):
    import optuna

    root, _, _ = searched
    url = f"sqlite:///{root}/study.db"
    r = run_job("tune", "--data", data, *SEARCH, "--num-samples", "2", "--storage", root / "ray", "--name", "warm",
                "--output", root / "warm-out", "--warm-start", root / "ray" / "job-tune", "--enqueue-default",
                "--study-storage", url)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warm start: the sampler begins with 6 finished trials" in r.stderr
    assert f"study:   optuna-dashboard {url}" in r.stdout
    study = optuna.load_study(study_name="warm", storage=url)
    warm = [t for t in study.trials if "warm_start_from" in t.user_attrs]
    own = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert len(warm) == 6 and len(own) == 2
    assert own[0].params == {"lr": 0.001, "step_size": 2, "gamma": 0.1}  # the training settings as they are
    assert not (root / "ray" / "warm" / "optuna.journal").exists()
    r = run_job("tune", "--data", data, *SEARCH, "--storage", root / "ray", "--name", "warm2", "--output",
                root / "warm2", "--warm-start", root / "ray" / "job-tune", "--metric", "val_loss")
    assert_error(r, EXIT_BAD_INPUT, "warm start:", "optimised val_acc (max), this search val_loss (min)")


def test_the_search_report_opens_in_chromium_with_every_trial_the_importances_and_the_best_confusion(searched, tmp_path):
    import re

    from tests.conftest import chromium

    root, result, _ = searched
    dom, pixels = chromium(root / "out" / "report.html", tmp_path)
    rows = re.findall(r"<tr( class=\"best\")?><td>(\d+)</td><td class=\"text\">(\w+)</td>", dom)
    assert sorted(trial for _, _, trial in rows) == sorted(t["trial_id"] for t in result["trials"])
    assert [trial for best, _, trial in rows if best] == [result["best"]["trial_id"]]
    importances = re.search(r'<table id="importances">(.*?)</table>', dom, re.S)
    assert importances and set(re.findall(r"<tr><td>(\w+)</td>", importances.group(1))) == set(result["importances"])
    confusion = re.search(r'<table id="confusion">(.*?)</table>', dom, re.S).group(1)
    cells = [[int(v) for v in re.findall(r"<td>(\d+)</td>", row)] for row in re.findall(r"<tr><th>class_\d</th>(.*?)</tr>", confusion)]
    assert len(cells) == 3 and all(len(row) == 3 for row in cells)
    total = sum(map(sum, cells))
    assert sum(cells[i][i] for i in range(3)) / total == pytest.approx(result["best"]["val_acc"])  # the exported epoch's
    # the curves were drawn: the best trial's, thick, in its colour of matplotlib's cycle (the order of the trials)
    from matplotlib import colors, rcParams

    drawn = [t["trial_id"] for t in json.loads((root / "out" / "trials.json").read_text()) if t["history"]]
    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    rgb = [round(255 * c) for c in colors.to_rgb(cycle[drawn.index(result["best"]["trial_id"]) % len(cycle)])]
    assert (np.abs(pixels.astype(int) - rgb).sum(axis=2) < 30).sum() > 200, rgb
