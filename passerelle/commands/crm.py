"""``passerelle crm``: the CRM crossing's commands; ``crm import FILE`` loads a CRM's CSV export into crm.profiles.

A group, so that each CRM job is one subcommand. The import's logic (mapping,
validation, diffing) is ``passerelle.connectors.crm.csv_import``; this module
is its wiring: the current table read from the topic, the producer, the
progress display and the summary.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from passerelle.connectors.crm import csv_import as ci

if TYPE_CHECKING:  # confluent-kafka loads only when a command talks to Kafka, not for --help
    from passerelle.schemas.clients import Connection

log = logging.getLogger(__name__)
MAX_SHOWN = 20
"""Problems printed on stderr; ``--errors FILE`` has them all."""
PLAIN_STEP_PCT = 10


# --- Kafka: the table as it is, and publishing ------------------------------------------------------------------


def read_current_profiles(
    conn: Connection, topic: str, progress: ci.RunProgress | None = None, idle_s: float = 30.0
) -> ci.CurrentProfiles:
    """Every partition of ``topic`` read from the start to its end offset at call time, decoded (Avro).

    No consumer group is joined or committed: the group id only satisfies
    librdkafka. An undecodable record leaves its customer absent (the file's
    line then replaces it); a registry that does not answer stops the import.
    """
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    from passerelle.schemas import clients
    from passerelle.schemas.errors import RegistryUnavailableError, SerializationError
    from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher

    clients.ensure_reachable(conn)
    watch = clients.ErrorWatch(conn)
    conf = {"enable.partition.eof": True, "isolation.level": "read_committed", "auto.offset.reset": "earliest"}
    consumer = clients.consumer(conn, "passerelle-crm-import", conf, watch=watch)
    try:
        tmeta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        error = None if tmeta is None else tmeta.error
        if tmeta is None or error is not None:
            known = None if error is None else clients.kafka.classify(error, conn, repr(topic))
            if known is not None:
                raise known
            raise ci.CsvImportError(
                f"topic {topic!r} does not exist on {conn.describe()}: create it first "
                f"(`passerelle topics create {ci.CRM_TOPIC}`), or name another with --topic"
            )
        ends: dict[int, int] = {}
        total = 0
        for partition in tmeta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
                total += high - low
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        decoder = AvroDecoder(SchemaCache(registry_fetcher(clients.registry_client(conn))))
        current = ci.CurrentProfiles()
        done = undecodable = 0
        last_news = time.monotonic()
        if progress is not None:
            progress.table(0, total)
        while ends:
            msgs = consumer.consume(5000, timeout=0.5)
            if not msgs and time.monotonic() - last_news > idle_s:
                raise watch.fatal() or ci.CsvImportError(
                    f"reading {topic!r} stalled: nothing for {idle_s:.0f} s after {done} of {total} record(s)"
                )
            for msg in msgs:
                partition, err = msg.partition() or 0, msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:  # the end, when the last offsets were compacted
                        ends.pop(partition, None)
                    continue
                last_news = time.monotonic()
                done += 1
                if (msg.offset() or 0) + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
                try:
                    key, raw = decoder.decode(msg.key()), msg.value()
                    current.apply(str(key), None if raw is None else decoder.decode(raw))
                except SerializationError:
                    undecodable += 1
                except RegistryUnavailableError as exc:
                    raise ci.CsvImportError(f"schema registry at {conn.registry_url} did not answer: {exc}") from None
            if progress is not None and msgs and ends:
                progress.table(done, total)
        if progress is not None and total:
            progress.table(done, done)  # compacted or aborted offsets: fewer records than offsets
    finally:
        consumer.close()
    if undecodable:
        log.warning("%d record(s) of %s could not be decoded: their customers count as absent", undecodable, topic)
    return current


class KafkaSink:
    """Profiles to the topic with the client layer's producer (idempotent, ``acks=all``), deliveries counted."""

    def __init__(self, conn: Connection, topic: str, catalog_path: Path | None, timeout_s: float = 60.0) -> None:
        from passerelle.schemas import clients
        from passerelle.schemas.catalog import load_catalog
        from passerelle.schemas.serde import AvroEncoder

        catalog = load_catalog(catalog_path)
        spec = catalog.topic(ci.CRM_TOPIC)  # crm.profiles' contracts, whichever topic is written (tests: unique)
        registry = clients.registry_client(conn)
        assert spec.value_schema is not None
        self.key_enc = AvroEncoder.for_subject(registry, f"{topic}-key", catalog.schema_text(spec.key_schema))
        self.value_enc = AvroEncoder.for_subject(registry, f"{topic}-value", catalog.schema_text(spec.value_schema))
        self.conn, self.topic, self.timeout_s = conn, topic, timeout_s
        self.watch = clients.ErrorWatch(conn)
        conf = {"linger.ms": 50, "message.timeout.ms": int(timeout_s * 1000)}
        self.producer = clients.producer(conn, conf, watch=self.watch)
        self._produce = clients.produce
        self.delivered = self.undelivered = 0
        self.first_error: Any = None

    @property
    def failed(self) -> bool:
        return self.undelivered > 0

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.undelivered += 1
            self.first_error = self.first_error or err

    def send(self, customer_id: str, profile: dict[str, Any]) -> None:
        value, key = self.value_enc.encode(profile), self.key_enc.encode(customer_id)
        self._produce(self.producer, self.topic, value, key, on_delivery=self._on_delivery,
                      timestamp=profile["updated_at"])  # fmt: skip
        self.producer.poll(0)

    def finish(self) -> ci.CsvImportError | None:
        """Flush; the error naming what was not acknowledged, if anything was not."""
        from passerelle.schemas.clients.kafka import classify

        remaining = self.producer.flush(self.timeout_s + 5)
        again = "; run the same command again to publish the rest (what was published is skipped)"
        if self.undelivered:
            known = classify(self.first_error, self.conn, repr(self.topic))
            detail = str(known) if known is not None else self.first_error.str()
            return ci.CsvImportError(
                f"{self.undelivered} record(s) to {self.topic!r} not acknowledged by Kafka: {detail}{again}",
                ci.EXIT_UNDELIVERED,
            )
        if remaining:
            fatal = self.watch.fatal()
            detail = str(fatal) if fatal is not None else f"is Kafka reachable at {self.conn.describe()}?"
            return ci.CsvImportError(
                f"{remaining} record(s) to {self.topic!r} not acknowledged in time: {detail}{again}",
                ci.EXIT_UNDELIVERED,
            )
        return None


