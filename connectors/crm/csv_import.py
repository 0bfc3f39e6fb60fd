"""Import a CRM's CSV export into the ``crm.profiles`` table (``passerelle crm import``).

For CRMs whose database the platform cannot reach (no Debezium source), a
file export is the only way in. The file is streamed, not loaded: its header
is checked before anything is published, then each line is mapped to a
``CrmProfile``, validated on its own (a bad line is reported and skipped, the
rest is imported) and published only when it differs from the profile the
topic already holds. That diff against the compacted topic is what makes a
re-run safe: the same file publishes nothing, a run that crashed half-way
publishes only the rest, and no customer gets a duplicate record.

Everything here is pure logic over a file and plain data (reading, diffing,
the import loop over a ``Sink``, the error report): no Kafka client, tested
without a broker. The header and its mapping are ``csv_mapping``, the rules of
one cell ``csv_values``; reading the topic and producing is ``profiles_topic``.
The names of ``csv_mapping`` and ``csv_values`` callers use stay importable
from here, the importer's entry point.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol

from passerelle.connectors.crm.csv_mapping import (
    EXIT_OK,
    EXIT_REJECTED,
    FIELDS,
    ColumnMapping,
    CsvImportError,
    Header,
    resolve_header,
)
from passerelle.connectors.crm.csv_mapping import load_mapping_file as load_mapping_file
from passerelle.connectors.crm.csv_mapping import mapping_from_options as mapping_from_options
from passerelle.connectors.crm.csv_mapping import parse_map_option as parse_map_option
from passerelle.connectors.crm.csv_values import (
    CUSTOMER_ID,
    parse_birth_year,
    parse_consent,
    parse_customer_id,
    parse_email,
    parse_gender,
    parse_text,
    parse_updated_at,
)
from passerelle.schemas.models import age_band

CRM_TOPIC = "crm.profiles"
COMPARED = tuple(f for f in FIELDS if f != "updated_at")
DELIMITERS = ",;\t"
SAMPLE_CHARS = 64 * 1024


# --- one line ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One reported fact about one line: an error rejects the line, a warning only explains a skip."""

    line: int
    column: str
    reason: str
    value: str = ""
    customer_id: str = ""
    severity: str = "error"

    REPORT_COLUMNS = ("line", "severity", "customer_id", "column", "value", "reason")

    def row(self) -> list[str]:
        """The ``--errors`` file's row, in ``REPORT_COLUMNS`` order."""
        return [str(self.line), self.severity, self.customer_id, self.column, self.value, self.reason]

    def __str__(self) -> str:
        where = f"column {self.column!r}: " if self.column else ""
        value = f" ({self.value[:60]!r})" if self.value else ""
        kind = "warning: " if self.severity == "warning" else ""
        return f"line {self.line}: {kind}{where}{self.reason}{value}"


@dataclass
class ParsedLine:
    """A line's profile, or None and why; ``time_given``: the file gave ``updated_at`` (else the import's time)."""

    profile: dict[str, Any] | None
    time_given: bool
    problems: list[Problem]


class LineParser:
    """Turns one CSV row into a ``CrmProfile`` dict, every bad cell reported; ``now_ms`` is the import's time."""

    def __init__(self, header: Header, now_ms: int) -> None:
        self.header = header
        self.now_ms = now_ms
        self.year = datetime.fromtimestamp(now_ms / 1000, UTC).year
        year = self.year
        self.parsers: dict[str, Callable[[str], Any]] = {
            "customer_id": parse_customer_id,
            "email": parse_email,
            "gender": parse_gender,
            "birth_year": lambda s: parse_birth_year(s, year),
            "age_band": parse_text,
            "csp": parse_text,
            "loyalty_tier": parse_text,
            "marketing_consent": parse_consent,
            "updated_at": lambda s: parse_updated_at(s, now_ms),
        }

    def parse(self, row: Sequence[str], line: int) -> ParsedLine:
        """Every cell checked, not only the first bad one: the report then says all that must be fixed at once."""
        names = self.header.names
        if len(row) != len(names):
            reason = f"{len(row)} field(s) where the header has {len(names)} (a stray delimiter or quote?)"
            return ParsedLine(None, False, [Problem(line, "", reason)])
        raw_id = row[self.header.index["customer_id"]].strip()
        profile: dict[str, Any] = dict.fromkeys(FIELDS)
        problems = []
        for name, position in self.header.index.items():
            cell = row[position].strip()
            try:
                profile[name] = self.parsers[name](cell)
            except ValueError as exc:
                problems.append(Problem(line, names[position], str(exc), cell, raw_id))
        if problems:
            return ParsedLine(None, False, problems)
        profile["marketing_consent"] = bool(profile["marketing_consent"])  # no column would leave None
        if profile["age_band"] is None and profile["birth_year"] is not None:
            profile["age_band"] = age_band(profile["birth_year"], self.year)
        time_given = profile["updated_at"] is not None
        if not time_given:
            profile["updated_at"] = self.now_ms
        return ParsedLine(profile, time_given, [])


