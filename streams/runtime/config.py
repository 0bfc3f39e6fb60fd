"""The runner's plain configuration (``streams`` imports only ``schemas``, not the settings layer)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.runtime.deadletter import ErrorBudget

DEFAULT_DEAD_LETTER_TOPIC = "errors.deadletters"


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class RunnerConfig:
    """How one processor instance runs.

    ``instance_id`` must be stable across restarts of the same instance: it
    names the transactional producer, so a restarted instance fences its
    previous incarnation and aborts its open transaction at once instead of
    leaving read_committed consumers blocked until the transaction times out.
    """

    app_id: str
    bootstrap_servers: str
    schema_registry_url: str
    output_schemas: Mapping[str, str]
    instance_id: str = "0"
    exactly_once: bool = True
    commit_interval_ms: int = 100
    batch_size: int = 2000
    poll_timeout_s: float = 0.05
    dead_letter_topic: str = DEFAULT_DEAD_LETTER_TOPIC
    key_schema: str = '"string"'
    auto_register_schemas: bool = True
    metrics_port: int | None = None
    error_budget: ErrorBudget = field(default_factory=ErrorBudget)
    assignment_strategy: str = "cooperative-sticky"
    static_membership: bool = False
    session_timeout_ms: int = 10_000
    transaction_timeout_ms: int = 30_000
    changelog_replication: int = 1
    clock: Callable[[], int] = wall_clock_ms
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    producer_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def transactional_id(self) -> str:
        return f"{self.app_id}-{self.instance_id}"
