"""``passerelle demo``: the whole local flow in one command, for a newcomer's first five minutes.

Stack up, topics created, schemas registered, a few realistic hits produced
to ``hits.raw`` in the Confluent wire format, then read back from the broker
and printed decoded, so the reader sees real records make the round trip.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from typing import Any

from passerelle.commands.schemas import register, subject_plans
from passerelle.commands.stack import stack_config
from passerelle.errors import PasserelleError
from passerelle.settings import PasserelleSettings, load
from schemas.catalog import Catalog, load_catalog
from schemas.models import Consent, Hit, HitType, Order, Product
from streams.enrichment.params import parse_campaign_params

TOPIC = "hits.raw"
PRODUCTS = [
    Product(id="SKU-1001", name="Trail running shoes", price=129.0, currency="EUR", category="shoes"),
    Product(id="SKU-2002", name="Rain jacket", price=89.5, currency="EUR", category="outerwear"),
    Product(id="SKU-3003", name="Merino socks", price=14.9, currency="EUR", category="accessories"),
]
LANDINGS = [
    ("https://shop.example/?xtor=EREC-123-[soldes]-20261128-[]-contact@list", None),
    ("https://shop.example/promo?utm_source=newsletter&utm_medium=email&utm_campaign=black_friday", None),
    ("https://shop.example/?gclid=EAIaIQobChMI", "https://www.google.fr/"),
    ("https://shop.example/", "https://www.facebook.com/"),
    ("https://shop.example/", None),
]


def sample_hits(count: int, seed: int | None = None) -> list[Hit]:
    """A short shopping journey per visitor: landing, product views, cart add, sometimes an order."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    hits: list[Hit] = []
    while len(hits) < count:
        visitor = f"vis-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
        url, referrer = rng.choice(LANDINGS)
        consent = Consent(analytics=True, marketing=rng.random() < 0.7)
        product = rng.choice(PRODUCTS)
        journey: list[dict[str, Any]] = [
            {"type": HitType.PAGE_VIEW, "url": url, "referrer": referrer, "page": "home",
             "campaign_params": parse_campaign_params(url)},
            {"type": HitType.PRODUCT_VIEW, "url": f"https://shop.example/p/{product.id}", "product": product},
            {"type": HitType.CART_ADD, "url": f"https://shop.example/p/{product.id}", "product": product},
        ]  # fmt: skip
        if rng.random() < 0.4:
            journey.append(
                {"type": HitType.ORDER, "url": "https://shop.example/checkout/done",
                 "customer_id": f"C{rng.randint(1, 999)}",
                 "order": Order(order_id=f"O-{rng.randint(10000, 99999)}", revenue=product.price or 0.0,
                                currency="EUR", lines=[product])}
            )  # fmt: skip
        for step, fields in enumerate(journey):
            hits.append(
                Hit(event_id=str(uuid.UUID(int=rng.getrandbits(128))), site="shop.example", visitor_id=visitor,
                    event_time=now + step * 15_000, consent=consent, user_agent="Mozilla/5.0 (demo)",
                    ip_truncated="203.0.113.0", **fields)
            )  # fmt: skip
    return hits[:count]


