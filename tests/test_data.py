import fcntl
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from job import data, decode
from job.errors import BadInput
from tests.conftest import make_folder, pattern

PREP = data.Preprocessing(image_size=32, resize_size=36, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")


def test_any_mode_and_suffix_is_read_and_junk_is_ignored(tmp_path, cache):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        d = tmp_path / c
        d.mkdir()
        rgb = Image.fromarray(pattern(0, rng, size=50)).resize((70, 40))  # not square
        rgb.save(d / "a.JPG")
        rgb.convert("L").save(d / "b.jpeg")
        rgb.convert("RGBA").save(d / "c.png")
        rgb.convert("P").save(d / "d.bmp")
        rgb.save(d / "e.webp")
        rgb.convert("LA").save(d / "f.png")
        (d / "notes.txt").write_text("not an image")
        rgb.save(d / ".hidden.png")
        (d / ".thumbs").mkdir()
        rgb.save(d / ".thumbs" / "t.png")
    (tmp_path / ".git").mkdir()
    folder = data.scan(tmp_path, val_fraction=0.34, seed=0)
    assert folder.classes == ("cat", "dog")
    names = sorted(os.path.basename(p) for p in folder.train.files + folder.val.files)
    assert names == sorted(["a.JPG", "b.jpeg", "c.png", "d.bmp", "e.webp", "f.png"] * 2)
    prepared = data.prepare(folder.train, folder.root, PREP, cache, workers=2)
    assert prepared.images.shape == (len(folder.train.files), 36, 36, 3) and prepared.ok.all()
    x, y = next(iter(data.Batches(prepared, PREP, 4, train=True, augment=True, seed=0)))
    assert x.shape == (4, 3, 32, 32) and x.dtype.is_floating_point is False
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_a_pipe_a_device_a_folder_and_a_link_loop_among_the_images_are_not_images(tmp_path):
    """Only regular files are read: a named pipe would wait for a writer, /dev/zero never end."""
    root = make_folder(tmp_path / "d", classes=2, per_class=3)
    os.mkfifo(root / "class_0" / "pipe.png")
    (root / "class_0" / "zero.png").symlink_to("/dev/zero")
    (root / "class_1" / "folder.png").mkdir()
    (root / "class_1" / "loop").symlink_to("..")
    found = data.scan_classes(root)
    assert {name: [os.path.basename(f) for f in files] for name, files in found.items()} == \
        {"class_0": ["img_000.png", "img_001.png", "img_002.png"], "class_1": ["img_000.png", "img_001.png", "img_002.png"]}


def test_split_is_stratified_seeded_and_disjoint(images):
    a = data.scan(images, val_fraction=0.25, seed=1)
    b = data.scan(images, val_fraction=0.25, seed=1)
    c = data.scan(images, val_fraction=0.25, seed=2)
    assert a == b and a.val.files != c.val.files
    assert sorted(a.val.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # 12 * 0.25 per class
    assert not set(a.train.files) & set(a.val.files)


def test_train_val_layout(tmp_path):
    make_folder(tmp_path, classes=2, per_class=6, split=True)
    folder = data.scan(tmp_path, 0.2, 0)
    assert len(folder.train.files) == 12 and len(folder.val.files) == 4


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "no class folders"),
        (lambda p: make_folder(p, classes=1), "only one class"),
        (lambda p: (make_folder(p, classes=2), (p / "empty").mkdir()), "has no images"),
        (lambda p: (make_folder(p / "train", classes=3), make_folder(p / "val", classes=2)), "train and val classes differ"),
    ],
)
def test_bad_folders(tmp_path, build, fragment):
    root = tmp_path / "d"
    build(root)
    with pytest.raises(BadInput, match=fragment):
        data.scan(root, 0.2, 0)


