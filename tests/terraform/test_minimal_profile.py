"""The minimal profile of terraform/README.md is a tfvars file the module accepts."""

from __future__ import annotations

import re

from .conftest import TERRAFORM_DIR

MINIMAL = TERRAFORM_DIR / "vars" / "minimal.tfvars.template"


def test_the_minimal_profile_sets_only_declared_variables() -> None:
    declared = set(
        re.findall(r'^variable "([^"]+)"', (TERRAFORM_DIR / "variables.tf").read_text(), re.M)
    )
    assigned = set(re.findall(r"^([a-z_0-9]+)\s*=", MINIMAL.read_text(), re.M))
    assert assigned and assigned <= declared, sorted(assigned - declared)
    assert {"service_sizes", "worker_max_count", "private_subnet_ids"} <= assigned


def test_the_readme_prices_the_minimal_sizes() -> None:
    """Each size of the template is in the README's minimal column (cpu units / 1024)."""
    readme = (TERRAFORM_DIR / "README.md").read_text()
    sizes = re.findall(
        r'^\s+"?([a-z-]+)"?\s+= \{ cpu = (\d+), memory = (\d+) \}', MINIMAL.read_text(), re.M
    )
    assert len(sizes) == 5
    for _service, cpu, memory in sizes:
        vcpu = f"{int(cpu) / 1024:g} vCPU, {int(memory) / 1024:g} GB"
        assert vcpu in readme, vcpu
