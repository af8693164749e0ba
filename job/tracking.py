"""What a run leaves for the tracking tools users already look at: TensorBoard event files, always (tensorboardX,
which Ray Tune brings), one scalar per epoch metric under the same tags for `job train` and every trial of a search
(`job/val_acc`, `job/lr`, `job/images_per_s`, ...; the step is the epoch), so `tensorboard --logdir runs` puts a
train run and a search's trials on the same charts."""

from __future__ import annotations

import math
from pathlib import Path

from job.config import EPOCH_METRICS

TENSORBOARD_DIR = "tensorboard"  # in a train run's folder; a trial writes into its own folder
TAG = "job/"


def scalars(metrics: dict) -> dict[str, float]:
    """The epoch metrics of a result, as TensorBoard tags: finite numbers only."""
    return {TAG + k: float(metrics[k]) for k in EPOCH_METRICS
            if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])}


class TensorBoard:
    """The event file of one run (or trial) in `folder`."""

    def __init__(self, folder: Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(folder), flush_secs=30)

    def epoch(self, epoch: int, metrics: dict) -> None:
        for tag, value in scalars(metrics).items():
            self.writer.add_scalar(tag, value, global_step=epoch)
        self.writer.flush()  # an epoch takes seconds to minutes: each is on disk when it ends

    def close(self) -> None:
        self.writer.close()