def test_corrupt_images_are_listed_or_skipped(tmp_path, cache):
    make_folder(tmp_path, classes=2, per_class=5)
    good = (tmp_path / "class_0" / "img_000.png").read_bytes()
    (tmp_path / "class_0" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "class_1" / "garbage.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    folder = data.scan(tmp_path, 0.2, 0)
    split = data.Split(folder.train.files + folder.val.files, folder.train.labels + folder.val.labels)
    prepared = data.prepare(split, tmp_path, PREP, cache, workers=1)
    assert sorted(p.split("/")[-1] for p in prepared.bad) == ["garbage.jpg", "truncated.png"]
    with pytest.raises(BadInput, match="2 unreadable image.*--skip-bad-images"):
        data.check_bad(prepared.bad, skip=False)
    assert data.check_bad(prepared.bad, skip=True) == 2
    seen = sum(len(y) for _, y in data.Batches(prepared, PREP, 4, train=False, augment=False, seed=0))
    assert seen == len(split.files) - 2


def test_decoded_once_then_cached(images, cache, monkeypatch):
    folder = data.scan(images, 0.2, 0)
    first = data.prepare(folder.val, images, PREP, cache, workers=1)
    monkeypatch.setattr(data, "_decode_all", lambda *a: pytest.fail("decoded again"))
    again = data.prepare(folder.val, images, PREP, cache, workers=1)
    assert np.array_equal(first.images, again.images) and first.fingerprint == again.fingerprint


@pytest.mark.parametrize("damage", ["array cut short", "array of another shape", "metadata cut short", "metadata of another kind"])
def test_a_damaged_cache_is_said_in_one_line_and_decoded_again(images, tmp_path, capsys, damage):
    folder = data.scan(images, 0.2, 0)
    first = data.prepare(folder.val, images, PREP, tmp_path, workers=1)
    expected, fingerprint = np.array(first.images), first.fingerprint  # a copy: the mapped file is about to change
    del first
    array = next((tmp_path / "prepared").glob("*.npy"))
    meta = array.with_suffix(".json")
    {"array cut short": lambda: os.truncate(array, array.stat().st_size // 2),
     "array of another shape": lambda: np.save(array, np.zeros((2, 36, 36, 3), np.uint8)),
     "metadata cut short": lambda: meta.write_text(meta.read_text()[:20]),
     "metadata of another kind": lambda: meta.write_text("[]")}[damage]()
    again = data.prepare(folder.val, images, PREP, tmp_path, workers=1)
    lines = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(lines) == 1 and lines[0].endswith("): decoding it again") and str(tmp_path) in lines[0], lines
    assert np.array_equal(expected, again.images) and again.fingerprint == fingerprint
    data.prepare(folder.val, images, PREP, tmp_path, workers=1)  # made whole again: read from the cache, silently
    assert "damaged" not in capsys.readouterr().err


@pytest.mark.parametrize("interpolation", sorted(decode.INTERPOLATIONS))
def test_a_grey_image_resized_in_one_band_has_the_pixels_of_its_rgb_copy(interpolation):
    """Grey images are resized before they become RGB (a third of the work): the pixels must be exactly those of
    the same image converted first, or caches and trained models would change with this speed-up."""
    import io

    def encode(img: Image.Image, fmt: str) -> bytes:
        out = io.BytesIO()
        img.save(out, fmt)
        return out.getvalue()

    rng = np.random.default_rng(0)
    for w, h in [(28, 28), (70, 40), (33, 300), (1, 7)]:
        grey = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        for fmt in ("PNG", "JPEG"):
            as_grey = encode(grey, fmt)
            as_rgb = encode(Image.open(io.BytesIO(as_grey)).convert("RGB"), "PNG")  # the same decoded pixels, 3 bands
            for size in (16, 73):
                one_band = decode.load_image(as_grey, size, interpolation)
                assert one_band.shape == (size, size, 3)
                assert np.array_equal(one_band, decode.load_image(as_rgb, size, interpolation))


def test_a_16_bit_grey_png_keeps_its_high_bits_in_one_band(tmp_path):
    """PIL's own conversion of a 16-bit grey image to 8 bits clips at 255: such a data set trained on white squares."""
    wide = np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(np.uint16)
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.roll(wide, 40 * i)).save(root / c / f"{i}.png")
    assert Image.open(root / "a" / "0.png").mode.startswith("I")
    split = data._split(data.scan_classes(root), ("a", "b"))
    prepared = data.prepare(split, root, data.Preprocessing(image_size=40, resize_size=40, mean=(0.5,) * 3,
                                                             std=(0.5,) * 3, interpolation="nearest"), tmp_path / "c", 1)
    assert prepared.images.shape == (6, 40, 40, 1)  # grey: one band
    assert np.array_equal(prepared.images[0, ..., 0], (wide >> 8).astype(np.uint8))


def test_splits_decoded_by_an_earlier_version_are_swept_when_one_is_decoded(images, tmp_path):
    folder = data.scan(images, 0.2, 0)
    data.prepare(folder.val, images, PREP, tmp_path, workers=1)
    current = sorted(p.name for p in (tmp_path / "prepared").iterdir())
    old = tmp_path / "prepared" / "0123456789abcdef01234567"
    old.with_suffix(".npy").write_bytes(b"old pixels")
    old.with_suffix(".json").write_text(json.dumps({"ok": [True], "fingerprint": "f"}, indent=2))
    data.prepare(folder.train, images, PREP, tmp_path, workers=1)  # decoded: the sweep runs
    left = sorted(p.name for p in (tmp_path / "prepared").iterdir())
    assert set(current) < set(left) and not any(name.startswith("0123456789") for name in left)


def test_a_long_strip_is_resized_without_being_made_whole():
    """An image of 1 x 1,000,000 px (2 kB) would be 224 x 224,000,000 px (150 GB) resized whole: decoded in a process
    held to 2 GB of memory, it comes out as 224 x 224. A shorter strip, small enough to resize whole, shows the region's
    resize is the same geometry (within a unit of rounding)."""
    import io

    code = ("import io, resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); from PIL import Image; "
            "from job import decode; b = io.BytesIO(); Image.new('L', (1, 1_000_000), 200).save(b, 'PNG'); "
            "a = decode.load_image(b.getvalue(), 224, 'bilinear'); print(a.shape, a.min(), a.max())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "(224, 224, 3) 200 200", r.stderr[-500:]
    rng = np.random.default_rng(0)
    strip = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (5000, 3, 3), dtype=np.uint8)).save(strip, "PNG")
    with Image.open(strip) as img:  # whole: 28 x 46,667 px, then the centre square
        whole = np.asarray(img.convert("RGB").resize((28, 46667), Image.Resampling.BILINEAR).crop((0, 23319, 28, 23347)))
    assert 28 * 5000 / 3 > decode.LONGEST  # the region's way
    assert np.abs(whole.astype(int) - decode.load_image(strip.getvalue(), 28, "bilinear").astype(int)).max() <= 1