# --- the file ------------------------------------------------------------------------------------------------


def _blank(row: Sequence[str]) -> bool:
    """Nothing in any field: an empty line, spaces, or only delimiters (how spreadsheets export empty rows)."""
    return not "".join(row).replace("\ufeff", "").strip()


def detect_delimiter(sample: str) -> str:
    """``,`` ``;`` or tab: csv.Sniffer on a sample, else the one the header line holds most, else ``,``."""
    first = sample.split("\n", 1)[0]
    try:
        found = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
        if found in first:
            return found
    except csv.Error:
        pass
    counts = {d: first.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


@dataclass
class CsvFile:
    """A CSV export: where it is, how to decode and split it, its header."""

    path: Path
    encoding: str
    delimiter: str
    header: list[str]

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """(physical line number where the record starts, fields) of every data line; blank lines skipped."""
        with _open(self.path, self.encoding) as f:
            reader = csv.reader(f, delimiter=self.delimiter)
            before = 0
            header_seen = False
            try:
                for row in reader:
                    start, before = before + 1, reader.line_num
                    if _blank(row):
                        continue
                    if not header_seen:
                        header_seen = True
                        continue
                    yield start, row
            except UnicodeDecodeError as exc:
                raise _decode_error(self.path, self.encoding, exc) from None
            except csv.Error as exc:
                raise CsvImportError(f"{self.path}: line {reader.line_num}: unreadable CSV: {exc}") from None


def _open(path: Path, encoding: str) -> IO[str]:
    try:
        return open(path, encoding=encoding, newline="")
    except LookupError:
        raise CsvImportError(f"unknown encoding {encoding!r} (e.g. utf-8, cp1252, latin-1)") from None
    except OSError as exc:
        raise CsvImportError(f"cannot read {path}: {exc.strerror}") from None


def _decode_error(path: Path, encoding: str, exc: UnicodeDecodeError) -> CsvImportError:
    """The line that is not ``encoding``, found by decoding the raw lines one by one (only on this failure path)."""
    where = ""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                where = f" line {number}"
                break
    return CsvImportError(
        f"{path}:{where} is not valid {encoding} ({exc.reason}); pass --encoding (e.g. cp1252 or latin-1 for "
        "Windows exports)"
    )


def open_csv(path: Path, encoding: str = "utf-8-sig", delimiter: str | None = None) -> CsvFile:
    """Open an export: delimiter detected when not given, header read; nothing else is read yet.

    The header is the first non-blank record, split as ``CsvFile.rows`` will
    split the file, so that the header checked is the one the lines are read
    against (blank lines before it, a quoted newline in a column name).
    """
    if delimiter is not None and len(delimiter) != 1:
        raise CsvImportError(f"--delimiter must be one character, got {delimiter!r} (a tab: $'\\t' or 'tab')")
    with _open(path, encoding) as f:
        try:
            sample = f.read(SAMPLE_CHARS)
        except UnicodeDecodeError as exc:
            raise _decode_error(path, encoding, exc) from None
    if len(sample) == SAMPLE_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # whole lines only
    lines = sample.splitlines(keepends=True)
    sample = "".join(itertools.dropwhile(lambda line: _blank([line]), lines)).lstrip("\ufeff")
    chosen = delimiter or detect_delimiter(sample)
    try:
        header = next((row for row in csv.reader(io.StringIO(sample), delimiter=chosen) if not _blank(row)), None)
    except csv.Error as exc:
        raise CsvImportError(f"{path}: header: unreadable CSV: {exc}") from None
    if header is None:
        raise CsvImportError(f"{path} is empty: expected a header line, then one line per customer")
    return CsvFile(path, encoding, chosen, header)


@dataclass
class Scan:
    """What a first, cheap pass over the file tells: how many lines, which customer ids appear more than once."""

    total: int
    last_line: dict[str, int]
    """customer id -> line number of its last line, for ids on several lines only"""


def _line_id(row: Sequence[str], header: Header) -> str | None:
    """The customer id a line stands for, or None for a line rejected whatever the others hold.

    Only such ids take part in "the last line wins": a line whose id is empty
    or invalid, or whose fields do not match the header, must be reported as
    the error it is, not as a duplicate of another bad line.
    """
    if len(row) != len(header.names):
        return None
    key = row[header.index["customer_id"]].strip()
    return key if CUSTOMER_ID.fullmatch(key) else None


def scan(source: CsvFile, header: Header) -> Scan:
    """Count the lines (for the progress) and find duplicate ids (the last line wins); also fails early on a
    file that cannot be decoded or split, before anything is published."""
    last: dict[str, int] = {}
    repeated: set[str] = set()
    total = 0
    for line, row in source.rows():
        total += 1
        key = _line_id(row, header)
        if key is None:
            continue
        if key in last:
            repeated.add(key)
        last[key] = line
    return Scan(total, {k: last[k] for k in repeated})


# --- diffing against the table --------------------------------------------------------------------------


def fingerprint(profile: Mapping[str, Any]) -> int:
    """The compared content of a profile, ``updated_at`` aside.

    A 64-bit hash instead of the profile: a million customers fit in memory.
    Both sides are hashed by the same process, so the per-run hash seed does
    not matter; a changed profile hashing like its old self is a 2**-64 chance.
    """
    return hash(tuple(profile.get(f) for f in COMPARED))


@dataclass
class CurrentProfiles:
    """The table as the topic holds it: customer id -> (fingerprint, updated_at ms), and erased customers."""

    known: dict[str, tuple[int, int]] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)

    def apply(self, customer_id: str, value: Mapping[str, Any] | None) -> None:
        """One record of the topic, in offset order; None is a tombstone (erasure)."""
        if value is None:
            self.known.pop(customer_id, None)
            self.erased.add(customer_id)
            return
        self.erased.discard(customer_id)
        updated = value.get("updated_at")
        millis = round(updated.timestamp() * 1000) if isinstance(updated, datetime) else int(updated or 0)
        self.known[customer_id] = (fingerprint(value), millis)


