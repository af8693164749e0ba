"""S3-compatible object storage (AWS S3, MinIO, SeaweedFS): the only module that imports boto3 and pyarrow.fs.

Credentials come only from boto3's standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
profiles, roles) and are never written anywhere or printed. The endpoint comes from the `s3` settings, else
AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL; pyarrow (which Ray Tune uses) ignores those variables, so it is handed
the same endpoint and credentials explicitly. Every call has bounded timeouts and retries with backoff.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import queue
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from job.config import S3Config
from job.errors import BadInput, JobError
from job.files import inside, make_folder, remember_sha256, sha256, unmake, write_atomic, write_json

SCHEME = "s3://"
PROBE = ".job-write-probe"
MIRROR_THREADS = 16  # objects fetched at once when a data set is mirrored
UPLOAD_THREADS = 8  # files of a run uploaded at once
ONE_REQUEST = 32 << 20  # bytes: an object up to this size moves in one request, a larger one in parallel parts
PART = 16 << 20  # bytes: the size of those parts


def shown(text: str, copies: dict[Path, str]) -> str:
    """`text` (a file's name, an error) with each local copy named by the location it was given as: the user gave
    s3://..., not the cache's path. Copies of a local location name themselves."""
    for local, given in copies.items():
        if is_s3(given):
            text = text.replace(str(local), given.rstrip("/"))
    return text


@contextlib.contextmanager
def naming(copies: dict[Path, str]) -> Iterator[None]:
    """Errors raised in the block name the locations the `copies` were given as (`shown`)."""
    try:
        yield
    except JobError as e:
        if e.args and isinstance(e.args[0], str):
            e.args = (shown(e.args[0], copies),)
        raise


def is_s3(location: str | os.PathLike | None) -> bool:
    return isinstance(location, str) and location.startswith(SCHEME)


@dataclasses.dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # no leading or trailing slash; "" for the bucket's root

    @classmethod
    def parse(cls, url: str) -> S3Url:
        """Split by hand, not by urlparse: a key may hold '#' and '?' (urlparse would cut them off as a fragment or
        a query and write elsewhere). '.' and '..' parts are refused: a key is not a path, and servers differ on them
        (SeaweedFS refuses them, others keep them as names)."""
        bucket, _, key = url[len(SCHEME):].partition("/") if url.startswith(SCHEME) else ("", "", "")
        if not bucket:
            raise BadInput(f"'{url}' is not an S3 location: write s3://bucket/prefix")
        key = key.strip("/")
        if any(part in (".", "..") for part in key.split("/")):
            raise BadInput(f"'{url}' has a '.' or '..' part, which S3 keeps as a name, not a step up: write the "
                           "prefix without it")
        return cls(bucket, key)

    def join(self, *parts: str) -> S3Url:
        return S3Url(self.bucket, "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/")))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}".rstrip("/")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where the S3 API answers; no secrets here (this is saved in experiment settings)."""

    url: str | None  # None: AWS's own endpoint for the region
    region: str
    path_style: bool

    @classmethod
    def resolve(cls, url: str | None = None, region: str | None = None, path_style: bool | None = None) -> Endpoint:
        url = url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        if url and not urlparse(url).scheme in ("http", "https"):
            raise BadInput(f"S3 endpoint '{url}' needs a scheme: write e.g. http://minio:9000 or https://s3.example.com")
        # MinIO and SeaweedFS serve buckets as paths; AWS prefers virtual hosts.
        return cls(url, region, bool(url) if path_style is None else path_style)

    def describe(self) -> str:
        return self.url or f"AWS S3 ({self.region})"


