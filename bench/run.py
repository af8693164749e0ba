"""One command that measures job against its references on this machine and writes bench/results.json and
bench/results.md (the table in the README's Performance section).

    .venv/bin/python -m bench            # the full benchmark: about 25 minutes on 2 CPU cores
    .venv/bin/python -m bench --smoke    # every code path on tiny settings, one repeat (CI): its figures mean nothing

Every figure is the median of --repeats runs (3 by default); every comparison is a ratio of two figures measured
in this same run, so the machine's speed cancels out. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from job.config import TrainConfig

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Plan:
    repeats: int
    loop_image_size: int
    loop_per_class: int  # images per class in each measured pass (x 10 classes)
    loop_compile: bool
    search: tuple[str, ...]  # job tune flags shared by the TPE+ASHA run and the random baseline
    trial: tuple[str, ...]  # the fixed trial run through job train and job tune
    startups: tuple[str, ...]  # job tune flags for the per-trial start-up run (one trial at a time)
    sync_objects: int = 10_000  # objects in the data set synced from S3
    search_seeds: int = 5  # seeds of the search section (TPE + ASHA against random, one pair each)
    scale_sizes: tuple[int, ...] = (64, 224)  # image sizes of the scale section
    scale_per_class: tuple[int, int, int] = (6000, 1000, 300)  # train, test and small-set images per class (the small
    # set above data.PROBE_IMAGES * 4, so that it is decoded by processes too: its memory compares like with like)


def _fixed(lr: float, step_size: int, gamma: float) -> tuple[str, ...]:
    return ("--lr-range", f"{lr},{lr}", "--step-size-range", f"{step_size},{step_size}", "--gamma-range", f"{gamma},{gamma}")


# One point of the search space: job train's defaults, so that one trial of `job tune` trains exactly as `job train`.
_TRAIN = TrainConfig()
FIXED = _fixed(_TRAIN.lr, _TRAIN.step_size, _TRAIN.gamma)
ONE_EPOCH = ("--epochs", "1", *_fixed(_TRAIN.lr, 1, _TRAIN.gamma))  # one epoch: step_size at most epochs
FULL = Plan(
    repeats=3, loop_image_size=96, loop_per_class=32, loop_compile=True,
    # the samplers alone: no training settings run first (they would give both searches the same known-good trial)
    search=("--epochs", "8", "--num-samples", "8", "--image-size", "32", "--set", "enqueue_default=false",
            "--set", "builtin_train_per_class=40", "--set", "builtin_val_per_class=30"),
    trial=("--epochs", "8", "--image-size", "96"),  # about a minute on 2 cores
    startups=(*ONE_EPOCH, "--num-samples", "4", "--max-concurrent", "1", "--set", "builtin_train_per_class=10",
              "--set", "builtin_val_per_class=10"),
)
SMOKE = Plan(
    sync_objects=200, search_seeds=1, scale_sizes=(32,), scale_per_class=(12, 6, 4), repeats=1, loop_image_size=32, loop_per_class=2, loop_compile=False,
    search=("--epochs", "2", "--num-samples", "2", "--image-size", "32", "--set", "enqueue_default=false",
            "--set", "builtin_train_per_class=4", "--set", "builtin_val_per_class=2"),
    trial=("--epochs", "2", "--image-size", "32", "--set", "builtin_train_per_class=4", "--set", "builtin_val_per_class=2"),
    startups=(*ONE_EPOCH, "--num-samples", "3", "--max-concurrent", "1", "--image-size", "32",
              "--set", "builtin_train_per_class=2", "--set", "builtin_val_per_class=2"),
)


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def median(values) -> float:
    return statistics.median(values)


class Table:
    """The rows of the results: each a figure of job, its reference and their ratio."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, section: str, measure: str, job: float, reference: str, ref: float | None, unit: str,
            target: str = "", met: bool | None = None, ratio: float | None = None) -> None:
        if ratio is None and ref:
            ratio = job / ref
        self.rows.append({"section": section, "measure": measure, "job": job, "reference": reference, "ref": ref,
                          "unit": unit, "ratio": ratio, "target": target, "met": met})
        say(f"{section}: {measure}: {job:.4g} {unit}" + (f" vs {ref:.4g} ({reference}): {ratio:.2f}x" if ratio else ""))


# ---- sections ------------------------------------------------------------------------------------------------------

