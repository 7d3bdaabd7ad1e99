"""A container definition -> the command, environment and folder of a local process.

The environment is built as ECS builds it, from the image's ENV, the region, the task
definition's ``environment`` and its ``secrets`` (from moto's Secrets Manager) and
nothing from this shell, so a forgotten variable stays missing. Added stand-ins: fake
task-role credentials and ``AWS_ENDPOINT_URL``; then every value goes through the
:class:`~rehearsal.mapping.Mapper` and the path prefixes."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from terraform.scripts.rehearsal import images
from terraform.scripts.rehearsal.deployment import Aws, Container, Task, WiringError, secret_value
from terraform.scripts.rehearsal.mapping import Mapper, Paths, command
from terraform.scripts.tf_local import emulator_credentials

#: Where the image's python and console scripts are: this virtualenv's bin folder.
VENV_BIN = Path(sys.executable).parent
#: What every process here starts from (a container's, the Lambda's): nothing of this shell.
BASE_ENV = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
#: Where a container may write in its own filesystem besides /tmp: here, folders of the
#: container, so that nothing it writes lands in this machine's own (a volume mounted
#: below one of them still wins: the longest prefix is mapped).
OWN_PLACES = ("/var/lib", "/var/tmp", "/var/cache", "/srv", "/data", "/home", "/mnt", "/opt")


@dataclass
class Local:
    """A container ready to run here (or the reason it cannot)."""

    container: Container
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    #: container port -> local port
    ports: dict[int, int]
    health: list[str] | None
    paths: Paths
    skipped: str | None = None

    @property
    def label(self) -> str:
        return self.container.label


def where(container: Container, variable: str | None = None, secret: bool = False) -> str:
    """How failure messages name a place: the container, and the variable in it."""
    place = f"container {container.label}"
    if variable:
        place += f", {'secret' if secret else 'variable'} {variable}"
    return place


def prepare(task: Task, container: Container, mapper: Mapper, aws: Aws, root: Path) -> Local:
    """The local form of ``container``: argv, environment, working folder, health check;
    its files under ``root``/fs, its volumes' under ``root``/volumes."""
    image = images.image_of(container.image)
    facts = images.facts(image.dockerfile)
    ports = {p: mapper.ports[(task.service, p)] for p in task.ports}
    home = root / "fs" / container.label.replace("/", ".")
    volumes = root / "volumes"
    if home.exists():
        shutil.rmtree(home)
    workdir = container.working_directory or facts.workdir
    cwd = images.build_folder(image, home / "image") if image.not_here is None else home
    paths = Paths(
        {
            # The container's own writable places: never this machine's.
            **{place: _folder(home / "rootfs" / place.lstrip("/")) for place in OWN_PLACES},
            "/tmp": _folder(home / "tmp"),
            workdir: cwd,
            **{
                path: _folder(volumes / task.volumes.get(volume, f"{task.service}-{volume}"))
                for volume, path in container.mount_points
            },
        }
    )
    for volume, path in container.mount_points:
        mapper.notes.append(
            f"{where(container)}: volume {volume} at {path} -> {paths.prefixes[path]}"
        )
    env = environment(container, facts, mapper, aws, paths, ports, home)
    if image.not_here is not None:  # its environment is still read (e.g. Grafana's login)
        return Local(container, [], env, cwd, ports, None, paths, skipped=image.not_here)
    argv = _argv(container, facts, mapper, paths, ports)
    health = _health(container, mapper, paths, ports)
    local = Local(container, argv, env, cwd, ports, health, paths)
    _check_executable(local)
    return local


def with_command(local: Local, argv: list[str], mapper: Mapper) -> Local:
    """The same container with its command overridden (ECS RunTask's containerOverrides)."""
    mapped = command(argv, mapper, where(local.container, "command override"), local.ports)
    other = replace(local, argv=[local.paths.value(token) for token in mapped], health=None)
    _check_executable(other)
    return other


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def environment(
    container: Container,
    facts: images.Facts,
    mapper: Mapper,
    aws: Aws,
    paths: Paths,
    ports: dict[int, int],
    home: Path,
) -> dict[str, str]:
    """The process environment (see the module docstring for what goes in, in order)."""
    both = set(container.environment) & set(container.secrets)
    if both:
        raise WiringError(
            f"{where(container)}: {', '.join(sorted(both))} in environment and secrets"
        )
    env = {**BASE_ENV, "HOME": str(_folder(home / "home")), "HOSTNAME": container.name}
    env |= {k: paths.value(v) for k, v in facts.env.items()}
    env |= emulator_credentials(aws.endpoint, aws.region)
    values = {
        name: (value, where(container, name)) for name, value in container.environment.items()
    }
    for name, value_from in container.secrets.items():
        place = where(container, name, secret=True)
        values[name] = (secret_value(aws, value_from, place), place)
    mapper.bare_ports = {}
    # Ports alone last: they are mapped once the host names given alone are known.
    for name, (value, place) in sorted(values.items(), key=lambda item: item[1][0].isdigit()):
        value = mapper.port_variable(value, place, ports) if value.isdigit() else value
        env[name] = paths.value(mapper.variable(name, value, place, ports))
    return env


def _argv(
    container: Container, facts: images.Facts, mapper: Mapper, paths: Paths, ports: dict[int, int]
) -> list[str]:
    entry = container.entry_point if container.entry_point is not None else facts.entrypoint
    cmd = container.command if container.command is not None else facts.cmd
    argv = [*(entry or []), *(cmd or [])]
    if not argv:
        raise WiringError(f"{where(container)}: no command, and the image has no CMD either")
    mapped = command(argv, mapper, where(container, "command"), ports)
    return [paths.value(token) for token in mapped]


def _health(
    container: Container, mapper: Mapper, paths: Paths, ports: dict[int, int]
) -> list[str] | None:
    check = container.health_check
    if not check:
        return None
    kind, *rest = check["command"]
    place = where(container, "healthCheck")
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", paths.value(command([" ".join(rest)], mapper, place, ports)[0])]
    if kind == "CMD":
        return [paths.value(t) for t in command(rest, mapper, place, ports)]
    raise WiringError(f"{place}: its command must start with CMD or CMD-SHELL, not {kind!r}")


def _check_executable(local: Local) -> None:
    program = local.argv[0]
    if program.startswith("/"):
        local_program = VENV_BIN / Path(program).name
        if program.startswith("/usr/local/bin/") and local_program.exists():
            local.argv[0] = str(local_program)
            return
        if Path(program).exists():
            return
    elif shutil.which(program, path=local.env["PATH"]):
        return
    raise WiringError(f"{where(local.container, 'command')}: {program!r} is not in the image")