class Store:
    """One S3 endpoint, with the user's credentials from boto3's chain."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=5, read_timeout=60, retries={"max_attempts": 4, "mode": "standard"},
                s3={"addressing_style": "path" if self.endpoint.path_style else "auto"},
                # job checks each download's SHA-256 itself, hashing in a second thread as it streams (Store.download);
                # botocore's own check of the server's stored checksum would hash every byte a second time, in line
                response_checksum_validation="when_required",
            )
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint.url, region_name=self.endpoint.region, config=config)
        return self._client

    # --- errors -------------------------------------------------------------------------------------------------

    def _explain(self, e: Exception, url: S3Url | str, doing: str) -> JobError:
        """One line that names the location and the fix; never the credentials."""
        from botocore import exceptions as bx

        where = f"{url} at {self.endpoint.describe()}"
        if isinstance(e, bx.NoCredentialsError):
            return BadInput(f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
        if isinstance(e, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError)):
            return JobError(f"cannot reach S3 endpoint {self.endpoint.describe()} ({type(e).__name__}) while {doing} {url}: "
                            "check AWS_ENDPOINT_URL (or --s3-endpoint) and the network")
        if isinstance(e, bx.ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"):
                return BadInput(f"S3 rejected the credentials ({code}) for {where}: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            if code in ("NoSuchBucket",):
                return BadInput(f"bucket '{S3Url.parse(str(url)).bucket}' does not exist at {self.endpoint.describe()}: create it first")
            if code in ("AccessDenied", "AllAccessDisabled", "Forbidden", "403"):
                return BadInput(f"no permission for {doing} {where} ({code}): grant s3:GetObject, s3:PutObject, "
                                "s3:DeleteObject and s3:ListBucket on it")
            if code in ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"):
                return JobError(f"what S3 received for {where} does not match the file's SHA-256 ({code}): the file "
                                "changed while it was uploaded, or was damaged on the way; run the command again")
            if code in ("NoSuchKey", "404"):
                return BadInput(f"{url} does not exist at {self.endpoint.describe()}: check the location")
            return JobError(f"S3 error {code} while {doing} {where}: {e.response.get('Error', {}).get('Message', '')}")
        if isinstance(e, bx.BotoCoreError):
            return JobError(f"S3 failure while {doing} {where}: {type(e).__name__}")
        raise e

    def _call(self, doing: str, url: S3Url, fn, **kwargs):
        from botocore import exceptions as bx

        try:
            return fn(**kwargs)
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise self._explain(e, url, doing) from None

    # --- objects --------------------------------------------------------------------------------------------------

    def check_writable(self, url: S3Url) -> None:
        """Write and delete a small probe object: wrong credentials, a missing bucket, an unreachable endpoint and
        missing permissions all fail here, within seconds, before any training."""
        probe = url.join(PROBE)
        self._call("writing to", url, self.client.put_object, Bucket=probe.bucket, Key=probe.key, Body=b"")
        self._call("deleting from", url, self.client.delete_object, Bucket=probe.bucket, Key=probe.key)

    def _unless_missing(self, url: S3Url, fn, **kwargs):
        """fn(**kwargs), or None when the object does not exist; other failures explained."""
        from botocore import exceptions as bx

        try:
            return fn(**kwargs)
        except bx.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._explain(e, url, "reading") from None
        except bx.BotoCoreError as e:
            raise self._explain(e, url, "reading") from None

    def exists(self, url: S3Url) -> bool:
        return self._unless_missing(url, self.client.head_object, Bucket=url.bucket, Key=url.key) is not None

    def read_bytes(self, url: S3Url) -> bytes | None:
        """The object's content; None when it does not exist."""
        found = self._unless_missing(url, self.client.get_object, Bucket=url.bucket, Key=url.key)
        return None if found is None else found["Body"].read()

    def write_json(self, url: S3Url, value: dict, only_new: bool = False) -> bool:
        """Write the object; with `only_new`, only if there is none yet (a conditional PUT: S3's way to create
        atomically), returning False when there was one."""
        from botocore import exceptions as bx

        body = (json.dumps(value, indent=2) + "\n").encode()
        extra = {"IfNoneMatch": "*"} if only_new else {}
        try:
            self.client.put_object(Bucket=url.bucket, Key=url.key, Body=body, ContentType="application/json", **extra)
        except bx.ClientError as e:
            if only_new and e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise self._explain(e, url, "writing") from None
        except bx.BotoCoreError as e:
            raise self._explain(e, url, "writing") from None
        return True

    def listing(self, url: S3Url) -> dict[str, tuple[int, str]]:
        """{relative key: (size, etag)} for every object below `url`."""
        prefix = url.key + "/" if url.key else ""
        found = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    found[obj["Key"][len(prefix):]] = (obj["Size"], obj["ETag"].strip('"'))
        except Exception as e:  # botocore raises from inside the paginator
            raise self._explain(e, url, "listing") from None
        return found

    def delete(self, url: S3Url) -> None:
        self._call("deleting", url, self.client.delete_object, Bucket=url.bucket, Key=url.key)

    def delete_prefix(self, url: S3Url) -> None:
        keys = [url.join(k).key for k in self.listing(url)]
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            self._call("deleting", url, self.client.delete_objects, Bucket=url.bucket, Delete={"Objects": chunk})

    def upload(self, path: Path, url: S3Url) -> None:
        """Upload one file, recording its SHA-256 as the object's metadata, and have it verified.

        Up to ONE_REQUEST bytes: one PUT that carries the file's SHA-256 as its S3 checksum, so the server hashes
        what it stores and refuses the PUT unless they agree (BadDigest); its answer echoes the checksum. A server
        that ignores S3 checksums (none is echoed), or a larger file (parallel parts, each part's SHA-256 checked by
        the server), is read back: size and recorded SHA-256.
        """
        from boto3.s3.transfer import TransferConfig

        digest, size = sha256(path), path.stat().st_size
        recorded = {"sha256": digest}
        if size <= ONE_REQUEST:
            checksum = base64.b64encode(bytes.fromhex(digest)).decode()
            with open(path, "rb") as body:
                sent = self._call("uploading to", url, self.client.put_object, Bucket=url.bucket, Key=url.key,
                                  Body=body, ChecksumSHA256=checksum, Metadata=recorded)
            if sent.get("ChecksumSHA256") == checksum:
                return
        else:
            self._call("uploading to", url, self.client.upload_file, Filename=str(path), Bucket=url.bucket, Key=url.key,
                       ExtraArgs={"Metadata": recorded, "ChecksumAlgorithm": "SHA256"},
                       Config=TransferConfig(multipart_threshold=ONE_REQUEST, multipart_chunksize=PART))
        head = self._call("checking", url, self.client.head_object, Bucket=url.bucket, Key=url.key)
        if head["ContentLength"] != size or head.get("Metadata", {}).get("sha256") != digest:
            raise JobError(f"{url} does not read back as uploaded (size or SHA-256 differs): run the command again")

    def download(self, url: S3Url, path: Path, digest: str | None = None) -> None:
        """Download one object to `path` (a temporary file beside it, renamed when whole and verified): its size,
        and its SHA-256 against `digest` (a manifest's) or else the one job recorded when it uploaded the object.
        A mismatch is fetched once more (damage on the way) before the stored object is called damaged.

        Up to ONE_REQUEST bytes the object streams from one GET and is hashed on the way (measured on loopback
        S3, 2 cores: a 14 MB model in 29-37 ms against 38-48 ms for boto3's download_file, which asks for the size
        first and then fetches parts); a larger object comes in parallel ranged parts and is hashed after."""
        tmp = None
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                # The GET goes out while the folder and the temporary file are made: a new cache folder (up to seven
                # levels) took as long as that round trip here, ~5 ms each (measured: loopback S3, 2 cores)
                asked = pool.submit(self._get, url)
                try:
                    tmp = _temporary_beside(path)
                except BaseException:
                    with contextlib.suppress(Exception):
                        asked.result()["Body"].close()
                    raise
            got = asked.result()
            for attempt in (1, 2):
                found, expected = self._fetch(url, tmp, digest, got if attempt == 1 else self._get(url))
                if found is not None and (not expected or found == expected):
                    break
                if attempt == 2:
                    raise BadInput(f"{url} is damaged: its size or SHA-256 is not the one recorded when it was written "
                                   "(downloaded twice): write it again (run the command that made it)")
            os.replace(tmp, path)
            remember_sha256(path, found)
        except OSError as e:
            if e.filename is None and e.errno is not None:  # a full disk says so without naming the file: name it
                raise OSError(e.errno, e.strerror, str(path)) from None
            raise
        finally:
            if tmp is not None and tmp.exists():
                tmp.unlink()

    def _get(self, url: S3Url) -> dict:
        return self._call("downloading", url, self.client.get_object, Bucket=url.bucket, Key=url.key)

    def _fetch(self, url: S3Url, tmp: Path, digest: str | None, got: dict) -> tuple[str | None, str | None]:
        """(SHA-256 of what `tmp` now holds, or None when its size is not the object's; the SHA-256 it should have),
        from the answer `got` to a GET of `url`."""
        from boto3.s3.transfer import TransferConfig
        from botocore import exceptions as bx

        size, expected = got["ContentLength"], digest or got.get("Metadata", {}).get("sha256")
        if size <= ONE_REQUEST:
            with open(tmp, "wb") as f:
                h = Hasher()
                try:
                    for chunk in got["Body"].iter_chunks(256 << 10):
                        f.write(chunk)
                        h.update(chunk)
                except bx.BotoCoreError as e:
                    raise self._explain(e, url, "downloading") from None
                finally:
                    found = h.hexdigest()
                return (found if f.tell() == size else None), expected
        got["Body"].close()
        self._call("downloading", url, self.client.download_file, Bucket=url.bucket, Key=url.key, Filename=str(tmp),
                   Config=TransferConfig(multipart_threshold=ONE_REQUEST, multipart_chunksize=PART))
        return (sha256(tmp) if tmp.stat().st_size == size else None), expected

    def refresh(self, url: S3Url, path: Path) -> bool:
        """Download one object unless `path` already holds it (same size and ETag); True when it was downloaded."""
        head = self._call("reading", url, self.client.head_object, Bucket=url.bucket, Key=url.key)
        stamp = path.with_name(f".{path.name}.etag")
        seen = [head["ContentLength"], head["ETag"].strip('"')]
        if path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == seen and path.stat().st_size == seen[0]:
            return False
        self.download(url, path)
        stamp.write_text(json.dumps(seen))
        return True

    def mirror(self, url: S3Url, folder: Path) -> int:
        """Mirror every object below `url` into `folder`; unchanged objects (same size and ETag) are not fetched
        again. Returns how many objects were downloaded.

        A data set is many small objects, each a round trip: they are fetched MIRROR_THREADS at a time through
        pyarrow's S3 client, whose requests run in C++ without Python's lock. Measured (bench/, storage section,
        10,000 objects of 2 kB on loopback, 2 cores): ~2.8x the one-at-a-time loop with a pool of threads over
        boto3 (Python's per-request work is the bound), 6.4x through pyarrow; each local path comes from a key
        checked here, never from the server's own listing later (as pyarrow.fs.copy_files would take it)."""
        index_path = folder / ".job-sync.json"
        try:
            index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        except ValueError:
            index = {}  # a damaged index only costs a fresh download
        remote = {k: v for k, v in self.listing(url).items() if not k.endswith("/") and k != PROBE}
        if not remote:
            raise BadInput(f"{url} holds no objects at {self.endpoint.describe()}: upload the data set first, or check the prefix")
        local = {rel: inside(folder, rel) for rel in remote}  # a key is data, never a path to trust: all checked first
        todo = [rel for rel, (size, etag) in sorted(remote.items())
                if not (index.get(rel) == [size, etag] and local[rel].is_file() and local[rel].stat().st_size == size)]
        try:
            arrow = self._arrow() if todo else None
            with concurrent.futures.ThreadPoolExecutor(MIRROR_THREADS) as pool:
                jobs = {pool.submit(self._stream, arrow, url.join(rel), local[rel], remote[rel][0]): rel for rel in todo}
                try:
                    for done in concurrent.futures.as_completed(jobs):
                        done.result()
                        index[jobs[done]] = list(remote[jobs[done]])
                except BaseException:
                    for job in jobs:
                        job.cancel()
                    raise
        finally:
            for rel in set(index) - set(remote):  # gone upstream: drop our copy (only ever files we fetched)
                inside(folder, rel).unlink(missing_ok=True)
                del index[rel]
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(index_path, json.dumps(index))  # what was fetched counts, even when the sync fails midway
        return len(todo)

    def _arrow(self):
        """pyarrow's S3 client on this endpoint with this process's credentials as boto3 finds them now."""
        import boto3

        creds = boto3.session.Session().get_credentials()
        if creds is None:
            raise self._no_credentials()
        return self._pyarrow_s3(None if refreshes(creds) else creds.get_frozen_credentials())

    def _no_credentials(self) -> BadInput:
        return BadInput(f"no S3 credentials for {self.endpoint.describe()}: set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or a role)")

    def _stream(self, arrow, url: S3Url, path: Path, size: int) -> None:
        """One object to `path` through pyarrow (a temporary file beside it, renamed when whole)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    with arrow.open_input_stream(f"{url.bucket}/{url.key}") as src:
                        shutil.copyfileobj(src, f, 1 << 20)
                except OSError as e:
                    if e.errno is not None:
                        raise  # the local disk's (a full disk names its file)
                    raise arrow_failure(e, f"downloading {url} at {self.endpoint.describe()}") from None
            if os.path.getsize(tmp) != size:
                raise JobError(f"{url} changed while it was downloaded (size {os.path.getsize(tmp)}, listed {size}): "
                               "run again")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def upload_folder(self, folder: Path, url: S3Url, last: str) -> None:
        """Upload every file of `folder` below `url`, UPLOAD_THREADS at a time; the file `last` (a manifest) after
        all others are in place."""
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        target = {p: url.join(p.relative_to(folder).as_posix()) for p in files}
        first = [p for p in files if p.relative_to(folder).as_posix() != last]
        with concurrent.futures.ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            jobs = [pool.submit(self.upload, p, target[p]) for p in first]
            try:
                for done in jobs:
                    done.result()  # the first failure is raised, and the manifest is not uploaded
            except BaseException:
                for job in jobs:
                    job.cancel()
                raise
        for p in set(files) - set(first):
            self.upload(p, target[p])

    def pyarrow_fs(self):
        """A pyarrow filesystem for Ray Tune on this endpoint (pyarrow ignores the endpoint variables: the endpoint
        is handed to S3FileSystem explicitly). Ray pickles it into its experiment files and ships it to workers, so
        what it pickles is never a key:

        - credentials that expire and refresh (a container or instance role, web identity, SSO, assume-role):
          pyarrow's own S3FileSystem with no keys, so that in every process the AWS SDK's chain finds them and
          renews them as they expire (a two-day search outlives hour-long role credentials);
        - static keys: handed to S3FileSystem inside each process only, from that process's own chain.
        """
        from pyarrow import fs

        creds = credentials()
        if creds is None:
            raise self._no_credentials()
        if refreshes(creds):
            return self._pyarrow_s3(None)
        return fs.PyFileSystem(_arrow_handler(self.endpoint))

    def _pyarrow_s3(self, frozen):
        """pyarrow's S3FileSystem on this endpoint: with these static keys, or (None) with the AWS SDK's chain."""
        from pyarrow import fs

        kwargs = dict(region=self.endpoint.region, connect_timeout=5, request_timeout=60)
        if frozen is not None:
            kwargs |= dict(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
        if self.endpoint.url:
            parsed = urlparse(self.endpoint.url)
            kwargs |= dict(endpoint_override=parsed.netloc, scheme=parsed.scheme, force_virtual_addressing=False)
        return fs.S3FileSystem(**kwargs)


class Hasher:
    """SHA-256 of a stream, computed in its own thread while the caller receives and writes the next chunk (hashlib
    and file writes release Python's lock): measured, a 14 MB model downloaded from loopback S3 on 2 cores in 37 ms
    this way against 66 ms hashed in line."""

    def __init__(self):
        self._h, self._chunks = hashlib.sha256(), queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._h.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def hexdigest(self) -> str:
        self._chunks.put(None)
        self._thread.join()
        return self._h.hexdigest()


class Location:
    """Where something of job's lives: a local folder or s3://bucket/prefix, behind one interface.

    The one owner of "local or remote": commands parse every location they are given into one of these and never
    branch on the kind themselves. It checks writability (a probe file or object, before any compute), claims an
    output for a run, stages a run locally and publishes it, reads and writes the JSON records of runs and
    experiments, and pulls remote data, weights and bundles into the cache.
    """

    def __init__(self, text: str, endpoint: Endpoint | None = None):
        self.remote = is_s3(text)
        if self.remote:
            self.url = S3Url.parse(text)
            self.store = Store(endpoint or Endpoint.resolve())
        else:
            self.path = Path(text).expanduser()

    @classmethod
    def parse(cls, text: str | os.PathLike, s3: S3Config | None = None) -> Location:
        text = os.fspath(text)
        if not str(text).strip():
            raise BadInput("an empty location was given: pass a folder or s3://bucket/prefix")
        endpoint = None
        if is_s3(text):
            s3 = s3 or S3Config()
            endpoint = Endpoint.resolve(s3.endpoint, s3.region, s3.path_style)
        return cls(text, endpoint)

    def __str__(self) -> str:
        return str(self.url) if self.remote else str(self.path)

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def join(self, *parts: str) -> Location:
        child = Location.__new__(Location)
        child.remote = self.remote
        if self.remote:
            child.url, child.store = self.url.join(*parts), self.store
        else:
            child.path = self.path.joinpath(*parts)
        return child

    # --- checks ---------------------------------------------------------------------------------------------------

    def check_writable(self, what: str | None = None) -> None:
        """Write and delete a probe (file or object) now, so a read-only place, wrong credentials or a missing bucket
        fail within seconds, before any work. `what` names it in the error (an output by default)."""
        what = what or ("output" if self.remote else "output folder")
        if self.remote:
            self.store.check_writable(self.url)
            return
        if self.path.exists() and not self.path.is_dir():
            raise BadInput(f"{what} '{self.path}' is a file: pass a folder")
        try:
            made = make_folder(self.path)
            probe = self.path / PROBE
            probe.write_bytes(b"")
            probe.unlink()
            unmake(made)  # made again when the work writes there: a command that fails before leaves no folder
        except OSError as e:
            raise BadInput(f"{what} '{self.path}' is not writable ({e.strerror}): choose a writable location") from None

    def others_may_write(self) -> str | None:
        """Why someone other than this user could change what is here (a local folder another user owns, or one
        that every user may write to, without the sticky bit); None when no one can. On S3 the bucket's policy decides."""
        if self.remote:
            return None
        for folder in (self.path, *self.path.parents):
            if not folder.exists():
                continue
            st = folder.stat()
            if folder == self.path and st.st_uid != os.getuid():
                return f"'{folder}' belongs to another user (uid {st.st_uid})"
            if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
                return f"'{folder}' may be written by other users (mode {stat.filemode(st.st_mode)})"
            return None  # the nearest existing folder decides
        return None

    def claim(self, overwrite: bool, owner: str | None = None, hint: str = "", data: str | None = None) -> None:
        """Make this the output of a run: writable, not inside the run's `data` folder (its files would be taken
        for data next time), and holding no other run unless `overwrite`. The run that wrote it (`owner`, e.g. a
        search's experiment) may write it again."""
        self.outside(data)
        self.check_writable()
        self.check_free(overwrite, owner, hint)

    def check_free(self, overwrite: bool, owner: str | None = None, hint: str = "") -> None:
        """`claim`'s last check alone (holding no other run unless `overwrite` or it is `owner`'s): asked again once
        this process holds the folder, since a run that held it a moment ago may have ended."""
        previous = self.read_json(RUN_FILE)
        if previous is None or overwrite or (owner is not None and previous.get("experiment") == owner):
            return
        raise BadInput(f"output '{self}' already holds another run: pass --overwrite to replace it, {hint}"
                       "or choose another --output")

    def outside(self, data: str | None, flag: str = "--output") -> None:
        """Refuse this (given as `flag`) inside the local `data` folder: what a command writes there (a model, a plot
        in PNG, a search's experiment) would be taken for data, a class or an image of one, the next time."""
        if data and not self.remote and not is_s3(data) and Path(data).expanduser().is_dir():
            root = Path(data).expanduser().resolve()
            if self.path.resolve().is_relative_to(root):
                raise BadInput(f"{flag} '{self}' is inside the data folder '{data}': its files would become data; "
                               f"choose {flag} outside it")

    # --- records --------------------------------------------------------------------------------------------------

    def exists(self, name: str = "") -> bool:
        target = self.join(name) if name else self
        if self.remote:
            return target.store.exists(target.url)
        return target.path.exists()

    def has_files(self) -> bool:
        if self.remote:
            return bool(self.store.listing(self.url))
        return self.path.is_dir() and any(self.path.iterdir())

    def read_json(self, name: str) -> dict | None:
        """A JSON record (run.json, an experiment's settings, a manifest); None when it does not exist. A damaged one
        is named, not crashed on."""
        target = self.join(name)
        if self.remote:
            body = target.store.read_bytes(target.url)
        else:
            try:
                body = target.path.read_bytes() if target.path.is_file() else None
            except OSError as e:
                raise BadInput(f"'{target}' cannot be read ({e.strerror}): fix its permissions") from None
        if body is None:
            return None
        try:
            value = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            value = None
        if not isinstance(value, dict):
            raise BadInput(f"'{target}' is damaged (not a JSON object): restore it, or delete it and run again")
        return value

    def write_json(self, name: str, value: dict) -> None:
        """Atomically: a local temporary file renamed over the old one; one PUT on S3 (an object is whole or absent)."""
        target = self.join(name)
        if self.remote:
            target.store.write_json(target.url, value)
        else:
            write_json(target.path, value)

    def create_json(self, name: str, value: dict) -> bool:
        """Write a record only if there is none yet, atomically (O_EXCL; a conditional PUT on S3): False if there was."""
        target = self.join(name)
        if self.remote:
            return target.store.write_json(target.url, value, only_new=True)
        target.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.path.name}.", dir=target.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(value, indent=2) + "\n")
            os.link(tmp, target.path)  # whole, and only if the name is free
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def delete(self) -> None:
        """This file or object, or everything below this folder or prefix (the caller has checked it is ours)."""
        if self.remote:
            self.store.delete_prefix(self.url)
            self.store.delete(self.url)
        elif self.path.is_dir():
            shutil.rmtree(self.path)
        else:
            self.path.unlink(missing_ok=True)

    # --- moving runs and data -------------------------------------------------------------------------------------

    def stage(self, cache: Path) -> Path:
        """The local folder a run is written into (made by `files.hold`): this folder, or for s3:// a folder in the
        cache that `publish` uploads when the run has finished."""
        if not self.remote:
            return self.path
        return cache / "staging" / hashlib.sha256(str(self).encode()).hexdigest()[:16]

    def publish(self, staged: Path, last: str, owned: tuple[str, ...] = ()) -> None:
        """Make a finished run in `staged` visible here; `last` (a manifest) becomes visible after every other file.
        Files or folders named in `owned` (a run's own) that this run did not write are removed: two runs' files
        never mix."""
        if self.remote:
            self.store.delete(self.url.join(last))  # first: a half-replaced run is never taken as complete
            for name in owned:
                if not (staged / name).exists():
                    self.join(name).delete()
            self.store.upload_folder(staged, self.url, last=last)

    def install(self, staged: Path, last: str, owned: tuple[str, ...] = ()) -> None:
        """`publish` for files staged in another local folder: each is copied in under a temporary name and renamed,
        `last` (a manifest) after every other file; files named in `owned` that the stage lacks are removed."""
        if self.remote:
            return self.publish(staged, last, owned)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / last).unlink(missing_ok=True)  # first: a half-replaced folder is never taken as complete
        for name in owned:
            if not (staged / name).exists() and (self.path / name).is_file():
                (self.path / name).unlink()
        for f in sorted((f for f in staged.iterdir() if f.is_file()), key=lambda f: f.name == last):
            partial = self.path / (f.name + ".partial")
            shutil.copyfile(f, partial)
            os.replace(partial, self.path / f.name)

    def pull(self, cache: Path, folder: bool = False) -> Path:
        """A local path holding this location's content: itself, or for s3:// a copy in the cache (a folder is
        mirrored, a file downloaded; unchanged objects are not downloaded again)."""
        if not self.remote:
            return self.path
        local = self.cache_path(cache)
        if folder:
            self.store.mirror(self.url, local)
        else:
            self.store.refresh(self.url, local)
        return local

    def cache_path(self, cache: Path) -> Path:
        """Where `pull` keeps a copy of this location in the cache."""
        return cache / "s3" / self.url.bucket / self.url.key if self.remote else self.path

    def pull_files(self, files: dict[str, str], into: Path) -> None:
        """Download the named files below this location into `into`: {name: SHA-256}, from a manifest (each name is
        checked to stay inside; each download is checked against its SHA-256)."""
        for name, digest in files.items():
            target = inside(into, name)
            if self.remote:
                if not (target.is_file() and sha256(target) == digest):  # already in the cache: not fetched again
                    self.store.download(self.url.join(name), target, digest)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(inside(self.path, name), target)

    def push(self, local: Path) -> None:
        """Copy the local file `local` here (a record kept locally while it changes, e.g. the study's journal)."""
        if self.remote:
            self.store.upload(local, self.url)
        elif local.resolve() != self.path.resolve():
            write_atomic(self.path, local.read_bytes())

    def for_ray(self) -> tuple[str, object | None]:
        """(storage_path, storage_filesystem) for Ray Tune's RunConfig."""
        if self.remote:
            return f"{self.url.bucket}/{self.url.key}".rstrip("/"), self.store.pyarrow_fs()
        return str(self.path.resolve()), None


