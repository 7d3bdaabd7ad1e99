"""The drop bucket, S3 or a local folder with the same key layout. Every claimed drop
gets a run folder of its own, and nothing is ever written over::

    data/input/<name>                      dropped files (late labels: data/labels/)
    data/processing/<run>/<name>           a claimed file (and its outputs, while it runs)
    data/processed/<run>/<name>            the original, unchanged, and its predictions
    data/errored/<run>/<name>              an invalid file (the log says why)
    data/logs/<run>/<name>.log             the file's story, a line per step
    data/claims/<run>/<attempt>.json       who works on a run (churnops.drop.claims)
"""

from __future__ import annotations

import filecmp
import hashlib
import io
import os
import stat
import time
import urllib.parse
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Literal

from churnops.drop.keys import DROP_PREFIXES, PREFIX, drop_prefix
from churnops.settings import hide_credentials

if TYPE_CHECKING:
    from churnops.settings import DropSettings

Stage = Literal["input", "labels", "processing", "processed", "errored"]
DROP_STAGES: tuple[Stage, ...] = ("input", "labels")
RUN_STAGES: tuple[Stage, ...] = ("processing", "processed", "errored")
STAGES: tuple[Stage, ...] = (*DROP_STAGES, *RUN_STAGES)
LOGS = f"{PREFIX}/logs"
CLAIMS = f"{PREFIX}/claims"
#: Parts a big output is uploaded in (S3's minimum is 5 MiB).
PART_BYTES = 16 * 1024 * 1024
#: S3 user metadata naming the dropped object version a copy came from.
ORIGIN = "churnops-origin"
#: The headers of an object a move carries to its copy, as S3's HEAD names them.
COPIED_HEADERS = (
    "CacheControl",
    "ContentDisposition",
    "ContentEncoding",
    "ContentLanguage",
    "ContentType",
    "Expires",
)
#: NAME_MAX of a local file system: a drop must work the same on both back ends.
NAME_MAX_BYTES = 255
#: The longest name of a file the platform writes: ``.<name>.<hex12>.tmp`` must fit.
MAX_WRITTEN_NAME_BYTES = NAME_MAX_BYTES - 18
#: S3's longest key (UTF-8 bytes).
MAX_KEY_BYTES = 1024
#: The longest name a run keeps in ``data/processing/<run>/`` (run ids: 25 characters).
MAX_RUN_NAME_BYTES = MAX_KEY_BYTES - len(f"{PREFIX}/processing/{'r' * 25}/")
#: The most characters an exception takes as a reason (a log line, a row, an alert).
MAX_REASON_CHARS = 300
#: Tries of a log line whose object another writer changed meanwhile (S3).
APPEND_TRIES = 5


class ObjectExists(FileExistsError):
    """A write or move would replace an existing object: the platform never does."""


# --- keys ----------------------------------------------------------------------------
def _is_plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..")


def _check_name(name: str) -> str:
    if not _is_plain_name(name):
        raise ValueError(f"invalid file name {name!r}: expected a plain file name, no '/'")
    return name


def folder_key(stage: Stage, run: str | None = None) -> str:
    """``data/<stage>/`` or ``data/<stage>/<run>/``: the prefix of a folder's keys."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    return f"{PREFIX}/{stage}/" + (f"{_check_name(run)}/" if run else "")


def stage_key(stage: Stage, name: str) -> str:
    """``stage_key("input", "a.csv")`` -> ``"data/input/a.csv"``."""
    return folder_key(stage) + _check_name(name)


def run_key(stage: Stage, run: str, name: str) -> str:
    """``run_key("processed", "R", "a.csv")`` -> ``"data/processed/R/a.csv"``."""
    return folder_key(stage) + f"{_check_name(run)}/{_check_name(name)}"


def run_folders(storage: DropStorage, stage: Stage) -> list[str]:
    """The runs with a folder in ``data/<stage>/``, oldest first (run ids sort by time);
    the stage's own folder marker names none."""
    prefix = folder_key(stage)
    runs = {k[len(prefix) :].split("/", 1)[0] for k in storage.list_keys(prefix)}
    return sorted(run for run in runs if run)


