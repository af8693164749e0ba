"""`job tune`: the training loop of `job train` as a Ray Tune trainable, searched by Optuna (TPE) with ASHA.

The only module that imports Ray and Optuna, and only when `job tune` runs. The trainable is `trainable` below:
it builds the same `Fit` as `job train` (run.setup), reports every epoch's metrics with a checkpoint, and continues
from `tune.get_checkpoint()` when Ray restarts it. The experiment lives under `storage/name`; an unfinished one
is resumed (finished trials are kept, the running ones continue from their checkpoints, errored ones are retried,
the Optuna study keeps its history), which is what lets a preempted Kubernetes Job finish its search.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from job import bundle, checkpoint, cpus, report, run, storage
from job.config import S3Config, SearchConfig, TrainConfig
from job.data import Preprocessing
from job.errors import BadInput, JobError
from job.metrics import EPOCH_METRICS

METRIC, MODE = "val_acc", "max"
SETTINGS_FILE = "job-tune.json"  # beside Ray's files in the experiment folder: what the search was started with
# Settings that may differ when an experiment is resumed: they change how it runs, not what it searches.
RUNTIME_KEYS = {"time_budget_s", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "max_failures", "storage",
                "device", "workers"}


@dataclasses.dataclass
class Trial:
    """One row of trials.csv."""

    number: int  # creation order
    trial_id: str
    lr: float
    step_size: int
    gamma: float
    epochs: int
    val_acc: float | None  # the trial's best, over all of its epochs
    best_epoch: int | None
    status: str  # completed | stopped early (ASHA) | stopped (time budget) | errored
    error: str
    history: list[dict] = dataclasses.field(repr=False, default_factory=list)
    folder: str = dataclasses.field(repr=False, default="")


def _rank(t: Trial) -> tuple:
    """Best val_acc over all epochs; ties go to the lower val_loss at that epoch, then to the earlier trial."""
    at_best = next(h for h in t.history if int(h["epoch"]) == t.best_epoch)
    return (t.val_acc, -at_best["val_loss"], -t.number)


@dataclasses.dataclass
class Outcome:
    output: Path | str
    experiment: str
    best: Trial
    trials: list[Trial]
    bundle: Path | str
    resumed: bool
    seconds: float


# ---- inside a Ray worker ---------------------------------------------------------------------------------------


def trainable(sampled: dict, base: dict, cache: str, threads: int, s3: dict) -> None:
    """Ray Tune function trainable: one trial = one `Fit` with the sampled lr, step_size and gamma."""
    import torch
    from ray import tune

    torch.set_num_threads(threads)  # no oversubscription: as many threads as CPUs given to the trial
    cfg = TrainConfig.from_dict(base | sampled)
    s = run.setup(cfg, Path(cache), s3=S3Config.from_dict(s3))
    restored = tune.get_checkpoint()
    if restored:
        with restored.as_directory() as folder:
            s.fit.restore(checkpoint.load(Path(folder)))
    for epoch in s.fit:
        with tempfile.TemporaryDirectory(prefix="job-ckpt-") as folder:
            checkpoint.save(epoch.checkpoint() | s.meta(cfg), Path(folder) / checkpoint.CHECKPOINT_NAME)
            tune.report({**epoch.metrics, "epoch": epoch.epoch, "best_val_acc": s.fit.best_val_acc},
                        checkpoint=tune.Checkpoint.from_directory(folder))


# ---- in the driver -----------------------------------------------------------------------------------------------


def _quiet_ray() -> None:
    """Ray's own console output and tables are replaced by `Progress`; state is snapshotted every second."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy engine is silent at verbose=0
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # a killed driver loses at most ~1 s of trial statuses
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "1")  # don't reserve workers for trials not yet sampled
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # GracefulStop handles Ctrl-C and SIGTERM
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray runs its workers at nice 15; a trial then yields its cores to every other process, and since its torch
    # threads wait for each other, each epoch ran ~10% slower than under `job train` (bench/, 2 cores)
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network, no prompt
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


