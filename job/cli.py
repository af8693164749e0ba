"""The `job` command: parsing, printing, and the one error boundary.

Known errors (JobError) print one line and exit with their code (1 runtime failure, 2 bad input, 130 interrupted);
argparse's usage errors exit 2; anything else is a bug and keeps its traceback. Heavy imports (torch, Ray) happen
inside the subcommands, so `job --help` stays fast.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

from job import __version__
from job.errors import EXIT_FAILURE, EXIT_OK, BadInput, Interrupted, JobError

# The machine, not job, is at fault: disk full, quota, permissions, read-only file system.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}

# Flags that set a config key (dest = key). Every other key is reachable with --set key=value or a config file.
TRAIN_FLAGS = {
    "data": "image folder, or the built-in 'fashion-mnist' (default)",
    "model": "efficientnet_lite0 (default) or a torchvision model name",
    "weights": "DEFAULT, a weights name, none, or a .pth path",
    "epochs": "epochs to train",
    "batch_size": "images per batch",
    "lr": "learning rate",
    "step_size": "epochs between LR decays",
    "gamma": "LR decay factor",
    "image_size": "input size in pixels",
    "seed": "random seed",
    "device": "auto, cpu, cuda or cuda:N",
}
BOOL_FLAGS = {"freeze_backbone": "train only the new head", "skip_bad_images": "skip unreadable images instead of failing"}
SEARCHED = ("lr", "step_size", "gamma")  # job tune samples these: its flags set their ranges instead
TUNE_FLAGS = {
    "num_samples": "trials to run",
    "max_concurrent": "trials at once (0: as resources allow)",
    "time_budget_s": "stop after this many seconds, export the best so far",
    "gpus_per_trial": "GPUs per trial, fractions allowed",
    "cpus_per_trial": "CPUs (torch threads) per trial",
    "lr_range": "MIN,MAX for lr (log-uniform)",
    "step_size_range": "MIN,MAX for step_size (integers)",
    "gamma_range": "MIN,MAX for gamma (uniform)",
    "storage": "where Ray keeps the experiment",
    "name": "experiment name (an unfinished one is resumed)",
}
RESUME_MAY_CHANGE = {"epochs", "device", "workers"}


def _add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    for key, help in TRAIN_FLAGS.items():
        if key not in skip:
            p.add_argument("--" + key.replace("_", "-"), dest=key, default=argparse.SUPPRESS, metavar="X", help=help)
    for key, help in BOOL_FLAGS.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, action="store_true", default=argparse.SUPPRESS, help=help)
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML or YAML file of settings")
    p.add_argument("--s3-endpoint", metavar="URL", default=argparse.SUPPRESS, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other setting (see `job config`)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quiet", action="store_true", help="no progress, only the result")
    mode.add_argument("--json", action="store_true", help="the result as JSON on stdout, no progress")


class _Searched(argparse.Action):
    """`job tune --lr X`: the value is searched, so say which flag sets its range."""

    def __call__(self, parser, namespace, values, option_string=None):
        flag = option_string.lstrip("-")
        parser.error(f"job tune samples {flag.replace('-', '_')}: set its range with --{flag}-range MIN,MAX")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="job", description="Fine-tune a pretrained image classifier on a folder of images.")
    parser.add_argument("--version", action="version", version=f"job {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="one local training run; writes a bundle, history and plots")
    _add_config_flags(p)
    p.add_argument("--output", metavar="DIR", help="run folder, local or s3://bucket/prefix (default: runs/train-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    p.add_argument("--resume", metavar="CKPT", help="continue the run in this folder (or checkpoint.pt)")
    _add_output_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="search lr, step_size and gamma with Ray Tune (Optuna TPE + ASHA); export the best")
    _add_config_flags(p, skip=SEARCHED)
    for key in SEARCHED:
        p.add_argument("--" + key.replace("_", "-"), action=_Searched, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for key, help in TUNE_FLAGS.items():
        flag = "--time-budget" if key == "time_budget_s" else "--" + key.replace("_", "-")
        p.add_argument(flag, dest=key, default=argparse.SUPPRESS, metavar="X", help=help)
    p.add_argument("--restart", action="store_true", help="start the experiment over instead of resuming it")
    p.add_argument("--output", metavar="DIR", help="where the best bundle and trials.csv go, local or s3:// (default: runs/<name>)")
    p.add_argument("--overwrite", action="store_true", help="replace another run's results in --output")
    _add_output_flags(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("evaluate", help="metrics, per-class table and confusion matrix of a bundle on a labelled folder")
    p.add_argument("bundle", metavar="BUNDLE", help="run folder or bundle folder, local or s3://")
    p.add_argument("--data", required=True, metavar="DIR", help="DIR/<class>/* (or DIR/val/<class>/*), or fashion-mnist")
    p.add_argument("--output", type=Path, metavar="DIR", help="where to write evaluation.json and confusion.png (default: runs/evaluate-<time>)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of failing")
    p.add_argument("--s3-endpoint", metavar="URL", default=argparse.SUPPRESS, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    _add_output_flags(p)
    p.set_defaults(func=cmd_evaluate, config=None, set=[])

    p = sub.add_parser("predict", help="top-k labels with probabilities for image files or folders")
    p.add_argument("bundle", metavar="BUNDLE", help="run folder or bundle folder, local or s3://")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--top-k", type=int, default=3, metavar="K")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of failing")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.add_argument("--s3-endpoint", metavar="URL", default=argparse.SUPPRESS, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    p.set_defaults(func=cmd_predict, config=None, set=[])

    p = sub.add_parser("config", help="list every setting with its default and meaning")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("models", help="list the model names --model takes, or download weights for offline use")
    p.add_argument("--download", nargs="+", metavar="NAME[:WEIGHTS]",
                   help="fetch torchvision weights (DEFAULT unless named) into the torch cache ($TORCH_HOME), "
                        "e.g. resnet50 or resnet50:IMAGENET1K_V2; the only command that uses the network")
    p.set_defaults(func=cmd_models)
    return parser


def resolve_config(args: argparse.Namespace, cls=None, base: dict | None = None):
    """Flags over environment over file over defaults; a resumed run takes only its checkpoint's config and flags.

    `job tune` resolves two sections (training, search) from the same sources; its --set pairs go to the section
    that has the key. `job train` knows only training keys, so a search key there is an error.
    """
    from job import config

    cls = cls or config.TrainConfig
    if cls is config.S3Config:
        flags = {"endpoint": args.s3_endpoint} if hasattr(args, "s3_endpoint") else {}
    else:
        names = list(TUNE_FLAGS) if cls is config.SearchConfig else [*TRAIN_FLAGS, *BOOL_FLAGS]
        flags = {k: getattr(args, k) for k in names if hasattr(args, k)}
    sets = config.parse_sets(args.set)
    if args.command == "tune" or cls is not config.TrainConfig:
        sets = config.for_section(cls, sets)
    else:  # job train: search keys are unknown here, s3 keys belong to their own section
        sets = {k: v for k, v in sets.items() if k not in config.for_section(config.S3Config, sets)}
    env = {} if base is not None else None
    return config.resolve(args.config, env=env, overrides=sets | flags, base=base, cls=cls)


def _print_config(cfg, section: str = "") -> None:
    """As TOML, so the output can be saved and passed back with --config."""
    if section:
        print(f"\n[{section}]")
    for key, value in cfg.to_dict().items():
        print(f"# {key}: unset, uses the default" if value is None else f"{key} = {json.dumps(value)}")


def _default_output(kind: str) -> Path:
    return Path("runs") / f"{kind}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _epoch_line(epoch: int, epochs: int, m: dict) -> str:
    top5 = f"  val_top5 {m['val_top5']:.4f}" if "val_top5" in m else ""
    return (f"epoch {epoch}/{epochs}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}  "
            f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}{top5}  val_f1_macro {m['val_f1_macro']:.4f}  "
            f"lr {m['lr']:.3g}  {m['epoch_s']:.1f}s  {m['images_per_s']:.0f} img/s")


def cmd_train(args: argparse.Namespace) -> int:
    from job import bundle, checkpoint, config, cpus, report, run, storage

    cpus.limit_torch_threads()
    s3 = resolve_config(args, config.S3Config)
    if args.resume and storage.is_s3(args.resume):
        raise BadInput("--resume takes the local run folder: a run written to s3:// is published when it has finished")
    if args.resume:
        args.resume = Path(args.resume)
        if args.config or args.set or args.print_config:
            raise BadInput("--resume takes its settings from the checkpoint: drop --config/--set, or start a new run")
        changed = sorted(k for k in [*TRAIN_FLAGS, *BOOL_FLAGS] if hasattr(args, k) and k not in RESUME_MAY_CHANGE)
        if changed:
            raise BadInput(f"--resume cannot change {', '.join(changed)}: only {', '.join(sorted(RESUME_MAY_CHANGE))} may change")
        state = checkpoint.load(args.resume)
        output = args.resume if args.resume.is_dir() else args.resume.parent
        if args.output and Path(args.output).resolve() != output.resolve():
            raise BadInput(f"--resume continues in '{output}': drop --output {args.output}")
        cfg = resolve_config(args, base=state["config"])
    else:
        state = None
        cfg = resolve_config(args)
        output = args.output or str(_default_output("train"))
    if args.print_config:
        _print_config(cfg)
        _print_config(s3, config.S3Config.SECTION)
        return 0
    remote = storage.is_s3(str(output))
    if remote:
        run.check_remote_output(output, s3, args.overwrite)  # fails within seconds, before any training
    local = run.staging(output, run.cache_dir()) if remote else Path(output)
    progress = not (args.quiet or args.json)
    bar = report.TqdmBar if progress and sys.stderr.isatty() else None

    def on_epoch(e) -> None:
        if progress:
            print(_epoch_line(e.epoch, cfg.epochs, e.metrics), file=sys.stderr, flush=True)

    started = time.perf_counter()
    try:
        result = run.train(cfg, local, resume=state, overwrite=args.overwrite or remote, bar=bar, on_epoch=on_epoch, s3=s3)
    except KeyboardInterrupt:
        if (local / checkpoint.CHECKPOINT_NAME).is_file():
            raise Interrupted(f"interrupted: the last finished epoch is saved in {local}; continue with: job train --resume {local}") from None
        raise Interrupted("interrupted before the first epoch finished: nothing to resume, run the command again") from None
    if remote:
        run.publish(local, output, s3)
        result = dataclasses.replace(result, output=output, bundle=f"{output}/{bundle.BEST_DIR}")
    elapsed = time.perf_counter() - started
    summary = {"output": str(result.output), "bundle": str(result.bundle), "best_epoch": result.best_epoch,
               "best": result.best, "epochs": len(result.history), "resumed_from_epoch": result.resumed_from,
               "skipped_images": result.skipped, "seconds": round(elapsed, 1)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    b = result.best
    print(f"job train: done in {elapsed:.1f}s, {len(result.history)} epochs ({cfg.model} on {cfg.data})"
          + (f", {result.skipped} unreadable images skipped" if result.skipped else ""))
    print(f"best epoch {result.best_epoch}: val_acc {b['val_acc']:.4f}  val_f1_macro {b['val_f1_macro']:.4f}  val_loss {b['val_loss']:.4f}")
    if not args.quiet:
        cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_f1_macro", "lr", "epoch_s"]
        print(report.table([[h[c] for c in cols] for h in result.history], cols))
        print(f"bundle:  {result.bundle}\nhistory: {output}/history.csv, {output}/history.json\nplot:    {output}/curves.png")
        print(f"next:    job evaluate {output} --data DIR   |   job predict {output} IMAGE...")
    return 0


def _public(trial) -> dict:
    """A trial as the user sees it in --json: no per-epoch history (that is in trials.json), no Ray folder."""
    return {k: v for k, v in dataclasses.asdict(trial).items() if k not in ("history", "folder")}


def cmd_tune(args: argparse.Namespace) -> int:
    from job import config

    cfg = resolve_config(args)
    search = resolve_config(args, config.SearchConfig)
    if args.print_config:
        _print_config(cfg)
        _print_config(search, config.SearchConfig.SECTION)
        _print_config(resolve_config(args, config.S3Config), config.S3Config.SECTION)
        return 0
    from job import report, tune

    output = args.output or str(Path("runs") / search.name)
    try:
        outcome = tune.search(cfg, search, output, restart=args.restart, overwrite=args.overwrite,
                              progress=not (args.quiet or args.json), s3=resolve_config(args, config.S3Config))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: the experiment is saved under {search.storage}/{search.name}; "
                          "run the same command again to resume it") from None
    trials = [_public(t) for t in outcome.trials]
    if args.json:
        print(json.dumps({"output": str(outcome.output), "bundle": str(outcome.bundle), "experiment": outcome.experiment,
                          "resumed": outcome.resumed, "seconds": round(outcome.seconds, 1),
                          "best": _public(outcome.best), "trials": trials}, indent=2))
        return 0
    print("\n".join(tune.summary_lines(outcome)))
    if not args.quiet:
        rows = [[t["number"], t["trial_id"], t["lr"], t["step_size"], t["gamma"], t["epochs"],
                 t["val_acc"] if t["val_acc"] is not None else "-", t["status"]] for t in trials]
        print(report.table(rows, ["#", "trial", "lr", "step_size", "gamma", "epochs", "val_acc", "status"]))
        print(f"bundle:  {outcome.bundle}\ntrials:  {output}/trials.csv, {output}/trials.json\n"
              f"plot:    {output}/trials.png\nnext:    job evaluate {output} --data DIR   |   job predict {output} IMAGE...")
    return 0


def _load_bundle(args: argparse.Namespace):
    """A bundle from a local folder, or fetched from s3:// into the cache (verified against its manifest)."""
    from job import bundle, config, run, storage
    from job.loop import resolve_device

    path = args.bundle
    if storage.is_s3(path):
        path = bundle.fetch(path, run.store(resolve_config(args, config.S3Config)), run.cache_dir())
    return bundle.load(Path(path), resolve_device(args.device))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from job import config, cpus, inference, report, run, storage

    cpus.limit_torch_threads()
    if args.batch_size < 1:
        raise BadInput(f"--batch-size {args.batch_size} must be >= 1")
    b = _load_bundle(args)
    data = args.data
    if storage.is_s3(data):
        data = str(run.fetched(data, run.cache_dir(), resolve_config(args, config.S3Config), folder=True))
    ev = inference.evaluate(b, data, run.cache_dir(), args.batch_size, args.skip_bad_images)
    output = Path(args.output) if args.output else _default_output("evaluate")
    output.mkdir(parents=True, exist_ok=True)
    result = {"bundle": str(args.bundle), "data": args.data, "images": ev.images, "skipped_images": ev.skipped,
              **ev.metrics, "per_class": ev.per_class, "classes": list(ev.classes), "confusion": ev.confusion}
    (output / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    report.plot_confusion(output / "confusion.png", ev.confusion, ev.classes)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m = ev.metrics
    top5 = f"  top-5 {m['val_top5']:.4f}" if "val_top5" in m else ""
    print(f"{ev.images} images, {len(ev.classes)} classes: top-1 {m['val_acc']:.4f}{top5}  macro F1 {m['val_f1_macro']:.4f}  loss {m['val_loss']:.4f}")
    if not args.quiet:
        print(report.table([[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in ev.per_class],
                           ["class", "precision", "recall", "f1", "support"]))
        short = [c[:8] for c in ev.classes]
        print("\nconfusion (rows: true, columns: predicted)")
        print(report.table([[c, *row] for c, row in zip(short, ev.confusion)], ["", *short]))
        print(f"\nwritten: {output / 'evaluation.json'}, {output / 'confusion.png'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from job import cpus, inference, report

    cpus.limit_torch_threads()
    if args.top_k < 1:
        raise BadInput(f"--top-k {args.top_k} must be >= 1")
    b = _load_bundle(args)
    rows = inference.predict(b, args.paths, args.top_k, skip_bad=args.skip_bad_images)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [[r["file"], *(f"{p['label']} {p['probability']:.3f}" for p in r["predictions"])] for r in rows]
    k = len(rows[0]["predictions"]) if rows else 0
    print(report.table(table, ["file", *(f"top-{i + 1}" for i in range(k))]))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from job import config, report

    print("Training (job train, and every trial of job tune):\n")
    print(report.table(config.describe(config.TrainConfig), ["key", "default", "meaning"]))
    print("\nSearch (job tune; [tune] table in a config file, JOB_TUNE_<KEY> in the environment):\n")
    print(report.table(config.describe(config.SearchConfig), ["key", "default", "meaning"]))
    print(f"\nSet them in a TOML/YAML file (--config), as {config.ENV_PREFIX}<KEY> environment variables, or with --set KEY=VALUE.")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from job import model

    if not args.download:
        print("\n".join(model.model_names()))
    for spec in args.download or ():
        print(f"{spec}: {model.download(spec)}")
    return 0


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # Kubernetes and docker stop send SIGTERM: stop as cleanly as on Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.func(args)
    except JobError as e:
        print(f"job: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("job: interrupted", file=sys.stderr)
        return Interrupted.exit_code
    except BrokenPipeError:  # `job models | head`: the reader has gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the final flush cannot fail again
        return EXIT_OK
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise  # anything else is a bug: keep the traceback
        print(f"job: error: {e.strerror}: {e.filename or ''}: free space or fix permissions, then run again", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        sys.stdout.flush()


def entry() -> None:
    """The `job` command (and `python -m job`): main(), then a quick exit. The interpreter's own teardown of torch,
    Ray and matplotlib takes a second or more (bench/) and does nothing that a finished command needs; the atexit
    handlers (Ray's shutdown, logging) still run, and an unexpected error still ends with its traceback."""
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
