"""``passerelle schemas register|check``: keep the registry in step with the ``.avsc`` contracts.

``check`` is what CI runs before a deploy: a changed ``.avsc`` that readers of
the topic could not cope with must fail here, not in production consumers.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from passerelle.errors import PasserelleError
from passerelle.schemas.catalog import Catalog, TopicSpec, load_catalog
from passerelle.schemas.clients import Connection, redact
from passerelle.settings import load


@dataclass(frozen=True)
class SubjectPlan:
    """One subject the catalog wants registered: its schema text and compatibility level."""

    subject: str
    schema_stem: str
    schema_text: str
    compatibility: str


def subject_plans(catalog: Catalog, topics: list[str] | None = None) -> list[SubjectPlan]:
    """Key and value subjects (TopicNameStrategy) of the selected catalog topics."""
    specs: list[TopicSpec] = [catalog.topic(t) for t in topics] if topics else list(catalog.topics)
    plans = []
    for spec in specs:
        if not spec.registered or spec.value_schema is None:  # raw, connect-json: no schema id in their records
            continue
        for subject, stem in ((spec.key_subject, spec.key_schema), (spec.value_subject, spec.value_schema)):
            plans.append(SubjectPlan(subject, stem, catalog.schema_text(stem), spec.compatibility))
    return plans


def _registry_error(url: str, exc: Exception) -> PasserelleError:
    text = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if "Connection refused" in text or "Max retries" in text or "NewConnectionError" in text:
        return PasserelleError(f"schema registry not reachable at {url} (is `passerelle up` running?)")
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
        return PasserelleError(
            f"TLS with the schema registry at {url} failed: {text} (check PASSERELLE_SCHEMA_REGISTRY_SSL_CA_LOCATION)"
        )
    return PasserelleError(f"schema registry at {url}: {text}")


def _refused(url: str, subject: str, exc: Exception) -> PasserelleError | None:
    """401/403 from the registry: say which credentials to look at."""
    status = getattr(exc, "http_status_code", None)
    message = redact(str(getattr(exc, "error_message", exc)))
    if status == 401:
        return PasserelleError(
            f"schema registry at {url} refused the credentials ({message}): "
            "check PASSERELLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO or _BEARER_AUTH_TOKEN"
        )
    if status == 403:
        return PasserelleError(f"schema registry at {url} does not allow this user to change {subject}: {message}")
    return None


def register(conn: Connection, plans: list[SubjectPlan]) -> list[str]:
    """Set each subject's compatibility then register its schema; same schema again keeps its id."""
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from passerelle.schemas.clients import registry_client

    url = conn.registry_url
    client = registry_client(conn)
    lines = []
    for plan in plans:
        try:
            client.set_compatibility(subject_name=plan.subject, level=plan.compatibility)
            schema_id = client.register_schema(plan.subject, Schema(plan.schema_text, "AVRO"))
            version = client.lookup_schema(plan.subject, Schema(plan.schema_text, "AVRO")).version
        except SchemaRegistryError as exc:
            refused = _refused(url, plan.subject, exc)
            if refused is not None:
                raise refused from None
            if exc.http_status_code == 409:
                raise PasserelleError(
                    f"{plan.subject}: {plan.schema_stem}.avsc is incompatible with the registered schema "
                    f"({plan.compatibility}): {exc.error_message}"
                ) from exc
            raise PasserelleError(f"{plan.subject}: {exc.error_message} ({exc.error_code})") from exc
        except Exception as exc:
            raise _registry_error(url, exc) from exc
        lines.append(f"{plan.subject:<36} id {schema_id:<4} version {version:<3} {plan.compatibility}")
    return lines


def check(conn: Connection, plans: list[SubjectPlan]) -> tuple[list[str], int]:
    """Test each local schema against what is registered; returns report lines and failure count."""
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from passerelle.schemas.clients import registry_client

    url = conn.registry_url
    client = registry_client(conn)
    lines, failures = [], 0
    for plan in plans:
        schema = Schema(plan.schema_text, "AVRO")
        try:
            try:
                registered = client.lookup_schema(plan.subject, schema)
                lines.append(f"ok          {plan.subject} (registered as version {registered.version})")
                continue
            except SchemaRegistryError as exc:
                if exc.error_code == 40401:
                    lines.append(f"new         {plan.subject} (not registered yet)")
                    continue
                if exc.error_code != 40403:
                    raise
            compatible = client.test_compatibility(plan.subject, schema, version="latest")
        except SchemaRegistryError as exc:
            refused = _refused(url, plan.subject, exc)
            if refused is not None:
                raise refused from None
            raise PasserelleError(f"{plan.subject}: {exc.error_message} ({exc.error_code})") from exc
        except Exception as exc:
            raise _registry_error(url, exc) from exc
        if compatible:
            lines.append(f"compatible  {plan.subject} ({plan.schema_stem}.avsc changed, {plan.compatibility})")
        else:
            failures += 1
            lines.append(
                f"INCOMPATIBLE {plan.subject}: {plan.schema_stem}.avsc breaks {plan.compatibility} "
                "compatibility with the registered schema"
            )
    return lines, failures


def _connection(args: argparse.Namespace) -> Connection:
    conn = load().connection()
    return dataclasses.replace(conn, registry_url=args.url) if args.url else conn


def _register(args: argparse.Namespace) -> int:
    settings = load()
    for line in register(_connection(args), subject_plans(load_catalog(settings.catalog), args.topics or None)):
        print(line)
    return 0


def _check(args: argparse.Namespace) -> int:
    settings = load()
    lines, failures = check(_connection(args), subject_plans(load_catalog(settings.catalog), args.topics or None))
    for line in lines:
        print(line)
    if failures:
        print(f"{failures} incompatible schema(s)")
        return 1
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``schemas register`` and ``schemas check``."""
    p = sub.add_parser(
        "schemas",
        help="register the catalog's schemas or check local changes against the registry",
        description="Work with the Avro contracts in schemas/avro and the subjects <topic>-key / "
        "<topic>-value (TopicNameStrategy) in the schema registry.",
    )
    ssub = p.add_subparsers(dest="schemas_command", metavar="ACTION")
    ssub.required = True
    for name, func, help_, desc in (
        (
            "register",
            _register,
            "register every catalog schema (idempotent)",
            "Set each subject's compatibility level from the catalog, then register its schema. "
            "Registering an unchanged schema keeps its id and version; an incompatible one fails (exit 1).",
        ),
        (
            "check",
            _check,
            "fail when a changed .avsc is incompatible with the registered schema",
            "For each subject: 'ok' if the local schema is registered, 'new' if the subject is not, "
            "'compatible' if it changed compatibly, 'INCOMPATIBLE' (exit 1) if readers would break.",
        ),
    ):
        q = ssub.add_parser(name, help=help_, description=desc)
        q.add_argument("topics", nargs="*", metavar="TOPIC", help="only these catalog topics (default: all)")
        q.add_argument("--url", help="registry URL (default: PASSERELLE_SCHEMA_REGISTRY_URL)")
        q.set_defaults(func=func)