class Outcome(StrEnum):
    PUBLISH = "publish"
    UNCHANGED = "unchanged"
    OLDER = "older"
    ERASED = "erased"


def decide(profile: Mapping[str, Any], time_given: bool, current: CurrentProfiles) -> Outcome:
    """Publish only what changes the table.

    Unchanged: same content, and the same ``updated_at`` when the file gives
    one (without one, the import time stands in and is not compared); same
    content with an older ``updated_at`` is unchanged too, there is nothing to
    undo. Older: other content, but the file's ``updated_at`` is before the
    topic's (a stale export must not undo a newer change). Erased: the topic's
    last word on the customer is a tombstone; an import must not bring an
    erased person back.
    """
    customer_id = profile["customer_id"]
    if customer_id in current.erased:
        return Outcome.ERASED
    now = current.known.get(customer_id)
    if now is None:
        return Outcome.PUBLISH
    same = now[0] == fingerprint(profile)
    if not time_given:
        return Outcome.UNCHANGED if same else Outcome.PUBLISH
    if profile["updated_at"] < now[1]:
        return Outcome.UNCHANGED if same else Outcome.OLDER
    return Outcome.UNCHANGED if same and profile["updated_at"] == now[1] else Outcome.PUBLISH


# --- the import loop --------------------------------------------------------------------------------------


class Sink(Protocol):
    """Where profiles to publish go: Kafka, or the dry run's listing."""

    @property
    def delivered(self) -> int:
        """Records acknowledged so far."""

    @property
    def failed(self) -> bool:
        """A delivery failed: the import stops reading (the rest is for a re-run)."""

    def send(self, customer_id: str, profile: dict[str, Any]) -> None: ...


class Progress(Protocol):
    def lines(self, done: int, total: int, published: int) -> None: ...


class RunProgress(Progress, Protocol):
    """Progress of a whole run: the table being read, then the lines."""

    def table(self, done: int, total: int) -> None: ...


