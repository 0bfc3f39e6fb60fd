"""Which column of a CRM export holds which ``CrmProfile`` field, settled before any line is read.

Every CRM names its columns its own way (``Client ID``, ``Opt-in``,
``Date de naissance``); a mapping (``--mapping`` file, ``--map`` options)
names them, and the header is checked against it once: a column that is
neither a field nor mapped nor ignored stops the import, because a typo in a
mapping would otherwise drop a column silently and publish nulls for everyone.

``CsvImportError`` lives here, the first stage an import can fail at, so that
the whole importer shares one error that the CLI prints as one line.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELDS = (
    "customer_id", "email", "gender", "birth_year", "age_band", "csp", "loyalty_tier", "marketing_consent",
    "updated_at",
)  # fmt: skip
REQUIRED = ("customer_id", "marketing_consent")
"""Fields a header must provide. Consent is required: a file that does not say it would withdraw everyone's."""

EXIT_OK, EXIT_FAILED, EXIT_REJECTED, EXIT_UNDELIVERED = 0, 1, 2, 3


class CsvImportError(Exception):
    """A file, mapping or cluster problem that stops the whole import; one ``error:`` line from the CLI."""

    user_error = True

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
