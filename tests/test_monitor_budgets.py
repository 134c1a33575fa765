"""The monitor with many budgets: one line per (deployment, model), a bar for the binding limit."""

from __future__ import annotations

from monitor.dashboard import render
from tests.test_monitor import gateway_status, text_of, with_gateway


def budget(
    deployment: str, model: str, rpm: tuple[int, int], tpm: tuple[int, int], paused: float = 0
) -> dict:
    return {
        "deployment": deployment,
        "model": model,
        "limits": {
            "rpm": {"limit": rpm[1], "used": rpm[0], "remaining": rpm[1] - rpm[0], "reset_s": 3},
            "tpm": {"limit": tpm[1], "used": tpm[0], "remaining": tpm[1] - tpm[0], "reset_s": 3},
        },
        "paused_s": paused,
    }


def test_several_budgets_show_as_a_compact_table() -> None:
    status = gateway_status(
        budgets=[
            budget("east", "gpt-4o", (30, 60), (950, 1000)),
            budget("west", "gpt-4o", (6, 60), (0, 0)),
            budget("west", "gpt-4o-mini", (3, 600), (10, 100_000), paused=2.5),
        ],
        pools={"gpt-4o": {"depth": 4}, "gpt-4o-mini": {"depth": 0}},
        deployments={"east": {"state": "in"}, "west": {"state": "out"}},
    )
    text = text_of(render(with_gateway(status)))
    lines = text.splitlines()
    east = next(line for line in lines if " east " in line)
    assert "gpt-4o" in east and "TPM" in east, "the binding limit is the fuller one"
    assert "950 / 1,000" in east and "95.0%" in east and " 4 " in east
    west = next(line for line in lines if " west " in line and "gpt-4o " in line)
    assert "RPM" in west and "6 / 60" in west and "out" in west
    assert sum(" west " in line for line in lines) == 2
    assert not any(line.lstrip("│ ").startswith("RPD") for line in lines), "no single-budget panel"


def test_one_budget_keeps_the_single_panel() -> None:
    status = gateway_status(budgets=[budget("default", "*", (45, 60), (12_345, 100_000))])
    text = text_of(render(with_gateway(status)))
    assert any(" RPD " in line for line in text.splitlines())
    assert "Deployment" not in text
