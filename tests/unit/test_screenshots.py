"""``make screenshots``: finding Chromium, the pages' URLs, and what is picked to show.
A stand-in ``chromium`` script takes Chromium's place; the real pictures are checked by eye."""

from __future__ import annotations

import stat
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from churnops.platform.services import PlatformState
from churnops.settings import get_settings
from devtools import screenshots as shots

#: Stands in for Chromium: writes a PNG for --screenshot, prints $FAKE_DOM for --dump-dom,
#: fails like Chromium (D-Bus noise, then the error) when $FAKE_FAIL is set.
FAKE_CHROMIUM = f"""#!{sys.executable}
import os, sys
from PIL import Image, ImageDraw
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
if os.environ.get("FAKE_FAIL"):
    print("ERROR:dbus/bus.cc:405] Failed to connect to the bus", file=sys.stderr)
    print("ERROR: net::ERR_CONNECTION_REFUSED", file=sys.stderr)
    sys.exit(1)
for arg in args:
    if arg.startswith("--screenshot="):
        width, height = (int(v) for v in next(
            a for a in args if a.startswith("--window-size=")).split("=")[1].split(","))
        image = Image.new("RGB", (width, height), "white")
        ImageDraw.Draw(image).text((10, 10), "page", fill="black")
        image.save(arg.split("=", 1)[1])
if "--dump-dom" in args:
    print(os.environ.get("FAKE_DOM", ""))
"""


@pytest.fixture
def fake_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``chromium`` on a PATH of its own; its calls are logged to the returned file."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "chromium"
    script.write_text(FAKE_CHROMIUM)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "chromium.log"
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.setenv("FAKE_LOG", str(log))
    return log


