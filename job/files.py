"""Files on the local disk: where job caches data, checksums, and the one way job writes a file that others read (atomically)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

LOCK = ".job-lock"  # in a folder a run writes: who writes it now (an flock, released however that process ends)


# SHA-256s this process computed or verified while it wrote the file, by the file's identity: a bundle's weights are
# hashed once when written or downloaded, not again when the manifest is written, uploaded or checked (a 14 MB model:
# ~11 ms a pass here). Any change to the file changes its ctime, which no user can set: a changed file is hashed anew.
_DIGESTS: dict[tuple, str] = {}


def missing(path: str | Path) -> str:
    """Why `path` is not a file job can read, for an error line: "does not exist", or what is there instead (a FIFO
    would wait for a writer and /dev/zero never end, so neither is read)."""
    path = Path(path)
    if path.is_dir():
        return "is a folder, not a file"
    return "is not a regular file (a pipe or a device)" if path.exists() else "does not exist"


def make_folder(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it made, deepest first (for `unmake`)."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return made


def new_folder(base: Path) -> list[Path]:
    """A folder of this process's own: `base`, else `base`-2, -3, ... (each an exclusive mkdir, so that processes
    started in the same second never share one). Returns the folders made, deepest first (for `unmake`)."""
    made = make_folder(base.parent)
    for n in itertools.count(1):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return [path, *made]


def unmake(made: list[Path]) -> None:
    """Remove the folders `make_folder` made, those still empty: a command that fails leaves no folder behind."""
    for p in made:
        try:
            p.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def hold(folder: Path, what: str) -> Iterator[None]:
    """This process alone writes `folder` (a run's folder, or its staging) for the block: a second job given the same
    --output is refused by name instead of mixing its files with this one's. A file system without locks (rare)
    goes without. A block that wrote nothing there leaves nothing: the lock is removed while still held, and the
    folders made for it."""
    from job.errors import BadInput

    made = make_folder(folder)
    path = folder / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise BadInput(f"{what} is being written by another job ({holder}): wait for it to end, or choose another "
                           "--output") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        else:
            # a holder that ended removed the file under its lock: a lock won on that removed file holds nothing
            if not (os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path))):
                raise BadInput(f"{what} was being written by another job a moment ago: run again, or choose another "
                               "--output")
            locked = True
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            if locked and os.listdir(folder) == [LOCK]:
                path.unlink()
                unmake(made)
        os.close(fd)


def mib(n: int) -> str:
    """A number of bytes as a person reads it in a message: `1,234.5 MiB`."""
    return f"{n / (1 << 20):,.1f} MiB"


def cache_dir() -> Path:
    """Decoded data sets and materialised built-ins: $JOB_CACHE, else $XDG_CACHE_HOME/job, else ~/.cache/job; made
    here if missing, so a file or an unwritable parent in its place is one error naming the setting."""
    from job.errors import BadInput

    path = Path(os.environ.get("JOB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "job")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = "is a file, not a folder" if e.errno in (errno.EEXIST, errno.ENOTDIR) else f"cannot be made ({e.strerror})"
        raise BadInput(f"cache folder '{path}' {why}: set JOB_CACHE to a writable folder") from None
    return path


def _identity(path: Path) -> tuple:
    st = os.stat(path)
    return os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def sha256(path: Path) -> str:
    key = _identity(path)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def remember_sha256(path: Path, digest: str) -> None:
    """Record the SHA-256 of the file just written at `path` from the bytes written (hashed on the way)."""
    _DIGESTS[_identity(path)] = digest


def write_atomic(path: Path, data: bytes | bytearray | memoryview | str, durable: bool = True) -> None:
    """Write to a temporary file beside `path`, fsync (unless not `durable`: a copy in a cache, ~20 ms less), then
    rename: a reader (or a run killed mid-write) sees the old file or the new one, never half of one."""
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # a full disk says so without naming the file: name it
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2) + "\n")


def inside(root: Path, name: str) -> Path:
    """`root / name` for a relative name that comes from outside (a manifest, an object listing): refused unless it
    stays inside `root`, so such a name can never write elsewhere."""
    from job.errors import BadInput

    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\\" in name or "\x00" in name:
        raise BadInput(f"the name {name!r} would leave '{root}': the storage holds a damaged or hostile listing, "
                       "remove that object or pick another location")
    return root / name
