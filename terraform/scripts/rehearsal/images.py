"""The images, as far as a local process needs them: read from their Dockerfiles.

There is no Docker here. A container of the flow image runs as a process of this
virtualenv, which has the same locked packages; its Dockerfile gives what the
image adds around the command: ENV, WORKDIR, CMD, ENTRYPOINT (last stage). The
Lambda's image is rebuilt as a folder from its COPY lines, so the handler runs with
exactly the modules the image carries. Grafana's server is not on this machine.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
#: The Lambda base image's task root (public.ecr.aws/lambda/python).
LAMBDA_TASK_ROOT = "/var/task"


@dataclass(frozen=True)
class Image:
    """An image that `make push-images` builds (push_images.py), by ECR repository name."""

    dockerfile: Path
    context: Path
    #: None when its containers can run here; else why not
    not_here: str | None = None


#: ECR repository (last part of the image URI's path) -> its Dockerfile and build context,
#: what `make push-images` builds (terraform/scripts/push_images.py) and the rehearsal reads.
IMAGES = {
    "orchestration": Image(REPO / "code/orchestration/Dockerfile", REPO),
    "s3-to-prefect-lambda": Image(REPO / "code/s3_to_prefect_lambda/Dockerfile", REPO / "code"),
    "grafana": Image(
        REPO / "code/grafana/Dockerfile",
        REPO / "code/grafana",
        not_here="Grafana's server binary comes with the grafana/grafana base image,"
        " which is not on this machine (no Docker)",
    ),
}


@dataclass
class Facts:
    """What the last stage of a Dockerfile sets."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    #: (sources relative to the build context, destination)
    copies: list[tuple[list[str], str]] = field(default_factory=list)


def repository(image_uri: str) -> str:
    """``<registry>/<prefix>/<repository>:<tag>`` -> ``<repository>``."""
    return image_uri.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]


def image_of(image_uri: str) -> Image:
    name = repository(image_uri)
    if name not in IMAGES:
        known = ", ".join(sorted(IMAGES))
        raise KeyError(f"image {image_uri}: no Dockerfile known for repository {name!r} ({known})")
    return IMAGES[name]


def facts(dockerfile: Path) -> Facts:
    """ENV, WORKDIR, CMD, ENTRYPOINT and COPY of the Dockerfile's last stage."""
    found = Facts()
    for instruction, argument in _instructions(dockerfile.read_text()):
        if instruction == "FROM":
            found = Facts()
        elif instruction == "ENV":
            found.env.update(_env_pairs(argument))
        elif instruction == "WORKDIR":
            found.workdir = _expand(argument.strip(), found.env)
        elif instruction == "CMD":
            found.cmd = _exec_form(argument)
        elif instruction == "ENTRYPOINT":
            found.entrypoint = _exec_form(argument)
        elif instruction == "COPY" and "--from" not in argument:
            words = [w for w in shlex.split(argument) if not w.startswith("--")]
            found.copies.append((words[:-1], _expand(words[-1], found.env)))
    return found


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs, continuation lines joined, comments dropped."""
    lines = [line.strip() for line in re.sub(r"\\[ \t]*\n[ \t]*", " ", text).splitlines()]
    pairs = [line.partition(" ") for line in lines if line and not line.startswith("#")]
    return [(instruction.upper(), argument.strip()) for instruction, _, argument in pairs]


def _env_pairs(argument: str) -> dict[str, str]:
    words = shlex.split(argument)
    if words and "=" not in words[0]:  # legacy form: ENV KEY value with spaces
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def _exec_form(argument: str) -> list[str]:
    try:
        value = json.loads(argument)
    except ValueError:
        return ["/bin/sh", "-c", argument]
    return [str(v) for v in value]


def _expand(text: str, env: dict[str, str]) -> str:
    defaults = {"LAMBDA_TASK_ROOT": LAMBDA_TASK_ROOT, **env}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m[1], m[0]), text)


def build_folder(image: Image, root: Path) -> Path:
    """The files the image's COPY lines put under its WORKDIR (or the Lambda task root),
    copied into ``root`` at the same relative places; returns that folder."""
    found = facts(image.dockerfile)
    base = LAMBDA_TASK_ROOT if "LAMBDA_TASK_ROOT" in image.dockerfile.read_text() else found.workdir
    target = root / base.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    for sources, destination in found.copies:
        absolute = destination if destination.startswith("/") else f"{found.workdir}/{destination}"
        if not absolute.startswith(base):
            continue  # outside the folder a process runs in (e.g. /tmp/requirements.txt)
        place = root / absolute.lstrip("/")
        for source in sources:
            _copy(image.context / source, place, many=len(sources) > 1 or destination.endswith("/"))
    return target


def _copy(source: Path, place: Path, many: bool) -> None:
    if source.is_dir():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(source, place, dirs_exist_ok=True, ignore=ignore)
        return
    destination = place / source.name if many else place
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, destination)
