"""Using a bundle: evaluate it on a labelled folder, predict labels for image files."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from pathlib import Path

import numpy as np
import torch

from job import builtin, data
from job.bundle import Bundle
from job.errors import BadInput
from job.loop import evaluate as evaluate_batches
from job.metrics import per_class


@dataclasses.dataclass
class Evaluation:
    metrics: dict[str, float]  # val_acc, val_top5, val_f1_macro, val_loss: the names the loop uses
    per_class: list[dict]  # class, precision, recall, f1, support
    confusion: list[list[int]]  # [true][predicted], in the bundle's class order
    classes: tuple[str, ...]
    images: int
    skipped: int


def eval_root(path: str, b: Bundle, cache: Path) -> Path:
    """The labelled folder to evaluate on: DIR/val if DIR has a train/val split, else DIR/<class>."""
    if path in builtin.NAMES:
        c = b.manifest["config"]
        path = str(builtin.materialise(path, cache, c["builtin_train_per_class"], c["builtin_val_per_class"]))
    root = Path(path).expanduser()
    return root / "val" if (root / "val").is_dir() else root


def evaluate(b: Bundle, path: str, cache: Path, batch_size: int, skip_bad: bool, workers: int = 0) -> Evaluation:
    root = eval_root(path, b, cache)
    if not root.is_dir():
        raise BadInput(f"data folder '{root}' does not exist: pass --data DIR with DIR/<class>/ images")
    files, labels = [], []
    index = {name: i for i, name in enumerate(b.classes)}
    classes = data.scan_classes(root)
    unknown = sorted(set(classes) - set(index))
    if unknown:
        raise BadInput(f"classes {unknown} in '{root}' are not among the model's {len(index)} classes ({', '.join(b.classes)}): evaluate on folders named as in training")
    for name, paths in sorted(classes.items()):
        files += paths
        labels += [index[name]] * len(paths)
    prepared = data.prepare(data.Split(tuple(files), tuple(labels)), root, b.prep, cache, workers)
    skipped = data.check_bad([prepared], skip_bad)
    device = next(b.model.parameters()).device
    batches = data.Batches(prepared, b.prep, batch_size, train=False, augment=False, seed=0)
    tally, _ = evaluate_batches(b.model, batches, torch.nn.CrossEntropyLoss(), device, b.prep, False, len(b.classes))
    metrics = tally.result("val")
    cm = tally.confusion_matrix()
    stats = per_class(cm)
    rows = [{"class": name, **{k: float(stats[k][i]) for k in ("precision", "recall", "f1")}, "support": int(stats["support"][i])}
            for i, name in enumerate(b.classes)]
    return Evaluation(metrics, rows, cm.tolist(), b.classes, tally.count, skipped)


def expand(paths: list[str]) -> list[Path]:
    """Image files named directly, and every image below named folders, in a stable order."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += [f for f in sorted(p.rglob("*")) if data.is_image(f)]
        elif p.is_file():
            found.append(p)
        else:
            raise BadInput(f"'{p}' does not exist: pass image files or folders of images")
    if not found:
        raise BadInput(f"no images ({', '.join(sorted(data.IMAGE_SUFFIXES))}) in {', '.join(paths)}: pass image files or folders of images")
    return found


@torch.no_grad()
def predict(b: Bundle, paths: list[str], top_k: int, batch_size: int = 64, skip_bad: bool = False) -> list[dict]:
    """[{file, predictions: [{label, probability}, ...]}] for each readable image, best first."""
    files = expand(paths)
    prep, device = b.prep, next(b.model.parameters()).device
    off = (prep.resize_size - prep.image_size) // 2

    def decode(f: Path):
        try:
            return data.load_image(f.read_bytes(), prep.resize_size, prep.interpolation)[off : off + prep.image_size, off : off + prep.image_size]
        except (OSError, ValueError, SyntaxError):
            return None

    with concurrent.futures.ThreadPoolExecutor() as pool:
        images = list(pool.map(decode, files))
    bad = [str(f) for f, img in zip(files, images) if img is None]
    if bad and not skip_bad:
        raise BadInput(f"{len(bad)} unreadable image(s): {', '.join(bad[:3])}: fix or remove them, or pass --skip-bad-images")
    good = [(f, img) for f, img in zip(files, images) if img is not None]
    k = min(top_k, len(b.classes))
    out = []
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        x = torch.from_numpy(np.stack([img for _, img in chunk])).permute(0, 3, 1, 2).to(device)
        probs = b.model(data.normalise(x, prep)).float().softmax(dim=1).cpu()
        top = probs.topk(k, dim=1)
        for (f, _), p, i in zip(chunk, top.values, top.indices):
            out.append({"file": str(f), "predictions": [{"label": b.classes[j], "probability": float(q)} for q, j in zip(p, i)]})
    return out

