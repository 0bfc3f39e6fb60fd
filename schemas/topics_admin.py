"""Create the catalog's topics on a broker, idempotently, and report drift.

Creation is safe to run on every deploy: existing topics are left alone.
A topic whose partition count or configs differ from the catalog is reported
as drift, never changed: repartitioning breaks key ordering and changing a
cleanup policy can delete data, so a human decides. The comparison logic is
pure (``diff_topic``); ``KafkaAdmin`` is the thin layer over confluent-kafka.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from passerelle.schemas import clients
from passerelle.schemas.catalog import Catalog, TopicSpec

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
MAX_REPLICATION_FACTOR = 3

Status = Literal["created", "exists", "drift"]


class AdminError(Exception):
    """The broker cannot be reached or refuses an admin request; a one-line cause the user can act on."""

    user_error = True
    exit_code = 1


@dataclass(frozen=True)
class TopicState:
    """What the broker says about one existing topic."""

    name: str
    partitions: int
    configs: Mapping[str, str]


@dataclass(frozen=True)
class TopicOutcome:
    """What ``ensure_topics`` did or found for one topic."""

    name: str
    status: Status
    details: tuple[str, ...] = ()

    def line(self) -> str:
        """One printable line per topic, so a deploy log is greppable."""
        if self.status == "drift":
            return f"{self.name}: DRIFT: {'; '.join(self.details)}"
        suffix = f" ({', '.join(self.details)})" if self.details else ""
        return f"{self.name}: {self.status}{suffix}"


@dataclass
class TopicReport:
    """Outcomes of one ``ensure_topics`` run, in catalog order."""

    outcomes: list[TopicOutcome] = field(default_factory=list)

    def _names(self, status: Status) -> list[str]:
        return [o.name for o in self.outcomes if o.status == status]

    @property
    def created(self) -> list[str]:
        """Topics this run created."""
        return self._names("created")

    @property
    def existing(self) -> list[str]:
        """Topics that already existed and match the catalog."""
        return self._names("exists")

    @property
    def drifted(self) -> list[str]:
        """Topics that exist but differ from the catalog."""
        return self._names("drift")

    @property
    def has_drift(self) -> bool:
        """True when any topic differs from the catalog (``--fail-on-drift`` exits non-zero on it)."""
        return any(o.status == "drift" for o in self.outcomes)

    def lines(self) -> list[str]:
        """One line per topic."""
        return [o.line() for o in self.outcomes]

    def outcome(self, name: str) -> TopicOutcome:
        """The outcome of ``name``."""
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)


# --- pure logic ----------------------------------------------------------------------------------


def replication_factor(broker_count: int, wanted: int | None = None) -> int:
    """Replicas for new topics: ``wanted`` if given, else as many as the cluster allows up to 3.

    Three replicas is the production norm; a single-node dev broker can only hold one.
    """
    if wanted is not None:
        if wanted < 1:
            raise AdminError(f"replication factor must be >= 1, got {wanted}")
        if broker_count and wanted > broker_count:
            raise AdminError(f"replication factor {wanted} exceeds the {broker_count} broker(s) of the cluster")
        return wanted
    return max(1, min(MAX_REPLICATION_FACTOR, broker_count))


def diff_topic(spec: TopicSpec, state: TopicState) -> list[str]:
    """Differences between the catalog's spec and the broker's topic, as readable phrases (empty: no drift)."""
    drift = []
    if state.partitions != spec.partitions:
        drift.append(f"partitions {state.partitions} on the broker, {spec.partitions} in the catalog")
    for key, wanted in spec.configs().items():
        actual = state.configs.get(key)
        if actual is None:
            continue  # not reported by the broker: nothing to compare
        if key == "cleanup.policy":
            same = set(actual.replace(" ", "").split(",")) == set(wanted.split(","))
        else:
            same = actual == wanted
        if not same:
            drift.append(f"{key} {actual} on the broker, {wanted} in the catalog")
    return drift


def plan(specs: list[TopicSpec], existing: Mapping[str, TopicState]) -> tuple[list[TopicSpec], list[TopicOutcome]]:
    """Split specs into topics to create and outcomes of the existing ones (exists or drift)."""
    to_create: list[TopicSpec] = []
    outcomes: list[TopicOutcome] = []
    for spec in specs:
        state = existing.get(spec.name)
        if state is None:
            to_create.append(spec)
            continue
        drift = diff_topic(spec, state)
        outcomes.append(TopicOutcome(spec.name, "drift", tuple(drift)) if drift else TopicOutcome(spec.name, "exists"))
    return to_create, outcomes


# --- the broker ----------------------------------------------------------------------------------


class AdminLike(Protocol):
    """What ``ensure_topics`` needs from a cluster admin."""

    def broker_count(self) -> int: ...

    def describe(self, names: list[str]) -> dict[str, TopicState]: ...

    def create(self, specs: list[TopicSpec], replication_factor: int) -> dict[str, Exception | None]: ...


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class KafkaAdmin:
    """A confluent-kafka ``AdminClient`` with short timeouts and one-line errors naming the servers."""

    def __init__(
        self,
        conn: clients.Connection,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.conn = conn
        self.bootstrap_servers = conn.bootstrap_servers
        self.timeout_s = timeout_s
        conf: dict[str, Any] = {
            "socket.timeout.ms": int(timeout_s * 1000),
            "socket.connection.setup.timeout.ms": int(timeout_s * 1000),
            **(config or {}),
        }
        self._watch = clients.ErrorWatch(conn)
        self.client = clients.admin_client(conn, conf, watch=self._watch)

    def _unreachable(self, exc: BaseException) -> Exception:
        known = _classified(exc, self.conn)
        if known is not None:
            return known
        if self._watch.fatal() is not None:
            return self._watch.unreachable(exc, self.timeout_s)
        return AdminError(
            f"Kafka broker not reachable at {self.conn.describe()} within {self.timeout_s:g}s "
            f"(is `passerelle up` running?): {_first_line(exc)}"
        )

    def _metadata(self) -> Any:
        from confluent_kafka import KafkaException

        try:
            return self.client.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise self._unreachable(exc) from exc

    def broker_count(self) -> int:
        """Number of brokers in the cluster (also proves the cluster answers)."""
        return len(self._metadata().brokers)

    def describe(self, names: list[str]) -> dict[str, TopicState]:
        """Partition counts and configs of those of ``names`` that exist."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import ConfigResource, ResourceType

        metadata = self._metadata()
        present = [n for n in names if n in metadata.topics and metadata.topics[n].error is None]
        if not present:
            return {}
        resources = [ConfigResource(ResourceType.TOPIC, n) for n in present]
        try:
            futures = self.client.describe_configs(resources, request_timeout=self.timeout_s)
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        states: dict[str, TopicState] = {}
        for resource, future in futures.items():
            try:
                entries = future.result(timeout=self.timeout_s)
            except KafkaException as exc:
                known = _classified(exc, self.conn, repr(resource.name))
                raise known or AdminError(
                    f"cannot describe topic {resource.name!r} on {self.bootstrap_servers}: {_first_line(exc)}"
                ) from None
            configs = {name: entry.value for name, entry in entries.items() if entry.value is not None}
            states[resource.name] = TopicState(resource.name, len(metadata.topics[resource.name].partitions), configs)
        return states

    def create(self, specs: list[TopicSpec], replication_factor: int) -> dict[str, Exception | None]:
        """Create ``specs``; per topic ``None`` on success or the broker's error (already-exists included)."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import NewTopic

        if not specs:
            return {}
        new = [NewTopic(s.name, s.partitions, replication_factor, config=s.configs()) for s in specs]
        try:
            futures = self.client.create_topics(new, operation_timeout=self.timeout_s, request_timeout=self.timeout_s)
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        results: dict[str, Exception | None] = {}
        for name, future in futures.items():
            try:
                future.result(timeout=self.timeout_s * 2)
                results[name] = None
            except Exception as exc:
                results[name] = exc
        self._await_metadata([name for name, error in results.items() if error is None])
        return results

    def _await_metadata(self, names: list[str]) -> None:
        """Wait until new topics show in metadata: a describe or produce right after creation must see them."""
        deadline = time.monotonic() + self.timeout_s
        missing = set(names)
        while missing and time.monotonic() < deadline:
            topics = self._metadata().topics
            missing = {n for n in missing if n not in topics or topics[n].error is not None}
            if missing:
                time.sleep(0.05)
        if missing:
            log.warning("created topics not yet visible in metadata: %s", ", ".join(sorted(missing)))


def _classified(exc: BaseException, conn: clients.Connection, what: str = "") -> Exception | None:
    """Refused credentials or a missing ACL, as the client layer words them."""
    from confluent_kafka import KafkaError

    err = exc.args[0] if exc.args else None
    return clients.kafka.classify(err, conn, what) if isinstance(err, KafkaError) else None


def _already_exists(exc: Exception) -> bool:
    from confluent_kafka import KafkaError

    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS


def ensure_topics(
    admin: AdminLike,
    catalog: Catalog,
    names: list[str] | None = None,
    *,
    replication: int | None = None,
) -> TopicReport:
    """Create the missing topics of the catalog (all, or ``names``) and report drift on the others.

    Idempotent: running it twice creates nothing the second time. A topic
    created concurrently by someone else between describe and create is
    compared like any existing topic.
    """
    specs = catalog.select(names)  # unknown names fail before touching the broker
    rf = replication_factor(admin.broker_count(), replication)
    to_create, outcomes = plan(specs, admin.describe([s.name for s in specs]))
    by_name = {o.name: o for o in outcomes}

    results = admin.create(to_create, rf)
    raced: list[TopicSpec] = []
    for spec in to_create:
        error = results.get(spec.name)
        if error is None:
            plural = "s" if spec.partitions != 1 else ""
            details = (f"{spec.partitions} partition{plural}", f"replication {rf}", spec.cleanup_policy)
            by_name[spec.name] = TopicOutcome(spec.name, "created", details)
        elif _already_exists(error):
            raced.append(spec)
            by_name[spec.name] = TopicOutcome(spec.name, "exists")  # refined below when describable
        else:
            conn = getattr(admin, "conn", None)
            known = _classified(error, conn, repr(spec.name)) if conn is not None else None
            raise known or AdminError(f"cannot create topic {spec.name!r} on {_servers(admin)}: {_first_line(error)}")
    if raced:
        _, raced_outcomes = plan(raced, admin.describe([s.name for s in raced]))
        by_name.update({o.name: o for o in raced_outcomes})
    return TopicReport([by_name[s.name] for s in specs])


def _servers(admin: AdminLike) -> str:
    return str(getattr(admin, "bootstrap_servers", "the cluster"))
