"""What a person looks at: progress bars, tables, the metric history (JSON, CSV) and plots (PNG)."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from job.errors import one_line
from job.files import write_atomic
from job.metrics import EPOCH_METRICS, Tally


def write_history(output: Path, history: list[dict[str, float]]) -> None:
    _write_table(output, "history", history, ["epoch", *[m for m in EPOCH_METRICS if any(m in h for h in history)]])


def _write_table(output: Path, name: str, rows: list[dict], columns: Sequence[str]) -> None:
    """NAME.json (the rows whole) and NAME.csv (the given columns), each written atomically."""
    write_atomic(output / f"{name}.json", json.dumps(rows, indent=2) + "\n")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(output / f"{name}.csv", text.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_history(path: Path, history: list[dict[str, float]], best_epoch: int) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        ax_loss.plot(epochs, [h[key] for h in history], style, marker="o", label=key)
    for key, style in (("train_acc", "-"), ("val_acc", "--"), ("val_f1_macro", ":")):
        ax_acc.plot(epochs, [h[key] for h in history], style, marker="o", label=key)
    ax_acc.axvline(best_epoch, color="grey", linewidth=0.8, label=f"best epoch ({best_epoch})")
    from matplotlib.ticker import MaxNLocator

    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(path: Path, confusion, classes: Sequence[str]) -> None:
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * n + 2), max(4, 0.6 * n + 1.5)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max((max(row) for row in confusion), default=0)
    for i in range(n):
        for j in range(n):
            v = int(confusion[i][j])
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """A plain text table: numbers right-aligned, floats with 4 decimals, a row a line (a newline in a name is `\\n`)."""
    cells = [[number(v) if isinstance(v, float) else one_line(str(v)) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    right = [all(_numeric(r[i]) for r in cells) for i in range(len(headers))]

    def line(values):
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    return "\n".join([line([str(h) for h in headers]), line(["-" * w for w in widths]), *map(line, cells)])


def number(v: float) -> str:
    """4 decimals, or 3 significant digits where 4 decimals would hide the value (lr 4.5e-11 is not 0.0000)."""
    return f"{v:.4f}" if v == 0 or 1e-3 <= abs(v) < 1e6 else f"{v:.3g}"


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class TqdmBar:
    """A per-phase progress bar with running loss and accuracy, refreshed at most twice a second.

    The running numbers need a host sync, so they are read on a timer rather than every batch.
    """

    def __init__(self, desc: str, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False,
                        file=sys.stderr, dynamic_ncols=True)
        self.last = 0.0

    def update(self, tally: Tally) -> None:
        self.bar.update(1)
        now = time.monotonic()
        if now - self.last > 0.5 or self.bar.n == self.bar.total:
            loss, acc = tally.running()
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", refresh=False)
            self.last = now

    def close(self) -> None:
        self.bar.close()


def write_trials(output: Path, trials: list[dict], params: list[str], metric: str = "val_acc") -> None:
    """trials.json (with each trial's history) and trials.csv (one row per trial, a column per setting of the space,
    and the trial's best value of the search's metric)."""
    _write_table(output, "trials", trials, ["number", "trial_id", *params, "epochs", metric, "best_epoch", "status", "error"])


def plot_trials(path: Path, trials: list[dict], best_id: str, metric: str = "val_acc") -> None:
    """The search's metric per epoch for every trial: trials stopped early end early, errored ones are dotted."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5))
    for t in trials:
        if not t["history"]:
            continue
        epochs = [h["epoch"] for h in t["history"]]
        accs = [h[metric] for h in t["history"]]
        best = t["trial_id"] == best_id
        style = ":" if t["status"] == "errored" else "-"
        label = f"{t['trial_id']} ({t['status']})" + (" BEST" if best else "")
        ax.plot(epochs, accs, style, marker="o", linewidth=2.5 if best else 1, alpha=1 if best else 0.7, label=label)
        if t["status"].startswith("stopped"):
            ax.plot(epochs[-1], accs[-1], "x", color="black", markersize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (x: stopped early)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