# --- finding Chromium (on the PATH: every test of taking a picture) ----------------------------
def test_the_command_names_the_debian_package_without_chromium_then_the_demo_not_running(
    fake_chromium: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CHURNOPS_HOME", str(tmp_path / "home"))
    with monkeypatch.context() as without_chromium:
        without_chromium.setenv("PATH", str(tmp_path))  # chromium is in bin/, not here
        with pytest.raises(shots.ScreenshotError, match="Debian's package `chromium`"):
            shots.find_chromium()
        assert shots.main(["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: `chromium` is not on the PATH")
    assert "apt-get install -y chromium" in err
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "home").exists()  # nothing dropped, nothing written
    assert shots.main(["--out", str(tmp_path / "out")]) == 1  # chromium there, the demo not
    err = capsys.readouterr().err
    assert err == "error: the demo is not running: start the demo first: make demo\n"


# --- the command and the URLs -------------------------------------------------------------------
def test_the_chromium_command_is_headless_with_the_fixed_window(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    assert shots.chromium_command("/usr/bin/chromium", "http://h/x", png) == [
        "/usr/bin/chromium",
        *shots.CHROMIUM_FLAGS,
        "--window-size=1400,900",
        "--virtual-time-budget=15000",
        "--run-all-compositor-stages-before-draw",
        f"--screenshot={png}",
        "--dump-dom",  # the DOM of the same load as the picture: its text is checked
        "http://h/x",
    ]
    # Headless, and no requests of Chromium's own (update checks, field trials).
    assert {"--headless", "--disable-background-networking", "--disable-component-update"} <= set(
        shots.CHROMIUM_FLAGS
    )


def test_page_urls() -> None:
    assert [
        shots.prefect_flow_run_url("http://127.0.0.1:4200/", "4e73"),
        shots.mlflow_model_version_url("http://127.0.0.1:5000", "XGBoostChurnModel", "3"),
        shots.mlflow_model_version_url("http://m", "churn model/a", "1"),
        shots.evidently_report_url("http://127.0.0.1:8000", "p1", "s2"),
    ] == [
        "http://127.0.0.1:4200/runs/flow-run/4e73",
        "http://127.0.0.1:5000/#/models/XGBoostChurnModel/versions/3",
        "http://m/#/models/churn%20model%2Fa/versions/1",
        "http://127.0.0.1:8000/projects/p1/reports/s2",
    ]


def test_a_dropped_copy_gets_a_new_name_each_second() -> None:
    at, dropped = datetime(2026, 11, 27, 6, 15, 0, tzinfo=UTC), "customer_churn_2_drifted.csv"
    name = shots.unique_drop_name(dropped, at)
    assert name == "customer_churn_2_drifted-20261127T061500Z.csv"
    assert shots.unique_drop_name(dropped, at + timedelta(seconds=1)) != name
    local = at.astimezone(timezone(timedelta(hours=2)))
    assert shots.unique_drop_name("a.csv", local) == "a-20261127T061500Z.csv"


# --- the running demo ---------------------------------------------------------------------------
LOCAL = "http://127.0.0.1"


def _state(**overrides: dict) -> PlatformState:
    services = {
        "prefect": {"url": f"{LOCAL}:4200", "health_url": f"{LOCAL}:4200/api/health"},
        "mlflow": {"url": f"{LOCAL}:5000/", "health_url": f"{LOCAL}:5000/health"},
        "evidently": {"url": f"{LOCAL}:8000", "health_url": f"{LOCAL}:8000/api/version"},
    } | overrides
    return PlatformState(pid=1, drop_dir=".churnops/drop/data/input", services=services)


def test_the_running_services_come_from_the_platform_state() -> None:
    checked: list[str] = []
    found = shots.running_services(_state(), healthy=lambda url: checked.append(url) or True)
    urls = (f"{LOCAL}:4200", f"{LOCAL}:5000", f"{LOCAL}:8000")  # mlflow's / stripped
    assert found == shots.Services(*urls, ".churnops/drop/data/input")
    assert checked == [s["health_url"] for s in _state().services.values()]


def test_a_demo_that_does_not_run_or_answer_says_start_the_demo_first() -> None:
    with pytest.raises(shots.ScreenshotError, match=r"^the demo is not running: start the demo"):
        shots.running_services(None)
    with pytest.raises(shots.ScreenshotError) as raised:
        shots.running_services(_state(), healthy=lambda url: "5000" not in url)
    assert str(raised.value) == (
        "mlflow does not answer at http://127.0.0.1:5000/health: start the demo first: make demo"
    )
    with pytest.raises(shots.ScreenshotError, match="no evidently server: start the demo first"):
        shots.running_services(_state(evidently={}), healthy=lambda url: True)


def _run(run_id: str, key: str, state: str, message: str, end: str | None) -> dict:
    return {
        "id": run_id,
        "parameters": {"drop": "file:///tmp/drop", "key": key},
        "state": {"type": state, "name": state.title(), "message": message},
        "end_time": end,
    }


def test_the_latest_processed_run_is_picked_not_an_errored_or_skipped_one() -> None:
    done, processing = "COMPLETED", "data/processing/20261127T070000Z-1a2b3c4d"
    runs = [
        _run("a", "data/input/old.csv", done, "processed: 0 drifted", "2026-11-27T06:00:00Z"),
        _run("b", "data/input/bad.csv", done, "errored: no column churn", "2026-11-27T08:00:00Z"),
        _run("c", f"{processing}/new.csv", done, "processed: 7 drifted", "2026-11-27T07:00:00Z"),
        _run("d", "data/input/dup.csv", done, "skipped: taken", "2026-11-27T09:00:00Z"),
        _run("e", "data/input/down.csv", "FAILED", "failed: MLflow down", "2026-11-27T10:00:00Z"),
        _run("f", "data/input/now.csv", "RUNNING", "", None),
    ]
    latest = shots.latest_processed(runs)
    assert latest is not None
    assert latest["id"] == "c"
    assert shots.dropped_name(latest) == "new.csv"
    assert shots.latest_processed(runs[1:2]) is None
    assert shots.latest_processed([]) is None


def test_the_prefect_filter_asks_for_the_pipeline_deployment() -> None:
    body = shots.flow_run_filter(
        "churn_prediction_pipeline/churnops", completed_only=True, limit=200
    )
    assert body == {
        "flows": {"name": {"any_": ["churn_prediction_pipeline"]}},
        "deployments": {"name": {"any_": ["churnops"]}},
        "sort": "END_TIME_DESC",
        "limit": 200,
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }
    waiting = shots.flow_run_filter("f/d", completed_only=False, limit=50)
    assert "flow_runs" not in waiting
    assert waiting["sort"] == "EXPECTED_START_TIME_DESC"
    rejected = shots.flow_run_filter("f/d", completed_only=False, limit=1, state_name="Rejected")
    assert rejected["flow_runs"] == {"state": {"name": {"any_": ["Rejected"]}}}
    assert shots.rejected({"state": {"type": "FAILED", "name": "Rejected"}})
    assert not shots.rejected({"state": {"type": "FAILED", "name": "Failed"}})


def test_the_newest_evidently_report_of_the_file_is_picked() -> None:
    reports = [
        {"id": id_, "name": name, "timestamp": f"2026-11-27T0{hour}:00:00", "metadata": meta}
        for id_, name, hour, meta in [
            ("1", "a.csv", 6, {}),
            ("2", "b.csv", 9, {}),
            ("3", "a.csv", 7, {}),
            ("4", None, 5, {"file_name": "c.csv"}),
        ]
    ]
    assert shots.report_of(reports, "a.csv")["id"] == "3"
    assert shots.report_of(reports, "c.csv")["id"] == "4"
    assert shots.report_of(reports, "d.csv") is None


def test_the_report_picture_names_the_database_relative_to_the_working_folder(
    tmp_path: Path,
) -> None:
    settings = get_settings(churnops_home=tmp_path / "repo" / ".churnops", database_url=None)
    postgres = get_settings(database_url="postgresql://u:p@db/metrics")
    assert [
        shots.portable(settings, tmp_path / "repo").monitoring.metrics_db_url,
        shots.portable(settings, tmp_path / "other").monitoring.metrics_db_url,
        shots.portable(postgres, tmp_path).monitoring.metrics_db_url,
    ] == [
        "sqlite:///.churnops/metrics.db",
        settings.monitoring.metrics_db_url,
        "postgresql://u:p@db/metrics",
    ]


# --- taking a picture ---------------------------------------------------------------------------
def test_a_page_is_pictured_once_it_shows_its_texts(
    fake_chromium: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOM", "<h1>Version 3</h1> @ staging")
    said: list[str] = []
    chromium = shots.find_chromium()
    assert Path(chromium).name == "chromium"  # the stand-in, found on the PATH
    shot = shots.Shot("m.png", "http://m/#/models/x/versions/3", ("Version 3", "staging"))
    path = shots.take(chromium, shot, tmp_path / "out", said.append)
    assert path == tmp_path / "out" / "m.png"
    with Image.open(path) as image:
        assert image.size == (1400, 900)
    (call,) = fake_chromium.read_text().splitlines()  # one load: the picture and the DOM
    assert "--dump-dom" in call and "--screenshot=" in call
    assert not said


def test_a_page_that_stays_blank_fails_after_a_longer_try(
    fake_chromium: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOM", "<div id=root></div>")
    said: list[str] = []
    shot = shots.Shot("p.png", "http://p/runs/flow-run/1", ("new.csv", "Completed"))
    with pytest.raises(shots.ScreenshotError, match=r"did not show \['new.csv', 'Completed'\]"):
        shots.take(shots.find_chromium(), shot, tmp_path / "out", said.append)
    first, second = fake_chromium.read_text().splitlines()
    assert "--virtual-time-budget=15000" in first and "--virtual-time-budget=45000" in second
    assert len(said) == 2
    assert not (tmp_path / "out" / "p.png").exists()


def test_a_chromium_failure_is_reported_without_its_dbus_noise(
    fake_chromium: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    shot = shots.Shot("e.png", "http://e/projects/p/reports/s", ("s",))
    with pytest.raises(shots.ScreenshotError) as raised:
        shots.take(shots.find_chromium(), shot, tmp_path / "out", print)
    assert str(raised.value) == (
        "chromium failed (exit 1) on http://e/projects/p/reports/s:"
        " ERROR: net::ERR_CONNECTION_REFUSED"
    )
    assert not (tmp_path / "out").exists()


def test_optimising_keeps_the_picture(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    Image.new("RGB", (1400, 900), (250, 250, 250)).save(png)
    before = png.stat().st_size
    shots.optimise(png)
    assert png.stat().st_size <= before
    with Image.open(png) as image:
        assert image.size == (1400, 900)
        assert image.convert("RGB").getpixel((700, 450)) == (250, 250, 250)
    assert list(tmp_path.iterdir()) == [png]
