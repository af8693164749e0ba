"""What a run leaves for the tracking tools users already look at: TensorBoard event files, always (tensorboardX,
which Ray Tune brings), one scalar per epoch metric under the same tags for `job train` and every trial of a search
(`job/val_acc`, `job/lr`, `job/images_per_s`, ...; the step is the epoch), so `tensorboard --logdir runs` puts a
train run and a search's trials on the same charts. And MLflow, when `tracking = "mlflow"` (the `mlflow` extra):
the settings as params, each epoch's metrics (same names, without the prefix), the best bundle as an artifact."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import sys
import time
from pathlib import Path

from job.config import EPOCH_METRICS
from job.errors import BadInput, JobError, first_line, redact

TENSORBOARD_DIR = "tensorboard"  # in a train run's folder; a trial writes into its own folder
TAG = "job/"


def scalars(metrics: dict) -> dict[str, float]:
    """The epoch metrics of a result, as TensorBoard tags: finite numbers only."""
    return {TAG + k: float(metrics[k]) for k in EPOCH_METRICS
            if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])}


class TensorBoard:
    """The event file of one run (or trial) in `folder`, created with the first epoch's values: a run that ends
    before its first epoch (bad data, a full disk) leaves none."""

    def __init__(self, folder: Path):
        self.folder, self.writer = folder, None

    def epoch(self, epoch: int, metrics: dict) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(self.folder), flush_secs=30)
        for tag, value in scalars(metrics).items():
            self.writer.add_scalar(tag, value, global_step=epoch)
        self.writer.flush()  # an epoch takes seconds to minutes: each is on disk when it ends

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflow:
    """One MLflow run (a `job train` run, a search, or a trial of it as a child run of the search's), through
    MlflowClient: no global MLflow state, so the library API leaves the caller's own MLflow runs alone. A tracking
    server that fails mid-run costs a warning, not the training run."""

    def __init__(self, uri: str, experiment: str, name: str, params: dict, parent: str | None = None,
                 warn=lambda line: None):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise BadInput("tracking = mlflow needs MLflow: pip install 'job[mlflow]' (or set tracking = none)") from None
        self.warn, self.failed = warn, False
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up notes are not the run's progress
        self.client = MlflowClient(uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(
                experiment, artifact_location=_artifact_root(uri))
            tags = {"mlflow.parentRunId": parent} if parent else {}
            self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
        except Exception as e:  # MLflow's errors are many types: an unreachable server, a locked database
            raise JobError(f"cannot log to MLflow at {redact(uri)} ({type(e).__name__}: {first_line(e)}): check "
                           "tracking_uri, or set tracking = none") from None

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:
            if not self.failed:
                self.warn(f"warning: MLflow could not {what} ({type(e).__name__}: {first_line(e)}); training goes on")
            self.failed = True

    def epoch(self, epoch: int, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(tag[len(TAG):], value, now, epoch) for tag, value in scalars(metrics).items()]
        self._call("log epoch metrics", self.client.log_batch, self.run_id, metrics=values)

    def artifacts(self, folder: Path, path: str) -> None:
        self._call(f"store {path}", self.client.log_artifacts, self.run_id, str(folder), path)

    def tag(self, key: str, value: str) -> None:
        self._call("set a tag", self.client.set_tag, self.run_id, key, value)

    def close(self, failed: bool = False) -> None:
        # MLflow prints the run's address on a tracking server to stdout, which holds job's results (--json): stderr
        with contextlib.redirect_stdout(sys.stderr):
            self._call("end the run", self.client.set_terminated, self.run_id, "FAILED" if failed else "FINISHED")


class SearchRuns:
    """A search's MLflow runs (tracking = mlflow): one for the search, with the best bundle as its artifact, and a
    child run per trial. Fed from the driver, so trials on any node need no access to the tracking store; a trial
    whose run cannot be created or written is a warning, not a failed trial."""

    def __init__(self, uri: str, base: dict, search: dict, experiment: str, warn):
        self.uri, self.base, self.trials, self.warn = uri, base, {}, warn
        params = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in search.items()}
        self.search = MLflow(uri, "job", f"tune {experiment}", {"kind": "tune", **params}, warn=warn)

    def start(self, trial_id: str, params: dict) -> None:
        try:
            self.trials[trial_id] = MLflow(self.uri, "job", trial_id, {**self.base, **params},
                                           parent=self.search.run_id, warn=self.warn)
        except JobError as e:
            self.warn(f"warning: trial {trial_id} is not logged to MLflow ({e})")

    def epoch(self, trial_id: str, epoch: int, metrics: dict) -> None:
        if trial_id in self.trials:
            self.trials[trial_id].epoch(epoch, metrics)

    def end(self, trial_id: str, failed: bool) -> None:
        run = self.trials.pop(trial_id, None)
        if run:
            run.close(failed)

    def close(self, best, bundle_folder: Path | None) -> None:
        """`best`: the best trial (results.Trial), None when the search failed."""
        for trial_id in list(self.trials):
            self.end(trial_id, failed=False)
        if best is not None and bundle_folder is not None:
            self.search.tag("best_trial", best.trial_id)
            self.search.epoch(best.best_epoch, next(h for h in best.history if int(h["epoch"]) == best.best_epoch))
            self.search.artifacts(bundle_folder, "bundle")
        self.search.close(failed=best is None)


def mlflow_uri(cfg_uri: str | None, output: str) -> str:
    """The tracking URI: as set, or a SQLite file `mlflow.db` beside the output folder (runs/mlflow.db for the
    default outputs, shared by job train and job tune). MLflow 3 refuses new runs in its old file store."""
    if cfg_uri:
        return cfg_uri
    if re.match(r"^s3://", output):
        raise BadInput("tracking = mlflow with an s3:// output needs a tracking_uri (an MLflow server or a database "
                       "URL): set it, e.g. --set tracking_uri=http://mlflow:5000")
    return f"sqlite:///{Path(output).expanduser().resolve().parent / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store beside its file (mlartifacts/), not in the working directory."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None
