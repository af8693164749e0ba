"""What a finished run or search returns (`Result`, `Trial`) and what it leaves in its output: the bundle, the
tables, the plots and `run.json`, one layout for `job train` and `job tune`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from job import bundle, report
from job.data import Preprocessing
from job.files import write_json
from job.storage import RUN_FILE


@dataclasses.dataclass
class Trial:
    """One trial of a search: a row of trials.csv."""

    number: int  # creation order
    trial_id: str
    params: dict  # the sampled settings
    epochs: int  # epochs it ran
    val_acc: float | None  # its best, over all of its epochs
    best_epoch: int | None
    status: str  # completed | stopped early (ASHA) | stopped (time budget) | errored
    error: str
    history: list[dict] = dataclasses.field(repr=False, default_factory=list)

    def row(self) -> dict:
        """As the user sees it (trials.csv, --json): the settings flattened in, no per-epoch history."""
        return {"number": self.number, "trial_id": self.trial_id, **self.params, "epochs": self.epochs,
                "val_acc": self.val_acc, "best_epoch": self.best_epoch, "status": self.status, "error": self.error}


def rank(t: Trial) -> tuple:
    """Best val_acc over all epochs; ties go to the lower val_loss at that epoch, then to the earlier trial."""
    at_best = next(h for h in t.history if int(h["epoch"]) == t.best_epoch)
    return (t.val_acc, -at_best["val_loss"], -t.number)


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

    def summary(self) -> dict:
        """As --json prints it."""
        out = {"output": self.output, "bundle": self.bundle, "best_epoch": self.best_epoch, "best": self.best,
               "epochs": len(self.history), "seconds": round(self.seconds, 1)}
        if self.best_trial is None:
            return out | {"resumed_from_epoch": self.resumed_from, "skipped_images": self.skipped}
        return out | {"experiment": self.experiment, "resumed": self.resumed, "best": self.best_trial.row(),
                      "trials": [t.row() for t in self.trials], "importances": self.importances}


def run_record(status: str, meta: dict, **extra) -> dict:
    """run.json: the same layout for every run (`kind` train or tune)."""
    return {"status": status, **meta, **extra, "versions": bundle.versions()}


def write_search(folder: Path, state: dict, best: Trial, trials: list[Trial], base_config: dict,
                 experiment: str) -> dict:
    """The best trial's best epoch as the same bundle `job train` writes, plus trials.csv/json, the history of the
    best trial, the plot and run.json, into the local folder `folder`. Returns the best epoch's metrics."""
    config = base_config | best.params
    weights = state["best_model"] if state["best_model"] is not None else state["model"]  # see Fit.checkpoint
    metrics = next(h for h in best.history if int(h["epoch"]) == state["best_epoch"])
    info = bundle.Info(model=config["model"], classes=tuple(state["classes"]),
                       prep=Preprocessing.from_dict(state["preprocessing"]), config=config, metrics=metrics,
                       best_epoch=state["best_epoch"], data_fingerprint=state["data_fingerprint"])
    bundle.write(folder / bundle.BEST_DIR, weights, info)
    rows = [dataclasses.asdict(t) | t.row() for t in trials]
    report.write_history(folder, best.history)
    report.write_trials(folder, rows, list(best.params))
    report.plot_trials(folder / "trials.png", rows, best.trial_id)
    write_json(folder / RUN_FILE, run_record("done", {"kind": "tune", "experiment": experiment, "config": config,
                                                      "classes": list(state["classes"])},
                                             best_trial=best.trial_id, best_epoch=state["best_epoch"], best=metrics))
    return metrics
