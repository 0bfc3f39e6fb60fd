"""The Data Query endpoints as a partner meets them, on the real broker and registry, against a DuckDB store
filled with a few rows: templates saved, versioned, listed, deleted; run in every format; the IQY file's URL
fetched as Excel would (no header, the run token in the URL); another partner and missing scopes refused."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openpyxl
import pytest
from fastapi.testclient import TestClient

from passerelle.cli import build_parser
from passerelle.connectors.partner_api.app import create_app
from passerelle.connectors.partner_api.config import ApiConfig
from passerelle.connectors.warehouse.sink import DEFAULT_TOPICS, SCHEMAS
from passerelle.connectors.warehouse.store import open_store
from passerelle.schemas.catalog import load_catalog
from tests.integration.api_helpers import api_topics, isolate_env, make_keys
from tests.integration.kafka_helpers import create_topics, produce_avro
from tests.records import enriched_hit

pytestmark = pytest.mark.integration
TODAY = datetime.now(UTC).date()
VISITS = {TODAY - timedelta(days=1): 3, TODAY - timedelta(days=2): 2}  # local (UTC) day -> visits
QUERY = {"site": "shop", "metrics": ["visits"], "dimensions": ["day"], "sort": [{"by": "day"}], "period": "last7"}


@dataclass
class Env:
    client: TestClient
    keys: dict[str, str]
    config: ApiConfig

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


def fill(url: str) -> None:
    store = open_store(url)
    with store.connect() as conn:
        conn.execute("INSERT INTO sites VALUES ('shop', 'UTC')")
        for day, count in VISITS.items():
            for n in range(count):
                at = datetime(day.year, day.month, day.day, 10, n, tzinfo=UTC)
                conn.execute(
                    "INSERT INTO visits (visit_id, site, visitor_id, started_at, last_hit_at, day, medium, hits, "
                    "orders, revenue) VALUES (?, 'shop', ?, ?, ?, ?, 'direct', 1, 0, 0.0)",
                    [f"v-{day}-{n}", f"visitor-{n}", at, at, day],
                )
    store.close()


@pytest.fixture(scope="module")
def env(kafka_bootstrap: str, schema_registry_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    topics = api_topics(kafka_bootstrap, f"q.{uuid.uuid4().hex[:8]}")
    url = f"duckdb:///{Path(tmp_path_factory.mktemp('warehouse')) / 'store.duckdb'}"
    fill(url)
    with pytest.MonkeyPatch.context() as mp:
        isolate_env(mp, kafka_bootstrap, schema_registry_url)
        keys = make_keys(topics.keys, (
            ("mailer", "mailer", ["query:read", "query:write"]),
            ("rival", "rival", ["query:read", "query:write"]),
            ("reader", "mailer", ["query:read"]),
            ("campaigner", "mailer", ["campaigns:read"]),
        ))  # fmt: skip
        config = ApiConfig(bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry_url, topics=topics,
                           warehouse_url=url, warehouse_sink=False)  # fmt: skip
        with TestClient(create_app(config)) as client:
            yield Env(client, keys, config)


def errors(response: Any) -> dict[str, str]:
    return {e["field"]: e["reason"] for e in response.json()["errors"]}


def expected_rows() -> list[list[Any]]:
    return [[day.isoformat(), count] for day, count in sorted(VISITS.items())]


@pytest.fixture(scope="module")
def template(env: Env) -> dict[str, Any]:
    made = env.client.post("/v1/query/templates", json={"name": "Visits by day", "query": QUERY},
                           headers=env.h("mailer"))  # fmt: skip
    assert made.status_code == 201, made.text
    return dict(made.json())


def test_an_adhoc_query_answers_json_with_the_query_and_the_resolved_period(env: Env) -> None:
    answer = env.client.post("/v1/query", json=QUERY, headers=env.h("reader"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["rows"] == expected_rows()
    assert body["period"]["start"] == (TODAY - timedelta(days=6)).isoformat()  # Matomo's last7 includes today
    assert body["period"]["end"] == TODAY.isoformat()
    assert body["query"]["metrics"] == ["visits"]


def test_bad_queries_periods_and_formats_are_400_naming_the_problem(env: Env) -> None:
    bad_metric = env.client.post("/v1/query", json={**QUERY, "metrics": ["visitz"]}, headers=env.h("reader"))
    assert bad_metric.status_code == 400 and "visitz" in errors(bad_metric)["query"]
    bad_period = env.client.post("/v1/query", json={**QUERY, "period": "someday"}, headers=env.h("reader"))
    assert bad_period.status_code == 400 and "someday" in errors(bad_period)["period"]
    bad_format = env.client.post("/v1/query?format=pdf", json=QUERY, headers=env.h("reader"))
    assert bad_format.status_code == 400 and "pdf" in errors(bad_format)["format"]
    saved = env.client.post("/v1/query/templates", json={"name": "x", "query": {**QUERY, "dimensions": ["colour"]}},
                            headers=env.h("mailer"))  # fmt: skip
    assert saved.status_code == 400 and "colour" in errors(saved)["query"]


def test_scopes_query_read_runs_query_write_saves(env: Env, template: dict[str, Any]) -> None:
    assert env.client.post("/v1/query", json=QUERY).status_code == 401
    assert env.client.post("/v1/query", json=QUERY, headers=env.h("campaigner")).status_code == 403
    refused = env.client.post("/v1/query/templates", json={"name": "n", "query": QUERY}, headers=env.h("reader"))
    assert refused.status_code == 403 and "query:write" in errors(refused)["authorization"]
    assert env.client.get("/v1/query/templates", headers=env.h("reader")).status_code == 200
    run = f"/v1/query/templates/{template['id']}/run"
    assert env.client.get(run, headers=env.h("campaigner")).status_code == 403


def test_create_list_update_and_delete_a_template(env: Env) -> None:
    c, h = env.client, env.h("mailer")
    made = c.post("/v1/query/templates", json={"name": "Draft", "query": {"metrics": ["visits"]}}, headers=h).json()
    assert made["version"] == 1 and made["query"]["period"] == "last7"  # the default period, relative
    tid = made["id"]
    assert tid in {t["id"] for t in c.get("/v1/query/templates", headers=h).json()["templates"]}
    changed = c.put(f"/v1/query/templates/{tid}", json={"name": "Final", "query": QUERY}, headers=h)
    assert changed.status_code == 200 and changed.json()["version"] == 2
    again = c.get(f"/v1/query/templates/{tid}", headers=h).json()
    assert (again["name"], again["version"], again["created_at"]) == ("Final", 2, made["created_at"])
    assert "token" not in again and "token_hash" not in again
    assert c.delete(f"/v1/query/templates/{tid}", headers=h).status_code == 204
    assert c.get(f"/v1/query/templates/{tid}", headers=h).status_code == 404
    assert c.get(made["links"]["json"]).status_code == 401  # its run URL is dead with it


def test_another_partners_template_is_never_read_changed_run_nor_deleted(env: Env, template: dict[str, Any]) -> None:
    c, rival, tid = env.client, env.h("rival"), template["id"]
    assert tid not in {t["id"] for t in c.get("/v1/query/templates", headers=rival).json()["templates"]}
    assert c.get(f"/v1/query/templates/{tid}", headers=rival).status_code == 403
    assert c.put(f"/v1/query/templates/{tid}", json={"name": "x", "query": QUERY}, headers=rival).status_code == 403
    assert c.delete(f"/v1/query/templates/{tid}", headers=rival).status_code == 403
    assert c.get(f"/v1/query/templates/{tid}/run", headers=rival).status_code == 403
    assert c.get("/v1/query/templates/0000000000000000/run", headers=rival).status_code == 404
    assert c.get(f"/v1/query/templates/{tid}/run?token=not-the-token").status_code == 401


def test_run_a_template_in_every_format(env: Env, template: dict[str, Any]) -> None:
    c, run = env.client, f"/v1/query/templates/{template['id']}/run"
    as_json = c.get(run, headers=env.h("reader")).json()
    assert as_json["rows"] == expected_rows()
    as_csv = c.get(f"{run}?format=csv", headers=env.h("reader"))
    assert as_csv.headers["content-disposition"] == 'attachment; filename="Visits-by-day.csv"'
    assert list(csv.reader(io.StringIO(as_csv.text)))[1:] == [[d, str(n)] for d, n in expected_rows()]
    as_xlsx = c.get(f"{run}?format=xlsx", headers=env.h("reader"))
    assert as_xlsx.headers["content-disposition"].endswith('.xlsx"')
    sheet = openpyxl.load_workbook(io.BytesIO(as_xlsx.content)).active
    assert sheet is not None
    cells = [[c.value for c in row] for row in sheet.iter_rows(min_row=2)]
    assert [[v.date() if isinstance(v, datetime) else v for v in r] for r in cells] == [
        [date.fromisoformat(d), n] for d, n in expected_rows()
    ]
    html = c.get(f"{run}?format=html", headers=env.h("reader"))
    assert html.headers["content-type"].startswith("text/html") and "<table" in html.text
    older = c.get(f"{run}?period={(TODAY - timedelta(days=2)).isoformat()},{(TODAY - timedelta(days=2)).isoformat()}",
                  headers=env.h("reader")).json()  # fmt: skip
    assert older["rows"] == [[(TODAY - timedelta(days=2)).isoformat(), 2]]  # ?period= overrides the default


def test_the_iqy_file_points_at_the_html_table_with_the_period_left_relative(env: Env, template: dict[str, Any]
                                                                             ) -> None:  # fmt: skip
    c = env.client
    assert c.get(f"/v1/query/templates/{template['id']}/run?format=iqy", headers=env.h("mailer")).status_code == 400
    iqy = c.get(template["links"]["iqy"])  # as the builder hands it out: no header, the token in the URL
    assert iqy.status_code == 200 and iqy.headers["content-disposition"].endswith('.iqy"')
    lines = iqy.content.decode().split("\r\n")
    assert lines[:2] == ["WEB", "1"]
    url = lines[2]
    assert "format=html" in url and "period=" not in url and "token=" in url
    parts = urlsplit(url)
    table = c.get(f"{parts.path}?{parts.query}")  # what Excel fetches at each refresh
    assert table.status_code == 200 and "<table" in table.text
    for day, count in VISITS.items():
        assert day.isoformat() in table.text and f">{count}<" in table.text
    renewed = c.post(f"/v1/query/templates/{template['id']}/token", headers=env.h("mailer"))
    assert renewed.status_code == 200
    assert c.get(f"{parts.path}?{parts.query}").status_code == 401  # the old token is revoked
    assert c.get(renewed.json()["links"]["html"]).status_code == 200
    template["links"] = renewed.json()["links"]


def query_cli(env: Env, *argv: str) -> tuple[int, str]:
    """``passerelle query ...`` parsed by the real parser, its HTTP client the app's (no port to bind)."""
    args = build_parser().parse_args(["query", *argv])
    env.client.headers["Authorization"] = f"Bearer {env.keys['reader']}"
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = args.func(args, client=env.client)
    finally:
        del env.client.headers["Authorization"]
    return code, out.getvalue()


