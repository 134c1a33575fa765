"""apim-monitor: rendering, history, and the CLI against real services."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from rich.console import Console, RenderableType

from monitor.client import ServiceStatus, Snapshot, StatusClient, describe_error
from monitor.dashboard import bar, format_duration, render
from monitor.history import BLOCKS, RateHistory, sparkline
from monitor.live import Monitor
from tests.processes import Service, free_port, running

WIDTH = 160


def text_of(renderable: RenderableType, width: int = WIDTH) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def monitor_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m monitor`` as a user runs it, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", "--width", str(WIDTH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def gateway_status(**extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "service": "apim",
        "store": "redis",
        "limits": {
            "rpm": {"limit": 60, "used": 45, "remaining": 15, "reset_s": 41.2},
            "tpm": {"limit": 100_000, "used": 12_345, "remaining": 87_655, "reset_s": 59.8},
            "rpd": {"limit": 0, "used": 120, "remaining": 0, "reset_s": 0},
            "tpd": {"limit": 1_000_000, "used": 950_000, "remaining": 50_000, "reset_s": 7_380},
        },
        "instance": "a1",
        "totals": {"requests": 120, "rate_limited": 2, "errors": 1, "admitted": 118, "upstream_429": 0},
        "queue": {"depth": 4, "in_flight": 2, "oldest_wait_s": 1.3, "wait_p50_s": None, "wait_p99_s": None},
        "admitted_per_min": 0,
        "paused_s": 0,
        "cluster": {"instances": 1, "depth": 4, "in_flight": 2, "admitted": 118, "requests": 120},
    }
    status.update(extra)
    return status


def with_gateway(status: dict[str, Any], mock: ServiceStatus | None = None) -> Snapshot:
    """A snapshot of a gateway answering ``status`` (and a mock that is down unless given)."""
    return Snapshot(
        mock or ServiceStatus("mock", "http://m", error="connection refused"),
        ServiceStatus("apim", "http://a", status=status),
    )


def row(text: str, name: str) -> str:
    """The dashboard line of one limit."""
    return next(line for line in text.splitlines() if f" {name} " in line)


# --- rendering (pure) -------------------------------------------------------------------------------------


def test_render_shows_each_limit_with_bar_used_limit_percent_and_reset() -> None:
    text = text_of(render(with_gateway(gateway_status())))
    rpm = row(text, "RPM")
    assert "45 / 60" in rpm
    assert "75.0%" in rpm
    assert "41.2s" in rpm
    assert "█" * 24 + "░" * 8 in rpm  # 45/60 of a 32-cell bar
    tpm = row(text, "TPM")
    assert "12,345 / 100,000" in tpm
    assert "12.3%" in tpm
    assert "59.8s" in tpm
    tpd = row(text, "TPD")
    assert "950,000 / 1,000,000" in tpd
    assert "95.0%" in tpd
    assert "2h03m" in tpd


def test_a_limit_of_zero_shows_no_limit_and_no_bar() -> None:
    rpd = row(text_of(render(with_gateway(gateway_status()))), "RPD")
    assert "no limit" in rpd
    assert "█" not in rpd
    assert "░" not in rpd
    assert "%" not in rpd


def test_gateway_queue_figures_are_shown() -> None:
    status = gateway_status(admitted_per_min=58)
    status["queue"].update({"wait_p50_s": 0.12, "wait_p99_s": 1.83})
    status["totals"]["upstream_429"] = 3
    text = text_of(render(with_gateway(status)))
    assert "(4 here)" not in text  # a cluster of one is just this instance
    assert "instances" not in text
    assert "queue depth 4 " in text
    assert "in flight 2 " in text
    assert "oldest wait 1.3s" in text
    assert "queue wait p50 120ms" in text
    assert "p99 1.8s" in text
    assert "requests 120 " in text
    assert "admitted/min 58" in text
    assert "last 5m" not in text  # one frame has no history
    assert "answered 429 2 " in text
    assert "upstream 429s 3" in text
    assert "errors 1 " in text


def test_cluster_shows_the_sum_of_the_instances_queues() -> None:
    status = gateway_status(cluster={"instances": 3, "depth": 11, "in_flight": 6, "admitted": 300})
    text = text_of(render(with_gateway(status)))
    assert "3 instances sharing the budget" in text
    assert "queue depth 11 (4 here)" in text
    assert "in flight 6 (2 here)" in text


def test_missing_fields_show_dashes_instead_of_failing() -> None:
    status = {"service": "apim", "limits": {"rpm": {"limit": 10}}, "queue": {}}
    text = text_of(render(with_gateway(status, mock=ServiceStatus("mock", "http://m", status={}))))
    assert "0 / 10" in row(text, "RPM")
    assert "queue depth -" in text
    assert "no limits reported" in text  # the mock answered an empty object


def test_a_store_outage_and_a_pause_are_called_out() -> None:
    status = gateway_status(limits={"error": "limiter store unavailable: ConnectionError"}, paused_s=12.5)
    text = text_of(render(with_gateway(status)))
    assert "limits unknown: limiter store unavailable: ConnectionError" in text
    assert "admission paused for 12.5s" in text
    assert "admission paused" not in text_of(render(with_gateway(gateway_status())))


def test_a_down_service_shows_down_with_its_error() -> None:
    snap = Snapshot(
        ServiceStatus("mock", "http://127.0.0.1:9", error="connection refused"),
        ServiceStatus("apim", "http://a", status=gateway_status()),
    )
    text = text_of(render(snap, interval=1.0))
    mock_part = text.split("Gateway")[0]
    assert "DOWN" in mock_part
    assert "connection refused" in mock_part
    assert "retrying every 1s" in mock_part
    assert "DOWN" not in text.split("Gateway")[1]


def test_swapped_urls_are_pointed_out() -> None:
    snap = Snapshot(
        ServiceStatus("mock", "http://a", status=gateway_status()),
        ServiceStatus("apim", "http://a", status=gateway_status()),
    )
    assert text_of(render(snap)).count("answers as 'apim'") == 1


def test_bar_scales_and_colours_by_fill() -> None:
    assert bar(0.0, 10).plain == "░" * 10
    assert bar(0.001, 10).plain == "█" + "░" * 9  # any use shows
    assert bar(0.5, 10).plain == "█" * 5 + "░" * 5
    assert bar(1.4, 10).plain == "█" * 10  # an excess charged after the answer
    assert "red" in str(bar(0.95, 10).spans[0].style)
    assert "green" in str(bar(0.5, 10).spans[0].style)


def test_format_duration() -> None:
    assert format_duration(None) == "-"
    assert format_duration(0.25) == "0.2s"
    assert format_duration(41.24) == "41.2s"
    assert format_duration(365) == "6m05s"
    assert format_duration(3600 * 5 + 12 * 60 + 9) == "5h12m"


# --- history and sparkline ----------------------------------------------------------------------------------


def test_history_turns_counter_samples_into_rates_per_minute() -> None:
    history = RateHistory()
    history.sample(100.0, 10)
    history.sample(101.0, 12)  # 2 in 1 s
    history.sample(103.0, 13)  # 1 in 2 s
    assert history.rates() == [120.0, 30.0]


def test_history_leaves_a_gap_when_down_and_survives_a_restart() -> None:
    history = RateHistory()
    history.sample(0.0, 50)
    history.sample(1.0, 51)
    history.sample(2.0, None)  # down
    history.sample(3.0, 0)  # back, counter restarted
    history.sample(4.0, 2)
    history.sample(5.0, 1)  # restarted again between samples
    assert history.rates() == [60.0, None, 120.0, None]


def test_history_ignores_the_jump_when_the_counter_changes_source() -> None:
    history = RateHistory()
    history.sample(0.0, 100, ("a", 1))
    history.sample(1.0, 101, ("a", 1))
    history.sample(2.0, 600, ("a", 2))  # a second instance joined the sum with its own 499
    history.sample(3.0, 603, ("a", 2))
    assert history.rates() == [60.0, None, 180.0]


def test_history_forgets_what_is_older_than_its_span() -> None:
    history = RateHistory(span_s=10)
    for t in range(30):
        history.sample(float(t), t)
    assert len(history.rates()) == 11


def test_buckets_average_rates_and_start_at_the_first_data() -> None:
    history = RateHistory()
    for t, counter in [(0, 0), (1, 1), (2, 2), (3, 5), (4, 8), (6, 8)]:
        history.sample(float(t), counter)
    # Rates: t1 60, t2 60, t3 180, t4 180, t6 0; buckets of 2 s: [0,2) [2,4) [4,6) [6,8)
    assert history.buckets(10, 2.0, now=7.0) == [60.0, 120.0, 180.0, 0.0]
    assert history.buckets(2, 2.0, now=7.0) == [180.0, 0.0]


def test_the_rate_line_shows_the_buckets_the_latest_and_the_peak() -> None:
    history = RateHistory(span_s=300)
    # One sample a second for 30 s: 2 admissions a second, then nothing for the last 10 s.
    for t in range(31):
        history.sample(1000.0 + t, 2 * min(t, 20))
    status = gateway_status()
    snap = Snapshot(
        ServiceStatus("mock", "http://m", error="x"), ServiceStatus("apim", "http://a", status=status)
    )
    snap = Snapshot(snap.mock, snap.apim, taken_at=1030.0)
    line = next(line for line in text_of(render(snap, history), width=100).splitlines() if "last 5m" in line)
    assert "now 0, peak 120" in line
    blocks = line.split("last 5m ")[1].split("now")[0].strip()
    assert len(blocks) >= 5  # 30 s of a 5 min span
    assert blocks.startswith("█")
    assert blocks.endswith("▁")


def test_sparkline_scales_to_the_peak_and_keeps_gaps() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([0, None, 10], 8) == BLOCKS[0] + " " + BLOCKS[-1]
    assert sparkline([0.0, 0.0], 8) == BLOCKS[0] * 2  # idle is not the same as no data
    assert sparkline(list(range(100)), 5) == sparkline(list(range(95, 100)), 5)
    assert sparkline([1, 50], 4, top=100) == "▂▅"


# --- fetching -----------------------------------------------------------------------------------------------


def test_connection_refused_reads_as_such() -> None:
    port = free_port()
    try:
        httpx.get(f"http://127.0.0.1:{port}/status", timeout=2)
    except httpx.HTTPError as exc:
        assert describe_error(exc) == "connection refused"
    else:
        raise AssertionError("nothing listens there")


def test_cli_against_nothing_shows_both_down() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    result = monitor_cli("--once", "--mock-url", url, "--apim-url", url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("DOWN: connection refused") == 2
    assert "Traceback" not in result.stderr

    result = monitor_cli("--json", "--mock-url", url, "--apim-url", url)
    combined = json.loads(result.stdout)
    assert combined["mock"] == {
        "url": url,
        "up": False,
        "error": "connection refused",
        "latency_ms": None,
        "status": None,
    }
    assert combined["apim"]["up"] is False


def test_an_error_status_shows_the_services_own_message() -> None:
    request = httpx.Request("GET", "http://m/status")
    body = {"error": {"message": "rate-limit store unavailable", "type": "server_error", "param": None}}
    response = httpx.Response(503, json=body, request=request)
    assert describe_error(httpx.HTTPStatusError("503", request=request, response=response)) == (
        "HTTP 503: rate-limit store unavailable"
    )
    plain = httpx.Response(502, text="bad gateway", request=request)
    assert describe_error(httpx.HTTPStatusError("502", request=request, response=plain)) == "HTTP 502"


# --- against the real services ------------------------------------------------------------------------------

MOCK_ENV = {
    "MOCK_RPM_LIMIT": "500",
    "MOCK_TPM_LIMIT": "200000",
    "MOCK_RPD_LIMIT": "0",
    "MOCK_TPD_LIMIT": "5000000",
    "MOCK_REDIS_URL": "",
    "MOCK_LOG_REQUESTS": "false",
}


def apim_env(upstream: str, **extra: str) -> dict[str, str]:
    return {
        "APIM_UPSTREAM_URL": upstream,
        "APIM_RPM_LIMIT": "400",
        "APIM_TPM_LIMIT": "150000",
        "APIM_RPD_LIMIT": "0",
        "APIM_TPD_LIMIT": "4000000",
        "APIM_REDIS_URL": "",
        "APIM_LOG_REQUESTS": "false",
        **extra,
    }


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Service, Service]]:
    """The mock and the gateway in front of it, on embedded stores."""
    with (
        running("llm_mock_server", env=MOCK_ENV) as mock,
        running("apim_server", env=apim_env(mock.v1)) as apim,
    ):
        yield mock, apim


def chat(base_url: str, count: int) -> None:
    """``count`` small completions through the official SDK."""
    client = openai.OpenAI(base_url=base_url, api_key="sk-monitor-test", max_retries=0)
    with client:
        for i in range(count):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=8
            )


def panels(text: str) -> tuple[str, str]:
    """The mock's and the gateway's part of a frame."""
    lines = text.splitlines()
    split = next(i for i, line in enumerate(lines) if " Gateway " in line)
    return "\n".join(lines[:split]), "\n".join(lines[split:])


def assert_limits_shown(panel: str, status: dict[str, Any]) -> None:
    assert {"rpm", "tpm", "rpd", "tpd"} <= set(status["limits"])
    for name, entry in status["limits"].items():
        line = row(panel, name.upper())
        if entry["limit"]:
            assert f"{entry['used']:,} / {entry['limit']:,}" in line
            assert f"{entry['used'] / entry['limit'] * 100:.1f}%" in line
            assert f"{entry['remaining']:,}" in line
        else:
            assert "no limit" in line


def test_once_shows_the_figures_that_status_reports(stack: tuple[Service, Service]) -> None:
    mock, apim = stack
    chat(apim.v1, 3)
    mock_status, apim_status = mock.status(), apim.status()
    assert apim_status["limits"]["rpm"]["used"] >= 3  # the traffic is there to be shown

    result = monitor_cli("--once", "--mock-url", mock.url, "--apim-url", apim.url)
    assert result.returncode == 0, result.stderr
    mock_panel, apim_panel = panels(result.stdout)
    assert "UP" in mock_panel
    assert "DOWN" not in result.stdout
    assert_limits_shown(mock_panel, mock_status)
    assert_limits_shown(apim_panel, apim_status)
    assert "RPD" in mock_panel  # a limit of 0 still has its row, marked "no limit"
    assert f"requests {mock_status['totals']['requests']:,} " in mock_panel
    assert f"rate-limited (429) {mock_status['totals']['rate_limited']:,} " in mock_panel
    assert f"requests {apim_status['totals']['requests']:,} " in apim_panel
    assert f"queue depth {apim_status['queue']['depth']} " in apim_panel
    assert f"in flight {apim_status['queue']['in_flight']} " in apim_panel


def stable(status: dict[str, Any]) -> dict[str, Any]:
    """What does not move while nothing is sent: limits without their countdowns, totals."""
    limits = {
        name: {k: v for k, v in entry.items() if k != "reset_s"} for name, entry in status["limits"].items()
    }
    return {
        "service": status["service"],
        "store": status["store"],
        "limits": limits,
        "totals": status["totals"],
    }


def test_json_is_both_statuses_combined(stack: tuple[Service, Service]) -> None:
    mock, apim = stack
    chat(apim.v1, 2)
    result = monitor_cli("--json", "--mock-url", mock.url, "--apim-url", apim.url)
    assert result.returncode == 0, result.stderr
    combined = json.loads(result.stdout)
    assert combined["mock"]["up"] is True
    assert combined["apim"]["up"] is True
    assert combined["mock"]["url"] == mock.url
    assert stable(combined["mock"]["status"]) == stable(mock.status())
    assert stable(combined["apim"]["status"]) == stable(apim.status())
    # --once --json is the same thing.
    again = json.loads(monitor_cli("--once", "--json", "--mock-url", mock.url, "--apim-url", apim.url).stdout)
    assert stable(again["apim"]["status"]) == stable(combined["apim"]["status"])


async def test_the_admitted_rate_history_follows_the_traffic(stack: tuple[Service, Service]) -> None:
    mock, apim = stack
    async with StatusClient(mock.url, apim.url) as client:
        monitor = Monitor(client, interval=1.0)
        first = text_of(await monitor.refresh())
        assert "builds up while the monitor runs" in first
        await asyncio.to_thread(chat, apim.v1, 3)
        second = text_of(await monitor.refresh())
        await monitor.refresh()
    rates = monitor.history.rates()
    assert len(rates) == 2
    assert rates[0] is not None and rates[0] > 0
    assert rates[1] == 0  # nothing was sent between the last two refreshes
    line = next(line for line in second.splitlines() if "admitted/min, last 5m" in line)
    assert "█" in line  # the only rate so far is the peak


async def test_a_service_that_comes_up_later_shows_up_on_the_next_refresh() -> None:
    port = free_port()
    nowhere = f"http://127.0.0.1:{free_port()}"
    async with StatusClient(f"http://127.0.0.1:{port}", nowhere) as client:
        monitor = Monitor(client, interval=1.0)
        mock_panel, _ = panels(text_of(await monitor.refresh()))
        assert "DOWN: connection refused" in mock_panel
        with running("llm_mock_server", env=MOCK_ENV, port=port):
            mock_panel, apim_panel = panels(text_of(await monitor.refresh()))
            assert "DOWN" not in mock_panel
            assert "UP" in mock_panel
            assert "0 / 500" in row(mock_panel, "RPM")
            assert "DOWN: connection refused" in apim_panel
        mock_panel, _ = panels(text_of(await monitor.refresh()))
        assert "DOWN" in mock_panel


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_ctrl_c_exits_cleanly_and_restores_the_terminal() -> None:
    import pty  # noqa: PLC0415 - POSIX only

    nowhere = f"http://127.0.0.1:{free_port()}"
    master, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "--interval", "0.2", "--mock-url", nowhere, "--apim-url", nowhere],
        stdin=child,
        stdout=child,
        stderr=subprocess.PIPE,
    )
    os.close(child)
    output = bytearray()
    frame_seen = threading.Event()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            output.extend(chunk)
            if b"retrying every" in output:
                frame_seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert frame_seen.wait(30), bytes(output)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    plain = bytes(output)
    assert plain.rstrip().endswith(b"\x1b[?25h")  # the cursor Live hid is shown again


def test_instances_on_one_redis_show_the_shared_budget_and_their_summed_queues(
    redis_url: str, redis_prefix: str
) -> None:
    mock_env = {**MOCK_ENV, "MOCK_REDIS_URL": redis_url, "MOCK_REDIS_PREFIX": f"{redis_prefix}-mock"}
    shared = {"APIM_REDIS_URL": redis_url, "APIM_REDIS_PREFIX": f"{redis_prefix}-apim"}
    with (
        running("llm_mock_server", env=mock_env) as mock,
        running("apim_server", env=apim_env(mock.v1, **shared)) as first,
        running("apim_server", env=apim_env(mock.v1, **shared)) as second,
    ):
        chat(first.v1, 2)
        chat(second.v1, 3)
        # Each instance publishes its figures once a second; wait until the first sees the second.
        deadline = time.monotonic() + 20
        while first.status()["cluster"]["instances"] < 2:
            assert time.monotonic() < deadline, first.status()["cluster"]
            time.sleep(0.1)
        status = first.status()
        assert status["limits"]["rpm"]["used"] == 5  # one budget for both

        result = monitor_cli("--once", "--mock-url", mock.url, "--apim-url", first.url)
        assert result.returncode == 0, result.stderr
        mock_panel, apim_panel = panels(result.stdout)
        assert "redis store" in mock_panel
        assert "redis store" in apim_panel
        assert "2 instances sharing the budget" in apim_panel
        assert "5 / 400" in row(apim_panel, "RPM")
        assert "5 / 500" in row(mock_panel, "RPM")
        cluster = status["cluster"]
        assert f"queue depth {cluster['depth']} ({status['queue']['depth']} here)" in apim_panel
        assert f"in flight {cluster['in_flight']} ({status['queue']['in_flight']} here)" in apim_panel

        combined = json.loads(monitor_cli("--json", "--mock-url", mock.url, "--apim-url", second.url).stdout)
        assert combined["apim"]["status"]["cluster"]["instances"] == 2
        assert combined["apim"]["status"]["limits"]["rpm"]["used"] == 5


def test_mock_api_key_picks_whose_limits_the_mock_shows() -> None:
    keys = ["sk-monitor-first-0001", "sk-monitor-second-0002"]
    nowhere = f"http://127.0.0.1:{free_port()}"
    with running("llm_mock_server", env={**MOCK_ENV, "MOCK_API_KEYS": ",".join(keys)}) as mock:
        client = openai.OpenAI(base_url=mock.v1, api_key=keys[1], max_retries=0)
        with client:
            for _ in range(2):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
        second = json.loads(
            monitor_cli(
                "--json", "--mock-url", mock.url, "--apim-url", nowhere, "--mock-api-key", keys[1]
            ).stdout
        )
        first = json.loads(monitor_cli("--json", "--mock-url", mock.url, "--apim-url", nowhere).stdout)
    assert second["mock"]["status"]["limits"]["rpm"]["used"] == 2
    assert first["mock"]["status"]["limits"]["rpm"]["used"] == 0


def test_bad_flags_are_refused() -> None:
    for flags in (["--interval", "0"], ["--timeout", "-1"], ["--interval", "soon"]):
        result = monitor_cli("--once", *flags)
        assert result.returncode == 2, flags
        assert "usage: apim-monitor" in result.stderr
