"""The Grafana dashboard and its compose profile: every metric a panel queries exists in a real
gateway's (and the mock's) /metrics, with the labels the panel filters on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import Service, running, running_all
from tests.test_apim_budgets_e2e import config, gateway_with
from tests.test_monitor import MOCK_ENV

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "observability" / "apim-dashboard.json"
COMPOSE = ROOT / "docker-compose.yml"
SERIES = re.compile(r"\b((?:apim|llm_mock)_[a-zA-Z0-9_]+)(\{[^}]*\})?")
LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
BY = re.compile(r"\bby\s*\(([^)]*)\)\s*\(\s*(?:rate\()?\s*((?:apim|llm_mock)_[a-zA-Z0-9_]+)")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and template variables."""
    found = [t["expr"] for p in panels(board) for t in p.get("targets", [])]
    found += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return found


def used(board: dict[str, Any]) -> dict[str, set[str]]:
    """Each metric the dashboard queries, with the labels it filters or groups it by."""
    out: dict[str, set[str]] = {}
    for expr in queries(board):
        for name, matchers in SERIES.findall(expr):
            out.setdefault(name, set()).update(LABEL.findall(matchers or ""))
        for labels, name in BY.findall(expr):
            out.setdefault(name, set()).update(x.strip() for x in labels.split(",") if x.strip() != "le")
        for name, label in re.findall(r"label_values\((\w+),\s*(\w+)\)", expr):
            out.setdefault(name, set()).add(label)
    return out


def exported(service: Service) -> dict[str, dict[str, set[str]]]:
    """Each sample name in a service's /metrics: its labels, each with the values it takes."""
    out: dict[str, dict[str, set[str]]] = {}
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = out.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return out


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    for expr in queries(board):
        assert expr.count("(") == expr.count(")"), expr
        assert set(re.findall(r"\$(\w+)", expr)) <= variables | {"__rate_interval"}, expr


def test_the_dashboard_covers_what_issue_13_asks() -> None:
    """Budgets used vs limit, queue depth and waits, admitted rate, upstream 429s and errors,
    per deployment, model and tenant."""
    names = used(dashboard())
    for needed in (
        "apim_budget_used",
        "apim_budget_limit",
        "apim_pool_queue_depth",
        "apim_pool_oldest_wait_seconds",
        "apim_queue_wait_seconds_bucket",
        "apim_budget_admissions_total",
        "apim_upstream_rate_limited_total",
        "apim_upstream_responses_total",
    ):
        assert needed in names, needed
    assert {"deployment", "model"} <= names["apim_budget_used"]
    assert "model" in names["apim_pool_queue_depth"]
    # Upstream 429s and errors per deployment: which upstream refuses or fails.
    assert "deployment" in names["apim_upstream_rate_limited_total"]
    assert {"deployment", "status"} <= names["apim_upstream_responses_total"]
    assert any("tenant" in labels for labels in names.values())


def test_every_queried_metric_exists_in_a_real_gateway_and_mock(tmp_path: Path) -> None:
    with running("llm_mock_server", env=MOCK_ENV) as mock:
        path = config(
            tmp_path, [("east", mock.v1, {"gpt-4o-mini": 100}), ("west", mock.v1, {"gpt-4o-mini": 100})]
        )
        # A tenant, so the Tenants row's per-tenant series are exported too.
        path.write_text(path.read_text() + "tenants:\n  - {name: team-a, key: sk-dashboard, weight: 2}\n")
        with running_all(gateway_with(path)) as (apim,):
            client = openai.OpenAI(base_url=apim.v1, api_key="sk-dashboard", max_retries=0, timeout=30)
            with client:
                for i in range(3):
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4
                    )
            found = exported(apim)
            found_mock = exported(mock)
    for name, labels in used(dashboard()).items():
        where = found_mock if name.startswith("llm_mock_") else found
        assert name in where, f"the dashboard queries {name}, which /metrics does not export"
        assert labels <= set(where[name]), f"{name} has no label {labels - set(where[name])}"
    # Per deployment and model, as of the scrape: both deployments' budgets, all four limits.
    used_now = found["apim_budget_used"]
    assert used_now["deployment"] == {"east", "west"}
    assert {"rpm", "tpm", "rpd", "tpd"} <= used_now["limit"]  # and the paced sub-window, rp1s
    assert found["apim_requests_received_total"] == {}
    # Each deployment's upstream 429 series is there before its first 429.
    assert found["apim_upstream_rate_limited_total"]["deployment"] == {"east", "west"}
    assert found["apim_tenant_admitted_total"]["tenant"] == {"team-a"}


def test_the_compose_profile_provisions_prometheus_and_grafana() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).is_file(), f"{name} mounts {source}, which is not in the repository"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}

    datasource = yaml.safe_load((ROOT / mounts["/etc/grafana/provisioning/datasources/apim.yml"]).read_text())
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]

    provider = yaml.safe_load((ROOT / mounts["/etc/grafana/provisioning/dashboards/apim.yml"]).read_text())
    (dashboards,) = provider["providers"]
    folder = dashboards["options"]["path"]
    assert any(
        t.startswith(folder + "/") and s == "./observability/apim-dashboard.json" for t, s in mounts.items()
    )
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounts[home] == "./observability/apim-dashboard.json"

    prometheus = yaml.safe_load((ROOT / "observability" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    ports = {f"{name}:{svc['ports'][0].split(':')[-1]}" for name, svc in services.items() if svc.get("ports")}
    assert targets == {"apim:8001", "llm-mock:8000"}
    assert targets <= ports, "each scrape target is a compose service on its port"


@pytest.mark.parametrize("expr", queries(dashboard()))
def test_no_query_sums_a_shared_budget_over_instances(expr: str) -> None:
    """Instances sharing a budget each report the whole budget: summing them would count it twice."""
    if "apim_budget_used" in expr or "apim_budget_limit" in expr:
        assert "sum" not in expr, expr