def log_key(run: str, name: str) -> str:
    """``data/logs/<run>/<name>.log``; a name too long is cut, so a refused file has a log."""
    _check_name(name)
    if len(f"{name}.log".encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES:
        name = _cut(name)
    return f"{LOGS}/{_check_name(run)}/{name}.log"


def name_problem(name: str) -> str:
    """Why a dropped file cannot keep its name in its run (not UTF-8: no log, row or event
    takes it; too long for S3 in ``processing/<run>/``), or ''."""
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return f"the file name '{printable(name)}' is not UTF-8 text: rename it"
    if size > MAX_RUN_NAME_BYTES:
        return (
            f"the file name is too long ({size:,} bytes): its run's keys would pass S3's "
            f"{MAX_KEY_BYTES}; rename it to at most {MAX_WRITTEN_NAME_BYTES} bytes"
        )
    return ""


def run_name(name: str) -> str:
    """The name a run keeps a file under: its own, or a cut of a refused one (the claim
    keeps the original key)."""
    return _cut(name) if name_problem(name) else name


def _cut(name: str) -> str:
    """``<first bytes>~<hash of the whole>``: UTF-8, at most 200 bytes, one per name."""
    raw = name.encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(raw).hexdigest()[:8]
    return f"{raw[: NAME_MAX_BYTES - 64].decode('utf-8', 'ignore')}~{digest}"


def printable(key: str) -> str:
    """A key as logs and the database show it: bytes that are not UTF-8 as ``\\xe9``."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def name_from_key(key: str) -> str:
    """The file name of a dropped key (input or labels); a ValueError for any other key."""
    prefix = drop_prefix(key)
    name = key[len(prefix) :] if prefix else ""
    if not _is_plain_name(name):
        folders = " or ".join(map(repr, DROP_PREFIXES))
        raise ValueError(f"key {key!r} is not a file directly in {folders}: not a drop")
    return name


def split_run_key(key: str) -> tuple[Stage, str, str] | None:
    """``data/<stage>/<run>/<name>`` -> (stage, run, name); None for any other key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != PREFIX or parts[1] not in RUN_STAGES:
        return None
    if not (_is_plain_name(parts[2]) and _is_plain_name(parts[3])):
        return None
    return parts[1], parts[2], parts[3]  # type: ignore[return-value]


# --- storage -------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectInfo:
    size: int
    version: str
    modified: datetime
    #: False for a symlink, FIFO or device in a local folder: moved, refused, never read.
    regular: bool = True


class DropStorage(ABC):
    """The drop bucket by key. Writes never replace an object (:class:`ObjectExists`),
    except :meth:`replace`, for the platform's own bookkeeping (claims)."""

    uri: str
    #: What the metrics database records as the run's bucket.
    bucket: str

    def read(self, key: str) -> bytes:
        with self.open_read(key) as stream:
            return stream.read()

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """None when the object does not exist."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> None:
        """Write a new object atomically; :class:`ObjectExists` when the key is taken."""

    @abstractmethod
    def open_read(self, key: str) -> AbstractContextManager[IO[bytes]]:
        """A stream of the object (big files are never held whole); FileNotFoundError."""

    @abstractmethod
    def create_streamed(self, key: str) -> AbstractContextManager[IO[bytes]]:
        """A new object written as a stream; it appears only if the block ends cleanly."""

    @abstractmethod
    def replace(self, key: str, data: bytes) -> None:
        """Create or replace a small object (readers see the old or the new, never half)."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Sorted keys starting with ``prefix`` (an S3-style string prefix)."""

    @abstractmethod
    def move(self, src: str, dst: str, *, version: str | None = None) -> None:
        """Move an object to a free key. FileNotFoundError when ``src`` is gone (or is no
        longer ``version``); :class:`ObjectExists` when ``dst`` holds other bytes; when it
        holds the same object (a move cut short), only ``src`` goes."""

    @abstractmethod
    def append_line(self, key: str, line: str) -> None:
        """Append one line (a newline is added) to a small text object."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def changed(self, key: str, version: str) -> bool:
        """Whether ``key`` is no longer ``version``: objects never change in place on S3."""
        return False


class LocalDropStorage(DropStorage):
    """A folder with the bucket's layout: key ``a/b.csv`` is file ``root/a/b.csv``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()
        self.bucket = "local"

    def __repr__(self) -> str:
        return f"LocalDropStorage({str(self.root)!r})"

    def create_layout(self) -> None:
        for folder in (*STAGES, "logs", "claims"):
            (self.root / PREFIX / folder).mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file of a key; a ValueError for keys that would leave the root."""
        parts = PurePosixPath(key).parts
        windows = os.sep != "/" and os.sep in key  # a backslash is a POSIX name's character
        if not parts or key.startswith("/") or ".." in parts or windows:
            raise ValueError(f"invalid key {key!r}: expected a relative '/'-separated key")
        return self.root.joinpath(*parts)

    def stat(self, key: str) -> ObjectInfo | None:
        """The entry itself (lstat): a symlink is never followed, a folder is no object."""
        try:
            st = self.path(key).lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISDIR(st.st_mode):
            return None
        version = f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"
        modified = datetime.fromtimestamp(st.st_mtime, UTC)
        return ObjectInfo(st.st_size, version, modified, stat.S_ISREG(st.st_mode))

    def changed(self, key: str, version: str) -> bool:
        """A writer still writing after the file was claimed changes it in place."""
        info = self.stat(key)
        return info is not None and bool(version) and info.version != version

    def create(self, key: str, data: bytes) -> None:
        with self.create_streamed(key) as out:
            out.write(data)

    @contextmanager
    def open_read(self, key: str) -> Iterator[IO[bytes]]:
        """A regular file only: a symlink (O_NOFOLLOW) or a FIFO is refused, never read."""
        fd = os.open(self.path(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{key} is not a regular file: not read")
        with os.fdopen(fd, "rb", buffering=1 << 16) as stream:
            yield stream

    @contextmanager
    def create_streamed(self, key: str) -> Iterator[IO[bytes]]:
        # Write beside, then link: never half a file, and link (unlike rename) fails
        # when the target exists.
        tmp = self._temp_beside(key)
        try:
            with _new_file(tmp) as out:
                yield out
            os.link(tmp, self.path(key))
        except FileExistsError:
            raise ObjectExists(f"{key} exists already: not replacing it") from None
        finally:
            tmp.unlink(missing_ok=True)

    def replace(self, key: str, data: bytes) -> None:
        tmp = self._temp_beside(key)
        with _new_file(tmp) as out:
            out.write(data)
        os.replace(tmp, self.path(key))

    def _temp_beside(self, key: str) -> Path:
        """A fresh temporary name beside the key's file (the listing skips it)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")

    def list_keys(self, prefix: str) -> list[str]:
        folder = self.path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not folder.is_dir():
            return []
        entries = (p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())
        keys = (p.relative_to(self.root).as_posix() for p in entries)
        return sorted(k for k in keys if k.startswith(prefix) and not _is_temp(k))

    def move(self, src: str, dst: str, *, version: str | None = None) -> None:
        source, target = self.path(src), self.path(dst)
        info = self.stat(src)
        if info is None or (version is not None and info.version != version):
            raise FileNotFoundError(f"{src} is gone (or is another version now)")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target, follow_symlinks=False)  # fails when dst exists
        except FileExistsError:
            if not _same_object(source, target):
                raise ObjectExists(f"{dst} exists already: not replacing it") from None
        self._delete_source(source, target)
        if source.parent.parent.parent == self.root / PREFIX:  # a run folder goes, as on S3
            _remove_if_only_leftovers(source.parent)

    def _delete_source(self, source: Path, target: Path) -> None:
        """The move's second half, only if ``source`` is still the moved object: a file
        dropped under the same name meanwhile stays."""
        # Not named after the source: a dropped name may already be NAME_MAX long.
        aside = source.with_name(f".aside-{uuid.uuid4().hex}.tmp")
        os.rename(source, aside)  # atomic: from here no new drop can take that name's entry
        if _same_object(aside, target):
            aside.unlink()
            return
        try:  # a newer drop: put it back
            os.link(aside, source, follow_symlinks=False)
        except FileExistsError:  # and a newer still: keep this one under a name of its own
            os.link(aside, source.with_name(f"{uuid.uuid4().hex[:8]}-{source.name}"))
        aside.unlink()

    def append_line(self, key: str, line: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as out:
            out.write(line.rstrip("\n") + "\n")


def _same_object(a: Path, b: Path) -> bool:
    """Two names of one inode, or two regular files with the same content: a move whose
    target holds its bytes is done, as S3DropStorage takes equal ETags (a duplicate output
    of a stalled attempt). lstat: a symlink or FIFO is never followed, never read."""
    sa, sb = a.lstat(), b.lstat()
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    return stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode) and filecmp.cmp(a, b, False)


