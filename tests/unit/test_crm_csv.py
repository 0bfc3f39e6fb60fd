"""CSV import of CRM exports: mapping, header checks, every validation rule, diffing, the import loop."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from passerelle.commands.crm import PlainProgress
from passerelle.connectors.crm import csv_import as ci
from passerelle.schemas.models import CrmProfile, age_band

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
HEADER = "customer_id,email,gender,birth_year,csp,loyalty_tier,marketing_consent,updated_at"


def write(tmp_path: Path, text: str, name: str = "export.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def header(*names: str, mapping: ci.ColumnMapping | None = None) -> ci.Header:
    return ci.resolve_header(list(names), mapping or ci.ColumnMapping())


class ListSink:
    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail_after = fail_after

    @property
    def delivered(self) -> int:
        return len(self.sent)

    @property
    def failed(self) -> bool:
        return self.fail_after is not None and len(self.sent) >= self.fail_after

    def send(self, customer_id: str, profile: dict[str, Any]) -> None:
        self.sent.append((customer_id, profile))


def run(path: Path, current: ci.CurrentProfiles | None = None, sink: ListSink | None = None, **options: Any):
    source, hdr = ci.open_checked(ci.ImportOptions(path, **options))
    sink = sink or ListSink()
    report = ci.import_rows(source, hdr, ci.scan(source, hdr), current or ci.CurrentProfiles(), sink, NOW_MS)
    return report, sink


# --- mapping ---------------------------------------------------------------------------------------------------


def test_map_option_maps_a_column_ignores_one_and_rejects_unknown_fields() -> None:
    assert ci.parse_map_option("Client ID=customer_id") == ("Client ID", "customer_id")
    assert ci.parse_map_option(" Opt-in = Marketing_Consent ") == ("Opt-in", "marketing_consent")
    assert ci.parse_map_option("Notes=") == ("Notes", None)
    assert ci.parse_map_option("a=b=email") == ("a=b", "email")
    with pytest.raises(ci.CsvImportError, match=r"unknown field 'phone'.*customer_id"):
        ci.parse_map_option("Tel=phone")
    with pytest.raises(ci.CsvImportError, match="expected CSV_COLUMN=FIELD"):
        ci.parse_map_option("customer_id")


def test_mapping_files_in_toml_and_json(tmp_path: Path) -> None:
    toml = write(tmp_path, '''ignore_unknown = true
[columns]
"Client ID" = "customer_id"
"Date de naissance" = "birth_year"
"Notes" = ""
''', "crm.toml")  # fmt: skip
    mapping = ci.load_mapping_file(toml)
    assert mapping.columns == {"Client ID": "customer_id", "Date de naissance": "birth_year", "Notes": None}
    assert mapping.ignore_unknown
    js = write(tmp_path, json.dumps({"columns": {"Opt-in": "marketing_consent"}}), "crm.json")
    assert ci.load_mapping_file(js) == ci.ColumnMapping({"Opt-in": "marketing_consent"})
    merged = mapping.merged(ci.mapping_from_options(["Notes=csp"]))
    assert merged.columns["Notes"] == "csp" and merged.ignore_unknown


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("[columns\n", "m.toml", "not valid TOML"),
        ("{", "m.json", "not valid JSON"),
        ('colums = {a = "email"}', "m.toml", "unknown key.*colums"),
        ("[columns]\na = 3", "m.toml", "expected a `columns` table"),
        ('[columns]\na = "phone"', "m.toml", "unknown field 'phone'"),
        ('ignore_unknown = "yes"\n[columns]', "m.toml", "ignore_unknown must be true or false"),
    ],
)
def test_bad_mapping_files_are_one_clear_error(tmp_path: Path, text: str, name: str, message: str) -> None:
    with pytest.raises(ci.CsvImportError, match=message):
        ci.load_mapping_file(write(tmp_path, text, name))
    with pytest.raises(ci.CsvImportError, match="cannot read the mapping file"):
        ci.load_mapping_file(tmp_path / "missing.toml")


# --- header ----------------------------------------------------------------------------------------------------


def test_header_names_fields_in_any_case_and_order() -> None:
    h = header("Marketing_Consent", " CUSTOMER_ID ", "email")
    assert h.index == {"marketing_consent": 0, "customer_id": 1, "email": 2}
    assert h.column("customer_id") == "CUSTOMER_ID"
    assert header("\ufeffcustomer_id", "marketing_consent").index["customer_id"] == 0  # a BOM left by --encoding utf-8


def test_header_with_a_mapping_and_ignored_columns() -> None:
    mapping = ci.ColumnMapping({"Client ID": "customer_id", "opt-in": "marketing_consent", "Notes": None})
    h = header("Client ID", "Opt-In", "Notes", "email", "", mapping=mapping)  # an unnamed trailing column is ignored
    assert h.index == {"customer_id": 0, "marketing_consent": 1, "email": 3}


@pytest.mark.parametrize(
    ("names", "mapping", "messages"),
    [
        (["email", "marketing_consent"], {}, ["missing required field(s) customer_id"]),
        (["customer_id", "email"], {}, ["missing required field(s) marketing_consent"]),
        (["customer_id", "marketing_consent", "Phone", "Adresse"], {},
         ["unknown column(s) 'Phone', 'Adresse'", "--ignore-unknown"]),
        (["a", "b"], {}, ["no column matches", "missing required field(s) customer_id, marketing_consent",
                          "unknown column(s) 'a', 'b'"]),
        (["Client ID", "marketing_consent"], {"Client Id": "customer_id", "Birth": "birth_year"},
         ["mapped column(s) not in the file: 'Birth'"]),
        (["customer_id", "marketing_consent", "mail", "email"], {"mail": "email"},
         ["several columns for field(s) email ('mail' and 'email')"]),
    ],
)  # fmt: skip
def test_wrong_headers_name_every_problem(names: list[str], mapping: dict[str, str], messages: list[str]) -> None:
    with pytest.raises(ci.CsvImportError) as err:
        header(*names, mapping=ci.ColumnMapping(dict(mapping)))
    text = str(err.value)
    assert text.startswith("wrong header: ")
    for message in messages:
        assert message in text, text


def test_unknown_columns_may_be_ignored_all_at_once() -> None:
    h = header("customer_id", "Phone", "marketing_consent", mapping=ci.ColumnMapping(ignore_unknown=True))
    assert h.index == {"customer_id": 0, "marketing_consent": 2}


def test_wrong_header_error_shows_the_header_as_split(tmp_path: Path) -> None:
    path = write(tmp_path, "Client;Mail\n1;a@b.example\n")
    with pytest.raises(ci.CsvImportError, match=r"export.csv: wrong header: .*header split on ';': Client \| Mail"):
        ci.open_checked(ci.ImportOptions(path))


# --- values ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["C1", "cust_00042", "a.b:c-d", "x" * 64])
def test_customer_ids_accepted(value: str) -> None:
    assert ci.parse_customer_id(value) == value


@pytest.mark.parametrize(("value", "reason"), [("", "required"), ("a b", "1 to 64"), ("x" * 65, "1 to 64"),
                                               ("é", "1 to 64"), ("a/b", "1 to 64")])  # fmt: skip
def test_customer_ids_rejected(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ci.parse_customer_id(value)


def test_gender() -> None:
    assert [ci.parse_gender(v) for v in ("F", "m", "x", "Female", "MALE", "")] == ["F", "M", "X", "F", "M", None]
    with pytest.raises(ValueError, match="expected F, M or X"):
        ci.parse_gender("Mme")


@pytest.mark.parametrize(
    ("value", "year"),
    [("1985", 1985), ("1985.0", 1985), ("1985-07-14", 1985), ("1985/7/4", 1985), ("14/07/1985", 1985),
     ("07/14/1985", 1985), ("14.07.1985", 1985), ("1985-07-14T00:00:00", 1985), ("14/07/1985 00:00", 1985),
     ("1900", 1900), ("2025", 2025), ("", None)],
)  # fmt: skip
def test_birth_year_from_a_year_or_a_date(value: str, year: int | None) -> None:
    assert ci.parse_birth_year(value, 2025) == year


@pytest.mark.parametrize(
    ("value", "reason"),
    [("1899", "out of range 1900-2025"), ("2026", "out of range"), ("85", "not a year or a date"),
     ("31/31/1985", "not a year or a date"), ("1985-02-30", "not a year or a date"), ("abc", "not a year")],
)  # fmt: skip
def test_birth_year_rejected(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ci.parse_birth_year(value, 2025)


@pytest.mark.parametrize("value", ["true", "TRUE", "yes", "Y", "1", "oui", "Oui"])
def test_consent_yes(value: str) -> None:
    assert ci.parse_consent(value) is True


@pytest.mark.parametrize("value", ["false", "No", "n", "0", "NON", ""])
def test_consent_no_and_unknown_is_no(value: str) -> None:
    assert ci.parse_consent(value) is False


def test_consent_rejected() -> None:
    with pytest.raises(ValueError, match="expected true/false"):
        ci.parse_consent("maybe")


def test_updated_at() -> None:
    assert ci.parse_updated_at("", NOW_MS) is None
    assert ci.parse_updated_at("2024-05-31T14:02:00Z", NOW_MS) == 1717164120000
    assert ci.parse_updated_at("2024-05-31T16:02:00+02:00", NOW_MS) == 1717164120000
    assert ci.parse_updated_at("2024-05-31 14:02:00", NOW_MS) == 1717164120000  # no offset: UTC
    assert ci.parse_updated_at("2024-05-31", NOW_MS) == 1717113600000
    with pytest.raises(ValueError, match="not an ISO-8601"):
        ci.parse_updated_at("31/05/2024", NOW_MS)
    with pytest.raises(ValueError, match="in the future"):
        ci.parse_updated_at("2025-06-03T00:00:00Z", NOW_MS)


def test_email() -> None:
    assert ci.parse_email("ana@mail.example") == "ana@mail.example"
    assert ci.parse_email("") is None
    for bad in ("ana", "ana@", "ana@mail", "a na@mail.example", "a@b@c.example"):
        with pytest.raises(ValueError, match="not an email address"):
            ci.parse_email(bad)


# --- one line --------------------------------------------------------------------------------------------------


def test_a_line_becomes_a_crm_profile_with_its_age_band() -> None:
    parser = ci.LineParser(header(*HEADER.split(",")), NOW_MS)
    row = [" C1 ", " ana@mail.example ", "f", "14/07/1985", "cadre", "gold", "oui", "2024-05-31T14:02:00Z"]
    parsed = parser.parse(row, 2)
    assert parsed.problems == [] and parsed.time_given
    assert parsed.profile == {
        "customer_id": "C1", "email": "ana@mail.example", "gender": "F", "birth_year": 1985,
        "age_band": age_band(1985, 2025), "csp": "cadre", "loyalty_tier": "gold", "marketing_consent": True,
        "updated_at": 1717164120000,
    }  # fmt: skip
    assert CrmProfile.from_avro(parsed.profile).to_avro() == parsed.profile  # exactly the contract's shape


def test_missing_optional_values_and_time() -> None:
    parser = ci.LineParser(header("customer_id", "marketing_consent", "age_band", "birth_year"), NOW_MS)
    parsed = parser.parse(["C2", "", "", ""], 3)
    assert not parsed.time_given
    assert parsed.profile == {**dict.fromkeys(ci.FIELDS), "customer_id": "C2", "marketing_consent": False,
                              "updated_at": NOW_MS}  # fmt: skip
    given = parser.parse(["C2", "no", "35-49", "1990"], 4).profile
    assert given is not None and given["age_band"] == "35-49"  # the file's band is kept


def test_every_bad_cell_of_a_line_is_reported_with_its_column() -> None:
    mapping = ci.ColumnMapping({"Client ID": "customer_id", "Naissance": "birth_year", "Opt-in": "marketing_consent"})
    parser = ci.LineParser(header("Client ID", "Naissance", "Opt-in", mapping=mapping), NOW_MS)
    parsed = parser.parse(["C 3", "1850", "peut-être"], 7)
    assert parsed.profile is None
    assert [(p.line, p.column, p.value, p.customer_id) for p in parsed.problems] == [
        (7, "Client ID", "C 3", "C 3"), (7, "Naissance", "1850", "C 3"), (7, "Opt-in", "peut-être", "C 3"),
    ]  # fmt: skip
    assert str(parsed.problems[1]) == "line 7: column 'Naissance': year 1850 out of range 1900-2025 ('1850')"
    short = parser.parse(["C4", "1980"], 8).problems
    assert len(short) == 1 and "2 field(s) where the header has 3" in short[0].reason


# --- the file --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "delimiter"),
    [
        ("customer_id,email\nC1,a@b.example\n", ","),
        ("customer_id;email\nC1;a@b.example\n", ";"),
        ("customer_id\temail\nC1\ta@b.example\n", "\t"),
        ('customer_id;csp;email\nC1;"cadre, sup";a@b.example\nC2;"x, y, z";c@d.example\n', ";"),
        ("customer_id\nC1\nC2\n", ","),
        ("customer_id;marketing_consent", ";"),
    ],
)
def test_delimiter_detection(sample: str, delimiter: str) -> None:
    assert ci.detect_delimiter(sample) == delimiter


def test_bom_encodings_and_forced_delimiter(tmp_path: Path) -> None:
    text = "customer_id;marketing_consent;csp\nC1;oui;Employé\n"
    with_bom = ci.open_csv(write(tmp_path, "\ufeff" + text, "bom.csv"))
    assert with_bom.header == ["customer_id", "marketing_consent", "csp"] and with_bom.delimiter == ";"
    assert list(with_bom.rows()) == [(2, ["C1", "oui", "Employé"])]
    assert ci.open_csv(write(tmp_path, text, "plain.csv")).header[0] == "customer_id"
    latin = ci.open_csv(write(tmp_path, text, "latin.csv", "cp1252"), encoding="cp1252")
    [(_, row)] = list(latin.rows())
    assert row[2] == "Employé"
    forced = ci.open_csv(write(tmp_path, "customer_id,marketing_consent\n", "f.csv"), delimiter=";")
    assert forced.header == ["customer_id,marketing_consent"]


def test_unreadable_files_are_one_error_each(tmp_path: Path) -> None:
    bad = write(tmp_path, "customer_id;marketing_consent\nC1;oui\nC2;non\nC3;Employ\xe9\n", "bad.csv", "cp1252")
    with pytest.raises(ci.CsvImportError, match=r"bad.csv: line 4 is not valid utf-8-sig .*--encoding"):
        ci.scan(ci.open_csv(bad), header("customer_id", "marketing_consent"))
    with pytest.raises(ci.CsvImportError, match="is empty"):
        ci.open_csv(write(tmp_path, "\ufeff\n\n", "empty.csv"))
    with pytest.raises(ci.CsvImportError, match="cannot read"):
        ci.open_csv(tmp_path / "nope.csv")
    with pytest.raises(ci.CsvImportError, match="unknown encoding"):
        ci.open_csv(bad, encoding="klingon")
    with pytest.raises(ci.CsvImportError, match="one character"):
        ci.open_csv(bad, delimiter=";;")


def test_line_numbers_are_the_file_s_with_blank_lines_and_quoted_newlines(tmp_path: Path) -> None:
    path = write(tmp_path, 'customer_id,csp,marketing_consent\n\nC1,"two\nlines",yes\r\nC2,x,no\n\nC3,y,1\n')
    assert [(n, row[0]) for n, row in ci.open_csv(path).rows()] == [(3, "C1"), (5, "C2"), (7, "C3")]


def test_scan_counts_lines_and_finds_duplicate_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "customer_id,marketing_consent\nC1,yes\nC2,no\n C1 ,no\nC3,no\nC1,yes\nC2,no\n")
    source = ci.open_csv(path)
    found = ci.scan(source, ci.resolve_header(source.header, ci.ColumnMapping()))
    assert found.total == 6 and found.last_line == {"C1": 6, "C2": 7}


# --- diffing ---------------------------------------------------------------------------------------------------


def profile(cid: str = "C1", **fields: Any) -> dict[str, Any]:
    return {**dict.fromkeys(ci.FIELDS), "customer_id": cid, "marketing_consent": False, "updated_at": 1000, **fields}


def test_decide_publishes_only_what_changes_the_table() -> None:
    current = ci.CurrentProfiles()
    assert ci.decide(profile(), False, current) is ci.Outcome.PUBLISH  # a new customer
    current.apply("C1", profile(email="a@b.example", updated_at=datetime(2024, 1, 1, tzinfo=UTC)))
    stamp = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
    same = profile(email="a@b.example", updated_at=NOW_MS)
    assert ci.decide(same, False, current) is ci.Outcome.UNCHANGED  # the import time is not a change
    assert ci.decide(profile(email="c@d.example", updated_at=NOW_MS), False, current) is ci.Outcome.PUBLISH
    assert ci.decide({**same, "updated_at": stamp}, True, current) is ci.Outcome.UNCHANGED
    assert ci.decide({**same, "updated_at": stamp + 1}, True, current) is ci.Outcome.PUBLISH  # the file's time counts
    assert ci.decide(profile(email="new@b.example", updated_at=stamp - 1), True, current) is ci.Outcome.OLDER
    current.apply("C1", None)
    assert ci.decide(same, False, current) is ci.Outcome.ERASED
    current.apply("C1", profile())
    assert ci.decide(profile(), False, current) is ci.Outcome.UNCHANGED  # re-created after the erasure


# --- the import loop -------------------------------------------------------------------------------------------


def test_import_reports_rejects_duplicates_and_unchanged(tmp_path: Path) -> None:
    path = write(tmp_path, f"""{HEADER}
