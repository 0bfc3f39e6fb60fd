"""The sequencer's metrics: the runtime's, same names and labels, plus the sequence's own counters.

Records in and out, dead letters, registry waits and state sizes are the
runtime's ``passerelle_*`` metrics with ``processor="remarketing"``, so one
dashboard and one alert cover every processor. What only the sequence has
(commands by kind and outcome, messages by step, recovered orders) is named
``passerelle_remarketing_*``, as the cart tracker names its own
``passerelle_carts_*``. Labels are outcomes, steps, topics and stores, never
people.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from passerelle.streams.remarketing.config import PROCESSOR
from passerelle.streams.runtime.metrics import RuntimeMetrics


class RemarketingMetrics:
    """All metrics of one sequencer process, in their own registry (tests build several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.runtime = RuntimeMetrics(registry)
        self.registry = r = self.runtime.registry
        self.inputs = Counter(
            "passerelle_remarketing_inputs_total", "Commands applied to the sequences, by kind and outcome",
            ["kind", "outcome"], registry=r,
        )  # fmt: skip
        self.messages = Counter(
            "passerelle_remarketing_messages_total", "Remarketing messages emitted", ["step"], registry=r
        )
        self.recovered = Counter(
            "passerelle_remarketing_recovered_orders_total", "Orders placed after a remarketing step", registry=r
        )

    def records_in(self, topic: str, count: int = 1) -> None:
        self.runtime.records_in.labels(PROCESSOR, topic).inc(count)

    def records_out(self, topic: str, count: int = 1) -> None:
        self.runtime.records_out.labels(PROCESSOR, topic).inc(count)

    def dead_letter(self, stage: str) -> None:
        self.runtime.dead_letters.labels(PROCESSOR, stage).inc()

    def registry_retry(self) -> None:
        self.runtime.registry_retries.labels(PROCESSOR).inc()

    def state_keys(self, store: str, count: int) -> None:
        self.runtime.state_keys.labels(PROCESSOR, store).set(count)

    def serve(self, port: int) -> None:
        """Expose ``/metrics`` on ``127.0.0.1:port``, as the runtime does."""
        self.runtime.serve(port)
