"""One training run, from a resolved config to a run folder: data, model, loop, checkpoints, bundle, reports.

`setup` (config -> ready-to-iterate `Fit`) is shared with the Ray Tune trainable, so both run the same loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch

from job import builtin, bundle, checkpoint, data, model, report, storage
from job.config import S3Config, TrainConfig
from job.errors import BadInput
from job.loop import BarFactory, Epoch, Fit, resolve_device

RUN_FILE = "run.json"


def cache_dir() -> Path:
    """Decoded data sets and materialised built-ins: $JOB_CACHE, else $XDG_CACHE_HOME/job, else ~/.cache/job."""
    if os.environ.get("JOB_CACHE"):
        return Path(os.environ["JOB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "job"


def preprocessing(cfg: TrainConfig) -> data.Preprocessing:
    """The weights' preprocessing, with the config's overrides on top."""
    w = model.preprocessing_for(cfg.model, cfg.weights)
    size = cfg.image_size or builtin.NATIVE_IMAGE_SIZE.get(cfg.data) or w.image_size
    return data.Preprocessing(
        image_size=size,
        resize_size=max(size, round(size / w.crop_ratio)),
        mean=cfg.mean or w.mean,
        std=cfg.std or w.std,
        interpolation=cfg.interpolation or w.interpolation,
    )


@dataclasses.dataclass
class Setup:
    fit: Fit
    folder: data.Folder
    prep: data.Preprocessing
    fingerprint: str
    skipped: int

    def meta(self, cfg: TrainConfig) -> dict:
        """What every checkpoint carries besides the training state, so it can be resumed or exported alone."""
        return {"config": cfg.to_dict(), "classes": list(self.folder.classes), "preprocessing": self.prep.to_dict(),
                "data_fingerprint": self.fingerprint}


def store(s3: S3Config | None) -> storage.Store:
    s3 = s3 or S3Config()
    return storage.Store(storage.Endpoint.resolve(s3.endpoint, s3.region, s3.path_style))


def fetched(location: str, cache: Path, s3: S3Config | None, folder: bool) -> Path:
    """A local path for `location`: s3:// objects are synced into the cache (unchanged ones are not fetched again)."""
    if not storage.is_s3(location):
        return Path(location).expanduser()
    url = storage.S3Url.parse(location)
    local = cache / "s3" / url.bucket / url.key
    if folder:
        store(s3).sync_down(url, local)
    else:
        store(s3).fetch(url, local)
    return local


def setup(cfg: TrainConfig, cache: Path, bar: BarFactory | None = None, s3: S3Config | None = None) -> Setup:
    """Everything a run needs before its first epoch; all bad input is found here, before any training."""
    model.check_name(cfg.model)
    device = resolve_device(cfg.device)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cache folder '{cache}' is not writable ({e.strerror}): set JOB_CACHE to a writable folder") from None
    root = (
        builtin.materialise(cfg.data, cache, cfg.builtin_train_per_class, cfg.builtin_val_per_class)
        if cfg.data in builtin.NAMES
        else fetched(cfg.data, cache, s3, folder=True)
    )
    folder = data.scan(root, cfg.val_fraction, cfg.seed)
    prep = preprocessing(cfg)
    train, val = (data.prepare(s, folder.root, prep, cache, cfg.workers) for s in (folder.train, folder.val))
    skipped = data.check_bad(train.bad + val.bad, cfg.skip_bad_images)
    for name, split in (("train", train), ("val", val)):
        present = set(split.labels[split.ok].tolist())
        if len(present) < len(folder.classes):
            lost = sorted(set(folder.classes) - {folder.classes[i] for i in present})
            raise BadInput(f"after skipping unreadable images, {name} has no image of class {', '.join(lost)}: add readable images")
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    weights = str(fetched(cfg.weights, cache, s3, folder=False)) if storage.is_s3(cfg.weights) else cfg.weights
    net = model.create(cfg.model, weights, len(folder.classes), cfg.freeze_backbone)
    pin = device.type == "cuda"
    batches = [data.Batches(p, prep, cfg.batch_size, train=t, augment=cfg.augment, seed=cfg.seed, pin_memory=pin)
               for p, t in ((train, True), (val, False))]
    fingerprint = json.dumps({"train": train.fingerprint, "val": val.fingerprint})
    fit = Fit(cfg, net, batches[0], batches[1], prep, len(folder.classes), device, bar)
    return Setup(fit, folder, prep, fingerprint, skipped)


