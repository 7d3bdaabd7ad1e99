"""docs/configuration.md is the generator's output, and lists every variable read."""

from __future__ import annotations

import inspect
import re

from churnops.drop import trigger
from churnops.settings import GROUPS
from devtools.configuration_reference import REFERENCE, render


def test_the_committed_reference_is_current() -> None:
    assert REFERENCE.read_text() == render(), "docs/configuration.md is stale: run `make docs`"


def test_the_lambda_environment_lists_every_variable_the_trigger_reads() -> None:
    source = inspect.getsource(trigger)
    read = set(re.findall(r'env(?:\.get\(|\[)"([A-Z_]+)"', source))
    read |= set(re.findall(r'_number\(env, "([A-Z_]+)"', source))
    assert read == set(trigger.ENVIRONMENT)


def test_every_setting_says_what_it_does() -> None:
    fields = {name: f for group in GROUPS.values() for name, f in group.model_fields.items()}
    assert [name for name, field in fields.items() if not field.description] == []


def test_at_most_40_settings() -> None:
    """Issue 20: a user reads 40 or fewer; tunables are constants beside their code."""
    assert len({name for group in GROUPS.values() for name in group.model_fields}) <= 40
