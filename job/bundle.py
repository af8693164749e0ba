"""The best model as a self-describing bundle: a folder with `model.pt` (a state_dict) and `bundle.json`.

`bundle.json` is written last and lists every file with its size and SHA-256, so a folder without it (or with a
file that does not match it) is never taken for a finished bundle. It holds everything `job evaluate` and
`job predict` need: model name, class names, preprocessing, config, metrics, versions and data fingerprint.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
from importlib import metadata
from pathlib import Path

import torch

from job import checkpoint
from job.data import Preprocessing
from job.errors import BadInput, with_article
from job.files import inside, sha256, write_atomic, write_json
from job.storage import Location

FORMAT = "job-bundle/1"
MANIFEST = "bundle.json"
WEIGHTS = "model.pt"
BEST_DIR = "best"  # where a run folder keeps its bundle


@dataclasses.dataclass(frozen=True)
class Info:
    """What a bundle's manifest says besides its files."""

    model: str
    classes: tuple[str, ...]
    prep: Preprocessing
    config: dict
    metrics: dict
    best_epoch: int
    data_fingerprint: str


def check_output(out: Location, data: str | None) -> None:
    """The output of an evaluation or an export, before the work: outside the `data` folder, writable, and not a
    bundle's own folder (their files would mix with the bundle's, which is copied, uploaded and verified as a whole)."""
    out.outside(data)
    if out.exists(MANIFEST):
        raise BadInput(f"--output '{out}' is a bundle's folder (it holds {MANIFEST}): choose another --output")
    out.check_writable()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("job", "torch", "torchvision", "timm", "ray", "optuna"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def write(folder: Path, weights: dict[str, torch.Tensor], info: Info) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST
    if manifest_path.exists():
        manifest_path.unlink()  # the old manifest goes first: a half-replaced bundle is never taken as complete
    checkpoint.save(weights, folder / WEIGHTS)
    manifest = {
        "format": FORMAT,
        "model": info.model,
        "num_classes": len(info.classes),
        "classes": list(info.classes),
        "preprocessing": info.prep.to_dict(),
        "best_epoch": info.best_epoch,
        "metrics": info.metrics,
        "config": info.config,
        "data_fingerprint": info.data_fingerprint,
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": {WEIGHTS: {"size": (folder / WEIGHTS).stat().st_size, "sha256": sha256(folder / WEIGHTS)}},
    }
    write_json(manifest_path, manifest)
    return folder


def find(path: Path) -> Path:
    """A bundle folder, or a run folder holding one under best/."""
    if not path.exists():
        raise BadInput(f"bundle '{path}' does not exist: pass the output folder of job train (or its {BEST_DIR}/ folder)")
    for candidate in (path / BEST_DIR, path):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise BadInput(f"'{path}' holds no {MANIFEST}: pass a finished bundle (the output folder of job train or job tune)")


# The manifest's schema: every key job reads, with its type. A manifest is data from outside (a bundle may come from
# anywhere): it is checked whole before anything in it is used.
_SCHEMA = {"format": str, "model": str, "num_classes": int, "classes": list, "preprocessing": dict, "files": dict,
           "config": dict, "metrics": dict}


def check_manifest(manifest: object, where: str) -> dict:
    """The manifest, if it has the shape job wrote; else BadInput naming what is wrong."""
    def bad(what: str) -> BadInput:
        return BadInput(f"{where} is not a valid {FORMAT} manifest ({what}): pass a bundle written by job, or export it again")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    if manifest.get("format") != FORMAT:
        raise bad(f"format is {manifest.get('format')!r}")
    for key, kind in _SCHEMA.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise bad(f"'{key}' is missing or not {with_article(kind.__name__)}")
    try:
        Preprocessing.from_dict(manifest["preprocessing"], prefix="preprocessing.")
    except ValueError as e:
        raise bad(str(e)) from None
    classes = manifest["classes"]
    if len(classes) != manifest["num_classes"] or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise bad(f"{len(classes)} class names for num_classes {manifest['num_classes']}")
    if set(manifest["files"]) != {WEIGHTS}:
        raise bad(f"files must list exactly {WEIGHTS}, not {sorted(manifest['files'])}")
    for name, entry in manifest["files"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)):
            raise bad(f"files.{name} needs an integer size and a sha256")
    return manifest


def read(folder: Path) -> dict:
    """The verified manifest of the bundle in `folder`: every file it lists (and so every file `load` reads) has
    the listed size and SHA-256."""
    if not (folder / MANIFEST).is_file():
        raise BadInput(f"'{folder}' holds no {MANIFEST}: the bundle is incomplete (its export was cut short), export it again")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(f"{folder / MANIFEST} is not valid JSON: the bundle is damaged, export it again") from None
    check_manifest(manifest, str(folder / MANIFEST))
    for name, entry in manifest["files"].items():
        f = inside(folder, name)
        if not f.is_file() or f.stat().st_size != entry["size"] or sha256(f) != entry["sha256"]:
            raise BadInput(f"{f} does not match {MANIFEST} (size or SHA-256): the bundle is incomplete or damaged, export it again")
    return manifest


def locate(where: Location, cache: Path) -> Path:
    """The local folder of the bundle at `where` (a bundle folder, or a run folder holding one under best/): itself,
    or for s3:// a copy in the cache. `read` then verifies it."""
    if not where.remote:
        return find(where.path)
    for candidate in (where.join(BEST_DIR), where):  # a run folder first: what `job evaluate RUN` is given
        manifest = candidate.read_json(MANIFEST)
        if manifest:
            break
    else:
        raise BadInput(f"{where} holds no {MANIFEST}: pass a finished bundle (the --output of job train or job tune)")
    check_manifest(manifest, f"{candidate}/{MANIFEST}")
    local = candidate.cache_path(cache)
    candidate.pull_files({name: entry["sha256"] for name, entry in manifest["files"].items()}, local)
    write_atomic(local / MANIFEST, json.dumps(manifest, indent=2) + "\n", durable=False)  # a cache: fetched again if lost
    return local


def load_weights(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(verified manifest, state_dict) of the bundle in `folder`; the weights are read without running code."""
    manifest = read(folder)
    try:
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise BadInput(f"{folder / WEIGHTS} cannot be read ({type(e).__name__}): export the bundle again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput(f"{folder / WEIGHTS} holds no state_dict: export the bundle again")
    return manifest, state