def _start_ray() -> None:
    import ray

    address = os.environ.get("RAY_ADDRESS")
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise BadInput(f"cannot join the Ray cluster at RAY_ADDRESS={address} ({str(e).splitlines()[0][:120]}): "
                           "check the address, or unset RAY_ADDRESS to run on this machine") from None
    else:
        # "local" always starts a private cluster: never attach to another one that happens to run on this host.
        tmp = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray"
        ray.init(address="local", _temp_dir=str(tmp), num_cpus=cpus.available(), **common)  # a container's limit


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


def _resources(search_cfg: SearchConfig, cfg: TrainConfig) -> tuple[dict, int, int]:
    """(resources per trial, torch threads per trial, concurrent trials) from the settings and the cluster."""
    import ray

    total = ray.cluster_resources()
    cpu_count, gpus = int(total.get("CPU", 1)), float(total.get("GPU", 0))
    use_gpu = gpus > 0 and cfg.device != "cpu"
    per_gpu = search_cfg.gpus_per_trial if search_cfg.gpus_per_trial is not None else (1.0 if use_gpu else 0.0)
    if per_gpu > gpus:
        raise BadInput(f"gpus_per_trial = {per_gpu:g} but the Ray cluster has {gpus:g} GPU(s): lower --gpus-per-trial")
    if per_gpu > 0:
        slots = int(gpus / per_gpu)
    else:
        slots = search_cfg.max_concurrent or min(search_cfg.num_samples, max(2, cpu_count // 4), cpu_count)
    concurrent = min(search_cfg.max_concurrent or slots, slots, search_cfg.num_samples)
    per_cpu = search_cfg.cpus_per_trial or max(1, cpu_count // max(1, concurrent))
    if per_cpu > cpu_count:
        raise BadInput(f"cpus_per_trial = {per_cpu} but the Ray cluster has {cpu_count} CPU(s): lower --cpus-per-trial")
    return {"cpu": per_cpu, "gpu": per_gpu}, per_cpu, concurrent


def resumable_optuna_search(sampler):
    """OptunaSearch that lets a trial it has not seen report, instead of failing the whole search.

    After a kill, the experiment state and the searcher state on storage are snapshots from slightly different
    moments (S3 uploads them separately), so a resumed experiment can continue a trial that the restored Optuna
    study never asked for. OptunaSearch then raises KeyError on its first result. Such a trial still runs, counts
    and can win; only TPE does not learn from it.
    """
    from ray.tune.search.optuna import OptunaSearch

    class ResumableOptunaSearch(OptunaSearch):
        def on_trial_result(self, trial_id, result):
            if trial_id in self._ot_trials:
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self._ot_trials:
                super().on_trial_complete(trial_id, result=result, error=error)

    return ResumableOptunaSearch(sampler=sampler)


def consistent_search(searcher, max_concurrent: int):
    """Ray's SearchGenerator around `searcher`, whose count of created trials is never behind the experiment's.

    Ray uploads the experiment state (its trials) and the generator's state one after the other; after a kill the
    generator's count may lag the trials already created, and the resumed search would create more than num_samples.
    On restore the count is raised to the number of trials in the newest experiment state beside it.
    """
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    class ConsistentSearchGenerator(SearchGenerator):
        def restore_from_dir(self, dirpath: str):
            super().restore_from_dir(dirpath)
            states = sorted(Path(dirpath).glob("experiment_state-*.json"))  # newest last, as Ray picks it
            if states:
                self._counter = max(self._counter, len(json.loads(states[-1].read_text())["trial_data"]))

    return ConsistentSearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))


def _space(search_cfg: SearchConfig, cfg: TrainConfig) -> dict:
    from ray import tune

    lo, hi = search_cfg.step_size_range or (1, cfg.epochs)
    space = {
        "lr": tune.loguniform(*search_cfg.lr_range),
        "step_size": tune.randint(lo, hi + 1),  # randint's upper bound is exclusive
        "gamma": tune.uniform(*search_cfg.gamma_range),
    }
    fixed = {"lr": search_cfg.lr_range, "step_size": (lo, hi), "gamma": search_cfg.gamma_range}
    return {k: fixed[k][0] if fixed[k][0] == fixed[k][1] else v for k, v in space.items()}  # min = max: not searched


def _settings(cfg: TrainConfig, search_cfg: SearchConfig) -> dict:
    return {"train": cfg.to_dict(), "tune": search_cfg.to_dict()}


class Experiment:
    """Where Ray Tune keeps the experiment: a local folder, or s3://bucket/prefix/name through `storage`."""

    def __init__(self, storage_location: str, name: str, s3: S3Config | None):
        self.remote = storage.is_s3(storage_location)
        if self.remote:
            self.store = run.store(s3)
            self.root = storage.S3Url.parse(storage_location)
            self.url = self.root.join(name)
            self.location = str(self.url)
            self.fs = self.store.pyarrow_fs()
            self.ray_storage = f"{self.root.bucket}/{self.root.key}".rstrip("/")  # what Ray takes with `fs`
        else:
            self.root = Path(storage_location).expanduser().resolve()
            self.folder = self.root / name
            self.location = str(self.folder)
            self.fs = None
            self.ray_storage = str(self.root)
        self.ray_path = f"{self.ray_storage}/{name}"

    def check_writable(self) -> None:
        if self.remote:
            self.store.check_writable(self.root)
        else:
            run.ensure_writable(self.root, "storage")

    def settings(self) -> dict | None:
        if self.remote:
            return self.store.read_json(self.url.join(SETTINGS_FILE))
        f = self.folder / SETTINGS_FILE
        return json.loads(f.read_text()) if f.is_file() else None

    def write_settings(self, settings: dict) -> None:
        if self.remote:
            self.store.write_json(self.url.join(SETTINGS_FILE), settings)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))

    def has_files(self) -> bool:
        if self.remote:
            return bool(self.store.listing(self.url))
        return self.folder.is_dir() and any(self.folder.iterdir())

    def delete(self) -> None:
        """Only this experiment (checked to be one of ours): the storage may hold others."""
        if self.remote:
            self.store.delete_prefix(self.url)
        elif self.folder.exists():
            shutil.rmtree(self.folder)


