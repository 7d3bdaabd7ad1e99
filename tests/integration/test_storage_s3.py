"""S3DropStorage against a real moto server."""

from __future__ import annotations

import io

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from churnops.drop import claims
from churnops.drop.keys import decode_event_key
from churnops.drop.storage import (
    PART_BYTES,
    FileLog,
    ObjectExists,
    S3DropStorage,
    open_storage,
    run_key,
    stage_key,
)
from churnops.settings import get_settings
from tests.exactly_once import leases

NAMES = ["customer_churn_1.csv", "march batch.csv", "a+b.csv", "clientes_año_ü.csv"]


@pytest.fixture
def s3(moto_server: str, moto_bucket: str) -> S3DropStorage:
    settings = get_settings(drop_storage="s3")  # at moto: its fixture sets AWS_ENDPOINT_URL
    store = open_storage(settings.drop, moto_bucket)
    assert isinstance(store, S3DropStorage)
    return store


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_and_claim(s3: S3DropStorage, name: str) -> None:
    src = stage_key("input", name)
    s3.create(src, b"x,y\n1,2\n")
    assert s3.exists(src)
    assert s3.list_keys("data/input/") == [src]
    held = claims.claim(s3, src, lease_seconds=30)
    assert held.processing_key == run_key("processing", held.run, name)
    assert s3.read(held.processing_key) == b"x,y\n1,2\n"
    assert not s3.exists(src)
    with pytest.raises(claims.ClaimRefused, match="no longer in input"):
        claims.claim(s3, src, lease_seconds=30)
    s3.move(held.processing_key, run_key("processed", held.run, name))
    assert s3.list_keys("data/processed/") == [run_key("processed", held.run, name)]


def test_writes_and_moves_never_replace(s3: S3DropStorage) -> None:
    s3.create("data/processed/R/a.csv", b"first")
    with pytest.raises(ObjectExists):
        s3.create("data/processed/R/a.csv", b"second")
    s3.create("data/input/a.csv", b"other")
    with pytest.raises(ObjectExists):
        s3.move("data/input/a.csv", "data/processed/R/a.csv")
    assert s3.read("data/processed/R/a.csv") == b"first"
    assert s3.read("data/input/a.csv") == b"other"


def test_a_move_keeps_the_objects_headers(s3: S3DropStorage) -> None:
    """The original ends unchanged, headers too: a gzipped CSV uploaded with
    ``Content-Encoding: gzip`` is still one once processed."""
    headers = {
        "ContentEncoding": "gzip",
        "ContentType": "text/csv",
        "ContentDisposition": 'attachment; filename="march.csv"',
        "CacheControl": "no-cache",
        "ContentLanguage": "fr",
    }
    s3.client.put_object(Bucket=s3.bucket, Key="data/input/march.csv", Body=b"gz", **headers)
    s3.move("data/input/march.csv", "data/processed/R/march.csv")
    head = s3.client.head_object(Bucket=s3.bucket, Key="data/processed/R/march.csv")
    assert {name: head.get(name) for name in headers} == headers


def test_a_file_uploaded_in_parts_reads_back_once_moved(s3: S3DropStorage) -> None:
    """As boto3's upload_file and `aws s3 cp` upload a big file: in parts, with CRC32s."""
    data = b"x,y\n" + b"1,2\n" * (3 * 1024 * 1024)  # 12 MiB: three parts
    in_parts = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    s3.client.upload_fileobj(io.BytesIO(data), s3.bucket, "data/input/big.csv", Config=in_parts)

    s3.move("data/input/big.csv", "data/processing/R/big.csv")

    assert s3.read("data/processing/R/big.csv") == data


