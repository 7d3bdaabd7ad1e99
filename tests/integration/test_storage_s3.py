"""S3DropStorage against a real moto server."""

from __future__ import annotations

import boto3
import pytest

from churnops.settings import get_settings
from churnops.storage import FileLog, S3DropStorage, decode_event_key, open_storage, stage_key

pytestmark = pytest.mark.integration

NAMES = ["customer_churn_1.csv", "march batch.csv", "a+b.csv", "clientes_año_ü.csv"]


@pytest.fixture
def s3(moto_server: str, moto_bucket: str) -> S3DropStorage:
    settings = get_settings(drop_storage="s3", aws_endpoint_url=moto_server)
    store = open_storage(settings, moto_bucket)
    assert isinstance(store, S3DropStorage)
    return store


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_and_claim(s3: S3DropStorage, name: str) -> None:
    src = stage_key("input", name)
    s3.write(src, b"x,y\n1,2\n")
    assert s3.exists(src)
    assert s3.list_keys("data/input/") == [src]
    assert s3.claim(name) == stage_key("processing", name)
    assert s3.read(stage_key("processing", name)) == b"x,y\n1,2\n"
    assert not s3.exists(src)
    assert s3.claim(name) is None
    s3.move(stage_key("processing", name), stage_key("processed", name))
    assert s3.list_keys("data/") == [stage_key("processed", name)]


def test_event_key_from_a_real_listing(s3: S3DropStorage) -> None:
    """Keys as S3 URL-encodes them (EncodingType=url, like event notifications) decode back."""
    key = stage_key("input", "march batch a+b ñ.csv")
    s3.write(key, b"")
    listed = s3.client.list_objects_v2(Bucket=s3.bucket, EncodingType="url")["Contents"]
    assert decode_event_key(listed[0]["Key"]) == key


def test_claim_refuses_a_file_already_handled(s3: S3DropStorage) -> None:
    s3.write("data/errored/a.csv", b"bad")
    s3.write("data/input/a.csv", b"again")
    assert s3.claim("a.csv") is None
    assert s3.exists("data/input/a.csv")


def test_missing_objects(s3: S3DropStorage) -> None:
    assert not s3.exists("data/input/none.csv")
    assert s3.claim("none.csv") is None
    with pytest.raises(FileNotFoundError):
        s3.read("data/input/none.csv")
    with pytest.raises(FileNotFoundError):
        s3.move("data/input/none.csv", "data/processed/none.csv")


def test_list_pages_through_many_keys(s3: S3DropStorage) -> None:
    keys = [f"data/logs/{i:04d}.log" for i in range(1005)]
    for key in keys:
        s3.write(key, b"")
    assert s3.list_keys("data/logs/") == keys


def test_append_and_file_log(s3: S3DropStorage) -> None:
    log = FileLog(s3, "clientes_año.csv")
    with log.step("validate"):
        pass
    s3.append_line(log.key, "done")
    lines = s3.read("data/logs/clientes_año.csv.log").decode().splitlines()
    assert [line.split(" | ")[1:3] for line in lines[:2]] == [
        ["validate", "start"],
        ["validate", "ok"],
    ]
    assert lines[2] == "done"


def test_open_storage_uses_the_endpoint(moto_server: str) -> None:
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket="churnops-drop")
    store = open_storage(get_settings(drop_storage="s3", aws_endpoint_url=moto_server))
    assert isinstance(store, S3DropStorage)
    assert store.bucket == "churnops-drop"
    store.write("data/input/a.csv", b"a")
    assert store.list_keys("data/input/") == ["data/input/a.csv"]
