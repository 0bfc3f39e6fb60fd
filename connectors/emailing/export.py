"""Batch mode for partners that pull files: one CSV and one JSON-lines file per window of remarketing messages.

A window is either "everything since the last export" (from the export
group's committed offsets to the end of the topic as it was when the export
started) or a time window ``[start, end)`` on the record timestamps (a replay:
it commits nothing unless asked). Files appear whole or not at all: each is
written to a hidden temporary file in the same folder, fsynced, renamed over
its final name and the folder fsynced; offsets are committed only after both
files are in place. A crash anywhere before the commit means the next export
writes the same window again (same messages, possibly more), never a file
cut in the middle. Files are created ``0600``: they hold email addresses.

The JSON lines are the very bodies the HTTP bridge sends (same mapping), so a
partner can switch between push and pull without a new format. Both files
carry only absolute http/https URLs (see :mod:`passerelle.connectors.emailing.mapping`);
the CSV's text cells are also neutralised against spreadsheet formulas (see
:func:`csv_cell`), the JSON lines keep the data as it is.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import OFFSET_INVALID, KafkaError, Message, Producer, TopicPartition
from pydantic import ValidationError

from passerelle.connectors.emailing.config import (
    CATALOG_INPUT_TOPIC,
    DEFAULT_DEAD_LETTER_TOPIC,
    DEFAULT_TOPIC,
    EmailingStartupError,
)
from passerelle.connectors.emailing.deadletters import produce_dead_letter
from passerelle.connectors.emailing.mapping import (
    PayloadMapping,
    build_payload,
    iso_millis,
    message_view,
    report_unsafe_urls,
)
from passerelle.schemas import clients
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection, Connects
from passerelle.schemas.errors import ContractError, SerializationError
from passerelle.schemas.models import RemarketingMessage
from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher

log = logging.getLogger(__name__)

PROCESSOR = "emailing-export"
CSV_COLUMNS = (
    "message_id",
    "sequence_id",
    "step",
    "customer_id",
    "email",
    "site",
    "created_at",
    "product_ids",
    "products",
    "cart_lines",
    "promotion_code",
    "promotion_description",
    "promotion_discount_percent",
    "source_partition",
    "source_offset",
)
"""CSV header; nested lists are JSON in their cell so that one message stays one row."""
CSV_NUMERIC_COLUMNS = frozenset({"step", "promotion_discount_percent", "source_partition", "source_offset"})
"""Columns written as numbers (or empty): Avro ints and doubles, never text from a site or a person."""
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0", "'")
"""A text cell starting with one of these gets a leading ``'`` (see :func:`csv_cell`)."""


class ExportError(Exception):
    """The window could not be read completely: nothing was written, nothing committed."""

    user_error = True


@dataclass(frozen=True)
class ExportConfig(Connects):
    """Where to read and where to write; ``group_id`` remembers the last exported offsets."""

    bootstrap_servers: str
    schema_registry_url: str
    out_dir: Path
    topic: str = DEFAULT_TOPIC
    group_id: str = "passerelle-emailing-export"
    dead_letter_topic: str = DEFAULT_DEAD_LETTER_TOPIC
    catalog_path: Path | None = None
    mapping: PayloadMapping = field(default_factory=PayloadMapping)
    prefix: str = "remarketing"
    read_timeout_s: float = 60.0
    connection: Connection | None = field(default=None, repr=False)  # credentials/TLS; None: plaintext

    def __post_init__(self) -> None:
        problems = [
            f"{name} is empty"
            for name in ("bootstrap_servers", "schema_registry_url", "topic", "group_id", "prefix")
            if not getattr(self, name)
        ]
        if "/" in self.prefix or self.prefix.startswith("."):
            problems.append(f"prefix {self.prefix!r} must be a plain file name start")
        if problems:
            raise EmailingStartupError("invalid export configuration: " + "; ".join(problems))


@dataclass(frozen=True)
class ExportResult:
    """What one export did."""

    count: int
    window_start_ms: int
    window_end_ms: int
    csv_path: Path | None
    jsonl_path: Path | None
    committed: bool
    dead_letters: int = 0
    unsafe_urls: int = 0
    """URLs left out of both files because they were not absolute http/https URLs."""


@dataclass(frozen=True)
class Exported:
    """One decoded message with its coordinates."""

    message: dict[str, Any]
    partition: int
    offset: int
    timestamp_ms: int


