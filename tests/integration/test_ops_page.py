"""The operations page and the Grafana dashboard against a real Prometheus, and the page in a real browser.

One module-scoped setup: Debian's Prometheus (and Alertmanager) started with the
monitoring's own functions (``deploy/local/monitoring.py``: the rules of
``deploy/monitoring/rules.yml``, a 0.5 s scrape, every alert's ``for`` at 1 s),
scraping a small exporter in this process that serves the passerelle metric
families through prometheus_client and moves them as traffic would, plus one
target that does not answer (a stopped processor: ``ProcessorDown`` fires). The
partner API runs on the real broker and registry with its operations proxy
pointing at that Prometheus. Screenshots go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from passerelle.connectors.monitoring.grafana import FIRING_ALERTS, OUTPUT
from passerelle.connectors.monitoring.panels import PANELS
from passerelle.connectors.partner_api import ops_routes
from passerelle.connectors.partner_api.app import create_app
from passerelle.connectors.partner_api.config import ApiConfig
from passerelle.deploy.local import monitoring
from passerelle.deploy.local.stack import free_port
from tests.integration.api_helpers import api_topics, isolate_env, make_keys, served
from tests.integration.test_query_pages import CHROMIUM, CHROMIUM_ARGS, SHOTS

pytestmark = pytest.mark.integration
SCRAPE_S = 0.5


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` with its last answer."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def start_exporter(port: int, stop: threading.Event) -> None:
    """The passerelle metric families on ``port``, moving every 0.1 s like a processor, the collector, the bridge."""
    reg = CollectorRegistry()
    records_in = Counter("passerelle_records_in", "", ["processor", "topic"], registry=reg)
    records_out = Counter("passerelle_records_out", "", ["processor", "topic"], registry=reg)
    broker_in = Counter("kafka_server_brokertopicmetrics_bytesinpersec", "", ["topic"], registry=reg)
    lag = Gauge("passerelle_consumer_group_lag_records", "", ["group", "topic", "partition"], registry=reg)
    lag_s = Gauge("passerelle_consumer_group_lag_seconds", "", ["group", "topic", "partition"], registry=reg)
    hop = Histogram("passerelle_event_to_emit_seconds", "", ["processor"], registry=reg)
    flow = Histogram("passerelle_flow_latency_seconds", "", ["flow"], registry=reg,
                     buckets=(0.1, 0.25, 1, 2.5, 60, 1800, 3600))  # fmt: skip
    dead = Counter("passerelle_dead_letters", "", ["processor", "stage"], registry=reg)
    partner = Counter("passerelle_emailing_requests", "", ["outcome"], registry=reg)
    answers = Histogram("passerelle_collector_request_seconds", "", ["endpoint", "status"], registry=reg)
    server, _ = start_http_server(port, addr="127.0.0.1", registry=reg)

    def move() -> None:
        n = 0
        while not stop.wait(0.1):
            n += 1
            for processor, source, sink in (("enrichment", "hits.raw", "hits.enriched"),
                                            ("carts", "hits.enriched", "carts.abandoned")):  # fmt: skip
                records_in.labels(processor, source).inc(10)
                records_out.labels(processor, sink).inc(7)
                hop.labels(processor).observe(0.02 if processor == "enrichment" else 0.4)
            broker_in.labels("hits.raw").inc(4096)
            lag.labels("enrichment", "hits.raw", "0").set(100 + n % 7)
            lag_s.labels("enrichment", "hits.raw", "0").set(2.5)
            for name, seconds in (("hit_to_enriched", 0.2), ("hit_to_abandoned_cart", 1700),
                                  ("abandonment_to_partner", 2)):  # fmt: skip
                flow.labels(name).observe(seconds)
            dead.labels("enrichment", "deserialize").inc()
            partner.labels("delivered").inc(3)
            partner.labels("rejected").inc()
            for status in ("200", "400", "503"):
                answers.labels("/hit", status).observe(0.001)

    threading.Thread(target=move, daemon=True).start()
    stop.wait()
    server.shutdown()


@dataclass
class Ops:
    mon: monitoring.Monitoring
    base: str
    keys: dict[str, str]

    def h(self, who: str = "ops") -> dict[str, str]:
        return {"X-Api-Key": self.keys[who]}

    def prometheus(self, endpoint: str, params: dict[str, str]) -> dict[str, Any]:
        """Prometheus itself, as Grafana would ask it."""
        answer = httpx.get(f"{self.mon.prometheus_url}/api/v1/{endpoint}", params=params, timeout=10)
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["data"])

    def proxied(self, endpoint: str, params: dict[str, str]) -> httpx.Response:
        return httpx.get(f"{self.base}/pages/operations/api/{endpoint}", params=params, headers=self.h(), timeout=10)


def finite(values: list[str]) -> list[float]:
    return [float(v) for v in values if v not in ("NaN", "+Inf", "-Inf")]


@pytest.fixture(scope="module")
def ops(kafka_bootstrap: str, schema_registry_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    root = tmp_path_factory.mktemp("ops-monitoring")
    mon = monitoring.Monitoring(root=root, prometheus_port=free_port(), alertmanager_port=free_port(),
                                exporter_port=free_port(), scrape_interval_s=SCRAPE_S, alert_for="1s")  # fmt: skip
    exporter_port, stop = free_port(), threading.Event()
    threading.Thread(target=start_exporter, args=(exporter_port, stop), daemon=True).start()
    mon.targets_dir.mkdir(parents=True)
    (mon.targets_dir / "ops.json").write_text(json.dumps([
        {"targets": [f"127.0.0.1:{exporter_port}"], "labels": {"command": "ops_fixture"}},
        {"targets": [f"127.0.0.1:{free_port()}"], "labels": {"command": "stopped_app"}},  # nobody listens
    ]))  # fmt: skip
    run = uuid.uuid4().hex[:8]
    try:
        monitoring.start(mon)
        with pytest.MonkeyPatch.context() as mp:
            isolate_env(mp, kafka_bootstrap, schema_registry_url)
            topics = api_topics(kafka_bootstrap, f"ops.{run}")
            keys = make_keys(topics.keys, (("ops", "operator", ["monitoring:read"]),
                                           ("viewer", "mailer", ["query:read"])))  # fmt: skip
            config = ApiConfig(bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry_url,
                               topics=topics, prometheus_url=mon.prometheus_url)  # fmt: skip
            with served(create_app(config)) as base:
                yield Ops(mon, base, keys)
    finally:
        stop.set()
        monitoring.stop(mon)


PAGE_RANGE_S, PAGE_STEP_S = 300, 3
"""The range the browser test opens the page with, and the step the page takes for it (operations.js:
``Math.round(range / POINTS)``, POINTS = 120)."""


@pytest.fixture(scope="module")
def warm(ops: Ops) -> Ops:
    """Every panel has a line (two points of a range, at the page's step) through the proxy, and ProcessorDown fires.

    At the page's step, not a finer one: with two points 1 s apart, the page's 3 s step could still find one
    point only and draw no line (seen once in CI).
    """
    for panel in PANELS:

        def lines(promql: str = panel.query) -> bool:
            end = float(int(time.time()))
            answer = ops.proxied("query_range", {"query": promql, "start": str(end - PAGE_RANGE_S), "end": str(end),
                                                 "step": str(PAGE_STEP_S)})  # fmt: skip
            assert answer.status_code == 200, answer.text
            return any(len(finite([v for _, v in s["values"]])) >= 2 for s in answer.json()["data"]["result"])

        wait_for(f"a line of panel {panel.id} ({panel.query})", lines)
    wait_for("ProcessorDown firing", lambda: ops.prometheus("query", {"query": FIRING_ALERTS})["result"])
    return ops


def grafana_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of the committed Grafana dashboard."""
    board = json.loads(OUTPUT.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


def test_every_panel_and_grafana_query_returns_data(warm: Ops) -> None:
    """Each query of the Grafana JSON answers numbers from Prometheus, and the same through the page's proxy."""
    targets = grafana_targets()
    assert {expr for _, expr in targets} == {p.query for p in PANELS} | {FIRING_ALERTS}
    for title, expr in targets:
        direct = warm.prometheus("query", {"query": expr})["result"]
        assert finite([s["value"][1] for s in direct]), f"{title}: {expr} answered {direct}"
        proxied = warm.proxied("query", {"query": expr})
        assert proxied.status_code == 200 and proxied.json()["status"] == "success", proxied.text
        assert finite([s["value"][1] for s in proxied.json()["data"]["result"]]), f"{title} through the proxy"
    answer = warm.proxied("query", {"query": 'ALERTS{alertname="ProcessorDown"}'}).json()["data"]["result"]
    assert [s["metric"]["command"] for s in answer] == ["stopped_app"]


def test_the_proxy_forwards_only_its_two_endpoints_to_keys_with_the_scope(warm: Ops) -> None:
    url = f"{warm.base}/pages/operations/api/query"
    assert httpx.get(url, params={"query": "up"}, timeout=10).status_code == 401
    refused = httpx.get(url, params={"query": "up"}, headers=warm.h("viewer"), timeout=10)
    assert refused.status_code == 403 and "monitoring:read" in refused.text
    for endpoint in ("series", "admin/tsdb/delete_series", "../../-/quit"):
        answer = httpx.get(f"{warm.base}/pages/operations/api/{endpoint}", headers=warm.h(), timeout=10)
        assert answer.status_code in (404, 405), (endpoint, answer.text)
    extra = warm.proxied("query", {"query": "up", "match[]": "up"})
    assert extra.status_code == 400 and extra.json()["errors"][0]["field"] == "match[]"
    bad = warm.proxied("query", {"query": "sum(("})
    assert bad.status_code == 400 and "parse error" in bad.json()["errors"][0]["reason"]
    wide = warm.proxied("query_range", {"query": "up", "start": "0", "end": "86400", "step": "1"})
    assert wide.status_code == 400 and "step" in wide.json()["errors"][0]["field"]
    assert httpx.get(f"{warm.base}/pages/operations/panels", timeout=10).json()["alerts_query"] == FIRING_ALERTS


def test_the_proxy_checks_what_it_forwards() -> None:
    refused = ops_routes.ProxyRefused
    with pytest.raises(refused, match="only query, query_range"):
        ops_routes.forwarded_params("series", {"match[]": "up"})
    with pytest.raises(refused, match="required"):
        ops_routes.forwarded_params("query_range", {"query": "up", "start": "1", "end": "2", "step": " "})
    with pytest.raises(refused, match="end >= start"):
        ops_routes.forwarded_params("query_range", {"query": "up", "start": "2", "end": "1", "step": "1"})
    given = {"query": "up", "start": "1", "end": "61", "step": "15"}
    assert ops_routes.forwarded_params("query_range", given) == given


def test_an_unreachable_prometheus_is_a_clear_502() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    answer = asyncio.run(ops_routes.forward(dead, "query", {"query": "up"}, timeout_s=2))
    assert answer.status == 502
    reason = answer.body["errors"][0]["reason"]
    assert dead in reason and "PASSERELLE_API_PROMETHEUS_URL" in reason


# --- the page in a browser -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, driven by Playwright (as in test_query_pages: missing is a failure, never a skip)."""
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    assert executable is not None, f"no chromium at {CHROMIUM} nor on PATH: apt-get install chromium"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def legend(fmt: str, metric: dict[str, str]) -> str:
    """The page's name of a series (Grafana's legend format, filled with its labels)."""
    return re.sub(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt).strip()


def test_the_page_draws_every_panel_with_prometheus_numbers_and_lists_the_alerts(browser: Any, warm: Ops) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.goto(f"{warm.base}/pages/operations?range={PAGE_RANGE_S}&refresh=5")
    page.fill("#api-key", warm.keys["viewer"])  # a partner's query key is not an operator's
    page.click("#key-form button[type=submit]")
    page.wait_for_function("() => document.getElementById('key-error').textContent.includes('monitoring:read')")
    page.fill("#api-key", warm.keys["ops"])
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("main:not([hidden])")
    page.wait_for_function("() => Number(document.body.dataset.refreshes || 0) >= 1", timeout=30_000)

    for panel in PANELS:
        paths = page.locator(f"#chart-{panel.id} g.series path").count()
        assert paths >= 1, f"panel {panel.id}: no line drawn"

    def shown_equals_prometheus() -> bool:
        """Each table's values, read at once with the instant they are of, equal Prometheus's at that instant."""
        tables = page.evaluate("""() => [...document.querySelectorAll('table.result[id^="table-"]')].map(t => ({
            id: t.id.slice(6), time: t.dataset.time,
            rows: [...t.querySelectorAll('tr[data-series]')].map(r => [r.dataset.series,
                   r.querySelector('td[data-value]').dataset.value,
                   r.querySelector('td[data-value]').textContent])}))""")
        assert {t["id"] for t in tables} == {p.id for p in PANELS}
        for shown in tables:
            panel = next(p for p in PANELS if p.id == shown["id"])
            answer = warm.prometheus("query", {"query": panel.query, "time": shown["time"]})["result"]
            expected = sorted((legend(panel.legend, s["metric"]), s["value"][1]) for s in answer)
            if sorted((name, raw) for name, raw, _ in shown["rows"]) != expected:
                return False
            assert all(text for _, _, text in shown["rows"])
        return True

    for _ in range(4):  # a sample landing just after the page's instant may change an answer: take the next refresh
        if shown_equals_prometheus():
            break
        previous = int(page.evaluate("document.body.dataset.refreshes"))
        page.wait_for_function(f"() => Number(document.body.dataset.refreshes) > {previous}", timeout=30_000)
    else:
        raise AssertionError("the page's numbers never equalled Prometheus's at the same instant")

    lag = page.locator("#table-lag_seconds tr[data-series='enrichment hits.raw'] td[data-value]")
    assert lag.text_content() == "2.5 s"
    shown = page.evaluate("""() => ({time: document.body.dataset.time, alerts: [...document.querySelectorAll(
        '#alerts-table tr[data-alert]')].map(r => r.dataset.alert)})""")  # the list and its instant, read at once
    firing = warm.prometheus("query", {"query": FIRING_ALERTS, "time": shown["time"]})["result"]
    assert "ProcessorDown" in shown["alerts"]
    assert sorted(shown["alerts"]) == sorted(s["metric"]["alertname"] for s in firing)
    assert "stopped_app" in page.locator("#alerts-table tr[data-alert='ProcessorDown']").first.text_content()
    refreshed = int(page.evaluate("document.body.dataset.refreshes"))  # and again by itself, no reload
    page.wait_for_function(f"() => Number(document.body.dataset.refreshes) > {refreshed}", timeout=30_000)
    nav = page.locator("header nav a").all_text_contents()
    assert nav == ["Operations"]  # no store configured: the query pages are not offered
    page.screenshot(path=str(SHOTS / "operations.png"), full_page=True)
    context.close()
    outside = [url for url in fetched if not url.startswith(f"{warm.base}/") and not url.startswith("data:")]
    assert not outside, f"the page fetched from outside the API: {outside}"
    assert not problems, f"script errors: {problems}"