def _remove_if_only_leftovers(folder: Path) -> None:
    """Remove a run folder left with nothing but the partial writes of attempts killed
    mid-write (``.<name>.<hex>.tmp``: no listing shows them, no attempt finishes them)."""
    with suppress(OSError):  # another file of the run is still there, or a move's aside
        left = list(folder.iterdir())
        if all(_is_temp(p.name) and not p.name.startswith(".aside-") for p in left):
            for partial in left:
                partial.unlink(missing_ok=True)
            folder.rmdir()


def _new_file(path: Path) -> IO[bytes]:
    """A file that did not exist, with the usual permissions (the umask applies)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb", 1 << 20)


def _is_temp(key: str) -> bool:
    base = key.rsplit("/", 1)[-1]
    return base.startswith(".") and base.endswith(".tmp")


class S3DropStorage(DropStorage):
    """A bucket through a boto3 S3 client; conditional writes keep every write new."""

    def __init__(self, bucket: str, client: Any) -> None:
        self.bucket = bucket
        self.client = client
        self.uri = f"s3://{bucket}"
        #: Logs this instance wrote (append_line): bytes and ETag.
        self._written: dict[str, tuple[bytes, str]] = {}

    def __repr__(self) -> str:
        return f"S3DropStorage({self.bucket!r})"

    def stat(self, key: str) -> ObjectInfo | None:
        head = self._head(key)
        return None if head is None else _info(head)

    def create(self, key: str, data: bytes) -> None:
        with _never_replacing(self.client, f"s3://{self.bucket}/{key}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")

    @contextmanager
    def open_read(self, key: str) -> Iterator[IO[bytes]]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"s3://{self.bucket}/{key}") from exc
        with closing(body):
            yield body

    @contextmanager
    def create_streamed(self, key: str) -> Iterator[IO[bytes]]:
        writer = _PartWriter(self, key)
        try:
            yield writer
            writer.finish()
        except BaseException:
            writer.abort()
            raise

    def replace(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def list_keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def move(self, src: str, dst: str, *, version: str | None = None) -> None:
        """Copy (only that version, only to a free key), then delete that version."""
        head = self._head(src)
        if head is None or (version is not None and _info(head).version != version):
            raise FileNotFoundError(f"s3://{self.bucket}/{src} is gone (or another version)")
        target = self._head(dst)
        if target is None:
            self._copy(src, dst, head)
        elif _origin(target) != _origin(head) and target["ETag"] != head["ETag"]:
            raise ObjectExists(f"s3://{self.bucket}/{dst} exists already: not replacing it")
        self._delete_source(src, head)

    def _copy(self, src: str, dst: str, head: dict) -> None:
        """Copy exactly the version ``head`` describes (its version id in a versioned
        bucket, else its ETag): a source replaced since is FileNotFoundError, as gone."""
        source = {"Bucket": self.bucket, "Key": src}
        if _versioned(head):
            source["VersionId"] = head["VersionId"]
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=dst,
                CopySource=source,
                CopySourceIfMatch=head["ETag"],
                # A checksum of its own: a multipart source's is its parts' (moto even
                # gives the copy that one, and every read of it then fails its check).
                ChecksumAlgorithm="CRC32",
                MetadataDirective="REPLACE",
                Metadata={**head.get("Metadata", {}), ORIGIN: _origin(head)},
                **{"ContentType": "binary/octet-stream"} | _headers(head),
            )
        except self.client.exceptions.ClientError as exc:
            if _code(exc) not in (*_REPLACED, *_MISSING):
                raise
            raise FileNotFoundError(
                f"s3://{self.bucket}/{src} is gone (or another version)"
            ) from exc

    def _head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise

    def _delete_source(self, key: str, head: dict) -> None:
        """The move's second half: exactly the version copied, never a newer drop (a
        refused delete: one took the name since the copy, and stays to be processed)."""
        if _versioned(head):
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=head["VersionId"])
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=head["ETag"])
        except self.client.exceptions.ClientError as exc:
            if _code(exc) not in (*_REPLACED, *_MISSING):
                raise

    def append_line(self, key: str, line: str) -> None:
        """Rewrite the object with the line added (S3 cannot append): one PUT a line, on
        condition that the object is still what this instance last wrote or read. Another
        writer's lines (a stalled attempt woken beside its successor, in its own process)
        are then read back in, never written over."""
        added = (line.rstrip("\n") + "\n").encode("utf-8")
        for _ in range(APPEND_TRIES):
            old, etag = self._written.get(key) or self._read_tagged(key)
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                with _never_replacing(self.client, f"s3://{self.bucket}/{key}"):
                    answer = self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=old + added, **condition
                    )
            except ObjectExists:  # another writer's line came first: read it, try again
                self._written.pop(key, None)
                continue
            self._written[key] = (old + added, answer["ETag"])
            return
        raise ObjectExists(f"s3://{self.bucket}/{key} kept changing: line not added")

    def _read_tagged(self, key: str) -> tuple[bytes, str | None]:
        """The object's bytes and ETag; nothing and None when there is none yet."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return b"", None
        with closing(answer["Body"]) as body:
            return body.read(), answer["ETag"]