RUN_FILE = "run.json"  # in every run's output: what wrote it, its status and result


def arrow_failure(e: OSError, doing: str, fix: str = "") -> JobError:
    """One of pyarrow's S3 errors (they carry no errno, and no key) as one line."""
    return JobError(f"S3 failure while {doing}: {str(e).splitlines()[0][:200]}" + (f": {fix}" if fix else ""))


def _temporary_beside(path: Path) -> Path:
    """A new empty file in `path`'s folder (made if missing), named to be renamed onto `path` once finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    return Path(tmp)


_CREDENTIALS: list = []  # this process's credentials, resolved once from boto3's chain (kept in memory only)


def credentials():
    """boto3's credentials for this process, looked up once (static keys stay in memory when the environment's
    are removed, see secrets_out_of_environment); None when there are none."""
    if not _CREDENTIALS:
        import boto3

        _CREDENTIALS.append(boto3.session.Session().get_credentials())
    return _CREDENTIALS[0]


def refreshes(creds) -> bool:
    """Credentials that expire and are renewed by their source (a role), rather than static keys."""
    from botocore.credentials import RefreshableCredentials

    return isinstance(creds, RefreshableCredentials)


SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


@contextlib.contextmanager
def secrets_out_of_environment():
    """Remove the credential variables from this process's environment for the block, restoring them after.

    Ray Tune copies these variables into each trainable's runtime_env, and Ray's runtime-env agent writes that
    into its log files. Workers that Ray starts on this machine already inherited them when Ray started; workers
    elsewhere take their own (a Kubernetes Secret); this process keeps them in memory (`credentials`).
    """
    credentials()
    saved = {k: os.environ.pop(k) for k in SECRET_VARIABLES if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _arrow_handler(endpoint: Endpoint):
    return _arrow_handler_class()(endpoint)


@functools.cache
def _arrow_handler_class():
    """Defined on first use: importing this module must not import pyarrow."""
    from pyarrow import fs

    class ArrowS3(fs.FileSystemHandler):
        """Delegates to pyarrow's S3FileSystem; pickles as its endpoint and looks credentials up where it is used."""

        def __init__(self, endpoint: Endpoint):
            self.endpoint, self._fs = endpoint, None

        def __reduce__(self):
            return (_arrow_handler, (self.endpoint,))  # the endpoint only, never a key

        def __eq__(self, other):
            return type(other) is type(self) and other.endpoint == self.endpoint

        @property
        def fs(self):
            if self._fs is None:
                creds = credentials()
                if creds is None:
                    raise BadInput(f"no S3 credentials on {socket.gethostname()} for {self.endpoint.describe()}: "
                                   "give every Ray node the credentials (a Kubernetes Secret in each pod's env)")
                self._fs = Store(self.endpoint)._pyarrow_s3(creds.get_frozen_credentials())
            return self._fs

        def get_type_name(self):
            return "s3"

        def normalize_path(self, path):
            return self.fs.normalize_path(path)

        def get_file_info(self, paths):
            return self.fs.get_file_info(paths)

        def get_file_info_selector(self, selector):
            return self.fs.get_file_info(selector)

        def create_dir(self, path, recursive):
            self.fs.create_dir(path, recursive=recursive)

        def delete_dir(self, path):
            self.fs.delete_dir(path)

        def delete_dir_contents(self, path, missing_dir_ok=False):
            self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

        def delete_root_dir_contents(self):
            self.fs.delete_dir_contents("/", accept_root_dir=True)

        def delete_file(self, path):
            self.fs.delete_file(path)

        def move(self, src, dest):
            self.fs.move(src, dest)

        def copy_file(self, src, dest):
            self.fs.copy_file(src, dest)

        def open_input_stream(self, path):
            return self.fs.open_input_stream(path)

        def open_input_file(self, path):
            return self.fs.open_input_file(path)

        def open_output_stream(self, path, metadata):
            return self.fs.open_output_stream(path, metadata=metadata)

        def open_append_stream(self, path, metadata):
            return self.fs.open_append_stream(path, metadata=metadata)

    return ArrowS3
