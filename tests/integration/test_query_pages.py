"""The Data Query web pages in a real browser (Debian's chromium driven by Playwright), served by uvicorn, on the
real broker and registry, the API running its warehouse sink into DuckDB.

A user pastes a key, builds a template (metrics, dimensions, filter, sort, period), runs it, saves it, copies its
links, changes it (version 2); opens the dashboard, whose tables show exactly what the API answers for the same
queries; then a partner declares a campaign and its hits arrive: the dashboard shows them without a reload.
Screenshots go to ``artifacts/screenshots/`` at the repository root.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from passerelle.connectors.partner_api.app import create_app
from passerelle.connectors.partner_api.config import ApiConfig
from passerelle.connectors.warehouse.sink import DEFAULT_TOPICS, SCHEMAS
from passerelle.connectors.warehouse.store import open_store
from passerelle.schemas.catalog import load_catalog
from tests.integration.api_helpers import api_topics, isolate_env, make_keys, served
from tests.integration.kafka_helpers import create_topics, produce_avro
from tests.records import enriched_hit

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
SITE = "shop.example"


@dataclass
class Stack:
    base: str
    keys: dict[str, str]
    bootstrap: str
    registry: str
    hits_topic: str

    def h(self, who: str) -> dict[str, str]:
        return {"X-Api-Key": self.keys[who]}

    def query(self, body: dict[str, Any], who: str = "viewer") -> dict[str, Any]:
        answer = httpx.post(f"{self.base}/v1/query", json=body, headers=self.h(who), timeout=30)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def declare(self, key: str, name: str) -> None:
        """A partner declares a campaign through the API (on the topic the store's sink reads)."""
        body = {"key": key, "name": name, "landing_url": f"https://{SITE}/{key.lower()}"}
        declared = httpx.post(f"{self.base}/v1/campaigns", headers=self.h("declarer"), json=body, timeout=30)
        assert declared.status_code == 201, declared.text

    def wait_for(self, body: dict[str, Any], rows: list[list[Any]], timeout_s: float = 60) -> None:
        """Until the API answers ``rows`` for ``body`` (the sink is asynchronous)."""
        deadline, got = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            got = self.query(body)["rows"]
            if got == rows:
                return
            time.sleep(0.2)
        raise AssertionError(f"the store did not reach {rows} within {timeout_s} s for {body} (last: {got})")

    def produce_hits(self, hits: list[dict[str, Any]]) -> None:
        schema = load_catalog().schema_text(SCHEMAS["hits"])
        produce_avro(self.bootstrap, self.registry, self.hits_topic, schema, [(h["visitor_id"], h) for h in hits])


def undeclared_hit(visitor: str, at: int, event_id: str, tag: str) -> dict[str, Any]:
    """A hit whose campaign tag nobody declared, as the enrichment flags it."""
    hit = enriched_hit(visitor, at, event_id=event_id, campaign=tag)
    return {**hit, "declared_campaign": None, "campaign_undeclared": True}


def fill_remarketing_and_postview(url: str, now: datetime) -> None:
    """Rows of the topics no test here produces (carts, messages, deliveries, post-view), written before the sink."""
    store = open_store(url)
    day = now.date()
    with store.connect() as conn:
        for n in range(3):
            conn.execute("INSERT INTO carts_abandoned (event_id, episode_id, site, visitor_id, customer_id, value, "
                         "currency, detected_at, day) VALUES (?, ?, ?, ?, ?, 30.0, 'EUR', ?, ?)",
                         [f"cart-{n}", f"ep-{n}", SITE, f"cv-{n}", f"cust-{n}", now, day])  # fmt: skip
        for n in range(2):
            conn.execute("INSERT INTO remarketing_messages (message_id, sequence_id, step, customer_id, site, "
                         "has_promotion, created_at, day) VALUES (?, ?, 1, ?, ?, false, ?, ?)",
                         [f"msg-{n}", f"seq-{n}", f"cust-{n}", SITE, now, day])  # fmt: skip
        conn.execute("INSERT INTO remarketing_deliveries (message_id, sequence_id, step, customer_id, partner, "
                     "outcome, latency_ms, decided_at) VALUES ('msg-0', 'seq-0', 1, 'cust-0', 'mailer', 'delivered', "
                     "40, ?)", [now])  # fmt: skip
        for n, kind in enumerate(("visit", "visit", "order")):
            conn.execute("INSERT INTO postview (postview_id, kind, visitor_id, customer_id, site, campaign_key, "
                         "event_time, day, visit_id, order_id, revenue, currency) VALUES (?, ?, ?, NULL, ?, "
                         "'EREC-100', ?, ?, ?, ?, ?, 'EUR')",
                         [f"pv-{n}", kind, f"pv-visitor-{n}", SITE, now, day, f"pv-visitor-{n}:1",
                          "pv-order" if kind == "order" else None, 20.0 if kind == "order" else None])  # fmt: skip
    store.close()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, schema_registry_url: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:  # fmt: skip
    run = uuid.uuid4().hex[:8]
    topics = api_topics(kafka_bootstrap, f"pages.{run}")
    warehouse = {role: f"wh.pages.{role}.{run}" for role in DEFAULT_TOPICS if role != "campaigns"}
    create_topics(kafka_bootstrap, dict.fromkeys(warehouse.values(), 1))
    warehouse["campaigns"] = topics.campaigns  # the store's campaigns are the ones partners declare in the API
    url = f"duckdb:///{tmp_path_factory.mktemp('pages') / 'store.duckdb'}"
    now = datetime.now(UTC)
    fill_remarketing_and_postview(url, now)
    with pytest.MonkeyPatch.context() as mp:
        isolate_env(mp, kafka_bootstrap, schema_registry_url)
        keys = make_keys(topics.keys, (
            ("analyst", "mailer", ["query:read", "query:write"]),
            ("viewer", "mailer", ["query:read"]),
            ("declarer", "mailer", ["campaigns:write", "campaigns:read"]),
        ))  # fmt: skip
        config = ApiConfig(bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry_url, topics=topics,
                           warehouse_url=url, warehouse_sink=True,
                           warehouse_topics=",".join(f"{r}={t}" for r, t in warehouse.items()),
                           warehouse_group_id=f"passerelle-warehouse-pages-{run}")  # fmt: skip
        with served(create_app(config)) as base:
            found = Stack(base, keys, kafka_bootstrap, schema_registry_url, warehouse["hits"])
            found.declare("EREC-100", "Newsletter")
            at = int(now.timestamp() * 1000) - 5000
            found.produce_hits([
                enriched_hit("direct-1", at, event_id=f"d1-{run}"),
                enriched_hit("direct-1", at + 1, event_id=f"d2-{run}"),
                undeclared_hit("spring-1", at + 2, f"s1-{run}", "spring_sale"),
                enriched_hit("news-1", at + 3, event_id=f"n1-{run}", campaign="EREC-100", campaign_name="Newsletter"),
                enriched_hit("news-1", at + 4, event_id=f"n2-{run}", campaign="EREC-100", campaign_name="Newsletter",
                             order=("o-1", 42.5)),
            ])  # fmt: skip
            found.wait_for({"metrics": ["hits"], "period": "today"}, [[5]])
            found.wait_for({"metrics": ["postview_visits"], "dimensions": ["campaign_name"], "period": "today"},
                           [["Newsletter", 2]])  # the declaration reached the store  # fmt: skip
            yield found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, driven by Playwright: missing is a failure (CI installs it), never a skip."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: pip install -e '.[dev]' (never `playwright install`)")
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if executable is None:
        pytest.fail(f"no chromium at {CHROMIUM} nor on PATH: apt-get install chromium (./dev does); the page tests "
                    "need it and never download a browser")  # fmt: skip
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    """A fresh tab (its own sessionStorage); every request it makes is recorded, to check none leaves the API."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.base)
    tab = context.new_page()
    fetched: list[str] = []
    tab.on("request", lambda request: fetched.append(request.url))
    problems: list[str] = []
    tab.on("pageerror", lambda err: problems.append(str(err)))
    tab.on("console", lambda msg: problems.append(msg.text)
           if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)  # fmt: skip
    yield tab
    outside = [url for url in fetched if not url.startswith(f"{stack.base}/") and not url.startswith("data:")]
    context.close()
    assert not outside, f"the page fetched from outside the API: {outside}"
    assert not problems, f"script errors: {problems}"  # HTTP refusals the page shows are not script errors


def sign_in(page: Any, stack: Stack, path: str, who: str) -> None:
    page.goto(f"{stack.base}{path}")
    page.fill("#api-key", stack.keys[who])
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("main:not([hidden])")


def table(page: Any, selector: str) -> dict[str, Any]:
    """A rendered result table as the API's JSON shape: column names and raw row values (plus derived columns)."""
    return dict(page.eval_on_selector(selector, """t => ({
        columns: [...t.querySelectorAll("thead th[data-name]")].map(th => th.dataset.name),
        rows: [...t.querySelectorAll("tbody tr:not(.empty)")].map(tr =>
            [...tr.querySelectorAll("td[data-value]")].map(td => JSON.parse(td.dataset.value))),
        text: [...t.querySelectorAll("tbody tr:not(.empty)")].map(tr =>
            [...tr.querySelectorAll("td")].map(td => td.textContent)),
        derived: [...t.querySelectorAll("tbody tr:not(.empty)")].map(tr => Object.fromEntries(
            [...tr.querySelectorAll("td[data-derived]")].map(td => [td.dataset.derived, td.textContent]))),
    })"""))  # fmt: skip


