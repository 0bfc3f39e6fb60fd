"""The secured stack's ACL table (``deploy/local/acls.py``) against what the code really asks the broker for.

No broker here: Kafka's authorizer is modelled closely enough (literal and
prefixed patterns, READ/WRITE imply DESCRIBE, ALL, DENY wins over ALLOW) to
check that each runtime processor may do everything its runner does under
the command's default app id, and nothing of another processor's. The broker
itself enforcing the table is ``tests/integration/test_secure_stack.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from passerelle.deploy.local import acls, secure

pytestmark = pytest.mark.unit

IMPLY_DESCRIBE = {"READ", "WRITE", "DELETE", "ALTER"}


def _matches(grant: acls.Grant, name: str) -> bool:
    return any(name.startswith(n) if grant.prefixed else name == n for n in grant.names)


def allowed(component: str, resource: str, name: str, operation: str) -> bool:
    """Whether the broker lets ``component`` do ``operation`` on ``name`` with the table's bindings."""
    verdicts = set()
    for grant in acls.GRANTS.get(component, ()):
        if grant.resource != resource or not _matches(grant, name):
            continue
        for op in grant.operations:
            if grant.deny:
                if op in ("ALL", operation):
                    verdicts.add("DENY")
            elif op in ("ALL", operation) or (operation == "DESCRIBE" and op in IMPLY_DESCRIBE):
                verdicts.add("ALLOW")
    return verdicts == {"ALLOW"}


def runtime_processors() -> dict[str, tuple[str, Callable[[], Any]]]:
    """Each runtime processor's principal: (the command's default app id, the processor the command builds)."""
    from passerelle import settings as s
    from passerelle.commands import (
        campaign_counts,
        campaign_declarations,
        carts,
        conversion_paths,
        crm_activity,
        crm_normalizer,
        enrich,
        postview,
    )

    return {
        "enrich": ("enrich", lambda: enrich.build(s.EnrichmentSettings())),
        "carts": ("carts", lambda: carts.build(s.CartSettings())),
        "campaign-counts": ("campaign-counts", lambda: campaign_counts.build(s.CampaignCountsSettings())),
        "crm-normalizer": ("crm-normalizer", lambda: crm_normalizer.build(s.CrmNormalizerSettings())),
        "crm-activity": ("crm-activity", lambda: crm_activity.build(s.CrmActivitySettings())),
        "crm-activity-messages": ("crm-activity-messages", lambda: crm_activity.build_messages(s.ProcessorSettings())),
        "postview": ("postview", lambda: postview.build(s.PostViewSettings())),
        "conversion-paths": ("conversion-paths", lambda: conversion_paths.build(s.ConversionPathsSettings())),
        "campaign-declarations": (
            "campaign-declarations",
            lambda: campaign_declarations.build(s.CampaignDeclarationsSettings()),
        ),
    }


def default_app_id(command: str) -> str:
    from passerelle.cli import build_parser

    app_id: str = build_parser().parse_args([command]).app_id
    return app_id


def needs(app_id: str, processor: Any) -> list[tuple[str, str, str]]:
    """(resource, name, operation) the runner of ``processor`` uses as ``app_id`` (streams/runtime/runner.py)."""
    from passerelle.streams.runtime.timers import TIMER_STORE

    out = [(acls.TOPIC, t, "READ") for t in processor.inputs]
    out += [(acls.TOPIC, t, "WRITE") for t in (*processor.outputs, acls.DEAD_LETTERS)]
    for table in processor.tables:  # read whole by a reader naming `passerelle-table-<topic>` (tables.py)
        out += [(acls.TOPIC, table.topic, "READ"), (acls.GROUP, f"passerelle-table-{table.topic}", "READ")]
    for store in (*processor.stores, TIMER_STORE):  # changelogs: created at start, restored, written
        out += [(acls.TOPIC, store.changelog_topic(app_id), op) for op in ("CREATE", "READ", "WRITE")]
    out += [(acls.GROUP, app_id, "READ"), (acls.GROUP, f"{app_id}-restore", "READ")]
    out += [(acls.TRANSACTIONAL_ID, f"{app_id}-0", "WRITE"), (acls.TRANSACTIONAL_ID, f"{app_id}-host-7", "WRITE")]
    return out


def own(app_id: str, processor: Any) -> list[tuple[str, str, str]]:
    """What belongs to this processor alone: its changelogs, its groups, its transactional ids."""
    shared = {acls.TOPIC: set(acls.CATALOG_TOPICS), acls.GROUP: {f"passerelle-table-{t}" for t in acls.CATALOG_TOPICS}}
    return [need for need in needs(app_id, processor) if need[1] not in shared.get(need[0], set())]


@pytest.mark.parametrize("component", list(runtime_processors()))
def test_a_runtime_processor_may_do_what_its_runner_does(component: str) -> None:
    command, build = runtime_processors()[component]
    app_id = default_app_id(command)
    missing = [need for need in needs(app_id, build()) if not allowed(component, *need)]
    assert missing == []