def test_a_cache_keeps_its_name_and_fingerprint_across_versions(tmp_path, cache):
    """The cache's name and the data's fingerprint are hashed a file at a time; they must stay the hashes of the JSON
    they always were (caches made by earlier versions keep serving, a search's fingerprint check keeps matching)."""
    import hashlib
    import json

    root = make_folder(tmp_path / "d", classes=2, per_class=4)
    (root / "class_0" / "é ü.png").write_bytes((root / "class_0" / "img_000.png").read_bytes())
    (root / "class_1" / "bad.png").write_bytes(b"not an image")
    folder = data.scan(root, 0.2, 0)
    split = data.Split(folder.train.files + folder.val.files, folder.train.labels + folder.val.labels)
    prepared = data.prepare(split, root, PREP, cache, workers=2)
    stats = [(os.path.relpath(f, root), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in split.files]
    key = json.dumps([data.CACHE_VERSION, PREP.resize_size, PREP.interpolation, str(root.resolve()), stats, split.labels])
    assert (cache / "prepared" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy").is_file()
    good = [[hashlib.sha256(open(f, "rb").read()).hexdigest(), label]
            for f, label in zip(split.files, split.labels) if not f.endswith("bad.png")]
    assert prepared.fingerprint == hashlib.sha256(json.dumps(good).encode()).hexdigest()
    assert data._cache_key(data.Split((), ()), root, PREP) == hashlib.sha256(
        json.dumps([data.CACHE_VERSION, PREP.resize_size, PREP.interpolation, str(root.resolve()), [], []]).encode()
    ).hexdigest()[:24]


@pytest.mark.parametrize("threads_win", [True, False])
def test_threads_or_not_every_image_lands_in_its_row(tmp_path, monkeypatch, threads_win):
    """Where no decoding process can start, a large data set is decoded in this process: in one thread, then in
    all, and the rest the faster way (small images decode faster in one): whichever wins, every row holds its own
    image, and bad files are marked in the probe too."""
    root = make_folder(tmp_path / "d", classes=2, per_class=30)
    for i in (3, 10):  # decoded while one thread is timed, and while all are
        (root / "class_0" / f"img_{i:03d}.png").write_bytes(b"not an image")
    split = data._split(data.scan_classes(root), ("class_0", "class_1"))
    plain = data.prepare(split, root, PREP, tmp_path / "plain", workers=1)  # one thread, never timed
    monkeypatch.setattr(data, "PROBE_IMAGES", 6)
    monkeypatch.setattr(data, "DECODE_BLOCK", 2)
    monkeypatch.setattr(decode.sys, "executable", "")  # an embedded interpreter: no python to start
    # the clock as the decoding reads it: warm-up, one thread, all threads, then the rest (never read again)
    clock = iter([0, 0, 0, 10 if threads_win else 1, 0, 1 if threads_win else 10] + [0] * 100)
    monkeypatch.setattr(data, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: next(clock))}))
    used = []
    real_pool = data.concurrent.futures.ThreadPoolExecutor.map
    monkeypatch.setattr(data.concurrent.futures.ThreadPoolExecutor, "map",
                        lambda self, fn, *it: used.append(self._max_workers) or real_pool(self, fn, *it))
    probed = data.prepare(split, root, PREP, tmp_path / "probed", workers=2)
    assert used == [2] * (1 + threads_win)  # the probe; then the rest, in one chunk, if the threads won
    assert np.array_equal(plain.images, probed.images) and np.array_equal(plain.ok, probed.ok)
    assert plain.fingerprint == probed.fingerprint and plain.bad == probed.bad and len(probed.bad) == 2