def run_import(
    options: ci.ImportOptions, conn: Connection, progress: ci.RunProgress | None = None, out: IO[str] = sys.stdout
) -> tuple[ci.CsvFile, ci.ImportReport, ci.CsvImportError | None]:
    """Check the file, read the table, then import: the file, the report, and the delivery failure if any.

    Whatever fails for the whole file (encoding, header, mapping, cluster,
    topic, registry) fails before the first record is produced.
    """
    now_ms, started = int(time.time() * 1000), time.monotonic()
    source, header = ci.open_checked(options)
    found = ci.scan(source, header)
    current = read_current_profiles(conn, options.topic, progress)
    sink = ci.DryRunSink(out) if options.dry_run else KafkaSink(conn, options.topic, options.catalog)
    failure: ci.CsvImportError | None = None
    try:
        report = ci.import_rows(source, header, found, current, sink, now_ms, progress)
    finally:
        if isinstance(sink, KafkaSink):
            failure = sink.finish()  # interrupted too: what was produced gets its chance to land
    report.published = sink.delivered
    report.elapsed_s = time.monotonic() - started  # the whole run: table, lines, flush
    return source, report, failure


# --- progress and summary ------------------------------------------------------------------------------------


class PlainProgress:
    """One line every ``step`` percent, for logs (stderr is not a terminal)."""

    def __init__(self, topic: str, out: IO[str] = sys.stderr, step: int = PLAIN_STEP_PCT) -> None:
        self.topic, self.out, self.step = topic, out, step
        self._next = step
        self._table_started = time.monotonic()
        self._table_told = False

    def table(self, done: int, total: int) -> None:
        if done == 0:
            self._table_started = time.monotonic()
        if done >= total and not self._table_told:
            self._table_told = True
            elapsed = time.monotonic() - self._table_started
            print(f"crm import: {done} record(s) of {self.topic} read in {elapsed:.1f} s", file=self.out, flush=True)

    def lines(self, done: int, total: int, published: int) -> None:
        pct = done * 100 // total if total else 100
        if pct >= self._next:
            print(f"crm import: {done}/{total} lines ({pct}%), {published} published", file=self.out, flush=True)
            self._next = (pct // self.step + 1) * self.step


class RichProgress:
    """Bars on stderr: the table being read, then the lines (processed of the total, published)."""

    def __init__(self, topic: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.topic = topic
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
            TimeRemainingColumn(), console=Console(stderr=True),
        )  # fmt: skip
        self._tasks: dict[str, Any] = {}

    def _task(self, name: str, description: str, total: int) -> Any:
        if name not in self._tasks:
            self._tasks[name] = self.bar.add_task(description, total=max(total, 1), extra="")
        return self._tasks[name]

    def table(self, done: int, total: int) -> None:
        task = self._task("table", f"reading {self.topic}", total)
        self.bar.update(task, total=max(total, 1), completed=done if total else 1, extra="records")

    def lines(self, done: int, total: int, published: int) -> None:
        task = self._task("lines", "importing", total)
        self.bar.update(task, completed=done if total else 1, extra=f"lines, {published} published")

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.bar.stop()


def _summary(args: argparse.Namespace, source: ci.CsvFile, report: ci.ImportReport) -> list[str]:
    delimiter = "tab" if source.delimiter == "\t" else repr(source.delimiter)
    return [
        f"file           {source.path} (delimiter {delimiter}, encoding {source.encoding})",
        f"topic          {args.topic}{' (dry run: nothing published)' if args.dry_run else ''}",
        f"lines read     {report.read}",
        f"{'would publish' if args.dry_run else 'published':<14} {report.published}",
        f"unchanged      {report.unchanged}",
        f"rejected       {report.rejected}",
        f"skipped        {report.skipped} (duplicate ids {report.duplicates}, older than the topic {report.older}, "
        f"erased {report.erased})",
        f"elapsed        {report.elapsed_s:.1f} s",
    ] + ([f"not delivered  {report.sent - report.published}"] if report.sent > report.published else [])


def _import(args: argparse.Namespace) -> int:
    from passerelle.settings import load

    settings = load()
    mapping = ci.ColumnMapping(ignore_unknown=args.ignore_unknown)
    if args.mapping is not None:
        mapping = mapping.merged(ci.load_mapping_file(args.mapping))
    mapping = mapping.merged(ci.mapping_from_options(args.map))
    delimiter = {"tab": "\t", "\\t": "\t"}.get(args.delimiter, args.delimiter)
    options = ci.ImportOptions(args.file, mapping, args.topic, args.encoding, delimiter, args.dry_run, settings.catalog)
    conn = settings.connection()
    if args.no_progress:
        source, report, failure = run_import(options, conn)
    elif sys.stderr.isatty():
        with RichProgress(args.topic) as bar:
            source, report, failure = run_import(options, conn, bar)
    else:
        source, report, failure = run_import(options, conn, PlainProgress(args.topic))
    problems = sorted(report.problems, key=lambda p: p.line)
    if args.errors is not None:
        ci.write_report(args.errors, problems)
    for problem in problems[:MAX_SHOWN]:
        print(problem, file=sys.stderr)
    if len(problems) > MAX_SHOWN:
        where = f"all in {args.errors}" if args.errors else "--errors FILE writes them all"
        print(f"... and {len(problems) - MAX_SHOWN} more problem(s) ({where})", file=sys.stderr)
    summary = "\n".join(_summary(args, source, report))
    print(summary, file=sys.stderr if args.dry_run else sys.stdout, flush=True)  # a dry run's stdout is the records
    if failure is not None:
        raise failure
    if report.rejected:
        print(f"crm import: {report.rejected} line(s) rejected, the other lines imported (exit 2)", file=sys.stderr)
    return report.exit_code()


# --- the command group ---------------------------------------------------------------------------------------

IMPORT_EPILOG = """\
column mapping:
  By default the header names the CrmProfile fields (any case): customer_id, email, gender, birth_year, age_band,
  csp, loyalty_tier, marketing_consent, updated_at. customer_id and marketing_consent are required; a missing
  optional field is null (the file is the whole profile). Any other column is an error unless mapped or ignored.

  --map 'Client ID=customer_id' --map 'Date de naissance=birth_year' --map 'Téléphone='   (empty: ignore)
  or --mapping crm.toml (or a .json file with the same keys):

    ignore_unknown = true            # optional: ignore every column not named below
    [columns]
    "Client ID" = "customer_id"
    "E-mail" = "email"
    "Date de naissance" = "birth_year"
    "Opt-in" = "marketing_consent"
    "Notes" = ""                     # ignore this column

values:
  customer_id  1-64 of A-Z a-z 0-9 _ . : -           gender  F, M, X (any case), female, male, empty
  birth_year   1985, or a date: 1985-07-14, 14/07/1985 (only the year is kept), 1900..this year
  marketing_consent  true/false yes/no y/n 1/0 oui/non (any case); empty = false (unknown is not consent)
  updated_at   ISO-8601 (no offset = UTC), at most a day ahead; empty = import time
  age_band     derived from birth_year when empty        email  checked for an address's shape
  A customer id on several lines: the last line wins (the others are warnings).

resuming:
  The current crm.profiles table is read first; a line is published only if it changes the customer's profile
  (updated_at compared only when the file gives it). The same file again publishes nothing; after a crash, run
  the same command again. Lines older than the topic's profile (updated_at) and erased customers (tombstone)
  are skipped with a warning.

exit codes:
  0  every line imported (or unchanged)
  1  nothing imported: unreadable file, wrong header or mapping, Kafka/registry/topic problem
  2  some lines rejected (listed, and in --errors FILE); the other lines were imported
  3  some records not acknowledged by Kafka; run the same command again to publish the rest

example:
  passerelle crm import export.csv --mapping crm.toml --errors rejected.csv
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``crm`` group and its subcommands."""
    p = sub.add_parser(
        "crm",
        help="CRM crossing: import a CRM's CSV export into crm.profiles",
        description="Commands of the CRM crossing. `import` loads a CRM's CSV export into the crm.profiles table, "
        "for CRMs whose database the platform cannot read.",
    )
    group = p.add_subparsers(dest="crm_command", metavar="ACTION")
    group.required = True
    _add_import(group)


def _add_import(group: argparse._SubParsersAction) -> None:
    q = group.add_parser(
        "import",
        help="import a CRM CSV export into crm.profiles (validated, diffed, resumable)",
        description="Read a CRM's CSV export, map its columns to CrmProfile fields, validate every line (a bad\n"
        "line is reported and skipped) and publish each profile that differs from the one on the topic, keyed\n"
        "by customer id. The header is checked before anything is published. Kafka and the registry come from\n"
        "the PASSERELLE_* settings. The summary goes to stdout, problems and progress to stderr.",
        epilog=IMPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("file", type=Path, metavar="FILE", help="the CSV export")
    q.add_argument("--map", action="append", default=[], metavar="COLUMN=FIELD",
                   help="map a CSV column to a field (repeatable); COLUMN= ignores the column")  # fmt: skip
    q.add_argument("--mapping", type=Path, metavar="FILE", help="mapping file (.toml or .json), see below")
    q.add_argument("--ignore-unknown", action="store_true", help="ignore columns that are neither fields nor mapped")
    q.add_argument("--delimiter", help="field delimiter (default: detected among , ; tab); 'tab' for a tab")
    q.add_argument("--encoding", default="utf-8-sig", help="file encoding (default: UTF-8, with or without BOM)")
    q.add_argument("--topic", default=ci.CRM_TOPIC, help=f"topic to import into (default {ci.CRM_TOPIC})")
    q.add_argument("--errors", type=Path, metavar="FILE", help="write every problem (line, column, reason) as CSV")
    q.add_argument("--dry-run", action="store_true",
                   help="validate and diff, publish nothing: profiles that would be published go to stdout as JSON "
                   "lines, the summary to stderr")  # fmt: skip
    q.add_argument("--no-progress", action="store_true", help="no progress display (default: a bar on a terminal, "
                   f"a line every {PLAIN_STEP_PCT}%% otherwise)")  # fmt: skip
    q.set_defaults(func=_import)
