"""Import a CRM's CSV export into the ``crm.profiles`` table (``passerelle crm import``).

For CRMs whose database the platform cannot reach (no Debezium source), a
file export is the only way in. The file is streamed, not loaded: its header
is checked before anything is published, then each line is mapped to a
``CrmProfile``, validated on its own (a bad line is reported and skipped, the
rest is imported) and published only when it differs from the profile the
topic already holds. That diff against the compacted topic is what makes a
re-run safe: the same file publishes nothing, a run that crashed half-way
publishes only the rest, and no customer gets a duplicate record.

Everything here is pure logic over a file and plain data (mapping, parsing,
validation, diffing, the import loop over a ``Sink``): no Kafka client, tested
without a broker. Reading the topic and producing is the wiring's job
(``passerelle.commands.crm``).
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol

from passerelle.schemas.models import age_band

CRM_TOPIC = "crm.profiles"
FIELDS = (
    "customer_id", "email", "gender", "birth_year", "age_band", "csp", "loyalty_tier", "marketing_consent",
    "updated_at",
)  # fmt: skip
REQUIRED = ("customer_id", "marketing_consent")
"""Fields a header must provide. Consent is required: a file that does not say it would withdraw everyone's."""
COMPARED = tuple(f for f in FIELDS if f != "updated_at")

EXIT_OK, EXIT_FAILED, EXIT_REJECTED, EXIT_UNDELIVERED = 0, 1, 2, 3
CUSTOMER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MIN_BIRTH_YEAR = 1900
DELIMITERS = ",;\t"
SAMPLE_CHARS = 64 * 1024
GENDERS = {"f": "F", "m": "M", "x": "X", "female": "F", "male": "M"}
CONSENT = {
    "true": True, "yes": True, "y": True, "1": True, "oui": True,
    "false": False, "no": False, "n": False, "0": False, "non": False, "": False,
}  # fmt: skip
MAX_FUTURE_MS = 24 * 3600 * 1000
"""An ``updated_at`` later than this after now is a typo: it would make every later import look older."""


class CsvImportError(Exception):
    """A file, mapping or cluster problem that stops the whole import; one ``error:`` line from the CLI."""

    user_error = True

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- column mapping ---------------------------------------------------------------------------------------


@dataclass
class ColumnMapping:
    """CSV column -> ``CrmProfile`` field (None: the column is ignored); by default a column names its field."""

    columns: dict[str, str | None] = field(default_factory=dict)
    ignore_unknown: bool = False

    def merged(self, other: ColumnMapping) -> ColumnMapping:
        """This mapping overridden by ``other`` (``--map`` options over the ``--mapping`` file)."""
        return ColumnMapping({**self.columns, **other.columns}, self.ignore_unknown or other.ignore_unknown)


def _target(name: str, origin: str) -> str | None:
    """A mapping's right-hand side: a field name, or empty / ``-`` to ignore the column."""
    name = name.strip()
    if name in ("", "-"):
        return None
    if name.lower() not in FIELDS:
        raise CsvImportError(f"{origin}: unknown field {name!r}; fields: {', '.join(FIELDS)}")
    return name.lower()


def parse_map_option(text: str) -> tuple[str, str | None]:
    """``"Client ID=customer_id"`` -> (column, field); ``"Notes="`` ignores the column ``Notes``."""
    column, sep, target = text.rpartition("=")  # a field name never holds "=", a column name might
    if not sep or not column.strip():
        raise CsvImportError(f"--map {text!r}: expected CSV_COLUMN=FIELD (or CSV_COLUMN= to ignore the column)")
    return column.strip(), _target(target, f"--map {text!r}")


def mapping_from_options(options: Sequence[str]) -> ColumnMapping:
    """The mapping of repeated ``--map`` options."""
    return ColumnMapping(dict(parse_map_option(text) for text in options))


