"""Decoding image files into rows of the prepared data set's array file: one image (`load_image`), a block of files
(`into_rows`), and `Decoders`, helper processes that decode blocks straight into the array file.

Processes, not threads, for large data sets: PIL releases the GIL while it decodes, but each image is a few tens of
microseconds of C between Python steps, so threads wait for each other (60,000 Fashion-MNIST images at 64 px: ~5,000
img/s in one thread, ~2,500 in two, on 2 cores) while processes share nothing. The helpers are started as `python -c`
running `serve` below, not by multiprocessing: its forkserver and spawn start methods import the caller's main
module again in each process (a user's script without an `if __name__ == "__main__":` guard then fails), and fork
is unsafe beside the threads of a search's driver. This module imports neither torch nor Ray (a helper starts in
~0.2 s): it is numpy, PIL and the standard library only.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import signal
import subprocess
import sys
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from job.errors import JobError

BAD_IMAGE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # PIL's ways of saying "bad file"
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
IN_FLIGHT = 2  # blocks handed to each helper ahead: it never waits for the next while its last result travels
DIGEST = 32  # bytes of one SHA-256
WIDE_GREY = ("I;16", "I;16B", "I;16L", "I")  # 16 bits a pixel (a 16-bit grey PNG): kept as its high 8 bits
GREY = ("L", *WIDE_GREY)
LONGEST = 4096  # the long side, in pixels of the resized image, up to which an image is resized whole (_resized)


class Unstarted(OSError):
    """A decoding process could not start (its imports failed there, or it ended before its first answer): the
    caller decodes in its own process instead, as when no process can be started at all."""


class Colour(Exception):
    """A file in colour in a data set being decoded as grey (one band)."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def looks_grey(paths: Sequence[str]) -> bool:
    """Whether these files (a sample of a data set) are all grey, from their headers alone (PIL reads no pixels
    until asked): grey data sets are kept in one band, a third of the bytes. A file that cannot be opened says
    nothing here (the decoding reports it); none readable is not grey."""
    seen = False
    for path in paths:
        try:
            with Image.open(path) as img:
                if img.mode not in GREY:
                    return False
                seen = True
        except BAD_IMAGE:
            continue
    return seen


def load_image(data: bytes, size: int, interpolation: str) -> np.ndarray:
    """Decode, convert to RGB (alpha over white), resize the short side to `size`, centre-crop: (size, size, 3) uint8."""
    img = _resized(data, size, interpolation)
    return np.asarray(img.convert("RGB") if img.mode == "L" else img)


def _resized(data: bytes, size: int, interpolation: str) -> Image.Image:
    """`load_image`'s image before its last step: grey ones ("L") are still one band, any other is RGB."""
    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > Image.MAX_IMAGE_PIXELS:  # before decoding: a decompression bomb never reaches memory
            raise ValueError(f"{img.width}x{img.height} pixels is more than {Image.MAX_IMAGE_PIXELS} (a decompression bomb?)")
        img.load()  # decode fully now: a truncated file fails here, not mid-training
        if img.mode in WIDE_GREY:  # PIL's own conversion to 8 bits clips at 255: a 16-bit image came out white
            img = Image.fromarray((np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8), "L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        elif img.mode != "L":  # grey stays one band until the end: the same pixels, a third of the resizing
            img = img.convert("RGB")  # (at 224 px, 420 us an image against 630 us here)
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (new_w - size) // 2, (new_h - size) // 2
        if max(new_w, new_h) <= LONGEST:  # the short side resized to `size`, then the centre square cropped
            img = img.resize((new_w, new_h), INTERPOLATIONS[interpolation])
            return img.crop((left, top, left + size, top + size)) if (new_w, new_h) != (size, size) else img
        # A long strip: only the centre square's region of the source is resized (PIL's box: the same geometry, though
        # not always the same last bit, so images of common shapes keep the way above and the pixels caches and
        # trained models were made with). Made whole, a 1 x 1,000,000 px strip of 2 kB would be 224 x 224,000,000 px.
        sx, sy = w / new_w, h / new_h  # source pixels per resized pixel, as the whole resize would have them
        return img.resize((size, size), INTERPOLATIONS[interpolation],
                          box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))