def bench_loop(plan: Plan, cache: Path, table: Table, raw: dict) -> None:
    from bench import loop
    from job import cpus

    cpus.for_compute()  # as every job command sets up its process: the bound runs under the same settings
    case = loop.prepare(cache, plan.loop_image_size, plan.loop_per_class, batch_size=32)
    variants = {
        "job": loop.job_loop,
        "tutorial": loop.tutorial_loop,
        "dataloader": loop.dataloader_loop,
        "bound": lambda c: loop.bound(c, "fp32"),
        "bound_cl": lambda c: loop.bound(c, "channels_last"),
        "bound_cl_bf16": lambda c: loop.bound(c, "channels_last+bf16"),
    }
    if plan.loop_compile:
        variants["bound_cl_compile"] = lambda c: loop.bound(c, "channels_last+compile")
    runs = {k: [] for k in variants}
    for name, fn in variants.items():  # a warm-up pass each, not counted
        say(f"loop: warm-up {name}")
        fn(case)
    for r in range(plan.repeats):
        for name, fn in variants.items():  # interleaved, so a slow moment of the machine hits every variant
            runs[name].append(fn(case))
        say(f"loop: repeat {r + 1}/{plan.repeats} done")
    raw["loop"] = runs
    train = {k: median(v[0] for v in vs) for k, vs in runs.items()}
    val = {k: median(v[1] for v in vs) for k, vs in runs.items()}
    s = "loop"
    table.add(s, "job train loop", train["job"], "model-only bound, channels_last (job's own layout)", train["bound_cl"],
              "img/s", ">= 0.9x", train["job"] / train["bound_cl"] >= 0.9)
    table.add(s, "job train loop", train["job"], "model-only bound, fp32 NCHW", train["bound"], "img/s")
    table.add(s, "tutorial train_model (bs 4, 4 workers)", train["tutorial"], "model-only bound, fp32 NCHW", train["bound"], "img/s")
    table.add(s, "DataLoader loop (bs 32, 2 workers)", train["dataloader"], "model-only bound, fp32 NCHW", train["bound"], "img/s")
    table.add(s, "job train loop", train["job"], "tutorial train_model", train["tutorial"], "img/s")
    table.add(s, "job eval loop", val["job"], "model-only bound, channels_last", val["bound_cl"], "img/s", ">= 0.9x",
              val["job"] / val["bound_cl"] >= 0.9)
    table.add(s, "job eval loop", val["job"], "tutorial train_model (val phase)", val["tutorial"], "img/s")
    for key, label in (("bound_cl", "channels_last"), ("bound_cl_bf16", "channels_last + bf16 autocast"),
                       ("bound_cl_compile", "channels_last + torch.compile")):
        if key in train:
            table.add(s, f"bound, {label} (train)", train[key], "model-only bound, fp32 NCHW", train["bound"], "img/s")
            table.add(s, f"bound, {label} (eval)", val[key], "model-only bound, fp32 NCHW (eval)", val["bound"], "img/s")


def bench_search(plan: Plan, table: Table, raw: dict) -> None:
    from bench import search

    tuned, random = [], []
    for r in range(plan.search_seeds):
        seed = ("--seed", str(r))
        tuned.append(search.job("tune", *plan.search, *seed))
        say(f"search: TPE + ASHA, seed {r}: {tuned[-1].seconds:.0f}s, {search.trial_epochs(tuned[-1])} trial-epochs")
        random.append(search.job("tune", *plan.search, *seed, "--set", "sampler=random", "--set", "early_stopping=none"))
        say(f"search: random, no early stopping, seed {r}: {random[-1].seconds:.0f}s, {search.trial_epochs(random[-1])} trial-epochs")
    summary = lambda runs: {"seconds": [x.seconds for x in runs], "trial_epochs": [search.trial_epochs(x) for x in runs],  # noqa: E731
                            "best_val_acc": [x.result["best"]["val_acc"] for x in runs],
                            "packing": [search.packing(x) for x in runs]}
    raw["search"] = {"tpe_asha": summary(tuned), "random": summary(random)}
    t, b = raw["search"]["tpe_asha"], raw["search"]["random"]
    s, ref = "search", "random search, no early stopping"
    seeds = len(tuned)
    table.add(s, f"trial-epochs (median of {seeds} seeds)", median(t["trial_epochs"]), ref, median(b["trial_epochs"]),
              "epochs", "<= 0.5x", median(t["trial_epochs"]) <= 0.5 * median(b["trial_epochs"]))
    table.add(s, "wall time", median(t["seconds"]), ref, median(b["seconds"]), "s")
    noise = search_noise(plan, b["best_val_acc"])
    same = [x >= y - noise for x, y in zip(t["best_val_acc"], b["best_val_acc"])]
    table.add(s, f"best val_acc (per seed: {', '.join(f'{x:.3f}/{y:.3f}' for x, y in zip(t['best_val_acc'], b['best_val_acc']))})",
              median(t["best_val_acc"]), ref, median(b["best_val_acc"]), "acc",
              f"same within noise (±{noise:.3f}) in >= {math.ceil(0.8 * seeds)} of {seeds} seeds ({sum(same)} now)",
              sum(same) >= math.ceil(0.8 * seeds))
    for name, runs in (("TPE + ASHA", t), ("random", b)):
        p = {k: median(x[k] for x in runs["packing"]) for k in ("packing", "startup_share", "tail_share")}
        table.add(s, f"packing, {name}: wall / (trial-epoch seconds / {runs['packing'][0]['concurrent']} at a time); "
                  f"start-up {p['startup_share']:.0%}, tail {p['tail_share']:.0%} of the wall time",
                  p["packing"], "perfect packing", 1.0, "x")
    for x in tuned + random:
        search.cleanup(x)