@pytest.fixture
def helpers(monkeypatch):
    """Decoding processes for a 60-image set (2 images a block), and what they were: [(Decoders, its Popen list)],
    noted as they are closed (a start that fails closes the ones it started)."""
    monkeypatch.setattr(data, "PROBE_IMAGES", 6)
    monkeypatch.setattr(data, "HELPER_IMAGES", 20)  # 60 images: 3 processes at most
    monkeypatch.setattr(data, "DECODE_BLOCK", 2)
    started = []
    real = decode.Decoders.close

    def spy(self):
        if self._procs:
            started.append((self, [proc for proc, _, _ in self._procs]))
        real(self)
    monkeypatch.setattr(decode.Decoders, "close", spy)
    return started


def test_decoding_processes_fill_every_row_as_one_thread_does_and_end(tmp_path, helpers):
    root = make_folder(tmp_path / "d", classes=2, per_class=30, suffixes=(".png", ".jpg"))
    for i in (3, 44):
        (root / f"class_{i // 30}" / f"img_{i % 30:03d}.png").write_bytes(b"not an image")
    (root / "class_1" / "img_029.jpg").write_bytes((root / "class_1" / "img_028.png").read_bytes()[:150])  # cut short
    split = data._split(data.scan_classes(root), ("class_0", "class_1"))
    plain = data.prepare(split, root, PREP, tmp_path / "plain", workers=1)
    assert not helpers  # one worker: this process alone
    together = data.prepare(split, root, PREP, tmp_path / "processes", workers=4)
    (_, procs), = helpers
    assert len(procs) == 3 and all(proc.poll() is not None for proc in procs)  # 4 workers, but 20 images at least each: three, all ended
    assert np.array_equal(plain.images, together.images) and np.array_equal(plain.ok, together.ok)
    assert plain.fingerprint == together.fingerprint and plain.bad == together.bad and len(together.bad) == 3


