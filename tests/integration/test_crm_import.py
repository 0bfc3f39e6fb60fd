"""``passerelle crm import`` through the real CLI, on the real broker and the real registry."""

from __future__ import annotations

import csv
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection, consumer
from passerelle.schemas.models import age_band
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MAPPING = """\
[columns]
"Client ID" = "customer_id"
"E-mail" = "email"
"Civilité" = "gender"
"Date de naissance" = "birth_year"
"CSP" = "csp"
"Fidélité" = "loyalty_tier"
"Opt-in" = "marketing_consent"
"Modifié le" = "updated_at"
"Téléphone" = ""
"""
EXPORT_HEADER = ["Client ID", "E-mail", "Civilité", "Date de naissance", "CSP", "Fidélité", "Opt-in", "Modifié le",
                 "Téléphone"]  # fmt: skip
GENDERS = {"F": "F", "m": "M", "X": "X", "female": "F", "": None}
CONSENTS = {"oui": True, "Non": False, "1": True, "0": False, "": False, "yes": True}


@dataclass
class Crm:
    bootstrap: str
    registry: str
    topic: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "passerelle", "crm", "import", "--topic", self.topic, *args]
        return subprocess.run(command, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              check=False)  # fmt: skip

    def count(self) -> int:
        """Records on the topic (sum of end offsets: compaction cannot have run on a fresh topic's active segment)."""
        c = consumer(Connection.plain(self.bootstrap), "crm-import-test-count")
        try:
            parts = c.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            return sum(c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1] for p in parts)
        finally:
            c.close()

    def table(self, expected: int) -> tuple[int, dict[str, dict[str, Any]]]:
        """(records read, latest value per customer id), reading until ``expected`` records and a quiet second."""
        reader = TopicReader(self.bootstrap, self.registry, self.topic)
        try:
            reader.read(until=expected, timeout=120)
            records = reader.read(until=expected + 1, timeout=2, idle=1)
            table = {reader.decoder.decode(msg.key()): value for msg, value in records}
            return len(records), table
        finally:
            reader.close()