def test_a_multipart_upload_moved_halfway_is_recognised(s3: S3DropStorage) -> None:
    """A copy's ETag differs from a multipart source's: the origin metadata tells them apart."""
    key, parts = "data/input/big.csv", [b"a" * 5 * 1024 * 1024, b"tail"]
    upload = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key, ContentType="text/csv")
    etags = [
        s3.client.upload_part(
            Bucket=s3.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=n, Body=body
        )["ETag"]
        for n, body in enumerate(parts, start=1)
    ]
    s3.client.complete_multipart_upload(
        Bucket=s3.bucket,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]},
    )

    def cut_short(*args: object) -> None:
        raise KeyboardInterrupt("killed between copy and delete")

    s3._delete_source = cut_short  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        s3.move(key, "data/processing/R/big.csv")
    del s3._delete_source
    assert s3.stat(key) is not None  # in both places now
    s3.move(key, "data/processing/R/big.csv")  # the next attempt only deletes
    assert s3.list_keys("data/input/") == []
    assert s3.read("data/processing/R/big.csv") == b"".join(parts)
    head = s3.client.head_object(Bucket=s3.bucket, Key="data/processing/R/big.csv")
    assert head["ContentType"] == "text/csv"


@pytest.mark.parametrize("size", [10, PART_BYTES + 10])
def test_a_streamed_write_is_one_put_or_parts_and_never_replaces(
    s3: S3DropStorage, size: int
) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    with s3.create_streamed("data/processing/R/out.csv") as out:
        for start in range(0, size, 1 << 20):
            out.write(data[start : start + (1 << 20)])
    assert s3.read("data/processing/R/out.csv") == data
    etag = s3.client.head_object(Bucket=s3.bucket, Key="data/processing/R/out.csv")["ETag"]
    assert etag.strip('"').endswith("-2") == (size > PART_BYTES)
    with pytest.raises(ObjectExists), s3.create_streamed("data/processing/R/out.csv") as out:
        out.write(b"other")
    assert s3.read("data/processing/R/out.csv") == data


def test_a_failed_streamed_write_leaves_nothing(s3: S3DropStorage) -> None:
    with pytest.raises(RuntimeError), s3.create_streamed("data/processing/R/out.csv") as out:
        out.write(b"x" * (PART_BYTES + 1))
        raise RuntimeError("the file turned out invalid")
    assert not s3.exists("data/processing/R/out.csv")
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_a_move_takes_only_the_version_it_was_given(s3: S3DropStorage) -> None:
    s3.create("data/input/a.csv", b"january")
    january = s3.stat("data/input/a.csv")
    s3.replace("data/input/a.csv", b"february")  # the user drops a new file, same name
    with pytest.raises(FileNotFoundError):
        s3.move("data/input/a.csv", "data/processing/R/a.csv", version=january.version)
    assert s3.read("data/input/a.csv") == b"february"


def _dropped_again_before(s3: S3DropStorage, operation: str, key: str, data: bytes) -> None:
    """The user drops ``data`` under ``key`` right before the move's next ``operation``."""
    real = getattr(s3.client, operation)

    def racing(**kwargs: object) -> object:
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=data)
        setattr(s3.client, operation, real)
        return real(**kwargs)

    setattr(s3.client, operation, racing)


