"""Configuration: frozen, validated settings dataclasses (training, search, S3), resolved as defaults < file <
environment < flags.

Every value is type-checked and range-checked here, so the rest of the code can trust it. Unknown keys in files and
flags are rejected by name, with the closest known key suggested; unknown JOB_* environment variables (other tools
set JOB_NAME, JOB_URL, ...) are ignored, with a warning when one looks like a misspelt setting. The resolved config
is saved with every run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml

from job import space as spaces
from job.errors import BadInput, with_article
from job.files import missing

# The metrics every epoch reports, by the same names everywhere (computed in job/metrics.py; named here, where the
# search's metric is checked, so that reading settings imports no torch).
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "val_f1_macro", "lr", "epoch_s", "images_per_s")
ENV_PREFIX = "JOB_"
MAX_EPOCHS = 10_000  # past this a setting is a typo, not a plan
MAX_FILE_BYTES = 1 << 20  # a config file is a page of settings, not data
# JOB_* variables that are not settings: where things live, and the test suite's own.
ENV_NOT_SETTINGS = ("JOB_CACHE", "JOB_FASHION_MNIST_DIR", "JOB_TEST_")
# JOB_* variables that other tools set (Jenkins, in every build): ignored without a word.
ENV_OF_OTHER_TOOLS = ("JOB_NAME", "JOB_BASE_NAME", "JOB_URL", "JOB_DISPLAY_URL")


def _field(default: Any, help: str, choices: tuple[str, ...] = ()) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


class Settings:
    """Shared by the settings dataclasses: plain-dict round trip, with every value coerced and checked."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config"):
        return cls(**{k: _coerce(cls, k, v, source) for k, v in _known(cls, values, source).items()})


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    SECTION: ClassVar[str] = ""
    # data
    data: str = _field("fashion-mnist", "Image folder (DIR/train/<class>, DIR/val/<class> or DIR/<class>) or a built-in data set name")
    val_fraction: float = _field(0.2, "Share of each class held out for validation when DIR has no train/val split")
    builtin_train_per_class: int = _field(100, "Training images per class materialised from a built-in data set")
    builtin_val_per_class: int = _field(50, "Validation images per class materialised from a built-in data set")
    skip_bad_images: bool = _field(False, "Skip unreadable images (and report how many) instead of failing")
    augment: bool = _field(True, "Random crop and horizontal flip while training")
    # model and preprocessing
    model: str = _field("efficientnet_lite0", "efficientnet_lite0 or any torchvision classification model name")
    weights: str = _field("DEFAULT", "DEFAULT, a torchvision weights name, none, or a path to a state_dict file")
    freeze_backbone: bool = _field(False, "Train only the new classifier head (feature extraction)")
    image_size: int | None = _field(None, "Input size in pixels; default: the weights' size (48 for fashion-mnist)")
    mean: tuple[float, float, float] | None = _field(None, "Normalisation mean; default: the weights'")
    std: tuple[float, float, float] | None = _field(None, "Normalisation std; default: the weights'")
    interpolation: str | None = _field(None, "Resize interpolation; default: the weights'", ("bilinear", "bicubic", "nearest"))
    # optimisation
    epochs: int = _field(5, "Epochs to train")
    batch_size: int = _field(32, "Images per batch")
    optimizer: str = _field("adamw", "Optimizer", ("sgd", "adamw"))
    lr: float = _field(0.001, "Learning rate")
    momentum: float = _field(0.9, "SGD momentum")
    weight_decay: float = _field(0.0001, "Weight decay")
    scheduler: str = _field("step", "LR schedule, stepped once per epoch (plateau: factor gamma, patience step_size)", ("step", "cosine", "plateau"))
    step_size: int = _field(2, "Epochs between LR decays (StepLR)")
    gamma: float = _field(0.1, "LR decay factor (StepLR, plateau)")
    loss: str = _field("cross_entropy", "Loss function", ("cross_entropy", "focal"))
    label_smoothing: float = _field(0.0, "Label smoothing for cross_entropy")
    focal_gamma: float = _field(2.0, "Focusing parameter of the focal loss")
    # execution
    seed: int = _field(0, "Seed for the split, initialisation, shuffling and augmentation")
    device: str = _field("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = _field(True, "Mixed precision (autocast + GradScaler) on CUDA; ignored on CPU")
    workers: int = _field(0, "Processes that decode images when a data set of 2,048 or more is first prepared, threads below that (0: one per CPU; 1: in the process itself)")
    # tracking (TensorBoard event files are always written)
    tracking: str = _field("none", "Also log params, epoch metrics and the best bundle to MLflow (pip install 'job[mlflow]')",
                           ("none", "mlflow"))
    tracking_uri: str | None = _field(None, "MLflow tracking URI; default: sqlite mlflow.db beside the output folder")

    def __post_init__(self) -> None:
        _validate(self)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _known(cls: type, values: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    fields = _fields(cls)
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(key, [k for c in SECTIONS for k in _fields(c)], n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see `job config` for the known keys"
            raise BadInput(f"unknown config key {_shown(key)} in {source}: {hint}")
    return values


def _coerce(cls: type, key: str, value: Any, source: str) -> Any:
    """Turn a file, environment or flag value into the field's type, or fail naming the key."""
    hint = typing.get_type_hints(cls)[key]
    optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
    base = next(a for a in hint.__args__ if a is not type(None)) if optional else hint
    if typing.get_origin(base) is dict:  # the search space: a table of its own (job/space.py)
        return None if value is None else spaces.parse(value, source)
    if isinstance(value, str) and base is not str:
        text = value.strip()
        if optional and text.lower() in ("", "none", "null"):
            return None
        try:
            value = json.loads(text.lower() if base is bool else text)
        except json.JSONDecodeError:
            value = text.split(",") if typing.get_origin(base) is tuple else text
    if value is None and optional:
        return None
    want = typing.get_origin(base) or base
    if want is tuple:
        n, kinds = len(base.__args__), base.__args__
        example = ",".join(["0.5"] * n if kinds[0] is float else ["1"] * n)
        wrong = BadInput(f"{key} = {_shown(value)} in {source}: give {n} {'numbers' if kinds[0] is float else 'integers'}, e.g. {key} = {example}")
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise wrong
        try:
            return tuple(_coerce_scalar(cls, key, v, t, source) for v, t in zip(value, kinds))
        except _NotFinite:
            raise _NotFinite(f"{key} = {_shown(','.join(map(str, value)))} in {source} is not a finite number: give "
                             f"finite numbers, e.g. {key} = {example}") from None
        except BadInput:
            raise wrong from None
    return _coerce_scalar(cls, key, value, base, source)


def _shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut short (a config value may be megabytes)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _NotFinite(BadInput):
    """NaN or an infinity where a number is needed."""


def _coerce_scalar(cls: type, key: str, value: Any, want: type, source: str) -> Any:
    if want is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if not math.isfinite(number):
                default = _fields(cls)[key].default
                example = f", e.g. {key} = {json.dumps(_jsonable(default))}" if default is not None else ""
                raise _NotFinite(f"{key} = {_shown(value)} in {source} is not a finite number: give a finite one{example}")
            return number
    elif want is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    elif isinstance(value, want) and not (want is int and isinstance(value, bool)):
        return value
    example = _fields(cls)[key].default
    give = f"e.g. {key} = {json.dumps(_jsonable(example))}" if example is not None else \
        {bool: "true or false", int: "a whole number", float: "a number"}.get(want, "a value")
    raise BadInput(f"{key} = {_shown(value)} in {source} is not {with_article(want.__name__)}: give {give}")


def _check_choices(c: Settings) -> None:
    for f in dataclasses.fields(c):
        if f.metadata["choices"] and getattr(c, f.name) is not None and getattr(c, f.name) not in f.metadata["choices"]:
            raise BadInput(f"{f.name} = {_shown(getattr(c, f.name))} is not known: choose one of {', '.join(f.metadata['choices'])}")


def _validate(c: TrainConfig) -> None:
    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise BadInput(f"{key} = {_shown(getattr(c, key))} is out of range: {key} must be {rule}")

    _check_choices(c)
    need(c.lr > 0, "lr", "> 0 (e.g. 0.01)")
    need(1 <= c.epochs <= MAX_EPOCHS, "epochs", f"between 1 and {MAX_EPOCHS}")
    need(2 <= c.batch_size <= 65536, "batch_size", "between 2 (batch norm needs two images) and 65536; a batch larger "
         "than the data set is the whole set")
    need(c.step_size >= 1, "step_size", ">= 1")
    need(0 < c.gamma <= 1, "gamma", "in (0, 1]")
    need(0 < c.val_fraction < 1, "val_fraction", "in (0, 1)")
    need(c.builtin_train_per_class >= 1, "builtin_train_per_class", ">= 1")
    need(c.builtin_val_per_class >= 1, "builtin_val_per_class", ">= 1")
    need(c.image_size is None or 16 <= c.image_size <= 1024, "image_size", "between 16 and 1024")
    need(0 <= c.momentum < 1, "momentum", "in [0, 1)")
    need(c.weight_decay >= 0, "weight_decay", ">= 0")
    need(0 <= c.label_smoothing < 1, "label_smoothing", "in [0, 1)")
    need(c.focal_gamma >= 0, "focal_gamma", ">= 0")
    need(0 <= c.workers <= 1024, "workers", "between 0 and 1024")
    need(c.std is None or all(s > 0 for s in c.std), "std", "positive")
    need(re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", c.device) is not None, "device", "auto, cpu, cuda or cuda:N")
    need(bool(c.data.strip()), "data", "a folder or a built-in data set name")
    need(not _has_password(c.tracking_uri), "tracking_uri",
         "without a password (it would be saved with the run): give it as MLFLOW_TRACKING_PASSWORD")


def _has_password(url: str | None) -> bool:
    """scheme://user:password@host...: a URL that would put a secret into the saved settings."""
    return url is not None and re.match(r"^[a-z][a-z0-9+]*://[^/@]*:[^/@]*@", url) is not None


@dataclasses.dataclass(frozen=True)
class SearchConfig(Settings):
    """How `job tune` searches: the space, the objective, the budget, resources and storage."""

    SECTION: ClassVar[str] = "tune"
    space: dict[str, Any] | None = _field(None, "The settings searched and how ([tune.space], --space lr=loguniform:1e-4,1e-1); "
                                          "default: lr, step_size and gamma over the three ranges below")
    metric: str = _field("val_acc", "The reported metric the search optimises, and that picks each trial's best epoch",
                         tuple(m for m in EPOCH_METRICS if m != "lr"))
    mode: str | None = _field(None, "max or min; default: min for a loss or a time (epoch_s), max otherwise", ("max", "min"))
    lr_range: tuple[float, float] = _field((1e-4, 1e-2), "lr is sampled log-uniformly from [min, max]; min = max fixes it")
    step_size_range: tuple[int, int] | None = _field(None, "step_size is sampled from the integers [min, max]; default [1, epochs]")
    gamma_range: tuple[float, float] = _field((0.05, 0.9), "gamma is sampled uniformly from [min, max]; min = max fixes it")
    sampler: str = _field("tpe", "tpe (Optuna's TPE) or random (Optuna's random sampler: a baseline)", ("tpe", "random"))
    early_stopping: str = _field("asha", "asha (stop weak trials early) or none (every trial runs all epochs: a baseline)",
                                 ("asha", "none"))
    num_samples: int = _field(4, "Trials to run")
    max_concurrent: int = _field(0, "Trials running at once (0: as many as the resources allow)")
    time_budget_s: float | None = _field(None, "Stop the search after this many seconds and export the best so far")
    grace_period: int = _field(1, "ASHA: epochs every trial runs before it can be stopped")
    reduction_factor: int = _field(2, "ASHA: keep the top 1/reduction_factor of trials at each rung")
    startup_trials: int | None = _field(None, "TPE: random trials before it models the space; default num_samples // 3, from 2 to 10")
    cpus_per_trial: int | None = _field(None, "CPUs (and torch threads) per trial; default: all CPUs / concurrent trials")
    gpus_per_trial: float | None = _field(None, "GPUs per trial, 0 to 1 (0.5: two trials per GPU); default 1 when there are GPUs")
    max_failures: int = _field(2, "Times a crashed trial is retried from its last checkpoint")
    storage: str = _field("runs/ray", "Where Ray keeps the experiment (trial results and checkpoints)")
    study_storage: str | None = _field(None, "An Optuna RDB URL (sqlite:///study.db, postgresql://user@host/db) to keep "
                                       "the study in; default: the journal file optuna.journal in the experiment")
    warm_start: str | None = _field(None, "An earlier search whose finished trials seed the sampler: its experiment "
                                    "folder (local or s3://), its optuna.journal, or an Optuna URL[#study]")
    enqueue_default: bool | None = _field(None, "Run the training settings as they are as the first trial; default: when "
                                          "they lie inside the space (true: refuse a space that leaves them out)")
    name: str = _field("job-tune", "Experiment name: an unfinished experiment of this name is resumed")

    def __post_init__(self) -> None:
        _check_choices(self)
        for key, low in (("lr_range", 0), ("gamma_range", 0)):
            lo, hi = getattr(self, key)
            if not low < lo <= hi:
                raise BadInput(f"{key} = {lo:g},{hi:g} is empty or inverted: give min,max with {low} < min <= max")
        if self.gamma_range[1] > 1:
            raise BadInput(f"gamma_range max {self.gamma_range[1]:g} is above 1: gamma must be in (0, 1]")
        if self.step_size_range is not None and not 1 <= self.step_size_range[0] <= self.step_size_range[1]:
            raise BadInput(f"step_size_range = {self.step_size_range[0]},{self.step_size_range[1]} is empty or inverted: give min,max with 1 <= min <= max")
        for key, low, high in (("num_samples", 1, 100_000), ("grace_period", 1, MAX_EPOCHS), ("reduction_factor", 2, 100),
                               ("max_concurrent", 0, 10_000), ("max_failures", 0, 100)):
            if not low <= getattr(self, key) <= high:
                raise BadInput(f"{key} = {getattr(self, key)} is out of range: {key} must be between {low} and {high}")
        for key in ("time_budget_s", "cpus_per_trial", "startup_trials"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise BadInput(f"{key} = {getattr(self, key)} is out of range: {key} must be > 0")
        if self.gpus_per_trial is not None and not 0 <= self.gpus_per_trial <= 1:
            raise BadInput(f"gpus_per_trial = {self.gpus_per_trial:g} is out of range: a trial trains on one GPU, so give "
                           "0 to 1 (0.5 packs two trials per GPU)")
        if _has_password(self.study_storage):
            raise BadInput("study_storage holds a password: leave it out of the URL (it would be saved with the "
                           "experiment and shown) and give it the database's own way, e.g. PGPASSWORD or ~/.pgpass")
        if self.study_storage is not None and not re.match(r"^[a-z][a-z0-9+]*://", self.study_storage):
            raise BadInput(f"study_storage = {_shown(self.study_storage)} is not a database URL: give e.g. "
                           "sqlite:///study.db or postgresql://user@host/db, or leave it unset for the journal file")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise BadInput(f"name = {_shown(self.name)} is not a plain folder name: use letters, digits, '.', '_' and '-'")


def check_search(cfg: TrainConfig, search: SearchConfig) -> list[spaces.Dimension]:
    """What the search settings must satisfy given the training settings; returns the checked space."""
    if search.step_size_range and search.step_size_range[1] > cfg.epochs:
        raise BadInput(f"step_size_range max {search.step_size_range[1]} is above epochs = {cfg.epochs}: lower it or raise --epochs")
    if search.grace_period > cfg.epochs:
        raise BadInput(f"grace_period = {search.grace_period} is above epochs = {cfg.epochs}: lower it or raise --epochs")
    dims = spaces.check(search_space(search, cfg), cfg.to_dict(), TrainConfig, lambda k, v: _coerce(TrainConfig, k, v, "the space"))
    defaults = TrainConfig()
    for d in dims:
        if d.kind != "fixed" and getattr(cfg, d.name) != getattr(defaults, d.name):
            raise BadInput(f"{d.name} = {_shown(getattr(cfg, d.name))} is set, but job tune searches it ({d.describe()}): "
                           f"fix it in the space (--space {d.name}={_jsonable(getattr(cfg, d.name))}) or drop the setting")
        if d.name == "step_size" and d.kind == "int" and d.values[1] > cfg.epochs:
            raise BadInput(f"space: step_size max {d.values[1]} is above epochs = {cfg.epochs}: lower it or raise --epochs")
    return dims


LEGACY_RANGES = ("lr_range", "step_size_range", "gamma_range")


def search_space(search: SearchConfig, cfg: TrainConfig) -> dict[str, Any]:
    """The space as declared, or today's default one over the three ranges."""
    if search.space is None:
        return spaces.default(search.lr_range, search.step_size_range or (1, cfg.epochs), search.gamma_range)
    defaults = SearchConfig()
    old = [k for k in LEGACY_RANGES if getattr(search, k) != getattr(defaults, k)]
    if old:
        name = old[0].removesuffix("_range")
        kind = {"lr": "loguniform", "step_size": "int", "gamma": "uniform"}[name]
        lo, hi = getattr(search, old[0])
        raise BadInput(f"{old[0]} is the old spelling of a space entry and a space is given: write it in the space, "
                       f"{name} = {{ {kind} = [{lo}, {hi}] }} (or --space {name}={kind}:{lo},{hi})")
    return search.space


def objective(search: SearchConfig) -> tuple[str, str]:
    """(metric, mode): the mode as set, else min for a loss or a time, max otherwise."""
    return search.metric, search.mode or ("min" if search.metric.endswith(("loss", "_s")) else "max")


@dataclasses.dataclass(frozen=True)
class S3Config(Settings):
    """Where the S3 API answers. Credentials are never settings: boto3's chain (AWS_* variables, profiles, roles)."""

    SECTION: ClassVar[str] = "s3"
    endpoint: str | None = _field(None, "S3 endpoint URL (MinIO: http://host:9000); default AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS")
    region: str | None = _field(None, "Region; default AWS_REGION, AWS_DEFAULT_REGION, else us-east-1")
    path_style: bool | None = _field(None, "Path-style addressing (MinIO, SeaweedFS); default: on when an endpoint is set")


def read_file(path: Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a flat dict (validated later, by name)."""
    if not path.is_file():
        raise BadInput(f"config file '{path}' {missing(path)}: pass --config with a .toml or .yaml file")
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise BadInput(f"config file '{path}' is neither .toml nor .yaml: rename it with one of those suffixes")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise BadInput(f"config file '{path}' is {path.stat().st_size} bytes: a config file holds settings (at most "
                       f"{MAX_FILE_BYTES} bytes); pass the right file")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        else:
            # YAML aliases can expand a small file into gigabytes (an "alias bomb"); settings never need them
            if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
                raise BadInput(f"config file '{path}' uses YAML aliases (*name): write each value out instead")
            values = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise BadInput(f"config file '{path}' does not parse: {_shown(str(e).splitlines()[0])}") from None
    if not isinstance(values, dict):
        raise BadInput(f"config file '{path}' must hold key = value pairs at the top level")
    for table in (values, *(v for v in values.values() if isinstance(v, dict))):
        odd = next((k for k in table if not isinstance(k, str)), None)
        if odd is not None:
            raise BadInput(f"config file '{path}' has the key {_shown(odd)}, which is not a name: keys are setting names")
    return values


def _env_prefix(cls: type) -> str:
    return ENV_PREFIX + (cls.SECTION.upper() + "_" if cls.SECTION else "")


def from_env(cls: type, env: Mapping[str, str], warn=None) -> dict[str, str]:
    """JOB_LR=0.1 -> {"lr": "0.1"} for TrainConfig, JOB_TUNE_NUM_SAMPLES=8 for SearchConfig. Other JOB_* variables
    are not ours to refuse (Jenkins sets JOB_NAME and JOB_URL in every build): ignored, with a warning through
    `warn` when one is close to a setting's name (a misspelling)."""
    prefix = _env_prefix(cls)
    others = tuple(_env_prefix(c) for c in SECTIONS if _env_prefix(c) != prefix and _env_prefix(c).startswith(prefix))
    names = [k for k in env if k.startswith(prefix) and not k.startswith(ENV_NOT_SETTINGS + others)]
    fields = _fields(cls)
    known = [n for n in names if n[len(prefix):].lower() in fields]
    everything = {_env_prefix(c) + f.upper() for c in SECTIONS for f in _fields(c)}
    for name in sorted(set(names) - set(known) - set(ENV_OF_OTHER_TOOLS)):
        close = difflib.get_close_matches(name, everything, n=1)
        if warn:
            warn(f"warning: environment variable {name} is not a job setting (ignored)"
                 + (f": did you mean {close[0]}?" if close else ""))
    return {name[len(prefix):].lower(): env[name] for name in known}


def parse_sets(items: list[str]) -> dict[str, str]:
    """`--set key=value` pairs, for the settings that have no flag of their own."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise BadInput(f"--set {_shown(item)} is not key=value: write e.g. --set label_smoothing=0.1")
        values[key.strip().replace("-", "_")] = value
    return values


def for_section(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a flat key -> value mapping that belongs to `cls`. Unknown keys go to the training section,
    which rejects them by name."""
    if cls is TrainConfig:
        others = {k for c in SECTIONS if c is not cls for k in _fields(c)}
        return {k: v for k, v in values.items() if k not in others}
    return {k: v for k, v in values.items() if k in _fields(cls)}


def resolve(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    cls: type = None,
    warn=None,
):
    """Defaults < base (e.g. a checkpoint's config) < file < environment (JOB_*) < overrides (flags)."""
    cls = cls or TrainConfig
    file_values = read_file(file) if file else {}
    if cls.SECTION:
        section = file_values.get(cls.SECTION, {})
        if not isinstance(section, dict):
            raise BadInput(f"'{cls.SECTION}' in {file} must be a table of settings ([{cls.SECTION}] in TOML)")
        file_values = section
    else:
        file_values = {k: v for k, v in file_values.items() if k not in {c.SECTION for c in SECTIONS}}
    layers = [
        (dict(base or {}), "the saved config"),
        (file_values, str(file)),
        (from_env(cls, os.environ if env is None else env, warn), f"the environment ({_env_prefix(cls)}*)"),
        (dict(overrides or {}), "the command line"),
    ]
    values: dict[str, Any] = {}
    for layer, source in layers:
        for key, value in _known(cls, layer, source).items():
            value = _coerce(cls, key, value, source)
            # a space given in a later layer changes the entries it names: --space lr=... keeps the file's others
            merge = isinstance(value, dict) and isinstance(values.get(key), dict)
            values[key] = {**values[key], **value} if merge else value
    return cls(**values)


def describe(cls: type = None) -> list[tuple[str, str, str]]:
    """(key, default, help) for every setting: the README's configuration tables and `job config`."""
    rows = []
    for f in dataclasses.fields(cls or TrainConfig):
        choices = f"; one of {', '.join(f.metadata['choices'])}" if f.metadata["choices"] else ""
        rows.append((f.name, json.dumps(_jsonable(f.default)), f.metadata["help"] + choices))
    return rows


SECTIONS = (TrainConfig, SearchConfig, S3Config)
