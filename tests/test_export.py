"""`job export`: the best model as ONNX, TorchScript or safetensors that runs without job, checked here the way a
user outside job would run it: config.json's preprocessing written out with PIL and numpy, ONNX Runtime, torch.jit,
the public torchvision/timm constructors; the top-1 must be `job predict`'s on real images."""

import json

import numpy as np
import pytest
from PIL import Image

from job.builtin import NATIVE_IMAGE_SIZE
from job.errors import EXIT_BAD_INPUT, EXIT_FAILURE
from tests.conftest import RESNET, assert_error, run_job

pytestmark = pytest.mark.slow  # real exports (the ONNX exporter traces the model: ~10 s each)


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    r = run_job("train", "--data", images, *RESNET, "--epochs", "2", "--output", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def outside_job(config: dict, files) -> np.ndarray:
    """config.json's preprocessing, as someone without job writes it: resize the short side... here the whole image
    to resize_size (job's cache is square), centre crop image_size, scale to [0, 1], normalise; NCHW float32."""
    p = config["preprocessing"]
    interpolation = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[p["interpolation"]]
    off, size = (p["resize_size"] - p["image_size"]) // 2, p["image_size"]
    batch = []
    for f in files:
        img = Image.open(f).convert("RGB").resize((p["resize_size"], p["resize_size"]), interpolation)
        x = np.asarray(img, dtype=np.float32)[off:off + size, off:off + size] / 255
        batch.append(((x - np.array(p["mean"], np.float32)) / np.array(p["std"], np.float32)).transpose(2, 0, 1))
    return np.stack(batch).astype(np.float32)


def job_predict(run, files) -> list[str]:
    r = run_job("predict", run, *files, "--top-k", "1", "--json")
    assert r.returncode == 0, r.stderr
    return [row["predictions"][0]["label"] for row in json.loads(r.stdout)]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_an_export_runs_without_job_and_gives_job_predicts_top1(trained, images, tmp_path, fmt):
    out = tmp_path / fmt
    r = run_job("export", trained, "--format", fmt, "--output", out, "--data", images, "--json")
    assert r.returncode == 0, r.stderr
    config = json.loads(r.stdout)
    assert json.loads((out / "config.json").read_text())["sha256"] == config["sha256"]
    assert config["label_names"] == ["class_0", "class_1", "class_2"] and config["library"] == "torchvision"
    assert config["verified"]["images"] == 36 and config["verified"]["top1_agree"] == 36
    assert config["verified"]["max_abs_prob_diff"] <= config["verified"]["tolerance"]
    files = sorted(images.rglob("*.png"))[:7]  # 7: not the batch size the export was traced or checked with
    x = outside_job(config, files)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch size
        logits = session.run(["logits"], {"input": x})[0]
        assert session.run(["logits"], {"input": x[:1]})[0].shape == (1, 3)
    else:
        import torch

        if fmt == "torchscript":
            net = torch.jit.load(str(out / "model.torchscript.pt"))
        else:
            import torchvision
            from safetensors.torch import load_file

            net = torchvision.models.get_model(config["architecture"], weights=None, num_classes=config["num_classes"])
            net.load_state_dict(load_file(str(out / "model.safetensors")))
        with torch.no_grad():
            logits = net.eval()(torch.from_numpy(x)).numpy()
    assert [config["id2label"][str(i)] for i in logits.argmax(1)] == job_predict(trained, files)


def test_efficientnet_lite0_leaves_through_timm(tmp_path):
    """The default model's safetensors load into timm's public constructor, the one config.json names."""
    r = run_job("train", "--epochs", "1", "--output", tmp_path / "run", "--set", "builtin_train_per_class=4",
                "--set", "builtin_val_per_class=4", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_job("export", tmp_path / "run", "--format", "safetensors", "--output", tmp_path / "st", "--json")
    assert r.returncode == 0, r.stderr
    config = json.loads(r.stdout)
    assert (config["library"], config["architecture"]) == ("timm", "tf_efficientnet_lite0")
    size = NATIVE_IMAGE_SIZE["fashion-mnist"]
    assert config["pretrained_cfg"]["input_size"] == [3, size, size]
    assert config["verified"]["top1_agree"] == config["verified"]["images"]


def test_export_reads_and_writes_s3(trained, s3_server, images, tmp_path):
    bucket = s3_server.bucket()
    r = run_job("train", "--data", images, *RESNET, "--epochs", "1", "--output", f"s3://{bucket}/run", "--quiet",
                env=s3_server.env)
    assert r.returncode == 0, r.stderr
    r = run_job("export", f"s3://{bucket}/run", "--format", "torchscript", "--output", f"s3://{bucket}/exported",
                "--data", images, "--json", env=s3_server.env)
    assert r.returncode == 0, r.stderr
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="exported/")["Contents"])
    assert keys == ["exported/config.json", "exported/model.torchscript.pt"]


def test_bad_exports_fail_with_one_line_and_leave_nothing_half_written(trained, images, tmp_path):
    r = run_job("export", trained, "--format", "onnx", "--output", tmp_path / "o", "--data", images)
    assert r.returncode == 0, r.stderr
    assert_error(run_job("export", trained, "--format", "onnx", "--output", tmp_path / "o", "--data", images),
                 EXIT_BAD_INPUT, "already holds an export", "--overwrite")
    assert_error(run_job("export", trained, "--format", "keras", "--output", tmp_path / "k"), EXIT_BAD_INPUT, "keras")
    assert_error(run_job("export", tmp_path / "nothing", "--format", "onnx", "--output", tmp_path / "n"), EXIT_BAD_INPUT)
    assert not (tmp_path / "n").exists() or not any((tmp_path / "n").iterdir())
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "x.png").write_bytes(b"not a png")
    assert_error(run_job("export", trained, "--format", "onnx", "--output", tmp_path / "e", "--data", empty),
                 EXIT_BAD_INPUT, "could be read")
    assert not (tmp_path / "e" / "config.json").exists()
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(trained, damaged)
    (damaged / "best" / "model.pt").write_bytes(b"x" * 100)
    r = run_job("export", damaged, "--format", "safetensors", "--output", tmp_path / "d", "--data", images)
    assert r.returncode in (EXIT_BAD_INPUT, EXIT_FAILURE) and "Traceback" not in r.stderr
    assert not (tmp_path / "d" / "config.json").exists()


def test_the_python_api_exports_as_the_readme_shows(trained, images, tmp_path):
    import job

    config = job.export(trained, "torchscript", tmp_path / "ts", data=str(images))
    assert config["output"] == str(tmp_path / "ts") and (tmp_path / "ts" / "model.torchscript.pt").is_file()
    with pytest.raises(job.BadInput, match="format 'tflite' is not known"):
        job.export(trained, "tflite", tmp_path / "x")