def produce_and_read_back(settings: PasserelleSettings, catalog: Catalog, hits: list[Hit]) -> list[dict[str, Any]]:
    """Produce with the project serde, then read exactly those offsets back from the broker."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from schemas.serde import AvroDecoder, AvroEncoder, SchemaCache, registry_fetcher

    spec = catalog.topic(TOPIC)
    client = SchemaRegistryClient({"url": settings.schema_registry_url})
    value_enc = AvroEncoder.for_subject(client, spec.value_subject, catalog.schema_text(spec.value_schema))
    key_enc = AvroEncoder.for_subject(client, spec.key_subject, catalog.schema_text(spec.key_schema))
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap_servers, "enable.idempotence": True, "acks": "all",
         "partitioner": "murmur2_random"}
    )  # fmt: skip
    delivered: list[tuple[int, int]] = []
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append((msg.partition(), msg.offset()))

    for hit in hits:
        producer.produce(
            TOPIC, value_enc.encode(hit.to_avro()), key_enc.encode(hit.visitor_id), on_delivery=on_delivery
        )
    if producer.flush(30) or errors:
        raise PasserelleError(f"could not produce the sample hits: {errors[:1] or 'timeout'}")
    print(f"produced {len(delivered)} hits to {TOPIC} (schema id {value_enc.schema_id})")
    first: dict[int, int] = {}
    for partition, offset in delivered:
        first[partition] = min(offset, first.get(partition, offset))
    wanted = set(delivered)
    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": f"passerelle-demo-{uuid.uuid4().hex[:8]}",
         "enable.auto.commit": False}
    )  # fmt: skip
    consumer.assign([TopicPartition(TOPIC, p, o) for p, o in first.items()])
    decoder = AvroDecoder(SchemaCache(registry_fetcher(client)))
    key_decoder = AvroDecoder(SchemaCache(registry_fetcher(client)))
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while wanted and time.monotonic() < deadline:
        for msg in consumer.consume(100, timeout=1.0):
            if msg.error() or (msg.partition(), msg.offset()) not in wanted:
                continue
            wanted.discard((msg.partition(), msg.offset()))
            value = decoder.decode(msg.value())
            value["_key"] = key_decoder.decode(msg.key())
            value["_partition"], value["_offset"] = msg.partition(), msg.offset()
            records.append(value)
    consumer.close()
    if wanted:
        raise PasserelleError(f"{len(wanted)} produced hits could not be read back within 30 s")
    return sorted(records, key=lambda r: (r["_partition"], r["_offset"]))


def describe(record: dict[str, Any]) -> str:
    """One readable line per decoded hit."""
    extra = ""
    if record.get("campaign_params"):
        extra = " campaign=" + ",".join(f"{k}={v}" for k, v in record["campaign_params"].items())
    elif record.get("referrer"):
        extra = f" referrer={record['referrer']}"
    if record.get("product"):
        extra += f" product={record['product']['id']}"
    if record.get("order"):
        extra += f" order={record['order']['order_id']} revenue={record['order']['revenue']}"
    when = record["event_time"]
    stamp = when.strftime("%H:%M:%S") if hasattr(when, "strftime") else str(when)
    return (
        f"p{record['_partition']}@{record['_offset']:<4} {stamp} key={record['_key']} "
        f"{record['type']:<12} {record['url']}{extra}"
    )


def _demo(args: argparse.Namespace) -> int:
    from deploy.local import stack
    from schemas.topics_admin import KafkaAdmin, ensure_topics

    settings = load()
    catalog = load_catalog(settings.catalog)
    print("== local stack")
    for line in stack.up(stack_config(settings)):
        print(line)
    print("== topics")
    report = ensure_topics(KafkaAdmin(settings.bootstrap_servers), catalog)
    for line in report.lines():
        print(line)
    print("== schemas")
    for line in register(settings.schema_registry_url, subject_plans(catalog)):
        print(line)
    print(f"== {args.count} sample hits, produced and read back decoded from the broker")
    records = produce_and_read_back(settings, catalog, sample_hits(args.count, args.seed))
    for record in records:
        print(describe(record))
    print(f"read back {len(records)} hits. The stack keeps running: `passerelle down` stops it.")
    sys.stdout.flush()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``demo``."""
    p = sub.add_parser(
        "demo",
        help="run the demo: stack up, topics, schemas, sample hits produced and read back",
        description="Start the local stack (if needed), create the catalog's topics, register their schemas, "
        "produce a short sample of realistic hits to hits.raw and print them as read back, decoded, from the "
        "broker.",
    )
    p.add_argument("--count", type=int, default=12, help="number of sample hits (default 12)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    p.set_defaults(func=_demo)
