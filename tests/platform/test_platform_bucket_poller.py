"""The polling drop watcher against a real S3 API (moto server)."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from unittest.mock import Mock

import boto3
import pytest
from rich.console import Console

from churnops.platform import launch
from churnops.platform.watcher import BucketPoller, Dispatcher
from churnops.settings import get_settings


def test_new_keys_are_reported_once_and_a_rewrite_again(moto_server: str, moto_bucket: str) -> None:
    client = boto3.client("s3", endpoint_url=moto_server)
    handler = Mock(return_value={"results": []})
    poller = BucketPoller(client, moto_bucket, Dispatcher(handler, moto_bucket, print), 60)
    client.put_object(Bucket=moto_bucket, Key="data/input/a b+c.csv", Body=b"1")
    client.put_object(Bucket=moto_bucket, Key="data/input/sub/x.csv", Body=b"1")
    client.put_object(Bucket=moto_bucket, Key="data/input/.partial", Body=b"1")
    client.put_object(Bucket=moto_bucket, Key="data/processed/done.csv", Body=b"1")
    client.put_object(Bucket=moto_bucket, Key="data/labels/late.csv", Body=b"333")

    assert poller.poll_once() == 2
    assert poller.poll_once() == 0
    client.put_object(Bucket=moto_bucket, Key="data/input/a b+c.csv", Body=b"22")
    assert poller.poll_once() == 1

    first, labels, second = (call.args[0]["Records"][0] for call in handler.call_args_list)
    assert labels["s3"]["object"]["key"] == "data/labels/late.csv"
    assert first["s3"]["bucket"]["name"] == moto_bucket
    assert first["s3"]["object"]["key"] == "data/input/a+b%2Bc.csv"
    assert (first["s3"]["object"]["size"], second["s3"]["object"]["size"]) == (1, 2)
    assert first["s3"]["object"]["sequencer"] != second["s3"]["object"]["sequencer"]


def test_a_file_dropped_again_with_the_same_bytes_is_reported_again(
    moto_server: str, moto_bucket: str
) -> None:
    """Taken away by its run, then dropped again unchanged (late labels dropped again once
    their file is scored, as the docs ask): the same ETag, a new drop, reported at once."""
    client = boto3.client("s3", endpoint_url=moto_server)
    handler = Mock(return_value={"results": []})
    poller = BucketPoller(client, moto_bucket, Dispatcher(handler, moto_bucket, print), 60)
    key = "data/labels/late.csv"
    client.put_object(Bucket=moto_bucket, Key=key, Body=b"same bytes")
    assert poller.poll_once() == 1
    client.delete_object(Bucket=moto_bucket, Key=key)  # its run moved it
    assert poller.poll_once() == 0
    time.sleep(1.1)  # S3's LastModified counts whole seconds
    client.put_object(Bucket=moto_bucket, Key=key, Body=b"same bytes")

    assert poller.poll_once() == 1
    assert poller.poll_once() == 0
    records = [call.args[0]["Records"][0] for call in handler.call_args_list]
    assert len({record["s3"]["object"]["sequencer"] for record in records}) == 2
    assert len(poller.seen) == 1  # what left the bucket is forgotten


@pytest.mark.parametrize("problem", ["NoSuchBucket", "Unable to locate credentials"])
def test_up_with_a_drop_bucket_it_cannot_list_says_so_in_one_line_and_starts_nothing(
    moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    """Before: every service started, then a warning every 5 s for ever."""
    monkeypatch.setenv("CHURNOPS_HOME", str(tmp_path))
    monkeypatch.setenv("DROP_STORAGE", "s3")
    monkeypatch.setenv("DROP_BUCKET", "no-such-bucket")
    if problem != "NoSuchBucket":
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance to ask
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # its credentials are cached
    out, errors = io.StringIO(), io.StringIO()

    code = launch.run(get_settings(), Console(file=out, width=200), Console(file=errors, width=200))

    assert code == 1
    line = errors.getvalue().strip()
    assert "\n" not in line and "s3://no-such-bucket" in line and problem in line, line
    assert not list(tmp_path.glob("logs/prefect*")), out.getvalue()  # no server started


def test_a_listing_that_keeps_failing_is_logged_once_and_its_recovery_once(
    moto_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = boto3.client("s3", endpoint_url=moto_server)
    bucket = f"later-{time.time_ns()}"
    poller = BucketPoller(client, bucket, Dispatcher(lambda e, c: {}, bucket, print), 60)
    caplog.set_level(logging.INFO, "churnops.watcher")

    failing = poller.poll_logged(poller.poll_logged(poller.poll_logged("")))
    client.create_bucket(Bucket=bucket)
    assert poller.poll_logged(poller.poll_logged(failing)) == ""

    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "NoSuchBucket" in lines[0] and "works again" in lines[1]
