"""Bad input, as a careless or hostile user gives it, through the real CLI: every case ends with a non-zero exit, one
`job: error:` line that names the problem, no traceback, and nothing written outside the output it names. Then
property-based fuzzing of the two things job reads from outside: settings and bundle manifests."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from job import bundle, config
from job.errors import EXIT_BAD_INPUT, BadInput
from tests.conftest import TINY, assert_error, make_folder, run_job


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "run"
    r = run_job("train", "--data", images, *TINY, "--epochs", "1", "--output", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def bomb(path: Path) -> Path:
    """A PNG that declares 20000 x 20000 pixels: a few KB on disk, 1.2 GB if decoded."""
    Image.new("L", (20000, 20000)).save(path, optimize=True)
    return path


# (what the user did, how to set it up in a folder, the command, exit code, fragments of the one error line)
CASES = {
    "lr inf": (None, ["train", "--lr", "inf"], EXIT_BAD_INPUT, ["lr = 'inf'", "finite"]),
    "lr nan in a file": (lambda d: (d / "c.toml").write_text("lr = nan\n"), ["train", "--config", "{d}/c.toml"],
                         EXIT_BAD_INPUT, ["lr = nan", "finite"]),
    "epochs absurd": (None, ["train", "--epochs", "1000000"], EXIT_BAD_INPUT, ["epochs = 1000000"]),
    "batch of one": (None, ["train", "--batch-size", "1"], EXIT_BAD_INPUT, ["batch_size = 1"]),
    "device no such gpu": (None, ["train", "--device", "cuda:x"], EXIT_BAD_INPUT, ["device = 'cuda:x'"]),
    "yaml alias bomb": (lambda d: (d / "c.yaml").write_text(
        'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
        'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\nlr: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n'),
        ["train", "--config", "{d}/c.yaml"], EXIT_BAD_INPUT, ["YAML aliases"]),
    "yaml key not a name": (lambda d: (d / "c.yaml").write_text("1: 2\n"), ["train", "--config", "{d}/c.yaml"],
                            EXIT_BAD_INPUT, ["has the key 1"]),
    "config file huge": (lambda d: (d / "c.toml").write_text("# " + "x" * (2 << 20)), ["train", "--config", "{d}/c.toml"],
                         EXIT_BAD_INPUT, ["bytes"]),
    "output is a file": (lambda d: (d / "out").write_text("x"), ["train"], EXIT_BAD_INPUT, ["is a file"]),
    "run.json truncated": (lambda d: ((d / "out").mkdir(), (d / "out" / "run.json").write_text('{"status": "ru')),
                           ["train"], EXIT_BAD_INPUT, ["run.json' is damaged"]),
    "resume a truncated checkpoint": (lambda d: ((d / "out").mkdir(), (d / "out" / "checkpoint.pt").write_bytes(b"PK\x03\x04")),
                                      ["train", "--resume", "{d}/out"], EXIT_BAD_INPUT, ["cannot be read"]),
    "resume nothing": (None, ["train", "--resume", "{d}/nowhere"], EXIT_BAD_INPUT, ["does not exist"]),
    "tune time budget nan": (None, ["tune", "--time-budget", "nan"], EXIT_BAD_INPUT, ["time_budget_s = 'nan'"]),
    "tune lr range inf": (None, ["tune", "--lr-range", "0.001,inf"], EXIT_BAD_INPUT, ["lr_range = '0.001,inf'"]),
    "a class folder named with a newline": (lambda d: (make_folder(d / "data", classes=2, per_class=4),
                                                       (d / "data" / "evil\nline two").mkdir()),
                                            ["train", "--data", "{d}/data"], EXIT_BAD_INPUT, ["/evil\\nline two' has no images"]),
    "evaluate into a class folder of its data": (
        lambda d: make_folder(d / "data", classes=3, per_class=4),
        ["evaluate", "{run}", "--data", "{d}/data", "--output", "{d}/data/class_0"], EXIT_BAD_INPUT,
        ["data/class_0' is inside the data folder", "its files would become data"]),
    "export into a class folder of its data": (
        lambda d: make_folder(d / "data", classes=3, per_class=4),
        ["export", "{run}", "--format", "onnx", "--data", "{d}/data", "--output", "{d}/data/class_1"], EXIT_BAD_INPUT,
        ["data/class_1' is inside the data folder"]),
    "tune with its experiment inside its data": (
        lambda d: make_folder(d / "data", classes=3, per_class=4),
        ["tune", "--data", "{d}/data", "--storage", "{d}/data/ray"], EXIT_BAD_INPUT,
        ["--storage '{d}/data/ray' is inside the data folder", "choose --storage outside it"]),
    "evaluate into the bundle's folder": (None, ["evaluate", "{run}", "--data", "{d}", "--output", "{run}/best"],
                                          EXIT_BAD_INPUT, ["best' is a bundle's folder (it holds bundle.json)"]),
    "predict a named pipe": (lambda d: os.mkfifo(d / "pipe.png"), ["predict", "{run}", "{d}/pipe.png"], EXIT_BAD_INPUT,
                             ["pipe.png' is not a regular file"]),
    "predict a decompression bomb": (lambda d: bomb(d / "bomb.png"), ["predict", "{run}", "{d}/bomb.png"],
                                     EXIT_BAD_INPUT, ["bomb.png", "--skip-bad-images"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_an_exit_code_no_traceback_and_nothing_written_elsewhere(case, images, trained, tmp_path):
    setup, args, code, fragments = CASES[case]
    if setup:
        setup(tmp_path)
    args = [a.format(d=tmp_path, run=trained) for a in args]
    if args[0] in ("train", "tune") and "--resume" not in args:  # a complete command, the case's flags last
        storage = ["--storage", str(tmp_path / "ray")] if args[0] == "tune" else []
        args = [args[0], "--data", str(images), *TINY, "--output", str(tmp_path / "out"), *storage, *args[1:]]
    before = files_under(tmp_path)
    r = run_job(*args)
    assert_error(r, code, *(f.format(d=tmp_path, run=trained) for f in fragments))
    written = {p for p in files_under(tmp_path) - before if "out" not in p.relative_to(tmp_path).parts[:1]}
    assert not written, written


def test_an_output_on_a_read_only_file_system_is_one_line_naming_it(trained, images, tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    assert_error(run_job("evaluate", trained, "--data", images, "--output", tmpfs / "ev"), EXIT_BAD_INPUT,
                 f"output folder '{tmpfs}/ev' is not writable (Read-only file system)", "choose a writable location")


@pytest.mark.parametrize("command", ["train", "evaluate", "export"])
def test_a_cache_setting_that_names_a_file_is_one_line_naming_it(command, trained, images, tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    args = {"train": ["train", "--data", images, *TINY, "--output", tmp_path / "out"],
            "evaluate": ["evaluate", trained, "--data", images, "--output", tmp_path / "out"],
            "export": ["export", trained, "--format", "onnx", "--data", images, "--output", tmp_path / "out"]}[command]
    assert_error(run_job(*args, env={"JOB_CACHE": str(tmp_path / "cache")}), EXIT_BAD_INPUT,
                 f"cache folder '{tmp_path}/cache' is a file, not a folder: set JOB_CACHE to a writable folder")
    assert (tmp_path / "cache").read_text() == "not a folder"


def test_a_command_that_fails_leaves_no_folder_behind(trained, tmp_path):
    """Outputs, a search's storage and the default runs/ folder are made for the work: a command refused before it
    wrote anything there leaves none of them (a folder that was there stays, without a lock file)."""
    bad = make_folder(tmp_path / "data", classes=1, per_class=4)  # one class: refused after the output's checks
    (tmp_path / "kept").mkdir()
    before = files_under(tmp_path)
    for args in (["train", "--data", bad, *TINY, "--output", tmp_path / "new" / "run"],
                 ["train", "--data", bad, *TINY, "--output", tmp_path / "kept"],
                 ["train", "--data", bad, *TINY],
                 ["evaluate", trained, "--data", bad],
                 ["tune", "--data", bad, *TINY, "--output", tmp_path / "t" / "out", "--storage", tmp_path / "t" / "ray"]):
        assert_error(run_job(*args, cwd=tmp_path), EXIT_BAD_INPUT, "only one class ('class_0')")
    assert files_under(tmp_path) == before


def test_a_bundle_whose_manifest_lists_a_path_outside_is_refused(trained, tmp_path, cache):
    copy = tmp_path / "b"
    shutil.copytree(trained / "best", copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["files"] = {"../../escaped.pt": manifest["files"]["model.pt"]}
    (copy / "bundle.json").write_text(json.dumps(manifest))
    assert_error(run_job("predict", copy, next(iter((trained.parent).glob("*")))), EXIT_BAD_INPUT, "files must list exactly")
    assert not (tmp_path.parent / "escaped.pt").exists()


def test_evaluate_skips_a_decompression_bomb_when_asked(trained, images, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    bomb(data / "class_0" / "bomb.png")
    assert_error(run_job("evaluate", trained, "--data", data, "--output", tmp_path / "ev"), EXIT_BAD_INPUT, "bomb.png")
    r = run_job("evaluate", trained, "--data", data, "--output", tmp_path / "ev", "--skip-bad-images", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["skipped_images"] == 1, r.stderr


# ---- fuzzing ---------------------------------------------------------------------------------------------------

values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                   st.lists(st.floats(), max_size=4), st.lists(st.text(max_size=5), max_size=4))
keys = st.sampled_from([f.name for c in config.SECTIONS for f in c.__dataclass_fields__.values()] + ["nope", ""])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=4), st.sampled_from(config.SECTIONS))
def test_any_settings_give_a_valid_config_or_one_named_error(values, section):
    try:
        cfg = config.resolve(env={}, overrides=config.for_section(section, values), cls=section)
    except BadInput as e:
        assert "\n" not in str(e) and len(str(e)) < 400
        return
    for value in cfg.to_dict().values():
        assert not (isinstance(value, float) and not np.isfinite(value))


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=10)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["format", "model", "num_classes", "classes", "preprocessing", "files",
                                        "config", "metrics", "other"]), json_values, max_size=9))
def test_any_manifest_is_accepted_whole_or_refused_by_name(tmp_path, manifest):
    manifest.setdefault("format", bundle.FORMAT)
    try:
        bundle.check_manifest(manifest, "bundle.json")
    except BadInput as e:
        assert "bundle.json" in str(e) and "\n" not in str(e)