class Rows:
    """Where decoded images go: row i of the array file open as `fd` starts at byte start + i * (size * size * bands),
    3 bands (RGB) or 1 (grey: a grey image's RGB row is its one band three times, so one band loses nothing)."""

    def __init__(self, fd: int, start: int, size: int, interpolation: str, bands: int):
        self.fd, self.start, self.size, self.interpolation, self.bands = fd, start, size, interpolation, bands
        self.row = size * size * bands

    def into_rows(self, first: int, files: Sequence[str]) -> tuple[bytes, bytes]:
        """Read, hash, decode and write files[k] into row first + k, each in one `pwrite` (15 us an image against 19-27
        us for page faults on a memory map, measured here). Returns (each file's SHA-256, each file's 1 if it decoded,
        else 0); an unreadable or undecodable file is a bad image, a failing write an OSError (ENOSPC: disk full), a
        file in colour in one band `Colour`."""
        digests, ok = bytearray(DIGEST * len(files)), bytearray(len(files))
        for k, path in enumerate(files):
            try:
                with open(path, "rb") as f:
                    data = f.read()
                digests[DIGEST * k:DIGEST * (k + 1)] = hashlib.sha256(data).digest()
                img = _resized(data, self.size, self.interpolation)
            except BAD_IMAGE:  # a file that cannot be read (gone, no permission) is a bad image too
                continue
            if self.bands == 1 and img.mode != "L":
                raise Colour(path)
            pixels = np.asarray(img.convert("RGB") if self.bands == 3 and img.mode == "L" else img)
            left, at = memoryview(pixels).cast("B"), self.start + (first + k) * self.row
            while left:  # a nearly full disk takes part of a write; the next part then fails with ENOSPC
                written = os.pwrite(self.fd, left, at)
                left, at = left[written:], at + written
            ok[k] = 1
        return bytes(digests), bytes(ok)


# What a helper runs: SIGINT and SIGTERM ignored (Ctrl-C reaches the whole process group, and a supervisor may signal
# every process of a service: the parent decides, job's way, and ends its helpers by closing their pipes; a killed
# parent's close them too), job's own folder first on the path (the parent may run from a checkout not installed).
# Its first answer says whether it started: ("ready",), or ("unstarted", why) from a helper whose imports fail (a
# package broken for a new interpreter, not for the running one) or that cannot open the array file, in place of a
# traceback: the parent then decodes in its own process.
_BOOT = """\
import signal, sys
[signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)]
sys.path.insert(0, sys.argv[1])
try:
    from job.decode import serve
except Exception as e:
    from multiprocessing.connection import Connection
    try:
        Connection(1, readable=False).send(("unstarted", f"{type(e).__name__}: {str(e).partition(chr(10))[0]}"))
    except OSError:  # the parent went on without the helpers: it heard from another one
        pass
    sys.exit(1)
serve(sys.argv[2], *map(int, sys.argv[3:5]), sys.argv[5], int(sys.argv[6]))
"""


def serve(array: str, start: int, size: int, interpolation: str, bands: int) -> None:
    """A helper's loop: first ("ready",) (or ("unstarted", why), and the end) out, then (first, files) blocks in on
    stdin, ("ok", first, digests, ok), ("oserror", errno, text) or ("colour", path) out on the original stdout, which
    is kept for that alone (anything printed goes to stderr); ends at end of input."""
    tasks, results = Connection(0, writable=False), Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    try:
        try:
            fd = os.open(array, os.O_WRONLY)
        except OSError as e:
            results.send(("unstarted", f"{array}: {e.strerror}"))
            return
        try:
            results.send(("ready",))
            rows = Rows(fd, start, size, interpolation, bands)
            while True:
                try:
                    first, files = tasks.recv()
                except EOFError:
                    return
                try:
                    results.send(("ok", first, *rows.into_rows(first, files)))
                except OSError as e:
                    results.send(("oserror", e.errno, e.strerror))
                except Colour as e:
                    results.send(("colour", e.path))
        finally:
            os.close(fd)
    except (BrokenPipeError, ConnectionResetError):  # the parent is gone (or went on without this one): nobody to tell
        pass


