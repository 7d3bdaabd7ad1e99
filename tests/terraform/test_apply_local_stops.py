"""`make apply-local` and `make destroy-local` stopped midway (Ctrl-C, a failed apply):
Terraform is let finish its graceful stop, one line says what is left and what removes
it, destroy-local leaves no moto server or state, and the next apply-local starts clean."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from churnops.platform.services import live_groups, terminate_groups

from .conftest import fake_command, tf_local


def test_ctrl_c_lets_terraform_stop_gracefully_and_write_its_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal's Ctrl-C reaches terraform and this script alike. subprocess.run killed
    terraform a quarter second later, before it wrote its state ("Please wait for Terraform
    to exit or data loss may occur"), and the script printed a KeyboardInterrupt traceback."""
    ready, state = tmp_path / "ready", tmp_path / "state"
    fake_command(
        tmp_path,
        "terraform",
        f"trap 'sleep 1; echo saved > {state}; exit 1' INT\ntouch {ready}\n"
        "while :; do sleep 0.1; done",
    )
    communicate = subprocess.Popen.communicate
    calls: list[subprocess.Popen] = []

    def ctrl_c_once(proc: subprocess.Popen, *args, **kwargs):
        calls.append(proc)
        if len(calls) > 1:
            return communicate(proc, *args, **kwargs)
        while not ready.exists():
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # the terminal sends it to the whole foreground group
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess.Popen, "communicate", ctrl_c_once)
    with pytest.raises(KeyboardInterrupt):
        tf_local.terraform(tmp_path, {"PATH": f"{tmp_path}:/usr/bin:/bin"}, "apply")
    assert state.read_text() == "saved\n"


#: What a stopped apply-local leaves, and what removes it.
KEPT = "its moto server and what was applied are kept; make destroy-local removes them"


@pytest.mark.parametrize(
    ("command", "error", "line"),
    [
        (
            "up",
            RuntimeError("apply failed with 1\nError: creating ..."),
            f"apply-local stopped (apply failed with 1, errors above): {KEPT}",
        ),
        ("up", KeyboardInterrupt(), f"apply-local stopped (interrupted): {KEPT}"),
        (
            "down",
            RuntimeError("destroy failed with 1\nError: ..."),
            "destroy-local stopped (destroy failed with 1, errors above): its moto server is"
            " stopped all the same",
        ),
    ],
)
def test_a_failed_or_interrupted_run_is_one_line_not_a_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    error: BaseException,
    line: str,
) -> None:
    def fails(*_: object) -> None:
        raise error

    monkeypatch.setattr(tf_local, command, fails)
    if isinstance(error, KeyboardInterrupt):  # a shell's status for Ctrl-C: 130
        assert tf_local.main([command, "--workdir", str(tmp_path)]) == 130
        assert capsys.readouterr().err == line + "\n"
        return
    with pytest.raises(SystemExit) as stopped:
        tf_local.main([command, "--workdir", str(tmp_path)])
    assert stopped.value.code == line


def test_apply_local_refuses_a_live_moto_of_its_own_and_clears_a_gone_ones_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second apply-local overwrote the record of the first's moto server, which then
    ran on with no destroy-local able to stop it; the state an interrupted apply left for
    a server since stopped names resources that no longer exist."""
    workdir = tmp_path / "local"
    (workdir / "terraform").mkdir(parents=True)
    (workdir / "terraform" / "terraform.tfstate").write_text("{}")
    server = subprocess.Popen(["sleep", "60"], start_new_session=True)
    (workdir / "emulator.json").write_text(json.dumps({"moto_pid": server.pid}))
    started: list[str] = []
    monkeypatch.setattr(tf_local, "on_fresh_moto", lambda *_: started.append("moto"))
    try:
        with pytest.raises(SystemExit, match=rf"holds an apply against moto \(pid {server.pid}\)"):
            tf_local.up(workdir, None)
        assert started == []
    finally:
        terminate_groups([server.pid], grace=5.0)
        server.wait()
    assert not live_groups([server.pid])
    tf_local.up(workdir, None)
    assert started == ["moto"]
    assert not (workdir / "terraform").exists()


def test_destroy_local_leaves_no_moto_and_no_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "local"
    (workdir / "terraform").mkdir(parents=True)
    for name in ("terraform.tfstate", "terraform.tfstate.backup"):
        (workdir / "terraform" / name).write_text("{}")
    server = subprocess.Popen(["sleep", "60"], start_new_session=True)
    state = {"moto_pid": server.pid, "endpoint": "http://127.0.0.1:1"}
    (workdir / "emulator.json").write_text(json.dumps(state))
    destroyed: list[Path] = []
    monkeypatch.setattr(tf_local, "destroy", lambda module_dir, _: destroyed.append(module_dir))
    try:
        tf_local.down(workdir)
    finally:
        terminate_groups([server.pid], grace=1.0)
        server.wait()
    assert destroyed == [workdir / "terraform"]
    assert sorted(path.name for path in workdir.iterdir()) == []


@pytest.mark.usefixtures("terraform_bin")
@pytest.mark.parametrize("module_copied", [False, True])
def test_destroy_local_after_an_apply_cut_short_before_it_applied_anything(
    tmp_path: Path, module_copied: bool
) -> None:
    """Ctrl-C while apply-local made the network (no module copied yet) or while terraform
    planned (no state written): destroy-local ran `terraform state list` anyway, which
    failed ("No state file was found!", or no such folder), and said "destroy-local
    stopped (state failed with 1, errors above)" with no error above, exit 1."""
    workdir = tmp_path / "local"
    workdir.mkdir()
    if module_copied:
        (workdir / "terraform").mkdir()
    server = subprocess.Popen(["sleep", "60"], start_new_session=True)
    state = {"moto_pid": server.pid, "endpoint": "http://127.0.0.1:1"}
    (workdir / "emulator.json").write_text(json.dumps(state))
    try:
        tf_local.down(workdir)
    finally:
        terminate_groups([server.pid], grace=1.0)
        server.wait()
    assert server.returncode == -signal.SIGTERM  # stopped by down, not by the clean-up
    assert sorted(path.name for path in workdir.iterdir()) == []