class _PartWriter(io.RawIOBase):
    """Parts of ``PART_BYTES`` uploaded as bytes arrive, a small object one PUT; both end
    with ``If-None-Match: *``, so an object is never replaced."""

    def __init__(self, storage: S3DropStorage, key: str) -> None:
        self.storage, self.key = storage, key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buffer += data
        if len(self.buffer) >= PART_BYTES:
            self._upload_part()
        return len(data)

    def _upload_part(self) -> None:
        client, bucket = self.storage.client, self.storage.bucket
        if self.upload_id is None:
            upload = client.create_multipart_upload(Bucket=bucket, Key=self.key)
            self.upload_id = upload["UploadId"]
        number = len(self.parts) + 1
        answer = client.upload_part(
            Bucket=bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=bytes(self.buffer),
        )
        self.parts.append({"ETag": answer["ETag"], "PartNumber": number})
        self.buffer.clear()

    def finish(self) -> None:
        if self.upload_id is None:
            self.storage.create(self.key, bytes(self.buffer))
            return
        if self.buffer:
            self._upload_part()
        client, bucket = self.storage.client, self.storage.bucket
        with _never_replacing(client, f"s3://{bucket}/{self.key}"):
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
                IfNoneMatch="*",
            )
        self.upload_id = None

    def abort(self) -> None:
        """Drop the parts uploaded so far (the bucket's lifecycle rule is the backstop)."""
        if self.upload_id is not None:
            with suppress(Exception):
                self.storage.client.abort_multipart_upload(
                    Bucket=self.storage.bucket, Key=self.key, UploadId=self.upload_id
                )