def _check_compatible(experiment: Experiment, saved: dict, settings: dict) -> None:
    changed = sorted(
        f"{key}" for section in ("train", "tune") for key in settings[section]
        if key not in RUNTIME_KEYS and saved.get(section, {}).get(key) != settings[section][key]
    )
    if changed:
        raise BadInput(f"experiment '{experiment.location}' was started with other settings ({', '.join(changed)}): "
                       "resume it with the same settings, pass --restart to start it over, or pick another --name")


def search(cfg: TrainConfig, search_cfg: SearchConfig, output: str, *, restart: bool = False, overwrite: bool = False,
           progress: bool = True, s3: S3Config | None = None) -> Outcome:
    """Run (or resume) the search, then export the best trial's best epoch as a bundle into `output`
    (a local folder or s3://...)."""
    started = time.perf_counter()
    note = say if progress else (lambda line: None)
    experiment = Experiment(search_cfg.storage, search_cfg.name, s3)
    saved = _preflight(cfg, search_cfg, experiment, output, restart, overwrite, s3)
    _quiet_ray()
    import ray

    # Ray starts (seconds) while the driver prepares the data set and checks the model: each waits for the other
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        note("preparing the data set (decoded once, shared by every trial on this machine)")
        prepared = pool.submit(run.setup, dataclasses.replace(cfg, device="cpu"), run.cache_dir(), s3=s3)
        try:
            _start_ray()
        finally:
            error = prepared.exception()  # waits for the preparation either way
    if error is not None:
        ray.shutdown()
        raise error
    try:
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        if nodes > 1 and not experiment.remote:
            raise BadInput(f"the Ray cluster has {nodes} nodes but storage '{search_cfg.storage}' is local to one: "
                           "pass --storage s3://bucket/prefix so every node can reach the experiment")
        if restart:
            experiment.delete()
        view = _progress(search_cfg.num_samples, cfg.epochs, progress)
        with storage.secrets_out_of_environment(), GracefulStop() as stop:
            tuner, resumed = _tuner(cfg, search_cfg, experiment, saved is not None and not restart, view, note, s3)
            grid = tuner.fit()
        if stop.requested:
            raise KeyboardInterrupt  # the experiment state is saved: the same command resumes it
        cut = view.active if search_cfg.time_budget_s else set()  # still running when the budget ran out
        trials = sorted((_trial(r, cfg.epochs, cut) for r in grid), key=lambda t: t.number)
        done = [t for t in trials if t.val_acc is not None]
        if not done:
            raise JobError(f"no trial finished an epoch ({trials[0].error if trials else 'no trials ran'}): "
                           f"see {experiment.location} for each trial's error")
        best, state = _best_with_checkpoint(grid, done)
    finally:
        # in this thread: stopping Ray in another one while this one drops Ray objects crashed its core worker
        ray.shutdown()
    remote = storage.is_s3(output)
    local = run.staging(output, run.cache_dir()) if remote else Path(output)
    outcome = _export(cfg, state, best, trials, local, experiment.location, resumed, time.perf_counter() - started)
    if remote:
        run.publish(local, output, s3)
        outcome = dataclasses.replace(outcome, output=output, bundle=f"{output}/{bundle.BEST_DIR}")
    return outcome


