"""S3 storage against a real S3 server (SeaweedFS here; MinIO or AWS when JOB_TEST_S3_ENDPOINT is set)."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from job import bundle, files, storage
from job.config import S3Config
from job.errors import EXIT_BAD_INPUT, EXIT_FAILURE, BadInput, JobError
from job.storage import Location
from tests.conftest import RESNET, TINY, assert_error, kill_after_trials_end, kill_session, run_job

SEARCH = [*TINY, "--epochs", "3", "--num-samples", "5", "--lr-range", "0.00001,0.3", "--set", "startup_trials=2"]


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server.env


@pytest.fixture(scope="module")
def local_run(images, tmp_path_factory, cache):
    """A finished local run whose model.pt (resnet18, ~45 MB) is large enough for a multipart upload."""
    out = tmp_path_factory.mktemp("s3run") / "r"
    r = run_job("train", "--data", images, *RESNET, "--epochs", "1", "--output", out, "--quiet", env={"JOB_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    return out


def test_bundle_round_trip_is_byte_equal_and_verified(s3_server, s3_env, local_run, tmp_path):
    bucket = s3_server.bucket()
    where = Location.parse(f"s3://{bucket}/runs/one")
    where.publish(local_run, last="best/bundle.json")
    client = s3_server.client()
    head = client.head_object(Bucket=bucket, Key="runs/one/best/model.pt")
    assert "-" in head["ETag"]  # uploaded in parts
    fetched = bundle.locate(where, tmp_path / "cache")
    for name in ("model.pt", "bundle.json"):
        assert (fetched / name).read_bytes() == (local_run / "best" / name).read_bytes()
    assert bundle.read(fetched)["classes"] == ["class_0", "class_1", "class_2"]
    # a damaged object is caught by the manifest's SHA-256 as it streams in, and nothing is left in the cache
    client.put_object(Bucket=bucket, Key="runs/one/best/model.pt", Body=b"not the model")
    with pytest.raises(BadInput, match=r"runs/one/best/model.pt is damaged: .* write it again"):
        bundle.locate(where, tmp_path / "cache2")
    assert not [p for p in (tmp_path / "cache2").rglob("*") if p.is_file()]


def test_the_server_checks_each_upload_against_the_files_sha256(s3_server, s3_env, tmp_path):
    """A file whose bytes are not the SHA-256 job computed (here: a stale digest, as when the file changes while it
    is uploaded) is refused by the server's own check; what was stored is verified when it is downloaded again."""
    where = Location.parse(f"s3://{s3_server.bucket()}/u")
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(1000))
    files.sha256(small)
    small.write_bytes(os.urandom(1000))  # same size, new bytes
    files.remember_sha256(small, "0" * 64)  # as if hashed before the change
    with pytest.raises(JobError, match=r"does not match the file's SHA-256 \(BadDigest\)"):
        where.store.upload(small, where.url.join("small.bin"))
    assert not where.store.exists(where.url.join("small.bin"))
    small.write_bytes(b"whole")
    where.store.upload(small, where.url.join("small.bin"))
    where.store.download(where.url.join("small.bin"), tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"whole"
    with pytest.raises(BadInput, match="is damaged"):  # the recorded SHA-256 checks a download without a manifest
        where.store.download(where.url.join("small.bin"), tmp_path / "back2.bin", digest="f" * 64)
    assert not (tmp_path / "back2.bin").exists()


def test_a_bundle_already_in_the_cache_is_not_downloaded_again(s3_server, s3_env, local_run, tmp_path):
    where = Location.parse(f"s3://{s3_server.bucket()}/r")
    where.publish(local_run, last="best/bundle.json")
    first = bundle.locate(where, tmp_path / "cache") / "model.pt"
    inode = first.stat().st_ino
    again = bundle.locate(where, tmp_path / "cache") / "model.pt"
    assert again == first and again.stat().st_ino == inode  # the same file: checked, not fetched
    first.write_bytes(b"damaged in the cache")
    assert bundle.read(bundle.locate(where, tmp_path / "cache"))["format"]  # a damaged copy is fetched again
    assert first.read_bytes() == (local_run / "best" / "model.pt").read_bytes()


def test_manifest_is_uploaded_last_and_the_old_one_deleted_first(s3_server, s3_env, local_run, monkeypatch):
    """The order of the real PUTs, recorded as they reach the server: at each upload, is the manifest there?"""
    bucket = s3_server.bucket()
    where = Location.parse(f"s3://{bucket}/r")
    where.publish(local_run, last="best/bundle.json")  # an earlier, complete publish: its manifest is present
    client, seen = s3_server.client(), []
    real_upload = storage.Store.upload

    def recording(self, path, url):
        manifest_there = "Contents" in client.list_objects_v2(Bucket=bucket, Prefix="r/best/bundle.json")
        seen.append((url.key, manifest_there))
        real_upload(self, path, url)

    monkeypatch.setattr(storage.Store, "upload", recording)
    where.publish(local_run, last="best/bundle.json")
    keys = [k for k, _ in seen]
    assert keys[-1] == "r/best/bundle.json" and len(keys) == len(set(keys)) >= 5
    assert not any(there for _, there in seen), seen  # the old manifest went first: nothing half-new looks complete
    objects = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="r/")["Contents"]}
    assert objects >= {"r/best/model.pt", "r/best/bundle.json", "r/history.csv", "r/run.json"}


