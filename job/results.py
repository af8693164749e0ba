"""What a finished run or search returns (`Result`, `Trial`) and what it leaves in its output: the bundle, the
tables, the plots and `run.json`, one layout for `job train` and `job tune`."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from job import bundle, page, report
from job.checkpoint import CHECKPOINT_NAME
from job.data import Preprocessing
from job.errors import BadInput, JobError
from job.progress import describe, say, status_counts
from job.files import write_json
from job.storage import RUN_FILE
from job.tracking import TENSORBOARD_DIR


@dataclasses.dataclass
class Trial:
    """One trial of a search: a row of trials.csv."""

    number: int  # creation order
    trial_id: str
    params: dict  # the sampled settings
    epochs: int  # epochs it ran
    value: float | None  # its best value of the search's metric, over all of its epochs
    best_epoch: int | None
    status: str  # completed | stopped early (ASHA) | stopped (time budget) | errored
    error: str
    history: list[dict] = dataclasses.field(repr=False, default_factory=list)
    metric: str = "val_acc"
    mode: str = "max"

    @classmethod
    def of(cls, folder: str, params: dict, history: list[dict], objective: tuple[str, str], max_epochs: int,
           error: str, cut_by_budget: set[str]) -> Trial:
        """A trial from its folder name (trial_<number>_<id>), settings, per-epoch history and error, if any, with
        its best epoch by `objective` (metric, mode)."""
        _, number, trial_id = (folder.split("_", 2) + ["0", folder])[:3]
        metric, mode = objective
        history = _by_epoch(history)
        pick = max if mode == "max" else min
        best = pick(history, key=lambda h: h[metric]) if history else None  # the first of equals, as Fit keeps it
        if error:
            status = "errored"
        elif history and int(history[-1]["epoch"]) >= max_epochs:
            status = "completed"
        elif trial_id in cut_by_budget:
            status = "stopped (time budget)"
        else:
            status = "stopped early (ASHA)"
        return cls(number=int(number) if number.isdigit() else 0, trial_id=trial_id, params=params,
                   epochs=int(history[-1]["epoch"]) if history else 0, value=best[metric] if best else None,
                   best_epoch=int(best["epoch"]) if best else None, status=status, error=error, history=history,
                   metric=metric, mode=mode)

    def row(self) -> dict:
        """As the user sees it (trials.csv, --json): the settings flattened in, no per-epoch history."""
        return {"number": self.number, "trial_id": self.trial_id, **self.params, "epochs": self.epochs,
                self.metric: self.value, "best_epoch": self.best_epoch, "status": self.status, "error": self.error}


def _by_epoch(history: list[dict]) -> list[dict]:
    """One row per epoch in epoch order, the last recorded winning: a trial retried from a checkpoint reports the
    epochs after it again."""
    return sorted({int(h["epoch"]): h for h in history}.values(), key=lambda h: int(h["epoch"]))


def rank(t: Trial) -> tuple:
    """Larger is better: the best value of the metric over all epochs; ties go to the lower val_loss at that epoch
    (the higher val_acc when the metric is val_loss), then to the earlier trial."""
    at_best = next(h for h in t.history if int(h["epoch"]) == t.best_epoch)
    tie = at_best["val_acc"] if t.metric == "val_loss" else -at_best["val_loss"]
    return (t.value if t.mode == "max" else -t.value, tie, -t.number)


def best_readable(done: list[Trial], state_of, where: str) -> tuple[Trial, dict]:
    """The best trial whose saved checkpoint can be read (`state_of(trial)`), and that checkpoint's state. A trial
    whose checkpoint is gone (storage edited by hand, or lost to a kill) is passed over with a warning (shown even
    with --quiet/--json), instead of failing the whole search."""
    for t in sorted(done, key=rank, reverse=True):
        try:
            state = state_of(t)
        except (FileNotFoundError, BadInput):  # gone, or damaged; a storage that fails is not passed over
            say(f"warning: trial {t.trial_id} ({t.metric} {t.value:.4f}) has no readable checkpoint left: passed over")
            continue
        # The checkpoint's history is whole up to its epoch; the one Ray recorded may lack epochs (a trial retried
        # after a lost node) or run past it (a kill before the checkpoint was saved).
        history = _by_epoch([*t.history, *state.get("history", [])])
        at_best = [h for h in history if int(h["epoch"]) == state["best_epoch"]]
        if at_best:
            return dataclasses.replace(t, best_epoch=state["best_epoch"], value=at_best[0][t.metric],
                                       history=history), state
        say(f"warning: trial {t.trial_id}: its checkpoint does not match its recorded epochs: passed over")
    raise JobError(f"no trial has a readable checkpoint under {where}: run again with --restart")


@dataclasses.dataclass
class Result:
    """What `job.train` and `job.tune` return; a search fills the fields after `resumed_from`."""

    output: str  # the run folder or s3:// prefix
    bundle: str  # the best model's bundle, inside `output`
    best_epoch: int
    best: dict[str, float]  # the metrics of the best epoch
    history: list[dict[str, float]]  # the best run's (or trial's) per-epoch metrics
    seconds: float = 0.0
    skipped: int = 0  # unreadable images skipped
    resumed_from: int = 0  # job train: the epoch a resumed run continued from
    experiment: str = ""  # job tune: where the experiment lives
    trials: list[Trial] = dataclasses.field(default_factory=list)
    best_trial: Trial | None = None
    resumed: bool = False
    importances: dict[str, float] = dataclasses.field(default_factory=dict)
    study: str = ""  # job tune: the Optuna study's storage (journal file or URL), for optuna-dashboard

    def summary(self) -> dict:
        """As --json prints it."""
        out = {"output": self.output, "bundle": self.bundle, "best_epoch": self.best_epoch, "best": self.best,
               "epochs": len(self.history), "seconds": round(self.seconds, 1)}
        if self.best_trial is None:
            return out | {"resumed_from_epoch": self.resumed_from, "skipped_images": self.skipped}
        return out | {"experiment": self.experiment, "resumed": self.resumed, "best": self.best_trial.row(),
                      "trials": [t.row() for t in self.trials], "importances": self.importances,
                      "study": self.study}


# What a run writes into its output: `--overwrite` replaces these, and leaves every other file alone.
REPORT = "report.html"
RUN_FILES = (RUN_FILE, CHECKPOINT_NAME, "history.json", "history.csv", "curves.png", "trials.json",
             "trials.csv", "trials.png", REPORT, bundle.BEST_DIR, TENSORBOARD_DIR)


def clear(folder: Path) -> None:
    """Remove an earlier run's files from `folder` (for --overwrite), so two runs' files never mix."""
    for name in RUN_FILES:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_record(status: str, meta: dict, **extra) -> dict:
    """run.json: the same layout for every run (`kind` train or tune)."""
    return {"status": status, **meta, **extra, "versions": bundle.versions()}


def write_search(folder: Path, state: dict, best: Trial, trials: list[Trial], base_config: dict,
                 experiment: str, importances: dict[str, float] | None = None, study: str = "") -> dict:
    """The best trial's best epoch as the same bundle `job train` writes, plus trials.csv/json, the history of the
    best trial, the plot, report.html and run.json, into the local folder `folder`. Returns the best epoch's
    metrics."""
    config = base_config | best.params
    weights = state["best_model"] if state["best_model"] is not None else state["model"]  # see Fit.checkpoint
    metrics = next(h for h in best.history if int(h["epoch"]) == state["best_epoch"])
    info = bundle.Info(model=config["model"], classes=tuple(state["classes"]),
                       prep=Preprocessing.from_dict(state["preprocessing"]), config=config, metrics=metrics,
                       best_epoch=state["best_epoch"], data_fingerprint=state["data_fingerprint"])
    bundle.write(folder / bundle.BEST_DIR, weights, info)
    rows = [dataclasses.asdict(t) | t.row() for t in trials]
    report.write_history(folder, best.history)
    report.write_trials(folder, rows, list(best.params), best.metric)
    report.plot_trials(folder / "trials.png", rows, best.trial_id, best.metric)
    counts = status_counts(trials)
    summary = [f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; metric {best.metric} "
               f"({best.mode}).", f"Best trial {best.trial_id}: {best.metric} {best.value:.4f} at epoch "
               f"{state['best_epoch']} ({describe(best.params)}); exported to best/."]
    page.write(folder / REPORT, title=f"job tune: {experiment}", summary=summary, trials=rows, params=list(best.params),
               metric=best.metric, best_id=best.trial_id, importances=importances or {},
               confusion=state.get("best_confusion", []), classes=list(state["classes"]),
               study_command=f"optuna-dashboard {study}" if study else "")
    write_json(folder / RUN_FILE, run_record("done", {"kind": "tune", "experiment": experiment, "config": config,
                                                      "classes": list(state["classes"])},
                                             best_trial=best.trial_id, best_epoch=state["best_epoch"], best=metrics))
    return metrics
