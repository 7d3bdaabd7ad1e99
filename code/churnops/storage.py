"""The drop bucket: where customer files arrive, wait, and end up.

One key layout on both back ends, S3 or a local folder standing in for it:
``data/input/<name>`` -> ``data/processing/<name>`` -> ``data/processed/<name>``
or ``data/errored/<name>``, plus one log per file in ``data/logs/<name>.log``.
Keys are always '/'-separated and relative, exactly as S3 shows them.
"""

from __future__ import annotations

import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote_plus

if TYPE_CHECKING:
    from churnops.settings import Settings

Stage = Literal["input", "processing", "processed", "errored"]
STAGES: tuple[Stage, ...] = ("input", "processing", "processed", "errored")
PREFIX = "data"
LOGS = f"{PREFIX}/logs"
INPUT_PREFIX = f"{PREFIX}/input/"


# --- keys ----------------------------------------------------------------------------
def _is_plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..")


def _check_name(name: str) -> str:
    if not _is_plain_name(name):
        raise ValueError(f"invalid file name {name!r}: expected a plain file name, no '/'")
    return name


def stage_key(stage: Stage, name: str) -> str:
    """``stage_key("processing", "a.csv")`` -> ``"data/processing/a.csv"``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    return f"{PREFIX}/{stage}/{_check_name(name)}"


def log_key(name: str) -> str:
    """The per-file log: ``data/logs/<name>.log``."""
    return f"{LOGS}/{_check_name(name)}.log"


def name_from_key(key: str) -> str:
    """The file name of an input key; a ValueError when the key is not a file in input."""
    if not key.startswith(INPUT_PREFIX):
        raise ValueError(
            f"key {key!r} is not under {INPUT_PREFIX!r}: only input files are processed"
        )
    name = key[len(INPUT_PREFIX) :]
    if not _is_plain_name(name):
        raise ValueError(f"key {key!r} is not a file directly in {INPUT_PREFIX!r}")
    return name


def decode_event_key(key: str) -> str:
    """S3 event notifications URL-encode keys (space -> '+', '+' -> '%2B', UTF-8 -> %XX)."""
    return unquote_plus(key)


# --- storage -------------------------------------------------------------------------
class DropStorage(ABC):
    """Byte-level access to the drop bucket by key."""

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when it does not exist."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Create or replace the object."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Sorted keys starting with ``prefix`` (an S3-style string prefix)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Move an object, replacing ``dst``; FileNotFoundError when ``src`` is gone."""

    @abstractmethod
    def append_line(self, key: str, line: str) -> None:
        """Append one line (a newline is added) to a small text object."""

    @abstractmethod
    def claim(self, name: str) -> str | None:
        """Move ``data/input/<name>`` to processing and return the processing key.

        None when the file is no longer in input, or is already in processing,
        processed or errored: someone else took it, or it was already handled.
        """

    def _taken(self, name: str) -> bool:
        return any(self.exists(stage_key(s, name)) for s in STAGES if s != "input")


class LocalDropStorage(DropStorage):
    """A folder with the bucket's layout: key ``a/b.csv`` is file ``root/a/b.csv``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalDropStorage({str(self.root)!r})"

    def create_layout(self) -> None:
        """Create the five stage folders."""
        for folder in (*STAGES, "logs"):
            (self.root / PREFIX / folder).mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file of a key; a ValueError for keys that would leave the root."""
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or ".." in parts or "\\" in key:
            raise ValueError(f"invalid key {key!r}: expected a relative '/'-separated key")
        return self.root.joinpath(*parts)

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        # Write beside the target, then rename: readers never see half a file.
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list_keys(self, prefix: str) -> list[str]:
        folder = self.path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not folder.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not _is_temp(k))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def move(self, src: str, dst: str) -> None:
        target = self.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(src), target)

    def append_line(self, key: str, line: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as out:
            out.write(line.rstrip("\n") + "\n")

    def claim(self, name: str) -> str | None:
        """The rename is atomic: of two claimers of one file, exactly one wins."""
        dst = stage_key("processing", name)
        if self._taken(name):
            return None
        target = self.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.path(stage_key("input", name)), target)
        except FileNotFoundError:
            return None
        return dst


def _is_temp(key: str) -> bool:
    """Half-written files of :meth:`LocalDropStorage.write`."""
    base = key.rsplit("/", 1)[-1]
    return base.startswith(".") and base.endswith(".tmp")


class S3DropStorage(DropStorage):
    """A bucket through a boto3 S3 client."""

    def __init__(self, bucket: str, client: Any) -> None:
        self.bucket = bucket
        self.client = client

    def __repr__(self) -> str:
        return f"S3DropStorage({self.bucket!r})"

    def read(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"s3://{self.bucket}/{key}") from exc
        return response["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def list_keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def move(self, src: str, dst: str) -> None:
        """Copy then delete: S3 has no rename."""
        try:
            self.client.copy_object(
                Bucket=self.bucket, Key=dst, CopySource={"Bucket": self.bucket, "Key": src}
            )
        except self.client.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
                raise FileNotFoundError(f"s3://{self.bucket}/{src}") from exc
            raise
        self.client.delete_object(Bucket=self.bucket, Key=src)

    def append_line(self, key: str, line: str) -> None:
        """Read-modify-write (S3 cannot append); fine for small logs with one writer."""
        try:
            old = self.read(key)
        except FileNotFoundError:
            old = b""
        self.write(key, old + (line.rstrip("\n") + "\n").encode("utf-8"))

    def claim(self, name: str) -> str | None:
        """Check, then copy and delete.

        Not atomic: two workers handling duplicate events for one file at the
        same moment can both pass the checks before either copy lands, and both
        process it (S3 events are delivered at least once). The checks shrink that
        window to the copy's duration; the outcome is a duplicate run, never a
        lost file.
        """
        src, dst = stage_key("input", name), stage_key("processing", name)
        if not self.exists(src) or self._taken(name):
            return None
        try:
            self.move(src, dst)
        except FileNotFoundError:
            return None
        return dst


def open_storage(settings: Settings, bucket: str | None = None) -> DropStorage:
    """The drop storage chosen by ``settings.drop_storage`` (bucket defaults to DROP_BUCKET)."""
    if settings.drop_storage == "s3":
        import boto3

        client = boto3.client("s3", endpoint_url=settings.aws_endpoint_url)
        return S3DropStorage(bucket or settings.drop_bucket, client)
    storage = LocalDropStorage(settings.drop_dir)
    storage.create_layout()
    return storage


# --- per-file log ---------------------------------------------------------------------
@dataclass
class StepRecord:
    """Handed out by :meth:`FileLog.step`; set ``message`` to say what the step did."""

    name: str
    message: str = ""


class FileLog:
    """The story of one file, a line per event, in ``data/logs/<name>.log``."""

    def __init__(self, storage: DropStorage, name: str) -> None:
        self.storage = storage
        self.key = log_key(name)

    def write(
        self, step: str, status: str, message: str = "", seconds: float | None = None
    ) -> None:
        """Append ``time | step | status | duration | message`` (continuation lines indented)."""
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        duration = "" if seconds is None else f"{seconds:.3f}s"
        text = message.strip().replace("\n", "\n    ")
        self.storage.append_line(self.key, f"{stamp} | {step} | {status} | {duration} | {text}")

    @contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        """Log start, then end with the duration, or the exception text (re-raised)."""
        record = StepRecord(name)
        self.write(name, "start")
        started = time.perf_counter()
        try:
            yield record
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.write(name, "failed", reason, time.perf_counter() - started)
            raise
        self.write(name, "ok", record.message, time.perf_counter() - started)
