"""The container image, built and run here without a Docker engine: the project's own Dockerfile built by buildah
(`--isolation chroot`, vfs storage) from a local debootstrap copy of its base (Debian bookworm; registries cannot be
reached here, and the base's source is the only thing swapped), then run as uid 1000 with no network: `job --help`,
`job train`, `job tune`, `job evaluate` and `job export` of their outputs, every write in the folders the Dockerfile
declares.
And the README's quickstart, run as written in a fresh Debian root made by the same debootstrap.

Needs root, buildah, debootstrap and unshare (`.ci/run` installs them). Selected by `-m image`; the build takes
about 9 minutes on 2 cores, the debootstrap root is cached (keyed by its inputs) under ~/.cache/job-tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.image, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SUITE, VARIANT, MIRROR = "bookworm", "minbase", "http://deb.debian.org/debian"
IMAGE = "localhost/job:test"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
BUILD_ROOM = 30e9  # bytes free the build needs: see _need_room
UID = 1000


def _need_tools() -> None:
    missing = [t for t in ("buildah", "debootstrap", "unshare", "ip") if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        pytest.fail(f"the image tests need root and {', '.join(missing) or 'nothing more'}: run them as root after "
                    "`apt-get install buildah debootstrap iproute2` (or deselect them with -m 'not image')")


# buildah copies itself into a sealed memfd before every chroot it runs (`buildah run`, a build's RUN step), and the
# kernel refuses the seal with EBUSY while a page of that copy is still briefly referenced elsewhere (seen once, in
# CI on 2026-12-02: `job tune` in the container never started; 300 `buildah run`s here, idle and under load, did not
# repeat it). It fails before the command runs, so the command is run again; anything else is a failure.
SEAL_RACE = "sealing memfd copy: Device or resource busy"


def _subprocess(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    for attempt in range(3):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
        if r.returncode == 0 or SEAL_RACE not in r.stderr:
            break
        print(f"buildah's memfd seal refused (EBUSY), attempt {attempt + 1}: run again", file=sys.stderr)
    return r


def _run(cmd: list[str], timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    r = _subprocess(cmd, timeout, **kwargs)
    assert r.returncode == 0, f"{' '.join(cmd[:6])}... exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def rootfs_tarball() -> Path:
    """Debian bookworm (minbase) made by debootstrap, as a tarball; made once per set of inputs and cached."""
    version = _run(["debootstrap", "--version"]).stdout.strip()
    key = hashlib.sha256(json.dumps([SUITE, VARIANT, MIRROR, version]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "job-tests"
    tarball = cache / f"debian-{SUITE}-{VARIANT}-{key}.tar"
    if not tarball.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        work = cache / f"rootfs-{key}.partial"
        shutil.rmtree(work, ignore_errors=True)
        _run(["debootstrap", f"--variant={VARIANT}", SUITE, str(work), MIRROR])
        _run(["tar", "--numeric-owner", "-C", str(work), "-cf", f"{tarball}.partial", "."])
        os.replace(f"{tarball}.partial", tarball)  # a half-written tarball is never taken as finished
        shutil.rmtree(work)
    return tarball


def base_image(tmp: Path) -> str:
    """The local copy of the Dockerfile's base (`debian:bookworm-slim`): FROM scratch + the debootstrap root."""
    tarball = rootfs_tarball()
    tag = f"localhost/job-base:{tarball.stem.rsplit('-', 1)[-1]}"
    if subprocess.run([*BUILDAH, "inspect", "--type", "image", tag], capture_output=True).returncode != 0:
        context = tmp / "base"
        context.mkdir()
        os.link(tarball, context / "rootfs.tar")
        (context / "Containerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n')
        _run([*BUILDAH, "build", "--isolation", "chroot", "-t", tag, str(context)])
    return tag


def build_mounts(tmp: Path) -> list[str]:
    """`-v` options that give pip inside the build this machine's package sources: its CA bundle (package traffic
    here is TLS-intercepted) and its pip settings, with the local folders they name. A build elsewhere needs none."""
    settings = _run([sys.executable, "-m", "pip", "config", "list"]).stdout.splitlines()
    options, mounts = {}, {}
    for line in settings:
        name, _, value = line.partition("=")
        name, value = name.rsplit(".", 1)[-1], value.strip().strip("'\"")
        if name == "cert":
            continue
        options[name] = value
        for token in value.split():
            path = Path(token.removeprefix("file://"))
            if path.is_absolute() and path.exists():
                top = path.parent if name.endswith("index-url") else path  # an index's files lie beside it
                mounts[str(top)] = str(top)
    cafile = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    mounts[cafile] = "/run/job-build-ca.crt"
    conf = tmp / "pip.conf"
    conf.write_text("[global]\ncert = /run/job-build-ca.crt\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    mounts[str(conf)] = "/etc/pip.conf"
    return [arg for src, dst in mounts.items() for arg in ("-v", f"{src}:{dst}:ro")]


def _remove_leftovers() -> None:
    """Working containers of this module's images that an interrupted run left behind (each a full copy of the image
    in vfs storage), and the image itself: a failed build must not leave the disk full for every later test."""
    listed = json.loads(subprocess.run([*BUILDAH, "containers", "--json"], capture_output=True, text=True).stdout
                        or "null") or []
    ours = [c["id"] for c in listed if c.get("imagename", "").startswith(("localhost/job-base:", IMAGE))]
    if ours:
        subprocess.run([*BUILDAH, "rm", *ours], capture_output=True)
    subprocess.run([*BUILDAH, "rmi", "-f", IMAGE], capture_output=True)


def _need_room() -> None:
    """vfs storage copies the whole tree per container and buildah writes a layer's tar before storing it, so the
    build takes about four times the image (7.15 GB) at its peak: 28.3 GB more in use than before it, measured on
    2026-11-30 (`df` every second). Refused up front, with the numbers, rather than filling the disk halfway and
    failing every test after it."""
    graphroot = json.loads(_run([*BUILDAH, "info"]).stdout)["store"]["GraphRoot"]
    where = Path(graphroot)
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < BUILD_ROOM:
        pytest.fail(f"the image build needs about {BUILD_ROOM / 1e9:.0f} GB free under {graphroot}, and "
                    f"{free / 1e9:.1f} GB are: free some space (old containers: `buildah --storage-driver vfs "
                    "containers`) or deselect the image tests with -m 'not image'")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    _need_tools()
    if os.environ.get("JOB_TEST_IMAGE"):  # an image built earlier from this Dockerfile: runs it without a rebuild
        yield os.environ["JOB_TEST_IMAGE"]
        return
    _remove_leftovers()
    _need_room()
    tmp = tmp_path_factory.mktemp("image")
    base = base_image(tmp)
    started = time.monotonic()
    try:
        _run([*BUILDAH, "build", "--isolation", "chroot", "--layers=false", "--force-rm",
              "--build-arg", f"BASE={base}", *build_mounts(tmp), "-t", IMAGE, "-f", str(ROOT / "Dockerfile"),
              str(ROOT)])
    except BaseException:
        _remove_leftovers()
        raise
    seconds = time.monotonic() - started
    size = json.loads(_run([*BUILDAH, "images", "--json", IMAGE]).stdout)[0]["size"]
    print(f"image built in {seconds:.0f} s, {size}", file=sys.stderr)
    yield IMAGE
    _remove_leftovers()


@pytest.fixture(scope="module")
def container(image, tmp_path_factory):
    """A working container of the image, and host folders for its declared writable places, owned by uid 1000."""
    name = _run([*BUILDAH, "from", "--pull-never", image]).stdout.strip().splitlines()[-1]
    host = tmp_path_factory.mktemp("volumes")
    for folder in ("work", "cache", "tmp"):
        (host / folder).mkdir()
        os.chown(host / folder, UID, 0)
    yield name, host
    subprocess.run([*BUILDAH, "rm", name], capture_output=True)


def run_in(container, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`args` in the container as uid 1000, in a network namespace of its own with loopback only (nothing can be
    downloaded), the image's writable folders bound to host folders."""
    name, host = container
    binds = [arg for folder in ("work", "cache", "tmp") for arg in ("-v", f"{host / folder}:/{folder}")]
    cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
           *BUILDAH, "run", "--isolation", "chroot", "--user", str(UID), *binds, name, "--", *args]
    return _subprocess(cmd, timeout)


def test_a_refused_memfd_seal_is_run_again_and_any_other_failure_is_not(tmp_path):
    counter = tmp_path / "tries"
    script = f'echo x >> {counter}; [ $(wc -l < {counter}) -ge 2 ] || {{ echo "Close_Fd {SEAL_RACE}" >&2; exit 1; }}'
    assert _subprocess(["sh", "-c", script], timeout=10).returncode == 0
    assert counter.read_text().count("x") == 2
    counter.unlink()
    assert _subprocess(["sh", "-c", f"echo x >> {counter}; exit 1"], timeout=10).returncode == 1
    assert counter.read_text().count("x") == 1


def test_the_image_answers_help_as_a_non_root_user(container):
    r = run_in(container, "job", "--help")
    assert r.returncode == 0 and "tune" in r.stdout, r.stderr
    r = run_in(container, "id", "-u")
    assert r.stdout.strip() == str(UID)


def test_train_tune_evaluate_and_export_offline_write_only_the_declared_folders(container):
    name, host = container
    rootfs = Path(_run([*BUILDAH, "mount", name]).stdout.strip())
    marker = host / "started"
    marker.touch()
    time.sleep(1.1)  # mtimes after this are the runs' own

    r = run_in(container, "job", "train", "--epochs", "1", "--output", "/work/train")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (host / "work/train/best/bundle.json").is_file()
    r = run_in(container, "job", "tune", "--num-samples", "2", "--epochs", "1", "--output", "/work/tune", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(json.loads(r.stdout)["trials"]) == 2 and (host / "work/tune/best/bundle.json").is_file()
    r = run_in(container, "job", "evaluate", "/work/tune", "--data", "fashion-mnist", "--output", "/work/eval", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert 0 <= json.loads(r.stdout)["val_acc"] <= 1
    r = run_in(container, "job", "export", "/work/tune", "--format", "onnx", "--output", "/work/onnx", "--json")
    assert r.returncode == 0, r.stderr[-3000:]  # the export extra is in the image
    assert json.loads(r.stdout)["verified"]["top1_agree"] == 64 and (host / "work/onnx/model.onnx").is_file()

    # every file the runs wrote is uid 1000's, in the bound folders; the image's own file system is as it was
    written = [p for p in host.rglob("*") if p.lstat().st_mtime > marker.stat().st_mtime]
    assert written and all(p.lstat().st_uid == UID for p in written), [p for p in written if p.lstat().st_uid != UID]
    changed = _run(["find", str(rootfs), "-xdev", "-newer", str(marker), "-not", "-type", "d"]).stdout.split()
    changed += [d for d in _run(["find", str(rootfs), "-xdev", "-newer", str(marker), "-type", "d"]).stdout.split()
                if d not in {str(rootfs / f) for f in ("work", "cache", "tmp", "run")}]  # mount points: buildah's
    assert not changed, changed[:20]


def quickstart_command() -> str:
    """The one command of the README's quickstart, as written."""
    section = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def _remove_tree_without_mounts(root: Path) -> None:
    """`root` deleted, unless something is still mounted under it (the chroot's binds live in a mount namespace of
    their own and end with it; a bind seen here would lead the deletion into the host's own folders)."""
    mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    if not any(m == str(root) or m.startswith(f"{root}/") for m in mounted):
        shutil.rmtree(root, ignore_errors=True)


def test_the_readme_quickstart_runs_as_written_in_a_fresh_debian_root(tmp_path):
    """The quickstart in a fresh bookworm root (the image's base), as root as on a new machine or container; made
    short through job's environment settings only (JOB_TUNE_NUM_SAMPLES, JOB_EPOCHS)."""
    _need_tools()
    command = quickstart_command()
    root = tmp_path / "debian"
    root.mkdir()
    try:
        _run(["tar", "-C", str(root), "-xf", str(rootfs_tarball())])
        project = root / "root/job"
        files = _run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT).stdout.splitlines()
        for name in files:
            if (ROOT / name).is_file():
                (project / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, project / name)
        shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
        mounts = []
        for src, dst, ro in [(a.split(":")[0], a.split(":")[1], True) for a in build_mounts(tmp_path)[1::2]] + [
                ("/proc", "/proc", False), ("/dev", "/dev", False), ("/sys", "/sys", False)]:
            target = root / dst.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.mkdir(exist_ok=True) if Path(src).is_dir() else target.touch()
            mounts.append(f"mount --rbind {src} {target}" + (f" && mount -o remount,bind,ro {target}" if ro else ""))
        script = (" && ".join(mounts) + f" && exec chroot {root} env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "
                  "HOME=/root DEBIAN_FRONTEND=noninteractive JOB_TUNE_NUM_SAMPLES=2 JOB_EPOCHS=1 "
                  f"sh -c 'cd /root/job && {command}'")
        r = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, (command, r.stdout[-2000:], r.stderr[-4000:])
        assert "job tune: done" in r.stdout and (project / "runs/job-tune/best/bundle.json").is_file(), r.stdout[-2000:]
    finally:  # the root holds about 7 GB (torch with CUDA): gone now, not at the end of the session
        _remove_tree_without_mounts(root)