#: Error codes of S3 for a key with no object, and for a condition on an object version
#: that no longer holds (the key holds another object now).
_MISSING = ("404", "NoSuchKey", "NotFound")
_REPLACED = ("PreconditionFailed", "412")


def _versioned(head: dict) -> bool:
    return head.get("VersionId") not in (None, "", "null")


def _info(head: dict) -> ObjectInfo:
    """Size, version and time from a HEAD answer (ETag and time without versioning)."""
    stamp = f"{head['ETag'].strip(chr(34))}@{head['LastModified'].isoformat()}"
    version = head["VersionId"] if _versioned(head) else stamp
    return ObjectInfo(head["ContentLength"], version, head["LastModified"])


def _headers(head: dict) -> dict[str, Any]:
    """The object's own headers, which a copy given new metadata (``REPLACE``) loses unless
    given again: a dropped ``.csv`` stored gzipped with ``Content-Encoding: gzip`` stays so."""
    return {name: head[name] for name in COPIED_HEADERS if head.get(name)}


def _origin(head: dict) -> str:
    """The version as dropped, carried along every move: a copy of a multipart upload has
    another ETag, so a move cut short is recognised by this."""
    return head.get("Metadata", {}).get(ORIGIN) or _info(head).version


@contextmanager
def _never_replacing(client: Any, where: str) -> Iterator[None]:
    """A conditional write (``If-None-Match: *``) refused: the key holds an object."""
    try:
        yield
    except client.exceptions.ClientError as exc:
        if _code(exc) not in (*_REPLACED, "ConditionalRequestConflict"):
            raise
        raise ObjectExists(f"{where} exists already") from None


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client whose outage fails in seconds (bounded retries and timeouts)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=60
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def bucket_problem(client: Any, bucket: str) -> str:
    """Why the drop bucket cannot be listed (missing, no credentials, endpoint down), in
    one line, or '': checked before anything else is done with it."""
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/", MaxKeys=1)
    except Exception as exc:
        return f"cannot list the drop bucket s3://{bucket}: {brief(exc)}"
    return ""