# The extended space of the space section: today's lr plus the optimizer, label smoothing and weight decay.
EXTENDED = ("--space", "lr=loguniform:1e-4,1e-1", "--space", "optimizer=choice:sgd,adamw",
            "--space", "label_smoothing=uniform:0,0.2", "--space", "weight_decay=loguniform:1e-6,1e-2")


def bench_space(plan: Plan, table: Table, raw: dict) -> None:
    """A search over the extended space against today's lr/step_size/gamma search, same budget and seeds."""
    from bench import search

    default, extended = [], []
    for r in range(plan.repeats):
        seed = ("--seed", str(r))
        default.append(search.job("tune", *plan.search, *seed))
        extended.append(search.job("tune", *plan.search, *seed, *EXTENDED))
        say(f"space: seed {r}: lr/step_size/gamma {default[-1].result['best']['val_acc']:.3f}, "
            f"extended {extended[-1].result['best']['val_acc']:.3f}")
    best = lambda runs: [x.result["best"]["val_acc"] for x in runs]  # noqa: E731
    raw["space"] = {"default": best(default), "extended": best(extended),
                    "extended_params": [x.result["trials"] and next(t for t in x.result["trials"] if t["trial_id"] ==
                                        x.result["best_trial"]) for x in extended]}
    table.add("space", f"best val_acc, lr+optimizer+label_smoothing+weight_decay ({', '.join(f'{v:.3f}' for v in best(extended))})",
              median(best(extended)), f"lr+step_size+gamma ({', '.join(f'{v:.3f}' for v in best(default))})",
              median(best(default)), "acc")
    for x in default + extended:
        search.cleanup(x)


def search_noise(plan: Plan, baseline: list[float]) -> float:
    """What "the same best val_acc" allows: one standard error of an accuracy measured on the search's validation
    images, sqrt(p (1 - p) / n), or the baseline's own spread over seeds, whichever is larger."""
    per_class = int(next(a.split("=")[1] for a in plan.search if a.startswith("builtin_val_per_class=")))
    p = median(baseline)
    return max(math.sqrt(p * (1 - p) / (10 * per_class)), max(baseline) - min(baseline))


