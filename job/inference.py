"""A trained model, loaded from its bundle: evaluate it on a labelled folder, predict labels for image files."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from pathlib import Path

import numpy as np
import torch

from job import builtin, bundle, data
from job.config import S3Config
from job.decode import BAD_IMAGE, load_image
from job.errors import BadInput
from job.files import missing
from job.loop import evaluate as evaluate_batches, resolve_device
from job.metrics import per_class
from job.storage import Location, is_s3, naming, shown


@dataclasses.dataclass
class Evaluation:
    """A model measured on a labelled folder."""

    # val_acc, val_top5, val_f1_macro and val_loss, named as in training; val_loss here is plain cross-entropy,
    # whatever loss (label smoothing, focal) the model was trained with
    metrics: dict[str, float]
    per_class: list[dict]  # class, precision, recall, f1, support
    confusion: list[list[int]]  # [true][predicted], in the bundle's class order
    classes: tuple[str, ...]
    images: int
    skipped: int


@dataclasses.dataclass
class Model:
    """A bundle's network, classes and preprocessing, ready on a device (what `job.load` returns)."""

    net: torch.nn.Module
    classes: tuple[str, ...]
    prep: data.Preprocessing
    manifest: dict
    s3: S3Config | None = None  # for s3:// images and folders

    def predict(self, images: list[str | Path], top_k: int = 3, skip_bad: bool = False) -> list[dict]:
        """[{file, predictions: [{label, probability}, ...]}] for image files (or folders of them, local or s3://),
        best first; an s3:// one is downloaded into the cache (once) and named by its s3:// location."""
        from job.files import cache_dir

        given = [str(p) for p in images]
        local = [_copy(p, self.s3, cache_dir()) if is_s3(p) else p for p in given]
        copies = {Path(c): p for c, p in zip(local, given)}  # `shown` renames the s3:// ones
        with naming(copies):
            rows = predict(self, [str(c) for c in local], top_k, skip_bad=skip_bad)
        return [r | {"file": shown(r["file"], copies)} for r in rows]

    def evaluate(self, folder: str | Path, batch_size: int = 64, skip_bad: bool = False,
                 cache: Path | None = None) -> Evaluation:
        """Metrics, per-class table and confusion matrix on DIR/<class>/* (or DIR/val/<class>/*), local or s3://."""
        from job.files import cache_dir

        cache = cache or cache_dir()
        local = Location.parse(str(folder), self.s3).pull(cache, folder=True) if is_s3(str(folder)) else folder
        with naming({Path(local): str(folder)}):
            return evaluate(self, str(local), cache, batch_size, skip_bad)


def _copy(given: str, s3: S3Config | None, cache: Path) -> Path:
    """The cache's copy of an s3:// image (downloaded) or prefix of images (mirrored)."""
    where = Location.parse(given, s3)
    return where.pull(cache) if where.exists() else where.pull(cache, folder=True)


def load(where: Location, cache: Path, device: str = "auto", s3: S3Config | None = None) -> Model:
    """The model of a bundle (or of a run folder's best/), local or s3://, verified against its manifest."""
    from job import model as models

    folder = bundle.locate(where, cache)
    manifest, state = bundle.load_weights(folder)
    net = models.create(manifest["model"], "none", manifest["num_classes"])
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise BadInput(f"the weights in {folder} do not fit a {manifest['model']} with {manifest['num_classes']} "
                       "classes: the bundle is damaged, export it again") from None
    prep = data.Preprocessing.from_dict(manifest["preprocessing"])  # checked with the manifest
    net.to(resolve_device(device)).to(memory_format=torch.channels_last).eval()  # as trained: the faster layout
    return Model(net, tuple(manifest["classes"]), prep, manifest, s3)


def eval_root(path: str, b: Model, cache: Path) -> Path:
    """The labelled folder to evaluate on: DIR/val if DIR has a train/val split, else DIR/<class>."""
    if path in builtin.NAMES:
        from job.config import TrainConfig

        c = b.manifest["config"]
        path = str(builtin.materialise(path, cache, int(c.get("builtin_train_per_class", TrainConfig.builtin_train_per_class)),
                                       int(c.get("builtin_val_per_class", TrainConfig.builtin_val_per_class))))
    root = Path(path).expanduser()
    return root / "val" if (root / "val").is_dir() else root


def evaluate(b: Model, path: str, cache: Path, batch_size: int, skip_bad: bool, workers: int = 0) -> Evaluation:
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
    skipped = data.check_bad(prepared.bad, skip_bad)
    device = next(b.net.parameters()).device
    batches = data.Batches(prepared, b.prep, batch_size, train=False, augment=False, seed=0)
    tally = evaluate_batches(b.net, batches, torch.nn.CrossEntropyLoss(), device, b.prep, False, len(b.classes))
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
            raise BadInput(f"'{p}' {missing(p)}: pass image files or folders of images")
    if not found:
        raise BadInput(f"no images ({', '.join(sorted(data.IMAGE_SUFFIXES))}) in {', '.join(paths)}: pass image files or folders of images")
    return found


@torch.no_grad()
def predict(b: Model, paths: list[str], top_k: int, batch_size: int = 64, skip_bad: bool = False) -> list[dict]:
    """[{file, predictions: [{label, probability}, ...]}] for each readable image, best first.

    Images are decoded a batch at a time (in threads), so a folder of any size fits in memory.
    """
    files = expand(paths)
    prep, device = b.prep, next(b.net.parameters()).device
    k = min(top_k, len(b.classes))
    decode = _decoder(prep)
    out, bad = [], []
    with concurrent.futures.ThreadPoolExecutor() as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            decoded = list(pool.map(decode, chunk))
            bad += [str(f) for f, img in zip(chunk, decoded) if img is None]
            good = [(f, img) for f, img in zip(chunk, decoded) if img is not None]
            if not good:
                continue
            x = torch.from_numpy(np.stack([img for _, img in good])).permute(0, 3, 1, 2).to(device)
            top = b.net(data.normalise(x, prep)).float().softmax(dim=1).topk(k, dim=1)
            for (f, _), p, i in zip(good, top.values.cpu(), top.indices.cpu()):
                out.append({"file": str(f), "predictions": [{"label": b.classes[j], "probability": float(q)} for q, j in zip(p, i)]})
    data.check_bad(bad, skip_bad)
    return out


def _decoder(prep: data.Preprocessing):
    """file -> the centre crop the model sees (HWC uint8), or None for an unreadable file."""
    off, size = (prep.resize_size - prep.image_size) // 2, prep.image_size

    def decode(f: Path) -> np.ndarray | None:
        try:
            return load_image(f.read_bytes(), prep.resize_size, prep.interpolation)[off : off + size, off : off + size]
        except BAD_IMAGE:
            return None

    return decode


def decode_batch(prep: data.Preprocessing, files: list[Path]) -> torch.Tensor | None:
    """The readable ones of `files` as one normalised float32 NCHW batch, exactly as `predict` feeds the model."""
    with concurrent.futures.ThreadPoolExecutor() as pool:
        decoded = [img for img in pool.map(_decoder(prep), files) if img is not None]
    if not decoded:
        return None
    return data.normalise(torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2), prep).float().contiguous()
