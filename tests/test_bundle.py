"""Bundles (bundle.py): written with a manifest last, read only when every listed file matches it, and a manifest
from outside never trusted: its shape is checked whole and its names never leave the bundle's folder."""

import json
import shutil

import pytest
import torch

from job import bundle, inference, run
from job.config import TrainConfig
from job.errors import BadInput
from job.files import sha256
from job.storage import Location


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "r"
    run.train(TrainConfig(data=str(images), model="tiny_cnn", weights="none", image_size=32, epochs=1), out)
    return out


@pytest.fixture
def copy(trained, tmp_path):
    target = tmp_path / "b"
    shutil.copytree(trained / bundle.BEST_DIR, target)
    return target


def edit(folder, change) -> None:
    manifest = json.loads((folder / bundle.MANIFEST).read_text())
    change(manifest)
    (folder / bundle.MANIFEST).write_text(json.dumps(manifest))


def test_a_run_folder_or_its_bundle_folder_loads(trained, cache):
    for where in (trained, trained / bundle.BEST_DIR):
        loaded = inference.load(Location.parse(where), cache, "cpu")
        assert loaded.classes == ("class_0", "class_1", "class_2")
    assert bundle.read(trained / bundle.BEST_DIR)["files"][bundle.WEIGHTS]["sha256"]


def test_a_damaged_file_is_refused(copy):
    with open(copy / bundle.WEIGHTS, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BadInput, match="does not match bundle.json"):
        bundle.read(copy)


def test_swapped_weights_that_the_manifest_no_longer_lists_are_refused(copy, cache):
    """A manifest whose `files` was emptied, with other weights in model.pt, must not be served."""
    torch.save({k: torch.zeros_like(v) for k, v in torch.load(copy / bundle.WEIGHTS).items()}, copy / bundle.WEIGHTS)
    edit(copy, lambda m: m.update(files={}))
    with pytest.raises(BadInput, match="files must list exactly model.pt"):
        inference.load(Location.parse(copy), cache, "cpu")


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m.pop("classes"), "'classes' is missing"),
    (lambda m: m.update(num_classes="3"), "'num_classes' is missing or not an int"),
    (lambda m: m.update(num_classes=5), "3 class names for num_classes 5"),
    (lambda m: m.update(format="other/1"), "format is 'other/1'"),
    (lambda m: m["preprocessing"].pop("mean"), "'preprocessing.mean'"),
    (lambda m: m["preprocessing"].update(mean=["a", "b", "c"]), "'preprocessing.mean' must be 3 finite numbers"),
    (lambda m: m["preprocessing"].update(image_size=-5), "'preprocessing.image_size'"),
    (lambda m: m["preprocessing"].update(interpolation=["x"]), "'preprocessing.interpolation' must be one of"),
    (lambda m: m.update(files={"../../x": {"size": 1, "sha256": "0"}}), "files must list exactly model.pt"),
    (lambda m: m["files"]["model.pt"].update(size="big"), "integer size"),
])
def test_a_malformed_manifest_is_named_not_crashed_on(copy, cache, change, fragment):
    edit(copy, change)
    with pytest.raises(BadInput, match=None) as e:
        inference.load(Location.parse(copy), cache, "cpu")
    assert fragment in str(e.value)


def test_weights_that_do_not_fit_the_head_are_refused(copy, cache):
    state = torch.load(copy / bundle.WEIGHTS)
    head = [k for k in state if k.endswith("weight")][-1]
    state[head] = torch.zeros(5, state[head].shape[1])
    torch.save(state, copy / bundle.WEIGHTS)
    listed = {"size": (copy / bundle.WEIGHTS).stat().st_size, "sha256": sha256(copy / bundle.WEIGHTS)}
    edit(copy, lambda m: m["files"]["model.pt"].update(listed))
    with pytest.raises(BadInput, match="do not fit a tiny_cnn with 3 classes"):
        inference.load(Location.parse(copy), cache, "cpu")


def test_a_manifest_that_is_not_json_is_refused(copy):
    (copy / bundle.MANIFEST).write_text('{"format": "job-bun')
    with pytest.raises(BadInput, match="not valid JSON"):
        bundle.read(copy)
