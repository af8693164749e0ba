"""The Optuna study behind `job tune`, through Optuna's public ask-and-tell API.

One Optuna trial per Ray trial (its Ray id kept as the user attribute `ray_trial_id`), each epoch's metric reported
as an intermediate value, trials stopped early by ASHA told as PRUNED and crashed ones as FAIL. The study lives in
an Optuna journal file beside the experiment, appended to as each trial is asked for and told, so it is the search's
own durable record: a resumed search reads which trials exist from it (never more than `num_samples`), TPE learns
from every finished trial, and `optuna-dashboard JOURNAL` shows the study during and after the search.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from job.errors import BadInput, first_line, redact
from job.space import Dimension

JOURNAL = "optuna.journal"
METRIC = "metric"  # a study attribute: the metric its values are of
WARM_FROM = "warm_start_from"  # a trial attribute: where a warm-start trial came from
RAY_TRIAL_ID = "ray_trial_id"
LOST = "lost_ray_trial_ids"  # a study attribute: trials asked for that no longer count (never recorded, or replaced)


@dataclasses.dataclass(frozen=True)
class Space:
    """What is searched, as Optuna distributions, and the values fixed for every trial (job/space.py checks both)."""

    searched: dict[str, BaseDistribution]
    fixed: dict[str, Any]
    names: tuple[str, ...]  # every setting of the space, in the order it is shown

    @classmethod
    def of(cls, dims: list[Dimension]) -> Space:
        def distribution(d: Dimension) -> BaseDistribution:
            if d.kind == "choice":
                return CategoricalDistribution(d.values)
            if d.kind == "int":
                return IntDistribution(*d.values, log=d.log)
            return FloatDistribution(*d.values, log=d.kind == "loguniform")

        return cls({d.name: distribution(d) for d in dims if d.kind != "fixed"},
                   {d.name: d.values[0] for d in dims if d.kind == "fixed"}, tuple(d.name for d in dims))


@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str  # the reported metric the study optimises
    mode: str  # "max" or "min"
    max_steps: int  # a trial told before this many steps was stopped early (PRUNED)


def storage_of(where: Path | str):
    """Optuna's storage for a study: the journal file `where`, or an Optuna RDB URL (sqlite:///..., postgresql://...)."""
    if is_url(str(where)):
        try:
            return optuna.storages.RDBStorage(str(where))
        except Exception as e:  # SQLAlchemy and its drivers raise many types: a bad URL, a missing driver, no server
            raise BadInput(f"the Optuna storage {redact(str(where))} cannot be opened ({type(e).__name__}: "
                           f"{first_line(e, 150)}): check the URL and that its database driver is installed") from None
    return JournalStorage(JournalFileBackend(str(where)))


def is_url(where: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+]*://", where) is not None and not where.startswith("s3://")