def load_mapping_file(path: Path) -> ColumnMapping:
    """A TOML or JSON mapping file: ``[columns]`` ``"CSV column" = "field"``, optional ``ignore_unknown``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CsvImportError(f"cannot read the mapping file {path}: {exc.strerror}") from None
    is_json = path.suffix.lower() == ".json"
    try:
        doc: Any = json.loads(text) if is_json else tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError is a ValueError
        raise CsvImportError(f"mapping file {path} is not valid {'JSON' if is_json else 'TOML'}: {exc}") from None
    unknown = sorted(set(doc) - {"columns", "ignore_unknown"}) if isinstance(doc, dict) else []
    columns = doc.get("columns") if isinstance(doc, dict) else None
    if unknown or not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise CsvImportError(
            f'mapping file {path}: expected a `columns` table of "CSV column" = "field" strings and optionally '
            f"`ignore_unknown = true`" + (f"; unknown key(s) {', '.join(unknown)}" if unknown else "")
        )
    ignore = doc.get("ignore_unknown", False)
    if not isinstance(ignore, bool):
        raise CsvImportError(f"mapping file {path}: ignore_unknown must be true or false")
    return ColumnMapping({str(k).strip(): _target(v, f"mapping file {path}") for k, v in columns.items()}, ignore)


@dataclass(frozen=True)
class Header:
    """Which column holds which field, checked once before any line is read."""

    names: tuple[str, ...]
    index: dict[str, int]
    """field -> column position"""

    def column(self, field_name: str) -> str:
        """The file's own name of the column holding ``field_name`` (reports speak the file's language)."""
        return self.names[self.index[field_name]]


def resolve_header(names: Sequence[str], mapping: ColumnMapping) -> Header:
    """Match the header against the mapping and the field names, or one error naming every problem.

    Errors: a required field (customer_id, marketing_consent) no column gives,
    two columns for one field, a ``--map`` naming a column the file lacks, and
    a column neither named after a field nor mapped, unless ignored (``COLUMN=``,
    ``--ignore-unknown``): a typo must not silently drop a column. Matching is
    case-insensitive; unnamed columns (a trailing delimiter) are ignored.
    """
    names = tuple(n.strip().lstrip("\ufeff") for n in names)
    explicit = {k.casefold(): v for k, v in mapping.columns.items()}
    index: dict[str, int] = {}
    unknown: list[str] = []
    twice: list[str] = []
    for position, name in enumerate(names):
        key = name.casefold()
        if not name:
            continue
        if key in explicit:
            target = explicit[key]
        elif key in FIELDS:
            target = key
        else:
            unknown.append(name)
            continue
        if target is None:
            continue
        if target in index:
            twice.append(f"{target} ({names[index[target]]!r} and {name!r})")
        index[target] = position
    present = {n.casefold() for n in names}
    absent = [k for k, v in mapping.columns.items() if v is not None and k.casefold() not in present]
    missing = [f for f in REQUIRED if f not in index]
    problems = []
    if not index:
        problems.append(f"no column matches a CrmProfile field ({', '.join(FIELDS)}) or a mapping")
    if missing:
        problems.append(f"missing required field(s) {', '.join(missing)} (no column named or mapped to it)")
    if absent:
        problems.append(f"mapped column(s) not in the file: {', '.join(map(repr, absent))}")
    if twice:
        problems.append(f"several columns for field(s) {'; '.join(twice)}")
    if unknown and not mapping.ignore_unknown:
        problems.append(
            f"unknown column(s) {', '.join(map(repr, unknown))} (map them with --map 'COLUMN=FIELD', "
            "ignore them with --map 'COLUMN=' or --ignore-unknown)"
        )
    if problems:
        raise CsvImportError("wrong header: " + "; ".join(problems))
    return Header(names, index)


# --- one value, one line ------------------------------------------------------------------------------------


def parse_customer_id(text: str) -> str:
    if not text:
        raise ValueError("required")
    if not CUSTOMER_ID.fullmatch(text):
        raise ValueError("must be 1 to 64 characters among A-Z a-z 0-9 _ . : -")
    return text


def parse_email(text: str) -> str | None:
    if text and (len(text) > 254 or not EMAIL.fullmatch(text)):
        raise ValueError("not an email address")
    return text or None


def parse_gender(text: str) -> str | None:
    """F, M or X in any case, or female / male; empty is unknown."""
    if not text:
        return None
    try:
        return GENDERS[text.lower()]
    except KeyError:
        raise ValueError("expected F, M or X (or female, male)") from None


_YEAR = re.compile(r"(\d{4})(?:\.0+)?")  # 1985, or 1985.0 as spreadsheets export numbers
_YMD = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[T ].*)?")
_DMY = re.compile(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})(?: .*)?")


def _real_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def parse_birth_year(text: str, this_year: int) -> int | None:
    """A year, or a date (1985-07-14, 14/07/1985 or 07/14/1985: only the year is kept, so either order will do)."""
    if not text:
        return None
    if (m := _YEAR.fullmatch(text)) or ((m := _YMD.fullmatch(text)) and _real_date(int(m[1]), int(m[2]), int(m[3]))):
        year = int(m[1])
    elif (m := _DMY.fullmatch(text)) and (
        _real_date(int(m[3]), int(m[2]), int(m[1])) or _real_date(int(m[3]), int(m[1]), int(m[2]))
    ):
        year = int(m[3])
    else:
        raise ValueError("not a year or a date (e.g. 1985, 1985-07-14, 14/07/1985)")
    if not MIN_BIRTH_YEAR <= year <= this_year:
        raise ValueError(f"year {year} out of range {MIN_BIRTH_YEAR}-{this_year}")
    return year


def parse_consent(text: str) -> bool:
    """true/false, yes/no, y/n, 1/0, oui/non in any case; empty is False (unknown is not consent)."""
    try:
        return CONSENT[text.lower()]
    except KeyError:
        raise ValueError("expected true/false, yes/no, y/n, 1/0 or oui/non") from None


def parse_updated_at(text: str, now_ms: int) -> int | None:
    """ISO-8601 date or date-time (a time without offset is UTC) as UTC milliseconds; empty: None."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not an ISO-8601 date-time (e.g. 2024-05-31T14:02:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = round(when.timestamp() * 1000)
    if ms > now_ms + MAX_FUTURE_MS:
        raise ValueError("in the future")
    return ms


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
        return [str(self.line), self.severity, self.customer_id, self.column, self.value, self.reason]

    def __str__(self) -> str:
        where = f"column {self.column!r}: " if self.column else ""
        value = f" ({self.value[:60]!r})" if self.value else ""
        kind = "warning: " if self.severity == "warning" else ""
        return f"line {self.line}: {kind}{where}{self.reason}{value}"


