"""The Grafana dashboard in runtime/deploy/grafana reads what the frontend exports: every
expression names exported series and their labels, and every exported metric has a panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_text import names, samples

from runtime.frontend.metric_specs import METRICS
from runtime.frontend.metrics import FrontendMetrics
from runtime.frontend.results import Timings, Usage
from runtime.workers.load import WorkerLoad

DASHBOARD = Path(__file__).parents[3] / "runtime/deploy/grafana/tandem-dashboard.json"
SERIES = {s: m for m in METRICS for s in m.series}
NAME = re.compile(r"tandem:[A-Za-z0-9_:]+")
# Label names in a `by (...)` clause, a `{label=~...}` matcher or a `{{label}}` legend.
BY = re.compile(r"\bby \(([^)]*)\)")
MATCHER = re.compile(r"[{,]\s*([A-Za-z_]\w*)\s*(?:=~|!=|!~|=)")
LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def targets():
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for p in panels:
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in p["targets"]:
            yield p["title"], t


def exported_scrape() -> set[str]:
    """The series names a frontend exports once it has seen a request and a worker."""
    m = FrontendMetrics("tiny")
    m.observe_finished(
        Timings(0.01, 0.01, 0.01, 0.02, ttft_s=0.02, e2e_s=0.05, kv_transfer_bytes=64),
        Usage(4, 3, 0),
        "stop",
    )
    m.observe_inter_token([0.01])
    m.observe_refused("queue")
    m.errors.labels("INTERNAL").inc()
    m.balancer_actions.labels("flip", "decode", "done").inc()
    m.track_in_flight(lambda: 0)
    load = WorkerLoad("p0", "prefill", num_total_blocks=8, handoff_failures=(("DATA_LOSS", 1),))
    m.observe_loads([load])
    return names(samples(m.render().decode()))


def test_every_expression_reads_series_the_frontend_exports():
    exported = exported_scrape()
    shown = set()
    for title, t in targets():
        expr = t["expr"]
        used = NAME.findall(expr)
        assert used, f"{title}: {expr} reads no tandem metric"
        labels = {"model_name", "le"}
        for series in used:
            assert series in exported, f"{title}: {series} is not exported"
            shown.add(SERIES[series].name)
            labels |= set(SERIES[series].labels)
        named = {x.strip() for group in BY.findall(expr) for x in group.split(",")}
        named |= set(MATCHER.findall(expr)) | set(LEGEND.findall(t["legendFormat"]))
        assert named <= labels, f"{title}: {expr} uses labels {named - labels}"
    assert shown == {m.name for m in METRICS}, "metrics without a panel"


def test_the_dashboard_picks_its_data_source_and_model():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "model_name"}
    for _, t in targets():
        assert t["datasource"]["uid"] == "${datasource}"
        assert 'model_name=~"$model_name"' in t["expr"]