@pytest.fixture
def crm(kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str]) -> Crm:
    topic = unique("crm.profiles")
    create_topics(kafka_bootstrap, {topic: 3}, config={"cleanup.policy": "compact"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(PASSERELLE_BOOTSTRAP_SERVERS=kafka_bootstrap, PASSERELLE_SCHEMA_REGISTRY_URL=schema_registry_url)
    return Crm(kafka_bootstrap, schema_registry_url, topic, env)


def summary(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^(\S[^\n]*?)\s{2,}(\S[^\n]*)$", stdout, re.MULTILINE))


def export(path: Path, n: int, seed: int = 12) -> dict[str, dict[str, Any]]:
    """A CRM export as CRMs write them (own column names, ';', BOM, dd/mm/yyyy dates); the profiles it means.

    Every other line has no ``Modifié le``: those get the import's time.
    """
    rng = random.Random(seed)
    this_year = datetime.now(UTC).year
    expected: dict[str, dict[str, Any]] = {}
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f, delimiter=";")
        writer.writerow(EXPORT_HEADER)
        for i in range(n):
            cid, gender, consent = f"CUST-{i:06d}", rng.choice(list(GENDERS)), rng.choice(list(CONSENTS))
            year, month, day = rng.randint(1940, 2006), rng.randint(1, 12), rng.randint(1, 28)
            csp, tier = rng.choice(["Cadre", "Employé", "Retraité", ""]), rng.choice(["gold", "silver", ""])
            updated = 1_700_000_000_000 + i * 1000 if i % 2 else None
            stamp = "" if updated is None else datetime.fromtimestamp(updated / 1000, UTC).isoformat()
            writer.writerow([cid, f"client.{i}@mail.example", gender, f"{day:02d}/{month:02d}/{year}", csp, tier,
                             consent, stamp, "+33 1 23 45 67 89"])  # fmt: skip
            expected[cid] = {
                "customer_id": cid, "email": f"client.{i}@mail.example", "gender": GENDERS[gender],
                "birth_year": year, "age_band": age_band(year, this_year), "csp": csp or None,
                "loyalty_tier": tier or None, "marketing_consent": CONSENTS[consent], "updated_at": updated,
            }  # fmt: skip
    return expected


def millis(value: Any) -> int:
    return round(value.timestamp() * 1000) if isinstance(value, datetime) else int(value)


def test_a_100k_line_export_imports_once_and_again_publishes_nothing(crm: Crm, tmp_path: Path) -> None:
    n = 100_000
    path = tmp_path / "export.csv"
    expected = export(path, n)
    mapping = tmp_path / "crm.toml"
    mapping.write_text(MAPPING, encoding="utf-8")

    started = time.monotonic()
    first = crm.run(str(path), "--mapping", str(mapping))
    elapsed = time.monotonic() - started
    ended_ms = int(time.time() * 1000)
    print(f"\n100,000-line import through the CLI: {elapsed:.1f} s")
    assert first.returncode == 0, first.stderr
    facts = summary(first.stdout)
    assert (facts["lines read"], facts["published"], facts["rejected"]) == (str(n), str(n), "0")
    assert facts["unchanged"] == "0"
    assert facts["file"].endswith("(delimiter ';', encoding utf-8-sig)")
    # stderr is not a terminal here: a plain line every 10%
    for pct in range(10, 101, 10):
        assert f"crm import: {n * pct // 100}/{n} lines ({pct}%)" in first.stderr, first.stderr
    assert "crm import: 0 record(s) of" in first.stderr

    records, table = crm.table(n)
    assert records == n and len(table) == n
    start_ms = ended_ms - int(elapsed * 1000) - 1000
    for cid, want in expected.items():
        got = {**table[cid], "updated_at": millis(table[cid]["updated_at"])}
        if want["updated_at"] is None:  # the import's time
            assert start_ms <= got["updated_at"] <= ended_ms, cid
            want = {**want, "updated_at": got["updated_at"]}
        assert got == want, cid

    again = crm.run(str(path), "--mapping", str(mapping))
    assert again.returncode == 0, again.stderr
    assert (summary(again.stdout)["published"], summary(again.stdout)["unchanged"]) == ("0", str(n))
    assert crm.count() == n


def test_bad_lines_are_reported_one_by_one_and_the_rest_imported(crm: Crm, tmp_path: Path) -> None:
    n = 5_000
    bad = {"email": "not-an-email", "gender": "Mme", "birth_year": "31/31/1980", "marketing_consent": "peut-être",
           "updated_at": "hier", "customer_id": "C {i}"}  # fmt: skip
    kinds = list(bad)
    header = ["customer_id", "email", "gender", "birth_year", "csp", "loyalty_tier", "marketing_consent", "updated_at"]
    wrong: dict[int, str] = {}
    with open(tmp_path / "export.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(n):
            line = i + 2
            row = {"customer_id": f"C{i}", "email": f"c{i}@mail.example", "gender": "F", "birth_year": "1980",
                   "csp": "", "loyalty_tier": "", "marketing_consent": "yes", "updated_at": ""}  # fmt: skip
            if i % 100 == 37:  # 1%
                kind = kinds[len(wrong) % len(kinds)]
                row[kind] = bad[kind].format(i=i)
                wrong[line] = kind
            writer.writerow([row[h] for h in header])
    errors = tmp_path / "errors.csv"
    result = crm.run(str(tmp_path / "export.csv"), "--errors", str(errors), "--no-progress")
    assert result.returncode == 2, result.stderr
    facts = summary(result.stdout)
    assert (facts["lines read"], facts["published"], facts["rejected"]) == (str(n), str(n - 50), "50")
    assert "crm import:" not in result.stderr.replace("crm import: 50 line(s) rejected", "")  # --no-progress
    with open(errors, encoding="utf-8", newline="") as f:
        reported = list(csv.DictReader(f))
    assert {int(r["line"]): r["column"] for r in reported} == wrong
    assert all(r["severity"] == "error" and r["reason"] for r in reported)
    first = min(wrong)
    assert f"line {first}: column '{wrong[first]}'" in result.stderr
    assert "... and 30 more problem(s) (all in" in result.stderr

    records, table = crm.table(n - 50)
    assert records == n - 50
    assert set(table) == {f"C{i}" for i in range(n) if i + 2 not in wrong}


def test_a_wrong_header_publishes_nothing(crm: Crm, tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text("Client ID,Mail,Opt-in\nC1,a@b.example,oui\n", encoding="utf-8")
    result = crm.run(str(path))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "missing required field(s) customer_id, marketing_consent" in errors[0]
    assert "unknown column(s) 'Client ID', 'Mail', 'Opt-in'" in errors[0]
    assert crm.count() == 0
    mapped = crm.run(str(path), "--map", "Client ID=customer_id", "--map", "Opt-in=marketing_consent",
                     "--map", "Mail=email", "--dry-run")  # fmt: skip
    assert mapped.returncode == 0, mapped.stderr
    assert '"customer_id": "C1"' in mapped.stdout and "would publish  1" in mapped.stderr
    assert crm.count() == 0  # a dry run publishes nothing


def test_the_table_on_the_topic_decides_what_is_published(crm: Crm, tmp_path: Path) -> None:
    jan = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
    profile = dict.fromkeys(["email", "gender", "birth_year", "age_band", "csp", "loyalty_tier"])
    schema = load_catalog().schema_text("CrmProfile")
    produce_avro(crm.bootstrap, crm.registry, crm.topic, schema, [
        (cid, {**profile, "customer_id": cid, "marketing_consent": True, "updated_at": jan})
        for cid in ("SAME", "OLD", "CHANGED", "GONE")
    ] + [("GONE", None)])  # fmt: skip
    path = tmp_path / "export.csv"
    path.write_text("customer_id\tmarketing_consent\tupdated_at\n"
                    "SAME\tyes\t2024-01-01T00:00:00Z\nOLD\tno\t2023-12-31T23:59:59Z\nCHANGED\tno\t\n"
                    "GONE\tyes\t\nNEW\tyes\t\n", encoding="utf-8")  # fmt: skip
    errors = tmp_path / "errors.csv"
    result = crm.run(str(path), "--errors", str(errors))
    assert result.returncode == 0, result.stderr
    facts = summary(result.stdout)
    assert (facts["published"], facts["unchanged"]) == ("2", "1")
    assert facts["skipped"].startswith("2 (duplicate ids 0, older than the topic 1, erased 1)")
    assert "delimiter tab" in facts["file"]
    with open(errors, encoding="utf-8", newline="") as f:
        warned = {(r["line"], r["customer_id"], r["severity"]) for r in csv.DictReader(f)}
    assert warned == {("3", "OLD", "warning"), ("5", "GONE", "warning")}
    _, table = crm.table(5 + 2)
    assert table["CHANGED"]["marketing_consent"] is False and table["NEW"]["marketing_consent"] is True
    assert table["GONE"] is None  # the erasure stands


def test_an_import_killed_half_way_resumes_without_duplicates(crm: Crm, tmp_path: Path) -> None:
    n = 60_000
    path = tmp_path / "export.csv"
    expected = export(path, n, seed=3)
    (tmp_path / "crm.toml").write_text(MAPPING, encoding="utf-8")
    args = [str(path), "--mapping", str(tmp_path / "crm.toml")]
    command = [sys.executable, "-m", "passerelle", "crm", "import", "--topic", crm.topic, *args]
    # Killed once 1,000 records are on the topic (end offsets), before the end. By default librdkafka queues up to
    # 100,000 records locally, so the import can read every line before the idempotent producer's first
    # acknowledgement (a loaded run saw its first 1,000 published at 90% of the lines, then all of them at
    # once). A local queue of 2,000 keeps the reading at most 2,000 records ahead of the broker: the kill
    # lands with most of the file still to publish, however slow the machine.
    env = {**crm.env, "PASSERELLE_KAFKA_QUEUE_BUFFERING_MAX_MESSAGES": "2000"}
    log = (tmp_path / "import.log").open("w")
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    while proc.poll() is None and crm.count() < 1000:
        assert time.monotonic() < deadline, "no 1,000 records on the topic after 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "import.log").read_text()[-2000:]
    landed = crm.count()
    assert 0 < landed < n

    rest = crm.run(*args)
    assert rest.returncode == 0, rest.stderr
    facts = summary(rest.stdout)
    published, unchanged = int(facts["published"]), int(facts["unchanged"])
    assert published + unchanged == n and unchanged >= landed  # (a request in flight at the kill may land late)
    records, table = crm.table(n)
    assert records == n and set(table) == set(expected)  # every customer once: nothing published twice
