"""The training loop: a train phase and a val phase per epoch, the best epoch's weights kept by val_acc (or the
search's metric).

Iterating a `Fit` yields one `Epoch` per epoch with every metric and a `checkpoint()` to save; whoever drives it
(`job train`, the Ray Tune trainable) decides where checkpoints go. Device and mixed precision are resolved here
only, and CPU and CUDA share one code path: autocast and GradScaler are simply disabled on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Iterator, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from job.config import TrainConfig
from job.data import Batches, Preprocessing, normalise
from job.errors import BadInput, JobError
from job.metrics import Tally

CHECKPOINT_FORMAT = "job-checkpoint/1"


class Diverged(JobError):
    """The loss or the weights became NaN or infinite: the epoch is not kept (no checkpoint, no bundle)."""


class Bar(Protocol):
    def update(self, tally: Tally) -> None: ...
    def close(self) -> None: ...


BarFactory = Callable[[str, int], Bar]  # (description, batches) -> a progress bar


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"device '{name}' asked for, but CUDA is not available here: use --device cpu or auto")
        if (device.index or 0) >= torch.cuda.device_count():
            raise BadInput(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, so easy examples count less."""

    def __init__(self, gamma: float):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
        return (-((1 - log_p.exp()) ** self.gamma) * log_p).mean()


def make_loss(cfg: TrainConfig) -> nn.Module:
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "plateau":
        if cfg.gamma >= 1:
            raise BadInput(f"gamma = {cfg.gamma} never lowers the lr with scheduler = plateau: give gamma < 1")
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.gamma, patience=cfg.step_size)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)


def train_one_epoch(model, batches: Batches, optimizer, loss_fn, scaler, device, prep: Preprocessing, amp: bool,
                    num_classes: int, bar: Bar | None = None) -> Tally:
    model.train()
    tally = Tally(num_classes, device)
    for x, y in batches:
        x = normalise(x.to(device, non_blocking=True), prep)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        tally.add(logits, y, loss)  # device tensors: no host sync per batch
        if bar:
            bar.update(tally)
    return tally


@torch.no_grad()
def evaluate(model, batches: Batches, loss_fn, device, prep: Preprocessing, amp: bool, num_classes: int,
             bar: Bar | None = None) -> Tally:
    """One pass over `batches` in order."""
    model.eval()
    tally = Tally(num_classes, device)
    for x, y in batches:
        x = normalise(x.to(device, non_blocking=True), prep)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
            loss = loss_fn(logits, y)
        tally.add(logits, y, loss)
        if bar:
            bar.update(tally)
    return tally


@dataclasses.dataclass
class Epoch:
    """What `fit` yields after each epoch. `checkpoint()` returns everything needed to continue."""

    epoch: int  # 1-based
    metrics: dict[str, float]
    checkpoint: Callable[[], dict]


@dataclasses.dataclass(frozen=True)
class Data:
    """What a `Fit` trains and validates on."""

    train: Batches
    val: Batches
    prep: Preprocessing
    num_classes: int


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class Fit:
    """Owns the model, optimizer, scheduler and best weights of one training run.

    Every epoch starts from seeds derived from (seed, epoch), so a run resumed from a checkpoint repeats the
    remaining epochs exactly (on the same device and thread count) and ends where an uninterrupted run ends.
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, data: Data, device: torch.device, bar: BarFactory | None = None,
                 objective: tuple[str, str] = ("val_acc", "max")):
        self.cfg, self.device, self.objective = cfg, device, objective
        self.train, self.val, self.prep, self.num_classes = data.train, data.val, data.prep, data.num_classes
        self.amp = cfg.amp and device.type == "cuda"
        # channels_last on the CPU too: the batches arrive in it (NHWC storage), and oneDNN's convolutions run 1.55x
        # (train) and 1.3x (eval) as fast in it as in NCHW (bench/: model-only bound, EfficientNet-Lite0, 2 cores)
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.loss_fn = make_loss(cfg)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.bar = bar
        self.epoch = 0
        self.best_epoch = 0  # by `objective` (metric, max or min); the first of equals
        self.best_model: dict[str, torch.Tensor] | None = None  # set by the first epoch (it always improves)
        self.best_confusion: list[list[int]] = []  # the best epoch's validation confusion matrix, [true][predicted]
        self.history: list[dict[str, float]] = []

    def restore(self, ckpt: dict) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise BadInput(f"the checkpoint does not fit this model and optimizer ({type(e).__name__}): it is damaged or "
                           "from another run; start a new run") from None
        self.epoch, self.best_epoch = ckpt["epoch"], ckpt["best_epoch"]
        # None: the best epoch was the checkpoint's own, so its weights are "model"
        self.best_model = ckpt["best_model"] if ckpt["best_model"] is not None else cpu_state(self.model)
        self.best_confusion = list(ckpt.get("best_confusion", []))  # absent from checkpoints of earlier versions
        self.history = list(ckpt["history"])

    def checkpoint(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": cpu_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            # the best weights are left out while they are the current ones: a third fewer bytes per checkpoint
            "best_model": None if self.best_epoch == self.epoch else self.best_model,
            "best_confusion": self.best_confusion,
            "history": self.history,
        }

    @staticmethod
    def _check_finite(epoch: int, name: str, value: float, lr: float) -> None:
        if not math.isfinite(value):
            raise Diverged(f"training diverged in epoch {epoch} ({name} = {value}): lower lr (now {lr:g})")

    def __iter__(self) -> Iterator[Epoch]:
        while self.epoch < self.cfg.epochs:
            yield self.run_epoch()

    def run_epoch(self) -> Epoch:
        epoch = self.epoch + 1
        torch.manual_seed(self.cfg.seed * 100_003 + epoch)  # dropout, stochastic depth
        self.train.set_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        bar = self.bar(f"epoch {epoch}/{self.cfg.epochs} train", len(self.train)) if self.bar else None
        tally = train_one_epoch(self.model, self.train, self.optimizer, self.loss_fn, self.scaler, self.device,
                                self.prep, self.amp, self.num_classes, bar)
        metrics = tally.result("train")  # the epoch's one host sync for training
        train_s = time.perf_counter() - start
        if bar:
            bar.close()
        self._check_finite(epoch, "train_loss", metrics["train_loss"], lr)
        bar = self.bar(f"epoch {epoch}/{self.cfg.epochs} val  ", len(self.val)) if self.bar else None
        val_tally = evaluate(self.model, self.val, self.loss_fn, self.device, self.prep, self.amp, self.num_classes, bar)
        if bar:
            bar.close()
        metrics |= val_tally.result("val")
        self._check_finite(epoch, "val_loss", metrics["val_loss"], lr)
        bad = next((n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise Diverged(f"training diverged in epoch {epoch} (weights of {bad} are not finite): lower lr (now {lr:g})")
        metrics |= {"lr": lr, "epoch_s": time.perf_counter() - start, "images_per_s": tally.count / train_s}
        if self.cfg.scheduler == "plateau":
            self.scheduler.step(metrics["val_acc"])
        else:
            self.scheduler.step()
        self.epoch = epoch
        self.history.append({"epoch": epoch, **metrics})
        if self._improves(metrics):
            self.best_epoch, self.best_model = epoch, cpu_state(self.model)
            self.best_confusion = val_tally.confusion_matrix().tolist()
        return Epoch(epoch, metrics, self.checkpoint)

    def _improves(self, metrics: dict) -> bool:
        if not self.best_epoch:
            return True
        metric, mode = self.objective
        best = next(h for h in self.history if h["epoch"] == self.best_epoch)[metric]
        return metrics[metric] > best if mode == "max" else metrics[metric] < best
