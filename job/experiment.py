"""A search's experiment on storage (`storage/name`, local or s3://): what it was started with, whether this search
may resume it, and where its Optuna study's journal is kept. Knows nothing of Ray: Ray's own files in the same
place are tune.py's business."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

from job import study
from job.config import S3Config, SearchConfig, TrainConfig
from job.errors import BadInput, JobError, first_line
from job.files import make_folder, mib, unmake
from job.progress import say
from job.storage import Location
from job.study import JOURNAL

SETTINGS_FILE = "job-tune.json"  # beside Ray's files in the experiment folder: what the search was started with
# Settings that may differ when an experiment is resumed: they change how it runs, not what it searches.
RUNTIME_KEYS = {"time_budget_s", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "max_failures", "storage",
                "device", "workers", "warm_start", "enqueue_default", "tracking", "tracking_uri"}  # the last two only shape a new study


def settings(cfg: TrainConfig, search: SearchConfig) -> dict:
    return {"train": cfg.to_dict(), "tune": search.to_dict()}


class Experiment:
    def __init__(self, search: SearchConfig, s3: S3Config | None):
        self.name = search.name
        self.storage = Location.parse(search.storage, s3)
        self.where = self.storage.join(search.name)
        self.journal_record = self.where.join(JOURNAL)
        self.saved: dict | None = None  # the settings it was started with, as `check` found them

    def __str__(self) -> str:
        return str(self.where)

    def lost(self, e: BaseException) -> JobError:
        """The one-line error for a search whose experiment files could not be written or read back here (a full disk:
        Ray ends each trial that cannot save its results, then fails on the empty files it left). What was saved
        before is whole: freed, the same command resumes the search."""
        room = ""
        if not self.storage.remote:
            try:
                room = f", whose disk has {mib(shutil.disk_usage(self.storage.path).free)} free"
            except OSError:
                pass
        return JobError(f"the search could not keep its experiment in {self} ({first_line(e) or type(e).__name__})"
                        f"{room}: free space there (or fix the storage), then run the same command again to resume")

    def check(self, cfg: TrainConfig, search: SearchConfig, restart: bool) -> bool:
        """Before any work: the storage is writable, and an experiment already there is one of job's, started with
        the same settings (unless `restart`). True when there is one to resume."""
        self.storage.outside(cfg.data, "--storage")
        self.storage.check_writable("storage")
        unsafe = self.where.others_may_write()
        if unsafe:  # resuming unpickles Ray's state from here: whoever can write it can run code in this job
            raise BadInput(f"experiment storage {unsafe}: resuming would load files another user could have written; "
                           "use a --storage folder of your own (chmod go-w)")
        self.saved = saved = self.where.read_json(SETTINGS_FILE)
        if saved is None and self.where.has_files():
            raise BadInput(f"'{self}' exists but is not a job tune experiment: pick another --name or --storage")
        if saved is not None and not restart:
            now = settings(cfg, search)
            changed = sorted(key for section in ("train", "tune") for key in now[section]
                             if key not in RUNTIME_KEYS and saved.get(section, {}).get(key) != now[section][key])
            if changed:
                raise BadInput(f"experiment '{self}' was started with other settings ({', '.join(changed)}): resume it "
                               "with the same settings, pass --restart to start it over, or pick another --name")
        return saved is not None and not restart

    def check_data(self, fingerprint: str, restart: bool) -> None:
        """A resumed experiment continues on the data it started with, never silently on other data (after `check`,
        which read the settings)."""
        if not restart and (self.saved or {}).get("data_fingerprint", fingerprint) != fingerprint:
            raise BadInput(f"the data changed since experiment '{self}' started (its files differ): resume with the "
                           "same data, pass --restart to start it over on this data, or pick another --name")

    def start(self, cfg: TrainConfig, search: SearchConfig, cache: Path, fingerprint: str) -> None:
        """A new experiment: its settings first (what makes the folder one of job's), no study from an earlier one."""
        self.where.write_json(SETTINGS_FILE, settings(cfg, search) | {"data_fingerprint": fingerprint})
        self.journal_record.delete()
        self.journal_record.cache_path(cache).unlink(missing_ok=True)

    def delete(self, cache: Path) -> None:
        """This experiment (checked to be one of job's: the storage may hold others) and the local copy of its study."""
        self.where.delete()
        self.journal_record.cache_path(cache).unlink(missing_ok=True)

    def journal(self, cache: Path) -> Path:
        """The local file of the study's journal: in the experiment folder, or for s3:// a copy in the cache, pulled
        from storage (pushed back by `save_journal`)."""
        local = self.journal_record.cache_path(cache)
        if self.journal_record.remote:
            if self.journal_record.exists():
                self.journal_record.pull(cache)
            else:
                local.unlink(missing_ok=True)
        local.parent.mkdir(parents=True, exist_ok=True)
        return local

    def save_journal(self, cache: Path) -> None:
        """Push the study's journal to storage. A failure (storage down) is a warning, not the end of the search:
        Ray's own state cannot be saved then either, and the next change pushes the whole journal again."""
        try:
            self.journal_record.push(self.journal_record.cache_path(cache))
        except JobError as e:
            say(f"warning: the Optuna study could not be saved to {self.journal_record} ({e}); trying again at the "
                "next trial event")


def study_source(spec: str, s3: S3Config | None, cache: Path) -> str | Path:
    """Where a warm start reads an earlier study: an Optuna URL as it is; otherwise a journal file, or an
    experiment folder holding one, local or s3:// (fetched into the cache)."""
    if study.is_url(spec):
        return spec
    where = Location.parse(spec, s3)
    record = where if str(where).rstrip("/").endswith("/" + JOURNAL) or str(where) == JOURNAL else where.join(JOURNAL)
    if not record.exists():
        raise BadInput(f"warm start: '{spec}' holds no {JOURNAL}: pass an earlier experiment's folder "
                       "(storage/name), its journal file, or an Optuna storage URL")
    return record.pull(cache)


LEASE_S = 30.0  # a search that dies without releasing its lock holds it this long at most
RENEW_S = LEASE_S / 3


class Lock:
    """One search at a time per experiment, on local storage and on S3 alike: a lock record with a lease that the
    running search renews every RENEW_S seconds. Another search that finds it exits 2 naming the holder; a holder
    that died frees it by itself (at once when it was a process on this machine, else when its lease runs out)."""

    def __init__(self, experiment: Experiment, wait=time.sleep, note=lambda line: None):
        # beside the experiment's folder, not in it: it is not part of the experiment (a restart deletes that)
        self.where, self.experiment, self.wait, self.note = experiment.storage, experiment, wait, note
        self.name = f".{experiment.name}.lock.json"
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.made: list[Path] = []

    def _record(self) -> dict:
        return self.me | {"expires": time.time() + LEASE_S}

    def _alive(self, holder: dict) -> bool:
        if holder.get("host") != self.me["host"]:
            return True  # on another machine: only its lease tells
        try:
            os.kill(int(holder.get("pid", 0)), 0)
            return True
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True  # another user's live process

    def _read(self) -> dict | None:
        try:
            return self.where.read_json(self.name)
        except BadInput:  # a torn or edited record: as good as none
            return {}

    def acquire(self) -> None:
        self.made = [] if self.where.remote else make_folder(self.where.path)  # removed on release if still empty
        seen = None
        while not self.where.create_json(self.name, self._record()):
            holder = self._read()
            if holder is not None and holder.get("token") != self.me["token"]:
                expired = float(holder.get("expires", 0)) < time.time() or not self._alive(holder)
                if not expired and seen is not None and holder != seen:  # renewed while we watched: it runs
                    raise BadInput(f"experiment '{self.experiment}' is being searched right now by process "
                                   f"{holder.get('pid')} on {holder.get('host')}: wait for it to end, or pick another --name")
                if not expired and holder.get("host") == self.me["host"]:
                    raise BadInput(f"experiment '{self.experiment}' is being searched right now by process "
                                   f"{holder.get('pid')} on this machine: wait for it to end, or pick another --name")
                if not expired:
                    if seen is None:
                        self.note(f"experiment '{self.experiment}' is locked by {holder.get('host')}: waiting up to "
                                  f"{LEASE_S:.0f}s to see whether that search is still running")
                    seen = holder
                    self.wait(1.0)
                    continue
            # no record any more, or one whose holder has gone: take it over, then make sure no one else did
            self.where.write_json(self.name, self._record())
            self.wait(0.2)
            if (self._read() or {}).get("token") == self.me["token"]:
                break
        self._renewer = threading.Thread(target=self._renew, name="job-lock-renewer", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                self.where.write_json(self.name, self._record())
            except Exception:  # storage hiccup: the next renewal tries again; the lease covers two misses
                pass

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if (self._read() or {}).get("token") == self.me["token"]:
            self.where.join(self.name).delete()
            unmake(self.made)  # a search that failed before its first trial leaves no folder

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
