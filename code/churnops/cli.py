"""The ``churnops`` command. Each subcommand is a thin shell over a module."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from churnops.model.progress import progress_bars
from churnops.settings import Settings, get_settings, hide_credentials

if TYPE_CHECKING:
    from churnops.drop.storage import DropStorage
    from churnops.model.registry import Outcome
    from churnops.pipeline.per_file import FileOutcome


class _App(typer.Typer):
    """An expected error (a service down, a bad file, a missing path) ends in one line."""

    def __call__(self, *args: object, **kwargs: object) -> object:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if not _expected(exc):
                raise
            errors.print(f"[red]error:[/red] {escape(_one_line(exc))}")
            raise SystemExit(1) from None


def _expected(exc: Exception) -> bool:
    """Errors of the world, not of ChurnOps: OS and network, MLflow, the database, S3, data."""
    names = {
        "MlflowException",
        "OperationalError",
        "DataValidationError",
        "MlflowUnavailable",
        "UnloadableChampion",  # the alias names a version whose artifacts are gone
        "StaleStudy",  # CHURNOPS_HOME's Optuna study was made by the F1-only search
        "MetricsDatabaseUnavailable",  # the database's OperationalError, after the retries
        "BotoCoreError",  # S3: no credentials, endpoint unreachable
        "ClientError",  # S3: no such bucket, access denied
    }
    return isinstance(exc, OSError) or bool(names & {c.__name__ for c in type(exc).__mro__})


def _one_line(exc: Exception) -> str:
    text = " ".join(hide_credentials(str(exc)).split())[:300]
    if served := _served_by_the_platform(text):
        return served
    hint = "; is `churnops up` running? or set MLFLOW_TRACKING_URI" if _no_mlflow(exc) else ""
    return f"{type(exc).__name__}: {text}{hint}"


def _no_mlflow(exc: Exception) -> bool:
    """MLflow did not answer: the wait for its server, or its client's request, failed (by
    type: the word "mlflow" is also in its artifacts' paths)."""
    names = {c.__name__ for c in type(exc).__mro__}
    failed = "MlflowException" in names and getattr(exc, "error_code", "") == "INTERNAL_ERROR"
    return "MlflowUnavailable" in names or failed


def _served_by_the_platform(text: str) -> str | None:
    """What to do when MLflow's answer means the platform's server is needed, else None."""
    if "mlflow-artifacts" not in text:
        return None
    return (
        "this home's models are served by the platform's MLflow server: start "
        "`churnops up` (commands beside it use it), or set MLFLOW_TRACKING_URI to its URL"
    )


# Markdown: a docstring's lines are one paragraph, wrapped to the terminal, not cut there.
# The app's help is its callback's docstring (main).
app = _App(rich_markup_mode="markdown")
data_app = typer.Typer(help="Get the customer churn data.", rich_markup_mode="markdown")
app.add_typer(data_app, name="data")
# Long paths, URLs and tables stay whole when the output is a file or a pipe.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, soft_wrap=True)
Trials = Annotated[
    int,
    typer.Option(min=0, help="Optuna trials to run first; 0 reuses the best stored parameters."),
]
Force = Annotated[bool, typer.Option(help="Move the alias even if the gate says no.")]


def _settings() -> Settings:
    """The settings, pointed at the servers and the drop folder of a ``churnops up``
    running on this home unless MLFLOW_TRACKING_URI, EVIDENTLY_UI_URL or LOCAL_DROP_DIR
    name others."""
    from churnops.platform.services import PlatformState

    settings = get_settings()
    state = PlatformState.load(settings.home)
    if state is None:
        return settings
    urls = {name: info.get("url") for name, info in state.services.items()}
    watched = None if state.drop_dir.startswith("s3://") else Path(state.drop_dir).parents[1]
    return settings.replace(
        mlflow_tracking_uri=settings.model.mlflow_tracking_uri or urls.get("mlflow"),
        evidently_ui_url=settings.monitoring.evidently_ui_url or urls.get("evidently"),
        local_drop_dir=settings.drop.local_drop_dir or watched,
    )