# --- files ----------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[TextIO], None]) -> None:
    """Write ``path`` through ``write`` so that it appears whole or not at all.

    The temporary file lives in the same folder (a rename across file systems
    is not atomic) and starts with a dot, so partners globbing ``*.csv`` never
    pick it up. On any error it is removed and the previous ``path``, if any,
    is left untouched.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(folder: Path, prefix: str) -> int:
    """Remove temporary files a killed export left behind (one exporter per folder is assumed)."""
    removed = 0
    for stale in folder.glob(f".{prefix}-*.tmp"):
        try:
            stale.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def stamp(ms: int) -> str:
    """Compact UTC timestamp for file names, no colons: ``20241128T132000.000Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y%m%dT%H%M%S.") + f"{ms % 1000:03d}Z"


def window_name(prefix: str, start_ms: int, end_ms: int) -> str:
    """File stem carrying the window bounds, sortable by start."""
    return f"{prefix}-{stamp(start_ms)}--{stamp(end_ms)}"


def csv_cell(value: Any, *, numeric: bool = False) -> str | int | float:
    """A value as a CSV cell that no spreadsheet runs as a formula (CSV/formula injection).

    Text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
    (OWASP's list) or a NUL (OWASP ASVS 1.2.10) gets a single quote in front,
    OWASP's recommendation: the spreadsheet shows it as text, the value
    follows unchanged. Text already starting with ``'`` gets one more, so the
    rule is exact both ways: a program reading the file gets every original
    value back by removing one leading ``'`` from any cell starting with one.

    Numbers stay numbers in the typed numeric columns (``numeric``, the
    ``CSV_NUMERIC_COLUMNS``: step, discount, partition, offset, Avro ints and
    doubles): an ``int`` or finite ``float`` there is written as is, and a
    negative one such as ``-5.0`` is a number for a spreadsheet, not a
    formula. The decision is by column type, never by look: text that happens
    to look like a negative number (a customer id ``-42``, a promotion code
    ``-10``) comes from outside and is neutralised like any text (``'-42``,
    which a spreadsheet keeps as text, as an id should be), and so is a
    number in a text column. ``None`` is an empty cell; anything else
    (``bool``, ``inf``, ``nan``) is written as its text, neutralised. Only the
    CSV is neutralised: the JSON-lines file keeps the data as is.

    Separators: cells are quoted per RFC 4180 with ``,`` as the delimiter; a
    spreadsheet told to split on another character (``;`` in some locales)
    may start a cell after it, which no per-cell prefix can prevent.
    """
    if value is None:
        return ""
    if numeric and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_row(item: Exported) -> list[str | int | float]:
    """One CSV row of ``CSV_COLUMNS``, each cell through :func:`csv_cell`; unsafe URLs left out."""
    m = message_view(item.message)
    promotion = m.get("promotion") or {}
    products = m.get("products") or []
    lines = m.get("lines") or []
    row = [
        m["message_id"],
        m["sequence_id"],
        m["step"],
        m["customer_id"],
        m["email"],
        m["site"],
        iso_millis(m.get("created_at")),
        "|".join(p["id"] for p in products),
        json.dumps(products, separators=(",", ":"), ensure_ascii=False),
        json.dumps(lines, separators=(",", ":"), ensure_ascii=False),
        promotion.get("code", ""),
        promotion.get("description", ""),
        promotion.get("discount_percent"),
        item.partition,
        item.offset,
    ]
    return [
        csv_cell(value, numeric=column in CSV_NUMERIC_COLUMNS) for column, value in zip(CSV_COLUMNS, row, strict=True)
    ]


def write_csv(path: Path, items: Sequence[Exported]) -> None:
    def write(out: TextIO) -> None:
        writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
        writer.writerow(CSV_COLUMNS)
        for item in items:
            writer.writerow(csv_row(item))

    atomic_write(path, write)


def write_jsonl(path: Path, items: Sequence[Exported], mapping: PayloadMapping) -> None:
    def write(out: TextIO) -> None:
        for item in items:
            out.write(json.dumps(build_payload(item.message, mapping), separators=(",", ":"), ensure_ascii=False))
            out.write("\n")

    atomic_write(path, write)


