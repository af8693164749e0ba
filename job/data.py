"""Data sets, preprocessing and batches.

An image folder is scanned and split once, then every image is decoded once, resized to a fixed square
(`resize_size`, the deterministic part of the transform) and cached on disk as one uint8 array per split (one
band when every image is grey: a third of the bytes to write, keep and read; else RGB). Each
epoch then only gathers rows from that (memory-mapped) array and applies the cheap random part, a crop to
`image_size` and a flip, so the input pipeline stays far ahead of the model even on two CPU cores. Normalisation
(and grey to RGB) happens on the training device.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from job import cpus
from job.decode import DIGEST, INTERPOLATIONS, Colour, Decoders, Rows, Unstarted, looks_grey
from job.errors import BadInput, JobError, first_line
from job.files import mib, write_json
from job.progress import say

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
CACHE_VERSION = 2  # bump when the decoded pixels would differ for the same files (2: 16-bit grey PNGs, 2026-12-02)
DECODE_CHUNK = 4096  # images written between two background fdatasyncs, handed to the decoding threads at a time
DECODE_BLOCK = 64  # images one thread or decoding process decodes in a row
PROBE_IMAGES = 512  # images decoded in one thread, then as many in all, to choose how many to use
HELPER_IMAGES = 512  # images, at least, for each decoding process started (~0.2 s each to start)
LOW_DISK_BYTES, LOW_DISK_FRACTION = 1 << 30, 0.05  # warn when a decoded data set would leave less free than both


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What turns a file into model input; saved in every checkpoint and bundle."""

    image_size: int  # the square the model sees
    resize_size: int  # the square cached on disk; training crops image_size out of it at random, eval at the centre
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: object, prefix: str = "") -> Preprocessing:
        """From a manifest or checkpoint (data from outside): every value checked, else ValueError naming the key
        (`prefix` + key)."""
        def numbers(key: str) -> tuple[float, float, float]:
            v = d.get(key)
            if not (isinstance(v, (list, tuple)) and len(v) == 3
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
                raise ValueError(f"'{prefix}{key}' must be 3 finite numbers")
            return tuple(float(x) for x in v)

        if not isinstance(d, dict):
            raise ValueError(f"'{prefix.rstrip('.') or 'preprocessing'}' must be an object")
        size, resize = d.get("image_size"), d.get("resize_size")
        if not (isinstance(size, int) and isinstance(resize, int) and 16 <= size <= resize <= 4096):
            raise ValueError(f"'{prefix}image_size' and '{prefix}resize_size' must be integers, 16 <= image_size <= resize_size")
        mean, std = numbers("mean"), numbers("std")
        if min(std) <= 0:
            raise ValueError(f"'{prefix}std' must be positive")
        if not isinstance(d.get("interpolation"), str) or d["interpolation"] not in INTERPOLATIONS:
            raise ValueError(f"'{prefix}interpolation' must be one of {', '.join(INTERPOLATIONS)}")
        return cls(size, resize, mean, std, d["interpolation"])


@dataclasses.dataclass(frozen=True)
class Split:
    """The files of one split, in a fixed order, with their class indices. Paths are kept as strings: 60,000
    Path objects held 25 MB here, their strings 7 MB."""

    files: tuple[str, ...]
    labels: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Folder:
    root: Path
    classes: tuple[str, ...]
    train: Split
    val: Split


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[str]:
    """The image files below `folder` (hidden files and folders left out; symlinked folders not followed, as
    Path.rglob), in Path order. os.scandir answers "is it a file" from the directory entry, without a stat per file:
    measured on the 60,000 + 10,000 images of Fashion-MNIST (2 cores), a cached run's scan took 9.5 s with
    Path.rglob, is_file and relative_to, and under a second this way."""
    found, todo = [], [os.fspath(folder)]
    while todo:
        below = todo.pop()
        try:
            entries = os.scandir(below)
        except FileNotFoundError:
            raise _went_away(below) from None
        with entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file():
                    found.append(e.path)
    return sorted(found, key=lambda p: p.split(os.sep))  # the order of Path's own comparison


def scan_classes(root: Path) -> dict[str, list[str]]:
    classes = {d.name: _images(d) for d in _class_dirs(root)}
    if not classes:
        raise BadInput(f"no class folders in '{root}': put images in {root}/<class>/ (or {root}/train/<class>/ and {root}/val/<class>/)")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise BadInput(
            f"class folder '{root / empty[0]}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))}): add images or remove the folder"
        )
    if len(classes) < 2:
        raise BadInput(f"only one class ('{next(iter(classes))}') in '{root}': a classifier needs at least 2 class folders")
    return classes


def scan(root: Path, val_fraction: float, seed: int) -> Folder:
    """Find classes and files. DIR/train + DIR/val are used as given; DIR/<class> is split, stratified and seeded."""
    if not root.exists():
        raise BadInput(f"data folder '{root}' does not exist: pass --data DIR (DIR/<class>/*.jpg) or --data fashion-mnist")
    if not root.is_dir():
        raise BadInput(f"--data '{root}' is a file: pass the folder that holds one sub-folder per class")
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = scan_classes(root / "train"), scan_classes(root / "val")
        if set(train) != set(val):
            only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
            raise BadInput(
                f"train and val classes differ in '{root}' (only in train: {only_train or 'none'}; only in val: "
                f"{only_val or 'none'}): give both splits the same class folders"
            )
        classes = tuple(sorted(train))
        return Folder(root, classes, _split(train, classes), _split(val, classes))
    per_class = scan_classes(root)
    classes = tuple(sorted(per_class))
    rng = np.random.default_rng(seed)
    train_part, val_part = {}, {}
    for name in classes:
        files = per_class[name]
        if len(files) < 2:
            raise BadInput(f"class '{name}' in '{root}' has {len(files)} image: at least 2 are needed to split train/val")
        order = rng.permutation(len(files))
        n_val = min(len(files) - 1, max(1, round(len(files) * val_fraction)))
        val_part[name] = [files[i] for i in sorted(order[:n_val])]
        train_part[name] = [files[i] for i in sorted(order[n_val:])]
    return Folder(root, classes, _split(train_part, classes), _split(val_part, classes))


def _split(per_class: dict[str, list[str]], classes: tuple[str, ...]) -> Split:
    files, labels = [], []
    for index, name in enumerate(classes):
        files += per_class[name]
        labels += [index] * len(per_class[name])
    return Split(tuple(files), tuple(labels))


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One split, decoded: images (N, S, S, bands) uint8 (1 band for a grey data set, else 3), labels (N,), and the
    files that could not be read."""

    images: np.ndarray
    labels: np.ndarray
    ok: np.ndarray  # (N,) bool: False where the file could not be decoded
    bad: tuple[str, ...]
    fingerprint: str  # SHA-256 over the bytes and labels of the good files


def prepare(split: Split, root: Path, prep: Preprocessing, cache: Path, workers: int) -> Prepared:
    """Decode a split once into the on-disk cache (keyed by names, sizes, mtimes and preprocessing) and map it."""
    key = _cache_key(split, root, prep)
    folder = cache / "prepared"
    array_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    cached = _open_cached(array_path, meta_path, len(split.files), prep.resize_size)
    if cached is None:
        folder.mkdir(parents=True, exist_ok=True)
        _sweep(folder)
        _decode_all(split, prep, array_path, meta_path, workers or cpus.available())
        cached = _open_cached(array_path, meta_path, len(split.files), prep.resize_size)
        if cached is None:
            raise JobError(f"the data set decoded into {folder} does not read back: check that disk, or set JOB_CACHE "
                           "to a folder on another one")
    images, ok, fingerprint = cached
    bad = tuple(str(split.files[i]) for i in np.flatnonzero(~ok))
    return Prepared(images, np.array(split.labels, dtype=np.int64), ok, bad, fingerprint)


def _open_cached(array_path: Path, meta_path: Path, n: int, size: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """A decoded split from the cache, (rows mapped from disk, ok flags, fingerprint); None where there is none yet,
    or where its files are damaged (cut short, overwritten, of another shape): the cache is job's own, so that one
    line is said and the split is decoded again. Its pixels are not hashed again (seconds for a large set)."""
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(array_path, mmap_mode="r")
        ok, fingerprint = np.array(meta["ok"], dtype=bool), meta["fingerprint"]
        shape = (n, size, size, images.shape[-1])
        if images.dtype != np.uint8 or images.shape != shape or shape[-1] not in (1, 3) or ok.shape != (n,) \
                or not isinstance(fingerprint, str):
            raise ValueError(f"{images.dtype} {images.shape} and {ok.shape} flags for {n} images of {size} px")
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, IndexError, EOFError) as e:  # JSON, .npy header, mmap, shape, fields
        say(f"the decoded copy of this data set in {array_path.parent} is damaged ({first_line(e, 120)}): decoding "
            "it again")
        return None
    return images, ok, fingerprint


def _cache_key(split: Split, root: Path, prep: Preprocessing) -> str:
    """The cache's name for a split: a hash of the preprocessing, the folder, and every file's name, size and mtime.
    The JSON text is hashed as it is made, a file at a time (the same bytes as one json.dumps of the whole list, so
    caches made before keep their names): the list and its text took 23 MB at once for 60,000 files."""
    head = json.dumps([CACHE_VERSION, prep.resize_size, prep.interpolation, str(root.resolve())])[:-1]
    h = hashlib.sha256(f"{head}, [".encode())
    relative, quote = _relative_to(root), json.encoder.encode_basestring_ascii  # json.dumps's own quoting of a str
    for i, f in enumerate(split.files):
        try:
            s = os.stat(f)
        except FileNotFoundError:
            raise _went_away(f) from None
        h.update(f"{', ' if i else ''}[{quote(relative(f))}, {s.st_size}, {s.st_mtime_ns}]".encode())
    h.update(f"], {json.dumps(list(split.labels))}]".encode())
    return h.hexdigest()[:24]


def _went_away(path: str) -> BadInput:
    return BadInput(f"'{path}' went away while job read the data set: leave the data unchanged while a run prepares "
                    "it, then run again")


def _relative_to(root: Path) -> Callable[[str], str]:
    """A function f -> str(Path(f).relative_to(root)) that slices the string where it can (Path.relative_to: ~34 us
    a file here, 2 s for 60,000 files)."""
    prefix = os.fspath(root) + os.sep

    def relative(f: str) -> str:
        return f[len(prefix):] if f.startswith(prefix) else str(Path(f).relative_to(root))
    return relative


def _no_room(folder: Path, need: int, free: int) -> JobError:
    return JobError(f"the decoded data set needs {mib(need)} in the cache folder {folder}, which has {mib(free)} "
                    "free: free space there, or set JOB_CACHE to a folder on a larger disk")


def check_room(folder: Path, need: int) -> None:
    """Refuse a decoded data set that does not fit in the cache's disk; warn (with the numbers) when it would leave
    less than LOW_DISK_BYTES or LOW_DISK_FRACTION of that disk free, since checkpoints and other runs need room too."""
    usage = shutil.disk_usage(folder)
    if need > usage.free:
        raise _no_room(folder, need, usage.free)
    left = usage.free - need
    if left < max(LOW_DISK_BYTES, LOW_DISK_FRACTION * usage.total):
        say(f"warning: the decoded data set takes {mib(need)} of the {mib(usage.free)} free in the cache folder "
            f"{folder}, leaving {mib(left)} of {mib(usage.total)}: free space there, or set JOB_CACHE to a folder on "
            "a larger disk")


def _reserve(path: str, nbytes: int, folder: Path) -> None:
    """Allocate the decoded array's blocks now: a full disk fails here, with a message, instead of killing the
    process with SIGBUS when the memory map first writes to a block that cannot be had."""
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, nbytes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_room(folder, nbytes, shutil.disk_usage(folder).free) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: go on as before
            raise


def _locked_temporary(folder: Path) -> tuple[int, str]:
    """A new temporary array file in `folder`, named .tmp-*.npy only once this process holds an exclusive flock on it
    (the lock ends with the process, however it ends): (the locked descriptor, its path)."""
    fd, new = tempfile.mkstemp(prefix=".new-", suffix=".npy", dir=folder)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = os.path.join(folder, ".tmp-" + os.path.basename(new)[len(".new-"):])
    os.rename(new, path)
    return fd, path


def _sweep(folder: Path) -> None:
    """Delete the temporary arrays of runs that were killed while they decoded (SIGKILL, an evicted pod, a lost node:
    each up to the size of a whole decoded split, 11.8 GB for Fashion-MNIST at 224 px, left in a cache that a retry
    then needs room in). A file whose lock can be taken has no live owner: a run holds its lock from before the
    file has that name until it ends, also when another run shares the cache. Then the splits an earlier
    CACHE_VERSION decoded (their metadata has no "version", or a smaller one): no name this version makes is theirs."""
    for path in [*folder.glob(".tmp-*.npy"), *folder.glob(".new-*.npy")]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone already: another run swept it
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if path.name.startswith(".tmp-") or time.time() - os.fstat(fd).st_mtime > 60:  # .new-: not locked yet
                path.unlink(missing_ok=True)
        except OSError:  # locked: a live run's
            pass
        finally:
            os.close(fd)
    for meta in folder.glob("*.json"):  # splits decoded by an earlier version: their names are never asked for again
        try:
            with open(meta, "rb") as f:
                version = re.match(rb'\{\s*"version": (\d+)', f.read(64))
        except OSError:  # gone already: another run swept it
            continue
        if version is None or int(version.group(1)) < CACHE_VERSION:
            meta.unlink(missing_ok=True)  # first: an array without its metadata is never taken as decoded
            meta.with_suffix(".npy").unlink(missing_ok=True)


def _decode_all(split: Split, prep: Preprocessing, array_path: Path, meta_path: Path, workers: int) -> None:
    bands = 1 if looks_grey(_sample(split)) else 3
    lock, tmp_name = _locked_temporary(array_path.parent)
    try:
        try:
            ok, digests = _decode_into(tmp_name, split.files, prep, bands, workers)
        except Colour as e:  # a colour file the sample did not show: the grey rows cannot hold it
            say(f"'{e.path}' is in colour and the files sampled were grey: decoding this data set again, in three bands")
            ok, digests = _decode_into(tmp_name, split.files, prep, 3, workers)
        fingerprint = _fingerprint(digests, split.labels, ok)
        os.replace(tmp_name, array_path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        os.close(lock)
    write_json(meta_path, {"version": CACHE_VERSION, "ok": ok.tolist(), "fingerprint": fingerprint})  # last: the
    # array is complete once this exists


def _sample(split: Split) -> list[str]:
    """The files a data set's bands are judged by: the first of each class and 16 spread over the whole."""
    n = len(split.files)
    firsts = np.unique(np.asarray(split.labels), return_index=True)[1].tolist()
    return [split.files[i] for i in sorted({*firsts, *np.linspace(0, n - 1, min(n, 16), dtype=int).tolist()})]


def _decode_into(tmp_name: str, files: Sequence[str], prep: Preprocessing, bands: int,
                 workers: int) -> tuple[np.ndarray, bytearray]:
    """Decode every file into the (locked, temporary) array file `tmp_name`, made anew: (ok flags, SHA-256s)."""
    n, size = len(files), prep.resize_size
    folder = Path(tmp_name).parent
    os.truncate(tmp_name, 0)  # a first try's grey rows are of no use to the second, in colour
    check_room(folder, n * size * size * bands + 4096)  # the cache grows by this: images x side² x bands bytes
    header = np.lib.format.open_memmap(tmp_name, mode="w+", dtype=np.uint8, shape=(n, size, size, bands))
    start, row = header.offset, size * size * bands
    del header  # the .npy header is written; the rows go in with pwrite
    _reserve(tmp_name, os.path.getsize(tmp_name), folder)
    ok = np.zeros(n, dtype=bool)
    digests = bytearray(DIGEST * n)  # 32 bytes an image: as hex strings, 60,000 took 15 MB
    fd = os.open(tmp_name, os.O_WRONLY)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as syncer:
            synced, unsynced = None, 0

            def done(first: int, their_digests: bytes, their_ok: bytes) -> None:
                """Note a decoded block; each DECODE_CHUNK images written go to disk in the background while the
                next decode (fsync at the end alone took 2.5 s of 30 for 60,000 images at 64 px here)."""
                nonlocal synced, unsynced
                digests[DIGEST * first:DIGEST * first + len(their_digests)] = their_digests
                ok[first:first + len(their_ok)] = np.frombuffer(their_ok, dtype=bool)
                unsynced += len(their_ok)
                if unsynced >= DECODE_CHUNK and (synced is None or synced.done()):
                    synced, unsynced = syncer.submit(os.fdatasync, fd), 0

            helpers = _helpers(n, workers, tmp_name, start, size, prep.interpolation, bands)
            if helpers is not None:
                with helpers:
                    helpers.decode(_blocks(files, 0, n), done)
            else:
                _decode_here(files, Rows(fd, start, size, prep.interpolation, bands), done, workers)
            if synced is not None:
                synced.result()
        os.fsync(fd)  # the array is on disk before its metadata says it is complete
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # a file system that could not reserve the blocks up front
            raise _no_room(folder, n * row, shutil.disk_usage(folder).free) from None
        raise
    finally:
        os.close(fd)
    return ok, digests


def _blocks(files: Sequence[str], first: int, last: int) -> Iterator[tuple[int, Sequence[str]]]:
    """Images first..last-1 as (first, files) blocks of DECODE_BLOCK, made as they are taken (never all at once)."""
    return ((i, files[i:min(last, i + DECODE_BLOCK)]) for i in range(first, last, DECODE_BLOCK))


def _helpers(n: int, workers: int, array: str, start: int, size: int, interpolation: str, bands: int) -> Decoders | None:
    """Decoding processes for a large data set on more than one CPU (see job.decode: 1.4x one thread at 224 px and
    1.7x at 64 px for 60,000 images here, where two threads lose to one); None where the set is small (their start, ~0.2 s, would not pay)
    or they cannot be started (no interpreter to run; or one says it cannot work, its imports failing in a new
    interpreter: one line says so): the images are then decoded in this process."""
    if workers < 2 or n < 4 * PROBE_IMAGES:
        return None
    try:  # at least HELPER_IMAGES each: 64 processes for 2,048 images would spend more starting than decoding
        return Decoders(min(workers, max(2, n // HELPER_IMAGES)), array, start, size, interpolation, bands)
    except Unstarted as e:
        say(f"decoding processes could not start ({e}): decoding in this process")
        return None
    except OSError:
        return None


def _decode_here(files: Sequence[str], rows: Rows, done: Callable[[int, bytes, bytes], None], workers: int) -> None:
    """Decode in this process: in one thread, or in `workers` threads (PIL releases the GIL while it decodes and
    resizes), whichever a probe finds faster: for small images the GIL changing hands costs more than it frees (60,000
    Fashion-MNIST images at 64 px: ~5,000 img/s in one thread and ~2,500 in two here; at 224 px 1,100 against
    1,400-1,700). The first PROBE_IMAGES are decoded in one thread, the next as many in all, the rest the faster way,
    a DECODE_CHUNK at a time so that the work of a large data set is never all queued at once."""
    n = len(files)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:

        def decode(first: int, last: int, threads: int) -> float:
            """Decode images first..last-1, DECODE_BLOCK at a time to a thread; their number a second."""
            began = time.perf_counter()
            blocks = list(_blocks(files, first, last))
            for block, result in zip(blocks, (map if threads == 1 else pool.map)(lambda b: rows.into_rows(*b), blocks)):
                done(block[0], *result)
            return (last - first) / max(time.perf_counter() - began, 1e-9)

        finished, threads = 0, workers
        if workers > 1 and n >= 4 * PROBE_IMAGES:
            decode(0, DECODE_BLOCK, 1)  # not timed: the first images in a process warm PIL up
            alone = decode(DECODE_BLOCK, DECODE_BLOCK + PROBE_IMAGES, 1)
            finished = DECODE_BLOCK + 2 * PROBE_IMAGES
            threads = 1 if alone > decode(DECODE_BLOCK + PROBE_IMAGES, finished, workers) else workers
        for first in range(finished, n, DECODE_CHUNK):
            decode(first, min(n, first + DECODE_CHUNK), threads)


def _fingerprint(digests: bytearray, labels: Sequence[int], ok: np.ndarray) -> str:
    """SHA-256 over [[sha256 hex, label], ...] of the good files, as JSON text hashed as it is made (the same bytes as
    one json.dumps of the list, so a fingerprint stays what it was)."""
    h = hashlib.sha256(b"[")
    for n, i in enumerate(np.flatnonzero(ok)):
        h.update(f'{", " if n else ""}["{digests[DIGEST * i:DIGEST * (i + 1)].hex()}", {int(labels[i])}]'.encode())
    h.update(b"]")
    return h.hexdigest()


def check_bad(bad: Sequence[str], skip: bool) -> int:
    """Fail listing unreadable files, or (with --skip-bad-images) return how many will be skipped."""
    if bad and not skip:
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise BadInput(f"{len(bad)} unreadable image(s): {listed}: fix or remove them, or pass --skip-bad-images")
    return len(bad)


class Batches:
    """Batches of (uint8 NCHW images in channels_last memory, C = 1 for a grey split, int64 labels) from a prepared
    split (`normalise` makes them float RGB on the device).

    Shuffling and augmentation draw from a generator seeded by (seed, epoch), so an epoch is the same batches
    whether the run was resumed or not. The next batch is gathered in a background thread while the model works.
    """

    def __init__(self, data: Prepared, prep: Preprocessing, batch_size: int, train: bool, augment: bool, seed: int,
                 pin_memory: bool = False):
        self.data, self.prep, self.batch_size = data, prep, batch_size
        self.train, self.augment, self.seed, self.pin_memory = train, augment, seed, pin_memory
        self.index = np.flatnonzero(data.ok)  # unreadable files are skipped (check_bad ran first)
        self.epoch = 0

    def __len__(self) -> int:
        n = -(-len(self.index) // self.batch_size)
        return n - 1 if self.train and n > 1 and len(self.index) % self.batch_size == 1 else n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.index) if self.train else self.index
        chunks = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.train and len(chunks) > 1 and len(chunks[-1]) == 1:
            # a last training batch of one image would fail batch norm ("more than 1 value per channel"): it joins
            # the batch before it
            chunks[-2:] = [np.concatenate(chunks[-2:])]
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._gather, chunks[0], rng) if chunks else None
            for k in range(len(chunks)):
                batch = pending.result()
                if k + 1 < len(chunks):
                    pending = pool.submit(self._gather, chunks[k + 1], rng)
                yield batch

    def _gather(self, idx: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.sort(idx)  # sorted reads are sequential on a memory map; the batch's order does not matter
        rows, labels = self.data.images[idx], self.data.labels[idx]
        s, r = self.prep.image_size, self.prep.resize_size
        if self.train and self.augment:
            tops, lefts = rng.integers(0, r - s + 1, size=(2, len(idx)))
            flips = rng.random(len(idx)) < 0.5
            out = np.empty((len(idx), s, s, rows.shape[-1]), dtype=np.uint8)
            for j in range(len(idx)):
                crop = rows[j, tops[j] : tops[j] + s, lefts[j] : lefts[j] + s]
                out[j] = crop[:, ::-1] if flips[j] else crop
        else:
            off = (r - s) // 2
            out = np.ascontiguousarray(rows[:, off : off + s, off : off + s])
        x = torch.from_numpy(out).permute(0, 3, 1, 2)  # NHWC storage = NCHW in channels_last memory format
        y = torch.from_numpy(labels)
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y


def normalise(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 NCHW on the device (1 channel for grey, 3) -> float RGB, normalised with the weights' mean and std.
    Grey becomes RGB here, by broadcasting, into channels_last memory (the layout the model runs in)."""
    mean = torch.tensor(prep.mean, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=x.device).view(1, 3, 1, 1) * 255
    if x.shape[1] == 1:
        out = torch.empty((x.shape[0], 3, *x.shape[2:]), device=x.device, memory_format=torch.channels_last)
        return torch.sub(x.float(), mean, out=out).div_(std)
    return (x.float() - mean) / std
