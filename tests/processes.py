"""What tests share about processes: waiting for a condition, a race of threads, a frozen
server, an HTTP stand-in on loopback, a clean environment for a platform, leftover
processes. A free port, starting a server and the process-group stop are the platform's
own (:mod:`churnops.platform.services`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


@contextmanager
def http_server(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """``handler`` served on a free loopback port by a thread until the block ends: a
    stand-in for a service off this machine (an archive, STS, ECS's agent, Prefect's API)."""
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def eventually(condition: Callable[[], object], seconds: float, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def at_once(count: int, action: Callable[[int], Any]) -> list[Any]:
    """``action(0)`` to ``action(count - 1)`` in threads released together: their results,
    or the exceptions they raised."""
    barrier = threading.Barrier(count)

    def run(n: int) -> Any:
        barrier.wait()
        try:
            return action(n)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


@contextmanager
def frozen(*pids: int) -> Iterator[None]:
    """The processes stopped (SIGSTOP), not ended: their connections stay open and nothing
    answers, not even a timeout. SIGCONT at the end, to those still there."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def dead_pid() -> int:
    """The pid of a process of this host that has ended (and was reaped)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def run_python(code: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (what this process imported does not count)."""
    command = [sys.executable, "-c", code, *args]
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


#: Variables of the caller's environment that would point the platform elsewhere.
FOREIGN = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_PROFILE",
    "PREFECT_HOME",
    "MLFLOW_TRACKING_URI",
    "DATABASE_URL",
    "EVIDENTLY_UI_URL",
    "EVIDENTLY_WORKSPACE",
    "ALERTS_TOPIC_ARN",
    "SMTP_HOST",
    "LOCAL_DROP_DIR",
    "DROP_STORAGE",
)


def leftovers(home: Path) -> list[str]:
    """Processes whose command line or environment mentions the platform's home."""
    marker = str(home).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in cmdline or marker in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command}")
    return found
