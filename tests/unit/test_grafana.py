"""The committed Grafana dashboard is the one generated from the panels, and has the shape Grafana imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from passerelle.connectors.monitoring import grafana
from passerelle.connectors.monitoring.panels import PANELS

pytestmark = pytest.mark.unit


def test_the_committed_dashboard_is_the_generated_one() -> None:
    committed = grafana.OUTPUT.read_text(encoding="utf-8")
    assert committed == grafana.render(), (
        f"{grafana.OUTPUT} differs from connectors/monitoring/panels.py: "
        "run python -m passerelle.connectors.monitoring.grafana and commit the file"
    )
    assert grafana.main(["--check"]) == 0


def test_check_fails_on_a_stale_file_and_writing_fixes_it(tmp_path: Path) -> None:
    stale = tmp_path / "board.json"
    stale.write_text(grafana.render().replace("Consumer lag", "Lag"))
    assert grafana.main(["--check", "--output", str(stale)]) == 1
    assert grafana.main(["--output", str(stale)]) == 0
    assert grafana.main(["--check", "--output", str(stale)]) == 0


def test_every_panel_reads_the_chosen_prometheus_with_its_query_and_unit() -> None:
    board = json.loads(grafana.OUTPUT.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    charts = [p for p in board["panels"] if p["type"] == "timeseries"]
    assert [(p["title"], p["fieldConfig"]["defaults"]["unit"]) for p in charts] == [(p.title, p.unit) for p in PANELS]
    assert [[t["expr"] for t in p["targets"]] for p in charts] == [[p.query] for p in PANELS]
    assert [p["targets"][0]["legendFormat"] for p in charts] == [p.legend for p in PANELS]
    (alerts,) = [p for p in board["panels"] if p["type"] == "table"]
    assert alerts["targets"][0]["expr"] == grafana.FIRING_ALERTS and alerts["targets"][0]["instant"] is True
    for panel in board["panels"]:
        assert panel["type"] in ("timeseries", "table", "row")
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(t["datasource"]["uid"] == "${datasource}" and t["refId"] and t["expr"] for t in panel["targets"])
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == [s.capitalize() for s in dict.fromkeys(p.section for p in PANELS)]


def test_panels_have_unique_ids_and_do_not_overlap_on_the_grid() -> None:
    board = grafana.dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
