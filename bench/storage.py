"""S3 throughput: how job moves a best bundle and a trial checkpoint, against one plain boto3 transfer of the same
bytes, on a real S3 server (SeaweedFS on loopback, or JOB_TEST_S3_ENDPOINT)."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from job import bundle
from job.storage import Location, S3Url


TRANSFERS = 9  # each figure: the median of this many transfers, job's and the reference's taken in turn
RAY_CHUNK = 64 << 20  # the chunk_size Ray Tune passes to pyarrow.fs.copy_files (ray.train._internal.storage)


def _mb_per_s(nbytes: int, job, reference) -> tuple[float, float]:
    """(job MB/s, reference MB/s): each callable run TRANSFERS times, in turn, given a fresh index each time."""
    times = {job: [], reference: []}
    for i in range(TRANSFERS):
        for fn in (job, reference):
            start = time.perf_counter()
            fn(i)
            times[fn].append(time.perf_counter() - start)
    return nbytes / 1e6 / statistics.median(times[job]), nbytes / 1e6 / statistics.median(times[reference])


def measure(server, run_folder: Path) -> dict[str, tuple[float, float]]:
    """{what: (job MB/s, boto3 MB/s)} for a bundle (upload, download) and a checkpoint (upload, download).

    job's bundle upload is how `job train --output s3://` publishes best/ (Location.publish: the old manifest
    deleted, each file sent with its SHA-256 for the server to check, the manifest last); its download is what
    `job evaluate s3://` does before it builds the model (bundle.locate, each file's SHA-256 checked as it streams
    in, then bundle.read's check of the folder), into an empty cache each time. A checkpoint moves the way Ray Tune
    moves trial checkpoints through job's file system: pyarrow.fs.copy_files with Ray's chunk size up; down, the way
    a search reads its best trial's checkpoint (and a retried trial its own) into a training state, against one
    boto3 download_file and torch.load of the file. The reference is one boto3 upload_file/download_file of the
    largest file (model.pt, or checkpoint.pt) alone.
    """
    import pyarrow.fs
    import torch
    from ray.train import Checkpoint

    from job.tune import _load

    client, bucket = server.client(), server.bucket()
    where = Location.parse(f"s3://{bucket}/job/run")
    store = where.store
    best = run_folder / bundle.BEST_DIR
    bundle_bytes = sum(p.stat().st_size for p in best.rglob("*") if p.is_file())
    model_file = best / "model.pt"
    ckpt = run_folder / "checkpoint.pt"
    scratch = Path(tempfile.mkdtemp(prefix="job-bench-s3-"))
    results = {}
    try:
        url = S3Url(bucket, "job/run")
        store.check_writable(url)  # both clients made and connected before any timing: transfers, not start-up
        client.upload_file(str(ckpt), bucket, "warm-up")  # SeaweedFS grows a new bucket's volumes on its first writes
        results["bundle upload"] = _mb_per_s(
            bundle_bytes, lambda i: where.join(bundle.BEST_DIR).publish(best, last=bundle.MANIFEST),
            lambda i: client.upload_file(str(model_file), bucket, "ref/model.pt"))
        results["bundle download"] = _mb_per_s(
            bundle_bytes, lambda i: bundle.read(bundle.locate(where, scratch / f"fetch{i}")),
            lambda i: client.download_file(bucket, "ref/model.pt", str(scratch / f"ref-model{i}.pt")))

        fs, size = store.pyarrow_fs(), ckpt.stat().st_size
        folder = scratch / "ckpt"
        folder.mkdir()
        shutil.copy(ckpt, folder / ckpt.name)
        target = f"{bucket}/ray/checkpoint_000001"
        results["checkpoint upload"] = _mb_per_s(
            size, lambda i: pyarrow.fs.copy_files(str(folder), target, destination_filesystem=fs, chunk_size=RAY_CHUNK),
            lambda i: client.upload_file(str(ckpt), bucket, "ref/checkpoint.pt"))
        results["checkpoint download, then torch.load (both)"] = _mb_per_s(
            size, lambda i: _load(Checkpoint(target, filesystem=fs)),
            lambda i: torch.load(_downloaded(client, bucket, "ref/checkpoint.pt", scratch / f"ref{i}.pt"),
                                 map_location="cpu", weights_only=True))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _downloaded(client, bucket: str, key: str, path: Path) -> Path:
    client.download_file(bucket, key, str(path))
    return path


def measure_mirror(server, objects: int = 10_000, size: int = 2_000) -> tuple[float, float]:
    """(job objects/s, reference objects/s) for syncing a data set of `objects` small files from S3: job's
    Store.mirror (how every Ray node pulls an s3:// data set) against the one-at-a-time loop it replaced (a listing,
    then boto3's download_file for each object in turn)."""
    import concurrent.futures
    import os

    client, bucket = server.client(), server.bucket()
    payload = os.urandom(size)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:  # setup, not measured
        list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"data/c{i % 10}/{i:05d}.png", Body=payload),
                      range(objects)))
    store = Location.parse(f"s3://{bucket}/data").store
    scratch = Path(tempfile.mkdtemp(prefix="job-bench-sync-"))
    try:
        store.check_writable(S3Url(bucket, "probe"))  # connected before any timing
        start = time.perf_counter()
        fetched = store.mirror(S3Url(bucket, "data"), scratch / "job")
        job = fetched / (time.perf_counter() - start)

        def one_at_a_time():
            keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="data/")
                    for o in page.get("Contents", [])]
            for key in keys:
                target = scratch / "ref" / key
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, key, str(target))
            return len(keys)

        start = time.perf_counter()
        ref = one_at_a_time() / (time.perf_counter() - start)
        assert fetched == objects
        return job, ref
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
