"""Real scale: the whole built-in Fashion-MNIST (60,000 training and 10,000 test images) through job, at a given
image size, against the plain tools on the same cores.

Each measure runs in its own Python process (`python -m bench.scale CHILD ...`), so its peak memory is its own and
its start-up counts where it should:

- prepare: job's data.prepare (read, hash, decode, convert, resize, write into the memory-mapped cache) of the
  training split against a bare PIL loop (open, convert, resize) over the same files, the fastest of one thread,
  as many threads as job may use, and as many processes;
  the cache's size on disk; each process's peak resident memory, also for a 3,000-image set (growth with the data);
- first batch, cached: from the interpreter's start to the end of the first training batch of a second run;
- train loop: images/s of job's loop over the first batches of the full set against the same loop on the small set
  (3,000 images);
- evaluate / predict: `job evaluate` and `job predict` on the 10,000 test images (wall time of the command) against
  the model-only eval bound at that size.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LOOP_BATCHES = 12  # training batches timed per loop figure (after one warm-up batch)


def _peak_mb() -> float:
    """This process's peak resident memory (MB), pages of its memory maps included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class AnonPeak:
    """The peak anonymous resident memory (MB) of this process and the programs it started (job's decoding
    processes) together: what they hold themselves, not the pages of a file they map (those belong to the page cache
    and are given back under pressure). A child with this process's own command line is a fork that has not run its
    program yet (or a forked pool's worker): its pages are this process's, shared, and are not counted again.
    Sampled every 50 ms."""

    def __init__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.now())

    @staticmethod
    def now() -> float:
        kib, own = 0, Path("/proc/self/cmdline").read_bytes()
        children = []
        for task in Path("/proc/self/task").glob("*/children"):
            try:
                children += task.read_text().split()
            except OSError:  # a thread that has just ended
                continue
        for pid in ["self", *children]:
            try:
                if pid != "self" and Path(f"/proc/{pid}/cmdline").read_bytes() == own:
                    continue
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:  # a child that has just ended
                continue
            kib += int(next((x.split()[1] for x in status.splitlines() if x.startswith("RssAnon:")), 0))
        return kib / 1024

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def _child(*args: str, env: dict | None = None) -> dict:
    """Run a CHILD of this module in a fresh interpreter; its one JSON line, plus its wall time as "wall_s"."""
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bench.scale", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parent.parent)
    if r.returncode != 0:
        raise RuntimeError(f"bench.scale {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]) | {"wall_s": time.perf_counter() - start}


def _job(*args: str, cache: Path) -> float:
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "job", *args], capture_output=True, text=True,
                       env={**os.environ, "JOB_CACHE": str(cache)})
    if r.returncode != 0:
        raise RuntimeError(f"job {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - start


# ---- the children --------------------------------------------------------------------------------------------------

def _split(root: Path, part: str):
    from job import data

    per_class = data.scan_classes(root / part)
    return data._split(per_class, tuple(sorted(per_class)))


def child_prepare(root: str, size: int, cache: str) -> dict:
    from job import cpus, data
    from job.config import TrainConfig
    from job.run import preprocessing

    split = _split(Path(root), "train")
    prep = preprocessing(TrainConfig(image_size=size))
    anon, start = AnonPeak(), time.perf_counter()
    prepared = data.prepare(split, Path(root) / "train", prep, Path(cache), cpus.available())
    seconds = time.perf_counter() - start
    array = next((Path(cache) / "prepared").glob("*.npy"))
    return {"images": len(split.files), "img_s": len(split.files) / seconds, "peak_mb": _peak_mb(),
            "anon_peak_mb": anon.stop(), "cache_bytes": array.stat().st_size, "good": int(prepared.ok.sum()),
            "bands": int(prepared.images.shape[-1])}


_BARE: dict = {}  # the bare loop's files, side and filter, for its forked processes


def _bare_some(first: int) -> None:
    """The bare loop's work for 64 images from `first`: open, convert, resize (the pixels are not kept)."""
    import numpy as np
    from PIL import Image

    for path in _BARE["files"][first:first + 64]:
        with Image.open(path) as img:
            np.asarray(img.convert("RGB").resize((_BARE["side"], _BARE["side"]), _BARE["resample"]))


def child_pil(root: str, size: int) -> dict:
    """The bare PIL loop over the same files three times: in one thread, in as many threads as job may use, and in
    as many forked processes (64 images to a task, the way a user writes it with concurrent.futures); its img/s is
    the fastest of the three. Threads do not always help: for small images the GIL changing hands costs more than
    the decoding it frees (at 64 px here, one thread ran twice as fast as two); processes share no GIL."""
    import multiprocessing

    from job import cpus
    from job.config import TrainConfig
    from job.decode import INTERPOLATIONS
    from job.run import preprocessing

    split = _split(Path(root), "train")
    prep = preprocessing(TrainConfig(image_size=size))  # the same pixels and filter as job's cache
    _BARE.update(files=split.files, side=prep.resize_size, resample=INTERPOLATIONS[prep.interpolation])
    firsts, seconds = range(0, len(split.files), 64), {}
    anon = AnonPeak()
    for way, pool in (("one_thread", None), ("threads", concurrent.futures.ThreadPoolExecutor(cpus.available())),
                      ("processes", concurrent.futures.ProcessPoolExecutor(
                          cpus.available(), mp_context=multiprocessing.get_context("fork")))):
        start = time.perf_counter()  # a pool's start counts, as job's own does
        if pool is None:
            list(map(_bare_some, firsts))
        else:
            with pool:
                list(pool.map(_bare_some, firsts))
        seconds[way] = time.perf_counter() - start
    n = len(split.files)
    return {"images": n, "img_s": n / min(seconds.values()), **{f"{w}_img_s": n / s for w, s in seconds.items()},
            "threads": cpus.available(), "peak_mb": _peak_mb(), "anon_peak_mb": anon.stop()}


def _fit(size: int, train: int, test: int, cache: str):
    from job import run
    from job.config import TrainConfig

    cfg = TrainConfig(image_size=size, builtin_train_per_class=train, builtin_val_per_class=test, device="cpu")
    return run.setup(cfg, Path(cache)).fit


class _First:
    """The first `n` batches of a training split, as loop.train_one_epoch takes them."""

    def __init__(self, batches, n: int):
        self.batches, self.n = batches, n

    def __iter__(self):
        for k, batch in enumerate(self.batches):
            if k == self.n:
                return
            yield batch

    def __len__(self) -> int:
        return min(self.n, len(self.batches))


def _train(fit, n: int) -> None:
    from job import loop

    loop.train_one_epoch(fit.model, _First(fit.train, n), fit.optimizer, fit.loss_fn, fit.scaler, fit.device,
                         fit.prep, fit.amp, fit.num_classes).result("train")


def child_first_batch(size: int, train: int, test: int, cache: str) -> dict:
    """Seconds from this interpreter's start to the end of the first training batch (the cache is warm)."""
    fit = _fit(size, train, test, cache)
    fit.train.set_epoch(1)
    _train(fit, 1)
    return {"since_start_s": time.time() - _started(), "peak_mb": _peak_mb()}


def _started() -> float:
    """This process's start time (seconds since the epoch), from /proc."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def child_loop(size: int, train: int, test: int, cache: str) -> dict:
    fit = _fit(size, train, test, cache)
    fit.train.set_epoch(1)
    _train(fit, 1)  # warm-up
    n = min(LOOP_BATCHES, len(fit.train) - 1)
    start = time.perf_counter()
    _train(fit, n)
    return {"img_s": n * fit.train.batch_size / (time.perf_counter() - start), "peak_mb": _peak_mb()}


def child_eval_bound(size: int, cache: str) -> dict:
    """Model-only forward images/s at this size (the eval loop's bound), as bench.loop.bound measures it."""
    from bench import loop

    case = loop.prepare(Path(cache), size, 20, 32)
    return {"img_s": loop.bound(case, "channels_last")[1]}


CHILDREN = {"prepare": child_prepare, "pil": child_pil, "first_batch": child_first_batch, "loop": child_loop,
            "eval_bound": child_eval_bound}
RUN_THE_MODEL = ("first_batch", "loop", "eval_bound")  # set up as every job command sets up its process


# ---- the measure ---------------------------------------------------------------------------------------------------

def _median_run(runs: list[dict]) -> dict:
    """The run with the median img/s, and every run's img/s."""
    return sorted(runs, key=lambda m: m["img_s"])[len(runs) // 2] | {"img_s_each": [m["img_s"] for m in runs]}


def measure(size: int, work: Path, say, train: int = 6000, test: int = 1000, small: int = 300, repeats: int = 1) -> dict:
    """Every figure above at one image size, for `train` and `test` images per class (6,000 and 1,000: all of
    Fashion-MNIST) against `small` per class; `work` holds the caches (about 12 GB at 224 px). Preparing and the
    bare PIL loop are measured `repeats` times each, in turn (the median of each)."""
    from job import builtin
    from job.config import TrainConfig
    from job.run import preprocessing

    cache = work / "cache"
    start = time.perf_counter()
    root = builtin.materialise("fashion-mnist", cache, train, test)
    materialise_s = time.perf_counter() - start
    say(f"scale {size} px: data set materialised ({materialise_s:.0f} s, once per machine)")
    os.sync()  # its 70,000 new files go to disk now, not while the first measure below runs
    side = preprocessing(TrainConfig(image_size=size)).resize_size
    preps, pils = [], []
    for _ in range(repeats):  # in turn, so that the machine's drift falls on both alike
        fresh = Path(tempfile.mkdtemp(prefix="prep-", dir=work))
        preps.append(_child("prepare", str(root), str(size), str(fresh)))
        shutil.rmtree(fresh)  # 11.8 GB at 224 px
        pils.append(_child("pil", str(root), str(size)))
    prep, pil = _median_run(preps), _median_run(pils)
    small_root = builtin.materialise("fashion-mnist", cache, small, small)
    small_prep = _child("prepare", str(small_root), str(size), str(Path(tempfile.mkdtemp(prefix="prep-", dir=work))))
    say(f"scale {size} px: prepare {prep['img_s']:.0f} img/s, PIL {pil['one_thread_img_s']:.0f} img/s in one thread, "
        f"{pil['threads_img_s']:.0f} in {pil['threads']} threads, {pil['processes_img_s']:.0f} in as many processes")
    # the caches the runs below use: the full set and the small one, decoded once here (not timed)
    full, few = (str(size), str(train), str(test), str(cache)), (str(size), str(small), str(small), str(cache))
    _child("first_batch", *full)
    _child("first_batch", *few)
    first, first_small = _child("first_batch", *full), _child("first_batch", *few)
    full_loop, small_loop = _child("loop", *full), _child("loop", *few)
    say(f"scale {size} px: first batch {first['since_start_s']:.1f} s, loop {full_loop['img_s']:.0f} img/s")
    bundle = work / f"bundle-{size}"
    _job("train", "--image-size", str(size), "--epochs", "1", "--set", "builtin_train_per_class=10",
         "--set", "builtin_val_per_class=5", "--output", str(bundle), "--overwrite", "--quiet", cache=cache)
    evaluate_s = _job("evaluate", str(bundle), "--data", str(root / "val"), "--output", str(work / f"evaluate-{size}"),
                      "--quiet", cache=cache)  # into the benchmark's folder, not runs/ where it was started
    predict_s = _job("predict", str(bundle), str(root / "val"), "--json", cache=cache)
    bound = _child("eval_bound", str(size), str(cache))
    val_images = test * 10
    say(f"scale {size} px: evaluate {val_images / evaluate_s:.0f} img/s, predict {val_images / predict_s:.0f} img/s")
    return {
        "size": size, "side": side, "expected_cache_bytes": prep["images"] * side * side * prep["bands"], "materialise_s": materialise_s,
        "prepare": prep, "pil": pil, "small_prepare": small_prep, "first_batch": first, "first_batch_small": first_small,
        "loop_full": full_loop, "loop_small": small_loop, "evaluate_img_s": val_images / evaluate_s,
        "predict_img_s": val_images / predict_s, "eval_bound_img_s": bound["img_s"],
    }


if __name__ == "__main__":
    name, *rest = sys.argv[1:]
    if name in RUN_THE_MODEL:
        from job import cpus

        cpus.for_compute()  # the loop and the bound alike
    print(json.dumps(CHILDREN[name](*[int(a) if a.isdigit() else a for a in rest])))