@dataclass
class ParsedLine:
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
        text: Callable[[str], Any] = lambda s: s or None  # noqa: E731
        self.parsers: dict[str, Callable[[str], Any]] = {
            "customer_id": parse_customer_id,
            "email": parse_email,
            "gender": parse_gender,
            "birth_year": lambda s: parse_birth_year(s, year),
            "age_band": text,
            "csp": text,
            "loyalty_tier": text,
            "marketing_consent": parse_consent,
            "updated_at": lambda s: parse_updated_at(s, now_ms),
        }

    def parse(self, row: Sequence[str], line: int) -> ParsedLine:
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
                    if not row or (len(row) == 1 and not row[0].strip()):
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
    """Open an export: delimiter detected when not given, header read; nothing else is read yet."""
    if delimiter is not None and len(delimiter) != 1:
        raise CsvImportError(f"--delimiter must be one character, got {delimiter!r} (a tab: $'\\t' or 'tab')")
    with _open(path, encoding) as f:
        try:
            sample = f.read(SAMPLE_CHARS)
        except UnicodeDecodeError as exc:
            raise _decode_error(path, encoding, exc) from None
    if len(sample) == SAMPLE_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # whole lines only
    sample = sample.lstrip("\ufeff\r\n")
    if not sample.strip():
        raise CsvImportError(f"{path} is empty: expected a header line, then one line per customer")
    chosen = delimiter or detect_delimiter(sample)
    header = next(csv.reader(sample.splitlines()[:1], delimiter=chosen))
    return CsvFile(path, encoding, chosen, header)


@dataclass
class Scan:
    """What a first, cheap pass over the file tells: how many lines, which customer ids appear more than once."""

    total: int
    last_line: dict[str, int]
    """customer id -> line number of its last line, for ids on several lines only"""


def scan(source: CsvFile, header: Header) -> Scan:
    """Count the lines (for the progress) and find duplicate ids (the last line wins); also fails early on a
    file that cannot be decoded or split, before anything is published."""
    position = header.index["customer_id"]
    last: dict[str, int] = {}
    repeated: set[str] = set()
    total = 0
    for line, row in source.rows():
        total += 1
        if position < len(row):
            key = row[position].strip()
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
    one (without one, the import time stands in and is not compared). Older:
    the file's ``updated_at`` is before the topic's (a stale export must not
    undo a newer change). Erased: the topic's last word on the customer is a
    tombstone; an import must not bring an erased person back.
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
        return Outcome.OLDER
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
        return self.duplicates + self.older + self.erased

    def exit_code(self) -> int:
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
    id_position, id_column = header.index["customer_id"], header.column("customer_id")
    for line, row in source.rows():
        report.read += 1
        raw_id = row[id_position].strip() if id_position < len(row) else ""
        last = found.last_line.get(raw_id)
        if last is not None and last != line:
            report.duplicates += 1
            reason = f"duplicate customer id: line {last} replaces this line"
            report.problems.append(Problem(line, id_column, reason, raw_id, raw_id, "warning"))
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

    def __init__(self, out: IO[str] = sys.stdout) -> None:
        self.out = out
        self.delivered = 0
        self.failed = False

    def send(self, customer_id: str, profile: dict[str, Any]) -> None:
        self.out.write(json.dumps(profile, ensure_ascii=False) + "\n")
        self.delivered += 1


class RunProgress(Progress, Protocol):
    """Progress of a whole run: the table being read, then the lines."""

    def table(self, done: int, total: int) -> None: ...


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