def same_as_api(rendered: dict[str, Any], answer: dict[str, Any]) -> None:
    assert rendered["columns"] == [c["name"] for c in answer["columns"]]
    assert rendered["rows"] == answer["rows"]


def test_the_pages_ask_for_a_key_and_say_what_is_wrong_with_it(page: Any, stack: Stack) -> None:
    response = page.goto(f"{stack.base}/pages/builder")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert page.is_hidden("main")  # nothing shown before a key
    page.fill("#api-key", "0123456789abcdef.not-a-secret")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#key-error').textContent.includes('not valid')")
    page.fill("#api-key", stack.keys["declarer"])
    page.click("#key-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#key-error').textContent.includes('query:read')")
    assert page.is_hidden("main")
    page.fill("#api-key", stack.keys["viewer"])
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("main:not([hidden])")
    assert stack.keys["viewer"].split(".")[0] in page.text_content("#key-status")
    page.goto(f"{stack.base}/pages/dashboard")  # the key is kept for the tab: no second prompt
    page.wait_for_selector("main:not([hidden])")
    assert page.evaluate("sessionStorage.length") == 1
    page.click("#sign-out")
    page.wait_for_selector("#api-key")
    assert page.evaluate("sessionStorage.length") == 0


def test_build_run_save_and_change_a_template_and_copy_its_links(page: Any, stack: Stack) -> None:
    sign_in(page, stack, "/pages/builder", "analyst")
    page.wait_for_selector("body[data-ready=true]")
    page.check("#metrics input[value=hits]")  # visits is ticked already; metrics go in the catalog's order
    page.check("#metrics input[value=orders]")
    page.check("#dimensions input[value=campaign]")
    page.check("#dimensions input[value=medium]")
    page.click("#add-filter")
    page.select_option("#filters .filter .f-dimension", "medium")
    page.select_option("#filters .filter .f-op", "in")
    page.fill("#filters .filter .f-value", "email, direct")
    page.select_option("#sort", "hits")
    page.check("#sort-desc")
    page.fill("#period", "today")
    with page.expect_request(lambda r: r.url.endswith("/v1/query") and r.method == "POST") as sent:
        page.click("#run")
    page.wait_for_selector("#result-panel:not([hidden])")
    query = sent.value.post_data_json
    assert query == {"metrics": ["hits", "visits", "orders"], "dimensions": ["campaign", "medium"],
                     "filters": [{"dimension": "medium", "op": "in", "value": ["email", "direct"]}],
                     "sort": [{"by": "hits", "desc": True}], "period": "today"}  # fmt: skip
    answer = stack.query(query)
    rendered = table(page, "#result")
    same_as_api(rendered, answer)
    assert rendered["rows"] == [
        ["EREC-100", "email", 2, 1, 1],
        [None, "direct", 2, 1, 0],
        ["spring_sale", "email", 1, 1, 0],
    ]  # hand-computed from the hits produced
    assert rendered["text"][1] == ["", "direct", "2", "1", "0"]
    assert answer["period"]["start"] in page.text_content("#result-period")

    page.fill("#template-name", "Campaign traffic today")
    page.click("#save")
    page.wait_for_function("() => document.querySelector('#save-status').textContent.includes('version 1')")
    page.screenshot(path=str(SHOTS / "builder-saved.png"), full_page=True)
    rest, iqy = page.input_value("#link-json"), page.input_value("#link-iqy")
    assert rest.startswith(f"{stack.base}/v1/query/templates/") and "token=" in rest
    by_link = httpx.get(rest, timeout=30)  # as an import tool fetches it: no key, the run token in the URL
    assert by_link.status_code == 200 and by_link.json()["rows"] == rendered["rows"]
    excel = httpx.get(iqy, timeout=30)
    assert excel.status_code == 200 and excel.content.startswith(b"WEB\r\n1\r\n")
    page.click("#links tr:first-child button")  # Copy the REST link
    assert page.evaluate("navigator.clipboard.readText()") == rest

    template_id = page.input_value("#template-select")
    page.check("#dimensions input[value=campaign_key]")
    page.click("#save")  # the open template: a new version, the same links
    page.wait_for_function("() => document.querySelector('#save-status').textContent.includes('version 2')")
    saved = httpx.get(f"{stack.base}/v1/query/templates/{template_id}", headers=stack.h("viewer"), timeout=30).json()
    assert (saved["name"], saved["version"]) == ("Campaign traffic today", 2)
    assert saved["query"] == {**query, "dimensions": ["campaign", "medium", "campaign_key"]}
    assert httpx.get(rest, timeout=30).json()["columns"][2]["name"] == "campaign_key"  # same URL, new definition

    page.reload()  # reopening it fills the form back
    page.wait_for_selector("body[data-ready=true]")
    page.select_option("#template-select", template_id)
    page.wait_for_function("() => document.querySelector('#template-info').textContent.includes('version 2')")
    assert page.input_value("#template-name") == "Campaign traffic today"
    assert page.text_content("#dimension-order") == "campaignmediumcampaign_key"
    assert page.input_value("#link-json") == rest  # kept for this tab