def write_window(
    out_dir: Path, prefix: str, start_ms: int, end_ms: int, items: Sequence[Exported], mapping: PayloadMapping
) -> tuple[Path, Path]:
    """Both files of one window, each atomically; returns (csv, jsonl)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = window_name(prefix, start_ms, end_ms)
    csv_path, jsonl_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.jsonl"
    write_csv(csv_path, items)
    write_jsonl(jsonl_path, items, mapping)
    return csv_path, jsonl_path


# --- reading --------------------------------------------------------------------------------------


class _Reader:
    """Reads a bounded range of each partition and decodes it; poison records go to the dead-letter topic."""

    def __init__(self, config: ExportConfig) -> None:
        self.config = config
        conn = config.conn
        clients.ensure_reachable(conn)
        try:
            catalog = load_catalog(config.catalog_path)
            reader = catalog.schema_text(catalog.topic(CATALOG_INPUT_TOPIC).value_schema)
            registry = clients.registry_client(conn)
            self.decoder = AvroDecoder(SchemaCache(registry_fetcher(registry)), reader_schema=reader)
        except ContractError as exc:
            raise EmailingStartupError(str(exc)) from exc
        self.consumer = clients.consumer(
            conn,
            config.group_id,
            {
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            },
        )
        self._producer: Producer | None = None
        self.dead_letters = 0

    def partitions(self) -> list[int]:
        meta = self.consumer.list_topics(self.config.topic, timeout=10)
        topic = meta.topics.get(self.config.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise ExportError(f"topic {self.config.topic} not found")
        return sorted(topic.partitions)

    def watermarks(self, partition: int) -> tuple[int, int]:
        low, high = self.consumer.get_watermark_offsets(TopicPartition(self.config.topic, partition), timeout=10)
        return int(low), int(high)

    def committed(self, partitions: Iterable[int]) -> dict[int, int | None]:
        tps = [TopicPartition(self.config.topic, p) for p in partitions]
        found = self.consumer.committed(tps, timeout=10)
        return {tp.partition: (None if tp.offset == OFFSET_INVALID or tp.offset < 0 else tp.offset) for tp in found}

    def offsets_at(self, partitions: Iterable[int], ms: int) -> dict[int, int]:
        """First offset at or after ``ms`` per partition (the high watermark when there is none)."""
        tps = [TopicPartition(self.config.topic, p, ms) for p in partitions]
        found = self.consumer.offsets_for_times(tps, timeout=10)
        return {tp.partition: tp.offset if tp.offset >= 0 else self.watermarks(tp.partition)[1] for tp in found}

    def read(self, ranges: Mapping[int, tuple[int, int]]) -> tuple[list[Exported], dict[int, int]]:
        """Every record of ``[start, end)`` per partition, and the offset reached in each.

        The offset reached is short of ``end`` when an open transaction holds
        the last stable offset back (read_committed stops there): committing
        ``end`` would skip records that may still commit. ``ExportError`` when
        the range is not read in time.
        """
        todo = {p: r for p, r in ranges.items() if r[0] < r[1]}
        reached = {p: start for p, (start, _) in ranges.items()}
        if not todo:
            return [], reached
        self.consumer.assign([TopicPartition(self.config.topic, p, start) for p, (start, _) in todo.items()])
        items: list[Exported] = []
        deadline = time.monotonic() + self.config.read_timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise ExportError(f"window not read within {self.config.read_timeout_s}s; nothing written")
            for msg in self.consumer.consume(1000, timeout=0.5):
                partition = msg.partition() or 0
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and partition in todo:
                        # At the end of what can be read now (high watermark or last stable offset).
                        position = msg.offset() or 0
                        reached[partition] = max(reached[partition], min(todo.pop(partition)[1], position))
                    elif err.fatal():
                        raise ExportError(f"fatal consumer error: {err.str()}")
                    continue
                if partition not in todo:
                    continue
                offset = msg.offset() or 0
                end = todo[partition][1]
                if offset < end:
                    item = self._decode(msg)
                    if item is not None:
                        items.append(item)
                reached[partition] = min(end, offset + 1)
                if offset + 1 >= end:
                    todo.pop(partition)
        self.consumer.unassign()
        return items, reached

    def _decode(self, msg: Message) -> Exported | None:
        try:
            value = self.decoder.decode(msg.value())
            message = RemarketingMessage.from_avro(value).to_avro()
        except (SerializationError, ValidationError, ValueError) as exc:
            self._dead_letter(msg, exc)
            return None
        _, ts = msg.timestamp()
        return Exported(message, msg.partition() or 0, msg.offset() or 0, int(ts))

    def _dead_letter(self, msg: Message, error: BaseException) -> None:
        if self._producer is None:
            self._producer = clients.producer(self.config.conn)
        produce_dead_letter(
            self._producer, self.config.dead_letter_topic, msg, error, stage="deserialize", processor=PROCESSOR
        )
        self.dead_letters += 1
        log.warning("export: record %s[%s]@%s cannot be read: %s", msg.topic(), msg.partition(), msg.offset(), error)

    def flush_dead_letters(self) -> None:
        if self._producer is not None and self._producer.flush(30):
            raise ExportError("dead letters not acknowledged; offsets not committed")

    def commit(self, offsets: Mapping[int, int]) -> None:
        if offsets:
            tps = [TopicPartition(self.config.topic, p, off) for p, off in offsets.items()]
            self.consumer.commit(offsets=tps, asynchronous=False)

    def close(self) -> None:
        self.consumer.close()
        if self._producer is not None:
            self._producer.flush(10)


def export_window(
    config: ExportConfig,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    commit: bool | None = None,
    now_ms: int | None = None,
) -> ExportResult:
    """Export one window; see the module doc for the two kinds of window.

    Without ``start_ms``: from the committed offsets (the beginning the first
    time) to the end as of now; the files are named after the first record's
    timestamp and now, and nothing is written when there is nothing new.
    With ``start_ms``: records with a timestamp in ``[start_ms, end_ms)``
    (``end_ms`` defaults to now); the files are written even when empty, so
    the partner sees the window was exported. ``commit`` defaults to True for
    the first kind and False for the second.
    """
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    by_time = start_ms is not None
    if commit is None:
        commit = not by_time
    end = end_ms if end_ms is not None else now
    config.out_dir.mkdir(parents=True, exist_ok=True)
    if remove_stale_temporaries(config.out_dir, config.prefix):
        log.info("export: removed temporary files of an interrupted export in %s", config.out_dir)
    reader = _Reader(config)
    try:
        partitions = reader.partitions()
        if by_time:
            assert start_ms is not None
            starts = reader.offsets_at(partitions, start_ms)
            ends = reader.offsets_at(partitions, end)
        else:
            committed = reader.committed(partitions)
            starts, ends = {}, {}
            for p in partitions:
                low, high = reader.watermarks(p)
                starts[p] = max(low, committed.get(p) or 0)
                ends[p] = high
        ranges = {p: (starts[p], ends[p]) for p in partitions}
        items, reached = reader.read(ranges)
        if by_time:
            assert start_ms is not None
            items = [i for i in items if start_ms <= i.timestamp_ms < end]
        items.sort(key=lambda i: (i.timestamp_ms, i.partition, i.offset))
        unsafe = sum(report_unsafe_urls(i.message, log) for i in items)
        reader.flush_dead_letters()
        window_start = start_ms if by_time else (items[0].timestamp_ms if items else now)
        assert window_start is not None
        csv_path = jsonl_path = None
        if items or by_time:
            csv_path, jsonl_path = write_window(config.out_dir, config.prefix, window_start, end, items, config.mapping)
        committed_now = False
        if commit:
            previous = reader.committed(partitions)
            forward = {p: reached[p] for p in partitions if reached[p] > (previous.get(p) or 0)}
            reader.commit(forward)
            committed_now = bool(forward)
        log.info(
            "export: %d message(s) of %s, window %s",
            len(items),
            config.topic,
            window_name(config.prefix, window_start, end),
        )
        return ExportResult(
            len(items), window_start, end, csv_path, jsonl_path, committed_now, reader.dead_letters, unsafe
        )
    finally:
        reader.close()


def export_config_from_mapping(data: Mapping[str, Any]) -> ExportConfig:
    """Build an export config from JSON-like data (the development entry point); unknown keys are errors."""
    known = {f.name for f in fields(ExportConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise EmailingStartupError(f"unknown export config key(s): {', '.join(unknown)}")
    values: dict[str, Any] = dict(data)
    values["out_dir"] = Path(values.get("out_dir", "."))
    if values.get("catalog_path") is not None:
        values["catalog_path"] = Path(values["catalog_path"])
    if "mapping" in values:
        mapping = values["mapping"]
        values["mapping"] = PayloadMapping(fields=mapping.get("fields"), constants=mapping.get("constants", {}))
    try:
        return ExportConfig(**values)
    except TypeError as exc:
        raise EmailingStartupError(f"invalid export configuration: {exc}") from exc