def _grey_and_colour(root, colour=()):
    """A 60-image set saved grey ("L"), but for the files numbered in `colour` (0-59, in the split's order), and its
    copy with every file saved RGB: the same pixels in three bands. (grey root, colour root, split of grey root)."""
    grey = make_folder(root / "grey", classes=2, per_class=30)
    for i, f in enumerate(sorted(grey.rglob("*.png"))):
        img = Image.open(f).convert("L")
        if i in colour:  # its bands differ: not grey
            img = Image.fromarray((np.asarray(img.convert("RGB")) // np.array([1, 2, 3])).astype(np.uint8))
        img.save(f)
        target = root / "rgb" / f.relative_to(grey)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(f).convert("RGB").save(target)
    return grey, root / "rgb", data._split(data.scan_classes(grey), ("class_0", "class_1"))


@pytest.mark.parametrize("workers", [1, 4])
def test_a_grey_data_set_is_kept_in_one_band_and_trains_on_the_same_numbers(tmp_path, helpers, workers):
    """Grey images take a third of the cache (Fashion-MNIST at 224 px: 3.9 GB, not 11.8): one band on disk, made
    RGB on the device by `normalise`; what the model sees is what the same images in RGB give, to the bit."""
    grey_root, rgb_root, split = _grey_and_colour(tmp_path)
    rgb_split = data._split(data.scan_classes(rgb_root), ("class_0", "class_1"))
    grey = data.prepare(split, grey_root, PREP, tmp_path / "cache", workers=workers)
    rgb = data.prepare(rgb_split, rgb_root, PREP, tmp_path / "cache", workers=workers)
    assert bool(helpers) == (workers > 1)  # in processes and in this one
    assert grey.images.shape == (60, 36, 36, 1) and rgb.images.shape == (60, 36, 36, 3)
    assert np.array_equal(np.repeat(grey.images, 3, axis=-1), rgb.images) and grey.ok.all()
    arrays = sorted((tmp_path / "cache" / "prepared").glob("*.npy"), key=os.path.getsize)
    assert os.path.getsize(arrays[0]) * 2.9 < os.path.getsize(arrays[1])
    for train in (True, False):
        (xg, yg), (xc, yc) = (next(iter(data.Batches(d, PREP, 8, train=train, augment=True, seed=1))) for d in (grey, rgb))
        assert xg.shape == (8, 1, 32, 32) and torch.equal(yg, yc)
        ng, nc = data.normalise(xg, PREP), data.normalise(xc, PREP)
        assert torch.equal(ng, nc) and ng.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("workers", [1, 4])
def test_a_colour_file_among_grey_ones_decodes_the_set_again_in_colour(tmp_path, helpers, monkeypatch, capsys, workers):
    """The bands are chosen from a sample of the files' headers; a colour file that the sample did not show cannot
    go into grey rows: the set is decoded again in three bands, said in one line, and nothing is lost."""
    grey_root, rgb_root, split = _grey_and_colour(tmp_path, colour={41})
    monkeypatch.setattr(data, "_sample", lambda split: split.files[:1])  # the first file alone: grey
    again = data.prepare(split, grey_root, PREP, tmp_path / "cache", workers=workers)
    assert f"'{split.files[41]}' is in colour and the files sampled were grey: decoding this data set again, in three bands" \
        in capsys.readouterr().err
    monkeypatch.setattr(data, "looks_grey", lambda paths: False)  # three bands from the start
    plain = data.prepare(split, grey_root, PREP, tmp_path / "plain", workers=1)
    assert again.images.shape == (60, 36, 36, 3) and np.array_equal(again.images, plain.images)
    assert again.ok.all() and again.fingerprint == plain.fingerprint
    assert [p.name for p in (tmp_path / "cache" / "prepared").iterdir()] == [p.name for p in
                                                                           (tmp_path / "plain" / "prepared").iterdir()]


def test_decoding_processes_do_not_run_the_callers_script_again(tmp_path):
    """A user's script that prepares a large data set at its top level, with no `if __name__ == "__main__":` guard
    (multiprocessing's spawn and forkserver would import it again in every process, and fail)."""
    root = make_folder(tmp_path / "d", classes=2, per_class=30)
    script = tmp_path / "user.py"
    script.write_text(f"""
from pathlib import Path
from job import data, decode
data.PROBE_IMAGES, data.DECODE_BLOCK = 6, 2
started = []
class Spy(decode.Decoders):
    def __init__(self, *a):
        super().__init__(*a)
        started.append(len(self._procs))
data.Decoders = Spy
print("script ran")
split = data._split(data.scan_classes(Path({str(root)!r})), ("class_0", "class_1"))
prepared = data.prepare(split, Path({str(root)!r}), data.{PREP!r}, Path({str(tmp_path / "cache")!r}), workers=2)
print("good", int(prepared.ok.sum()), "processes", started)
""")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.split("\n")[:2] == ["script ran", "good 60 processes [2]"], r.stdout + r.stderr[-2000:]
    assert r.stderr == ""


def test_a_decoding_process_that_dies_is_a_one_line_error_and_no_cache(tmp_path, helpers, monkeypatch):
    root = make_folder(tmp_path / "d", classes=2, per_class=30)
    split = data._split(data.scan_classes(root), ("class_0", "class_1"))
    real = decode.Decoders.decode

    def killed_first(self, blocks, done):
        self._procs[0][0].kill()  # as the kernel's OOM killer would, or a crash in a decoder's C code
        return real(self, blocks, done)
    monkeypatch.setattr(decode.Decoders, "decode", killed_first)
    with pytest.raises(data.JobError, match=r"^a process decoding images ended \(signal SIGKILL\) on one of 2 files "
                       r"from .*img_00\d\.png: .*workers=1") as e:
        data.prepare(split, root, PREP, tmp_path / "cache", workers=2)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache" / "prepared").iterdir())  # no array, no metadata, no temporary file
    (_, procs), = helpers
    assert all(proc.poll() is not None for proc in procs)


def test_decoding_processes_that_cannot_start_leave_the_work_to_this_process(tmp_path, helpers, monkeypatch, capfd):
    """A package that imports in the running interpreter but not in a new one (here PIL, shadowed for new processes
    alone): one line, no traceback, and the set decoded here, the same as ever."""
    root = make_folder(tmp_path / "d", classes=2, per_class=30)
    split = data._split(data.scan_classes(root), ("class_0", "class_1"))
    plain = data.prepare(split, root, PREP, tmp_path / "plain", workers=1)
    broken = tmp_path / "broken" / "PIL"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        'raise ImportError("libjpeg.so.62: cannot open shared object file\\nits second line")\n')
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))
    here = data.prepare(split, root, PREP, tmp_path / "cache", workers=2)
    (_, procs), = helpers
    assert len(procs) == 2 and all(proc.poll() == 1 for proc in procs)  # they started, failed and ended
    err = capfd.readouterr().err
    assert "decoding processes could not start (ImportError: libjpeg.so.62: cannot open shared object file): " \
           "decoding in this process\n" in err and "Traceback" not in err and "its second line" not in err
    assert np.array_equal(plain.images, here.images) and plain.fingerprint == here.fingerprint and here.ok.all()