@pytest.mark.parametrize("component", list(runtime_processors()))
def test_a_runtime_processor_reaches_nothing_of_another(component: str) -> None:
    """Prefixes included: `passerelle-crm-activity-` must not reach `passerelle-crm-activity-messages-...`."""
    processors = runtime_processors()
    for other, (command, build) in processors.items():
        if other == component:
            continue
        reached = [need for need in own(default_app_id(command), build()) if allowed(component, *need)]
        assert reached == [], f"{component} may touch {other}'s {reached}"


def test_new_crm_processors_read_and_write_only_their_topics() -> None:
    topics = {
        c: {(n, op) for r, n, _, op, _ in acls.bindings(c) if r == acls.TOPIC and not n.startswith("passerelle-")}
        for c in ("crm-normalizer", "crm-activity", "crm-activity-messages")
    }
    assert topics["crm-normalizer"] == {
        ("crm.cdc.customers", "READ"), ("crm.cdc.consents", "READ"), ("privacy.requests", "READ"),
        ("crm.profiles", "WRITE"), (acls.DEAD_LETTERS, "WRITE"),
    }  # fmt: skip
    assert topics["crm-activity"] == {
        ("hits.enriched", "READ"), ("carts.abandoned", "READ"), ("crm.activity.deltas", "READ"),
        ("crm.profiles", "READ"), ("privacy.requests", "READ"),
        ("crm.activity.deltas", "WRITE"), ("crm.web_activity", "WRITE"), (acls.DEAD_LETTERS, "WRITE"),
    }  # fmt: skip
    assert topics["crm-activity-messages"] == {
        ("remarketing.messages", "READ"), ("crm.activity.deltas", "WRITE"), (acls.DEAD_LETTERS, "WRITE"),
    }  # fmt: skip
    for component in topics:  # a processor never writes a CDC topic nor the CRM's table it does not own
        assert not allowed(component, acls.TOPIC, "crm.cdc.customers", "WRITE"), component
        assert not allowed(component, acls.TOPIC, "connect.offsets", "READ"), component


def test_postview_reads_and_writes_only_its_topics() -> None:
    bindings = acls.bindings("postview")
    topics = {(n, op) for r, n, _, op, _ in bindings if r == acls.TOPIC and not n.startswith("passerelle-")}
    assert topics == {
        ("ads.impressions", "READ"), ("hits.enriched", "READ"), ("crm.profiles", "READ"), ("privacy.requests", "READ"),
        ("ads.postview", "WRITE"), (acls.DEAD_LETTERS, "WRITE"),
    }  # fmt: skip
    assert "ads.postview" in acls.CATALOG_TOPICS
    assert not allowed("postview", acls.TOPIC, "ads.impressions", "WRITE")


def test_warehouse_reads_its_topics_and_writes_only_dead_letters() -> None:
    bindings = acls.bindings("warehouse")
    topics = {(n, op) for r, n, _, op, _ in bindings if r == acls.TOPIC}
    from passerelle.connectors.warehouse.sink import DEFAULT_TOPICS

    assert topics == {(t, "READ") for t in DEFAULT_TOPICS.values()} | {(acls.DEAD_LETTERS, "WRITE")}
    assert set(DEFAULT_TOPICS.values()) <= set(acls.CATALOG_TOPICS)
    assert allowed("warehouse", acls.GROUP, "passerelle-warehouse", "READ")
    assert not allowed("warehouse", acls.GROUP, "passerelle-postview", "READ")


def test_the_api_may_run_the_warehouse_sink_in_its_process() -> None:
    """With a DuckDB store the API runs the sink itself (one process per file): the sink's reads under its user."""
    from passerelle.connectors.partner_api.config import ApiConfig
    from passerelle.connectors.warehouse.sink import DEFAULT_TOPICS

    assert all(allowed("api", acls.TOPIC, t, "READ") for t in DEFAULT_TOPICS.values())
    assert allowed("api", acls.TOPIC, acls.DEAD_LETTERS, "WRITE")
    assert allowed("api", acls.GROUP, ApiConfig.warehouse_group_id, "READ")
    assert not allowed("api", acls.TOPIC, "hits.enriched", "WRITE")


def test_campaign_declarations_reads_and_writes_only_its_topics() -> None:
    bindings = acls.bindings("campaign-declarations")
    topics = {(n, op) for r, n, _, op, _ in bindings if r == acls.TOPIC and not n.startswith("passerelle-")}
    assert topics == {
        ("campaigns.declarations", "READ"), ("campaigns.undeclared", "READ"), ("campaigns", "READ"),
        ("partners.keys", "READ"), ("campaigns", "WRITE"), (acls.DEAD_LETTERS, "WRITE"),
    }  # fmt: skip
    # partners' declarations are trusted as their writer's: no component may write them
    assert [c for c in acls.GRANTS if allowed(c, acls.TOPIC, "campaigns.declarations", "WRITE")] == []


