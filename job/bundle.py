"""The best model as a self-describing bundle: a folder with `model.pt` (a state_dict) and `bundle.json`.

`bundle.json` is written last and lists every file with its size and SHA-256, so a folder without it (or with a
file that does not match it) is never taken for a finished bundle. It holds everything `job evaluate` and
`job predict` need: model name, class names, preprocessing, config, metrics, versions and data fingerprint.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from job import checkpoint
from job.data import Preprocessing
from job.errors import BadInput
from job.files import sha256

FORMAT = "job-bundle/1"
MANIFEST = "bundle.json"
WEIGHTS = "model.pt"
BEST_DIR = "best"  # where a run folder keeps its bundle


@dataclasses.dataclass
class Bundle:
    model: nn.Module
    classes: tuple[str, ...]
    prep: Preprocessing
    manifest: dict


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("job", "torch", "torchvision", "timm", "ray", "optuna"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def write(folder: Path, state: dict[str, torch.Tensor], *, model_name: str, classes: tuple[str, ...],
          prep: Preprocessing, config: dict, metrics: dict, best_epoch: int, data_fingerprint: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST
    if manifest_path.exists():
        manifest_path.unlink()  # the old manifest goes first: a half-replaced bundle is never taken as complete
    checkpoint.save(state, folder / WEIGHTS)
    manifest = {
        "format": FORMAT,
        "model": model_name,
        "num_classes": len(classes),
        "classes": list(classes),
        "preprocessing": prep.to_dict(),
        "best_epoch": best_epoch,
        "metrics": metrics,
        "config": config,
        "data_fingerprint": data_fingerprint,
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": {WEIGHTS: {"size": (folder / WEIGHTS).stat().st_size, "sha256": sha256(folder / WEIGHTS)}},
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_path)
    return folder


def find(path: Path) -> Path:
    """A bundle folder, or a run folder holding one under best/."""
    if not path.exists():
        raise BadInput(f"bundle '{path}' does not exist: pass the output folder of job train (or its {BEST_DIR}/ folder)")
    for candidate in (path, path / BEST_DIR):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise BadInput(f"'{path}' holds no {MANIFEST}: pass a finished bundle (the output folder of job train or job tune)")


def read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except json.JSONDecodeError:
        raise BadInput(f"{folder / MANIFEST} is not valid JSON: the bundle is damaged, export it again") from None
    if manifest.get("format") != FORMAT:
        raise BadInput(f"{folder / MANIFEST} is not a {FORMAT} manifest: pass a bundle written by job")
    for name, entry in manifest["files"].items():
        f = folder / name
        if not f.is_file() or f.stat().st_size != entry["size"] or sha256(f) != entry["sha256"]:
            raise BadInput(f"{f} does not match {MANIFEST} (size or SHA-256): the bundle is incomplete or damaged, export it again")
    return manifest


def fetch(url: str, store, cache: Path) -> Path:
    """Download a bundle (or a run folder's best/) from S3 into the cache; `load` then verifies it."""
    from job.storage import S3Url

    base = S3Url.parse(url)
    for candidate in (base, base.join(BEST_DIR)):
        manifest = store.read_json(candidate.join(MANIFEST))
        if manifest:
            break
    else:
        raise BadInput(f"{url} holds no {MANIFEST}: pass a finished bundle (the --output of job train or job tune)")
    local = cache / "s3" / candidate.bucket / candidate.key
    for name in manifest["files"]:
        store.download(candidate.join(name), local / name)
    (local / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return local


def load(path: Path, device: torch.device | str = "cpu") -> Bundle:
    from job import model as models

    folder = find(path)
    manifest = read_manifest(folder)
    net = models.create(manifest["model"], "none", manifest["num_classes"])
    state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.to(device).to(memory_format=torch.channels_last).eval()  # as it was trained: the faster layout (bench/)
    return Bundle(net, tuple(manifest["classes"]), Preprocessing.from_dict(manifest["preprocessing"]), manifest)