class Study:
    """The study of one experiment, asked and told by trial key (Ray's trial id)."""

    def __init__(self, where: Path | str, name: str, space: Space, objective: Objective, sampler: str, seed: int,
                 startup_trials: int, num_samples: int, on_change: Callable[[], None] = lambda: None,
                 fresh: bool = False, warm: list[FrozenTrial] = (), first: dict | None = None):
        """`where`: the journal file or an RDB URL. A `fresh` study drops one of the same name left in an RDB by an
        earlier experiment. A new study takes the `warm` trials (finished trials of an earlier search) and runs
        `first` (settings) as its first trial."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = storage_of(where)
        self.where, self.space, self.objective, self.num_samples, self.on_change = where, space, objective, num_samples, on_change
        existing = name in optuna.get_all_study_names(storage)
        if existing and fresh:
            optuna.delete_study(study_name=name, storage=storage)
            existing = False
        previous = len(optuna.load_study(study_name=name, storage=storage).trials) if existing else 0
        # A resumed search draws new numbers, not the first run's again: the sampler's seed moves on with the study.
        sampler_seed = seed + previous
        chosen = (optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=startup_trials) if sampler == "tpe"
                  else optuna.samplers.RandomSampler(seed=sampler_seed))
        self.study = optuna.create_study(study_name=name, storage=storage, sampler=chosen, load_if_exists=True,
                                         direction="maximize" if objective.mode == "max" else "minimize")
        if not existing:
            self.study.set_user_attr(METRIC, objective.metric)
            self.study.add_trials(warm)  # the sampler learns from them; they are not trials of this search
            if first:
                self.study.enqueue_trial(first)
        lost = set(self.study.user_attrs.get(LOST, []))
        self.numbers = {t.user_attrs[RAY_TRIAL_ID]: t.number for t in self.study.trials
                        if RAY_TRIAL_ID in t.user_attrs and t.user_attrs[RAY_TRIAL_ID] not in lost}
        self.asked: dict[str, optuna.Trial] = {}  # trials asked by this process: they take intermediate values
        self.seen: dict[str, list[float]] = {}  # every finite value of the metric reported here, per trial
        self.reported: dict[str, set[int]] = {}  # the steps told to Optuna, per trial
        self.unrecorded: set[str] = set()  # trials the experiment holds that the journal does not (see reconcile)
        self.replaced = lost  # trials that no longer count: not recorded (reconcile) or run again as new ones (replace)
        self.open: set[str] = set()  # trials asked by this process and not told yet

    def ask(self, key: str) -> dict | None:
        """The settings of trial `key` (the same ones again for a trial that was already asked for); None once the
        study holds `num_samples` trials (see `finished`)."""
        if key in self.numbers:
            frozen = self.study.trials[self.numbers[key]]
            return {**self.space.fixed, **frozen.params}
        if len(self.numbers) + len(self.unrecorded) >= self.num_samples:
            return None
        trial = self.study.ask(dict(self.space.searched))
        trial.set_user_attr(RAY_TRIAL_ID, key)
        self.numbers[key], self.asked[key] = trial.number, trial
        self.open.add(key)
        self.on_change()  # recorded before the trial starts: a resumed search never counts it twice
        return {**self.space.fixed, **trial.params}

    def report(self, key: str, step: int, metrics: dict) -> None:
        value = metrics.get(self.objective.metric)
        if value is None or not math.isfinite(value):
            return
        self.seen.setdefault(key, []).append(float(value))
        steps = self.reported.setdefault(key, set())
        if key in self.asked and step not in steps:  # a trial retried from a checkpoint reports its epochs again
            steps.add(step)
            self.asked[key].report(float(value), step)

    def tell(self, key: str, steps: int, metrics: dict | None, failed: bool) -> None:
        """Trial `key` ended after `steps` steps: complete, stopped early (pruned) or failed. A trial this study never
        asked for (a snapshot race after a kill) is left out of the study but still runs and counts."""
        self.open.discard(key)
        number = self.numbers.get(key)
        frozen = self.study.trials[number] if number is not None else None
        if frozen is None or frozen.state != TrialState.RUNNING:
            return
        if metrics and not failed:  # Ray gives a trial's last result to on_trial_complete only: its epoch too
            self.report(key, steps, metrics)
            frozen = self.study.trials[number]
        last = (metrics or {}).get(self.objective.metric)
        values = [*frozen.intermediate_values.values(), *self.seen.get(key, []),
                  *([float(last)] if last is not None and math.isfinite(last) else [])]
        value = (max if self.objective.mode == "max" else min)(values) if values else None  # the trial's best epoch
        if failed or value is None:
            self.study.tell(number, state=TrialState.FAIL)
        elif steps < self.objective.max_steps:
            self.study.tell(number, state=TrialState.PRUNED)
        else:
            self.study.tell(number, float(value))
        self.on_change()

    def finished(self) -> bool:
        """No trial is left to ask for: the study holds `num_samples` trials and none asked here is still running
        (one of them may yet be replaced)."""
        return len(self.numbers) + len(self.unrecorded) >= self.num_samples and not self.open

    def ended(self, keys: set[str]) -> None:
        """Trials Ray has ended, some perhaps without telling the searcher (a reused worker that could not be reset):
        `finished` waits for none of them."""
        self.open -= keys

    def replace(self, key: str) -> bool:
        """Trial `key` ended before it could run, through no fault of its settings: it no longer counts, and its
        settings are the next ones asked for, by a new trial. False for a trial this study did not ask for."""
        number = self.numbers.pop(key, None)
        if number is None:
            return False
        self.open.discard(key)
        frozen = self.study.trials[number]
        if frozen.state == TrialState.RUNNING:
            self.study.tell(number, state=TrialState.FAIL)
        self.study.enqueue_trial(frozen.params)
        self.replaced.add(key)
        self.study.set_user_attr(LOST, sorted(self.replaced))
        self.on_change()
        return True

    def reconcile(self, known: set[str], unfinished: set[str] = frozenset()) -> None:
        """After a resume, with the trials the restored experiment holds. The journal and Ray's state are saved at
        different moments, so a kill can leave either one behind. A trial the journal holds but the experiment does
        not know no longer counts: one still running was never run to its end (told FAIL); one that ended (a short
        trial can run from start to end between two of Ray's snapshots) keeps its result for the sampler, but its
        results and checkpoints are not the experiment's. A trial the experiment holds but the journal does not
        (its record did not reach storage) counts all the same. Either way the search runs `num_samples` trials of
        the experiment, no more, no fewer. The `unfinished` ones run on in this process (see `finished`)."""
        self.unrecorded = known - set(self.numbers) - self.replaced
        self.open |= unfinished & set(self.numbers)
        lost = [k for k in self.numbers if k not in known]
        if not lost:
            return
        for key in lost:
            number = self.numbers.pop(key)
            if self.study.trials[number].state == TrialState.RUNNING:
                self.study.tell(number, state=TrialState.FAIL)
        self.replaced.update(lost)
        self.study.set_user_attr(LOST, sorted(self.replaced))
        self.on_change()

    def importances(self) -> dict[str, float]:
        """Parameter importances (Optuna's default evaluator), largest first; empty when too few trials finished."""
        finished = [t for t in self.study.trials if t.state == TrialState.COMPLETE]
        if len(finished) < 2 or not self.space.searched:
            return {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "importances will be equal" on tiny studies: the numbers say so
                return optuna.importance.get_param_importances(self.study)
        except (RuntimeError, ValueError):  # e.g. every finished trial has the same parameters
            return {}


def warm_trials(where: Path | str, label: str, space: Space, objective: Objective) -> list[FrozenTrial]:
    """The finished trials (complete, and stopped early with their per-epoch values) of the study at `where` (a
    journal file, or an RDB URL with `#study` when it holds several), as trials of this search's space, to warm
    start its sampler. Refused when the study optimised another metric or direction, or searched other settings;
    trials outside this space's ranges and choices are left out."""
    url, _, wanted = str(where).partition("#") if is_url(str(where)) else (str(where), "", "")
    storage = storage_of(url)
    names = optuna.get_all_study_names(storage)
    if wanted and wanted not in names or not names:
        raise BadInput(f"warm start: {label} holds no Optuna study{' named ' + wanted if wanted else ''}: pass an "
                       "earlier experiment's folder, its optuna.journal, or an Optuna storage URL")
    if not wanted and len(names) > 1:
        raise BadInput(f"warm start: {label} holds {len(names)} studies ({', '.join(names[:5])}): name one, URL#study")
    source = optuna.load_study(study_name=wanted or names[0], storage=storage)
    metric = source.user_attrs.get(METRIC, "val_acc")  # job's journals before the metric could be chosen
    mode = "max" if source.direction == optuna.study.StudyDirection.MAXIMIZE else "min"
    if (metric, mode) != (objective.metric, objective.mode):
        raise BadInput(f"warm start: {label} optimised {metric} ({mode}), this search {objective.metric} "
                       f"({objective.mode}): warm start from a search of the same metric")
    finished = [t for t in source.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.params]
    searched = set(space.searched)
    theirs = set().union(*(t.params for t in finished)) if finished else set()
    if theirs != searched:
        raise BadInput(f"warm start: {label} searched {', '.join(sorted(theirs)) or 'nothing finished'}, this space "
                       f"searches {', '.join(sorted(searched))}: warm start from a search of the same settings")
    fit = [t for t in finished if all(_contains(space.searched[k], t.params[k]) for k in searched)]
    if not fit:
        raise BadInput(f"warm start: none of the {len(finished)} finished trials of {label} lies inside this space's "
                       "ranges and choices: widen the space, or warm start from another search")
    return [optuna.trial.create_trial(
        params={k: t.params[k] for k in searched}, distributions=dict(space.searched), state=t.state,
        value=t.value if t.state == TrialState.COMPLETE else None, intermediate_values=t.intermediate_values,
        user_attrs={WARM_FROM: f"{label} trial {t.number}"}) for t in fit]


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return any(type(value) is type(c) and value == c for c in distribution.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(distribution, IntDistribution) and value != int(value):
        return False
    return distribution.low <= value <= distribution.high


def first_trial(space: Space, base: dict, required: bool) -> dict | None:
    """The training settings as they are, as the first trial of the search: a known-good start for the sampler (ASHA
    may still stop it, as any trial). None where they lie outside the space, unless `required` (--enqueue-default)."""
    first = {k: base[k] for k in space.searched}
    outside = [f"{k} = {v!r}" for k, v in first.items() if not _contains(space.searched[k], v)]
    if outside and not required:
        return None
    if outside:
        raise BadInput(f"enqueue_default: the training settings' {', '.join(outside)} lie outside the space: widen the "
                       "space or change the setting")
    return first
