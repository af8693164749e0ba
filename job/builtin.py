"""Built-in data sets, read from installed packages and materialised once as an ImageFolder tree.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` (IDX files). The subset is the first N images of each
class in file order (train from the training file, val from the test file), so it is the same on every machine.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from job.errors import BadInput, JobError
from job.progress import say

def fashion_mnist_dir() -> Path:
    """Where Debian's dataset-fashion-mnist puts its IDX files ($JOB_FASHION_MNIST_DIR moves it)."""
    return Path(os.environ.get("JOB_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


FASHION_MNIST_CLASSES = (
    "t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
# Native 28-px images: upscaling them to the weights' 224 px costs ~12x the compute for no gain on a CPU. 48 px, not
# 64: a search trial's epochs (one thread) 0.8x as long, at the same accuracy within noise (job train, seeds 0-3: mean
# val_acc 0.852 at 48 px, 0.858 at 64 px; README, *Defaults, chosen by measurement*).
NATIVE_IMAGE_SIZE = {"fashion-mnist": 48}
NAMES = tuple(NATIVE_IMAGE_SIZE)
SIZES = "sizes.json"  # beside train/ and val/: each file's size, written with them, checked at each use


def materialise(name: str, cache: Path, train_per_class: int, val_per_class: int) -> Path:
    """Return an ImageFolder root (train/ and val/) for a built-in data set, writing it on first use."""
    assert name == "fashion-mnist", name  # NAMES is checked by the caller
    root = cache / "datasets" / f"{name}-{train_per_class}-{val_per_class}"
    if (root / "train").is_dir() and (root / "val").is_dir():
        damage = _damage(root)
        if not damage:
            return root
        say(f"the built-in data set in {root} is damaged ({damage}): writing it again")
    source = fashion_mnist_dir()
    if not source.is_dir():
        raise BadInput(
            f"built-in data set '{name}' needs {source}: install it with "
            "`apt-get install dataset-fashion-mnist`, or pass --data DIR"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the final place and rename: an interrupted run never leaves a half-written data set.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for split, prefix, per_class in (("train", "train", train_per_class), ("val", "t10k", val_per_class)):
            images = _read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
            labels = _read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
            for label, cls in enumerate(FASHION_MNIST_CLASSES):
                (tmp / split / cls).mkdir(parents=True)
                picked = np.flatnonzero(labels == label)[:per_class]
                if len(picked) < per_class:
                    raise BadInput(f"{name} has only {len(picked)} {split} images of '{cls}': ask for at most that many per class")
                for i in picked:
                    Image.fromarray(images[i]).save(tmp / split / cls / f"{i:05d}.png")
        sizes = {f.relative_to(tmp).as_posix(): f.stat().st_size for f in sorted(tmp.rglob("*.png"))}
        (tmp / SIZES).write_text(json.dumps(sizes))
        _replace(tmp, root)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # PIL's and json's writes fail without a file name: name the folder, and the setting that moves it
        images = len(FASHION_MNIST_CLASSES) * (train_per_class + val_per_class)
        raise JobError(f"no space left in {root.parent} to write the built-in data set {name} ({images} small PNG "
                       "files, about 4 kB each on disk): free space there, or set JOB_CACHE to a folder on a larger "
                       "disk") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _damage(root: Path) -> str:
    """What is wrong with a materialised data set, from its files' sizes against those written with it (a stat each:
    milliseconds for the default 1,500 images); "" when nothing is, or it was written before sizes were kept."""
    try:
        sizes = json.loads((root / SIZES).read_text())
    except FileNotFoundError:
        return ""
    except ValueError:
        sizes = None
    if not isinstance(sizes, dict):
        return f"{SIZES} cannot be read"
    missing = changed = 0
    for name, size in sizes.items():
        try:
            changed += (root / name).stat().st_size != size
        except FileNotFoundError:
            missing += 1
    return ", ".join(f"{n} {what}" for n, what in ((missing, "missing"), (changed, "cut short or changed")) if n)


def _replace(tmp: Path, root: Path) -> None:
    """Put the folder `tmp` in place as `root`: renamed, so that no reader sees half of it; a damaged `root` is
    moved aside and deleted. Another process that put its own there first wins."""
    old = root.with_name(f".{root.name}-old-{os.getpid()}")
    try:
        root.rename(old)
    except FileNotFoundError:
        pass
    try:
        tmp.rename(root)
    except OSError:  # another process materialised it first
        if not (root / "train").is_dir():
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format): magic, dims, then big-endian unsigned bytes."""
    if not path.is_file():
        raise BadInput(f"{path} is missing: reinstall it with `apt-get install --reinstall dataset-fashion-mnist`")
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise JobError(f"{path} is not an unsigned-byte IDX file: reinstall dataset-fashion-mnist")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
