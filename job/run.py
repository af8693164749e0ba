"""One training run, from a resolved config to a finished run folder: data, model, loop, checkpoints, bundle, reports.

`setup` (config -> ready-to-iterate `Fit`) is shared with the Ray Tune trainable, so both run the same loop. Where
the run lives (a local folder or s3://) is the `storage.Location`'s business: this module writes into the local
folder it stages and hands it back to be published.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import torch

from job import builtin, bundle, checkpoint, data, model, report, results, tracking
from job.config import S3Config, TrainConfig
from job.errors import BadInput
from job.files import cache_dir, hold, write_json
from job.loop import BarFactory, Data, Epoch, Fit, resolve_device
from job.progress import say
from job.results import Result, run_record
from job.storage import RUN_FILE, Location, is_s3, naming


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


def as_trained(config: dict, state: dict) -> dict:
    """`config`, resumed from the checkpoint `state`, at the input size its weights were trained at: where the size was
    left to the default, a default changed since (fashion-mnist: 64 -> 48 px) must not change the run half-way."""
    if config.get("image_size") is None and "preprocessing" in state:
        return config | {"image_size": state["preprocessing"]["image_size"]}
    return config


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


def data_root(cfg: TrainConfig, cache: Path, s3: S3Config | None) -> Path:
    """The local image folder of `cfg.data`: a built-in materialised in the cache, an s3:// prefix mirrored into it,
    or the folder itself."""
    if cfg.data in builtin.NAMES:
        return builtin.materialise(cfg.data, cache, cfg.builtin_train_per_class, cfg.builtin_val_per_class)
    return Location.parse(cfg.data, s3).pull(cache, folder=True)


@dataclasses.dataclass
class RunData:
    """A run's data, checked and decoded into the cache: what a search's driver needs (no model)."""
    folder: data.Folder
    prep: data.Preprocessing
    train: data.Prepared
    val: data.Prepared
    skipped: int

    @property
    def fingerprint(self) -> str:
        return json.dumps({"train": self.train.fingerprint, "val": self.val.fingerprint})


def prepare_data(cfg: TrainConfig, cache: Path, s3: S3Config | None = None) -> RunData:
    """The data of a run, scanned, checked and decoded once into `cache`; all bad data is found here."""
    root = data_root(cfg, cache, s3)
    with naming({root: cfg.data}):
        folder = data.scan(root, cfg.val_fraction, cfg.seed)
        prep = preprocessing(cfg)
        train, val = (data.prepare(s, folder.root, prep, cache, cfg.workers) for s in (folder.train, folder.val))
        skipped = data.check_bad(train.bad + val.bad, cfg.skip_bad_images)
    for name, split in (("train", train), ("val", val)):
        present = set(split.labels[split.ok].tolist())
        if len(present) < len(folder.classes):
            lost = sorted(set(folder.classes) - {folder.classes[i] for i in present})
            raise BadInput(f"after skipping unreadable images, {name} has no image of class {', '.join(lost)}: add readable images")
    return RunData(folder, prep, train, val, skipped)


def setup(cfg: TrainConfig, cache: Path, bar: BarFactory | None = None, s3: S3Config | None = None,
          objective: tuple[str, str] = ("val_acc", "max")) -> Setup:
    """Everything a run needs before its first epoch; all bad input is found here, before any training. `objective`
    (metric, mode) picks the best epoch."""
    model.check_name(cfg.model)
    device = resolve_device(cfg.device)
    d = prepare_data(cfg, cache, s3)
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    weights = str(Location.parse(cfg.weights, s3).pull(cache)) if is_s3(cfg.weights) else cfg.weights
    net = model.create(cfg.model, weights, len(d.folder.classes), cfg.freeze_backbone)
    pin = device.type == "cuda"
    train_batches, val_batches = (
        data.Batches(p, d.prep, cfg.batch_size, train=t, augment=cfg.augment, seed=cfg.seed, pin_memory=pin)
        for p, t in ((d.train, True), (d.val, False)))
    fit = Fit(cfg, net, Data(train_batches, val_batches, d.prep, len(d.folder.classes)), device, bar, objective)
    return Setup(fit, d.folder, d.prep, d.fingerprint, d.skipped)


def train(cfg: TrainConfig, output: str | Path, *, resume: dict | None = None, overwrite: bool = False,
          bar: BarFactory | None = None, on_epoch: Callable[[Epoch], None] | None = None,
          s3: S3Config | None = None) -> Result:
    """Run (or continue, given a loaded checkpoint) a training run into `output`: a local folder, or s3:// where the
    run is published when it has finished."""
    started = time.perf_counter()
    where = Location.parse(output, s3)
    hint = f"--resume {output} to continue it, " if not where.remote else ""
    if resume is None:
        where.claim(overwrite, hint=hint, data=cfg.data)
    cache = cache_dir()
    staged = where.stage(cache)
    with hold(staged, f"output '{where}'"):
        if resume is None and not where.remote:
            where.check_free(overwrite, hint=hint)  # again: a run that held it a moment ago may have ended
        return _train(cfg, where, staged, cache, resume, overwrite, bar, on_epoch, s3, started)


def _train(cfg: TrainConfig, where: Location, staged: Path, cache: Path, resume: dict | None, overwrite: bool,
           bar: BarFactory | None, on_epoch: Callable[[Epoch], None] | None, s3: S3Config | None,
           started: float) -> Result:
    """`train`'s work, once this process alone writes the run's folder."""
    output = str(where)
    s = setup(cfg, cache, bar, s3)
    if resume is None and (overwrite or where.remote):
        results.clear(staged)
    meta = {"kind": "train", **s.meta(cfg)}
    if resume is not None:
        if resume["data_fingerprint"] != s.fingerprint or resume["classes"] != list(s.folder.classes):
            raise BadInput(f"the data in '{cfg.data}' changed since the checkpoint was written: resume with the same data, or start a new run")
        s.fit.restore(resume)
    write_json(staged / RUN_FILE, run_record("running", meta))
    start_epoch = s.fit.epoch
    events = [tracking.TensorBoard(staged / tracking.TENSORBOARD_DIR)]
    ml = None
    if cfg.tracking == "mlflow":
        ml = tracking.MLflow(tracking.mlflow_uri(cfg.tracking_uri, str(output)), "job", str(where), cfg.to_dict(),
                             warn=say)
        events.append(ml)
    failed = True
    try:
        for epoch in s.fit:
            checkpoint.save(epoch.checkpoint() | s.meta(cfg), staged / checkpoint.CHECKPOINT_NAME)
            report.write_history(staged, s.fit.history)
            for e in events:
                e.epoch(epoch.epoch, epoch.metrics)
            if on_epoch:
                on_epoch(epoch)
        best = next(h for h in s.fit.history if h["epoch"] == s.fit.best_epoch)
        info = bundle.Info(model=cfg.model, classes=s.folder.classes, prep=s.prep, config=cfg.to_dict(), metrics=best,
                           best_epoch=s.fit.best_epoch, data_fingerprint=s.fingerprint)
        bundle.write(staged / bundle.BEST_DIR, s.fit.best_model, info)
        report.plot_history(staged / "curves.png", s.fit.history, s.fit.best_epoch)
        write_json(staged / RUN_FILE, run_record("done", meta, best_epoch=s.fit.best_epoch, best=best))
        where.publish(staged, last=f"{bundle.BEST_DIR}/{bundle.MANIFEST}", owned=results.RUN_FILES)
        if ml:
            ml.artifacts(staged / bundle.BEST_DIR, "bundle")
        failed = False
    finally:
        events[0].close()
        if ml:
            ml.close(failed)
    return Result(str(where), str(where.join(bundle.BEST_DIR)), s.fit.best_epoch, best, s.fit.history,
                  seconds=time.perf_counter() - started, skipped=s.skipped, resumed_from=start_epoch)
