"""A partner's metrics as a CSV file (``passerelle metrics import``): the header, the lines, their verdicts.

Pure logic over a file and plain data, no Kafka: the command reads the
tables and publishes. The file is UTF-8 (a BOM is fine), comma-separated
(``;`` and tab are detected from the header), with the header
``date,campaign_key,metric,value,currency`` (columns in any order, names in
any case, none missing, no other). Each line is judged by the API's own
``metric_rules.validate_metric``, so a file and ``POST /v1/metrics`` accept
exactly the same figures; an empty ``campaign_key`` is an account-level
figure, an empty ``currency`` none (counts).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

from passerelle.connectors.partner_api.metric_names import FIELDS, HEADER
from passerelle.connectors.partner_api.metric_rules import MetricVerdict, validate_metric

EXIT_OK, EXIT_FAILED, EXIT_REJECTED, EXIT_UNDELIVERED = 0, 1, 2, 3
MAX_CELL = 4096


class MetricsImportError(Exception):
    """A problem with the whole file or the cluster: nothing (more) is imported; one ``error:`` line."""

    user_error = True

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class LineProblem:
    """Why one line was rejected: its number in the file (header = 1), the column, the reason."""

    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column or '-'}: {self.reason}"


@dataclass
class Judged:
    """The verdicts on a file's lines: the records to publish, the problems, the undeclared campaign keys."""

    lines: int = 0
    records: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    problems: list[LineProblem] = field(default_factory=list)
    undeclared: set[str] = field(default_factory=set)

    @property
    def rejected_lines(self) -> int:
        return len({p.line for p in self.problems})


def _delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in ",;\t"}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_rows(source: IO[str]) -> Iterator[tuple[int, dict[str, str] | LineProblem]]:
    """(line number, cells by field) for each data line, or the line's problem; ``MetricsImportError`` for the header.

    Blank lines are skipped. A line number is the line's first physical line.
    """
    first = source.readline()
    if not first.strip():
        raise MetricsImportError(f"the file is empty: its first line must be the header {HEADER}")
    delimiter = _delimiter(first)
    header = [name.strip().lower() for name in next(csv.reader([first], delimiter=delimiter))]
    missing = [name for name in FIELDS if name not in header]
    unknown = [name for name in header if name not in FIELDS]
    doubled = sorted({name for name in header if header.count(name) > 1})
    if missing or unknown or doubled:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unknown {', '.join(repr(u) for u in unknown)}"] if unknown else []
        parts += [f"repeated {', '.join(doubled)}"] if doubled else []
        raise MetricsImportError(f"header ({'; '.join(parts)}): it must be {HEADER}")
    reader = csv.reader(source, delimiter=delimiter)
    line = 2
    for row in reader:
        start, line = line, reader.line_num + 2  # the next line's number (line_num counts after the header)
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield start, LineProblem(start, "", f"{len(row)} cells, the header has {len(header)}")
            continue
        too_long = [name for name, cell in zip(header, row, strict=True) if len(cell) > MAX_CELL]
        if too_long:
            yield start, LineProblem(start, too_long[0], f"longer than {MAX_CELL} characters")
            continue
        yield start, dict(zip(header, row, strict=True))


def judge_file(
    source: IO[str], partner: str, campaigns: Mapping[str, Mapping[str, Any] | None], today: date, now_ms: int
) -> Judged:
    """Every line's verdict, with the API's rules."""
    judged = Judged()
    for line, cells in read_rows(source):
        judged.lines += 1
        if isinstance(cells, LineProblem):
            judged.problems.append(cells)
            continue
        verdict: MetricVerdict = validate_metric(cells, partner, campaigns, today, now_ms)
        if verdict.record is None:
            judged.problems.extend(LineProblem(line, e.field, e.reason) for e in verdict.errors)
            continue
        judged.records.append((line, verdict.record))
        if verdict.undeclared:
            judged.undeclared.add(verdict.undeclared)
    return judged


def open_file(path: Path, encoding: str = "utf-8-sig") -> io.StringIO:
    """The file's text, ready for the CSV reader (metrics files are small: read whole), or one clear error."""
    try:
        text = path.read_bytes().decode(encoding)
    except FileNotFoundError:
        raise MetricsImportError(f"no such file: {path}") from None
    except (OSError, LookupError) as exc:
        raise MetricsImportError(f"cannot read {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise MetricsImportError(f"{path} is not {encoding} text (byte {exc.start}); use --encoding") from None
    return io.StringIO(text, newline="")