def open_drop(uri: str) -> DropStorage:
    """The drop a URI names, ``s3://<bucket>`` or ``file:///<folder>``: a flow run's
    trigger, not this process's settings, says where its file is."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "s3" and parsed.netloc and parsed.path in ("", "/"):
        return S3DropStorage(parsed.netloc, s3_client())
    if parsed.scheme == "file" and parsed.path:
        storage = LocalDropStorage(Path(urllib.request.url2pathname(parsed.path)))
        storage.create_layout()
        return storage
    raise ValueError(f"drop {uri!r} is neither s3://<bucket> nor file:///<folder>")


def open_storage(drop: DropSettings, bucket: str | None = None) -> DropStorage:
    """The default drop of these settings (``drop.drop_uri``), or another bucket."""
    return open_drop(f"s3://{bucket}" if bucket else drop.drop_uri)


# --- per-file log ---------------------------------------------------------------------
@dataclass
class StepRecord:
    """Handed out by :meth:`FileLog.step`; set ``message`` to say what the step did."""

    name: str
    message: str = ""


class FileLog:
    """The story of one file in one run, a line per event, in ``data/logs/<run>/<name>.log``."""

    def __init__(self, storage: DropStorage, run: str, name: str) -> None:
        self.storage = storage
        self.key = log_key(run, name)

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
            self.write(name, "failed", brief(exc), time.perf_counter() - started)
            raise
        self.write(name, "ok", record.message, time.perf_counter() - started)


def brief(exc: BaseException) -> str:
    """``<class>: <first line>``, at most ``MAX_REASON_CHARS`` (the whole text may quote a
    50 MB value or a server's error page), no URL's password in it."""
    lines = hide_credentials(str(exc)).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= MAX_REASON_CHARS else f"{text[: MAX_REASON_CHARS - 1]}…"
