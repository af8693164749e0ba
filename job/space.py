"""What `job tune` searches: a declarative space over the training settings, checked before Ray starts.

A space maps training setting names (`job config`) to a distribution or a fixed value, in a config file

    [tune.space]
    lr = { loguniform = [1e-4, 1e-1] }        # floats, log-uniform
    label_smoothing = { uniform = [0.0, 0.2] }
    step_size = { int = [1, 5] }              # integers; { int = [16, 256], log = true } for log-uniform
    optimizer = { choice = ["sgd", "adamw"] }
    momentum = 0.95                           # fixed for every trial

(YAML the same), in JOB_TUNE_SPACE, or as flags, `--space lr=loguniform:1e-4,1e-1 --space optimizer=choice:sgd,adamw
--space batch_size=int:16,128:log --space momentum=0.95`. A range whose min equals its max fixes the value. The
normalised form is the file's, so a space is saved with the experiment, compared on resume and printed as given.
Without a space, `job tune` searches lr, step_size and gamma over `lr_range`, `step_size_range` and `gamma_range`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from typing import Any, Mapping

from job.errors import BadInput

KINDS = ("loguniform", "uniform", "int", "choice")
MAX_CHOICES = 1000
# Settings a trial must share with every other one: the validation images (so trials are compared on the same
# data), the budget ASHA divides (epochs), and how a trial runs rather than what it learns.
SAME_IMAGES = "every trial must be validated on the same images"
NOT_SEARCHABLE = {
    "data": SAME_IMAGES, "val_fraction": SAME_IMAGES, "builtin_val_per_class": SAME_IMAGES,
    "seed": "it also picks the validation images",
    "builtin_train_per_class": "every trial must train on the same images",
    "skip_bad_images": "every trial must see the same images",
    "epochs": "it is the search's budget (ASHA's max_t): set it with --epochs",
    "device": "it says where a trial runs, not what it learns",
    "workers": "it says how the data is decoded, not what a trial learns",
    "amp": "it says how a trial runs, not what it learns",
    "tracking": "it says where a trial is logged", "tracking_uri": "it says where a trial is logged",
    "mean": "three numbers are not searchable: set them", "std": "three numbers are not searchable: set them",
}


def parse(value: Any, source: str) -> dict[str, Any]:
    """A space as a file, the environment or flags give it, in its normalised form (the file's): the shape only;
    `check` holds it against the training settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise BadInput(f"space in {source} is not a JSON object ({e.msg}): write NAME=KIND:MIN,MAX entries "
                               "separated by spaces, e.g. lr=loguniform:1e-4,1e-1 optimizer=choice:sgd,adamw") from None
        else:
            value = dict(_entry(item, source) for item in re.split(r"[\s;]+", text) if item)
    if not isinstance(value, Mapping):
        raise BadInput(f"space in {source} must be a table of settings ([tune.space] in TOML), e.g. "
                       "lr = { loguniform = [1e-4, 1e-1] }")
    return {str(name): _normal(str(name), spec, source) for name, spec in value.items()}


def _entry(item: str, source: str) -> tuple[str, Any]:
    """`lr=loguniform:1e-4,1e-1`, `batch_size=int:16,128:log`, `optimizer=choice:sgd,adamw`, `momentum=0.95`."""
    name, sep, spec = item.partition("=")
    if not sep or not name.strip():
        raise BadInput(f"space entry {item!r} in {source} is not NAME=SPEC: write e.g. lr=loguniform:1e-4,1e-1")
    name, spec = name.strip().replace("-", "_"), spec.strip()
    kind, colon, rest = spec.partition(":")
    if not colon or kind not in KINDS:
        return name, _scalar(spec)  # a fixed value, coerced to the setting's type by `check`
    args, _, flag = rest.partition(":")
    values = [_scalar(v.strip()) for v in args.split(",")] if args.strip() else []
    if flag and not (kind == "int" and flag.strip() == "log"):
        raise BadInput(f"space entry {item!r} in {source}: only int takes ':log' (int:MIN,MAX:log)")
    return name, {kind: values} | ({"log": True} if flag else {})


def _scalar(text: str) -> Any:
    """`0.95` -> 0.95, `true` -> True, `sgd` -> "sgd": a flag's value as a file would have it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (int, float, bool)) else text


def _normal(name: str, spec: Any, source: str) -> Any:
    where = f"space entry {name} in {source}"
    if isinstance(spec, str):  # the flag form as a value: lr = "loguniform:1e-4,1e-1"
        spec = _entry(f"{name}={spec}", source)[1]
    if not isinstance(spec, Mapping):
        if isinstance(spec, (list, tuple)):
            raise BadInput(f"{where} is a list: write {name} = {{ choice = {json.dumps(list(spec))} }} to search "
                           "those values")
        return spec
    kinds = [k for k in spec if k in KINDS]
    extra = set(spec) - set(KINDS) - {"log"}
    if len(kinds) != 1 or extra or ("log" in spec and kinds != ["int"]):
        raise BadInput(f"{where} = {_shown(dict(spec))}: give one of {', '.join(KINDS)} (int may add log = true), "
                       f"e.g. {name} = {{ uniform = [0.0, 0.2] }}")
    kind, args = kinds[0], spec[kinds[0]]
    if not isinstance(args, (list, tuple)):
        raise BadInput(f"{where}: {kind} takes a list, e.g. {name} = {{ {kind} = {_example(kind)} }}")
    if kind == "choice":
        if not 1 <= len(args) <= MAX_CHOICES:
            raise BadInput(f"{where}: choice needs 1 to {MAX_CHOICES} values, e.g. {name} = {{ choice = {_example(kind)} }}")
        return {"choice": list(args)}
    if len(args) != 2:
        raise BadInput(f"{where}: {kind} takes [MIN, MAX], e.g. {name} = {{ {kind} = {_example(kind)} }}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise BadInput(f"{where}: log must be true or false")
    return {kind: list(args)} | ({"log": True} if log else {})


def _example(kind: str) -> str:
    return {"loguniform": "[1e-4, 1e-1]", "uniform": "[0.0, 0.2]", "int": "[1, 5]", "choice": '["sgd", "adamw"]'}[kind]


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def default(lr_range, step_size_range, gamma_range) -> dict[str, Any]:
    """Today's search (before a space could be declared): lr log-uniform, step_size integers, gamma uniform."""
    return {"lr": {"loguniform": list(lr_range)}, "step_size": {"int": list(step_size_range)},
            "gamma": {"uniform": list(gamma_range)}}


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One setting of a checked space: `kind` is fixed (`values` holds the value), or a KINDS entry."""

    name: str
    kind: str
    values: tuple
    log: bool = False

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.name} = {self.values[0]!r}"
        if self.kind == "choice":
            return f"{self.name} one of {', '.join(map(str, self.values))}"
        return f"{self.name} {self.kind}{' (log)' if self.log else ''} {self.values[0]:g}..{self.values[1]:g}"


def check(space: Mapping[str, Any], base: Mapping[str, Any], train_cls, coerce) -> list[Dimension]:
    """The space held against the training settings `base` (a TrainConfig dict): every name a setting that may be
    searched, every kind fit for its type, every bound and choice a value the setting itself accepts
    (`train_cls.from_dict`); `coerce(key, value)` types a value from text as the config does."""
    hints = typing.get_type_hints(train_cls)
    dims = []
    for name, spec in space.items():
        if name not in hints:
            close = difflib.get_close_matches(name, list(hints), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see `job config` for the settings"
            raise BadInput(f"space: {name!r} is not a training setting: {hint}")
        if name in NOT_SEARCHABLE:
            raise BadInput(f"space: {name} cannot be searched ({NOT_SEARCHABLE[name]}): remove it from the space")
        kind = next(iter(spec)) if isinstance(spec, Mapping) else "fixed"
        raw = spec[kind] if kind != "fixed" else [spec]
        base_type = _base_type(hints[name])
        if kind in ("loguniform", "uniform") and base_type is not float:
            raise BadInput(f"space: {name} takes {base_type.__name__} values, not a {kind} range: use "
                           + ("int (with log = true for log-uniform)" if base_type is int else "choice"))
        if kind == "int" and base_type is not int:
            raise BadInput(f"space: {name} takes {base_type.__name__} values, not an int range: use "
                           + ("uniform or loguniform" if base_type is float else "choice"))
        if kind == "fixed" and isinstance(spec, str):
            _not_a_botched_range(name, spec, base_type)
        values = tuple(_valid(name, coerce(name, v), base, train_cls) for v in raw)
        if kind == "choice" and len(set(map(repr, values))) != len(values):
            raise BadInput(f"space: {name} lists a choice twice ({', '.join(map(repr, values))}): list each value once")
        if kind in ("loguniform", "uniform", "int"):
            lo, hi = values
            if lo > hi:
                raise BadInput(f"space: {name} = {kind} [{lo:g}, {hi:g}] is inverted: give [MIN, MAX] with MIN <= MAX")
            if (kind == "loguniform" or spec.get("log")) and lo <= 0:
                raise BadInput(f"space: {name} = {kind} [{lo:g}, {hi:g}] is log-scaled and starts at {lo:g}: give MIN > 0")
            if lo == hi:
                kind, values = "fixed", (lo,)
        if kind == "choice" and len(values) == 1:
            kind = "fixed"
        dims.append(Dimension(name, kind, values, bool(isinstance(spec, Mapping) and spec.get("log"))
                              or kind == "loguniform"))
    return dims


def _not_a_botched_range(name: str, spec: str, base_type: type) -> None:
    """A fixed value that reads as a range written another way (Ray Tune's `loguniform(1e-4, 1e-1)`, a misspelt
    `logunifrom:...`) is refused with the form job reads, instead of "is not a float"; a text setting (a model's
    name) may hold ':' or '(' unless the word before it is a kind, or nearly one."""
    m = re.match(r"\s*([A-Za-z_]+)\s*[:(]", spec)
    if not m or (base_type is str and not difflib.get_close_matches(m.group(1), KINDS, n=1, cutoff=0.8)):
        return
    kind, flag, listed = {float: ("loguniform", "1e-4,1e-1", "[1e-4, 1e-1]"), int: ("int", "1,5", "[1, 5]")}.get(
        base_type, ("choice", "a,b", '["a", "b"]'))
    raise BadInput(f"space: {name} = {spec!r} is not a range job reads: write {name}=KIND:MIN,MAX (KIND one of "
                   f"{', '.join(KINDS)}), e.g. --space {name}={kind}:{flag}, or in a file {name} = {{ {kind} = {listed} }}")


def _base_type(hint) -> type:
    if isinstance(hint, types.UnionType):
        hint = next(a for a in hint.__args__ if a is not type(None))
    return typing.get_origin(hint) or hint


def _valid(name: str, value: Any, base: Mapping[str, Any], train_cls) -> Any:
    """`value` as the setting `name` takes it, or the setting's own error."""
    try:
        train_cls.from_dict({**base, name: value}, source="the space")
    except BadInput as e:
        raise BadInput(f"space: {name} = {value!r} is refused: {e}") from None
    return value
