"""What the platform tests share: a clean environment and a search for leftover processes."""

from __future__ import annotations

import os
from pathlib import Path

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
    "OPTUNA_STORAGE",
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