C1,ana@mail.example,F,1985,cadre,gold,oui,
C2,bad-email,F,1985,,,oui,
C3,,M,1990,,,non,
C1,ana@mail.example,F,1985,cadre,platinum,oui,
C4,,X,,,,maybe,
C5,,,,,,,
""")  # fmt: skip
    current = ci.CurrentProfiles()
    current.apply("C3", profile("C3", gender="M", birth_year=1990, age_band=age_band(1990, 2025)))
    report, sink = run(path, current)
    assert [cid for cid, _ in sink.sent] == ["C1", "C5"]
    assert sink.sent[0][1]["loyalty_tier"] == "platinum"  # the last line of C1 won
    assert (report.read, report.published, report.unchanged, report.rejected, report.duplicates) == (6, 2, 1, 2, 1)
    assert report.exit_code() == ci.EXIT_REJECTED
    assert [(p.line, p.severity, p.column) for p in report.problems] == [
        (2, "warning", "customer_id"), (3, "error", "email"), (6, "error", "marketing_consent"),
    ]  # fmt: skip
    out = tmp_path / "errors.csv"
    ci.write_report(out, report.problems)
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [r["line"] for r in rows] == ["2", "3", "6"]
    assert rows[1] == {"line": "3", "severity": "error", "customer_id": "C2", "column": "email",
                       "value": "bad-email", "reason": "not an email address"}  # fmt: skip


def test_older_lines_and_erased_customers_are_skipped_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, """Client,Opt-in,Changed
C1,yes,2024-01-01T00:00:00Z
C2,yes,
C3,yes,2024-03-01T00:00:00Z
""")  # fmt: skip
    current = ci.CurrentProfiles()
    current.apply("C1", profile("C1", updated_at=datetime(2024, 2, 1, tzinfo=UTC)))
    current.apply("C2", profile("C2"))
    current.apply("C2", None)
    current.apply("C3", profile("C3", updated_at=datetime(2024, 2, 1, tzinfo=UTC)))
    mapping = ci.ColumnMapping({"Client": "customer_id", "Opt-in": "marketing_consent", "Changed": "updated_at"})
    report, sink = run(path, current, mapping=mapping)
    assert [cid for cid, _ in sink.sent] == ["C3"]
    assert (report.older, report.erased, report.skipped, report.exit_code()) == (1, 1, 2, ci.EXIT_OK)
    older, erased = report.problems
    assert (older.line, older.column, older.severity) == (2, "Changed", "warning")
    assert older.value == "2024-01-01T00:00:00+00:00"
    assert "older than the profile on the topic (updated 2024-02-01T00:00:00+00:00)" in older.reason
    assert (erased.line, erased.column, erased.customer_id) == (3, "Client", "C2") and "erased" in erased.reason


def test_import_of_a_clean_file_exits_0_and_reports_progress(tmp_path: Path) -> None:
    lines = "".join(f"C{i},,,,,,yes,\n" for i in range(1200))
    path = write(tmp_path, HEADER + "\n" + lines)
    source, hdr = ci.open_checked(ci.ImportOptions(path))
    calls: list[tuple[int, int, int]] = []

    class Recorder:
        def lines(self, done: int, total: int, published: int) -> None:
            calls.append((done, total, published))

    report = ci.import_rows(source, hdr, ci.scan(source, hdr), ci.CurrentProfiles(), ListSink(), NOW_MS, Recorder())
    assert report.exit_code() == ci.EXIT_OK and report.read == 1200 and report.sent == 1200
    assert calls == [(500, 1200, 500), (1000, 1200, 1000), (1200, 1200, 1200)]


def test_import_stops_reading_once_a_delivery_failed(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "\n" + "".join(f"C{i},,,,,,yes,\n" for i in range(50)))
    report, sink = run(path, sink=ListSink(fail_after=10))
    assert report.read == 10 and len(sink.sent) == 10


def test_dry_run_sink_lists_profiles_as_json_lines() -> None:
    out = io.StringIO()
    sink = ci.DryRunSink(out)
    sink.send("C1", profile(email="é@b.example"))
    assert json.loads(out.getvalue())["email"] == "é@b.example" and sink.delivered == 1 and not sink.failed


def test_plain_progress_prints_a_line_every_ten_percent() -> None:
    out = io.StringIO()
    progress = PlainProgress("crm.profiles", out)
    progress.table(0, 0)
    for done in range(0, 1001, 50):
        progress.lines(done, 1000, done // 2)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("crm import: 0 record(s) of crm.profiles read in")
    assert lines[1:] == [f"crm import: {n}/1000 lines ({n // 10}%), {n // 2} published" for n in range(100, 1001, 100)]
