"""Fixtures of the end-to-end tests: each runs its own stack through the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.flow_helpers import cli, private_stack_env


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private stack's environment (free ports, its own state dir), purged afterwards."""
    env = private_stack_env(tmp_path / "state")
    try:
        yield env
    finally:
        cli(env, "down", "--purge", timeout=120)
