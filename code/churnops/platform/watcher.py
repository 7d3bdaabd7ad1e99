"""The local platform's drop trigger: S3-shaped events for the Lambda's handler
(:func:`churnops.drop.trigger.handle_event`) from :class:`FolderWatcher` (a local folder)
or :class:`BucketPoller` (S3). Both report what already waits when they start; the
handler's idempotency key keeps a file seen twice from starting two runs."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from churnops.drop.keys import (
    DROP_PREFIXES,
    PREFIX,
    encode_event_key,
    is_candidate,
    is_folder_marker,
    not_a_drop,
)
from churnops.drop.storage import brief
from churnops.drop.trigger import Config, handle_event, start_flow_run

log = logging.getLogger("churnops.watcher")
Handler = Callable[[Mapping[str, Any], object], Mapping[str, Any]]


def trigger(api_url: str, deployment: str, drop: str | None = None) -> Handler:
    """The Lambda's handling of an event, configured by arguments; ``drop`` is what the
    flow runs read (a ``file://`` URI), None the Lambda's ``s3://<event bucket>``."""
    config = dataclasses.replace(_config(api_url, deployment), drop=drop)
    return lambda event, context: handle_event(event, config)


def start_deployment_run(api_url: str, deployment: str, idempotency_key: str, name: str) -> None:
    """One run of a deployment through the Lambda's Prefect client."""
    start_flow_run(_config(api_url, deployment), {}, idempotency_key, name)


def _config(api_url: str, deployment: str) -> Config:
    return Config.from_env({"PREFECT_API_URL": api_url, "PREFECT_DEPLOYMENT": deployment})


# --- events ------------------------------------------------------------------------------
def s3_event(bucket: str, key: str, size: int, sequencer: str) -> dict[str, Any]:
    """One ``ObjectCreated:Put`` record as S3 event notifications shape it."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": encode_event_key(key), "size": size, "sequencer": sequencer},
                },
            }
        ]
    }


def file_sequencer(stat: os.stat_result) -> str:
    """Unique per drop, stable for one: the inode and ctime tell a same-name replacement
    apart even with the same size and a copied mtime."""
    return f"{stat.st_ino:X}{stat.st_ctime_ns:X}{stat.st_mtime_ns:X}{stat.st_size:08X}"


def wait_stable(path: Path, interval: float = 0.15, timeout: float = 60.0) -> os.stat_result | None:
    """The entry's lstat once two looks ``interval`` apart agree; None if it went away."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        try:
            stat = path.lstat()  # a symlink is reported as itself, never followed
        except FileNotFoundError:
            return None
        current = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if current == previous or time.monotonic() > deadline:
            return stat
        previous = current
        time.sleep(interval)


class Dispatcher:
    """Calls the handler for each reported file, one at a time."""

    def __init__(self, handler: Handler, bucket: str, on_result: Callable[[dict], None]) -> None:
        self.handler = handler
        self.bucket = bucket
        self.on_result = on_result

    def send(self, key: str, size: int, sequencer: str) -> None:
        try:
            response = self.handler(s3_event(self.bucket, key, size, sequencer), None)
        except Exception as exc:  # Prefect unreachable after retries: say so, keep watching
            # Nothing sends this event again (no Lambda retry here): the reconciler takes
            # files left in input/. One line, through on_result.
            reason = f"{exc}; the reconciler starts it once Prefect answers"
            self.on_result({"key": key, "status": "failed", "reason": reason})
            return
        for result in response.get("results", []):
            self.on_result(result)


# --- local folder --------------------------------------------------------------------------
#: The quiet period of a file that appeared without a close-write of its own (s).
SETTLE_SECONDS = 1.0


def _observer() -> BaseObserver:
    """Linux: inotify reporting a file renamed in from elsewhere as moved (whole, sent
    without the quiet period), not created. Elsewhere, the default observer."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except Exception:  # no inotify on this system
        return Observer()
    return InotifyObserver(generate_full_events=True)


class FolderWatcher(FileSystemEventHandler):
    """Trigger a run per new file in the drop folders once its writer is done: a
    close-write, a rename in (atomic: sent at once), or a file unchanged for
    :data:`SETTLE_SECONDS`. A writer going on later changes the claimed version."""

    def __init__(self, drop_dir: Path, dispatcher: Dispatcher) -> None:
        self.drop_dir = drop_dir
        self.folders = [drop_dir / prefix for prefix in DROP_PREFIXES]
        self.dispatcher = dispatcher
        self._queue: queue.Queue[tuple[Path, float] | None] = queue.Queue()
        self._queued: set[Path] = set()
        #: Written to since last closed: their close-write reports them.
        self._writing: set[Path] = set()
        #: Closed or renamed in since last written: whole, even when empty.
        self._whole: set[Path] = set()
        self._seen: set[Path] = set()
        self._lock = threading.Lock()
        self._observer = _observer()
        self._worker = threading.Thread(target=self._work, name="drop-dispatch", daemon=True)

    def start(self) -> None:
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._observer.schedule(self, str(folder), recursive=False)
        self._observer.start()
        self._worker.start()
        for folder in self.folders:  # dropped while the platform was down
            for path in sorted(folder.iterdir()):
                self._enqueue(path)

    def stop(self) -> None:
        self._observer.stop()
        self._queue.put(None)
        self._observer.join(timeout=10)
        self._worker.join(timeout=30)

    def on_created(self, event: FileSystemEvent) -> None:
        self._enqueue(Path(str(event.src_path)))

    def on_modified(self, event: FileSystemEvent) -> None:
        path = Path(str(event.src_path))
        with self._lock:
            self._writing.add(path)
            self._whole.discard(path)

    def on_closed(self, event: FileSystemEvent) -> None:
        path = Path(str(event.src_path))
        with self._lock:
            self._writing.discard(path)
        self._enqueue(path, whole=True)

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.dest_path:  # else renamed out
            self._enqueue(Path(str(event.dest_path)), renamed=True, whole=True)

    def _enqueue(self, path: Path, renamed: bool = False, whole: bool = False) -> None:
        if path.parent not in self.folders or not is_candidate(path.name):
            return  # hidden, temporary or partial: the writer renames it when done
        folder = path.is_dir() and not path.is_symlink()
        marks = self._seen if folder else self._queued  # a folder: logged once
        with self._lock:
            if whole and not folder:  # closed by its writer or renamed in, maybe queued
                self._whole.add(path)
            if path in marks:
                return
            marks.add(path)
        if folder:
            log.info("ignored the folder %s: only files directly in it are processed", path)
            return
        self._queue.put((path, 0.0 if renamed else SETTLE_SECONDS))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            path, settle = item
            with self._lock:
                self._queued.discard(path)
            stable = wait_stable(path, settle)
            if stable is None:
                continue  # gone already (taken by a run, or removed)
            with self._lock:
                # Being written, or created and not yet written: its close-write reports
                # it. An empty file its writer closed is sent: S3 sends an empty object too.
                if path in self._writing or (stable.st_size == 0 and path not in self._whole):
                    continue
                self._whole.discard(path)
            key = path.relative_to(self.drop_dir).as_posix()
            self.dispatcher.send(key, stable.st_size, file_sequencer(stable))


# --- S3-compatible endpoint --------------------------------------------------------------------
#: How often the platform lists an S3 drop bucket for new files (s).
POLL_SECONDS = 5.0


class BucketPoller:
    """List the drop folders of a bucket every ``interval`` seconds; report each new object
    version: (key, ETag and time), as the claim tells drops apart. A file dropped again
    with the same bytes is a new drop (its ETag alone would hide it until the reconciler)."""

    def __init__(
        self, client: Any, bucket: str, dispatcher: Dispatcher, interval: float = POLL_SECONDS
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.dispatcher = dispatcher
        self.interval = interval
        #: (key, sequencer) of the drops listed last time: one gone is forgotten.
        self.seen: set[tuple[str, str]] = set()
        #: Keys logged once as not drops (in a subfolder).
        self.ignored: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bucket-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def poll_once(self) -> int:
        """Report every new object; returns how many."""
        reported = 0
        listed: set[tuple[str, str]] = set()
        for obj in self._dropped_objects():
            key, etag = obj["Key"], obj["ETag"].strip('"')
            stamp = f"{etag}:{obj['LastModified'].isoformat()}".encode()
            sequencer = hashlib.sha256(stamp).hexdigest()[:24].upper()
            listed.add((key, sequencer))
            if (key, sequencer) in self.seen:
                continue
            self.seen.add((key, sequencer))
            self.dispatcher.send(key, obj["Size"], sequencer)
            reported += 1
        self.seen &= listed
        return reported

    def _dropped_objects(self) -> Iterator[dict]:
        """The objects directly in the drop folders, input first."""
        paginator = self.client.get_paginator("list_objects_v2")
        for prefix in DROP_PREFIXES:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if (why := not_a_drop(key)) is None:
                        yield obj
                    elif not is_folder_marker(key) and key not in self.ignored:
                        self.ignored.add(key)  # one line per key
                        log.info("ignored %s: %s", key, why)

    def _loop(self) -> None:
        failing = ""
        while not self._stop.is_set():
            failing = self.poll_logged(failing)
            self._stop.wait(self.interval)

    def poll_logged(self, failing: str) -> str:
        """One round; ``failing``: why the last one failed. A failure is logged when it
        starts or changes, not every round, and the recovery once."""
        try:
            self.poll_once()
        except Exception as exc:  # endpoint down for a moment: try again next round
            if brief(exc) != failing:
                log.warning("listing s3://%s/%s/ failed, retrying: %s", self.bucket, PREFIX, exc)
            return brief(exc)
        if failing:
            log.warning("listing s3://%s/%s/ works again", self.bucket, PREFIX)
        return ""