def _fail(message: str) -> None:
    errors.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what each step does (INFO).")
    ] = False,
) -> None:
    """ChurnOps: train, deploy and continuously evaluate churn models."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)


@data_app.command("fetch")
def data_fetch(
    source: Annotated[
        Path | None,
        typer.Option("--from", help="Copy split files from this folder instead of downloading."),
    ] = None,
    archive: Annotated[
        Path | None, typer.Option(help="Use this downloaded UCI zip archive.")
    ] = None,
    target: Annotated[
        Path | None, typer.Option(help="Where to write the files (default: data).")
    ] = None,
) -> None:
    """Download the UCI archive, check it and split it into the platform's files."""
    from churnops.data import dataset
    from churnops.data.schema import DataValidationError

    settings = _settings()
    target_dir = target or Path("data")
    # A CHURN_DATA_DIR that is set names a folder of split files to copy; unset, its default
    # is no source (a --target elsewhere downloads, as without it).
    named = "churn_data_dir" in settings.model.model_fields_set
    elsewhere = settings.model.churn_data_dir.resolve() != target_dir.resolve()
    if source is None and archive is None and named and elsewhere:
        source = settings.model.churn_data_dir
    try:
        with console.status("fetching the customer churn data..."):
            written = dataset.fetch(target_dir, source_dir=source, archive=archive)
    except (dataset.DataFetchError, DataValidationError) as exc:
        _fail(str(exc))
    for path in written:
        console.print(f"  {path}")
    console.print(f"[green]{len(written)} data files in {target_dir}[/green]")


@app.command()
def train(
    data_file: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Labeled training file (default: TRAINING_FILE in CHURN_DATA_DIR)."
        ),
    ] = None,
    trials: Trials = 0,
    force: Force = False,
) -> None:
    """Train XGBoost, log it to MLflow, register it and gate the staging alias.

    Exit code 0 when promoted or refused, and when this fit already made a version (it is
    not registered twice); 5 when nothing was trained (a holdout too small to judge on).
    """
    from churnops.model.registry import TrainingOptions, train_and_register

    settings = _settings()
    data_file = data_file or settings.model.churn_data_dir / settings.model.training_file
    if not data_file.exists():
        _fail(f"{data_file} does not exist: run `make data` (or pass --data FILE)")
    options = TrainingOptions(data_file=data_file, trials=trials, force=force)
    with progress_bars(console) as report:
        outcome = train_and_register(settings, options, report)
    _print_verdict(outcome)
    if outcome.status == "skipped" and outcome.version is None:  # no model to show for it
        raise typer.Exit(EXIT_CODES["skipped"])
    if outcome.status != "skipped":
        console.print(f"  parameters: {json.dumps(outcome.params)}")
        console.print(f"  threshold (cross-validated): {outcome.threshold:.2f}")


def _print_verdict(outcome: Outcome) -> None:
    colour = {"promoted": "green"}.get(outcome.status, "yellow")
    console.print(f"[{colour}]{escape(outcome.summary())}[/{colour}]")
    if outcome.status == "skipped":
        return
    for line in outcome.score_lines():
        console.print(f"  {line}")
    console.print(f"  trained on: {', '.join(outcome.training_files)}")
    console.print(f"  MLflow run {outcome.run_id}")


@app.command()
def retrain(trials: Trials = 0, force: Force = False) -> None:
    """Retrain on the training file plus the labeled files processed since, and gate it.

    Both versions are judged on the newest labeled rows the deployed one has not learned.
    Exit code 0 when promoted or refused, 5 when skipped (nothing new, or already running).
    """
    from churnops.pipeline.retraining import RetrainOptions
    from churnops.pipeline.retraining import retrain as run_retraining

    settings = _settings()
    training_file = settings.model.churn_data_dir / settings.model.training_file
    if not training_file.exists():
        _fail(f"{training_file} does not exist: run `make data` (or set CHURN_DATA_DIR)")
    options = RetrainOptions(trials=trials, force=force)
    with progress_bars(console) as report:
        outcome = run_retraining(settings, _drop(settings.drop.drop_uri), options, report)
    _print_verdict(outcome)
    if outcome.status == "skipped":
        raise typer.Exit(EXIT_CODES["skipped"])