def _best_with_checkpoint(grid, done: list[Trial]) -> tuple[Trial, dict]:
    """The best trial whose saved checkpoint can be read, and that checkpoint. A trial whose checkpoint is gone (storage
    edited by hand, or lost to a kill) is passed over with a warning (shown even with --quiet/--json), instead of
    failing the whole search."""
    results = {Path(r.path).name: r for r in grid}
    for t in sorted(done, key=_rank, reverse=True):
        saved = results[t.folder].checkpoint
        try:
            if saved is None:
                raise FileNotFoundError(t.folder)
            with saved.as_directory() as folder:
                state = checkpoint.load(Path(folder))
        except (FileNotFoundError, JobError):
            say(f"warning: trial {t.trial_id} (val_acc {t.val_acc:.4f}) has no readable checkpoint left: passed over")
            continue
        at_best = [h for h in t.history if int(h["epoch"]) == state["best_epoch"]]
        if at_best:  # the checkpoint's best epoch, which the recorded history may run past after a kill
            return dataclasses.replace(t, best_epoch=state["best_epoch"], val_acc=at_best[0][METRIC]), state
        say(f"warning: trial {t.trial_id}: its checkpoint does not match its recorded epochs: passed over")
    raise JobError(f"no trial has a readable checkpoint under {grid.experiment_path}: run again with --restart")


def _preflight(cfg: TrainConfig, search_cfg: SearchConfig, experiment: Experiment, output: str, restart: bool,
               overwrite: bool, s3: S3Config | None) -> dict | None:
    """Every check that can fail before Ray starts: storage, output, settings, cluster address. Returns the settings
    the experiment was started with, if it exists."""
    experiment.check_writable()
    if storage.is_s3(output):
        run.check_remote_output(output, s3, overwrite or restart, experiment=experiment.location)
    else:
        run.check_tune_output(Path(output), experiment.location, overwrite or restart)
        run.ensure_writable(Path(output), "output folder")
    saved = experiment.settings()
    if saved is None and experiment.has_files():
        raise BadInput(f"'{experiment.location}' exists but is not a job tune experiment: pick another --name or --storage")
    if saved is not None and not restart:
        _check_compatible(experiment, saved, _settings(cfg, search_cfg))
    if search_cfg.step_size_range and search_cfg.step_size_range[1] > cfg.epochs:
        raise BadInput(f"step_size_range max {search_cfg.step_size_range[1]} is above epochs = {cfg.epochs}: lower it or raise --epochs")
    if search_cfg.grace_period > cfg.epochs:
        raise BadInput(f"grace_period = {search_cfg.grace_period} is above epochs = {cfg.epochs}: lower it or raise --epochs")
    if os.environ.get("RAY_ADDRESS"):
        _probe(os.environ["RAY_ADDRESS"])
    # Then `search` runs the whole data path once in the driver, while Ray starts: bad data fails before any trial,
    # and the decoded data set lands in the cache once for every trial on this machine. On the CPU: the driver may
    # run where the trials' GPUs are not (a KubeRay head node), and needs none.
    return saved


