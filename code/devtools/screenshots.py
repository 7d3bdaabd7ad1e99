"""``make screenshots``: the README's pictures, taken from the running demo by headless
Chromium (dropping a sample file first when none has been processed). A picture is kept
only when the page's DOM shows texts only the rendered page has: a blank page fails."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from churnops.monitoring.drift import PROJECT
from churnops.pipeline import PIPELINE_DEPLOYMENT
from churnops.pipeline.flow import REJECTED
from churnops.platform.services import PlatformState, http_ok
from churnops.settings import ModelSettings, Settings, get_settings

#: The executable, and the Debian package that puts it on the PATH.
CHROMIUM = "chromium"
WINDOW = (1400, 900)
#: Virtual milliseconds Chromium lets a page run (requests, timers) before the picture.
BUDGET_MS = 15_000
#: The budget of the second try when a page did not show its text in time.
RETRY_BUDGET_MS = 45_000
CHROMIUM_TIMEOUT = 180.0
PROCESS_TIMEOUT = 300.0
#: Dropped when no file has been processed yet: it drifts, so every chart has content.
SAMPLE_FILE = "customer_churn_2_majority_drifted.csv"
OUT_DIR = Path("docs/screenshots")
SERVERS = ("prefect", "mlflow", "evidently")
START_DEMO = "start the demo first: make demo"


class ScreenshotError(RuntimeError):
    """The pictures cannot be taken; the message says why and what to do."""


#: No window, no sandbox, no requests of Chromium's own (update checks, field trials).
CHROMIUM_FLAGS = (
    "--headless",
    "--disable-gpu",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--hide-scrollbars",
)


# --- pure parts ---------------------------------------------------------------------------
def find_chromium() -> str:
    found = shutil.which(CHROMIUM)
    if found is None:
        raise ScreenshotError(
            f"`{CHROMIUM}` is not on the PATH: install Debian's package `{CHROMIUM}`"
            f" (sudo apt-get install -y {CHROMIUM}), then run `make screenshots` again"
        )
    return found


def chromium_command(
    binary: str, url: str, screenshot: Path, budget_ms: int = BUDGET_MS
) -> list[str]:
    """Headless Chromium writing a PNG of ``url`` and printing its DOM from the same load,
    so checking the DOM checks the picture. Compositing every frame before drawing keeps
    canvas pages whole (else Prefect's run graph had its axis labels piled up)."""
    return [
        binary,
        *CHROMIUM_FLAGS,
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={budget_ms}",
        "--run-all-compositor-stages-before-draw",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]


def prefect_flow_run_url(ui: str, flow_run_id: str) -> str:
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"


def mlflow_model_version_url(ui: str, model: str, version: str) -> str:
    return f"{ui.rstrip('/')}/#/models/{urllib.parse.quote(model, safe='')}/versions/{version}"


def evidently_report_url(ui: str, project: str, snapshot: str) -> str:
    return f"{ui.rstrip('/')}/projects/{project}/reports/{snapshot}"


def unique_drop_name(source: str, now: datetime) -> str:
    """``name-20261127T061500Z.csv``: a new name each second."""
    path = PurePosixPath(source)
    return f"{path.stem}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}{path.suffix}"


@dataclass(frozen=True)
class Services:
    prefect: str
    mlflow: str
    evidently: str
    drop: str


def running_services(
    state: PlatformState | None, healthy: Callable[[str], bool] = http_ok
) -> Services:
    """The servers of the running demo; an error saying to start it when it does not run."""
    if state is None:
        raise ScreenshotError(f"the demo is not running: {START_DEMO}")
    urls = {}
    for name in SERVERS:
        info = state.services.get(name)
        if not info or not info.get("url"):
            raise ScreenshotError(f"the running platform has no {name} server: {START_DEMO}")
        check = str(info.get("health_url") or info["url"])
        if not healthy(check):
            raise ScreenshotError(f"{name} does not answer at {check}: {START_DEMO}")
        urls[name] = str(info["url"]).rstrip("/")
    return Services(urls["prefect"], urls["mlflow"], urls["evidently"], state.drop_dir)


def dropped_name(run: dict[str, Any]) -> str:
    """The file a pipeline flow run is about (its ``key`` parameter)."""
    key = str((run.get("parameters") or {}).get("key") or "")
    return key.rsplit("/", 1)[-1]


def processed(run: dict[str, Any]) -> bool:
    """The flow run ended Completed with the outcome ``processed``."""
    state = run.get("state") or {}
    message = state.get("message") or ""
    return state.get("type") == "COMPLETED" and message.startswith("processed:")


def latest_processed(runs: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The processed run that ended last."""
    done = [r for r in runs if processed(r) and r.get("end_time")]
    return max(done, key=lambda r: str(r["end_time"]), default=None)


def report_of(reports: Iterable[dict[str, Any]], file_name: str) -> dict[str, Any] | None:
    """The newest Evidently report of ``file_name`` (its name, or its metadata's)."""
    mine = [
        r
        for r in reports
        if r.get("name") == file_name or (r.get("metadata") or {}).get("file_name") == file_name
    ]
    return max(mine, key=lambda r: str(r.get("timestamp") or ""), default=None)


@dataclass(frozen=True)
class Shot:
    """One picture: its file, the page, and texts the rendered page must contain."""

    file_name: str
    url: str
    expect: tuple[str, ...]


# --- talking to the services --------------------------------------------------------------
def _json(url: str, body: dict | None = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ScreenshotError(f"{url} did not answer as expected: {exc}") from exc


def flow_run_filter(
    deployment: str, *, completed_only: bool = False, limit: int = 50, state_name: str | None = None
) -> dict[str, Any]:
    """The Prefect API's filter for the newest runs of ``flow/deployment``."""
    flow, _, name = deployment.partition("/")
    body: dict[str, Any] = {
        "flows": {"name": {"any_": [flow]}},
        "deployments": {"name": {"any_": [name]}},
        "sort": "END_TIME_DESC" if completed_only else "EXPECTED_START_TIME_DESC",
        "limit": limit,
    }
    if completed_only:
        body["flow_runs"] = {"state": {"type": {"any_": ["COMPLETED"]}}}
    if state_name:
        body["flow_runs"] = {"state": {"name": {"any_": [state_name]}}}
    return body


def pipeline_runs(services: Services, **filters: Any) -> list[dict]:
    """The newest flow runs of the file pipeline's deployment (:func:`flow_run_filter`)."""
    body = flow_run_filter(PIPELINE_DEPLOYMENT, **filters)
    return _json(f"{services.prefect}/api/flow_runs/filter", body)


def rejected(run: dict[str, Any]) -> bool:
    return ((run.get("state") or {}).get("name")) == REJECTED


def drop_sample(
    services: Services, settings: Settings, now: datetime, *, invalid: bool = False
) -> str:
    """Copy the drifted data file into the drop folder under a new name (``invalid``: with
    a header the schema rejects); return the name."""
    from churnops.drop.storage import LocalDropStorage, ObjectExists, open_storage, stage_key

    source = settings.model.churn_data_dir / SAMPLE_FILE
    if not source.is_file():
        raise ScreenshotError(
            f"no file has been processed yet and {source} does not exist to drop one:"
            " run `make data` (or set CHURN_DATA_DIR)"
        )
    data = source.read_bytes()
    if invalid:  # the export renamed a column: a rejected file, with its reason
        data = data.replace(b"Complains", b"Complaints", 1)
    name = unique_drop_name(
        SAMPLE_FILE.replace(".csv", "_renamed.csv") if invalid else SAMPLE_FILE, now
    )
    if services.drop.startswith("s3://"):
        storage = open_storage(settings.drop)
    else:  # .../drop/data/input: the storage root is two levels up
        storage = LocalDropStorage(Path(services.drop).parents[1])
    try:
        storage.create(stage_key("input", name), data)
    except ObjectExists:
        raise ScreenshotError(f"{name} is already in the drop folder: try again") from None
    return name


def wait_processed(
    services: Services,
    settings: Settings,
    name: str,
    timeout: float,
    say: Callable[[str], None],
    done: Callable[[dict[str, Any]], bool] = processed,
) -> dict:
    """The flow run that processed (``done``) the dropped file ``name``."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        runs = [r for r in pipeline_runs(services) if dropped_name(r) == name]
        run = max(runs, key=lambda r: str(r.get("created") or ""), default=None)
        state = (run or {}).get("state") or {}
        now = f"flow run {run['id']} {state.get('name')}" if run else "no flow run yet"
        if now != last:
            say(f"  {name}: {now}")
            last = now
        if run is not None and done(run):
            return run
        if run is not None and state.get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            raise ScreenshotError(
                f"{name} was not processed: {state.get('message') or state.get('name')}"
                f" (Prefect: {prefect_flow_run_url(services.prefect, run['id'])})"
            )
        if time.monotonic() > deadline:
            raise ScreenshotError(
                f"{name} was not processed within {timeout:.0f}s ({now}): see `churnops status`"
                f" and the runner logs in {settings.home / 'logs'}"
            )
        time.sleep(1.0)


def staging_version(services: Services, model: ModelSettings) -> str:
    """The model version with the alias, by MLflow's REST API (no MLflow import)."""
    query = urllib.parse.urlencode({"name": model.model_name, "alias": model.model_alias})
    url = f"{services.mlflow}/api/2.0/mlflow/registered-models/alias?{query}"
    try:
        return str(_json(url)["model_version"]["version"])
    except (ScreenshotError, KeyError, TypeError) as exc:
        raise ScreenshotError(
            f"no {model.model_name}@{model.model_alias} in MLflow at {services.mlflow}: {exc}"
        ) from None


def evidently_report(services: Services, file_name: str) -> tuple[str, str]:
    """(project id, snapshot id) of the file's report, from the Evidently UI's API."""
    api = f"{services.evidently}/api/projects"
    found = _json(f"{api}/search/{urllib.parse.quote(PROJECT, safe='')}")
    if not found:
        raise ScreenshotError(f"no Evidently project {PROJECT!r} at {services.evidently}")
    project_id = str(found[0]["id"])
    report = report_of(_json(f"{api}/{project_id}/reports"), file_name)
    if report is None:
        raise ScreenshotError(f"no Evidently report of {file_name} in project {PROJECT!r}")
    return project_id, str(report["id"])


# --- pictures -----------------------------------------------------------------------------
def run_chromium(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run Chromium; an error with its stderr (not its D-Bus noise) when it fails or hangs."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise ScreenshotError(
            f"chromium did not finish within {CHROMIUM_TIMEOUT:.0f}s: {command[-1]}"
        ) from None
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "dbus" not in line.lower()]
        raise ScreenshotError(
            f"chromium failed (exit {done.returncode}) on {command[-1]}: " + "\n".join(errors[-10:])
        )
    return done


def take(binary: str, shot: Shot, out: Path, say: Callable[[str], None]) -> Path:
    """A PNG of the page whose DOM shows the expected texts (one retry, longer budget)."""
    target = out / shot.file_name
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / shot.file_name
        for budget in (BUDGET_MS, RETRY_BUDGET_MS):
            png.unlink(missing_ok=True)
            dom = run_chromium(chromium_command(binary, shot.url, png, budget_ms=budget)).stdout
            missing = [text for text in shot.expect if text not in dom]
            if not missing:
                break
            say(f"  {shot.file_name}: {missing} not rendered within {budget} ms of virtual time")
        else:
            raise ScreenshotError(
                f"{shot.url} did not show {missing} within {RETRY_BUDGET_MS} ms of virtual"
                " time: is the page blank? Open it in a browser to see"
            )
        if not png.is_file() or png.stat().st_size == 0:
            raise ScreenshotError(f"chromium wrote no picture of {shot.url}")
        optimise(png)
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(png, target)
    return target


def optimise(png: Path) -> None:
    """Re-encode with 256 colours when that is smaller (UI pages have few colours)."""
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    candidate = png.with_suffix(".small.png")
    small.save(candidate, optimize=True)
    if candidate.stat().st_size < png.stat().st_size:
        os.replace(candidate, png)
    else:
        candidate.unlink()


def portable(settings: Settings, cwd: Path) -> Settings:
    """Settings naming the default SQLite metrics database relative to ``cwd``: the report
    page names its database, and the README's picture must not show this machine's path."""
    if settings.monitoring.database_url:
        return settings
    try:
        database = (settings.home / "metrics.db").relative_to(cwd.resolve())
    except ValueError:
        return settings
    return settings.replace(database_url=f"sqlite:///{database.as_posix()}")


def find_pages(
    settings: Settings, services: Services, timeout: float, say: Callable[[str], None]
) -> list[Shot]:
    """The pages about the latest processed and rejected files (dropping one if none)."""

    def run_of(found: dict | None, outcome: str) -> dict:
        if found is None:
            invalid = outcome == "rejected"
            name = drop_sample(services, settings, datetime.now(UTC), invalid=invalid)
            say(f"no file {outcome} yet: dropped {name}, waiting up to {timeout:.0f}s")
            done = rejected if invalid else processed
            found = wait_processed(services, settings, name, timeout, say, done=done)
        say(f"{outcome} file: {dropped_name(found)} (Prefect flow run {found['id']})")
        return found

    run = run_of(
        latest_processed(pipeline_runs(services, completed_only=True, limit=200)), "processed"
    )
    file_name = dropped_name(run)
    version = staging_version(services, settings.model)
    model = settings.model
    say(f"model: {model.model_name} version {version} has the alias {model.model_alias}")
    project, snapshot = evidently_report(services, file_name)
    say(f"Evidently report: {snapshot}")
    bad = run_of(
        next(iter(pipeline_runs(services, limit=1, state_name=REJECTED)), None), "rejected"
    )
    return [
        Shot(
            "prefect-flow-run.png",
            prefect_flow_run_url(services.prefect, run["id"]),
            (file_name, "Completed", "Beginning flow run"),  # the run's log has loaded
        ),
        Shot(
            "prefect-rejected-run.png",
            prefect_flow_run_url(services.prefect, bad["id"]),
            (dropped_name(bad), REJECTED, "Beginning flow run"),
        ),
        Shot(
            "mlflow-model-version.png",
            mlflow_model_version_url(services.mlflow, settings.model.model_name, version),
            (f"Version {version}", settings.model.model_alias),
        ),
        Shot(
            "evidently-report.png",
            evidently_report_url(services.evidently, project, snapshot),
            (snapshot, "Summary", "drifted features"),
        ),
        Shot(
            "evidently-dashboard.png",
            f"{services.evidently}/projects/{project}",
            ("Drifted feature share", "Rows per file"),
        ),
    ]


def take_all(settings: Settings, out: Path, timeout: float, say: Callable[[str], None]) -> list:
    binary = find_chromium()
    services = running_services(PlatformState.load(settings.home))
    shots = find_pages(settings, services, timeout, say)
    from churnops.monitoring.report import NoRunsYet, write_report

    taken = []
    with tempfile.TemporaryDirectory() as tmp:
        try:  # `churnops report`'s page, written aside: .churnops/report stays the user's
            page = write_report(portable(settings, Path.cwd()).monitoring, Path(tmp)).html
        except NoRunsYet as exc:
            raise ScreenshotError(f"`churnops report` has nothing to show: {exc}") from None
        shots.append(
            Shot(
                "churnops-report.png",
                page.resolve().as_uri(),
                ("Customer Churn Model Evaluation", "Latest runs"),
            )
        )
        for shot in shots:
            path = take(binary, shot, out, say)
            say(f"  wrote {path} ({path.stat().st_size / 1024:.0f} KB) of {shot.url}")
            taken.append(path)
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.screenshots",
        description="PNG screenshots of the running demo's pages for the README.",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"folder (default {OUT_DIR})")
    parser.add_argument(
        "--timeout",
        type=float,
        default=PROCESS_TIMEOUT,
        help="seconds to wait for a dropped file to be processed",
    )
    args = parser.parse_args(argv)
    say = functools.partial(print, flush=True)
    try:
        taken = take_all(get_settings(), args.out, args.timeout, say)
    except ScreenshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    say(f"{len(taken)} screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
