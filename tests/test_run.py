"""A training run into a folder (run.py): exact resume, what it writes, and how it claims its output."""

import json

import pytest
import torch

from job import bundle, checkpoint, data, inference, model, run
from job.config import TrainConfig
from job.errors import BadInput
from job.files import LOCK
from job.storage import Location


def tiny(images, **kw) -> TrainConfig:
    return TrainConfig(**{"data": str(images), "model": "tiny_cnn", "weights": "none", "image_size": 32,
                          "batch_size": 8, "epochs": 3, "lr": 0.05, **kw})


def no_timing(history):
    return [{k: v for k, v in h.items() if k not in ("epoch_s", "images_per_s")} for h in history]


def test_resume_ends_equal_to_an_uninterrupted_run(images, tmp_path):
    cfg = tiny(images, scheduler="step", step_size=1, gamma=0.5)
    whole = run.train(cfg, tmp_path / "whole")

    def stop_after_two(epoch):
        if epoch.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.train(cfg, tmp_path / "cut", on_epoch=stop_after_two)
    state = checkpoint.load(tmp_path / "cut")
    assert state["epoch"] == 2 and not (tmp_path / "cut" / bundle.BEST_DIR).exists()
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "running"
    resumed = run.train(TrainConfig.from_dict(state["config"]), tmp_path / "cut", resume=state)
    assert resumed.resumed_from == 2
    assert no_timing(resumed.history) == no_timing(whole.history)
    a = torch.load(tmp_path / "whole" / "best" / bundle.WEIGHTS, weights_only=True)
    b = torch.load(tmp_path / "cut" / "best" / bundle.WEIGHTS, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_and_bundle_give_identical_predictions(images, tmp_path, cache):
    cfg = tiny(images, epochs=1)
    result = run.train(cfg, tmp_path / "r")
    s = run.setup(cfg, cache)
    x, _ = next(iter(s.fit.val))
    x = data.normalise(x, s.prep)

    restored = run.setup(cfg, cache).fit
    assert checkpoint.load(tmp_path / "r")["best_model"] is None  # the best epoch is the last: its weights once
    restored.restore(checkpoint.load(tmp_path / "r"))
    trained = model.create("tiny_cnn", "none", 3)
    trained.load_state_dict(checkpoint.load(tmp_path / "r")["model"])
    trained = trained.to(memory_format=torch.channels_last)  # as job trains and predicts, on every device
    loaded = inference.load(Location.parse(result.output), cache, "cpu")
    with torch.no_grad():
        expected = trained.eval()(x)
        assert torch.equal(restored.model.eval()(x), expected)
        assert torch.equal(loaded.net(x), expected)  # 1 epoch: the best epoch is the last
    assert loaded.classes == ("class_0", "class_1", "class_2") and loaded.prep == s.prep
    assert loaded.manifest["metrics"]["val_acc"] == result.best["val_acc"]
    assert loaded.manifest["config"] == cfg.to_dict()
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert record["status"] == "done" and record["kind"] == "train" and record["best_epoch"] == 1


def test_output_with_a_run_is_claimed_only_with_overwrite_which_clears_the_old_run(images, tmp_path):
    out = tmp_path / "r"
    run.train(tiny(images, epochs=2), out)
    (out / "notes.txt").write_text("mine")
    (out / "trials.csv").write_text("from another run")
    with pytest.raises(BadInput, match="already holds another run.*--overwrite"):
        run.train(tiny(images, epochs=1), out)
    result = run.train(tiny(images, epochs=1), out, overwrite=True)
    assert len(result.history) == 1 and (out / "notes.txt").read_text() == "mine"
    assert not (out / "trials.csv").exists()  # job's own files of the old run are gone: nothing mixes


def test_an_output_that_is_a_file_is_refused_before_any_work(images, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="is a file"):
        run.train(tiny(images), tmp_path / "file")


def test_an_output_inside_the_data_folder_is_refused_before_any_work(tmp_path):
    from tests.conftest import make_folder

    data = make_folder(tmp_path / "data", classes=2, per_class=3)
    with pytest.raises(BadInput, match="is inside the data folder"):
        run.train(tiny(data), data / "runs" / "r")
    assert not (data / "runs").exists()


def test_a_full_output_disk_is_a_clean_error_and_nothing_half_written_is_taken_as_finished(images, tmp_path, tmpfs):
    from tests.conftest import RESNET, assert_error, run_job

    out = tmpfs / "run"
    r = run_job("train", "--data", images, *RESNET, "--epochs", "1", "--output", out)  # a 45 MB checkpoint
    assert_error(r, 1, "No space left on device", str(out / "checkpoint.pt"), "free space there")
    assert not (out / "checkpoint.pt").exists() and not (out / "best").exists()
    assert [p.name for p in out.iterdir() if p.name != LOCK] == ["run.json"]  # and it says the run did not finish
    assert json.loads((out / "run.json").read_text())["status"] == "running"


def test_a_cache_disk_too_small_for_the_decoded_data_is_refused_before_decoding(images, tmp_path, tmpfs):
    from tests.conftest import TINY, assert_error, run_job

    r = run_job("train", "--data", images, *TINY, "--image-size", "224", "--output", tmp_path / "out",
                env={"JOB_CACHE": str(tmpfs / "cache")})
    assert_error(r, 1, f"in the cache folder {tmpfs / 'cache' / 'prepared'}", "MiB", "JOB_CACHE")
    assert not [p for p in (tmpfs / "cache" / "prepared").iterdir()]  # no half-decoded array left behind


def test_a_cache_that_would_leave_the_disk_nearly_full_is_warned_about_with_the_numbers(images, tmp_path, tmpfs):
    from tests.conftest import TINY, run_job

    r = run_job("train", "--data", images, *TINY, "--epochs", "1", "--output", tmp_path / "out",
                env={"JOB_CACHE": str(tmpfs / "cache")})
    assert r.returncode == 0, r.stderr
    warning = next(line for line in r.stderr.splitlines() if line.startswith("warning: the decoded data set takes"))
    assert f"free in the cache folder {tmpfs / 'cache' / 'prepared'}, leaving" in warning and "of 1.0 MiB" in warning
    assert "JOB_CACHE" in warning and len(r.stderr.splitlines()) < 40  # a warning, not a traceback
