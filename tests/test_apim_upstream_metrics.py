"""/metrics says which deployment refuses (429) and which fails (5xx): two deployments of one
pool, one answering 500 every time, the other pacing requests with 429s."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from tests.processes import running_all
from tests.test_apim_budgets_e2e import LARGE, config, gateway_with, mock_with
from tests.test_apim_e2e import MESSAGES, metric, mock_spec, v1


def test_upstream_429s_and_errors_are_counted_per_deployment(tmp_path: Path) -> None:
    # "pacing" lets one request a second through and refuses the rest with 429s; "failing"
    # answers 500 to all. The gateway is told neither: both budgets are far above.
    pacing = mock_with(tmp_path, {LARGE: 60}, short=1)
    failing = mock_spec(FAULT_500_RATE="1")
    path = config(
        tmp_path, [("pacing", v1(pacing), {LARGE: 10_000}), ("failing", v1(failing), {LARGE: 10_000})]
    )
    with running_all(pacing, failing, gateway_with(path, UPSTREAM_RETRIES="2")) as (_, _, gw):
        client = openai.OpenAI(base_url=gw.v1, api_key="sk-test", max_retries=0, timeout=60)
        with client, ThreadPoolExecutor(4) as pool:
            replies = list(
                pool.map(
                    lambda i: client.chat.completions.create(
                        model=LARGE, messages=[*MESSAGES, {"role": "user", "content": str(i)}], max_tokens=3
                    ),
                    range(4),
                )
            )
        assert all(r.choices[0].message.content for r in replies)

        def count(name: str, deployment: str, **labels: str) -> float:
            return metric(gw, name, deployment=deployment, model=LARGE, **labels)

        assert count("apim_upstream_responses_total", "failing", status="500") >= 1
        assert count("apim_upstream_responses_total", "pacing", status="500") == 0
        assert count("apim_upstream_responses_total", "pacing", status="200") == 4
        assert count("apim_upstream_responses_total", "pacing", status="429") >= 1
        assert count("apim_upstream_responses_total", "failing", status="429") == 0
        waited = count("apim_upstream_rate_limited_total", "pacing")
        assert waited == count("apim_upstream_responses_total", "pacing", status="429")
        # Every budget's series is there from the start, at 0 until its first 429.
        text = httpx.get(f"{gw.url}/metrics", timeout=5).text
        assert f'apim_upstream_rate_limited_total{{deployment="failing",model="{LARGE}"}} 0.0' in text
        assert gw.status()["totals"]["upstream_429"] == waited
