"""The catalogue is the one list of metric names: docs/metrics.md and the Grafana dashboard are checked against it."""

import json
import re
from pathlib import Path

from memwarden.metrics.catalogue import BY_NAME, FAMILIES

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "packaging" / "grafana" / "memwarden.json"
NAME = re.compile(r"\bmemwarden_[a-zA-Z0-9_]+")


def dashboard_queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        exprs.append(query.get("query", "") if isinstance(query, dict) else query or "")
    return exprs


def test_names_follow_the_conventions():
    assert len(BY_NAME) == len(FAMILIES)
    for f in FAMILIES:
        assert re.fullmatch(r"memwarden_[a-z0-9_]+", f.name), f.name
        assert f.kind in ("gauge", "counter"), f.name
        assert f.name.endswith("_total") == (f.kind == "counter"), f.name
        # Prometheus sets job and instance on every scraped series; a label of that name would be renamed.
        assert not {"job", "instance"} & set(f.labels) and not any(la.startswith("__") for la in f.labels), f.name
        assert f.doc.strip(), f.name


def test_every_metric_the_dashboard_queries_is_one_the_daemon_emits():
    dashboard = json.loads(DASHBOARD.read_text())
    used = {m for expr in dashboard_queries(dashboard) for m in NAME.findall(expr)}
    assert used, "the dashboard queries no memwarden metric"
    assert sorted(used - set(BY_NAME)) == []


def test_the_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in [p, *p["targets"]]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]


def test_the_docs_document_every_metric():
    readme = (ROOT / "docs" / "metrics.md").read_text()
    assert [f.name for f in FAMILIES if f"`{f.name}`" not in readme] == []
    assert "packaging/grafana/memwarden.json" in readme
