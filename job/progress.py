"""What a person sees while a search runs and when it ends: one line per reported epoch and per ended trial (instead
of Ray's tables), then a summary. Knows nothing of Ray: the search feeds it plain trial ids, settings and metrics."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable

from job.errors import one_line


def say(line: str) -> None:
    """Progress and warnings go to stderr, so stdout stays the result (a table, or --json), a line each."""
    print(one_line(line), file=sys.stderr, flush=True)


def describe(params: dict) -> str:
    """`lr 1.2e-03 step_size 2 gamma 0.31 optimizer adamw`: a trial's sampled settings, short."""
    def short(v):
        return f"{v:.2e}" if isinstance(v, float) and (abs(v) < 1e-2 or abs(v) >= 1e4) else (
            f"{v:.3g}" if isinstance(v, float) else str(v))
    return " ".join(f"{k} {short(v)}" for k, v in params.items())


@dataclasses.dataclass
class Counts:
    running: int
    ended: int
    errored: int


class SearchView:
    """The live lines of one search: `[  12s] <trial> <what happened> | 2 running, 3/8 ended, 0 errored | best ...`."""

    def __init__(self, num_samples: int, epochs: int, metric: str, enabled: bool = True,
                 out: Callable[[str], None] = say, mode: str = "max"):
        self.num_samples, self.epochs, self.metric, self.enabled, self.out = num_samples, epochs, metric, enabled, out
        self.mode = mode
        self.started = time.monotonic()
        self.best: tuple[float, str] | None = None
        self.active: set[str] = set()  # started (or continued) by this run and not ended yet

    def _line(self, counts: Counts, text: str) -> None:
        if not self.enabled:
            return
        best = f"best {self.best[0]:.4f} ({self.best[1]})" if self.best else "best -"
        self.out(f"[{time.monotonic() - self.started:5.0f}s] {text} | {counts.running} running, "
                 f"{counts.ended}/{self.num_samples} ended, {counts.errored} errored | {best}")

    def trial_started(self, trial_id: str) -> None:
        self.active.add(trial_id)

    def trial_result(self, trial_id: str, params: dict, epoch: int, metrics: dict, counts: Counts) -> None:
        value = metrics.get(self.metric)
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if value is not None and better:
            self.best = (value, trial_id)
        shown = f"{value:.4f}" if value is not None else "-"
        self._line(counts, f"{trial_id} {describe(params)} epoch {epoch}/{self.epochs} {self.metric} {shown}")

    def trial_ended(self, trial_id: str, epochs_done: int, counts: Counts) -> None:
        self.active.discard(trial_id)
        self._line(counts, f"{trial_id} {'completed' if epochs_done >= self.epochs else f'stopped after epoch {epochs_done}'}")

    def trial_retried(self, trial_id: str, node: str, epoch: int, counts: Counts, reason: str = "",
                      lost: bool = True) -> None:
        """The trial was lost (its node or its worker died) or failed, and is retried from its latest checkpoint."""
        start = f"from its epoch {epoch} checkpoint" if epoch else "from the start (it had no checkpoint yet)"
        self._line(counts, f"{trial_id} {'lost' if lost else 'failed'}" + (f" on node {node}" if node else "")
                   + (f" ({reason})" if reason else "") + f": retried {start}")

    def trial_replaced(self, trial_id: str, counts: Counts, reason: str = "") -> None:
        """Ray ended the trial before its retry could start (tune.ProgressEvents.on_trial_error): a new trial takes
        its settings."""
        self.active.discard(trial_id)
        self._line(counts, f"{trial_id} ended by Ray before its retry" + (f" ({reason})" if reason else "")
                   + ": its settings run again in a new trial")

    def trial_errored(self, trial_id: str, counts: Counts, reason: str = "") -> None:
        self.active.discard(trial_id)
        self._line(counts, f"{trial_id} errored" + (f" ({reason})" if reason else ""))


def status_counts(trials) -> dict[str, int]:
    """How many trials ended each way (completed, stopped early (ASHA), ...), in the order first seen."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return counts


def search_summary(result) -> list[str]:
    """The first lines `job tune` prints when it ends (a `job.Result` of a search)."""
    counts = status_counts(result.trials)
    best = result.best_trial
    lines = [
        f"job tune: done in {result.seconds:.0f}s{' (resumed)' if result.resumed else ''}: "
        + ", ".join(f"{n} {s}" for s, n in counts.items()),
        f"best trial {best.trial_id}: {best.metric} {best.value:.4f} at epoch {best.best_epoch} ({describe(best.params)})",
    ]
    if result.importances:
        lines.append("parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in result.importances.items()))
    return lines
