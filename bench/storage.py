"""S3 throughput: how job moves a best bundle and a trial checkpoint, against one plain boto3 transfer of the same
bytes, on a real S3 server (SeaweedFS on loopback, or JOB_TEST_S3_ENDPOINT)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from job import bundle
from job.storage import Location, S3Url


def _mb_per_s(nbytes: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return nbytes / 1e6 / (time.perf_counter() - start)


def measure(server, run_folder: Path) -> dict[str, tuple[float, float]]:
    """{what: (job MB/s, boto3 MB/s)} for a bundle (upload, download) and a checkpoint (upload, download).

    job's bundle upload is how `job train --output s3://` publishes best/ (Location.publish: SHA-256 of each file,
    upload, read-back check, manifest last); its download is what `job evaluate s3://` does before it builds the
    model (bundle.locate, then the manifest's size and SHA-256 check of every file). The checkpoint goes the way
    Ray Tune moves trial checkpoints: pyarrow.fs.copy_files through job's file system.
    """
    import pyarrow.fs

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
        up_job = _mb_per_s(bundle_bytes, lambda: where.join(bundle.BEST_DIR).publish(best, last=bundle.MANIFEST))
        up_ref = _mb_per_s(model_file.stat().st_size, lambda: client.upload_file(str(model_file), bucket, "ref/model.pt"))
        results["bundle upload"] = (up_job, up_ref)
        down_job = _mb_per_s(bundle_bytes, lambda: bundle.read(bundle.locate(where, scratch / "fetch")))
        down_ref = _mb_per_s(model_file.stat().st_size,
                             lambda: client.download_file(bucket, "ref/model.pt", str(scratch / "ref-model.pt")))
        results["bundle download"] = (down_job, down_ref)

        fs, size = store.pyarrow_fs(), ckpt.stat().st_size
        folder = scratch / "ckpt"
        folder.mkdir()
        shutil.copy(ckpt, folder / ckpt.name)
        target = f"{bucket}/ray/checkpoint_000001"
        up_job = _mb_per_s(size, lambda: pyarrow.fs.copy_files(str(folder), target, destination_filesystem=fs))
        up_ref = _mb_per_s(size, lambda: client.upload_file(str(ckpt), bucket, "ref/checkpoint.pt"))
        results["checkpoint upload"] = (up_job, up_ref)
        back = scratch / "ckpt-back"
        back.mkdir()
        down_job = _mb_per_s(size, lambda: pyarrow.fs.copy_files(target, str(back), source_filesystem=fs))
        down_ref = _mb_per_s(size, lambda: client.download_file(bucket, "ref/checkpoint.pt", str(scratch / "ref.pt")))
        results["checkpoint download"] = (down_job, down_ref)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results