def bench_orchestration(plan: Plan, table: Table, raw: dict) -> Path:
    """Returns a finished `job train` run folder (for the storage benchmark)."""
    from bench import search

    trains, tunes = [], []
    for r in range(plan.repeats):
        trains.append(search.job("train", *plan.trial))
        tunes.append(search.job("tune", *plan.trial, "--num-samples", "1", *FIXED))
        say(f"orchestration: one trial: train {trains[-1].seconds:.1f}s, tune {tunes[-1].seconds:.1f}s")
    startups = []
    for r in range(plan.repeats):
        run = search.job("tune", *plan.startups)
        startups.append(search.trial_startups(run))
        search.cleanup(run)
    helps = []
    for _ in range(max(3, plan.repeats)):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "job", "--help"], check=True, capture_output=True)
        helps.append(time.perf_counter() - start)
    raw["orchestration"] = {"train_s": [x.seconds for x in trains], "tune_s": [x.seconds for x in tunes],
                            "train_first_epoch_s": [search.first_epoch_s(x) for x in trains],
                            "tune_first_epoch_s": [search.first_epoch_s(x) for x in tunes],
                            "trial_startup_s": startups, "help_s": helps}
    o, s = raw["orchestration"], "orchestration"
    trial_s = median(o["train_s"])
    table.add(s, f"one fixed trial via job tune (trial {trial_s:.0f} s)", median(o["tune_s"]), "the same via job train",
              trial_s, "s", "<= 1.05x", median(o["tune_s"]) <= 1.05 * trial_s)
    train_first = median(o["train_first_epoch_s"])
    table.add(s, "start to first epoch, job tune", median(o["tune_first_epoch_s"]), "job train", train_first, "s",
              "<= 1.3x", median(o["tune_first_epoch_s"]) <= 1.3 * train_first)
    per_trial = list(zip(*startups))  # position k: the (k+2)-th trial's start-up, in every repeat
    if per_trial:
        first, last = median(per_trial[0]), median(per_trial[-1])
        table.add(s, f"trial start-up cost, trial {len(per_trial) + 1}", last, "trial 2", first, "s")
    table.add(s, "job --help", median(helps), "", None, "s", "< 1 s", median(helps) < 1)
    keep = trains[0].folder / "out"
    for x in trains[1:] + tunes:
        search.cleanup(x)
    return keep


def small_run() -> Path:
    """A finished `job train` run folder of one short epoch, for the storage section alone: its files are as large as
    any run's of the same model (the weights and the optimiser's state do not grow with images or epochs)."""
    from bench import search

    return search.job("train", "--epochs", "1", "--image-size", "32", "--set", "builtin_train_per_class=4",
                      "--set", "builtin_val_per_class=2").folder / "out"


def bench_storage(plan: Plan, run_folder: Path, table: Table, raw: dict) -> None:
    from bench import storage
    from tests.s3server import s3_server

    folder = Path(tempfile.mkdtemp(prefix="job-bench-weed-"))
    try:
        with s3_server(folder) as server:
            os.environ.update(server.env)  # job's Store reads the standard variables, as a user's shell would set them
            runs = [storage.measure(server, run_folder) for _ in range(plan.repeats)]
            syncs = [storage.measure_mirror(server, plan.sync_objects) for _ in range(plan.repeats)]
    finally:  # the server's data: about 1 GB
        shutil.rmtree(folder, ignore_errors=True)
    raw["storage"], raw["sync"] = runs, syncs
    for what in runs[0]:
        job = median(r[what][0] for r in runs)
        ref = median(r[what][1] for r in runs)
        table.add("storage", what, job, "one boto3 upload_file/download_file", ref, "MB/s")
    job, ref = median(s[0] for s in syncs), median(s[1] for s in syncs)
    table.add("storage", f"data set sync from S3 ({plan.sync_objects:,} objects of 2 kB)", job,
              "one object at a time (job before 2026-11-30)", ref, "objects/s", ">= 10x", job >= 10 * ref)


def bench_scale(plan: Plan, table: Table, raw: dict) -> None:
    """Opt-in (--only scale): the whole of Fashion-MNIST, one pass per size (an hour or more on 2 CPU cores)."""
    from bench import scale

    work = Path(tempfile.mkdtemp(prefix="job-bench-scale-"))
    train, test, small = plan.scale_per_class
    try:
        raw["scale"] = [scale.measure(size, work, say, train, test, small, plan.repeats) for size in plan.scale_sizes]
    finally:  # the decoded caches: about 12 GB at 224 px
        shutil.rmtree(work, ignore_errors=True)
    for m in raw["scale"]:
        s, px, n, k = "scale", f"{m['size']} px", f"{train * 10:,} images", f"{small * 10:,}"
        table.add(s, f"prepare {n} at {px} (read, hash, decode, resize, cache)", m["prepare"]["img_s"],
                  "bare PIL decode + resize loop, the fastest of 1 thread, threads, processes", m["pil"]["img_s"], "img/s", ">= 0.9x",
                  m["prepare"]["img_s"] >= 0.9 * m["pil"]["img_s"])
        table.add(s, f"cache on disk, {n} at {px}", m["prepare"]["cache_bytes"] / 1e6,
                  f"images x {m['side']}² x {m['prepare']['bands']} bytes", m["expected_cache_bytes"] / 1e6, "MB")
        table.add(s, f"memory preparing {n} at {px} (besides the memory map)", m["prepare"]["anon_peak_mb"],
                  f"the same for {k} images", m["small_prepare"]["anon_peak_mb"], "MB", "no growth (<= 1.1x)",
                  m["prepare"]["anon_peak_mb"] <= 1.1 * m["small_prepare"]["anon_peak_mb"])
        table.add(s, f"start to first training batch, cached second run, {n} at {px}", m["first_batch"]["since_start_s"],
                  f"the same for {k} images", m["first_batch_small"]["since_start_s"], "s", "seconds, not minutes (< 60 s)",
                  m["first_batch"]["since_start_s"] < 60)
        table.add(s, f"job train loop over {n} at {px}", m["loop_full"]["img_s"], f"the same loop over {k} images",
                  m["loop_small"]["img_s"], "img/s", "no drop (>= 0.9x)", m["loop_full"]["img_s"] >= 0.9 * m["loop_small"]["img_s"])
        for what in ("evaluate", "predict"):
            table.add(s, f"job {what} on {test * 10:,} images at {px} (whole command)", m[f"{what}_img_s"],
                      "model-only eval bound", m["eval_bound_img_s"], "img/s")
        table.add(s, f"materialise {train * 10 + test * 10:,} built-in images (once per machine)", m["materialise_s"],
                  "", None, "s")


