"""The mock's settings: sources, validation, the one-line error at start, the README table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from llm_mock_server.config import MockSettings, describe_error, settings_table
from ratelimit.cost import CostRule


def test_environment_then_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MOCK_"):
            monkeypatch.delenv(name)
    (tmp_path / ".env").write_text("MOCK_RPM_LIMIT=7\nMOCK_TPM_LIMIT=70\nMOCK_MODELS=a, b\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOCK_TPM_LIMIT", "80")
    monkeypatch.setenv("MOCK_API_KEYS", "sk-one,sk-two")
    monkeypatch.setenv("MOCK_COST_RULE", "max")
    settings = MockSettings()
    assert settings.rpm_limit == 7  # from .env
    assert settings.tpm_limit == 80  # the environment wins over .env
    assert settings.models == ["a", "b"]
    assert settings.api_keys == ["sk-one", "sk-two"]
    assert settings.cost_rule is CostRule.MAX


def test_every_setting_is_documented() -> None:
    rows = settings_table()
    names = [name for name, _, _ in rows]
    assert len(names) == len(MockSettings.model_fields)
    assert all(name.startswith("MOCK_") for name in names)
    assert all(description for _, _, description in rows)
    table = {name: default for name, default, _ in rows}
    assert table["MOCK_RPM_LIMIT"] == "60"
    assert table["MOCK_ADMIN"] == "false"
    assert table["MOCK_COST_RULE"] == "sum"
    assert table["MOCK_MODELS"].startswith("gpt-4o-mini,")
    assert table["MOCK_DAILY_RESET_TZ"] == "UTC"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MOCK_RPM_LIMIT", "sixty"),
        ("MOCK_TPM_LIMIT", "-1"),
        ("MOCK_DAILY_RESET_TZ", "Mars/Olympus_Mons"),
        ("MOCK_SHORT_WINDOW_S", "7"),
        ("MOCK_COST_RULE", "median"),
        ("MOCK_FAULT_500_RATE", "1.5"),
        ("MOCK_ADMIN", "perhaps"),
        ("MOCK_MODELS", " , "),
        ("MOCK_LOG_LEVEL", "loud"),
    ],
)
def test_bad_setting_is_described_in_one_line_naming_it(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        MockSettings(_env_file=None)
    line = describe_error(caught.value)
    assert "\n" not in line
    assert line.startswith(f"invalid setting {name}: ")


def _start(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MOCK_")} | env
    return subprocess.run(
        [sys.executable, "-m", "llm_mock_server", "--port", "1"],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_setting_stops_the_start_with_exit_2_and_one_line(tmp_path: Path) -> None:
    proc = _start({"MOCK_RPM_LIMIT": "sixty"}, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "llm-mock: invalid setting MOCK_RPM_LIMIT: Input should be a valid integer, "
        "unable to parse string as an integer (got 'sixty')"
    ]


def test_fault_rates_must_fit_in_one_draw(tmp_path: Path) -> None:
    proc = _start({"MOCK_FAULT_500_RATE": "0.6", "MOCK_FAULT_DROP_RATE": "0.6"}, tmp_path)
    assert proc.returncode == 2
    assert "MOCK_FAULT_DROP_RATE" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