def _tuner(cfg: TrainConfig, search_cfg: SearchConfig, experiment: Experiment, exists: bool, view, note,
           s3: S3Config | None):
    """A new Tuner, or the saved one when the experiment `exists` and can be resumed; (tuner, resumed)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    resources, threads, concurrent = _resources(search_cfg, cfg)
    fn = tune.with_resources(
        tune.with_parameters(trainable, base=cfg.to_dict(), cache=str(run.cache_dir()), threads=threads,
                             s3=(s3 or S3Config()).to_dict()), resources
    )
    if exists and tune.Tuner.can_restore(experiment.ray_path, storage_filesystem=experiment.fs):
        note(f"resuming experiment {experiment.location}")
        tuner = tune.Tuner.restore(experiment.ray_path, fn, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=experiment.fs)
        # restore() brings back the callback pickled with the experiment; show this run's view instead
        tuner._local_tuner.get_run_config().callbacks = [view]
        return tuner, True
    note(f"new experiment {experiment.location}: {search_cfg.num_samples} trials, {concurrent} at a time, "
         f"{resources['cpu']} CPU + {resources['gpu']:g} GPU each")
    space = _space(search_cfg, cfg)
    sampled = any(not isinstance(v, (int, float)) for v in space.values())
    startup = search_cfg.startup_trials or min(10, max(2, search_cfg.num_samples // 3))
    sampler = (optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup) if search_cfg.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=cfg.seed))
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs, grace_period=search_cfg.grace_period,
                               reduction_factor=search_cfg.reduction_factor)
                 if search_cfg.early_stopping == "asha" else FIFOScheduler())
    tuner = tune.Tuner(
        fn,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=search_cfg.num_samples,
            # with every value fixed there is nothing to sample: Ray's default generator runs the one config
            search_alg=consistent_search(resumable_optuna_search(sampler), concurrent) if sampled else None,
            scheduler=scheduler,
            max_concurrent_trials=None if sampled else concurrent, time_budget_s=search_cfg.time_budget_s, reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=search_cfg.name, storage_path=experiment.ray_storage, storage_filesystem=experiment.fs,
            verbose=0, callbacks=[view],
            # The latest checkpoint holds the best weights too. Two, not one: Ray deletes the older one as soon as a
            # new one is registered but uploads the experiment state that points at it a moment later, so a kill
            # in between would leave the saved state pointing at a deleted checkpoint.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=search_cfg.max_failures),
        ),
    )
    experiment.write_settings(_settings(cfg, search_cfg))
    return tuner, False


class GracefulStop:
    """The first Ctrl-C or SIGTERM asks Ray Tune to stop and save the experiment (Ray stops on SIGUSR1);
    a second one stops at once. Afterwards `requested` says whether the search was cut short."""

    def __init__(self):
        self.requested = False
        self.old: dict = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        say("stopping: saving the experiment so that the same command resumes it (Ctrl-C again to stop at once)")
        os.kill(os.getpid(), signal.SIGUSR1)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.old.items():
            signal.signal(s, handler)


def _trial_dirname(trial) -> str:
    """trial_<number>_<id>: short, in creation order; the sampled values are in trials.csv."""
    number = trial.experiment_tag.split("_", 1)[0]
    return f"trial_{int(number) if number.isdigit() else 0:03d}_{trial.trial_id}"


def _trial(result, max_epochs: int, cut_by_budget: set[str]) -> Trial:
    folder = Path(result.path).name  # trial_<number>_<id>, see _trial_dirname
    _, number, trial_id = (folder.split("_", 2) + ["0", folder])[:3]
    df = result.metrics_dataframe
    columns = [c for c in ("epoch", *EPOCH_METRICS) if df is not None and c in df]
    history = df[columns].to_dict("records") if df is not None and METRIC in df else []
    best = max(history, key=lambda h: h[METRIC]) if history else None  # the first of equals, as Fit keeps it
    if result.error:
        status, error = "errored", str(result.error).strip().splitlines()[-1][:300]
    elif len(history) >= max_epochs:
        status, error = "completed", ""
    elif trial_id in cut_by_budget:
        status, error = "stopped (time budget)", ""
    else:
        status, error = "stopped early (ASHA)", ""
    config = result.config or {}
    return Trial(
        number=int(number) if number.isdigit() else 0, trial_id=trial_id, folder=folder,
        lr=config.get("lr", math.nan), step_size=config.get("step_size", 0), gamma=config.get("gamma", math.nan),
        epochs=len(history), val_acc=best[METRIC] if best else None, best_epoch=int(best["epoch"]) if best else None,
        status=status, error=error, history=history,
    )


def _export(cfg: TrainConfig, state: dict, best: Trial, trials: list[Trial], output: Path, experiment: str,
            resumed: bool, seconds: float) -> Outcome:
    """The best trial's best epoch as the same bundle `job train` writes, plus trials.csv/json and the plot."""
    trial_cfg = dataclasses.replace(cfg, lr=best.lr, step_size=best.step_size, gamma=best.gamma)
    weights = state["best_model"] if state["best_model"] is not None else state["model"]  # see Fit.checkpoint
    metrics = next(h for h in best.history if int(h["epoch"]) == state["best_epoch"])
    folder = bundle.write(output / bundle.BEST_DIR, weights, model_name=cfg.model, classes=tuple(state["classes"]),
                          prep=Preprocessing.from_dict(state["preprocessing"]), config=trial_cfg.to_dict(),
                          metrics=metrics, best_epoch=state["best_epoch"], data_fingerprint=state["data_fingerprint"])
    rows = [dataclasses.asdict(t) for t in trials]
    report.write_history(output, best.history)
    report.write_trials(output, rows)
    report.plot_trials(output / "trials.png", rows, best.trial_id)
    (output / run.RUN_FILE).write_text(json.dumps({
        "status": "done", "experiment": experiment, "best_trial": best.trial_id, "best": metrics,
        "config": trial_cfg.to_dict(), "versions": bundle.versions()}, indent=2))
    return Outcome(output, experiment, best, trials, folder, resumed, seconds)