def test_decoding_processes_that_cannot_open_the_array_say_so_at_start(tmp_path, capfd):
    """A helper that cannot open the array file (deleted from under the decode) answers so first: an `Unstarted`
    (an OSError: the caller's in-process fallback) naming the file, every helper ended, no traceback."""
    with pytest.raises(decode.Unstarted, match=r"^.*gone\.npy: No such file or directory$") as e:
        decode.Decoders(2, str(tmp_path / "gone.npy"), 128, 8, "bilinear", 3)
    assert isinstance(e.value, OSError) and "Traceback" not in capfd.readouterr().err


def test_a_full_cache_disk_under_decoding_processes_is_the_no_room_error(tmp_path, tmpfs, helpers, monkeypatch):
    """A file system that takes the reservation but not the writes (no fallocate, a quota): a decoding process's
    failing write reaches the user as the same one-line error as a full disk anywhere else."""
    root = make_folder(tmp_path / "d", classes=2, per_class=30)
    split = data._split(data.scan_classes(root), ("class_0", "class_1"))
    monkeypatch.setattr(data, "check_room", lambda *a: None)
    monkeypatch.setattr(data, "_reserve", lambda *a: None)
    large = data.Preprocessing(image_size=96, resize_size=100, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")
    with pytest.raises(data.JobError, match=r"^the decoded data set needs 1.7 MiB in the cache folder .*JOB_CACHE"):
        data.prepare(split, root, large, tmpfs, workers=2)
    assert helpers and not list((tmpfs / "prepared").iterdir())


def test_arrays_left_by_killed_runs_are_swept_and_a_live_runs_kept(tmp_path, images):
    """A run killed while it decoded leaves its temporary array (up to a whole decoded split) in the cache; the next
    run to decode there deletes it, never the one a live run holds (its flock), nor one a run is about to lock."""
    folder = tmp_path / "cache" / "prepared"
    folder.mkdir(parents=True)
    dead, live = folder / ".tmp-dead1234.npy", folder / ".tmp-live1234.npy"
    dead.write_bytes(b"x" * 4096)
    live.write_bytes(b"y" * 4096)
    unlocked_new, stale_new = folder / ".new-fresh123.npy", folder / ".new-stale123.npy"
    unlocked_new.touch()
    stale_new.touch()
    os.utime(stale_new, (time.time() - 120,) * 2)
    held = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the live run holds it (another open file: a lock of its own)
        data.prepare(data.scan(images, 0.2, 0).val, images, PREP, tmp_path / "cache", workers=1)
        assert not dead.exists() and not stale_new.exists()
        assert live.read_bytes() == b"y" * 4096 and unlocked_new.exists()
    finally:
        os.close(held)
    assert len(list(folder.glob("*.npy"))) == 3  # the two kept, and the new run's own array


def test_batches_repeat_per_epoch_and_differ_between_epochs(images, cache):
    folder = data.scan(images, 0.2, 0)
    prepared = data.prepare(folder.train, images, PREP, cache, workers=1)
    batches = data.Batches(prepared, PREP, 8, train=True, augment=True, seed=3)

    def epoch(n):
        batches.set_epoch(n)
        return [(x.clone(), y.clone()) for x, y in batches]

    one, again, two = epoch(1), epoch(1), epoch(2)
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(one, again))
    assert any(not (a[0] == b[0]).all() for a, b in zip(one, two))
    assert sum(len(y) for _, y in one) == len(folder.train.files)