@dataclass
class ImportReport:
    """What a run did; ``published`` counts records the sink acknowledged."""

    read: int = 0
    sent: int = 0
    published: int = 0
    unchanged: int = 0
    rejected: int = 0
    duplicates: int = 0
    older: int = 0
    erased: int = 0
    problems: list[Problem] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def skipped(self) -> int:
        """Lines not published on purpose (each has its warning), as opposed to rejected ones."""
        return self.duplicates + self.older + self.erased

    def exit_code(self) -> int:
        """Rejected lines are the one thing a run that otherwise finished leaves for a person to fix."""
        return EXIT_REJECTED if self.rejected else EXIT_OK


def import_rows(
    source: CsvFile,
    header: Header,
    found: Scan,
    current: CurrentProfiles,
    sink: Sink,
    now_ms: int,
    progress: Progress | None = None,
    every: int = 500,
) -> ImportReport:
    """Validate, diff and send every line in file order; stops early once the sink reports a delivery failure."""
    started = time.monotonic()
    report = ImportReport()
    parser = LineParser(header, now_ms)
    id_column = header.column("customer_id")
    for line, row in source.rows():
        report.read += 1
        key = _line_id(row, header)
        last = None if key is None else found.last_line.get(key)
        if key is not None and last is not None and last != line:
            report.duplicates += 1
            reason = f"duplicate customer id: line {last} replaces this line"
            report.problems.append(Problem(line, id_column, reason, key, key, "warning"))
        else:
            _one(parser.parse(row, line), report, current, sink, line, header)
        if sink.failed:
            break
        if progress is not None and report.read % every == 0:
            progress.lines(report.read, found.total, sink.delivered)
    report.published = sink.delivered
    if progress is not None:
        progress.lines(report.read, found.total, sink.delivered)
    report.elapsed_s = time.monotonic() - started
    return report


def _one(parsed: ParsedLine, report: ImportReport, current: CurrentProfiles, sink: Sink, line: int, h: Header) -> None:
    if parsed.profile is None:
        report.rejected += 1
        report.problems.extend(parsed.problems)
        return
    profile = parsed.profile
    outcome = decide(profile, parsed.time_given, current)
    cid = profile["customer_id"]
    if outcome is Outcome.PUBLISH:
        sink.send(cid, profile)
        report.sent += 1
    elif outcome is Outcome.UNCHANGED:
        report.unchanged += 1
    elif outcome is Outcome.OLDER:
        report.older += 1
        topic_time = datetime.fromtimestamp(current.known[cid][1] / 1000, UTC).isoformat()
        reason = f"older than the profile on the topic (updated {topic_time}): not published"
        stamp = datetime.fromtimestamp(profile["updated_at"] / 1000, UTC).isoformat()
        report.problems.append(Problem(line, h.column("updated_at"), reason, stamp, cid, "warning"))
    else:
        report.erased += 1
        reason = "customer erased (tombstone on the topic): not imported again"
        report.problems.append(Problem(line, h.column("customer_id"), reason, "", cid, "warning"))


def write_report(path: Path, problems: Sequence[Problem]) -> None:
    """The ``--errors`` file: one CSV row per problem, errors and warnings, in file order."""
    try:
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(Problem.REPORT_COLUMNS)
            writer.writerows(p.row() for p in sorted(problems, key=lambda p: p.line))
    except OSError as exc:
        raise CsvImportError(f"cannot write the error report {path}: {exc.strerror}") from None


class DryRunSink:
    """Lists what would be published, one JSON line per profile, instead of publishing it."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = sys.stdout if out is None else out  # looked up now: a redirected stdout is the one meant
        self.delivered = 0
        self.failed = False

    def send(self, customer_id: str, profile: dict[str, Any]) -> None:
        self.out.write(json.dumps(profile, ensure_ascii=False) + "\n")
        self.delivered += 1


@dataclass
class ImportOptions:
    """One import: the file, how to read and map it, where it goes."""

    path: Path
    mapping: ColumnMapping = field(default_factory=ColumnMapping)
    topic: str = CRM_TOPIC
    encoding: str = "utf-8-sig"
    delimiter: str | None = None
    dry_run: bool = False
    catalog: Path | None = None


def open_checked(options: ImportOptions) -> tuple[CsvFile, Header]:
    """The file opened and its header resolved; a wrong header's error shows the header as it was split."""
    source = open_csv(options.path, options.encoding, options.delimiter)
    try:
        return source, resolve_header(source.header, options.mapping)
    except CsvImportError as exc:
        shown = " | ".join(source.header)[:200]
        name = "tab" if source.delimiter == "\t" else repr(source.delimiter)
        raise CsvImportError(f"{options.path}: {exc} (header split on {name}: {shown})") from None