def test_train_to_s3_and_evaluate_and_predict_from_s3(s3_server, images, tmp_path):
    bucket = s3_server.bucket()
    out = f"s3://{bucket}/runs/tiny"
    r = run_job("train", "--data", images, *TINY, "--epochs", "1", "--output", out, "--json", env=s3_server.env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bundle"] == f"{out}/best"
    r = run_job("evaluate", out, "--data", images, "--output", tmp_path / "ev", "--json", env=s3_server.env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 36
    r = run_job("evaluate", out, "--data", images, "--output", f"{out}-evaluated", env=s3_server.env)
    assert r.returncode == 0 and f"written: {out}-evaluated/evaluation.json, {out}-evaluated/confusion.png" in r.stdout
    client = s3_server.client()
    evaluated = json.loads(client.get_object(Bucket=bucket, Key="runs/tiny-evaluated/evaluation.json")["Body"].read())
    assert evaluated["images"] == 36 and client.head_object(Bucket=bucket, Key="runs/tiny-evaluated/confusion.png")
    r = run_job("predict", f"{out}/best", next((images / "class_0").iterdir()), "--json", env=s3_server.env)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["predictions"]
    # images on S3 too, one object and a prefix, named by their s3:// locations; the same labels as the local files
    for f in ("class_0/img_000.png", "class_1/img_000.png", "class_1/img_001.png"):
        client.upload_file(str(images / f), bucket, f"photos/{f}")
    r = run_job("predict", out, f"s3://{bucket}/photos/class_0/img_000.png", f"s3://{bucket}/photos/class_1/",
                "--json", env=s3_server.env)
    assert r.returncode == 0, r.stderr
    remote = json.loads(r.stdout)
    assert [x["file"] for x in remote] == [f"s3://{bucket}/photos/class_0/img_000.png",
                                           f"s3://{bucket}/photos/class_1/img_000.png", f"s3://{bucket}/photos/class_1/img_001.png"]
    local = json.loads(run_job("predict", out, images / "class_0" / "img_000.png", images / "class_1" / "img_000.png",
                               images / "class_1" / "img_001.png", "--json", env=s3_server.env).stdout)
    assert [x["predictions"] for x in remote] == [x["predictions"] for x in local]
    assert_error(run_job("predict", out, f"s3://{bucket}/photos/none.png", env=s3_server.env), EXIT_BAD_INPUT,
                 f"s3://{bucket}/photos/none.png holds no objects")
    r = run_job("train", "--data", images, *TINY, "--epochs", "1", "--output", out, env=s3_server.env)
    assert_error(r, EXIT_BAD_INPUT, out, "--overwrite")


def test_data_set_synced_from_s3_then_not_fetched_again(s3_server, s3_env, images, tmp_path):
    bucket = s3_server.bucket()
    client = s3_server.client()
    for f in images.rglob("*.png"):
        client.upload_file(str(f), bucket, f"datasets/shapes/{f.relative_to(images).as_posix()}")
    store, url = Location.parse(f"s3://{bucket}/datasets/shapes/").store, storage.S3Url.parse(f"s3://{bucket}/datasets/shapes/")
    assert store.mirror(url, tmp_path / "mirror") == 36
    assert store.mirror(url, tmp_path / "mirror") == 0
    client.put_object(Bucket=bucket, Key="datasets/shapes/class_0/img_000.png", Body=(images / "class_1" / "img_001.png").read_bytes())
    assert store.mirror(url, tmp_path / "mirror") == 1
    # data and weights straight from S3 through the CLI
    from job import model
    import torch

    torch.save(model.create("tiny_cnn", "none", 3).state_dict(), tmp_path / "tiny.pth")
    client.upload_file(str(tmp_path / "tiny.pth"), bucket, "weights/tiny.pth")
    weights_url = storage.S3Url.parse(f"s3://{bucket}/weights/tiny.pth")
    assert store.refresh(weights_url, tmp_path / "w" / "tiny.pth") is True
    assert store.refresh(weights_url, tmp_path / "w" / "tiny.pth") is False  # each trial asks; one download
    r = run_job("train", "--data", f"s3://{bucket}/datasets/shapes/", *TINY, "--weights", f"s3://{bucket}/weights/tiny.pth",
                "--epochs", "1", "--output", tmp_path / "o", "--json", env=s3_server.env)
    assert r.returncode == 0, r.stderr
    # a bad object in the data set is named by its s3:// location, not by the cache's copy of it
    client.put_object(Bucket=bucket, Key="datasets/shapes/class_2/broken.png", Body=b"not a png")
    for args in (["train", "--data", f"s3://{bucket}/datasets/shapes/", *TINY, "--output", tmp_path / "o2"],
                 ["evaluate", tmp_path / "o", "--data", f"s3://{bucket}/datasets/shapes", "--output", tmp_path / "e"]):
        r = run_job(*args, env=s3_server.env)
        assert_error(r, EXIT_BAD_INPUT, f"1 unreadable image(s): s3://{bucket}/datasets/shapes/class_2/broken.png")
        assert os.environ["JOB_CACHE"] not in r.stderr


def test_tune_on_s3_survives_losing_the_machine(s3_server, images, short_tmp):
    """job tune with --storage and --output on S3, killed (SIGKILL, every process of it), its local Ray folder and
    cache deleted as on a new pod, then resumed from S3 alone: it finishes without rerunning finished trials."""
    bucket = s3_server.bucket()
    storage_url, output = f"s3://{bucket}/ray", f"s3://{bucket}/best"
    args = ["tune", "--data", str(images), *SEARCH, "--storage", storage_url, "--output", output]

    def machine(name):
        home = short_tmp(name)
        return home, {**s3_server.env, "JOB_CACHE": str(home / "cache"), "RAY_TMPDIR": str(home)}

    first, env = machine("pod-1")
    ended = kill_after_trials_end(args, 2, env=env, cwd=first)
    shutil.rmtree(first)  # the machine is gone

    second, env = machine("pod-2")
    r = run_job(*args, "--json", env=env, cwd=second)
    files = {f: f.read_bytes() for f in second.rglob("*") if f.is_file() and f.stat().st_size < 200_000_000}
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["resumed"] and len(result["trials"]) == 5
    assert not [t for t in ended if f"{t} lr" in r.stderr], "finished trials ran again"
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert "best/best/bundle.json" in keys and "best/trials.csv" in keys and "ray/job-tune/job-tune.json" in keys
    assert "ray/job-tune/optuna.journal" in keys  # the study, beside the experiment

    # the secret key is in no output, no local file and no object written
    secret = s3_server.secret_key
    assert secret not in r.stdout + r.stderr
    for f, content in files.items():
        assert secret.encode() not in content, f
    client = s3_server.client()
    for key in keys:
        assert secret.encode() not in client.get_object(Bucket=bucket, Key=key)["Body"].read(), key


def test_wrong_credentials_fail_fast(s3_server, images, tmp_path):
    bucket = s3_server.bucket()
    env = {**s3_server.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    started = time.monotonic()
    r = run_job("train", "--data", images, *TINY, "--output", f"s3://{bucket}/x", env=env)
    assert_error(r, EXIT_BAD_INPUT, "rejected the credentials", "AWS_SECRET_ACCESS_KEY")
    assert "not-the-secret" not in r.stderr and time.monotonic() - started < 30
    r = run_job("tune", "--data", images, *TINY, "--storage", f"s3://{bucket}/ray", "--output", tmp_path / "o", env=env)
    assert_error(r, EXIT_BAD_INPUT, "rejected the credentials")


def test_missing_bucket_and_unreachable_endpoint_fail_fast(s3_server, images, tmp_path):
    r = run_job("train", "--data", images, *TINY, "--output", "s3://no-such-bucket-here/x", env=s3_server.env)
    assert_error(r, EXIT_BAD_INPUT, "bucket 'no-such-bucket-here' does not exist")
    started = time.monotonic()
    env = {**s3_server.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    r = run_job("tune", "--data", images, *TINY, "--storage", "s3://any-bucket/ray", "--output", tmp_path / "o", env=env)
    assert_error(r, EXIT_FAILURE, "cannot reach S3 endpoint http://127.0.0.1:9")
    assert time.monotonic() - started < 60
    r = run_job("train", "--data", images, *TINY, "--output", "s3://x/y", env={**s3_server.env, "AWS_ENDPOINT_URL": "minio:9000"})
    assert_error(r, EXIT_BAD_INPUT, "needs a scheme")


def test_read_only_bucket_is_refused_before_training(s3_server, images, tmp_path):
    bucket = s3_server.bucket()
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": ["s3:PutObject"], "Resource": [f"arn:aws:s3:::{bucket}/*"]}]}
    try:
        s3_server.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    except Exception as e:  # a server without bucket policies
        pytest.skip(f"this S3 server does not take bucket policies: {e}")
    r = run_job("train", "--data", images, *TINY, "--output", f"s3://{bucket}/x", env=s3_server.env)
    assert_error(r, EXIT_BAD_INPUT, "no permission", f"s3://{bucket}/x")
    assert not (tmp_path / "x").exists()


def test_endpoint_settings_resolve_from_config_then_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://general:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:9000")
    assert storage.Endpoint.resolve().url == "http://s3-specific:9000"
    assert storage.Endpoint.resolve("http://flag:1").url == "http://flag:1"
    assert storage.Endpoint.resolve().path_style is True
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    aws = storage.Endpoint.resolve(region="eu-west-1")
    assert (aws.url, aws.region, aws.path_style) == (None, "eu-west-1", False)
    assert S3Config().to_dict() == {"endpoint": None, "region": None, "path_style": None}


def test_the_filesystem_ray_pickles_holds_no_credentials(monkeypatch):
    import pickle

    import ray.cloudpickle

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    fs = Location.parse("s3://bucket/ray", S3Config(endpoint="http://127.0.0.1:1")).store.pyarrow_fs()
    for dumps in (pickle.dumps, ray.cloudpickle.dumps):
        blob = dumps(fs)
        assert b"very-secret-value" not in blob and b"AKIAEXAMPLE" not in blob
    assert pickle.loads(pickle.dumps(fs)).type_name == "py::s3"


def test_role_credentials_go_to_pyarrows_own_chain_which_refreshes_them(monkeypatch):
    """Credentials that expire (a role): pyarrow's S3FileSystem gets no keys and uses the AWS SDK's chain in each
    process, which renews them; what Ray pickles holds no key either way."""
    import pickle

    import pyarrow.fs
    from botocore.credentials import RefreshableCredentials

    role = RefreshableCredentials.create_from_metadata(
        {"access_key": "ASIAROLEKEY", "secret_key": "role-secret-value", "token": "role-token",
         "expiry_time": "2099-01-01T00:00:00Z"}, refresh_using=lambda: None, method="container-role")
    monkeypatch.setattr(storage, "credentials", lambda: role)
    fs = Location.parse("s3://bucket/ray", S3Config(endpoint="http://127.0.0.1:1")).store.pyarrow_fs()
    assert isinstance(fs, pyarrow.fs.S3FileSystem)
    blob = pickle.dumps(fs)
    assert b"role-secret-value" not in blob and b"ASIAROLEKEY" not in blob and b"127.0.0.1:1" in blob


def test_a_local_location_claims_reads_and_writes_records_as_s3_does(tmp_path):
    where = Location.parse(tmp_path / "out")
    where.claim(overwrite=False)  # a new folder: created, writable
    where.write_json("run.json", {"status": "done", "experiment": "/x/exp"})
    assert where.read_json("run.json")["status"] == "done" and where.read_json("missing.json") is None
    where.claim(overwrite=False, owner="/x/exp")  # the search that wrote it may write it again
    with pytest.raises(BadInput, match="already holds another run: pass --overwrite"):
        where.claim(overwrite=False, owner="/y/other")
    (tmp_path / "out" / "run.json").write_text('{"status": "do')  # cut short by a kill, by hand
    with pytest.raises(BadInput, match="run.json' is damaged"):
        where.read_json("run.json")
    assert where.stage(tmp_path / "cache") == tmp_path / "out"
    assert where.pull(tmp_path / "cache") == tmp_path / "out"


def test_a_read_only_local_output_is_refused(tmp_path):
    import os

    if os.geteuid() == 0:
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "out"  # root can write anywhere: a path under a file cannot be made by anyone
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = tmp_path / "ro" / "out"
    with pytest.raises(BadInput, match="is not writable"):
        Location.parse(target).check_writable("output folder")


def test_one_search_at_a_time_on_s3_too(s3_server, s3_env):
    from job.config import SearchConfig
    from job.experiment import Experiment, Lock

    bucket = s3_server.bucket()
    search = SearchConfig(storage=f"s3://{bucket}/ray", name="e")
    with Lock(Experiment(search, None)) as first:
        assert Location.parse(f"s3://{bucket}/ray").read_json(".e.lock.json")["token"] == first.me["token"]
        assert not Location.parse(f"s3://{bucket}/ray").create_json(".e.lock.json", {"x": 1})  # conditional PUT
        with pytest.raises(BadInput, match="is being searched right now"):
            Lock(Experiment(search, None)).acquire()
    assert not Location.parse(f"s3://{bucket}/ray").exists(".e.lock.json")


def test_overwrite_on_s3_leaves_no_file_of_the_earlier_run(s3_server, images):
    bucket = s3_server.bucket()
    client = s3_server.client()
    for key in ("r/run.json", "r/trials.csv", "r/best/model.pt", "r/notes.txt"):
        client.put_object(Bucket=bucket, Key=key, Body=b'{"status": "done", "experiment": "another"}')
    r = run_job("train", "--data", images, *TINY, "--epochs", "1", "--output", f"s3://{bucket}/r", env=s3_server.env)
    assert_error(r, EXIT_BAD_INPUT, "already holds another run", "--overwrite")
    r = run_job("train", "--data", images, *TINY, "--epochs", "1", "--output", f"s3://{bucket}/r", "--overwrite",
                env=s3_server.env)
    assert r.returncode == 0, r.stderr
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "r/trials.csv" not in keys and "r/notes.txt" in keys  # job's own files replaced, the user's kept
    assert json.loads(client.get_object(Bucket=bucket, Key="r/run.json")["Body"].read())["kind"] == "train"


STALL_S = 130  # longer than any single S3 request may take (60 s), as a storage server that hangs for two minutes


def test_a_stalled_s3_server_neither_hangs_the_search_nor_loses_trials(s3_server, images, short_tmp):
    """The S3 server paused (SIGSTOP) for two minutes mid-search, then resumed: the search waits, retries, and ends
    with every trial complete and the best bundle on S3."""
    import threading

    from tests.conftest import start_job

    if s3_server.pid is None:
        pytest.skip("pausing needs the local SeaweedFS server; JOB_TEST_S3_ENDPOINT names another one")
    bucket = s3_server.bucket()
    home = short_tmp("stall")
    env = {**s3_server.env, "JOB_CACHE": str(home / "cache"), "RAY_TMPDIR": str(home)}
    proc = start_job(["tune", "--data", str(images), *RESNET, "--epochs", "3", "--num-samples", "3", "--set",
                      "early_stopping=none", "--storage", f"s3://{bucket}/ray", "--output", f"s3://{bucket}/best"],
                     env=env, cwd=home, stdout=subprocess.DEVNULL)
    resume = threading.Timer(STALL_S, os.killpg, (s3_server.pid, signal.SIGCONT))
    try:
        for line in proc.stderr:
            if " epoch 1/3 " in line:  # mid-search: a trial is reporting and saving checkpoints
                break
        os.killpg(s3_server.pid, signal.SIGSTOP)
        resume.start()
        err = proc.stderr.read()
        assert proc.wait(timeout=900) == 0, err[-3000:]
    finally:
        resume.cancel()
        os.killpg(s3_server.pid, signal.SIGCONT)
        if proc.poll() is None:
            kill_session(proc)
    trials = json.loads(s3_server.client().get_object(Bucket=bucket, Key="best/trials.json")["Body"].read())
    assert len(trials) == 3 and all(t["status"] == "completed" and t["epochs"] == 3 for t in trials), trials
    assert "Traceback" not in err


def test_an_object_key_that_would_leave_the_cache_is_refused(s3_server, s3_env, images, tmp_path):
    bucket = s3_server.bucket()
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="data/class_0/a.png", Body=(images / "class_0" / "img_000.png").read_bytes())
    try:  # AWS and MinIO take such a key; SeaweedFS refuses it (InvalidRequest), so the listing is safe there
        client.put_object(Bucket=bucket, Key="data/class_0/../../../escaped.png", Body=b"x")
    except client.exceptions.ClientError as e:
        pytest.skip(f"this S3 server refuses keys with '..' ({e.response['Error']['Code']}): nothing hostile to list; "
                    "tests/test_files.py checks the rule itself")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    if not any(".." in k for k in keys):
        pytest.skip(f"this S3 server normalises '..' out of keys ({sorted(keys)}): nothing hostile to list")
    r = run_job("train", "--data", f"s3://{bucket}/data", *TINY, "--output", tmp_path / "out", env=s3_server.env)
    assert_error(r, EXIT_BAD_INPUT, "would leave")
    assert not list(tmp_path.parent.rglob("escaped.png"))


@pytest.mark.parametrize("url, bucket, key", [("s3://b/runs/x/", "b", "runs/x"), ("s3://b", "b", ""),
                                              ("s3://b/run#1/a?v=2", "b", "run#1/a?v=2"), ("s3://b/a//c", "b", "a//c")])
def test_an_s3_location_keeps_every_character_of_its_key(url, bucket, key):
    assert storage.S3Url.parse(url) == storage.S3Url(bucket, key)  # urlparse took '#1/a' for a fragment: s3://b/run


@pytest.mark.parametrize("url, fragment", [("s3://b/../x", "'.' or '..' part"), ("s3://b/a/./x", "'.' or '..' part"),
                                           ("s3:///x", "not an S3 location"), ("s3:/b/x", "not an S3 location")])
def test_an_s3_location_that_is_not_one_is_refused(url, fragment):
    with pytest.raises(BadInput, match=re.escape(fragment)):
        storage.S3Url.parse(url)


def test_names_from_a_listing_or_manifest_never_leave_the_target_folder(tmp_path):
    source = Location.parse(tmp_path / "bundle")
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "model.pt").write_bytes(b"w")
    source.pull_files({"model.pt": ""}, tmp_path / "into")
    for hostile in ("../escaped.pt", "/etc/passwd", "a/../../escaped.pt"):
        with pytest.raises(BadInput, match="would leave"):
            source.pull_files({hostile: ""}, tmp_path / "into")
    assert not (tmp_path / "escaped.pt").exists()


def test_a_trial_checkpoint_in_s3_is_read_in_memory_and_a_lost_damaged_or_unreachable_one_is_named(
        s3_server, s3_env, tmp_path, monkeypatch):
    """How a search reads its best trial's checkpoint (and a retried trial its own): one GET into memory, not a copy
    through a local folder; a damaged object is named, a lost one is FileNotFoundError (the trial is passed over), a
    storage that fails is a JobError (the search stops with it rather than pass over every trial)."""
    import importlib

    import pyarrow.fs
    from ray import tune as ray_tune

    from job import checkpoint
    from tests.test_checkpoint import state

    tune = importlib.import_module("job.tune")  # the module (job.tune is also the API's function)

    monkeypatch.setattr(storage, "_CREDENTIALS", [])  # this process's, looked up again from the server's keys
    bucket = s3_server.bucket()
    fs = Location.parse(f"s3://{bucket}/ray").store.pyarrow_fs()
    checkpoint.save(state(3), tmp_path / checkpoint.CHECKPOINT_NAME)
    pyarrow.fs.copy_files(str(tmp_path), f"{bucket}/ray/ckpt", destination_filesystem=fs)
    copies, to_directory = [], ray_tune.Checkpoint.to_directory
    monkeypatch.setattr(ray_tune.Checkpoint, "to_directory", lambda self, *a: copies.append(a) or to_directory(self, *a))
    assert tune._load(ray_tune.Checkpoint(f"{bucket}/ray/ckpt", filesystem=fs))["epoch"] == 3
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="ray/ckpt/checkpoint.pt", Body=b"junk")
    with pytest.raises(BadInput, match=f"checkpoint 's3://{bucket}/ray/ckpt/checkpoint.pt' cannot be read"):
        tune._load(ray_tune.Checkpoint(f"{bucket}/ray/ckpt", filesystem=fs))
    client.delete_object(Bucket=bucket, Key="ray/ckpt/checkpoint.pt")
    with pytest.raises(FileNotFoundError):
        tune._load(ray_tune.Checkpoint(f"{bucket}/ray/ckpt", filesystem=fs))
    assert tune._load(ray_tune.Checkpoint(str(tmp_path)))["epoch"] == 3  # a local one where it is
    assert copies == []
    down = Location.parse("s3://bucket/ray", S3Config(endpoint="http://127.0.0.1:1")).store.pyarrow_fs()
    with pytest.raises(JobError, match=r"S3 failure while reading the checkpoint s3://bucket/ray/ckpt/checkpoint.pt: "
                                       r".+: run the same command again once the storage answers"):
        tune._load(ray_tune.Checkpoint("bucket/ray/ckpt", filesystem=down))  # not passed over as a lost one
    monkeypatch.setattr(tune, "IN_MEMORY_BYTES", 1000)  # one too large to hold twice in memory: through a folder
    pyarrow.fs.copy_files(str(tmp_path), f"{bucket}/ray/ckpt", destination_filesystem=fs)
    assert tune._load(ray_tune.Checkpoint(f"{bucket}/ray/ckpt", filesystem=fs))["epoch"] == 3
    assert len(copies) == 1
