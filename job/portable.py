"""`job export` (job.export): a bundle's model in a form that runs without job (ONNX, TorchScript, safetensors), with a
`config.json` of its classes and preprocessing in the timm / Hugging Face style, verified before it is published.

Every export takes a normalised float32 NCHW batch of any size (`input`) and returns logits (`logits`). It is
checked at export on real images: decoded and preprocessed exactly as `job predict` does, run through job's own
model and through the exported one (ONNX Runtime; the TorchScript module as loaded back; the safetensors weights
loaded into the public timm / torchvision constructor named in config.json), at batch size 1 and at the whole
batch. The probabilities must agree within TOLERANCE[format], and so must the top-1 label of every image whose top
two probabilities are further apart than that. config.json is written last and names the model file's SHA-256.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from job import model as models
from job.errors import BadInput, JobError
from job.files import sha256, write_json
from job.inference import Model

FORMATS = ("onnx", "torchscript", "safetensors")
FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": "model.safetensors"}
CONFIG = "config.json"
EXPORT_FILES = (*FILES.values(), CONFIG)  # what an export writes into its folder, and replaces with --overwrite
# Largest difference of a probability allowed between job's model and the export: ONNX Runtime fuses and reorders
# float32 arithmetic (measured ~3e-6 on EfficientNet-Lite0's logits); the other two run PyTorch's own kernels.
TOLERANCE = {"onnx": 1e-4, "torchscript": 1e-5, "safetensors": 1e-5}
OPSET = 18


def architecture(name: str) -> tuple[str, str]:
    """(library, name) that rebuilds job's model `name` outside job: timm, torchvision, or job for its own."""
    if name == models.LITE0:
        return "timm", "tf_efficientnet_lite0"
    if name == models.TINY:
        return "job", name
    return "torchvision", name


def export(m: Model, fmt: str, folder: Path, images: torch.Tensor, source: str) -> dict:
    """Write `fmt` of `m` into `folder` and verify it on `images` (a normalised batch); returns config.json."""
    if fmt not in FORMATS:
        raise BadInput(f"--format {fmt!r} is not known: choose one of {', '.join(FORMATS)}")
    net = m.net.to("cpu").to(memory_format=torch.contiguous_format).eval()
    path = folder / FILES[fmt]
    with torch.no_grad():
        expected = net(images).float().softmax(dim=1).numpy()
        {"onnx": _onnx, "torchscript": _torchscript, "safetensors": _safetensors}[fmt](net, images, path)
        run = {"onnx": _run_onnx, "torchscript": _run_torchscript, "safetensors": _run_safetensors}[fmt]
        got = [run(path, images[:1], m), run(path, images, m)]
    verified = _compare(fmt, expected, got)
    library, arch = architecture(m.manifest["model"])
    prep = m.prep
    config = {
        "format": "job-export/1", "export_format": fmt, "file": path.name, "sha256": sha256(path),
        "library": library, "architecture": arch, "model": m.manifest["model"], "num_classes": len(m.classes),
        "label_names": list(m.classes), "id2label": {str(i): c for i, c in enumerate(m.classes)},
        "label2id": {c: i for i, c in enumerate(m.classes)},
        "pretrained_cfg": {"input_size": [3, prep.image_size, prep.image_size], "crop_pct": prep.image_size / prep.resize_size,
                           "interpolation": prep.interpolation, "mean": list(prep.mean), "std": list(prep.std)},
        "preprocessing": prep.to_dict(),
        "input": {"name": "input", "shape": ["batch", 3, prep.image_size, prep.image_size], "dtype": "float32",
                  "layout": "NCHW", "values": "RGB in [0, 1], resized to resize_size, centre-cropped to "
                  "image_size, then (x - mean) / std"},
        "output": {"name": "logits", "shape": ["batch", len(m.classes)], "meaning": "softmax gives the probabilities"},
        "source": {"bundle": source, "best_epoch": m.manifest.get("best_epoch"), "metrics": m.manifest.get("metrics")},
        "verified": verified,
    }
    write_json(folder / CONFIG, config)  # last: a folder without it is not a finished export
    return config


def _compare(fmt: str, expected: np.ndarray, got: list[np.ndarray]) -> dict:
    tolerance = TOLERANCE[fmt]
    one, whole = got
    diff = max(float(np.abs(one - expected[:1]).max()), float(np.abs(whole - expected).max()))
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > tolerance  # images whose top-1 a rounding difference cannot flip
    agree = expected.argmax(1) == whole.argmax(1)
    report = {"images": int(len(expected)), "batch_sizes": [1, int(len(expected))], "max_abs_prob_diff": diff,
              "tolerance": tolerance, "top1_agree": int(agree.sum())}
    if diff > tolerance or not agree[clear].all():
        raise JobError(f"the {fmt} export does not reproduce the model (probabilities differ by up to {diff:.2e}, "
                       f"allowed {tolerance:.0e}; top-1 agrees on {int(agree.sum())} of {len(agree)} images): "
                       "nothing was published; report this with the bundle's versions")
    return report


def _onnx(net: torch.nn.Module, images: torch.Tensor, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401 (torch's ONNX exporter needs it)
    except ImportError:
        raise BadInput("--format onnx needs the ONNX packages: pip install 'job[export]'") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (images,), input_names=["input"], output_names=["logits"], opset_version=OPSET,
                                    dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    buffer = io.BytesIO()
    program.save(buffer)
    path.write_bytes(buffer.getvalue())


def _run_onnx(path: Path, x: torch.Tensor, m: Model) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x.numpy()})
    return torch.from_numpy(logits).softmax(dim=1).numpy()


def _torchscript(net: torch.nn.Module, images: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export; LibTorch still loads it
        torch.jit.trace(net, images[:2]).save(str(path))


def _run_torchscript(path: Path, x: torch.Tensor, m: Model) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu")(x).float().softmax(dim=1).numpy()


def _safetensors(net: torch.nn.Module, images: torch.Tensor, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def _run_safetensors(path: Path, x: torch.Tensor, m: Model) -> np.ndarray:
    """Through the public constructor config.json names, not job's: the proof that the weights leave job."""
    from safetensors.torch import load_file

    library, arch = architecture(m.manifest["model"])
    n = len(m.classes)
    if library == "timm":
        import timm

        net = timm.create_model(arch, pretrained=False, num_classes=n)
    elif library == "torchvision":
        import torchvision

        extra = {"aux_logits": False, "init_weights": True} if arch in ("googlenet", "inception_v3") else {}
        net = torchvision.models.get_model(arch, weights=None, num_classes=n, **extra)
    else:
        net = models.create(arch, "none", n)
    net.load_state_dict(load_file(str(path)))
    return net.eval()(x).float().softmax(dim=1).numpy()


def check_images(m: Model, files: list[Path], limit: int = 64) -> torch.Tensor:
    """A normalised batch of up to `limit` real images, preprocessed as `job predict` does."""
    from job.inference import decode_batch

    batch = decode_batch(m.prep, files[:limit])
    if batch is None:
        raise BadInput(f"none of the {min(limit, len(files))} images to check the export with could be read: pass "
                       "--data with readable images")
    return batch
