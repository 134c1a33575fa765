"""What the mock writes to its log: the store it uses, once, and one line per chat request."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.processes import free_port

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}


def _run_and_log(env: dict[str, str], cwd: Path) -> str:
    """Start the mock, send two chat requests, stop it, and return everything it logged."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MOCK_")} | env
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_mock_server", "--host", "127.0.0.1", "--port", str(port)],
        env=full_env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "the mock exited"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the mock did not start"
                time.sleep(0.05)
        assert httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=5).status_code == 200
        assert httpx.post(f"{url}/v1/chat/completions", json={"model": "nope"}, timeout=5).status_code == 400
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=15)
    return output


def test_one_store_line_and_one_line_per_request(tmp_path: Path) -> None:
    log = _run_and_log({}, tmp_path)
    store_lines = [line for line in log.splitlines() if "limiter store:" in line]
    assert len(store_lines) == 1
    assert "embedded" in store_lines[0]
    requests = [line for line in log.splitlines() if " chat id=" in line]
    assert len(requests) == 2, log
    assert re.search(
        r"chat id=req_[0-9a-f]{32} key=default model=gpt-4o-mini stream=false status=200 "
        r"prompt_tokens=\d+ completion_tokens=7 ms=\d+\.\d",
        requests[0],
    )
    assert "status=400" in requests[1]


def test_request_log_can_be_turned_off(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    log = _run_and_log(
        {"MOCK_LOG_REQUESTS": "false", "MOCK_REDIS_URL": redis_url, "MOCK_REDIS_PREFIX": redis_prefix},
        tmp_path,
    )
    assert " chat id=" not in log
    store_lines = [line for line in log.splitlines() if "limiter store:" in line]
    assert len(store_lines) == 1
    assert "redis" in store_lines[0]
