"""The README's configuration table names every setting the code reads, and nothing else."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from passerelle import settings

pytestmark = pytest.mark.unit
README = Path(__file__).resolve().parents[2] / "README.md"
FULL = re.compile(r"`PASSERELLE_([A-Z0-9_]+)`")
SUFFIX = re.compile(r"`(_[A-Z0-9_]+)`")


def setting_names() -> set[str]:
    names: set[str] = set()
    for name, obj in vars(settings).items():
        if inspect.isclass(obj) and name.endswith("Settings") and hasattr(obj, "model_fields"):
            names |= {field.upper() for field in obj.model_fields}
    return names


def documented() -> tuple[set[str], set[str]]:
    """Names in the table's rows; a row may abbreviate siblings: `PASSERELLE_KAFKA_PORT` / `_CONTROLLER_PORT`."""
    full: set[str] = set()
    expanded: set[str] = set()
    for line in README.read_text().splitlines():
        if not line.startswith("| `PASSERELLE_"):
            continue
        names = FULL.findall(line)
        full.update(names)
        expanded.update(names)
        parts = names[0].split("_")
        for suffix in SUFFIX.findall(line):
            expanded.update("_".join(parts[:i]) + suffix if i else suffix[1:] for i in range(len(parts)))
    return full, expanded


def test_every_setting_is_in_the_readme_table() -> None:
    _, expanded = documented()
    assert setting_names() - expanded == set()


def test_the_readme_table_names_no_setting_that_does_not_exist() -> None:
    full, _ = documented()
    assert full - setting_names() == set()
