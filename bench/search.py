"""Search efficiency and orchestration overhead, measured through the real CLI in subprocesses.

Every `job` run gets its own working folder and prints --json; its stderr is read as it arrives, so the time of
each progress line ('[  12s] <trial> ... epoch 1/5 ...') is known to the millisecond.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCH_LINE = re.compile(r"\[\s*\d+s\] (\S+) lr .* epoch (\d+)/\d+ ")
END_LINE = re.compile(r"\[\s*\d+s\] (\S+) (completed|stopped after)")
TRAIN_EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/")


@dataclasses.dataclass
class Run:
    seconds: float
    result: dict
    lines: list[tuple[float, str]]  # (seconds since start, stderr line)
    folder: Path


def job(*args: str) -> Run:
    """`job ARGS --output out` in a fresh folder (its Ray experiment lands there too), with its progress lines; the
    result is read back from what it wrote: out/run.json, and for a search out/trials.json as "trials"."""
    folder = Path(tempfile.mkdtemp(prefix="job-bench-", dir=os.environ.get("RAY_TMPDIR", "/tmp")))
    cmd = [sys.executable, "-m", "job", *args, "--output", "out"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_TMPDIR": str(folder)})
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in proc.stderr]
    proc.stdout.read()
    proc.wait()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"job {' '.join(args)} failed ({proc.returncode}):\n" + "\n".join(x for _, x in lines[-20:]))
    result = json.loads((folder / "out" / "run.json").read_text())
    if (folder / "out" / "trials.json").is_file():
        result["trials"] = json.loads((folder / "out" / "trials.json").read_text())
    return Run(seconds, result, lines, folder)


def trial_epochs(run: Run) -> int:
    return sum(t["epochs"] for t in run.result["trials"])


def first_epoch_s(run: Run) -> float:
    """Seconds from the start of the command to its first reported epoch (train or tune)."""
    return next(t for t, line in run.lines if EPOCH_LINE.search(line) or TRAIN_EPOCH_LINE.match(line))


def trial_startups(run: Run) -> list[float]:
    """With one trial at a time: for each trial after the first, the seconds from the end of the previous trial to
    its first epoch, less the time that epoch itself took (its epoch_s): what starting a trial costs."""
    history = {t["trial_id"]: t for t in run.result["trials"]}
    firsts, ends = {}, {}
    for t, line in run.lines:
        if (m := EPOCH_LINE.search(line)) and m.group(1) not in firsts:
            firsts[m.group(1)] = t
        if m := END_LINE.search(line):
            ends[m.group(1)] = t
    order = sorted(firsts, key=firsts.get)
    return [firsts[b] - ends[a] - history[b]["history"][0]["epoch_s"] for a, b in zip(order, order[1:]) if a in ends]


AT_A_TIME = re.compile(r"(\d+) at a time")


def packing(run: Run) -> dict:
    """How well a search packed its trials onto the machine: its wall time against the sum of every trial-epoch's
    seconds divided by the trials run at once (1.0 is perfect), with the shares of the wall time before the first
    epoch began (start-up) and after the last one ended (tail: the export, the reports, Ray's stop)."""
    concurrent = next(int(m.group(1)) for _, line in run.lines if (m := AT_A_TIME.search(line)))
    epochs = [h["epoch_s"] for t in run.result["trials"] for h in t["history"]]
    ends = [(t, line) for t, line in run.lines if EPOCH_LINE.search(line)]
    first_trial = EPOCH_LINE.search(ends[0][1]).group(1)
    first_epoch_s = next(t["history"][0]["epoch_s"] for t in run.result["trials"] if t["trial_id"].startswith(first_trial))
    return {"packing": run.seconds / (sum(epochs) / concurrent), "concurrent": concurrent,
            "startup_share": max(0.0, ends[0][0] - first_epoch_s) / run.seconds,
            "tail_share": (run.seconds - ends[-1][0]) / run.seconds}


def cleanup(run: Run) -> None:
    shutil.rmtree(run.folder, ignore_errors=True)