class Decoders:
    """`count` helper processes decoding blocks of files into the array file at `array` (rows in `bands`, as `Rows`
    says), each one's first answer awaited. Raises OSError when any could not be started (no interpreter to run), and
    `Unstarted` when one started but said it could not work: the caller decodes in its own process instead."""

    def __init__(self, count: int, array: str, start: int, size: int, interpolation: str, bands: int):
        assert count >= 1, count
        if not sys.executable:
            raise OSError(errno.ENOENT, "no Python interpreter to start decoding processes with")
        self._procs: list[tuple[subprocess.Popen, Connection, Connection]] = []
        here = str(Path(__file__).resolve().parent.parent)
        argv = [sys.executable, "-c", _BOOT, here, array, str(start), str(size), interpolation, str(bands)]
        try:
            for _ in range(count):
                task_r, task_w = os.pipe()
                result_r, result_w = os.pipe()
                try:
                    proc = subprocess.Popen(argv, stdin=task_r, stdout=result_w, close_fds=True)
                finally:
                    os.close(task_r)
                    os.close(result_w)
                self._procs.append((proc, Connection(task_w, readable=False), Connection(result_r, writable=False)))
            for _, _, results in self._procs:  # they boot side by side: waiting costs the slowest one's start, ~0.2 s
                try:
                    answer = results.recv()
                except (EOFError, ConnectionResetError):
                    answer = ("unstarted", "one ended as it started")
                if answer[0] != "ready":
                    raise Unstarted(answer[1])
        except BaseException:
            self.close()
            raise

    def decode(self, blocks: Iterable[tuple[int, Sequence[str]]], done: Callable[[int, bytes, bytes], None]) -> None:
        """Decode every (first, files) block, IN_FLIGHT to a helper at a time; done(first, digests, ok) as each ends."""
        todo = iter(blocks)
        owner: dict[Connection, tuple[subprocess.Popen, Connection]] = {}
        busy: dict[Connection, list[Sequence[str]]] = {}

        def give(proc: subprocess.Popen, tasks: Connection, results: Connection) -> None:
            block = next(todo, None)
            if block is not None:
                try:
                    tasks.send(block)
                except (BrokenPipeError, ConnectionResetError):
                    raise self._died(proc, block[1]) from None
                busy[results].append(block[1])

        for proc, tasks, results in self._procs:
            owner[results], busy[results] = (proc, tasks), []
            for _ in range(IN_FLIGHT):
                give(proc, tasks, results)
        while any(busy.values()):
            for results in wait([r for r, b in busy.items() if b]):
                proc, tasks = owner[results]
                try:
                    answer = results.recv()
                except (EOFError, ConnectionResetError):
                    raise self._died(proc, busy[results][0]) from None
                busy[results].pop(0)
                if answer[0] == "oserror":
                    raise OSError(answer[1], answer[2])
                if answer[0] == "colour":
                    raise Colour(answer[1])
                done(*answer[1:])
                give(proc, tasks, results)

    @staticmethod
    def _died(proc: subprocess.Popen, files: Sequence[str]) -> JobError:
        code = proc.wait()
        how = f"exit status {code}" if code >= 0 else f"signal {next((s.name for s in signal.Signals if s == -code), -code)}"
        return JobError(f"a process decoding images ended ({how}) on one of {len(files)} files from {files[0]}: check "
                        "those files, the machine's memory (dmesg), or set workers=1 to decode in this process")

    def close(self) -> None:
        """End the helpers: end of input, then a kill for any still running a moment later."""
        for proc, tasks, results in self._procs:
            tasks.close()
            results.close()
        for proc, _, _ in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = []

    def __enter__(self) -> Decoders:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
