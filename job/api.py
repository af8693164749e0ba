"""The library API (`import job`): what the `job` command does, callable from a notebook or another program.

Each function takes settings as dataclasses or plain dicts (validated the same way as a config file), reads no
settings from JOB_* environment variables (JOB_CACHE, the cache's place, as the command does), and leaves the
caller's environment variables and signal handlers as it found them.
Torch and Ray are imported when a function runs, not when `job` is imported.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from job.config import S3Config, SearchConfig, TrainConfig
from job.errors import BadInput

# What a resumed run may change: how long, where it runs and where it is logged, not what it learns.
RESUME_MAY_CHANGE = {"epochs", "device", "workers", "tracking", "tracking_uri"}


def _settings(cls, value: Any, source: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls.from_dict(value, source)
    raise TypeError(f"{source} must be a {cls.__name__} or a dict, not {type(value).__name__}")


@contextlib.contextmanager
def _as_found():
    """The caller's environment variables as they were, whatever the libraries underneath set while the call ran
    (torch sets TORCHINDUCTOR_CACHE_DIR on import, Ray Tune's settings are set for the search)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        if dict(os.environ) != saved:
            os.environ.clear()
            os.environ.update(saved)


@contextlib.contextmanager
def output_or_default(output: str | Path | None, kind: str) -> Iterator[str | Path]:
    """`output`, or a new folder runs/<kind>-<time> (-2, -3, ... when a job started in the same second took that
    name: jobs started together each get their own), removed again if the block leaves it empty (a refused run)."""
    if output:
        yield output
        return
    from job.files import new_folder, unmake

    made = new_folder(Path("runs") / f"{kind}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    try:
        yield made[0]
    finally:
        unmake(made)


def train(config: TrainConfig | Mapping | None = None, output: str | Path | None = None, *,
          overwrite: bool = False, resume: str | Path | None = None, s3: S3Config | Mapping | None = None,
          on_epoch: Callable | None = None, bar: Callable | None = None):
    """Fine-tune one model; returns a `job.Result` (output, bundle, best epoch and metrics, history).

    `output` is a local folder or s3://bucket/prefix (default runs/train-<time>). `resume` continues the local run
    folder it names with the settings saved in its checkpoint (`config` may then change only epochs, device and
    workers). Ctrl-C stops after the last saved epoch (KeyboardInterrupt)."""
    with _as_found():
        return _train(config, output, overwrite, resume, _settings(S3Config, s3, "s3"), on_epoch, bar)


def _train(config, output, overwrite: bool, resume, s3: S3Config, on_epoch, bar):
    from job import checkpoint, run, signals

    state = None
    if resume is not None:
        state = checkpoint.load(Path(resume))
        output = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        if isinstance(config, TrainConfig):  # resolved over the checkpoint's config already (the CLI does)
            config = {k: getattr(config, k) for k in RESUME_MAY_CHANGE}
        changes = dict(config or {})
        refused = sorted(set(changes) - RESUME_MAY_CHANGE)
        if refused:
            raise BadInput(f"resume cannot change {', '.join(refused)}: only {', '.join(sorted(RESUME_MAY_CHANGE))} may change")
        config = TrainConfig.from_dict(run.as_trained(state["config"] | changes, state), "the checkpoint")
    cfg = _settings(TrainConfig, config, "config")
    with signals.Stop(), output_or_default(output, "train") as output:
        return run.train(cfg, output, resume=state, overwrite=overwrite, bar=bar, on_epoch=on_epoch, s3=s3)


def tune(config: TrainConfig | Mapping | None = None, search: SearchConfig | Mapping | None = None,
         output: str | Path | None = None, *, restart: bool = False, overwrite: bool = False, progress: bool = False,
         s3: S3Config | Mapping | None = None):
    """Search settings with Ray Tune (Optuna TPE + ASHA) and export the best model; returns a `job.Result` whose
    `trials` lists every trial. An unfinished experiment of the same name is resumed. `progress` prints one line
    per epoch and per ended trial on stderr. Ctrl-C saves the experiment and raises KeyboardInterrupt."""
    import importlib

    searching = importlib.import_module("job.tune")  # the module: `from job import tune` may be this function
    search = _settings(SearchConfig, search, "search")
    with _as_found():
        return searching.search(_settings(TrainConfig, config, "config"), search, output or Path("runs") / search.name,
                                restart=restart, overwrite=overwrite, progress=progress, s3=_settings(S3Config, s3, "s3"))


def load(path: str | Path, device: str = "auto", s3: S3Config | Mapping | None = None):
    """The model of a bundle (a run folder, its best/ folder, or s3://...), verified against its manifest: a
    `job.Model` with `.predict(images)` and `.evaluate(folder)`."""
    from job import inference
    from job.files import cache_dir
    from job.storage import Location

    with _as_found():
        s3 = _settings(S3Config, s3, "s3")
        return inference.load(Location.parse(path, s3), cache_dir(), device, s3)


def export(path: str | Path, format: str = "onnx", output: str | Path | None = None, *, data: str = "fashion-mnist",
           overwrite: bool = False, s3: S3Config | Mapping | None = None) -> dict:
    """The model of a bundle (local or s3://) as ONNX, TorchScript or safetensors in `output` (local or s3://), with
    a config.json of its classes and preprocessing, verified on up to 64 real images of `data` (an image folder,
    or the built-in data set) against the bundle's own model. Returns config.json (with `output` added)."""
    import tempfile

    from job import bundle, inference, portable as exporting
    from job.files import cache_dir
    from job.storage import RUN_FILE, Location, naming

    if format not in exporting.FORMATS:
        raise BadInput(f"format {format!r} is not known: choose one of {', '.join(exporting.FORMATS)}")
    with _as_found(), output_or_default(output, f"export-{format}") as output:
        s3 = _settings(S3Config, s3, "s3")
        cache = cache_dir()
        out = Location.parse(output, s3)
        bundle.check_output(out, data)
        held = next((name for name in (exporting.CONFIG, RUN_FILE) if out.exists(name)), None)
        if held and not overwrite:
            raise BadInput(f"output '{out}' already holds {'an export' if held == exporting.CONFIG else 'a run'}: pass "
                           "--overwrite to replace it, or choose another --output")
        model = inference.load(Location.parse(path, s3), cache, "cpu")
        root = inference.eval_root(data, model, cache) if data in inference.builtin.NAMES else \
            Location.parse(data, s3).pull(cache, folder=True)
        with naming({root: data}):
            images = exporting.check_images(model, inference.expand([str(root)]))
        with tempfile.TemporaryDirectory(prefix="job-export-", dir=cache) as staged:
            config = exporting.export(model, format, Path(staged), images, str(path))
            out.install(Path(staged), last=exporting.CONFIG, owned=exporting.EXPORT_FILES)
        return config | {"output": str(out)}