def test_a_refused_query_shows_the_apis_reason(page: Any, stack: Stack) -> None:
    sign_in(page, stack, "/pages/builder", "viewer")
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#period", "someday")
    page.click("#run")
    page.wait_for_selector("#query-errors:not([hidden])")
    assert "someday" in page.text_content("#query-errors")
    page.fill("#period", "today")
    page.fill("#template-name", "Not allowed")
    page.click("#save")
    page.wait_for_selector("#save-errors:not([hidden])")
    assert "query:write" in page.text_content("#save-errors")


def test_the_dashboard_shows_what_the_api_answers_and_a_new_campaign_by_itself(page: Any, stack: Stack) -> None:
    sign_in(page, stack, "/pages/dashboard?period=today&refresh=5", "viewer")
    page.wait_for_selector("body[data-refreshes]")
    panels = httpx.get(f"{stack.base}/pages/dashboard/queries", params={"period": "today"}, timeout=30).json()["panels"]
    assert set(panels) == {"traffic_by_source", "traffic_by_campaign", "top_campaigns", "remarketing_funnel",
                           "postview"}  # fmt: skip
    for name, body in panels.items():
        same_as_api(table(page, f"#table-{name}"), stack.query(body))
    top = table(page, "#table-top_campaigns")
    assert {r[0]: s["status"] for r, s in zip(top["rows"], top["derived"], strict=True)} == {
        "EREC-100": "declared", "spring_sale": "undeclared"}  # fmt: skip
    assert table(page, "#table-remarketing_funnel")["rows"] == [[3, 2, 1, 0, 0.0]]
    assert table(page, "#table-postview")["rows"] == [["EREC-100", "Newsletter", 2, 1, 20.0]]
    assert "Newsletter" in page.text_content("#chart-top_campaigns")  # bars are labelled by campaign name
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)

    stack.declare("EREC-777", "Winter sale")
    at = int(time.time() * 1000)
    stack.produce_hits([enriched_hit(f"winter-{n}", at + n, event_id=f"w{n}-{uuid.uuid4().hex}", campaign="EREC-777",
                                     campaign_name="Winter sale") for n in range(3)])  # fmt: skip
    before = int(page.get_attribute("body", "data-refreshes"))
    page.wait_for_function(
        """() => [...document.querySelectorAll('#table-top_campaigns tbody tr')].some(tr =>
        tr.textContent.includes('EREC-777') && tr.querySelector('td.declared'))""",
        timeout=60_000,
    )  # no reload
    assert int(page.get_attribute("body", "data-refreshes")) > before
    row = next(r for r in table(page, "#table-top_campaigns")["rows"] if r[0] == "EREC-777")
    assert row[:5] == ["EREC-777", "EREC-777", "Winter sale", "mailer", 3]
    assert "EREC-777" in page.text_content("#chart-traffic_by_campaign")  # a series of its own
    page.screenshot(path=str(SHOTS / "dashboard-new-campaign.png"), full_page=True)

    page.fill("#site", "nowhere.example")  # a site without data: empty charts and tables say so
    page.press("#site", "Enter")
    page.wait_for_selector("#table-top_campaigns tr.empty")
    assert "site=nowhere.example" in page.url  # kept in the URL for a wall screen's bookmark
    assert page.text_content("#chart-top_campaigns") == "No campaign hits in this period"
    assert table(page, "#table-remarketing_funnel")["rows"] == [[0, 0, 0, 0, 0.0]]