#: ``churnops process`` exit codes, one per outcome (documented in docs/pipeline.md).
EXIT_CODES = {"processed": 0, "errored": 3, "failed": 4, "skipped": 5, "died": 5}


def _open_target(settings: Settings, target: str, folder: str) -> tuple[DropStorage, str]:
    """The storage and key of ``s3://bucket/key``, or of a local file put into the local
    drop's ``folder`` unless it is there."""
    from churnops.drop.storage import (
        MAX_WRITTEN_NAME_BYTES,
        LocalDropStorage,
        ObjectExists,
        name_from_key,
        split_run_key,
        stage_key,
    )

    if target.startswith("s3://"):
        bucket, _, key = target.removeprefix("s3://").partition("/")
        if split_run_key(key) is None:  # not a drop (nor a run in processing/): one line
            try:
                name_from_key(key)
            except ValueError as exc:
                _fail(str(exc))
        storage = _drop(f"s3://{bucket}")
        if storage.exists(key):
            return storage, key
        return storage, _stranded_run(storage, key.rsplit("/", 1)[-1], None) or key
    local = LocalDropStorage(settings.drop.drop_dir)
    local.create_layout()
    path = Path(target)
    if not path.is_file():
        _fail(f"{path} is not a file")
    if stranded := _stranded_run(local, path.name, path):
        return local, stranded
    key = stage_key(folder, path.name)  # type: ignore[arg-type]
    # The dropped entry itself (a symlink there too, refused by its run), or a link to it.
    if local.path(key) not in (path.parent.resolve() / path.name, path.resolve()):
        size = len(path.name.encode("utf-8", "surrogateescape"))
        if size > MAX_WRITTEN_NAME_BYTES:  # the copy's temporary name would not fit either
            _fail(
                f"the file name is too long ({size} bytes) to copy into the drop folder: "
                f"rename it to at most {MAX_WRITTEN_NAME_BYTES} bytes"
            )
        try:
            with path.open("rb") as source, local.create_streamed(key) as out:
                shutil.copyfileobj(source, out, 1 << 20)  # a file of any size, in flat memory
        except ObjectExists:
            _fail(f"another {path.name} waits in {local.path(key).parent}: drop it later")
        console.print(escape(f"copied {path.name} into the drop folder {local.root}"))
    return local, key


def _drop(uri: str) -> DropStorage:
    """The drop ``uri`` names, once a bucket can be listed (missing, no credentials,
    endpoint down: one line, not a traceback)."""
    from churnops.drop.storage import S3DropStorage, bucket_problem, open_drop

    try:
        storage = open_drop(uri)
    except ValueError as exc:
        _fail(str(exc))
    if isinstance(storage, S3DropStorage) and (
        problem := bucket_problem(storage.client, storage.bucket)
    ):
        _fail(problem)
    return storage


def _stranded_run(storage: DropStorage, name: str, source: Path | None) -> str | None:
    """A dead or failed run holding ``name`` (with the bytes of the file ``source``):
    retrying means re-driving it."""
    from datetime import UTC, datetime

    from churnops.drop.storage import run_folders
    from churnops.pipeline.reconcile import stranded_runs

    runs = run_folders(storage, "processing")
    for action in stranded_runs(storage, datetime.now(UTC), runs, retry_now=True):
        if action.key.rsplit("/", 1)[-1] != name:
            continue
        if source is None or _digest(source.open("rb")) == _digest(storage.open_read(action.key)):
            console.print(escape(f"re-driving {action.key}: {action.reason}"))
            return action.key
    return None


