"""A search's experiment on storage (`storage/name`, local or s3://): what it was started with, whether this search
may resume it, and where its Optuna study's journal is kept. Knows nothing of Ray: Ray's own files in the same
place are tune.py's business."""

from __future__ import annotations

from pathlib import Path

from job.config import S3Config, SearchConfig, TrainConfig
from job.errors import BadInput
from job.storage import Location
from job.study import JOURNAL

SETTINGS_FILE = "job-tune.json"  # beside Ray's files in the experiment folder: what the search was started with
# Settings that may differ when an experiment is resumed: they change how it runs, not what it searches.
RUNTIME_KEYS = {"time_budget_s", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "max_failures", "storage",
                "device", "workers"}


def settings(cfg: TrainConfig, search: SearchConfig) -> dict:
    return {"train": cfg.to_dict(), "tune": search.to_dict()}


class Experiment:
    def __init__(self, search: SearchConfig, s3: S3Config | None):
        self.storage = Location.parse(search.storage, s3)
        self.where = self.storage.join(search.name)
        self.journal_record = self.where.join(JOURNAL)

    def __str__(self) -> str:
        return str(self.where)

    def check(self, cfg: TrainConfig, search: SearchConfig, restart: bool) -> bool:
        """Before any work: the storage is writable, and an experiment already there is one of job's, started with
        the same settings (unless `restart`). True when there is one to resume."""
        self.storage.check_writable("storage")
        saved = self.where.read_json(SETTINGS_FILE)
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
        """A resumed experiment continues on the data it started with, never silently on other data."""
        saved = self.where.read_json(SETTINGS_FILE) or {}
        if not restart and saved.get("data_fingerprint", fingerprint) != fingerprint:
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
        self.journal_record.push(self.journal_record.cache_path(cache))
