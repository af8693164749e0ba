"""The `job` command: parsing, printing, and the one error boundary, over the library API (job/api.py).

Known errors (JobError) print one line and exit with their code (1 runtime failure, 2 bad input, 130 interrupted);
argparse's usage errors exit 2; anything else is a bug and keeps its traceback. Heavy imports (torch, Ray) happen
inside the subcommands, so `job --help` stays fast. `main(argv)` returns the exit code (tests call it in-process);
`entry()` is the installed command.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import json
import os
import shlex
import sys
import tempfile
import types
import typing
from pathlib import Path

from job import __version__, api, config, signals
from job import space as spaces
from job.errors import EXIT_FAILURE, EXIT_OK, BadInput, Interrupted, JobError, one_line
from job.progress import say

EVALUATION = ("evaluation.json", "confusion.png")  # what `job evaluate` writes, the first last
# The machine, not job, is at fault: disk full, quota, permissions, read-only file system.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}

# Flags that set a config key (dest = key). Every other key is reachable with --set key=value or a config file.
TRAIN_FLAGS = {
    "data": "image folder (local or s3://), or the built-in 'fashion-mnist'",
    "model": "efficientnet_lite0 or a torchvision model name (see `job models`)",
    "weights": "DEFAULT, a weights name, none, or a .pth path",
    "epochs": "epochs to train",
    "batch_size": "images per batch",
    "lr": "learning rate",
    "step_size": "epochs between LR decays",
    "gamma": "LR decay factor",
    "image_size": "input size in pixels; none: the weights' (48 for fashion-mnist)",
    "seed": "random seed",
    "device": "auto, cpu, cuda or cuda:N",
}
BOOL_FLAGS = {"freeze_backbone": "train only the new head", "skip_bad_images": "skip unreadable images instead of failing"}
TUNE_BOOL_FLAGS = {"enqueue_default": "run the training settings as they are as the first trial, or fail (default: "
                                       "run them first when they lie inside the space)"}
TUNE_FLAGS = {
    "metric": "the metric to optimise (val_acc, val_f1_macro, val_loss, ...)",
    "mode": "max or min; none: follows the metric",
    "num_samples": "trials to run",
    "max_concurrent": "trials at once (0: as resources allow)",
    "time_budget_s": "stop after this many seconds, export the best so far",
    "gpus_per_trial": "GPUs per trial, fractions allowed",
    "cpus_per_trial": "CPUs (torch threads) per trial",
    "lr_range": "MIN,MAX for lr (log-uniform)",
    "step_size_range": "MIN,MAX for step_size (integers); none: 1,epochs",
    "gamma_range": "MIN,MAX for gamma (uniform)",
    "storage": "where Ray keeps the experiment",
    "study_storage": "an Optuna RDB URL for the study (default: optuna.journal in the experiment)",
    "warm_start": "an earlier experiment (folder, s3://, optuna.journal or Optuna URL) to seed the sampler with",
    "name": "experiment name (an unfinished one is resumed)",
}


def _metavar(cls, key: str) -> str:
    """N for integers, X for numbers, MIN,MAX for ranges, TEXT otherwise."""
    hint = typing.get_type_hints(cls)[key]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    kind = typing.get_origin(hint) or hint
    return {int: "N", float: "X", tuple: "MIN,MAX", bool: "BOOL"}.get(kind, "TEXT")


def _setting_flag(p: argparse.ArgumentParser, flag: str, cls, key: str, help: str) -> None:
    """A flag that sets config key `key`: its type and default shown, e.g. `--epochs N  epochs to train (default 5)`."""
    default = cls.__dataclass_fields__[key].default
    shown = "none" if default is None else ",".join(map(str, default)) if isinstance(default, tuple) else default
    p.add_argument(flag, dest=key, default=argparse.SUPPRESS, metavar=_metavar(cls, key), help=f"{help} (default {shown})")


def _add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    for key, help in TRAIN_FLAGS.items():
        if key not in skip:
            _setting_flag(p, "--" + key.replace("_", "-"), config.TrainConfig, key, help)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="job", description="Fine-tune a pretrained image classifier on a folder of images.")
    parser.add_argument("--version", action="version", version=f"job {__version__}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="one local training run; writes a bundle, history and plots")
    _add_config_flags(p)
    p.add_argument("--output", metavar="DIR", help="run folder, local or s3://bucket/prefix (default: runs/train-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    p.add_argument("--resume", metavar="CKPT", help="continue the run in this folder (or checkpoint.pt)")
    _add_output_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="search the training settings with Ray Tune (Optuna TPE + ASHA); export the best")
    _add_config_flags(p)
    p.add_argument("--space", action="append", default=[], metavar="NAME=SPEC",
                   help="search a setting: lr=loguniform:1e-4,1e-1, label_smoothing=uniform:0,0.2, step_size=int:1,5, "
                        "batch_size=int:16,128:log, optimizer=choice:sgd,adamw, or fix it: momentum=0.95 (default none: "
                        "lr, step_size and gamma over the --*-range flags)")
    for key, help in TUNE_FLAGS.items():
        flag = "--time-budget" if key == "time_budget_s" else "--" + key.replace("_", "-")
        _setting_flag(p, flag, config.SearchConfig, key, help)
    for key, help in TUNE_BOOL_FLAGS.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, action="store_true", default=argparse.SUPPRESS, help=help)
    p.add_argument("--restart", action="store_true", help="start the experiment over instead of resuming it")
    p.add_argument("--output", metavar="DIR", help="where the best bundle and trials.csv go, local or s3:// (default: runs/<name>)")
    p.add_argument("--overwrite", action="store_true", help="replace another run's results in --output")
    _add_output_flags(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("evaluate", help="metrics, per-class table and confusion matrix of a bundle on a labelled folder")
    p.add_argument("bundle", metavar="BUNDLE", help="run folder or bundle folder, local or s3://")
    p.add_argument("--data", required=True, metavar="DIR", help="DIR/<class>/* (or DIR/val/<class>/*), or fashion-mnist")
    p.add_argument("--output", metavar="DIR", help="where to write evaluation.json and confusion.png, local or s3:// (default: runs/evaluate-<time>)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)")
    p.add_argument("--device", default="auto", metavar="TEXT", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of failing")
    p.add_argument("--s3-endpoint", metavar="URL", default=argparse.SUPPRESS, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    _add_output_flags(p)
    p.set_defaults(func=cmd_evaluate, config=None, set=[])

    p = sub.add_parser("predict", help="top-k labels with probabilities for image files or folders")
    p.add_argument("bundle", metavar="BUNDLE", help="run folder or bundle folder, local or s3://")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders, local or s3://")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="labels per image (default 3)")
    p.add_argument("--device", default="auto", metavar="TEXT", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of failing")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.add_argument("--s3-endpoint", metavar="URL", default=argparse.SUPPRESS, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    p.set_defaults(func=cmd_predict, config=None, set=[])

    p = sub.add_parser("export", help="the model as ONNX, TorchScript or safetensors with a config.json, verified")
    p.add_argument("bundle", metavar="BUNDLE", help="run folder or bundle folder, local or s3://")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "safetensors"), help="what to write")
    p.add_argument("--output", metavar="DIR", help="where to write, local or s3:// (default: runs/export-<format>-<time>)")
    p.add_argument("--data", dest="check_data", default="fashion-mnist", metavar="DIR",
                   help="images to verify the export on, up to 64 (default: the built-in fashion-mnist)")
    p.add_argument("--overwrite", action="store_true", help="replace an export or run already in --output")
    p.add_argument("--s3-endpoint", metavar="URL", default=argparse.SUPPRESS, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    _add_output_flags(p)
    p.set_defaults(func=cmd_export, config=None, set=[])

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
    cls = cls or config.TrainConfig
    if cls is config.S3Config:
        flags = {"endpoint": args.s3_endpoint} if hasattr(args, "s3_endpoint") else {}
    else:
        names = [*TUNE_FLAGS, *TUNE_BOOL_FLAGS] if cls is config.SearchConfig else [*TRAIN_FLAGS, *BOOL_FLAGS]
        flags = {k: getattr(args, k) for k in names if hasattr(args, k)}
        if cls is config.SearchConfig and getattr(args, "space", None):
            flags["space"] = {k: v for item in args.space for k, v in spaces.parse(item, "--space").items()}
    sets = config.parse_sets(args.set)
    if args.command == "tune" or cls is not config.TrainConfig:
        sets = config.for_section(cls, sets)
    else:  # job train: search keys are unknown here, s3 keys belong to their own section
        sets = {k: v for k, v in sets.items() if k not in config.for_section(config.S3Config, sets)}
    env = {} if base is not None else None
    return config.resolve(args.config, env=env, overrides=sets | flags, base=base, cls=cls,
                          warn=say if cls is config.TrainConfig else None)  # warned once, not per section


def _print_config(cfg, section: str = "") -> None:
    """As TOML, so the output can be saved and passed back with --config."""
    if section:
        print(f"\n[{section}]")
    tables = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            tables[key] = value
        else:
            print(f"# {key}: unset, uses the default" if value is None else f"{key} = {json.dumps(value)}")
    for key, table in tables.items():  # [tune.space] as TOML inline tables
        print(f"\n[{section}.{key}]")
        for name, spec in table.items():
            inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in spec.items()) if isinstance(spec, dict) else None
            print(f"{name} = {{ {inline} }}" if inline is not None else f"{name} = {json.dumps(spec)}")


def _epoch_line(epoch: int, epochs: int, m: dict) -> str:
    top5 = f"  val_top5 {m['val_top5']:.4f}" if "val_top5" in m else ""
    return (f"epoch {epoch}/{epochs}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}  "
            f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}{top5}  val_f1_macro {m['val_f1_macro']:.4f}  "
            f"lr {m['lr']:.3g}  {m['epoch_s']:.1f}s  {m['images_per_s']:.0f} img/s")


def cmd_train(args: argparse.Namespace) -> int:
    from job import checkpoint, cpus, report, storage

    cpus.for_compute()
    s3 = resolve_config(args, config.S3Config)
    if args.resume:
        if storage.is_s3(args.resume):
            raise BadInput("--resume takes the local run folder: a run written to s3:// is published when it has finished")
        if args.config or args.set or args.print_config:
            raise BadInput("--resume takes its settings from the checkpoint: drop --config/--set, or start a new run")
        changed = sorted(k for k in [*TRAIN_FLAGS, *BOOL_FLAGS] if hasattr(args, k) and k not in api.RESUME_MAY_CHANGE)
        if changed:
            raise BadInput(f"--resume cannot change {', '.join(changed)}: only {', '.join(sorted(api.RESUME_MAY_CHANGE))} may change")
        folder = Path(args.resume) if Path(args.resume).is_dir() else Path(args.resume).parent
        if args.output and Path(args.output).resolve() != folder.resolve():
            raise BadInput(f"--resume continues in '{folder}': drop --output {args.output}")
        cfg = resolve_config(args, base=checkpoint.load(Path(args.resume))["config"])
        output = folder
    else:
        cfg = resolve_config(args)
        output = args.output
    if args.print_config:
        _print_config(cfg)
        _print_config(s3, config.S3Config.SECTION)
        return 0
    progress = not (args.quiet or args.json)
    bar = report.TqdmBar if progress and sys.stderr.isatty() else None

    def on_epoch(e) -> None:
        if progress:
            say(_epoch_line(e.epoch, cfg.epochs, e.metrics))

    try:
        with api.output_or_default(output, "train") as output:
            result = api.train(cfg, output, overwrite=args.overwrite, resume=args.resume, s3=s3, on_epoch=on_epoch,
                               bar=bar)
    except KeyboardInterrupt:
        if not storage.is_s3(str(output)) and (Path(output) / checkpoint.CHECKPOINT_NAME).is_file():
            raise Interrupted(f"interrupted: the last finished epoch is saved in {output}; "
                              f"continue with: job train --resume {output}") from None
        raise Interrupted("interrupted before the first epoch finished (or before an s3:// run was published): "
                          "nothing to resume, run the command again") from None
    if args.json:
        print(json.dumps(result.summary(), indent=2))
        return 0
    b = result.best
    print(f"job train: done in {result.seconds:.1f}s, {len(result.history)} epochs ({cfg.model} on {cfg.data})"
          + (f", {result.skipped} unreadable images skipped" if result.skipped else ""))
    print(f"best epoch {result.best_epoch}: val_acc {b['val_acc']:.4f}  val_f1_macro {b['val_f1_macro']:.4f}  val_loss {b['val_loss']:.4f}")
    if not args.quiet:
        cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_f1_macro", "lr", "epoch_s"]
        print(report.table([[h[c] for c in cols] for h in result.history], cols))
        out = result.output
        print(f"bundle:  {result.bundle}\nhistory: {out}/history.csv, {out}/history.json\nplot:    {out}/curves.png")
        print(f"next:    job evaluate {out} --data DIR   |   job predict {out} IMAGE...")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    search = resolve_config(args, config.SearchConfig)
    s3 = resolve_config(args, config.S3Config)
    if args.print_config:
        _print_config(cfg)
        _print_config(search, config.SearchConfig.SECTION)
        _print_config(s3, config.S3Config.SECTION)
        return 0
    from job import progress

    output = args.output or str(Path("runs") / search.name)
    try:
        result = api.tune(cfg, search, output, restart=args.restart, overwrite=args.overwrite,
                          progress=not (args.quiet or args.json), s3=s3)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: the experiment is saved under {search.storage}/{search.name}; "
                          "run the same command again to resume it") from None
    if args.json:
        print(json.dumps(result.summary(), indent=2))
        return 0
    print("\n".join(progress.search_summary(result)))
    if not args.quiet:
        from job import report  # after the search: it imports torch, which the search imports while Ray starts

        rows = [t.row() for t in result.trials]  # an errored trial may lack settings (seen: one lost with its node)
        columns = ["number", "trial_id", *result.best_trial.params, "epochs", result.best_trial.metric, "status"]
        print(report.table([["-" if r.get(c) is None else r[c] for c in columns] for r in rows],
                           ["#", "trial", *columns[2:]]))
        print(f"bundle:  {result.bundle}\ntrials:  {output}/trials.csv, {output}/trials.json\n"
              f"plot:    {output}/trials.png\nreport:  {output}/report.html\n"
              f"study:   optuna-dashboard {shlex.quote(result.study)}\n"
              f"next:    job evaluate {output} --data DIR   |   job predict {output} IMAGE...")
    return 0


def _load(args: argparse.Namespace):
    """The model of the bundle named on the command line, local or s3:// (verified against its manifest)."""
    return api.load(args.bundle, args.device, resolve_config(args, config.S3Config))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from job import bundle, cpus, report
    from job.files import cache_dir, write_json
    from job.storage import Location

    cpus.for_compute()
    if args.batch_size < 1:
        raise BadInput(f"--batch-size {args.batch_size} must be >= 1")
    s3 = resolve_config(args, config.S3Config)
    with api.output_or_default(args.output, "evaluate") as output:
        out = Location.parse(output, s3)  # checked before the work
        bundle.check_output(out, args.data)
        model = _load(args)
        ev = model.evaluate(args.data, args.batch_size, args.skip_bad_images)
        result = {"bundle": str(args.bundle), "data": args.data, "images": ev.images, "skipped_images": ev.skipped,
                  **ev.metrics, "per_class": ev.per_class, "classes": list(ev.classes), "confusion": ev.confusion}
        with tempfile.TemporaryDirectory(prefix="job-evaluate-", dir=cache_dir()) as staged:
            write_json(Path(staged) / EVALUATION[0], result)
            report.plot_confusion(Path(staged) / EVALUATION[1], ev.confusion, ev.classes)
            out.install(Path(staged), last=EVALUATION[0], owned=EVALUATION)
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
        print(f"\nwritten: {', '.join(str(out.join(name)) for name in EVALUATION)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from job import cpus, report

    cpus.for_compute()
    if args.top_k < 1:
        raise BadInput(f"--top-k {args.top_k} must be >= 1")
    rows = _load(args).predict(args.paths, args.top_k, skip_bad=args.skip_bad_images)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [[r["file"], *(f"{p['label']} {p['probability']:.3f}" for p in r["predictions"])] for r in rows]
    k = len(rows[0]["predictions"]) if rows else 0
    print(report.table(table, ["file", *(f"top-{i + 1}" for i in range(k))]))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from job import cpus

    cpus.for_compute()
    if not args.quiet and not args.json:
        say(f"exporting {args.bundle} as {args.format} and checking it against the bundle's model")
    result = api.export(args.bundle, args.format, args.output, data=args.check_data, overwrite=args.overwrite,
                        s3=resolve_config(args, config.S3Config))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    v = result["verified"]
    print(f"{result['output']}/{result['file']}: {args.format}, {result['num_classes']} classes, input "
          f"{'x'.join(map(str, result['input']['shape']))} ({result['library']} {result['architecture']})")
    print(f"verified on {v['images']} images at batch sizes {v['batch_sizes'][0]} and {v['batch_sizes'][1]}: top-1 agrees "
          f"on {v['top1_agree']}/{v['images']}, probabilities within {v['max_abs_prob_diff']:.1e} (allowed {v['tolerance']:.0e})")
    if not args.quiet:
        print(f"config:  {result['output']}/config.json")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from job import report

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


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code. Ctrl-C and SIGTERM (docker stop, Kubernetes) stop it cleanly."""
    args = build_parser().parse_args(argv)
    try:
        with signals.Stop():
            return args.func(args)
    except JobError as e:
        print(f"job: error: {one_line(str(e))}", file=sys.stderr)
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
        fix = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there",
               errno.EROFS: "choose a folder on a writable file system"}.get(e.errno, "fix its permissions")
        print(one_line(f"job: error: {e.strerror}: {e.filename or 'a file job writes'}: {fix}, then run again"), file=sys.stderr)
        return EXIT_FAILURE
    finally:
        sys.stdout.flush()


def entry() -> None:
    """The `job` command (and `python -m job`): main(), then a quick exit. The interpreter's own teardown of torch,
    Ray and matplotlib takes a second or more (bench/) and does nothing that a finished command needs; the atexit
    handlers (Ray's shutdown, logging) still run, and an unexpected error still ends with its traceback."""
    try:
        code = main()
    except SystemExit as e:  # argparse: --help, --version, usage errors
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
