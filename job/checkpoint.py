"""Training checkpoints on disk: written atomically, read without running code (weights_only=True)."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from job import signals
from job.errors import BadInput
from job.files import missing, write_atomic
from job.loop import CHECKPOINT_FORMAT

CHECKPOINT_NAME = "checkpoint.pt"


def save(state: dict, path: Path) -> None:
    """Atomically (files.write_atomic): a crash or a kill leaves the previous file intact."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with signals.critical():  # a signal mid-write is delivered once the file is complete
        write_atomic(path, buffer.getbuffer())


def load(path: Path) -> dict:
    """Read a checkpoint written by `save`; `path` may be the file or the run folder that holds it."""
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise BadInput(f"checkpoint '{path}' {missing(path)}: pass --resume with a run folder or its {CHECKPOINT_NAME}")
    return _checked(path, path)


def read(data: bytes, where: str) -> dict:
    """A checkpoint written by `save`, from its bytes (as read from storage); `where` names it in errors."""
    return _checked(io.BytesIO(data), where)


def _checked(source, path) -> dict:
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise BadInput(f"checkpoint '{path}' cannot be read ({type(e).__name__}): it is damaged or not a job checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise BadInput(f"'{path}' is not a job checkpoint ({CHECKPOINT_FORMAT}): pass the {CHECKPOINT_NAME} of a job train run")
    wrong = next((key for key, kind in SCHEMA.items() if not isinstance(state.get(key), kind)), None)
    if wrong is not None:
        raise BadInput(f"checkpoint '{path}' is damaged ('{wrong}' is missing or of the wrong type): resume from "
                       "another run folder, or start a new run")
    return state


# What a checkpoint holds (the training state of loop.Fit.checkpoint, and what run.Setup.meta adds), checked on load:
# a checkpoint edited by hand or from another version is named, not crashed on.
SCHEMA = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "epoch": int,
          "best_epoch": int, "best_model": (dict, type(None)), "history": list, "config": dict, "classes": list,
          "preprocessing": dict, "data_fingerprint": str}