def test_every_file_of_the_pages_is_package_data_and_served(stack: Stack) -> None:
    """A non-editable install ships only the files pyproject's package-data names: a new file must match it."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = data["passerelle.connectors.partner_api.pages"]
    folder = ROOT / "connectors" / "partner_api" / "pages"
    files = [f.relative_to(folder) for f in folder.rglob("*") if f.is_file() and f.suffix not in (".py", ".pyc")]
    assert files and all(any(f.match(g) for g in globs) for f in files), (files, globs)
    for f in files:
        path = f"/pages/static/{f.name}" if f.parts[0] == "static" else f"/pages/{f.stem}"
        assert httpx.get(f"{stack.base}{path}", timeout=30).status_code == 200, path
    assert httpx.get(f"{stack.base}/pages", timeout=30, follow_redirects=True).url.path == "/pages/builder"
    week = httpx.get(f"{stack.base}/pages/dashboard/queries", params={"period": "last7"}, timeout=30).json()
    assert week["panels"]["traffic_by_source"]["dimensions"][0] == "day"  # hours only for a one-day period
    wrong = httpx.get(f"{stack.base}/pages/dashboard/queries", params={"step": "minute"}, timeout=30)
    assert wrong.status_code == 400 and "minute" in json.dumps(wrong.json())