# ---- output --------------------------------------------------------------------------------------------------------

def machine() -> dict:
    import optuna
    import ray
    import torch
    import torchvision

    from job import cpus

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": cpus.available(), "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "ray": ray.__version__, "optuna": optuna.__version__, "date": datetime.date.today().isoformat()}


def fmt(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.0f}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Measured {m['date']} on {m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']} GiB"
             + (f", {m['gpu']}" if m["gpu"] else ", no GPU")
             + f"; Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, Ray {m['ray']}, "
             f"Optuna {m['optuna']}. Median of {results['repeats']} repeats"
             + (" (SMOKE RUN: tiny settings, the figures mean nothing)" if results["smoke"] else "") + "."
             + (f" Note: {results['note']}." if results.get("note") else ""), "",
             "| | measure | job | reference | ratio | target |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        ref = f"{fmt(r['ref'])} {r['unit']} ({r['reference']})" if r["ref"] is not None else r["reference"]
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
        target = f"{r['target']} {'✅' if r['met'] else '❌'}" if r["target"] else ""
        lines.append(f"| {r['section']} | {r['measure']} | {fmt(r['job'])} {r['unit']} | {ref} | {ratio} | {target} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny settings, one repeat: checks that every path runs")
    p.add_argument("--repeats", type=int, help="repeats per figure (default 3; 1 with --smoke)")
    p.add_argument("--out", type=Path, default=HERE, help="folder for results.json and results.md (default bench/)")
    p.add_argument("--only", nargs="+", choices=["loop", "search", "space", "orchestration", "storage", "scale"],
                   help="some sections only (scale runs only when named: an hour or more on 2 CPU cores)")
    p.add_argument("--scale-sizes", type=int, nargs="+", help="image sizes of the scale section (default 64 224)")
    args = p.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.repeats:
        plan = dataclasses.replace(plan, repeats=args.repeats)
    if args.scale_sizes:
        plan = dataclasses.replace(plan, scale_sizes=tuple(args.scale_sizes))
    cache = Path(os.environ.setdefault("JOB_CACHE", str(Path(tempfile.gettempdir()) / "job-bench-cache")))
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.filterwarnings("ignore", message=".*worker processes in total")  # the tutorial's 4 workers on 2 CPUs: known
    sections = set(args.only or ["loop", "search", "space", "orchestration", "storage"])
    table, raw, started = Table(), {}, time.perf_counter()
    if "loop" in sections:
        bench_loop(plan, cache, table, raw)
    if "search" in sections:
        bench_search(plan, table, raw)
    if "space" in sections:
        bench_space(plan, table, raw)
    if sections & {"orchestration", "storage"}:
        run_folder = bench_orchestration(plan, table, raw) if "orchestration" in sections else small_run()
        if "storage" in sections:
            bench_storage(plan, run_folder, table, raw)
        shutil.rmtree(run_folder.parent, ignore_errors=True)  # the kept `job train` run's own folder
    if "scale" in sections:
        bench_scale(plan, table, raw)
    results = {"machine": machine(), "smoke": args.smoke, "repeats": plan.repeats, "plan": dataclasses.asdict(plan),
               "seconds": round(time.perf_counter() - started, 1), "rows": table.rows, "raw": raw}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    say(f"done in {results['seconds']:.0f}s: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 0