@pytest.mark.parametrize(
    ("versioned", "before"),
    [(False, "delete_object"), (True, "delete_object"), (True, "copy_object")],
)
def test_a_file_dropped_again_mid_move_stays_and_the_checked_version_moves(
    s3: S3DropStorage, versioned: bool, before: str
) -> None:
    """A drop between the copy and the delete: the move is done and the newer drop is left
    to be processed as itself, as a local folder does (before, the refused delete failed the
    claim with a traceback and left its lease running). A drop between the check and the
    copy (versioned): the copy still takes the checked version."""
    if versioned:
        s3.client.put_bucket_versioning(
            Bucket=s3.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    s3.create("data/input/a.csv", b"january")
    january = s3.stat("data/input/a.csv")
    _dropped_again_before(s3, before, "data/input/a.csv", b"february")

    s3.move("data/input/a.csv", "data/processing/R/a.csv", version=january.version)

    assert s3.read("data/processing/R/a.csv") == b"january"
    assert s3.read("data/input/a.csv") == b"february"


def test_a_copy_refused_as_another_version_is_a_source_gone(
    s3: S3DropStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 refuses the copy (412 on CopySourceIfMatch) when a drop replaced the source
    after the check: the claim is then refused in one line, not failed with a traceback."""
    s3.create("data/input/a.csv", b"january")

    def refused(**kwargs: object) -> None:
        error = {"Error": {"Code": "PreconditionFailed", "Message": "At least one ..."}}
        raise ClientError(error, "CopyObject")

    monkeypatch.setattr(s3.client, "copy_object", refused)
    with pytest.raises(claims.ClaimRefused, match="left input/ before it could be moved"):
        claims.claim(s3, "data/input/a.csv", lease_seconds=30)
    assert [lease.state for lease in leases(s3)] == ["done"]


def test_event_key_from_a_real_listing(s3: S3DropStorage) -> None:
    """Keys as S3 URL-encodes them (EncodingType=url, like event notifications) decode back."""
    key = stage_key("input", "march batch a+b ñ.csv")
    s3.create(key, b"")
    listed = s3.client.list_objects_v2(Bucket=s3.bucket, EncodingType="url")["Contents"]
    assert decode_event_key(listed[0]["Key"]) == key


def test_missing_objects(s3: S3DropStorage) -> None:
    assert not s3.exists("data/input/none.csv")
    assert s3.stat("data/input/none.csv") is None
    with pytest.raises(claims.ClaimRefused):
        claims.claim(s3, "data/input/none.csv", lease_seconds=30)
    with pytest.raises(FileNotFoundError):
        s3.read("data/input/none.csv")
    with pytest.raises(FileNotFoundError):
        s3.move("data/input/none.csv", "data/processed/none.csv")


def test_list_pages_through_many_keys(s3: S3DropStorage) -> None:
    keys = [f"data/logs/{i:04d}.log" for i in range(1005)]
    for key in keys:
        s3.create(key, b"")
    assert s3.list_keys("data/logs/") == keys


def test_a_file_log_is_read_once_then_only_written(s3: S3DropStorage) -> None:
    s3.create("data/logs/R2/clientes_año.csv.log", b"an earlier attempt\n")
    gets: list[str] = []
    s3.client.meta.events.register("before-call.s3.GetObject", lambda **kw: gets.append("GET"))
    log = FileLog(s3, "R2", "clientes_año.csv")
    for step in ("validate", "score", "monitor"):
        with log.step(step):
            pass
    assert gets == ["GET"]
    s3.append_line(log.key, "done")
    earlier, *steps, done = s3.read(log.key).decode().splitlines()
    assert (earlier, done) == ("an earlier attempt", "done")
    assert [line.split(" | ")[1:3] for line in steps] == [
        [step, status] for step in ("validate", "score", "monitor") for status in ("start", "ok")
    ]


def test_two_writers_of_one_log_keep_each_others_lines(s3: S3DropStorage) -> None:
    """Two attempts in two processes write one run's log: a stalled attempt woken after
    its successor wrote the run's story. Before, the woken one's next line rewrote the log
    from what it had written itself, and the successor's story was gone."""
    stalled, successor = s3, S3DropStorage(s3.bucket, s3.client)
    key = "data/logs/R3/a.csv.log"
    stalled.append_line(key, "attempt 1: claim")
    successor.append_line(key, "attempt 2: claim")
    successor.append_line(key, "attempt 2: finish")
    stalled.append_line(key, "attempt 1: score failed")
    successor.append_line(key, "attempt 2: done")

    assert s3.read(key).decode().splitlines() == [
        "attempt 1: claim",
        "attempt 2: claim",
        "attempt 2: finish",
        "attempt 1: score failed",
        "attempt 2: done",
    ]


def test_open_storage_uses_boto3s_endpoint(moto_server: str) -> None:
    """AWS_ENDPOINT_URL (moto's, set by its fixture) is boto3's own: ChurnOps passes none."""
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket="churnops-drop")
    store = open_storage(get_settings(drop_storage="s3").drop)
    assert isinstance(store, S3DropStorage)
    assert store.bucket == "churnops-drop"
    store.create("data/input/a.csv", b"a")
    assert store.list_keys("data/input/") == ["data/input/a.csv"]
