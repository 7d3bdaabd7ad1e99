"""Containers as local processes: each in its own session, its output in a log file.

Stopping terminates the whole process group, then kills it, so no grandchild (a
uvicorn worker, a flow run's subprocess) outlives the rehearsal.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from churnops.platform.services import stop_group

LOG_TAIL_LINES = 30


@dataclass
class Process:
    label: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of its output, indented, for a failure message."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "    (no output)"
        last = text.splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in last) or "    (no output)"


@dataclass
class Supervisor:
    """Starts processes and stops every one of them at the end."""

    log_dir: Path
    running: list[Process] = field(default_factory=list)

    def start(self, label: str, argv: list[str], env: dict[str, str], cwd: Path) -> Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{label.replace('/', '.')}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(label, popen, log)
        self.running.append(process)
        return process

    def wait(self, process: Process, timeout: float) -> int | None:
        """Its exit code, or None (and it is stopped) when it ran longer than ``timeout``."""
        try:
            return process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(process.popen, 10)
            return None

    def stop_all(self) -> None:
        for process in reversed(self.running):
            stop_group(process.popen, 10)
        self.running.clear()