def test_cli_runs_a_template_and_an_adhoc_query(env: Env, template: dict[str, Any], tmp_path: Path) -> None:
    code, out = query_cli(env, "run", template["id"], "--format", "json")
    assert code == 0 and json.loads(out)["rows"] == expected_rows()
    target = tmp_path / "visits.csv"
    code, _ = query_cli(env, "run", "--query", json.dumps(QUERY), "--format", "csv", "--out", str(target))
    assert code == 0 and list(csv.reader(target.open()))[1:] == [[d, str(n)] for d, n in expected_rows()]
    code, out = query_cli(env, "run", template["id"], "--period", "yesterday")
    assert code == 0 and (TODAY - timedelta(days=1)).isoformat() in out and "Visits" in out
    code, out = query_cli(env, "templates")
    assert code == 0 and template["id"] in out


def test_with_duckdb_the_api_runs_the_sink_and_new_hits_are_queryable(
    env: Env, kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    topics = {role: f"wh.q.{role}.{run}" for role in DEFAULT_TOPICS}
    create_topics(kafka_bootstrap, dict.fromkeys(topics.values(), 1))
    config = replace(env.config, warehouse_url=f"duckdb:///{tmp_path / 'live.duckdb'}", warehouse_sink=True,
                     warehouse_topics=",".join(f"{r}={t}" for r, t in topics.items()),
                     warehouse_group_id=f"passerelle-warehouse-q-{run}")  # fmt: skip
    now_ms = int(time.time() * 1000)
    hits = [enriched_hit("v1", now_ms - 2000 + n, event_id=f"live-{run}-{n}") for n in range(3)]
    with TestClient(create_app(config)) as client:
        produce_avro(kafka_bootstrap, schema_registry_url, topics["hits"],
                     load_catalog().schema_text(SCHEMAS["hits"]), [(h["visitor_id"], h) for h in hits])  # fmt: skip
        body = {"metrics": ["hits", "visits"], "period": "last7"}
        deadline, rows = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            answer = client.post("/v1/query", json=body, headers=env.h("reader"))
            assert answer.status_code == 200, answer.text
            rows = answer.json()["rows"]
            if rows and rows[0][0] == 3:
                break
            time.sleep(0.3)
        assert rows == [[3, 1]]
        assert client.get("/healthz").json() == {"status": "ok", "warehouse_sink": "running"}

        # The Markov job's run, published on attribution.markov, is read back by the same sink and served.
        missing = client.get("/v1/attribution/markov", headers=env.h("reader"))
        assert missing.status_code == 404 and "passerelle attribution markov" in errors(missing)["period"]
        credits = [{"channel": "search", "removal_effect": 0.6, "credit": 0.75, "conversions": 3.0},
                   {"channel": "email", "removal_effect": 0.2, "credit": 0.25, "conversions": 1.0}]  # fmt: skip
        produce_avro(kafka_bootstrap, schema_registry_url, topics["markov"],
                     load_catalog().schema_text(SCHEMAS["markov"]), [("last-30-days", {
                         "period": "last-30-days", "period_start": now_ms - 30 * 86_400_000, "period_end": now_ms,
                         "computed_at": now_ms, "journeys": 12, "conversions": 4, "channels": credits})])  # fmt: skip
        deadline = time.monotonic() + 60
        served = client.get("/v1/attribution/markov", headers=env.h("reader"))
        while served.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
            served = client.get("/v1/attribution/markov", headers=env.h("reader"))
        assert served.status_code == 200, served.text
        body = served.json()
        assert body["query"]["period"] == "last-30-days" and body["query"]["journeys"] == 12
        assert body["rows"] == [["search", 0.6, 0.75, 3.0], ["email", 0.2, 0.25, 1.0]]
        table = client.get("/v1/attribution/markov?period=last-30-days&format=csv", headers=env.h("reader"))
        assert list(csv.reader(io.StringIO(table.text.lstrip("\ufeff"))))[1] == ["search", "0.6", "0.75", "3.0"]
        other = client.get("/v1/attribution/markov?period=march", headers=env.h("reader"))
        assert other.status_code == 404 and "last-30-days" in errors(other)["period"]
        assert client.get("/v1/attribution/markov", headers=env.h("campaigner")).status_code == 403
