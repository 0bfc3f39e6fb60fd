"""Who may do what on the secured local stack: one principal per component, as plain data.

``passerelle up --secure`` creates a SCRAM-SHA-512 user per component and
exactly the ACLs below (``passerelle.deploy.local.secure.provision``); the broker runs
``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``, so
anything not granted here is refused. ``admin`` is a super user (bootstrapped
at storage format time, used by the broker between its own listeners, by
operators and by tests) and has no ACLs; neither has the controller's
principal, also a super user.

Reading the table:

- ``READ`` and ``WRITE`` imply ``DESCRIBE`` in Kafka's authorizer, so a
  component that reads or writes a topic (or a group, or a transactional id)
  may also see its metadata; ``DESCRIBE`` is spelled out only where nothing
  else grants it.
- Consumers need ``READ`` on their consumer group (join, fetch and commit
  offsets, and ``send_offsets_to_transaction`` for exactly-once). Readers
  that only ``assign()`` (lookup tables, the registry) still name a group, and
  librdkafka looks up its coordinator: they get ``READ`` on that group too.
- Idempotent producers need nothing on the cluster: since Kafka 3.0 (KIP-679)
  ``WRITE`` on any topic is enough, and ``IDEMPOTENT_WRITE`` is deprecated.
  Transactional producers need ``WRITE`` on their ``TransactionalId``
  (``<app id>-<instance id>``: granted by the app-id prefix).
- The stream processors on the runtime create their changelogs
  (``<app id>-<store>-changelog``) themselves, and faust creates its tables'
  changelogs and its command topic (``<app id>-...``): they get ``CREATE``,
  ``READ`` and ``WRITE`` on topics prefixed by their app id.
- Every component that dead-letters writes ``errors.deadletters``.
- A prefix can reach further than its owner: ``passerelle-crm-activity-``
  (crm-activity's changelogs and transactional ids) also matches everything
  of ``passerelle-crm-activity-messages-``. A ``DENY`` grant takes the other
  component's prefix back (in Kafka's authorizer a DENY wins over any
  ALLOW), so each principal still reaches only its own.
- Kafka Connect has no principal: the local worker runs on the plaintext
  stack only (``up --secure --with connect`` is refused), see docs/security.md.
- The names are the defaults of the commands (``--app-id``, ``--group-id``,
  ``PASSERELLE_SCHEMAS_TOPIC``, ``PASSERELLE_DEAD_LETTER_TOPIC``): a deployment
  that changes one changes this table with it.

This module imports nothing (design rule for ``deploy/``): the catalog's topic
names are repeated here, and a test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

TOPIC = "topic"
GROUP = "group"
TRANSACTIONAL_ID = "transactional_id"
CLUSTER = "cluster"
CLUSTER_NAME = "kafka-cluster"

DEAD_LETTERS = "errors.deadletters"
SCHEMAS_TOPIC = "_schemas"  # the registry's storage topic (PASSERELLE_SCHEMAS_TOPIC's default)

# The catalog's topics (schemas/catalog.toml), which the deployment pipeline creates.
CATALOG_TOPICS = (
    "hits.raw",
    "hits.enriched",
    "crm.profiles",
    "identity.links",
    "campaigns",
    "campaigns.undeclared",
    "campaigns.declarations",
    "partners.keys",
    "query.templates",
    "ads.impressions",
    "ads.postview",
    "partners.metrics",
    "carts.abandoned",
    "campaigns.live",
    "campaigns.live.deltas",
    "remarketing.messages",
    "remarketing.deliveries",
    "conversions.paths",
    "conversions.paths.events",
    "privacy.requests",
    "crm.cdc.customers",
    "crm.cdc.consents",
    "crm.activity.deltas",
    "crm.web_activity",
    "crm.conversion_paths",
    "crm.customer_channels",
    "attribution.markov",
    "connect.configs",
    "connect.offsets",
    "connect.status",
    "errors.connect",
    DEAD_LETTERS,
)


@dataclass(frozen=True)
class Grant:
    """ALLOW (or DENY) ``operations`` on ``names`` (of one resource type) to one principal, from any host."""

    resource: str  # topic | group | transactional_id | cluster
    names: tuple[str, ...]
    operations: tuple[str, ...]
    why: str
    prefixed: bool = False  # the names are prefixes (Kafka's PREFIXED pattern), else literal
    deny: bool = False  # a DENY binding: takes back what a broader ALLOW prefix of the same principal reaches


ADMIN = "admin"
"""The super user: bootstrapped at format time, inter-broker traffic, operators, tests."""

CONTROLLER = "controller"
"""The controller listener's principal (SASL/PLAIN, static): a super user, never a client."""

