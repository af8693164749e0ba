"""Training-loop throughput: job's loop against the tutorial loop, a plain DataLoader loop and the model-only bound.

Same data (the built-in Fashion-MNIST subset, prepared by job), same model (EfficientNet-Lite0, ImageNet weights),
same image size, same threads. Each figure is images per second over the same images; the first pass of each
variant is a warm-up and is not counted.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

from job import loop, run
from job.config import TrainConfig


@dataclasses.dataclass
class Case:
    cfg: TrainConfig
    setup: run.Setup
    images: int  # per measured pass (train and val each)


def prepare(cache: Path, image_size: int, per_class: int, batch_size: int) -> Case:
    # SGD, as the bound and the tutorial step (job's default is AdamW): the loops compared do the same work
    cfg = TrainConfig(image_size=image_size, builtin_train_per_class=per_class, builtin_val_per_class=per_class,
                      batch_size=batch_size, device="cpu", optimizer="sgd", lr=0.001)
    s = run.setup(cfg, cache)
    return Case(cfg, s, per_class * 10)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- job's own loop ----------------------------------------------------------------------------------------------

def job_loop(case: Case) -> tuple[float, float]:
    """(train, eval) images/s of loop.train_one_epoch / loop.evaluate, exactly as `job train` runs them."""
    fit = case.setup.fit
    fit.train.set_epoch(1)
    train = timed(lambda: loop.train_one_epoch(fit.model, fit.train, fit.optimizer, fit.loss_fn, fit.scaler, fit.device,
                                               fit.prep, fit.amp, fit.num_classes).result("train"))
    val = timed(lambda: loop.evaluate(fit.model, fit.val, fit.loss_fn, fit.device, fit.prep, fit.amp,
                                      fit.num_classes).result("val"))
    return case.images / train, case.images / val


# ---- the PyTorch transfer-learning tutorial's train_model --------------------------------------------------------

def _tutorial_loaders(case: Case, batch_size: int, workers: int):
    p = case.setup.prep
    norm = transforms.Normalize(p.mean, p.std)
    train_t = transforms.Compose([transforms.RandomResizedCrop(p.image_size), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), norm])
    val_t = transforms.Compose([transforms.Resize(p.resize_size), transforms.CenterCrop(p.image_size),
                                transforms.ToTensor(), norm])
    root = case.setup.folder.root
    sets = {"train": torchvision.datasets.ImageFolder(root / "train", train_t),
            "val": torchvision.datasets.ImageFolder(root / "val", val_t)}
    return {k: torch.utils.data.DataLoader(v, batch_size=batch_size, shuffle=(k == "train"), num_workers=workers)
            for k, v in sets.items()}


def tutorial_loop(case: Case, batch_size: int = 4, workers: int = 4) -> tuple[float, float]:
    """One epoch of `train_model` from the PyTorch transfer-learning tutorial: per-batch loss.item() and correct count,
    fp32, a DataLoader over ImageFolder that decodes and transforms every image every epoch."""
    loaders = _tutorial_loaders(case, batch_size, workers)
    model = copy.deepcopy(case.setup.fit.model).to(memory_format=torch.contiguous_format)  # as torchvision builds it
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    seconds = {}
    for phase in ("train", "val"):
        model.train() if phase == "train" else model.eval()
        running_loss, running_corrects = 0.0, 0
        start = time.perf_counter()
        for inputs, labels in loaders[phase]:
            optimizer.zero_grad()
            with torch.set_grad_enabled(phase == "train"):
                outputs = model(inputs)
                _, preds = torch.max(outputs, 1)
                loss = criterion(outputs, labels)
                if phase == "train":
                    loss.backward()
                    optimizer.step()
            running_loss += loss.item() * inputs.size(0)
            running_corrects += torch.sum(preds == labels.data)
        seconds[phase] = time.perf_counter() - start
    return case.images / seconds["train"], case.images / seconds["val"]


def dataloader_loop(case: Case, workers: int = 2) -> tuple[float, float]:
    """The same tutorial loop with job's batch size: what a careful hand-written loop gets."""
    return tutorial_loop(case, batch_size=case.cfg.batch_size, workers=workers)


# ---- the model-only bound ----------------------------------------------------------------------------------------

def bound(case: Case, variant: str = "fp32") -> tuple[float, float]:
    """Forward + backward + SGD step (train) and forward (eval) on tensors already in memory: no input pipeline, no
    metrics. `variant` (fp32, channels_last, channels_last+bf16, channels_last+compile) tries to raise the bound:
    channels_last memory format, bf16 autocast, torch.compile."""
    size, bs = case.setup.prep.image_size, case.cfg.batch_size
    batches = max(1, case.images // bs)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(bs, 3, size, size, generator=g) for _ in range(batches)]
    ys = [torch.randint(0, 10, (bs,), generator=g) for _ in range(batches)]
    layout = torch.channels_last if "channels_last" in variant else torch.contiguous_format
    model = copy.deepcopy(case.setup.fit.model).to(memory_format=layout)  # job's own model is channels_last
    if "channels_last" in variant:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    forward = torch.compile(model) if "compile" in variant else model
    bf16 = "bf16" in variant

    def train_pass():
        model.train()
        for x, y in zip(xs, ys):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = criterion(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def eval_pass():
        model.eval()
        for x in xs:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                forward(x)

    if "compile" in variant:  # compilation happens on the first call of each mode: not part of the figure
        train_pass()
        eval_pass()
    images = batches * bs
    return images / timed(train_pass), images / timed(eval_pass)
