"""``passerelle crm``: the CRM crossing's commands; ``crm import FILE`` loads a CRM's CSV export into crm.profiles.

A group, so that each CRM job is one subcommand. This module is the
command's wiring and output only: the import's logic (mapping, validation,
diffing) is ``passerelle.connectors.crm.csv_import``, the Kafka side (the
current table read from the topic, the producer) ``profiles_topic``; here
they are put together, with the progress display and the summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from passerelle.connectors.crm import csv_import as ci
from passerelle.connectors.crm.csv_mapping import ColumnMapping, load_mapping_file, mapping_from_options
from passerelle.connectors.crm.profiles_topic import KafkaSink, read_current_profiles

if TYPE_CHECKING:  # confluent-kafka loads only when a command talks to Kafka, not for --help
    from passerelle.schemas.clients import Connection

MAX_SHOWN = 20
"""Problems printed on stderr; ``--errors FILE`` has them all."""
PLAIN_STEP_PCT = 10


# --- the run ---------------------------------------------------------------------------------------------------


def run_import(
    options: ci.ImportOptions, conn: Connection, progress: ci.RunProgress | None = None, out: IO[str] | None = None
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

    def __init__(self, topic: str, out: IO[str] | None = None, step: int = PLAIN_STEP_PCT) -> None:
        self.topic, self.step = topic, step
        self.out = sys.stderr if out is None else out  # looked up now: a redirected stderr is the one meant
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
    mapping = ColumnMapping(ignore_unknown=args.ignore_unknown)
    if args.mapping is not None:
        mapping = mapping.merged(load_mapping_file(args.mapping))
    mapping = mapping.merged(mapping_from_options(args.map))
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
  the same command again. Lines that differ from the topic's profile but are older (updated_at), and erased
  customers (tombstone), are skipped with a warning.

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