def test_crm_import_reads_and_writes_the_profiles_under_its_own_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """The group `passerelle crm import` names to read the table (assign only) is the one the table grants."""
    from passerelle.commands import crm
    from passerelle.connectors.crm import csv_import
    from passerelle.schemas import clients

    groups: list[str] = []

    class Stop(Exception):
        pass

    def consumer(conn: Any, group_id: str, *args: Any, **kwargs: Any) -> Any:
        groups.append(group_id)
        raise Stop

    monkeypatch.setattr(clients, "ensure_reachable", lambda *a, **k: None)
    monkeypatch.setattr(clients, "consumer", consumer)
    with pytest.raises(Stop):
        crm.read_current_profiles(clients.Connection.plain("127.0.0.1:1"), csv_import.CRM_TOPIC)
    assert len(groups) == 1
    assert allowed("crm-import", acls.GROUP, groups[0], "READ")
    assert allowed("crm-import", acls.TOPIC, csv_import.CRM_TOPIC, "READ")
    assert allowed("crm-import", acls.TOPIC, csv_import.CRM_TOPIC, "WRITE")
    # its producer is idempotent, not transactional: nothing on the cluster, no transactional id
    assert not [g for g in acls.GRANTS["crm-import"] if g.resource in (acls.CLUSTER, acls.TRANSACTIONAL_ID)]
    assert {(r, n) for r, n, *_ in acls.bindings("crm-import")} == {
        (acls.TOPIC, "crm.profiles"),
        (acls.GROUP, "passerelle-crm-import"),
    }


def test_no_principal_for_kafka_connect_yet() -> None:
    """The local Connect worker runs on the plaintext stack only (`up --secure --with connect` is refused)."""
    assert not any(c.startswith("connect") for c in acls.COMPONENTS)
    for component in acls.GRANTS:
        if component != "deploy":  # the pipeline creates every catalog topic, Connect's included
            assert not any(allowed(component, acls.TOPIC, t, "READ") for t in ("connect.configs", "errors.connect"))


def test_every_binding_becomes_an_acl_and_deny_is_deny() -> None:
    from confluent_kafka.admin import AclOperation, AclPermissionType

    made = [secure._acl_binding(c, *row) for c in acls.GRANTS for row in acls.bindings(c)]
    assert len(made) == len({(b.restype, b.name, b.resource_pattern_type, b.principal, b.operation,
                              b.permission_type) for b in made})  # fmt: skip
    denied = [(b.principal, b.name, b.operation) for b in made if b.permission_type == AclPermissionType.DENY]
    assert sorted(denied) == [
        ("User:crm-activity", "passerelle-crm-activity-messages-", AclOperation.ALL),
        ("User:crm-activity", "passerelle-crm-activity-messages-", AclOperation.ALL),
    ]
    assert set(acls.COMPONENTS) >= {"crm-normalizer", "crm-activity", "crm-activity-messages", "crm-import"}


def test_the_partner_api_and_its_admin_commands_reach_only_their_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """`passerelle api` reads keys, campaigns and undeclared tags and writes campaigns; `partners` owns the keys."""
    from passerelle.connectors.partner_api import tables
    from passerelle.connectors.partner_api.config import ApiTopics
    from passerelle.schemas import clients

    groups: list[str] = []

    class Stop(Exception):
        pass

    def consumer(conn: Any, group_id: str, *args: Any, **kwargs: Any) -> Any:
        groups.append(group_id)
        raise Stop

    monkeypatch.setattr(clients, "consumer", consumer)
    topics = ApiTopics()
    for topic in (topics.keys, topics.campaigns, topics.undeclared):
        with pytest.raises(Stop):
            tables.TableFollower(clients.Connection.plain("127.0.0.1:1"), topic).start()
    for component in ("api", "partners-admin"):
        for topic, group in zip((topics.keys, topics.campaigns, topics.undeclared), groups, strict=True):
            assert allowed(component, acls.TOPIC, topic, "READ") and allowed(component, acls.GROUP, group, "READ")
    assert allowed("api", acls.TOPIC, topics.campaigns, "WRITE")
    assert not allowed("api", acls.TOPIC, topics.keys, "WRITE")  # the API never makes nor revokes keys
    assert allowed("partners-admin", acls.TOPIC, topics.keys, "WRITE")
    assert not allowed("partners-admin", acls.TOPIC, topics.campaigns, "WRITE")
    for component in ("api", "partners-admin"):
        assert not [g for g in acls.GRANTS[component] if g.resource in (acls.CLUSTER, acls.TRANSACTIONAL_ID)]
        assert acls.registry_role(component) == "read"
    assert {"campaigns.declarations", "partners.keys"} <= set(acls.CATALOG_TOPICS)


def test_the_api_follows_and_writes_the_query_templates_and_only_it() -> None:
    """Report templates live on ``query.templates``: the API reads it whole (its table group) and writes it."""
    from passerelle.connectors.partner_api.config import ApiTopics

    templates = ApiTopics().templates
    assert templates in acls.CATALOG_TOPICS
    assert allowed("api", acls.TOPIC, templates, "READ") and allowed("api", acls.TOPIC, templates, "WRITE")
    assert allowed("api", acls.GROUP, f"passerelle-api-{templates}", "READ")
    assert not [c for c in acls.GRANTS if c != "api" and allowed(c, acls.TOPIC, templates, "WRITE")]
