"""`terraform show -json` of a plan of the root module against moto, and what a
policy check needs from it: planned values by address, and which resource an
attribute of another one points at (from the plan's configuration, since ARNs and
ids are unknown before apply)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conftest import Deployment

#: ``aws_lb.this``, ``aws_lb_listener.https[0]``, ``aws_lb_target_group.this.arn``
REFERENCE = re.compile(r"^(?P<type>aws_\w+)\.(?P<name>[\w-]+)(?:\[(?P<index>[^\]]+)\])?(?:\.\w+)*$")


class UnresolvedReference(AssertionError):
    """An attribute points at something the plan cannot name (a variable, a module output)."""


def plan_module(
    endpoint: str, workdir: Path, cli_config: Path, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Plan the root module with the emulator's variables and ``overrides``; the plan as JSON.
    A ``RuntimeError`` carries terraform's output when the plan fails (a precondition)."""
    deployment = Deployment(endpoint, workdir, cli_config, overrides)
    deployment.tf("init", "-input=false", "-no-color")
    deployment.tf("plan", "-input=false", "-no-color", "-out=plan.bin")
    return json.loads(deployment.tf("show", "-json", "plan.bin"))


@dataclass(frozen=True)
class Resource:
    """One planned resource instance."""

    address: str
    module: str  # "" for the root module, e.g. "module.alb"
    type: str
    name: str
    index: Any  # None, a count index or a for_each key
    after: dict[str, Any]
    #: Which attributes are known only after apply (``after_unknown``).
    unknown: dict[str, Any]


class Plan:
    """Planned resources, and resolution of one resource's references to others."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.resources = {
            r["address"]: Resource(
                address=r["address"],
                module=r.get("module_address", ""),
                type=r["type"],
                name=r["name"],
                index=r.get("index"),
                after=r["change"]["after"] or {},
                unknown=r["change"].get("after_unknown") or {},
            )
            for r in raw["resource_changes"]
            if r["mode"] == "managed" and "delete" not in r["change"]["actions"]
        }

    def of_type(self, *types: str) -> Iterator[Resource]:
        return (r for r in self.resources.values() if r.type in types)

    def configuration(self, address: str) -> dict[str, Any]:
        """The root module's configuration of a resource or data source."""
        (found,) = [
            r
            for r in self.raw["configuration"]["root_module"]["resources"]
            if r["address"] == address
        ]
        return found

    def expressions(self, resource: Resource) -> dict[str, Any]:
        """The configuration's expressions of the resource (not those of dynamic blocks)."""
        module = self.raw["configuration"]["root_module"]
        for call in filter(None, resource.module.split(".")[1::2]):
            module = module["module_calls"][call]["module"]
        for config in module.get("resources", []):
            if config["address"] == f"{resource.type}.{resource.name}":
                return config.get("expressions", {})
        raise KeyError(resource.address)

    def resolve(self, resource: Resource, expression: dict[str, Any] | None) -> Resource:
        """The resource instance that an attribute of ``resource`` refers to."""
        found = self.resolve_all(resource, expression)
        if len(found) != 1:
            references = (expression or {}).get("references", [])
            raise UnresolvedReference(f"{resource.address}: {references} name {len(found)}")
        return found[0]

    def resolve_all(self, resource: Resource, expression: dict[str, Any] | None) -> list[Resource]:
        """The resource instances an attribute of ``resource`` refers to (a list of ids).

        Only references to resources of the same module are followed; anything else
        (a variable, a module's output) raises :class:`UnresolvedReference`.
        """
        references = (expression or {}).get("references", [])
        found: dict[str, Resource] = {}
        for reference in references:
            match = REFERENCE.match(reference)
            if match is None:
                if reference != "each.key":
                    raise UnresolvedReference(f"{resource.address}: {reference} is not a resource")
                continue
            index = match["index"]
            if index is None and any(
                r.startswith(f"{match['type']}.{match['name']}[") for r in references
            ):
                continue  # ``aws_lb_listener.https`` beside ``aws_lb_listener.https[0]``
            if index == "each.key" or (index is None and "each.key" in references):
                index = json.dumps(resource.index)
            prefix = f"{resource.module}." if resource.module else ""
            address = f"{prefix}{match['type']}.{match['name']}"
            address += "" if index is None else f"[{index}]"
            if address not in self.resources:
                raise UnresolvedReference(f"{resource.address}: {reference} is not planned")
            found[address] = self.resources[address]
        return list(found.values())