def _digest(stream: AbstractContextManager[IO[bytes]]) -> bytes:
    """The SHA-256 of a stream, read a chunk at a time, then closed."""
    with stream as opened:
        return hashlib.file_digest(opened, "sha256").digest()


@app.command()
def process(
    target: Annotated[
        str, typer.Argument(help="A CSV file path, or s3://bucket/data/input/name.csv")
    ],
    labels: Annotated[
        bool,
        typer.Option(
            "--labels",
            help="The file is late labels (a predictions file with Churn filled in): "
            "dropped into data/labels/ and joined to the run that scored its rows",
        ),
    ] = False,
) -> None:
    """Run the pipeline once on one file, in this process (no server needed).

    A home whose models `churnops up` logged (`make demo`'s) needs its MLflow server, which
    serves their artifacts: with the platform down, this says to start it. Exit codes: 0
    processed, 3 invalid or given up (moved to errored/), 4 failed on a dependency (the
    file waits in processing/), 5 skipped (taken by another run); a file storage will not
    move waits, or is given up on, in input/. Run again after a crash or a failure: it
    re-drives the stranded run holding the same file.
    """
    from churnops.pipeline.per_file import process as process_file

    settings = _settings()
    storage, key = _open_target(settings, target, "labels" if labels else "input")
    outcome = process_file(settings, storage, key)
    _print_outcome(outcome, ui_running=settings.monitoring.evidently_ui_url is not None)
    raise typer.Exit(EXIT_CODES[outcome.status])


def _print_outcome(outcome: FileOutcome, *, ui_running: bool) -> None:
    """The outcome and its fields; a report stored with no Evidently UI running is at the
    address `churnops up` serves it on (its default port)."""
    colour = {"processed": "green", "skipped": "yellow"}.get(outcome.status, "red")
    message = outcome.message
    if outcome.status == "failed" and (served := _served_by_the_platform(message)):
        message = served  # MLflow's own words name a URI scheme, not what to do
    console.print(f"[{colour}]{outcome.status}[/{colour}] {escape(f'{outcome.name}: {message}')}")
    for field in ("run", "attempt", "model_version", "predictions_key", "report_url"):
        value = getattr(outcome, field)
        if field == "report_url" and value is not None and not ui_running:
            value = f"{value} (start `churnops up` to open it)"
        if value is not None:
            console.print(escape(f"  {field}: {value}"))


@app.command()
def reconcile(
    target: Annotated[
        str | None,
        typer.Argument(
            help="drop to reconcile, s3://bucket or file:///folder (default: the configured one)"
        ),
    ] = None,
) -> None:
    """Re-drive stranded files now, in this process: untaken input, dead or failed runs.

    Exits 4 when a re-driven file failed again (its dependency is still down).
    """
    settings = _settings()
    storage = _drop(target or settings.drop.drop_uri)  # a wrong target: said before the imports

    from churnops.pipeline import reconcile as reconciler
    from churnops.pipeline.per_file import process as process_file

    outcomes: list[FileOutcome] = []

    def submit(action: reconciler.Action) -> None:
        console.print(escape(f"{action.kind} {action.key}: {action.reason}"))
        outcomes.append(process_file(settings, storage, action.key))
        _print_outcome(outcomes[-1], ui_running=settings.monitoring.evidently_ui_url is not None)

    actions = reconciler.reconcile(settings, storage, submit)
    for action in actions:
        if action.kind == "close-run":
            console.print(f"closed run {action.key}: {action.reason}")
    waiting = _waiting_for_retry(storage)
    for line in waiting:
        console.print(escape(line), soft_wrap=True)
    if not actions and not waiting:
        console.print("nothing to reconcile")
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(EXIT_CODES["failed"])


def _waiting_for_retry(storage: DropStorage) -> list[str]:
    """A line per run whose failed attempt's retry is not due yet."""
    from churnops.pipeline.reconcile import waiting_for_retry

    return [
        f"waiting {x.name} (run {x.run}): attempt {x.attempt + 1} at {x.retry_at};"
        f" attempt {x.attempt} failed: {x.reason}"
        for x in waiting_for_retry(storage)
    ]