def test_the_scan_finds_the_files_rglob_finds_in_the_same_order(tmp_path):
    """The fast scan (os.scandir) lists exactly what Path.rglob + is_file listed, in Path order: the order decides
    the seeded train/val split and the cache key, so a data set keeps its split across versions."""
    root = tmp_path / "c"
    for name in ("a/x.png", "a-b/x.png", "a.b/y.PNG", "a/b/z.jpg", "a_b/1.jpeg", "Z/2.png", "a/notes.txt",
                 ".hidden/h.png", "a/.h.png", "a/.dir/q.png", "é/3.png", "a/b-c/4.png", "a/b/c/5.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "a" / "fifo.png").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "a" / "fifo.png")  # not a file
    (root / "a" / "link.png").symlink_to(root / "Z" / "2.png")  # a link to a file is a file
    (root / "linked").symlink_to(root / "a", target_is_directory=True)  # a linked folder is not followed
    expected = sorted(p for p in root.rglob("*") if data.is_image(p)
                      and not any(part.startswith(".") for part in p.relative_to(root).parts))
    assert data._images(root) == [str(p) for p in expected] and len(expected) == 10


def test_a_file_or_folder_that_goes_away_while_the_data_is_read_is_one_error_naming_it(tmp_path, cache, monkeypatch):
    root = make_folder(tmp_path / "data", classes=2, per_class=4)
    folder = data.scan(root, val_fraction=0.25, seed=0)
    gone = folder.train.files[1]
    os.unlink(gone)  # after the scan, before the cache's key is made
    with pytest.raises(BadInput, match=f"^'{gone}' went away while job read the data set: leave the data unchanged"):
        data.prepare(folder.train, folder.root, PREP, cache, workers=1)
    real_scandir = os.scandir

    def class_folder_removed(path):  # a class folder deleted between listing the classes and reading it
        if os.fspath(path).endswith("class_1"):
            raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
        return real_scandir(path)

    with monkeypatch.context() as m, pytest.raises(BadInput, match="class_1' went away while job read the data set"):
        m.setattr(os, "scandir", class_folder_removed)
        data.scan(root, val_fraction=0.25, seed=0)
