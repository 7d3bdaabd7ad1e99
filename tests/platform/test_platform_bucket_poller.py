"""The polling drop watcher against a real S3 API (moto server)."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest

from churnops.platform.watcher import BucketPoller, Dispatcher

pytestmark = pytest.mark.integration


def test_new_keys_are_reported_once_and_a_rewrite_again(moto_server: str, moto_bucket: str) -> None:
    client = boto3.client("s3", endpoint_url=moto_server)
    events: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
        events.append(event["Records"][0])
        return {"results": []}

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

    first, labels, second = events
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
    sequencers: list[str] = []

    def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
        sequencers.append(event["Records"][0]["s3"]["object"]["sequencer"])
        return {"results": []}

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
    assert len(set(sequencers)) == 2
    assert len(poller.seen) == 1  # what left the bucket is forgotten