@app.command()
def report(
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for report.png and report.html (default: CHURNOPS_HOME/report)."),
    ] = None,
) -> None:
    """Plot the dashboard's time series from the metrics database (no Grafana needed)."""
    from churnops.monitoring.report import NoRunsYet, write_report

    if out is not None and out.exists() and not out.is_dir():  # was FileExistsError
        _fail(f"--out {out} is a file: give a folder for report.png and report.html")
    try:
        files = write_report(_settings().monitoring, out)
    except NoRunsYet as exc:
        _fail(str(exc))
    attempts = f" ({files.runs} runs, with retried attempts)" if files.runs > files.files else ""
    console.print(f"[green]{files.files} files[/green]{attempts}: {files.png}")
    console.print(f"  open {files.html}")


@app.command()
def up() -> None:
    """Start the local platform (Prefect, runner, MLflow, Evidently UI, drop watcher)."""
    from churnops.platform.launch import run

    raise typer.Exit(run(_settings(), console, errors))


@app.command()
def status() -> None:
    """Every dropped file with its stage, and the health of every platform service."""
    from rich.table import Table

    from churnops.platform.services import PlatformState
    from churnops.platform.status import list_files, service_health, stage_counts

    drop = _settings().drop
    if drop.drop_storage == "local" and not drop.drop_dir.is_dir():  # a look makes nothing
        console.print(f"no drop folder at {drop.drop_dir} yet: churnops up makes it")
    else:
        files = list_files(_drop(drop.drop_uri))
        table = Table("stage", "run", "file", "note", title="files")
        for file in files:
            table.add_row(file.stage, file.run, escape(file.name), escape(file.note))
        console.print(table if files else "no files in the drop folder")
        if files:
            console.print(f"files: {stage_counts(files)}")
    services = service_health(PlatformState.load(drop.home))
    health = Table("service", "health", "where", "checked by", title="services")
    for service in services:
        verdict = "[green]healthy[/green]" if service.healthy else "[red]down[/red]"
        health.add_row(service.name, verdict, service.url, service.detail)
    console.print(health)


@app.command("grant-reader")
def grant_reader() -> None:
    """Create or update the dashboards' read-only role on the Postgres metrics database."""
    from churnops.monitoring import db_roles
    from churnops.monitoring.metrics_db import DASHBOARD_TABLES

    settings = _settings()
    secret = settings.monitoring.dashboard_db_password
    password = secret.get_secret_value() if secret else ""
    if not password:  # an empty one made a role nobody can log in as, and said it could read
        _fail("set DASHBOARD_DB_PASSWORD to the password the read-only role should have")
    try:  # migrates the metrics database first, as DATABASE_URL's user
        db_roles.grant_read_only(
            settings.monitoring.metrics_db_url, db_roles.DASHBOARD_ROLE, password
        )
    except ValueError as exc:
        _fail(str(exc))
    tables = ", ".join(t.name for t in DASHBOARD_TABLES)
    console.print(f"role '{db_roles.DASHBOARD_ROLE}' can read {tables}")


def entry() -> None:
    """:data:`app` in a process with :meth:`~churnops.settings.PlatformSettings.process_env`
    (the libraries read those only from the environment, which ChurnOps never writes): while
    one is missing, this process first replaces itself (``execve``) with one that has them."""
    try:
        wanted = get_settings().platform.process_env(os.environ)
    except ValidationError as exc:  # a variable a user set: named, with no traceback
        named = [
            (".".join(map(str, e["loc"])).upper(), e["msg"].removeprefix("Value error, "))
            for e in exc.errors()
        ]
        problems = [f"{name}: {msg}" if name else msg for name, msg in named]
        errors.print(f"[red]error:[/red] invalid setting: {escape('; '.join(problems))}")
        raise SystemExit(2) from None
    if wanted != dict(os.environ):
        os.execve(sys.executable, sys.orig_argv, wanted)
    app()


if __name__ == "__main__":
    entry()
