"""Configuration: one frozen, validated dataclass, resolved as defaults < file < environment < flags.

Every value is type-checked and range-checked here, so the rest of the code can trust it. Unknown keys are
rejected by name, with the closest known key suggested. The resolved config is saved with every run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from job.errors import BadInput

ENV_PREFIX = "JOB_"
# JOB_* variables that are not settings: where things live, and the test suite's own.
ENV_NOT_SETTINGS = ("JOB_CACHE", "JOB_FASHION_MNIST_DIR", "JOB_TEST_")


def _field(default: Any, help: str, choices: tuple[str, ...] = ()) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
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
    image_size: int | None = _field(None, "Input size in pixels; default: the weights' size (64 for fashion-mnist)")
    mean: tuple[float, float, float] | None = _field(None, "Normalisation mean; default: the weights'")
    std: tuple[float, float, float] | None = _field(None, "Normalisation std; default: the weights'")
    interpolation: str | None = _field(None, "Resize interpolation; default: the weights'", ("bilinear", "bicubic", "nearest"))
    # optimisation
    epochs: int = _field(5, "Epochs to train")
    batch_size: int = _field(32, "Images per batch")
    optimizer: str = _field("sgd", "Optimizer", ("sgd", "adamw"))
    lr: float = _field(0.01, "Learning rate")
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
    workers: int = _field(0, "Threads that decode images when a data set is first prepared (0: one per CPU)")

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        return cls(**{k: _coerce(k, v, source) for k, v in _known(values, source).items()})


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _known(values: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see `job config` for the known keys"
            raise BadInput(f"unknown config key '{key}' in {source}: {hint}")
    return values


def _coerce(key: str, value: Any, source: str) -> Any:
    """Turn a file, environment or flag value into the field's type, or fail naming the key."""
    hint = typing.get_type_hints(TrainConfig)[key]
    optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
    base = next(a for a in hint.__args__ if a is not type(None)) if optional else hint
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
        if not isinstance(value, (list, tuple)) or len(value) != len(base.__args__):
            raise BadInput(f"{key} = {value!r} in {source}: give {len(base.__args__)} numbers, e.g. {key} = 0.5,0.5,0.5")
        return tuple(_coerce_scalar(key, v, float, source) for v in value)
    return _coerce_scalar(key, value, base, source)


def _coerce_scalar(key: str, value: Any, want: type, source: str) -> Any:
    if want is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, want) and not (want is int and isinstance(value, bool)):
        return value
    raise BadInput(f"{key} = {value!r} in {source} is not a {want.__name__}: give e.g. {key} = {FIELDS[key].default!r}")


def _validate(c: TrainConfig) -> None:
    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise BadInput(f"{key} = {getattr(c, key)!r} is out of range: {key} must be {rule}")

    for f in dataclasses.fields(c):
        if f.metadata["choices"] and getattr(c, f.name) is not None and getattr(c, f.name) not in f.metadata["choices"]:
            raise BadInput(f"{f.name} = {getattr(c, f.name)!r} is not known: choose one of {', '.join(f.metadata['choices'])}")
    need(c.lr > 0, "lr", "> 0 (e.g. 0.01)")
    need(c.epochs >= 1, "epochs", ">= 1")
    need(c.batch_size >= 1, "batch_size", ">= 1")
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
    need(c.workers >= 0, "workers", ">= 0")
    need(c.std is None or all(s > 0 for s in c.std), "std", "positive")
    need(c.device == "auto" or c.device == "cpu" or c.device.startswith("cuda"), "device", "auto, cpu, cuda or cuda:N")
    need(bool(c.data.strip()), "data", "a folder or a built-in data set name")


def read_file(path: Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a flat dict (validated later, by name)."""
    if not path.is_file():
        raise BadInput(f"config file '{path}' does not exist: pass --config with a .toml or .yaml file")
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise BadInput(f"config file '{path}' is neither .toml nor .yaml: rename it with one of those suffixes")
    try:
        text = path.read_text()
        values = tomllib.loads(text) if path.suffix == ".toml" else (yaml.safe_load(text) or {})
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise BadInput(f"config file '{path}' does not parse: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise BadInput(f"config file '{path}' must hold key = value pairs at the top level")
    return values


def from_env(env: Mapping[str, str]) -> dict[str, str]:
    """JOB_LR=0.1 -> {"lr": "0.1"}. Only keys of the config are taken; other JOB_* names are an error."""
    values = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
              if k.startswith(ENV_PREFIX) and not k.startswith(ENV_NOT_SETTINGS)}
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"did you mean {ENV_PREFIX}{close[0].upper()}?" if close else "unset it"
            raise BadInput(f"unknown environment variable {ENV_PREFIX}{key.upper()}: {hint}")
    return values


def parse_sets(items: list[str]) -> dict[str, str]:
    """`--set key=value` pairs, for the settings that have no flag of their own."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise BadInput(f"--set {item!r} is not key=value: write e.g. --set label_smoothing=0.1")
        values[key.strip().replace("-", "_")] = value
    return values


def resolve(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults < base (e.g. a checkpoint's config) < file < environment (JOB_*) < overrides (flags)."""
    values: dict[str, Any] = {}
    layers = [
        (dict(base or {}), "the saved config"),
        (read_file(file) if file else {}, str(file)),
        (from_env(os.environ if env is None else env), "the environment (JOB_*)"),
        (dict(overrides or {}), "the command line"),
    ]
    for layer, source in layers:
        for key, value in _known(layer, source).items():
            values[key] = _coerce(key, value, source)
    return TrainConfig(**values)


def describe() -> list[tuple[str, str, str]]:
    """(key, default, help) for every setting: the README's configuration table and `job config --keys`."""
    rows = []
    for f in dataclasses.fields(TrainConfig):
        choices = f"; one of {', '.join(f.metadata['choices'])}" if f.metadata["choices"] else ""
        rows.append((f.name, json.dumps(_jsonable(f.default)), f.metadata["help"] + choices))
    return rows