def say(line: str) -> None:
    """Progress lines go to stderr; a module-level function, so the callback that holds it pickles with the experiment."""
    print(line, file=sys.stderr, flush=True)


def _progress(num_samples: int, epochs: int, enabled: bool):
    """A compact view of the search instead of Ray's tables: one line per reported epoch and per ended trial."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.started = time.monotonic()
            self.best: tuple[float, str] = (-1.0, "")
            self.ended: set[str] = set()
            self.errored: set[str] = set()
            self.active: set[str] = set()  # started (or continued) in this run and not ended yet

        def _line(self, trials, text: str) -> None:
            if not enabled:
                return
            running = sum(t.status == "RUNNING" and t.trial_id not in self.ended | self.errored for t in trials)
            ended = len(self.ended | {t.trial_id for t in trials if t.status == "TERMINATED"})
            errored = len(self.errored)
            best = f"best {self.best[0]:.4f} ({self.best[1]})" if self.best[1] else "best -"
            say(f"[{time.monotonic() - self.started:5.0f}s] {text} | {running} running, "
                f"{ended}/{num_samples} ended, {errored} errored | {best}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            acc = result.get(METRIC, -1.0)
            if acc > self.best[0]:
                self.best = (acc, trial.trial_id)
            c = trial.config
            self._line(trials, f"{trial.trial_id} lr {c['lr']:.2e} step {c['step_size']} gamma {c['gamma']:.2f} "
                               f"epoch {result.get('epoch')}/{epochs} val_acc {acc:.4f}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            done = trial.last_result.get("epoch", 0)
            self.ended.add(trial.trial_id)
            self.active.discard(trial.trial_id)
            self._line(trials, f"{trial.trial_id} {'completed' if done >= epochs else f'stopped after epoch {done}'}")

        def on_trial_start(self, iteration, trials, trial, **info):
            self.active.add(trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.errored.add(trial.trial_id)
            self.active.discard(trial.trial_id)
            self._line(trials, f"{trial.trial_id} errored")

    return Progress()


def summary_lines(o: Outcome) -> list[str]:
    counts = {}
    for t in o.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return [
        f"job tune: done in {o.seconds:.0f}s{' (resumed)' if o.resumed else ''}: "
        + ", ".join(f"{n} {s}" for s, n in counts.items()),
        f"best trial {o.best.trial_id}: val_acc {o.best.val_acc:.4f} at epoch {o.best.best_epoch} "
        f"(lr {o.best.lr:.3g}, step_size {o.best.step_size}, gamma {o.best.gamma:.3f})",
    ]

