"""APIM_LOG_FORMAT / MOCK_LOG_FORMAT=json: every line either service writes is one JSON object,
uvicorn's and the start-up lines too; a request's line carries its fields as keys."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from serving.log_format import JsonFormatter, TextFormatter
from tests.processes import Spec, free_port, running_all
from tests.test_apim_e2e import gateway_spec, mock_spec, run_main

HOSTILE_MODEL = 'gpt\n2026-01-01 INFO apim.request request id=forged status=200 "x'
KEYS = {"ts", "level", "logger", "message"}


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a service's output, each parsed (fails on the first that is not JSON)."""
    lines = path.read_text().splitlines()
    assert lines, f"{path.name} is empty"
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line in {path.name}: {line!r}")
        assert isinstance(record, dict) and record.keys() >= KEYS, line
        out.append(record)
    return out


def test_both_services_write_only_json_lines_with_the_request_fields(tmp_path: Path) -> None:
    upstream = mock_spec(LOG_FORMAT="json", LOG_REQUESTS="true")
    upstream = Spec(upstream.module, upstream.env, upstream.port, output=tmp_path / "mock.log")
    front = gateway_spec(upstream, LOG_FORMAT="json", LOG_REQUESTS="true")
    front = Spec(front.module, front.env, output=tmp_path / "apim.log")
    with running_all(upstream, front) as (_, apim):
        client = openai.OpenAI(base_url=apim.v1, api_key="sk-test", max_retries=0, timeout=30)
        with client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
            answered_id = raw.headers["x-request-id"]
            # Refused at the door (no messages), with a model name that tries to forge a line.
            refused = httpx.post(f"{apim.v1}/chat/completions", json={"model": HOSTILE_MODEL}, timeout=10)
            assert refused.status_code == 400
    gateway_lines = json_lines(tmp_path / "apim.log")
    mock_lines = json_lines(tmp_path / "mock.log")

    for lines in (gateway_lines, mock_lines):
        messages = [r["message"] for r in lines if r["logger"] == "uvicorn.error"]
        assert any(m.startswith("Started server process") for m in messages)
        assert any(m.startswith("Uvicorn running on") for m in messages)
        assert any("limiter store:" in r["message"] for r in lines)
        assert all(r["ts"].endswith("Z") and r["level"] in ("INFO", "WARNING") for r in lines)

    requests = [r for r in gateway_lines if r["logger"] == "apim.request"]
    assert len(requests) == 2, requests
    answered = next(r for r in requests if r["id"] == answered_id)
    assert answered["status"] == 200
    assert answered["model"] == "gpt-4o-mini"
    assert answered["stream"] == "false"
    assert answered["attempts"] == 1
    assert isinstance(answered["tokens_est"], int) and answered["tokens_actual"] == answered["tokens_est"]
    assert isinstance(answered["queue_ms"], int) and isinstance(answered["upstream_ms"], int)
    assert answered["message"].startswith(f"request id={answered_id} model=gpt-4o-mini ")
    (door,) = (r for r in requests if r["id"] != answered_id)
    assert door["status"] == 400
    assert door["model"] == HOSTILE_MODEL  # the value itself, JSON-escaped on its one line
    assert door["attempts"] == 0 and door["tokens_est"] is None
    assert "forged" not in {r.get("id") for r in gateway_lines}

    (chat,) = (r for r in mock_lines if r["logger"] == "llm_mock_server.requests")
    assert chat["operation"] == "chat"
    assert chat["id"].startswith("req_") and chat["status"] == 200
    assert chat["model"] == "gpt-4o-mini" and chat["completion_tokens"] == 5
    assert isinstance(chat["ms"], float)


def test_a_bad_log_format_is_the_one_line_settings_error(tmp_path: Path) -> None:
    done = run_main({"APIM_LOG_FORMAT": "yaml"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "apim: invalid setting APIM_LOG_FORMAT: must be one of text, json (got 'yaml')"
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOCK_")} | {"MOCK_LOG_FORMAT": "xml"}
    mock = subprocess.run(
        [sys.executable, "-m", "llm_mock_server", "--host", "127.0.0.1", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert mock.returncode == 2
    assert mock.stderr.strip().splitlines() == [
        "llm-mock: invalid setting MOCK_LOG_FORMAT: must be one of text, json (got 'xml')"
    ]


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("apim.request", logging.INFO, __file__, 1, msg, args, exc_info)


def test_a_long_value_is_cut_as_in_text_lines_and_an_exception_kept() -> None:
    line = JsonFormatter().format(_record("request id=%s model=%s status=%d", "r1", "m" * 10_000, 200))
    record = json.loads(line)
    assert record["model"] == "m" * 200 + "...(10000 chars)"
    assert len(line) < 1000
    failed = json.loads(JsonFormatter().format(_record("unhandled error in %s", "/v1/x", exc=True)))
    assert failed["message"] == "unhandled error in /v1/x"
    assert "ValueError: boom" in failed["exc_info"]


def test_text_lines_are_stamped_as_logging_stamps_them_across_seconds() -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s %(message)s"
    ours, stdlib = TextFormatter(fmt), logging.Formatter(fmt)
    for created in (1_765_000_000.004, 1_765_000_000.999, 1_765_000_001.5, 1_765_000_000.25):
        record = logging.LogRecord("apim.request", logging.INFO, __file__, 1, "id=%s", ("a",), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == stdlib.format(record)
    record.created = 1_765_000_003.0
    assert ours.formatTime(record, "%H") == stdlib.formatTime(record, "%H")
