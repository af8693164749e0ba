"""Training checkpoints on disk: written atomically, read without running code (weights_only=True)."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path

import torch

from job.errors import BadInput
from job.loop import CHECKPOINT_FORMAT

CHECKPOINT_NAME = "checkpoint.pt"


@contextlib.contextmanager
def signals_deferred():
    """Hold Ctrl-C and SIGTERM until the block ends, then stop as usual.

    torch.save cut short by KeyboardInterrupt fails again while closing its zip file, turning a clean stop into a
    traceback. Signal handlers can only be set from the main thread; elsewhere (a Ray worker thread) the block
    runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    old = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if received:
            raise KeyboardInterrupt


def save(state: dict, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: a crash leaves the previous file intact."""
    with signals_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def load(path: Path) -> dict:
    """Read a checkpoint written by `save`; `path` may be the file or the run folder that holds it."""
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise BadInput(f"checkpoint '{path}' does not exist: pass --resume with a run folder or its {CHECKPOINT_NAME}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise BadInput(f"checkpoint '{path}' cannot be read ({type(e).__name__}): it is damaged or not a job checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise BadInput(f"'{path}' is not a job checkpoint ({CHECKPOINT_FORMAT}): pass the {CHECKPOINT_NAME} of a job train run")
    return state
