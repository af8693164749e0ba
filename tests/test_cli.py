"""The `job` command: what a user types, what they see, and the exit codes. Most tests call the entry point in this
process (`run_job`); a few run the installed command in a process of its own, for signals and exit codes."""

import errno
import json
import signal
import subprocess
import sys

import pytest
import torch

from job import checkpoint, model
from job.builtin import NATIVE_IMAGE_SIZE
from job.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED
from tests.conftest import TINY, assert_error, make_folder, run_job, run_job_process, start_job


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("run") / "r"
    r = run_job("train", "--data", images, *TINY, "--epochs", "2", "--output", out, "--json", env={"JOB_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_train_writes_a_complete_run(trained):
    out, summary = trained
    assert summary["epochs"] == 2 and 0 <= summary["best"]["val_acc"] <= 1
    for name in ("run.json", "checkpoint.pt", "history.json", "history.csv", "curves.png", "best/model.pt", "best/bundle.json"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert set(history[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "val_f1_macro", "lr", "epoch_s", "images_per_s"}
    header = (out / "history.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,train_acc,val_loss,val_acc")
    manifest = json.loads((out / "best" / "bundle.json").read_text())
    assert manifest["classes"] == ["class_0", "class_1", "class_2"]
    assert manifest["preprocessing"]["image_size"] == 32 and manifest["versions"]["torch"]
    assert manifest["data_fingerprint"] and manifest["files"]["model.pt"]["sha256"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_reports_the_trained_accuracy(trained, images, tmp_path):
    out, summary = trained
    r = run_job("evaluate", out, "--data", images, "--output", tmp_path / "ev", "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["images"] == 36 and len(ev["per_class"]) == 3 and sum(map(sum, ev["confusion"])) == 36
    assert (tmp_path / "ev" / "confusion.png").is_file() and (tmp_path / "ev" / "evaluation.json").is_file()
    r = run_job("evaluate", out, "--data", images, "--output", tmp_path / "ev2")
    assert r.returncode == 0 and "precision" in r.stdout and "confusion" in r.stdout


def test_evaluate_on_the_validation_split_matches_training(trained, tmp_path):
    out, summary = trained
    split = make_folder(tmp_path / "split", per_class=12, split=True)
    r = run_job("evaluate", out, "--data", split, "--output", tmp_path / "ev", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 12  # DIR/val is used when DIR has a train/val split


def test_predict_table_and_json(trained, images):
    out, _ = trained
    files = sorted((images / "class_1").iterdir())[:2]
    r = run_job("predict", out, *files, images / "class_2", "--top-k", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 14 and all(len(row["predictions"]) == 2 for row in rows)
    assert all(row["predictions"][0]["probability"] >= row["predictions"][1]["probability"] for row in rows)
    every = json.loads(run_job("predict", out, files[0], "--top-k", "9", "--json").stdout)[0]["predictions"]
    assert len(every) == 3 and sum(p["probability"] for p in every) == pytest.approx(1, abs=1e-5)  # all 3 classes
    r = run_job("predict", out / "best", files[0])
    assert r.returncode == 0 and "top-1" in r.stdout and "class_" in r.stdout


def test_predict_lists_unreadable_images_or_skips_them(trained, images, tmp_path):
    out, _ = trained
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.png").write_bytes(next((images / "class_0").iterdir()).read_bytes())
    (folder / "bad.png").write_bytes(b"\x89PNG not really")
    assert_error(run_job("predict", out, folder), EXIT_BAD_INPUT, "bad.png", "--skip-bad-images")
    r = run_job("predict", out, folder, "--skip-bad-images", "--json")
    assert r.returncode == 0 and [row["file"] for row in json.loads(r.stdout)] == [str(folder / "good.png")]


def test_output_with_a_run_is_refused_unless_overwrite(trained, images):
    out, _ = trained
    before = (out / "checkpoint.pt").read_bytes()
    r = run_job("train", "--data", images, *TINY, "--epochs", "1", "--output", out)
    assert_error(r, EXIT_BAD_INPUT, str(out), "--overwrite")
    assert (out / "checkpoint.pt").read_bytes() == before


def test_overwrite_replaces_the_run(images, tmp_path):
    out = tmp_path / "r"
    assert run_job("train", "--data", images, *TINY, "--epochs", "1", "--output", out, "--quiet").returncode == 0
    (out / "notes.txt").write_text("mine")
    r = run_job("train", "--data", images, *TINY, "--epochs", "2", "--output", out, "--overwrite", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["epochs"] == 2 and (out / "notes.txt").read_text() == "mine"
    assert len(json.loads((out / "history.json").read_text())) == 2


def bad_folder(kind, root):
    if kind == "empty class":
        make_folder(root, classes=2, per_class=3)
        (root / "class_9").mkdir()
    elif kind == "one class":
        make_folder(root, classes=1, per_class=3)
    elif kind == "no classes":
        root.mkdir()
        (root / "readme.txt").write_text("x")
    elif kind == "split mismatch":
        make_folder(root / "train", classes=3, per_class=3)
        make_folder(root / "val", classes=2, per_class=3)
    return root


@pytest.mark.parametrize(
    "kind, fragments",
    [
        ("missing", ["does not exist", "--data"]),
        ("no classes", ["no class folders", "<class>"]),
        ("empty class", ["class_9", "has no images"]),
        ("one class", ["only one class", "at least 2"]),
        ("split mismatch", ["train and val classes differ", "class_2"]),
    ],
)
def test_bad_data_folders(tmp_path, kind, fragments):
    root = bad_folder(kind, tmp_path / "data")
    r = run_job("train", "--data", root, *TINY, "--output", tmp_path / "out")
    assert_error(r, EXIT_BAD_INPUT, *fragments)
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_corrupt_images_fail_before_training_or_are_skipped(tmp_path):
    root = make_folder(tmp_path / "data", classes=2, per_class=6)
    (root / "class_0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = run_job("train", "--data", root, *TINY, "--output", tmp_path / "a")
    assert_error(r, EXIT_BAD_INPUT, "1 unreadable image", "broken.jpg", "--skip-bad-images")
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    r = run_job("train", "--data", root, *TINY, "--epochs", "1", "--output", tmp_path / "b", "--skip-bad-images", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["skipped_images"] == 1


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--lr", "0"], ["lr = 0.0", "> 0"]),
        (["--lr", "-0.1"], ["lr = -0.1"]),
        (["--step-size", "0"], ["step_size = 0", ">= 1"]),
        (["--gamma", "1.5"], ["gamma = 1.5", "(0, 1]"]),
        (["--gamma", "0"], ["gamma = 0.0"]),
        (["--epochs", "0"], ["epochs = 0", "between 1 and 10000"]),
        (["--epochs", "1000000"], ["epochs = 1000000", "between 1 and 10000"]),
        (["--batch-size", "0"], ["batch_size = 0", "between 2"]),
        (["--lr", "inf"], ["lr = 'inf'", "not a finite number"]),
        (["--lr", "nan"], ["lr = 'nan'", "not a finite number"]),
        (["--device", "cuda:x"], ["device = 'cuda:x'", "cuda:N"]),
        (["--device", "cuda:7"], ["device 'cuda:7'"]),
        (["--lr", "fast"], ["lr = 'fast'", "not a float"]),
        (["--set", "stepsize=3"], ["unknown config key 'stepsize'", "step_size"]),
        (["--model", "resnet_50"], ["unknown model 'resnet_50'", "resnet50"]),
        (["--model", "resnet18", "--weights", "IMAGENET1K_V7"], ["unknown weights 'IMAGENET1K_V7'", "IMAGENET1K_V1"]),
        (["--model", "resnet18", "--weights", "/nowhere/w.pth"], ["weights file '/nowhere/w.pth' does not exist"]),
    ],
)
def test_bad_settings(images, tmp_path, flags, fragments):
    r = run_job("train", "--data", images, "--output", tmp_path / "out", *flags)
    assert_error(r, EXIT_BAD_INPUT, *fragments)


def test_weights_file_for_another_architecture(images, tmp_path):
    torch.save(model.create("tiny_cnn", "none", 3).state_dict(), tmp_path / "tiny.pth")
    r = run_job("train", "--data", images, "--model", "mobilenet_v3_small", "--weights", tmp_path / "tiny.pth", "--output", tmp_path / "o")
    assert_error(r, EXIT_BAD_INPUT, "tiny.pth", "do not fit mobilenet_v3_small", "--weights none")


def test_torchvision_weights_missing_offline_says_where_to_put_them(images, tmp_path):
    r = run_job("train", "--data", images, "--model", "resnet18", "--output", tmp_path / "o", env={"TORCH_HOME": str(tmp_path / "th")})
    assert_error(r, EXIT_BAD_INPUT, "https://download.pytorch.org/models/resnet18-f37072fd.pth", str(tmp_path / "th"))


@pytest.mark.slow
def test_the_installed_command_exits_with_the_documented_codes(images, tmp_path):
    """The real process, as a user or a Kubernetes podFailurePolicy sees it: 0, 2, and the quick exit."""
    r = run_job_process("train", "--data", images, *TINY, "--epochs", "1", "--output", tmp_path / "o", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["epochs"] == 1, r.stderr
    assert_error(run_job_process("train", "--data", tmp_path / "none", "--output", tmp_path / "p"), EXIT_BAD_INPUT, "does not exist")
    r = run_job_process("train", "--no-such-flag")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
    assert run_job_process("--version").stdout.startswith("job ")


def test_a_read_only_file_system_met_during_a_command_is_one_line_naming_the_file(monkeypatch, capsys):
    from job import cli

    def read_only(args):
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run/checkpoint.pt")
    monkeypatch.setattr(cli, "cmd_models", read_only)
    assert cli.main(["models"]) == EXIT_FAILURE
    assert capsys.readouterr().err == "job: error: Read-only file system: /mnt/ro/run/checkpoint.pt: choose a folder " \
                                      "on a writable file system, then run again\n"


def test_usage_errors_exit_2(tmp_path):
    r = run_job("train", "--no-such-flag")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr and "Traceback" not in r.stderr
    r = run_job("evaluate", tmp_path / "nothing", "--data", tmp_path)
    assert_error(r, EXIT_BAD_INPUT, "does not exist")


def test_config_precedence_through_the_cli(tmp_path):
    (tmp_path / "c.toml").write_text("lr = 0.5\nepochs = 3\ngamma = 0.2\n")
    r = run_job("train", "--config", tmp_path / "c.toml", "--epochs", "4", "--print-config", env={"JOB_LR": "0.25", "JOB_GAMMA": "0.3"})
    assert r.returncode == 0, r.stderr
    assert "lr = 0.25" in r.stdout and "epochs = 4" in r.stdout and "gamma = 0.3" in r.stdout


def test_other_tools_job_variables_do_not_stop_a_run_and_misspellings_are_named():
    """Jenkins exports JOB_NAME and JOB_URL into every build: not ours to refuse."""
    r = run_job("train", "--print-config", env={"JOB_NAME": "build-42", "JOB_URL": "http://ci/job/42", "JOB_LRATE": "1"})
    assert r.returncode == 0, r.stderr
    assert "JOB_LRATE is not a job setting (ignored): did you mean JOB_LR?" in r.stderr
    assert "JOB_URL" not in r.stderr and "lr = 0.001" in r.stdout


def test_help_shows_each_flags_type_and_default_and_every_flag_has_help():
    from job.cli import build_parser

    parser = build_parser()
    assert "--epochs N" in run_job("train", "--help").stdout and "(default 5)" in run_job("train", "--help").stdout
    assert "--lr-range MIN,MAX" in run_job("tune", "--help").stdout
    from job import config

    settings = {f for c in config.SECTIONS for f in c.__dataclass_fields__}
    for command in parser._subparsers._group_actions[0].choices.values():
        for flag in command._actions:
            assert flag.help, flag.option_strings
            if flag.dest in settings and flag.help != "==SUPPRESS==" and flag.nargs != 0 and not flag.required:
                assert flag.metavar in ("N", "X", "MIN,MAX", "TEXT", "NAME=SPEC") and "(default " in flag.help, flag.option_strings


def test_help_does_not_import_torch():
    code = "import sys, job, job.cli; job.cli.build_parser().format_help(); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert "config" in run_job("config").stdout


def test_a_second_train_into_the_output_of_one_running_is_refused_by_name(images, tmp_path):
    """Two runs writing one folder would mix their checkpoints, histories and bundles: the second (which, like the
    first, found no finished run there) is refused while the first runs, and writes nothing there."""
    out = tmp_path / "r"
    first = start_job(["train", "--data", str(images), *TINY, "--epochs", "10000", "--lr", "0.002", "--output", str(out)],
                      stdout=subprocess.PIPE)
    for line in first.stderr:
        if line.startswith("epoch 1/"):
            break
    assert_error(run_job("train", "--data", images, *TINY, "--epochs", "1", "--output", out, "--overwrite"),
                 EXIT_BAD_INPUT, f"output '{out}' is being written by another job (process {first.pid} on ",
                 "wait for it to end, or choose another --output")
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == EXIT_INTERRUPTED, err
    saved = checkpoint.load(out)
    assert saved["config"]["lr"] == 0.002 and saved["config"]["epochs"] == 10000  # the first run's, alone
    assert json.loads((out / "run.json").read_text())["config"]["lr"] == 0.002


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_the_last_checkpoint_and_resume_finishes(images, tmp_path, signum):
    """Ctrl-C, or SIGTERM from docker stop / Kubernetes, mid-run: exit 130, the checkpoint intact, resumable."""
    out = tmp_path / "r"
    proc = start_job(["train", "--data", str(images), *TINY, "--epochs", "400", "--output", str(out)],
                     stdout=subprocess.PIPE)
    for line in proc.stderr:  # wait on the event itself: the first epoch's line comes after its checkpoint
        if line.startswith("epoch 1/"):
            break
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "job train --resume" in err and "Traceback" not in err
    state = checkpoint.load(out)
    done = state["epoch"]
    assert 1 <= done < 400 and not (out / "best").exists()
    r = run_job("train", "--resume", out, "--epochs", str(done + 2), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["resumed_from_epoch"] == done and summary["epochs"] == done + 2
    assert_error(run_job("train", "--resume", out, "--lr", "0.1"), EXIT_BAD_INPUT, "--resume cannot change lr")


def test_resume_trains_on_at_the_input_size_the_checkpoint_was_trained_at(images, tmp_path):
    """A run that left the size to the default resumes at the size its weights learnt, also after the default changed
    (fashion-mnist's went from 64 to 48 px): here tiny_cnn's default is 32 and the checkpoint's 24."""
    out = tmp_path / "r"
    flags = [flag for flag in TINY if flag not in ("--image-size", "32")]
    r = run_job("train", "--data", images, *flags, "--image-size", "24", "--epochs", "1", "--output", out, "--quiet")
    assert r.returncode == 0, r.stderr
    state = checkpoint.load(out)
    assert state["preprocessing"]["image_size"] == 24
    checkpoint.save(state | {"config": state["config"] | {"image_size": None}}, out / checkpoint.CHECKPOINT_NAME)
    r = run_job("train", "--resume", out, "--epochs", "2", "--json")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "best" / "bundle.json").read_text())
    assert manifest["preprocessing"]["image_size"] == 24 and checkpoint.load(out)["config"]["image_size"] == 24


def test_builtin_fashion_mnist_materialises_and_trains(tmp_path, cache):
    args = ["--data", "fashion-mnist", "--set", "builtin_train_per_class=12", "--set", "builtin_val_per_class=6",
            "--model", "resnet18", "--weights", "none", "--epochs", "1", "--json"]
    r = run_job("train", *args, "--output", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    root = cache / "datasets" / "fashion-mnist-12-6"
    assert len(list((root / "train").glob("*/*.png"))) == 120 and len(list((root / "val").glob("*/*.png"))) == 60
    manifest = json.loads((tmp_path / "a" / "best" / "bundle.json").read_text())
    assert len(manifest["classes"]) == 10 and manifest["preprocessing"]["image_size"] == NATIVE_IMAGE_SIZE["fashion-mnist"]
    r = run_job("train", *args, "--output", tmp_path / "b", env={"JOB_FASHION_MNIST_DIR": str(tmp_path / "none"), "JOB_CACHE": str(tmp_path / "c")})
    assert_error(r, EXIT_BAD_INPUT, "apt-get install dataset-fashion-mnist")


@pytest.mark.slow
def test_pretrained_backbone_beats_random_init_on_real_images(tmp_path):
    """EfficientNet-Lite0 on 1,000 real Fashion-MNIST photos, 2 epochs: ImageNet weights must help a lot."""
    acc = {}
    for weights in ("DEFAULT", "none"):
        r = run_job("train", "--weights", weights, "--epochs", "2", "--output", tmp_path / weights, "--json")
        assert r.returncode == 0, r.stderr
        acc[weights] = json.loads(r.stdout)["best"]["val_acc"]
    # measured: 0.64 vs 0.38; the margin leaves room for other CPUs' arithmetic
    assert acc["DEFAULT"] > acc["none"] + 0.1, acc


def test_help_and_train_never_import_ray():
    code = ("import sys, job, job.api, job.cli, job.run; job.cli.build_parser(); "
            "assert 'ray' not in sys.modules and 'optuna' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_jobs_started_together_without_an_output_each_get_their_own_folder(images, tmp_path):
    """Three `job train` started in the same second (a shell loop with &): runs/train-<time>, -2 and -3, each a
    whole run, none refused as another job's output."""
    procs = [start_job(["train", "--data", images, *TINY, "--epochs", "1", "--quiet", "--seed", str(seed)], cwd=tmp_path)
             for seed in range(3)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 3 and all((r / "best" / "bundle.json").is_file() for r in runs), runs
    seeds = {json.loads((r / "run.json").read_text())["config"]["seed"] for r in runs}
    assert seeds == {0, 1, 2}