def staging(location: str, cache: Path) -> Path:
    """Where a run whose --output is s3:// is written before it is published."""
    return cache / "staging" / hashlib.sha256(location.encode()).hexdigest()[:16]


def check_remote_output(location: str, s3: S3Config | None, overwrite: bool, experiment: str | None = None) -> None:
    """An s3:// --output must be writable now (probe) and hold no other run, unless --overwrite.
    A tune output may be written again by the same experiment (a resumed search)."""
    st, url = store(s3), storage.S3Url.parse(location)
    st.check_writable(url)
    previous = st.read_json(url.join(RUN_FILE))
    if previous and not overwrite and (experiment is None or previous.get("experiment") != experiment):
        raise BadInput(f"{location} already holds a run: pass --overwrite to replace it, or choose another --output")


def publish(folder: Path, location: str, s3: S3Config | None) -> None:
    """Upload a finished run folder; the bundle's manifest goes last."""
    store(s3).publish(folder, storage.S3Url.parse(location), last=f"{bundle.BEST_DIR}/{bundle.MANIFEST}")


def check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise BadInput(f"--output '{output}' is a file: pass a folder")
    taken = output.is_dir() and any((output / n).exists() for n in (RUN_FILE, checkpoint.CHECKPOINT_NAME, bundle.BEST_DIR))
    if taken and not overwrite:
        raise BadInput(
            f"output folder '{output}' already holds a run: pass --overwrite to replace it, "
            f"--resume {output} to continue it, or choose another --output"
        )
    ensure_writable(output, "output folder")


def ensure_writable(folder: Path, what: str) -> None:
    """Create `folder` and write and delete a probe file in it, so a read-only place fails before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".job-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BadInput(f"{what} '{folder}' is not writable ({e.strerror}): choose a writable location") from None


def check_tune_output(output: Path, experiment: str, overwrite: bool) -> None:
    """A tune output folder may be written again by the same experiment (a resumed search), not by another run."""
    if output.exists() and not output.is_dir():
        raise BadInput(f"--output '{output}' is a file: pass a folder")
    run_file = output / RUN_FILE
    other = (output / checkpoint.CHECKPOINT_NAME).exists() or (
        run_file.is_file() and json.loads(run_file.read_text()).get("experiment") != experiment)
    if other and not overwrite:
        raise BadInput(f"output folder '{output}' already holds another run: pass --overwrite to replace it, or choose another --output")


@dataclasses.dataclass
class Result:
    output: Path
    bundle: Path
    best_epoch: int
    best: dict[str, float]
    history: list[dict[str, float]]
    skipped: int
    resumed_from: int


def train(cfg: TrainConfig, output: Path, *, resume: dict | None = None, overwrite: bool = False,
          bar: BarFactory | None = None, on_epoch: Callable[[Epoch], None] | None = None,
          s3: S3Config | None = None) -> Result:
    """Run (or continue, given a loaded checkpoint) a training run into `output` (a local folder)."""
    if resume is None:
        check_output(output, overwrite)
    s = setup(cfg, cache_dir(), bar, s3)
    meta = s.meta(cfg)
    if resume is not None:
        if resume["data_fingerprint"] != s.fingerprint or resume["classes"] != list(s.folder.classes):
            raise BadInput(f"the data in '{cfg.data}' changed since the checkpoint was written: resume with the same data, or start a new run")
        s.fit.restore(resume)
    (output / RUN_FILE).write_text(json.dumps({"status": "running", **meta, "versions": bundle.versions()}, indent=2))
    start_epoch = s.fit.epoch
    for epoch in s.fit:
        checkpoint.save(epoch.checkpoint() | meta, output / checkpoint.CHECKPOINT_NAME)
        report.write_history(output, s.fit.history)
        if on_epoch:
            on_epoch(epoch)
    best = next(h for h in s.fit.history if h["epoch"] == s.fit.best_epoch)
    folder = bundle.write(output / bundle.BEST_DIR, s.fit.best_model, model_name=cfg.model, classes=s.folder.classes,
                          prep=s.prep, config=cfg.to_dict(), metrics=best, best_epoch=s.fit.best_epoch,
                          data_fingerprint=s.fingerprint)
    report.plot_history(output / "curves.png", s.fit.history, s.fit.best_epoch)
    (output / RUN_FILE).write_text(json.dumps({"status": "done", **meta, "best_epoch": s.fit.best_epoch, "best": best,
                                               "versions": bundle.versions()}, indent=2))
    return Result(output, folder, s.fit.best_epoch, best, s.fit.history, s.skipped, start_epoch)
