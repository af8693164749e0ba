"""`job tune`: the training loop of `job train` as a Ray Tune trainable, searched by Optuna (TPE) with ASHA.

The only module that imports Ray, and only public Ray Tune APIs. The trainable builds the same `Fit` as `job train`
(run.setup), reports every epoch's metrics with a checkpoint, and continues from `tune.get_checkpoint()` when Ray
restarts it. The experiment lives under `storage/name`; an unfinished one is resumed through `Tuner.restore`
(finished trials are kept, running ones continue from their checkpoints, errored ones are retried), which is what
lets a preempted Kubernetes Job finish its search. The Optuna study (study.py) is the searcher's own state.

Torch and the modules built on it (the loop, the model, bundles) are imported where they are used, not with this
module: the driver starts Ray while it imports them and prepares the data (a second or three of each on two cores).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import pickle
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
import types
import typing
from pathlib import Path

import pyarrow.fs
import ray
from ray import tune
from ray.tune.logger import TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher

from job import config, cpus, signals, storage, study, tracking
from job.config import EPOCH_METRICS, S3Config, SearchConfig, TrainConfig
from job.errors import BadInput, JobError, first_line, redact
from job.experiment import Experiment, Lock, study_source
from job.files import cache_dir, hold
from job.progress import Counts, SearchView, say
from job.storage import Location
from job.space import Dimension
from job.study import Objective, Space, Study

if typing.TYPE_CHECKING:
    from job.results import Result, Trial

DIVERGED = "diverged.txt"  # in a trial's folder: why it diverged, so that Ray's retry ends at once
# Ray Tune reads these when the search runs: its console tables off (Progress replaces them), state snapshots every
# second (a killed driver loses at most ~1 s of trial statuses), no reserved workers for trials not yet sampled,
# our own Ctrl-C handling, workers at normal priority (at nice 15 a trial's torch threads wait for each other and an
# epoch ran ~10% slower than under `job train`, bench/), no usage stats (no network, no prompt), and no idle
# workers started with the driver: they have no runtime_env, and Ray gives a trial (whose runtime_env Ray Tune sets)
# a new process of its own anyway, so they only took CPU while the search started (two of them 1.3 CPU-s here) and
# 83 MB each per CPU for the whole search.
RAY_ENVIRONMENT = {
    "RAY_AIR_NEW_OUTPUT": "0", "TUNE_GLOBAL_CHECKPOINT_S": "1", "TUNE_MAX_PENDING_TRIALS_PG": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0", "TUNE_DISABLE_SIGINT_HANDLER": "1",
    "RAY_DEDUP_LOGS": "0", "RAY_worker_niceness": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_prestart_worker_first_driver": "0",
    "RAY_IGNORE_UNHANDLED_ERRORS": "1",  # a lost node's actor errors are trial retries (a progress line), not tracebacks
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


# ---- inside a Ray worker ---------------------------------------------------------------------------------------


def trainable(sampled: dict, base: dict, threads: int, s3: dict, objective: tuple[str, str]) -> None:
    """Ray Tune function trainable: one trial = one `Fit` with the sampled settings, its best epoch picked by the
    search's `objective` (metric, mode). The data set is decoded into the cache of the node it runs on (that node's
    JOB_CACHE)."""
    import torch

    from job import checkpoint, run
    from job.loop import Diverged

    diverged = Path(tune.get_context().get_trial_dir()) / DIVERGED
    if diverged.is_file():  # Ray retries a failed trial from its checkpoint, which would diverge the same way again
        raise Diverged(diverged.read_text())
    cpus.for_compute(threads)
    gpus = ray.get_gpu_ids()
    if gpus and base["device"] != "cpu" and not torch.cuda.is_available():  # never train on the CPU in silence
        raise JobError(f"Ray gave this trial GPU {', '.join(map(str, gpus))} on {socket.gethostname()}, but torch sees "
                       f"no CUDA device there (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}, "
                       f"torch {torch.__version__}): check that node's NVIDIA driver and container runtime, "
                       "or pass --device cpu")
    restored = tune.get_checkpoint()
    state = _load(restored) if restored else None
    cfg = TrainConfig.from_dict(run.as_trained(base | sampled, state) if state else base | sampled)
    s = run.setup(cfg, cache_dir(), s3=S3Config.from_dict(s3), objective=tuple(objective))
    if state:
        if state["data_fingerprint"] != s.fingerprint:
            raise BadInput(f"the data in '{cfg.data}' changed since this trial's checkpoint was written: resume with "
                           "the same data, or pass --restart")
        s.fit.restore(state)
    try:
        for epoch in s.fit:
            # in the private Ray folder when there is one: it goes with the search, also when this trial is killed
            with tempfile.TemporaryDirectory(prefix="job-ckpt-", dir=os.environ.get("RAY_TMPDIR")) as folder:
                checkpoint.save(epoch.checkpoint() | s.meta(cfg), Path(folder) / checkpoint.CHECKPOINT_NAME)
                tune.report({**epoch.metrics, "epoch": epoch.epoch}, checkpoint=tune.Checkpoint.from_directory(folder))
    except Diverged as e:
        diverged.write_text(str(e))
        raise


# ---- in the driver -----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Live:
    """This process's running search. Ray pickles the searcher and the callback into the experiment and brings them
    back on `Tuner.restore`; they hold nothing of a run and forward to what is registered here."""

    study: Study | None = None
    view: SearchView | None = None
    mlflow: tracking.SearchRuns | None = None
    reconciled: bool = False  # the study has been told which trials the experiment holds


LIVE = _Live()


class StudySearcher(Searcher):
    """Ray's searcher interface over the Optuna study: FINISHED once the study holds `num_samples` trials."""

    def __init__(self, metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is the study's own

    def suggest(self, trial_id: str):
        params = LIVE.study.ask(trial_id)
        if params is None:  # FINISHED is for good: not while a running trial may yet be replaced
            return Searcher.FINISHED if LIVE.study.finished() else None
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        LIVE.study.report(trial_id, int(result.get("training_iteration", 0)), result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        LIVE.study.tell(trial_id, int((result or {}).get("training_iteration", 0)), result, error)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text("{}")  # the study's journal is the state, written as trials are asked and told

    def restore(self, checkpoint_path: str) -> None:
        pass


def _counts(trials) -> Counts:
    return Counts(running=sum(t.status == "RUNNING" for t in trials), ended=sum(t.status == "TERMINATED" for t in trials),
                  errored=sum(t.status == "ERROR" and t.trial_id not in LIVE.study.replaced for t in trials))


class ProgressEvents(tune.Callback):
    """Ray's trial events, forwarded to this process's SearchView; and, before the first new trial is created, the
    trials Ray restored, which the study reconciles with its journal (Study.reconcile)."""

    def on_step_begin(self, iteration, trials, **info):
        if not LIVE.reconciled:
            LIVE.study.reconcile({t.trial_id for t in trials},
                                 {t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")})
            LIVE.reconciled = True
        LIVE.study.ended({t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")})

    def on_trial_start(self, iteration, trials, trial, **info):
        LIVE.view.trial_started(trial.trial_id)
        if LIVE.mlflow:
            LIVE.mlflow.start(trial.trial_id, _params(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        LIVE.view.trial_result(trial.trial_id, _params(trial), int(result.get("epoch", 0)), result, _counts(trials))
        if LIVE.mlflow:
            LIVE.mlflow.epoch(trial.trial_id, int(result.get("epoch", 0)), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        LIVE.view.trial_ended(trial.trial_id, int(trial.last_result.get("epoch", 0)), _counts(trials))
        if LIVE.mlflow:
            LIVE.mlflow.end(trial.trial_id, failed=False)

    def on_trial_recover(self, iteration, trials, trial, **info):
        node, reason, lost, _ = _failure(trial)
        LIVE.view.trial_retried(trial.trial_id, node or str((trial.last_result or {}).get("node_ip") or ""),
                                _restored_epoch(trial), _counts(trials), reason, lost)

    def on_trial_error(self, iteration, trials, trial, **info):
        _, reason, lost, failures = _failure(trial)  # from the driver's copy: `trial.get_error()` reads the one in
        # storage, which Ray may not have written yet (the line then had no reason: seen in CI)
        # Ray ends a trial it still had retries for when the node of the worker it reuses dies while that worker is
        # being handed to the trial (its reset): Ray counts the one loss twice, the second time with the trial already
        # queued for its retry, and a queued trial that fails is ended. The trial has not run: its settings run again.
        if lost and 0 < failures <= trial.max_failures and LIVE.study.replace(trial.trial_id):
            LIVE.view.trial_replaced(trial.trial_id, _counts(trials), reason)
        else:
            LIVE.view.trial_errored(trial.trial_id, _counts(trials), reason or _reason(trial.get_error()))
        if LIVE.mlflow:
            LIVE.mlflow.end(trial.trial_id, failed=True)


def _params(trial) -> dict:
    """A trial's settings of the space."""
    return {k: trial.config[k] for k in LIVE.study.space.names if k in trial.config}


class TrialEvents(TBXLoggerCallback):
    """Each trial's TensorBoard event file in its folder, under the tags `job train` writes (tracking.py). A
    TBXLoggerCallback, so Ray does not add its own beside it (tags ray/tune/*, every number Ray reports); only its
    public logger hooks are overridden."""

    def __init__(self):
        super().__init__()
        self.events: dict[str, tracking.TensorBoard] = {}

    def log_trial_start(self, trial):
        self.log_trial_end(trial)
        trial.init_local_path()
        self.events[trial.trial_id] = tracking.TensorBoard(Path(trial.local_path))

    def log_trial_result(self, iteration, trial, result):
        if trial.trial_id not in self.events:
            self.log_trial_start(trial)
        self.events[trial.trial_id].epoch(int(result.get("epoch", iteration)), result)

    def log_trial_end(self, trial, failed: bool = False):
        events = self.events.pop(trial.trial_id, None)
        if events:
            events.close()

    def __getstate__(self) -> dict:
        return {}  # pickled with the experiment: open event files are this process's

    def __setstate__(self, state: dict) -> None:
        self.__init__()


def _restored_epoch(trial) -> int:
    """The epoch of the checkpoint Ray restarts the trial from: its latest registered one (a result just reported
    may not be registered yet), 0 for none."""
    latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
    return int(latest.metrics.get("epoch", 0)) if latest is not None else 0


def _failure(trial) -> tuple[str, str, bool, int]:
    """(node address, reason, whether its process or node was lost, how many times it failed) of a trial's latest
    failure, from the error file Ray keeps beside the driver (the copy in storage is written later): a lost node is
    one line, not Ray's ActorDiedError text."""
    try:
        failures = Path(trial.error_file).read_text().split("Failure # ")
    except (OSError, TypeError):
        return "", "", True, 0
    text = failures[-1]
    node = (re.findall(r"^\s*ip: (\S+)", text, re.M) or [""])[0]
    if "node has died" in text or "node was terminated" in text:
        return node, "its node died", True, len(failures) - 1
    if "ActorDiedError" in text or "actor died" in text.lower():
        return node, "its worker process died", True, len(failures) - 1
    return node, _reason(text), False, len(failures) - 1


def _reason(error) -> str:
    """The last line of a trial's error (the exception job raised in it), without Ray's wrapping."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def remove_stale_ray_folders(tmp: Path) -> list[Path]:
    """Delete the private Ray folders (job-ray-PID-*) of job processes that were killed before they could delete
    their own (SIGKILL, the out-of-memory killer): this user's, whose PID no longer runs. A folder whose PID runs
    again (a reused PID) is left alone; so is anything not named and owned so. Returns what it deleted."""
    gone = []
    for folder in tmp.glob("job-ray-*-*"):
        pid = folder.name.split("-")[2]
        try:
            found = folder.lstat()  # not followed: a symlink is not a folder here
            if not pid.isdigit() or not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
        except (OSError, OverflowError):  # a PID of another user's (PermissionError), a folder gone, a PID too large
            continue
    return gone


@contextlib.contextmanager
def _environment():
    """RAY_ENVIRONMENT (unless the user set a value) for the block, and Ray Tune's own error logs off: a failed trial
    is one progress line and a row of trials.csv with its reason, not Ray's 40-line traceback. Python's stdout goes
    to stderr for the block: Ray's driver prints the raylet's messages (a worker killed, a node lost) to stdout,
    which holds job's results (`job tune --json | jq`) and was broken by them. The caller's environment, log levels
    and stdout as they were afterwards."""
    saved = dict(os.environ)
    loggers = [logging.getLogger(name) for name in ("ray.tune", "ray.train", "ray.air")]
    levels = [logger.level for logger in loggers]
    # The private local Ray keeps its sockets, logs and session files in a folder only this user can enter (Ray's
    # default, /tmp/ray, is writable by every user); RAY_TMPDIR set by the user (or the image) is kept.
    private = None
    if not (os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_TMPDIR")):
        remove_stale_ray_folders(Path(tempfile.gettempdir()))
        private = tempfile.mkdtemp(prefix=f"job-ray-{os.getpid()}-")
    try:
        if private:
            os.environ["RAY_TMPDIR"] = private
        for key, value in RAY_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        os.environ.clear()
        os.environ.update(saved)
        if private:
            shutil.rmtree(private, ignore_errors=True)


def _start_ray() -> None:
    address = os.environ.get("RAY_ADDRESS")
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    allocator = cpus.threaded_training_environment()  # every worker of this search: its trials train in a thread
    if allocator:
        common["runtime_env"] = {"env_vars": allocator}
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise BadInput(f"cannot join the Ray cluster at RAY_ADDRESS={address} ({str(e).splitlines()[0][:120]}): "
                           "check the address, or unset RAY_ADDRESS to run on this machine") from None
    else:
        # "local" always starts a private cluster: never attach to another one that happens to run on this host.
        ray.init(address="local", num_cpus=cpus.available(), **common)  # a container's CPU limit, not the host's


def _prepare_here(cfg: TrainConfig, dims: list[Dimension], cache: Path, s3: S3Config | None, note) -> tuple[str, int]:
    """Ray starts (seconds) while the driver imports torch, checks every model the space can pick and the data set,
    and decodes the data once for every trial on this machine: bad input fails before any trial. On the CPU: the
    driver needs no GPU. Returns the data's fingerprint and its number of classes."""
    def prepare() -> tuple[str, int]:
        _check_models(dims, cfg)
        note("preparing the data set (decoded once, shared by every trial on this machine)")
        return _prepared(cfg, cache, s3)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        prepared = pool.submit(prepare)
        try:
            _start_ray()
        finally:
            error = prepared.exception()  # waits for the preparation either way
    if error is not None:
        raise error
    return prepared.result()


def _prepare_remotely(cfg: TrainConfig, dims: list[Dimension], s3: S3Config | None, note) -> tuple[str, int]:
    """On a cluster the driver may run where no trial does (KubeRay's head has no CPUs for trials): it neither
    syncs nor decodes the data. One task on a node with CPUs checks and decodes it there, where trials would decode
    it anyway, so bad data still fails before any trial. Returns the data's fingerprint and number of classes."""
    _check_models(dims, cfg)  # before joining: a bad name or a missing weights file costs the cluster nothing
    _start_ray()
    note("preparing the data set on a worker node (decoded once there, shared by the trials on it)")
    task = ray.remote(num_cpus=1, max_retries=1)(_fingerprint)
    try:
        return ray.get(task.remote(cfg, s3))
    except ray.exceptions.RayTaskError as e:
        raise e.cause from None  # job's own error (bad data, no credentials on that node), not Ray's wrapping


def _prepared(cfg: TrainConfig, cache: Path, s3: S3Config | None) -> tuple[str, int]:
    """The data checked and decoded into `cache`, on the CPU: (its fingerprint, its number of classes). A weights
    file of the user's is checked by building the model with it; job's own and torchvision's weights were checked by
    _check_models, and no model is built for them (importing timm took 3.7 s of the driver's start here)."""
    from job import model, run

    cfg = dataclasses.replace(cfg, device="cpu")
    s = run.setup(cfg, cache, s3=s3) if model.is_path(cfg.weights) else run.prepare_data(cfg, cache, s3)
    return s.fingerprint, len(s.folder.classes)


def _fingerprint(cfg: TrainConfig, s3: S3Config | None) -> tuple[str, int]:
    try:
        return _prepared(cfg, cache_dir(), s3)  # in the cache of the node it runs on
    except JobError as e:  # the node is part of the answer: its environment (credentials, cache) is its own
        raise type(e)(f"{e} (on Ray node {ray.util.get_node_ip_address()}, in its environment)") from None


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail within seconds when RAY_ADDRESS does not answer: ray.init would wait for minutes."""
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except ValueError:
        raise BadInput(f"RAY_ADDRESS={address} is not host:port (or ray://host:port): fix it, or unset it to run on this machine") from None
    except OSError as e:
        raise BadInput(f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({e.strerror or e}): "
                       "check the address, or unset RAY_ADDRESS to run on this machine") from None


def _resources(search: SearchConfig, cfg: TrainConfig) -> tuple[dict, int]:
    """(resources per trial, concurrent trials) from the settings and the cluster."""
    total = ray.cluster_resources()
    return cpus.share(int(total.get("CPU", 1)), float(total.get("GPU", 0)), search, cfg.device)


def _absolute(value: str) -> str:
    """A local path made absolute (Ray's workers have another working directory); names and s3:// as they are."""
    path = Path(value).expanduser()
    return str(path.resolve()) if not storage.is_s3(value) and path.exists() else value


def search(cfg: TrainConfig, search_cfg: SearchConfig, output: str | Path, *, restart: bool = False,
           overwrite: bool = False, progress: bool = True, s3: S3Config | None = None) -> Result:
    """Run (or resume) the search, then export the best trial's best epoch as a bundle into `output` (a local folder
    or s3://...). Leaves the caller's environment and signal handlers as it found them."""
    started = time.perf_counter()
    note = say if progress else (lambda line: None)
    cfg = dataclasses.replace(cfg, data=_absolute(cfg.data), weights=_absolute(cfg.weights))  # workers run elsewhere
    # every check that can fail does so before Ray starts, but those of the models (torch's import, seconds) and of
    # the data, which run while Ray starts: all before any trial
    dims = config.check_search(cfg, search_cfg)
    space, (metric, mode) = Space.of(dims), config.objective(search_cfg)
    objective = Objective(metric, mode, cfg.epochs)
    first = study.first_trial(space, cfg.to_dict(), required=bool(search_cfg.enqueue_default)) \
        if search_cfg.enqueue_default is not False else None
    experiment, out = Experiment(search_cfg, s3), Location.parse(output, s3)
    resume = experiment.check(cfg, search_cfg, restart)
    out.claim(overwrite or restart, owner=str(experiment), data=cfg.data)
    if os.environ.get("RAY_ADDRESS"):
        _probe(os.environ["RAY_ADDRESS"])
    cache = cache_dir()
    warm = study.warm_trials(study_source(search_cfg.warm_start, s3, cache), search_cfg.warm_start, space, objective) \
        if search_cfg.warm_start else []
    if warm:
        note(f"warm start: the sampler begins with {len(warm)} finished trials of {search_cfg.warm_start}")
    uri = tracking.mlflow_uri(cfg.tracking_uri, str(output)) if cfg.tracking == "mlflow" else None
    published = None
    try:
        with Lock(experiment, note=note), _environment():
            # after the lock: a search refused because another one runs leaves no run in MLflow
            if uri:
                LIVE.mlflow = tracking.SearchRuns(uri, cfg.to_dict(), search_cfg.to_dict(), str(experiment), say)
            try:
                fingerprint, classes = _prepare_remotely(cfg, dims, s3, note) if os.environ.get("RAY_ADDRESS") \
                    else _prepare_here(cfg, dims, cache, s3, note)
                if search_cfg.metric == "val_top5" and classes < 5:
                    raise BadInput(f"metric val_top5 needs 5 or more classes and the data has {classes}: choose "
                                   "another metric (val_acc, val_f1_macro, val_loss)")
                experiment.check_data(fingerprint, restart)
                nodes = len([n for n in ray.nodes() if n.get("Alive")])
                if nodes > 1 and not experiment.storage.remote:
                    raise BadInput(f"the Ray cluster has {nodes} nodes but storage '{search_cfg.storage}' is local to "
                                   "one: pass --storage s3://bucket/prefix so every node can reach the experiment")
                if restart:
                    experiment.delete(cache)
                trials, best, state, resumed = _run(cfg, search_cfg, space, objective, experiment, resume, progress,
                                                    note, s3, cache, fingerprint, warm, first)
            finally:
                # in this thread: stopping Ray in another one while this one drops Ray objects crashed its core worker
                ray.shutdown()
        from job import bundle, results  # imported by now: the preparation built on them
        from job.results import Result

        staged = out.stage(cache)
        with hold(staged, f"output '{out}'"):
            if not out.remote:  # again: another job may have written a run there while this one searched
                out.check_free(overwrite or restart, owner=str(experiment))
            if overwrite or restart or out.remote:
                results.clear(staged)  # an earlier run's files never mix with this one's
            importances, where = LIVE.study.importances(), LIVE.study.where
            shown = redact(where) if isinstance(where, str) else str(where)
            metrics = results.write_search(staged, state, best, trials, cfg.to_dict(), str(experiment), importances,
                                           shown)
            out.publish(staged, last=f"{bundle.BEST_DIR}/{bundle.MANIFEST}", owned=results.RUN_FILES)
            published = staged / bundle.BEST_DIR
    finally:
        if LIVE.mlflow:
            LIVE.mlflow.close(best if published else None, published)
            LIVE.mlflow = None
    LIVE.study = LIVE.view = None
    return Result(str(out), str(out.join(bundle.BEST_DIR)), best.best_epoch, metrics, best.history,
                  seconds=time.perf_counter() - started, experiment=str(experiment), trials=trials, best_trial=best,
                  resumed=resumed, importances=importances, study=shown)


def _check_models(dims: list[Dimension], cfg: TrainConfig) -> None:
    """Every model and weights the space can pick is known and its weights are here: a trial never fails on one."""
    from job import model

    def values(name: str) -> tuple:
        return next((d.values for d in dims if d.name == name), (getattr(cfg, name),))

    for name in values("model"):
        for weights in values("weights"):
            if not storage.is_s3(weights):  # an s3:// file is fetched and checked by the trial
                model.check_weights(name, weights)


def _run(cfg: TrainConfig, search_cfg: SearchConfig, space: Space, objective: Objective, experiment: Experiment,
         resume: bool, progress: bool, note, s3: S3Config | None, cache: Path, fingerprint: str,
         warm: list, first: dict | None):
    """The Tuner, new or restored, run to its end: (trials, best trial, its checkpoint state, resumed)."""
    from job import results

    resources, concurrent = _resources(search_cfg, cfg)
    storage_path, fs = experiment.storage.for_ray()
    path = f"{storage_path}/{search_cfg.name}"
    resumed = resume and tune.Tuner.can_restore(path, storage_filesystem=fs)
    if not resumed:
        experiment.start(cfg, search_cfg, cache, fingerprint)
    startup = search_cfg.startup_trials or min(10, max(2, search_cfg.num_samples // 3))
    metric, mode = objective.metric, objective.mode
    rdb = search_cfg.study_storage
    LIVE.study = Study(rdb or experiment.journal(cache), search_cfg.name, space, objective, search_cfg.sampler,
                       cfg.seed, startup, search_cfg.num_samples, fresh=not resumed, warm=warm, first=first,
                       on_change=(lambda: None) if rdb else lambda: experiment.save_journal(cache))
    LIVE.view = SearchView(search_cfg.num_samples, cfg.epochs, metric, enabled=progress, mode=mode)
    LIVE.reconciled = False
    fn = tune.with_resources(tune.with_parameters(trainable, base=cfg.to_dict(), threads=resources["cpu"],
                                                  s3=(s3 or S3Config()).to_dict(), objective=(metric, mode)), resources)
    # Ray's local workers inherited the credentials when Ray started; Tune would copy them from here into each
    # trial's runtime_env, which Ray's agent writes into its logs (storage.secrets_out_of_environment)
    with storage.secrets_out_of_environment(), signals.Stop(on_request=_ask_ray_to_stop, restore=(signal.SIGUSR1,)) as stop:
        if resumed:
            note(f"resuming experiment {experiment}")
            try:
                tuner = tune.Tuner.restore(path, fn, resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
            except (pickle.UnpicklingError, EOFError, ValueError) as e:  # Ray's tuner.pkl, its JSON state
                raise BadInput(f"the experiment in {experiment} cannot be resumed: Ray's files there are damaged "
                               f"({first_line(e) or type(e).__name__}): pass --restart to start it anew (its trials "
                               "are deleted), or --name for a new one beside it") from None
        else:
            note(f"new experiment {experiment}: {search_cfg.num_samples} trials, {concurrent} at a time, "
                 f"{resources['cpu']} CPU + {resources['gpu']:g} GPU each")
            tuner = _new_tuner(cfg, search_cfg, fn, storage_path, fs, concurrent)
        try:
            grid = tuner.fit()
        except (OSError, EOFError, pickle.UnpicklingError) as e:
            # a trial's failure ends in the grid; this is the experiment's own files (a full disk left Ray empty ones)
            raise experiment.lost(e) from None
    if stop.requested:
        raise KeyboardInterrupt  # the experiment state is saved: the same command resumes it
    cut = LIVE.view.active if search_cfg.time_budget_s else set()  # still running when the budget ran out
    pairs = [(_trial(r, cfg.epochs, cut, space.names, (metric, mode)), r) for r in grid]
    pairs = [(t, r) for t, r in pairs if t.trial_id not in LIVE.study.replaced]  # their settings ran as new trials
    by_id = {t.trial_id: r for t, r in pairs}
    trials = sorted((t for t, _ in pairs), key=lambda t: t.number)
    done = [t for t in trials if t.value is not None]
    if not done:
        raise JobError(f"no trial finished an epoch ({trials[0].error if trials else 'no trials ran'}): "
                       f"see {experiment} for each trial's error")
    best, state = results.best_readable(done, lambda t: _checkpoint_state(by_id[t.trial_id]), str(experiment))
    trials = [best if t.trial_id == best.trial_id else t for t in trials]  # with its checkpoint's whole history
    return trials, best, state, resumed


def _new_tuner(cfg: TrainConfig, search_cfg: SearchConfig, fn, storage_path: str, fs, concurrent: int):
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs, grace_period=search_cfg.grace_period,
                               reduction_factor=search_cfg.reduction_factor)
                 if search_cfg.early_stopping == "asha" else FIFOScheduler())
    metric, mode = config.objective(search_cfg)
    return tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=-1,  # the study says when num_samples trials exist
            search_alg=StudySearcher(metric, mode), scheduler=scheduler, max_concurrent_trials=concurrent,
            time_budget_s=search_cfg.time_budget_s, reuse_actors=True, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=search_cfg.name, storage_path=storage_path, storage_filesystem=fs, verbose=0,
            callbacks=[ProgressEvents(), TrialEvents()],
            # The latest checkpoint holds the best weights too. Two, not one: Ray deletes the older one as soon as
            # a new one is registered but uploads the experiment state that points at it a moment later, so a
            # kill in between would leave the saved state pointing at a deleted checkpoint.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=search_cfg.max_failures)),
    )


def _ask_ray_to_stop() -> None:
    say("stopping: saving the experiment so that the same command resumes it (Ctrl-C again to stop at once)")
    os.kill(os.getpid(), signal.SIGUSR1)  # Ray Tune's own signal to stop a run and save its experiment


def _checkpoint_state(result) -> dict:
    """The training state in a trial's latest checkpoint (FileNotFoundError when there is none left)."""
    if result.checkpoint is None:
        raise FileNotFoundError(result.path)
    return _load(result.checkpoint)


IN_MEMORY_BYTES = 256 << 20  # a larger checkpoint from S3 goes through a local folder: memory holds it once, not twice


def _load(saved: tune.Checkpoint) -> dict:
    """A trial checkpoint's training state, read where it is. From S3 its bytes are read into memory (a HEAD for
    the size, then one GET): Ray's as_directory would write them to a local folder for torch to read back, and
    writing is the slow half (27 MB: 55 ms read against 90-110 ms through a folder on this machine's disk;
    bench/storage.py)."""
    from job import checkpoint

    if isinstance(saved.filesystem, pyarrow.fs.LocalFileSystem):
        return checkpoint.load(Path(saved.path))
    path = f"{saved.path}/{checkpoint.CHECKPOINT_NAME}"
    try:
        with saved.filesystem.open_input_file(path) as f:
            if f.size() <= IN_MEMORY_BYTES:
                return checkpoint.read(f.read(), f"s3://{path}")
        with saved.as_directory() as folder:
            return checkpoint.load(Path(folder))
    except OSError as e:
        if e.errno is not None:
            raise  # a lost checkpoint (FileNotFoundError), or the local disk's
        raise storage.arrow_failure(e, f"reading the checkpoint s3://{path}",
                                    "run the same command again once the storage answers (the search resumes)") from None


def _trial_dirname(trial) -> str:
    """trial_<number>_<id>: short, in creation order; the sampled values are in trials.csv."""
    number = trial.experiment_tag.split("_", 1)[0]
    return f"trial_{int(number) if number.isdigit() else 0:03d}_{trial.trial_id}"


def _trial(result, max_epochs: int, cut_by_budget: set[str], names: tuple[str, ...], objective: tuple[str, str]) -> Trial:
    from job.results import Trial

    df = result.metrics_dataframe
    columns = [c for c in ("epoch", *EPOCH_METRICS) if df is not None and c in df]
    history = df[columns].to_dict("records") if df is not None and objective[0] in df else []
    error = _reason(result.error)
    params = result.config or {}
    return Trial.of(Path(result.path).name, {k: params[k] for k in names if k in params}, history, objective,
                    max_epochs, error, cut_by_budget)


class _CallableModule(types.ModuleType):
    """`job.tune` is the library's function (job/api.py) and the name of this module at once. Importing a submodule
    rebinds the package's attribute to the module, so once this module is imported, `job.tune(...)` arrives here and
    is handed to the function."""

    def __call__(self, *args, **kwargs) -> Result:
        from job.api import tune as api_tune

        return api_tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
