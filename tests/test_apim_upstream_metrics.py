"""/metrics says which deployment refuses (429) and which fails (5xx): two deployments, one
answering 500 every time, the other refusing half its requests with 429s."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import running_all
from tests.test_apim_budgets_e2e import LARGE, SMALL, config, gateway_with
from tests.test_apim_e2e import MESSAGES, metric, mock_spec, v1


def test_upstream_429s_and_errors_are_counted_per_deployment(tmp_path: Path) -> None:
    # "refusing" (serving LARGE) answers half its requests with Azure's capacity 429 (not a limit
    # the gateway could learn and keep under); "failing" (serving SMALL) answers 500 to all. One
    # model each, so which deployment a request reaches never depends on timing.
    refusing = mock_spec(FAULT_CAPACITY_RATE="0.5", FAULT_CAPACITY_RETRY_MS="50")
    failing = mock_spec(FAULT_500_RATE="1")
    path = config(
        tmp_path, [("refusing", v1(refusing), {LARGE: 10_000}), ("failing", v1(failing), {SMALL: 10_000})]
    )
    with running_all(refusing, failing, gateway_with(path, UPSTREAM_RETRIES="1")) as (_, _, gw):
        client = openai.OpenAI(base_url=gw.v1, api_key="sk-test", max_retries=0, timeout=60)

        def ask(model: str, i: int) -> str | None:
            messages = [*MESSAGES, {"role": "user", "content": str(i)}]
            return (
                client.chat.completions.create(model=model, messages=messages, max_tokens=3)
                .choices[0]
                .message.content
            )

        def count(name: str, deployment: str, model: str, **labels: str) -> float:
            return metric(gw, name, deployment=deployment, model=model, **labels)

        sent = 0
        with client, ThreadPoolExecutor(6) as pool:
            # Each is refused with a chance of one half; if none of six was, another six go.
            for _ in range(5):
                assert all(pool.map(lambda i: ask(LARGE, i), range(sent, sent + 6)))
                sent += 6
                if count("apim_upstream_responses_total", "refusing", LARGE, status="429") >= 1:
                    break
            with pytest.raises(openai.InternalServerError):
                ask(SMALL, 0)

        # One attempt and one retry, both refused.
        assert count("apim_upstream_responses_total", "failing", SMALL, status="500") == 2
        assert count("apim_upstream_responses_total", "refusing", LARGE, status="500") == 0
        assert count("apim_upstream_responses_total", "refusing", LARGE, status="200") == sent
        assert count("apim_upstream_responses_total", "refusing", LARGE, status="429") >= 1
        assert count("apim_upstream_responses_total", "failing", SMALL, status="429") == 0
        waited = count("apim_upstream_rate_limited_total", "refusing", LARGE)
        assert waited == count("apim_upstream_responses_total", "refusing", LARGE, status="429")
        # Every budget's series is there from the start, at 0 until its first 429.
        text = httpx.get(f"{gw.url}/metrics", timeout=5).text
        assert f'apim_upstream_rate_limited_total{{deployment="failing",model="{SMALL}"}} 0.0' in text
        assert gw.status()["totals"]["upstream_429"] == waited