WAREHOUSE_SINK: tuple[Grant, ...] = (
    Grant(
        TOPIC,
        (
            "hits.enriched",
            "carts.abandoned",
            "remarketing.messages",
            "remarketing.deliveries",
            "campaigns",
            "ads.postview",
            "partners.metrics",
            "conversions.paths",
            "attribution.markov",
        ),
        ("READ",),
        "the warehouse sink: the topics it writes into the analytics store",
    ),
    Grant(
        TOPIC,
        ("privacy.requests", "crm.profiles", "identity.links"),
        ("READ",),
        "erasures (requests, CRM tombstones) and the visitor ids linked to a customer",
    ),
    Grant(TOPIC, (DEAD_LETTERS,), ("WRITE",), "undecodable records"),
    Grant(
        GROUP,
        ("passerelle-warehouse",),
        ("READ",),
        "its consumer group (offsets live in the store; the group's are committed for lag tools)",
    ),
)
"""What the warehouse sink needs: ``passerelle warehouse``'s, and the partner API's when it runs the sink in its
own process (a DuckDB store, ``PASSERELLE_API_WAREHOUSE_SINK``)."""

GRANTS: dict[str, tuple[Grant, ...]] = {
    "deploy": (
        Grant(
            TOPIC,
            CATALOG_TOPICS,
            ("CREATE", "DESCRIBE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS"),
            "`passerelle topics create [--fail-on-drift]`: create the catalog's topics, read their partitions "
            "and configs to report drift; ALTER_CONFIGS for the operator who fixes a reported drift",
        ),
        Grant(CLUSTER, (CLUSTER_NAME,), ("DESCRIBE",), "count the brokers (replication factor min(3, brokers))"),
    ),
    "registry": (
        Grant(
            TOPIC,
            (SCHEMAS_TOPIC,),
            ("CREATE", "READ", "WRITE"),
            "the embedded registry creates its compacted `_schemas` topic on first start, replays it, "
            "and writes every schema and config change to it",
        ),
        Grant(
            GROUP,
            ("passerelle-registry-",),
            ("READ",),
            "its reader names a random `passerelle-registry-<uuid>` group (assign only, never committed)",
            prefixed=True,
        ),
    ),
    "collector": (
        Grant(
            TOPIC,
            ("hits.raw",),
            ("WRITE",),
            "the HTTP collector produces every hit to hits.raw (idempotent producer: nothing on the cluster)",
        ),
        Grant(TOPIC, ("ads.impressions",), ("WRITE",), "`GET /imp`: the ad impression pixel's AdImpression records"),
    ),
    "enrich": (
        Grant(TOPIC, ("hits.raw",), ("READ",), "its input"),
        Grant(
            TOPIC,
            ("campaigns", "crm.profiles", "campaigns.undeclared", "privacy.requests"),
            ("READ",),
            "lookup tables: declared campaigns, CRM profiles, the undeclared-campaign inbox, privacy requests",
        ),
        Grant(
            TOPIC,
            ("hits.enriched", "identity.links", "campaigns.undeclared", DEAD_LETTERS),
            ("WRITE",),
            "its outputs, and dead letters",
        ),
        Grant(
            TOPIC,
            ("passerelle-enrichment-",),
            ("CREATE", "READ", "WRITE"),
            "its state changelogs `passerelle-enrichment-<store>-changelog`: created, restored, written",
            prefixed=True,
        ),
        Grant(
            GROUP,
            ("passerelle-enrichment", "passerelle-enrichment-restore"),
            ("READ",),
            "its consumer group (offsets committed in its transactions) and the restore reader's group",
        ),
        Grant(
            GROUP,
            (
                "passerelle-table-campaigns",
                "passerelle-table-crm.profiles",
                "passerelle-table-campaigns.undeclared",
                "passerelle-table-privacy.requests",
            ),
            ("READ",),
            "the lookup tables' readers name a `passerelle-table-<topic>` group (assign only)",
        ),
        Grant(
            TRANSACTIONAL_ID,
            ("passerelle-enrichment-",),
            ("WRITE",),
            "exactly-once: transactional id `passerelle-enrichment-<instance id>`",
            prefixed=True,
        ),
    ),
    "carts": (
        Grant(TOPIC, ("hits.enriched",), ("READ",), "its input"),
        Grant(TOPIC, ("crm.profiles", "privacy.requests"), ("READ",), "lookup tables: CRM profiles, privacy requests"),
        Grant(TOPIC, ("carts.abandoned", DEAD_LETTERS), ("WRITE",), "its output, and dead letters"),
        Grant(
            TOPIC,
            ("passerelle-carts-",),
            ("CREATE", "READ", "WRITE"),
            "its state changelogs `passerelle-carts-<store>-changelog`",
            prefixed=True,
        ),
        Grant(
            GROUP,
            (
                "passerelle-carts",
                "passerelle-carts-restore",
                "passerelle-table-crm.profiles",
                "passerelle-table-privacy.requests",
            ),
            ("READ",),
            "its consumer group, the restore reader's and the lookup tables' readers' groups",
        ),
        Grant(
            TRANSACTIONAL_ID,
            ("passerelle-carts-",),
            ("WRITE",),
            "exactly-once: transactional id `passerelle-carts-<instance id>`",
            prefixed=True,
        ),
    ),
    "campaign-counts": (
        Grant(
            TOPIC,
            ("hits.enriched", "campaigns.live.deltas"),
            ("READ",),
            "its inputs: enriched hits, and the deltas it re-keyed by campaign (read back)",
        ),
        Grant(
            TOPIC,
            ("campaigns.live.deltas", "campaigns.live", DEAD_LETTERS),
            ("WRITE",),
            "the deltas it re-keys by campaign, its output, and dead letters",
        ),
        Grant(
            TOPIC,
            ("passerelle-campaign-counts-",),
            ("CREATE", "READ", "WRITE"),
            "its state changelogs `passerelle-campaign-counts-<store>-changelog`",
            prefixed=True,
        ),
        Grant(
            GROUP,
            ("passerelle-campaign-counts", "passerelle-campaign-counts-restore"),
            ("READ",),
            "its consumer group and the restore reader's group",
        ),
        Grant(
            TRANSACTIONAL_ID,
            ("passerelle-campaign-counts-",),
            ("WRITE",),
            "exactly-once: transactional id `passerelle-campaign-counts-<instance id>`",
            prefixed=True,
        ),
    ),
    "crm-normalizer": (
        Grant(TOPIC, ("crm.cdc.customers", "crm.cdc.consents"), ("READ",), "its inputs: the Debezium change events"),
        Grant(TOPIC, ("privacy.requests",), ("READ",), "lookup table: privacy requests (erasures)"),
        Grant(TOPIC, ("crm.profiles", DEAD_LETTERS), ("WRITE",), "its output, and dead letters"),
        Grant(
            TOPIC,
            ("passerelle-crm-normalizer-",),
            ("CREATE", "READ", "WRITE"),
            "its state changelogs `passerelle-crm-normalizer-<store>-changelog`",
            prefixed=True,
        ),
        Grant(
            GROUP,
            ("passerelle-crm-normalizer", "passerelle-crm-normalizer-restore", "passerelle-table-privacy.requests"),
            ("READ",),
            "its consumer group, the restore reader's and the lookup table's reader's groups",
        ),
        Grant(
            TRANSACTIONAL_ID,
            ("passerelle-crm-normalizer-",),
            ("WRITE",),
            "exactly-once: transactional id `passerelle-crm-normalizer-<instance id>`",
            prefixed=True,
        ),
    ),
    "crm-activity": (
        Grant(
            TOPIC,
            ("hits.enriched", "carts.abandoned", "crm.activity.deltas"),
            ("READ",),
            "its inputs: enriched hits, abandoned carts, and the deltas it re-keyed by customer (read back)",
        ),
        Grant(TOPIC, ("crm.profiles", "privacy.requests"), ("READ",), "lookup tables: CRM profiles, privacy requests"),
        Grant(
            TOPIC,
            ("crm.activity.deltas", "crm.web_activity", DEAD_LETTERS),
            ("WRITE",),
            "the deltas it re-keys by customer, its output (for the JDBC sink), and dead letters",
        ),
        Grant(
            TOPIC,
            ("passerelle-crm-activity-",),
            ("CREATE", "READ", "WRITE"),
            "its state changelogs `passerelle-crm-activity-<store>-changelog`",
            prefixed=True,
        ),
        Grant(
            GROUP,
            (
                "passerelle-crm-activity",
                "passerelle-crm-activity-restore",
                "passerelle-table-crm.profiles",
                "passerelle-table-privacy.requests",
            ),
            ("READ",),
            "its consumer group, the restore reader's and the lookup tables' readers' groups",
        ),
        Grant(
            TRANSACTIONAL_ID,
            ("passerelle-crm-activity-",),
            ("WRITE",),
            "exactly-once: transactional id `passerelle-crm-activity-<instance id>`",
            prefixed=True,
        ),
        Grant(
            TOPIC,
            ("passerelle-crm-activity-messages-",),
            ("ALL",),
            "not crm-activity-messages' changelogs, which its own prefix would reach",
            prefixed=True,
            deny=True,
        ),
        Grant(
            TRANSACTIONAL_ID,
            ("passerelle-crm-activity-messages-",),
            ("ALL",),
            "not crm-activity-messages' transactional ids, which its own prefix would reach",
            prefixed=True,
            deny=True,
        ),
    ),
    "crm-activity-messages": (
        Grant(TOPIC, ("remarketing.messages",), ("READ",), "its input"),
        Grant(
            TOPIC,
            ("crm.activity.deltas", DEAD_LETTERS),
            ("WRITE",),
            "its output (crm-activity's re-keyed deltas), and dead letters",
        ),
        Grant(
            TOPIC,
            ("passerelle-crm-activity-messages-",),
            ("CREATE", "READ", "WRITE"),
            "its timers' changelog `passerelle-crm-activity-messages-timers-changelog` (stateless otherwise)",
            prefixed=True,
        ),
        Grant(
            GROUP,
            ("passerelle-crm-activity-messages", "passerelle-crm-activity-messages-restore"),
            ("READ",),
            "its consumer group and the restore reader's group",
        ),
        Grant(
            TRANSACTIONAL_ID,
            ("passerelle-crm-activity-messages-",),
            ("WRITE",),
            "exactly-once: transactional id `passerelle-crm-activity-messages-<instance id>`",
            prefixed=True,
        ),
    ),
    "postview": (
        Grant(TOPIC, ("ads.impressions", "hits.enriched"), ("READ",), "its inputs: impressions and enriched hits"),
        Grant(TOPIC, ("crm.profiles", "privacy.requests"), ("READ",), "lookup tables: CRM profiles, privacy requests"),
        Grant(TOPIC, ("ads.postview", DEAD_LETTERS), ("WRITE",), "its output, and dead letters"),
        Grant(
            TOPIC,
            ("passerelle-postview-",),
            ("CREATE", "READ", "WRITE"),
            "its state changelogs `passerelle-postview-<store>-changelog`",
            prefixed=True,
        ),
        Grant(
            GROUP,
            (
                "passerelle-postview",
                "passerelle-postview-restore",
                "passerelle-table-crm.profiles",
                "passerelle-table-privacy.requests",
            ),
            ("READ",),
            "its consumer group, the restore reader's and the lookup tables' readers' groups",
        ),
        Grant(
            TRANSACTIONAL_ID,
            ("passerelle-postview-",),
            ("WRITE",),
            "exactly-once: transactional id `passerelle-postview-<instance id>`",
            prefixed=True,
        ),
    ),
    "conversion-paths": (
        Grant(
            TOPIC,
            ("hits.enriched", "ads.postview", "conversions.paths.events"),
            ("READ",),
            "its inputs: enriched hits, post-views, and its own events re-keyed by customer",
        ),
        Grant(TOPIC, ("crm.profiles", "privacy.requests"), ("READ",), "lookup tables: CRM profiles, privacy requests"),
        Grant(
            TOPIC,
            (
                "conversions.paths.events",
                "conversions.paths",
                "crm.conversion_paths",
                "crm.customer_channels",
                DEAD_LETTERS,
            ),
            ("WRITE",),
            "the events it re-keys by customer, the paths, the CRM rows (for the JDBC sink), and dead letters",
        ),
        Grant(
            TOPIC,
            ("passerelle-conversion-paths-",),
            ("CREATE", "READ", "WRITE"),
            "its state changelogs `passerelle-conversion-paths-<store>-changelog`",
            prefixed=True,
        ),
        Grant(
            GROUP,
            (
                "passerelle-conversion-paths",
                "passerelle-conversion-paths-restore",
                "passerelle-table-crm.profiles",
                "passerelle-table-privacy.requests",
            ),
            ("READ",),
            "its consumer group, the restore reader's and the lookup tables' readers' groups",
        ),
        Grant(
            TRANSACTIONAL_ID,
            ("passerelle-conversion-paths-",),
            ("WRITE",),
            "exactly-once: transactional id `passerelle-conversion-paths-<instance id>`",
            prefixed=True,
        ),
    ),
    "warehouse": WAREHOUSE_SINK,
    "campaign-declarations": (
        Grant(
            TOPIC,
            ("campaigns.declarations", "campaigns.undeclared"),
            ("READ",),
            "its inputs: partners' declarations published on Kafka, the undeclared tags (auto-declaration rules). "
            "No component here writes campaigns.declarations: the processor trusts a record's `partner` field (or "
            "a deletion's `partner` header) as the writer's, so grant WRITE on it only to a principal trusted for "
            "every partner id it may write (a partner's own platform, a gateway), never to one partners share",
        ),
        Grant(
            TOPIC,
            ("campaigns", "partners.keys"),
            ("READ",),
            "lookup tables: the declared campaigns (ownership, clashes), the partners' keys (who may declare)",
        ),
        Grant(TOPIC, ("campaigns", DEAD_LETTERS), ("WRITE",), "accepted declarations and deletions, dead letters"),
        Grant(
            TOPIC,
            ("passerelle-campaign-declarations-",),
            ("CREATE", "READ", "WRITE"),
            "its state changelogs `passerelle-campaign-declarations-<store>-changelog`",
            prefixed=True,
        ),
        Grant(
            GROUP,
            (
                "passerelle-campaign-declarations",
                "passerelle-campaign-declarations-restore",
                "passerelle-table-campaigns",
                "passerelle-table-partners.keys",
            ),
            ("READ",),
            "its consumer group, the restore reader's and the lookup tables' readers' groups",
        ),
        Grant(
            TRANSACTIONAL_ID,
            ("passerelle-campaign-declarations-",),
            ("WRITE",),
            "exactly-once: transactional id `passerelle-campaign-declarations-<instance id>`",
            prefixed=True,
        ),
    ),
    "remarketing": (
        Grant(
            TOPIC,
            ("carts.abandoned", "hits.enriched", "privacy.requests", "crm.profiles", "identity.links"),
            ("READ",),
            "its inputs: abandoned carts, orders (in enriched hits), consent and erasure requests, profiles, "
            "identity links (to route a request naming only a visitor to its customer)",
        ),
        Grant(TOPIC, ("remarketing.messages", DEAD_LETTERS), ("WRITE",), "its output, and dead letters"),
        Grant(
            TOPIC,
            ("passerelle-remarketing-",),
            ("CREATE", "READ", "WRITE"),
            "faust's internal topics: `passerelle-remarketing-commands`, `passerelle-remarketing-visitors` "
            "and its tables' changelogs",
            prefixed=True,
        ),
        Grant(GROUP, ("passerelle-remarketing",), ("READ",), "the faust app's consumer group"),
    ),
    "emailing": (
        Grant(TOPIC, ("remarketing.messages",), ("READ",), "the bridge's and the batch export's input"),
        Grant(
            TOPIC,
            ("remarketing.deliveries", DEAD_LETTERS),
            ("WRITE",),
            "the bridge's delivery outcomes, and dead letters (bridge and export)",
        ),
        Grant(
            GROUP,
            ("passerelle-emailing", "passerelle-emailing-export"),
            ("READ",),
            "the bridge's consumer group; the export's group remembers the last exported offsets",
        ),
    ),
    "generator": (
        Grant(
            TOPIC,
            ("campaigns", "crm.profiles"),
            ("WRITE",),
            "`passerelle generate` declares campaigns and publishes CRM profiles straight to their tables "
            "(hits go through the collector over HTTP)",
        ),
    ),
    "crm-import": (
        Grant(
            TOPIC,
            ("crm.profiles",),
            ("READ", "WRITE"),
            "`passerelle crm import`: reads the current profiles to publish only what changed, then publishes "
            "them (idempotent producer: nothing on the cluster)",
        ),
        Grant(
            GROUP,
            ("passerelle-crm-import",),
            ("READ",),
            "its reader names the `passerelle-crm-import` group (assign only, never committed)",
        ),
    ),
    "api": (
        Grant(
            TOPIC,
            ("partners.keys", "campaigns.undeclared"),
            ("READ",),
            "`passerelle api` follows the keys and the undeclared tags (tables read whole); `campaigns` too, "
            "granted with the warehouse sink's topics below",
        ),
        Grant(
            TOPIC,
            ("campaigns",),
            ("WRITE",),
            "declarations, changes and deletions (tombstones) of campaigns (idempotent producer)",
        ),
        Grant(
            TOPIC,
            ("ads.impressions", "partners.metrics"),
            ("WRITE",),
            "POST /v1/impressions and POST /v1/metrics: partners' impressions and daily figures",
        ),
        Grant(
            TOPIC,
            ("query.templates",),
            ("READ", "WRITE"),
            "the report templates of /v1/query/templates: followed whole, saved and deleted (tombstones)",
        ),
        Grant(
            GROUP,
            ("passerelle-api-partners.keys", "passerelle-api-campaigns", "passerelle-api-campaigns.undeclared",
             "passerelle-api-query.templates"),
            ("READ",),
            "its table readers name a `passerelle-api-<topic>` group (assign only, never committed)",
        ),
        *WAREHOUSE_SINK,
    ),
    "metrics-import": (
        Grant(
            TOPIC,
            ("partners.keys", "campaigns"),
            ("READ",),
            "`passerelle metrics import`: the partner must have a key; campaign ownership from the campaigns table",
        ),
        Grant(TOPIC, ("partners.metrics",), ("WRITE",), "the figures of the file (idempotent producer)"),
        Grant(
            GROUP,
            ("passerelle-metrics-import",),
            ("READ",),
            "its table readers name the `passerelle-metrics-import` group (assign only, never committed)",
        ),
    ),
    "attribution": (
        Grant(
            TOPIC,
            ("hits.enriched", "ads.postview"),
            ("READ",),
            "`passerelle attribution markov`: a period of visits, orders and post-view exposures",
        ),
        Grant(TOPIC, ("attribution.markov",), ("WRITE",), "the period's Markov credits, keyed by its label"),
        Grant(
            GROUP,
            ("passerelle-attribution",),
            ("READ",),
            "its reader names the `passerelle-attribution` group (assign only, never committed)",
        ),
    ),
    "partners-admin": (
        Grant(
            TOPIC,
            ("partners.keys",),
            ("READ", "WRITE"),
            "`passerelle partners add|list|revoke`: reads the keys table, publishes a new or revoked key",
        ),
        Grant(
            TOPIC,
            ("campaigns", "campaigns.undeclared"),
            ("READ",),
            "`passerelle campaigns undeclared`: the undeclared tags less the declared campaigns",
        ),
        Grant(
            GROUP,
            ("passerelle-api-partners.keys", "passerelle-api-campaigns", "passerelle-api-campaigns.undeclared"),
            ("READ",),
            "the commands read those tables as the API does, naming a `passerelle-api-<topic>` group (assign only)",
        ),
    ),
}

COMPONENTS: tuple[str, ...] = (ADMIN, *GRANTS)
"""Every principal a client can log in as (the controller's is not one)."""

REGISTRY_WRITERS = frozenset({ADMIN, "deploy"})
"""Registry roles: these may register schemas and set compatibility; every other component only reads."""


def registry_role(component: str) -> str:
    """``write`` for the deployment pipeline and the admin, ``read`` for the rest."""
    return "write" if component in REGISTRY_WRITERS else "read"


def bindings(component: str) -> list[tuple[str, str, bool, str, str]]:
    """The component's grants flattened to (resource, name, prefixed, operation, permission), one per Kafka ACL.

    ``permission`` is ``ALLOW``, or ``DENY`` for a grant with ``deny=True``.
    """
    out = []
    for grant in GRANTS.get(component, ()):
        permission = "DENY" if grant.deny else "ALLOW"
        for name in grant.names:
            for op in grant.operations:
                out.append((grant.resource, name, grant.prefixed, op, permission))
    return out
