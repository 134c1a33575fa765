"""apim-monitor: rendering, history, and the CLI against real services."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from rich.console import Console, RenderableType

from monitor.client import ServiceStatus, Snapshot, StatusClient, describe_error
from monitor.dashboard import render
from monitor.format import bar, format_duration, format_ms
from monitor.history import BLOCKS, History, sparkline
from monitor.keys import View
from monitor.live import Monitor
from tests.processes import Service, free_port, running

WIDTH = 160
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


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
        "uptime_s": 95.0,
        "limits": {
            "rpm": {"limit": 60, "used": 45, "remaining": 15, "reset_s": 41.2},
            "tpm": {"limit": 100_000, "used": 12_345, "remaining": 87_655, "reset_s": 59.8},
            "rpd": {"limit": 0, "used": 120, "remaining": 0, "reset_s": 0},
            "tpd": {"limit": 1_000_000, "used": 950_000, "remaining": 50_000, "reset_s": 7_380},
        },
        "instance": "a1",
        "totals": {
            "received": 126,
            "requests": 120,
            "rate_limited": 2,
            "errors": 1,
            "admitted": 118,
            "upstream_429": 0,
        },
        "queue": {
            "depth": 4,
            "in_flight": 2,
            "oldest_wait_s": 1.3,
            "wait_p50_s": None,
            "wait_p99_s": None,
            "waits": {
                "window_s": 60,
                "answered": 0,
                "waiting": 0,
                "p50_s": None,
                "p99_s": None,
                "max_s": None,
            },
        },
        "admitted_per_min": 0,
        "per_min": {"window_s": 60, "received": 0, "admitted": 0, "answered": 0},
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


def test_gateway_figures_say_their_span() -> None:
    status = gateway_status(
        per_min={"window_s": 60, "received": 67, "admitted": 30, "answered": 29}, admitted_per_min=30
    )
    status["queue"]["waits"] = {
        "window_s": 60,
        "answered": 30,
        "waiting": 4,
        "p50_s": 0.12,
        "p99_s": 19.3,
        "max_s": 19.4,
    }
    status["totals"]["upstream_429"] = 3
    text = text_of(render(with_gateway(status)))
    assert "(4 here)" not in text  # a cluster of one is just this instance
    assert "instances" not in text
    since = line_with(text, "since start")
    assert "(1m35s ago)" in since
    assert since.split("ago)")[1].split() == ["126", "118", "120", "│"]  # received, admitted, answered
    assert line_with(text, "per minute, last 60 s").split("60 s")[1].split() == ["67", "30", "29", "│"]
    assert "waiting now 4  oldest 1.3s  in flight 2" in text
    assert "queue wait p50 120ms  p99 19.3s  of 30 answered in 60 s + 4 waiting" in text
    assert "answered 429 2  answered 5xx 1  upstream 429s (requeued) 3" in text
    assert "last 5m" not in text  # one frame has no history


def line_with(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


def test_a_queue_with_nothing_answered_or_waiting_says_so() -> None:
    text = text_of(render(with_gateway(gateway_status())))
    assert "queue wait -  none answered in 60 s, none waiting" in text


def test_cluster_shows_the_sum_of_the_instances_queues() -> None:
    status = gateway_status(
        cluster={
            "instances": 3,
            "depth": 11,
            "in_flight": 6,
            "admitted": 300,
            "requests": 290,
            "received": 320,
            "received_per_min": 90,
            "admitted_per_min": 60,
            "answered_per_min": 58,
        }
    )
    status["queue"]["waits"].update(answered=5, waiting=4, p50_s=1.0, p99_s=2.0)
    text = text_of(render(with_gateway(status)))
    assert "3 instances sharing the budget" in text
    assert "waiting now 11 (4 here)" in text
    assert "in flight 6 (2 here)" in text
    assert "oldest here 1.3s" in text
    assert line_with(text, "since start, 3 instances").split("instances")[1].split()[:3] == [
        "320",
        "300",
        "290",
    ]
    assert line_with(text, "per minute, last 60 s").split("60 s")[1].split()[:3] == ["90", "60", "58"]
    assert "4 waiting (this instance)" in text


def test_missing_fields_show_dashes_instead_of_failing() -> None:
    status = {"service": "apim", "limits": {"rpm": {"limit": 10}}, "queue": {}}
    text = text_of(render(with_gateway(status, mock=ServiceStatus("mock", "http://m", status={}))))
    assert "0 / 10" in row(text, "RPM")
    assert "waiting now -" in text
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


def test_history_keeps_samples_and_one_gap_per_outage() -> None:
    history = History()
    history.sample(0.0, 30)
    history.sample(1.0, 31)
    history.sample(2.0, None)  # down
    history.sample(3.0, None)  # still down: no second gap
    history.sample(4.0, 0)  # back (restarted: its minute starts empty)
    assert history.values() == [30, 31, None, 0]
    assert history.latest() == 0
    assert history.peak() == 31


def test_history_forgets_what_is_older_than_its_span() -> None:
    history = History(span_s=10)
    for t in range(30):
        history.sample(float(t), t)
    assert history.values() == list(range(19, 30))


def test_buckets_hold_the_highest_sample_and_start_at_the_first_data() -> None:
    history = History()
    for t, value in [(0, 10), (1, 30), (2, 20), (3, 25), (6, 5)]:
        history.sample(float(t), value)
    # Buckets of 2 s: [0,2) [2,4) [4,6) [6,8)
    assert history.buckets(10, 2.0, now=7.0) == [30, 25, None, 5]
    assert history.buckets(2, 2.0, now=7.0) == [5]  # the empty bucket before the first data is not shown


def test_the_rate_line_is_in_the_unit_of_the_rpm_limit() -> None:
    """Each point is the admissions in the 60 s before it: never above the RPM limit the budget
    holds, and the line's full block is that limit (the issue: "now 901, peak 360" at RPM 30)."""
    history = History(span_s=300)
    # One sample a second for 30 s: the minute fills to 30 within 20 s, then stays full.
    for t in range(31):
        history.sample(1000.0 + t, min(30, 3 * t // 2))
    snap = Snapshot(
        ServiceStatus("mock", "http://m", error="x"),
        ServiceStatus("apim", "http://a", status=gateway_status(limits={"rpm": {"limit": 30, "used": 30}})),
        taken_at=1030.0,
    )
    text = text_of(render(snap, history), width=100)
    assert "admitted in the 60 s before each point, last 5m, full block = RPM 30" in text
    line = line_with(text, "now 30")
    assert "now 30  peak 30" in line
    blocks = line.strip("│ ").split("now")[0].strip()
    assert len(blocks) >= 5  # 30 s of a 5 min span
    assert blocks.endswith("█")  # the minute is full: the budget is used
    assert "█" not in blocks[:2]


def test_the_rate_line_scales_to_the_peak_without_an_rpm_limit() -> None:
    history = History()
    history.sample(1000.0, 12)
    status = gateway_status(limits={"rpm": {"limit": 0, "used": 12}})
    snap = Snapshot(
        ServiceStatus("mock", "http://m", error="x"), ServiceStatus("apim", "http://a", status=status), 1000.0
    )
    text = text_of(render(snap, history))
    assert "full block" not in text
    assert "now 12  peak 12" in text


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
    assert f"received {mock_status['totals']['requests']:,} " in mock_panel
    assert f"rate-limited (429) {mock_status['totals']['rate_limited']:,} " in mock_panel
    since = line_with(apim_panel, "since start").split("ago)")[1].split()[:3]
    totals = apim_status["totals"]
    assert since == [f"{totals['received']:,}", f"{totals['admitted']:,}", f"{totals['requests']:,}"]
    assert f"waiting now {apim_status['queue']['depth']} " in apim_panel
    assert f"in flight {apim_status['queue']['in_flight']}" in apim_panel


def assert_gateway_frame(panel: str, status: dict[str, Any]) -> None:
    """Every figure of the gateway's overview panel is the one its /status body reports."""
    assert_limits_shown(panel, status)
    totals, per_min, queue = status["totals"], status["per_min"], status["queue"]
    since = line_with(panel, "since start").split("ago)")[1].split()[:3]
    assert since == [f"{totals['received']:,}", f"{totals['admitted']:,}", f"{totals['requests']:,}"]
    rates = line_with(panel, "per minute, last 60 s").split("60 s")[1].split()[:3]
    assert rates == [f"{per_min['received']:,}", f"{per_min['admitted']:,}", f"{per_min['answered']:,}"]
    assert f"waiting now {queue['depth']}  " in panel
    oldest = format_ms(queue["oldest_wait_s"]) if queue["depth"] else "-"
    assert f"oldest {oldest}  in flight {queue['in_flight']}" in panel
    waits = queue["waits"]
    assert (
        f"queue wait p50 {format_ms(waits['p50_s'])}  p99 {format_ms(waits['p99_s'])}  "
        f"of {waits['answered']} answered in 60 s + {waits['waiting']} waiting"
    ) in panel
    assert (
        f"answered 429 {totals['rate_limited']}  answered 5xx {totals['errors']}  "
        f"upstream 429s (requeued) {totals['upstream_429']}"
    ) in panel


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
        await monitor.refresh()
        before = monitor.history.latest()
        assert before is not None
        await asyncio.to_thread(chat, apim.v1, 3)
        frame = text_of(await monitor.refresh())
        status = monitor.snapshot.apim.status  # type: ignore[union-attr]
    assert monitor.history.values() == [before, status["per_min"]["admitted"]]
    assert status["per_min"]["admitted"] >= before + 3
    line = line_with(frame, "  now ")
    assert f"now {status['per_min']['admitted']}  peak {status['per_min']['admitted']}" in line
    assert "full block = RPM 400" in frame  # a few admissions are a low block against the limit
    assert line.strip("│ ").split("now")[0].strip() in ("▁▂", "▂")
    _, apim_panel = panels(frame)
    assert_gateway_frame(apim_panel, status)


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


class TerminalMonitor:
    """The monitor on a pseudo-terminal (POSIX), its output read on a thread as it comes."""

    def __init__(self, interval: str) -> None:
        import pty  # noqa: PLC0415 - POSIX only
        import termios  # noqa: PLC0415

        nowhere = f"http://127.0.0.1:{free_port()}"
        self.master, self.child = pty.openpty()
        self.modes_before = termios.tcgetattr(self.child)  # before the monitor can change them
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "monitor",
                "--interval",
                interval,
                "--mock-url",
                nowhere,
                "--apim-url",
                nowhere,
            ],
            stdin=self.child,
            stdout=self.child,
            stderr=subprocess.PIPE,
        )
        self.output = bytearray()
        self.seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.seen:
                self.output.extend(chunk)
                self.seen.notify_all()

    def mark(self) -> int:
        with self.seen:
            return len(self.output)

    def wait_for(self, needle: bytes, start: int = 0) -> None:
        """Until ``needle`` shows (escape sequences aside) after output position ``start``."""
        with self.seen:
            assert self.seen.wait_for(lambda: needle in ANSI.sub(b"", self.output[start:]), 30), bytes(
                self.output
            )

    def final_output(self) -> bytes:
        """All the output of a monitor that has exited: read until nothing came for 0.3 s."""
        deadline = time.monotonic() + 15
        with self.seen:
            while self.seen.wait(0.3) and time.monotonic() < deadline:
                pass
            return bytes(self.output)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        os.close(self.child)
        os.close(self.master)
        assert b"Traceback" not in self.proc.stderr.read()  # type: ignore[union-attr]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_ctrl_c_exits_cleanly_and_restores_the_terminal() -> None:
    term = TerminalMonitor(interval="0.2")
    try:
        term.wait_for(b"retrying every")
        term.proc.send_signal(signal.SIGINT)
        assert term.proc.wait(15) == 0
        assert term.final_output().rstrip().endswith(b"\x1b[?25h")  # the cursor Live hid is shown again
    finally:
        term.close()


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
        while first.status()["cluster"]["requests"] < 5:
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
        assert f"waiting now {cluster['depth']} ({status['queue']['depth']} here)" in apim_panel
        assert f"in flight {cluster['in_flight']} ({status['queue']['in_flight']} here)" in apim_panel
        assert (cluster["received"], cluster["admitted"], cluster["requests"]) == (5, 5, 5)
        assert (
            line_with(apim_panel, "since start, 2 instances").split("instances")[1].split()[:3] == ["5"] * 3
        )
        assert cluster["admitted_per_min"] == 5, "the last minute's admissions, summed over the instances"
        assert line_with(apim_panel, "per minute, last 60 s").split("60 s")[1].split()[:3] == ["5"] * 3

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


async def test_a_full_budget_reads_true_while_requests_wait() -> None:
    """The issue's run in small: RPM 3 and 8 requests at once. Received counts all 8, admitted and
    answered 3, 5 wait; the queue-wait percentiles include the 5 still waiting; the admitted
    line's unit is the RPM limit's. Every figure is the one /status reports in the same snapshot."""
    env = apim_env("", APIM_RPM_LIMIT="3", APIM_QUEUE_TIMEOUT_S="300")
    with running("llm_mock_server", env=MOCK_ENV) as mock:
        env["APIM_UPSTREAM_URL"] = mock.v1
        with running("apim_server", env=env) as apim:
            client = openai.AsyncOpenAI(
                base_url=apim.v1, api_key="sk-monitor-test", max_retries=0, timeout=300
            )
            calls = [
                asyncio.create_task(
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4
                    )
                )
                for i in range(8)
            ]
            try:
                deadline = time.monotonic() + 20
                while (status := apim.status())["totals"]["requests"] < 3 or status["queue"]["depth"] < 5:
                    assert time.monotonic() < deadline, status
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # the waiting ones have now waited over a second
                async with StatusClient(mock.url, apim.url) as status_client:
                    monitor = Monitor(status_client, interval=1.0)
                    frame = text_of(await monitor.refresh(), width=80)
                status = monitor.snapshot.apim.status  # type: ignore[union-attr]
            finally:
                for call in calls:
                    call.cancel()
                await asyncio.gather(*calls, return_exceptions=True)
                await client.close()
    _, apim_panel = panels(frame)
    assert_gateway_frame(apim_panel, status)
    assert (status["totals"]["received"], status["totals"]["admitted"], status["totals"]["requests"]) == (
        8,
        3,
        3,
    )
    assert status["per_min"] == {"window_s": 60, "received": 8, "admitted": 3, "answered": 3}
    waits = status["queue"]["waits"]
    assert (waits["answered"], waits["waiting"]) == (3, 5)
    # Five of eight waits are over a second: the median and the p99 are waits still going on.
    assert waits["p50_s"] >= 1.0
    assert waits["p99_s"] == waits["max_s"] >= status["queue"]["oldest_wait_s"] >= 1.0
    assert "now 3  peak 3" in apim_panel
    assert "full block = RPM 3" in apim_panel
    assert all(len(line) <= 80 for line in frame.splitlines())


# --- views, keys and 80 columns ----------------------------------------------------------------------------


def tenants_status() -> dict[str, Any]:
    """The ``tenants`` block as the gateway's /status reports it (keyed by name)."""

    def shares(by_budget: dict[str, float]) -> dict[str, Any]:
        return {b: {"requests": 1, "tokens": 9, "share": f} for b, f in by_budget.items()}

    return gateway_status(
        tenants={
            "team-a": {
                "weight": 2,
                "queued": 3,
                "admitted_per_min": 40,
                "budgets_last_minute": shares({"openai/gpt-4o-mini": 0.5}),
                "wait_p50_s": 0.1,
                "wait_p99_s": 2.0,
            },
            "a-tenant-with-a-very-long-name": {
                "weight": 1,
                "queued": 0,
                "admitted_per_min": 20,
                "budgets_last_minute": shares({"openai/gpt-4o-mini": 0.25, "azure-east/gpt-4o-mini": 1.0}),
                "wait_p50_s": None,
                "wait_p99_s": None,
            },
        }
    )


def test_the_tenants_view_shows_each_tenants_figures() -> None:
    text = text_of(render(with_gateway(tenants_status()), view=View.TENANTS, keys=True), width=80)
    assert "Gateway tenants" in text
    rows = [line for line in text.splitlines() if "team-a" in line]
    assert rows[0].split()[1:7] == ["team-a", "2", "3", "40", "100ms", "2.0s"]
    long_one = line_with(text, "a-tenant-with")
    assert "a-tenant-with-a-very-lo…" in long_one  # a long name is cut, never wrapped
    assert long_one.split("…")[1].split()[:5] == ["1", "0", "20", "-", "-"]
    # Shares: a table of tenants by budgets (deployment over model in the header).
    assert line_with(text, "Share of").split()[3:5] == ["openai", "azure-east"]
    assert line_with(text, "each budget").split()[3:] == ["gpt-4o-mini", "gpt-4o-mini", "│"]
    assert rows[1].split()[2:4] == ["50.0%", "-"]
    assert [line for line in text.splitlines() if "a-tenant-with" in line][1].split()[2:4] == [
        "25.0%",
        "100.0%",
    ]
    assert " t tenants" in line_with(text, "keys")


def test_the_tenants_view_reads_a_real_gateways_tenants(tmp_path: Path) -> None:
    """Two tenants of one budget, each with traffic: every row agrees with /status."""
    with running("llm_mock_server", env=MOCK_ENV) as mock:
        path = tmp_path / "tenants.yaml"
        path.write_text(
            "deployments:\n"
            f"  - {{name: mock, url: {mock.v1}, models: {{gpt-4o-mini: {{rpm: 400, tpm: 150000}}}}}}\n"
            "tenants:\n"
            "  - {name: team-a, key: sk-team-a, weight: 2}\n"
            "  - {name: team-b, key: sk-team-b}\n"
        )
        with running("apim_server", env=apim_env(mock.v1, APIM_CONFIG=str(path))) as apim:
            for key, count in (("sk-team-a", 3), ("sk-team-b", 1)):
                client = openai.OpenAI(base_url=apim.v1, api_key=key, max_retries=0)
                with client:
                    for i in range(count):
                        messages = [{"role": "user", "content": f"hi {i}"}]
                        client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=8)
            status = apim.status()
            urls = ("--mock-url", mock.url, "--apim-url", apim.url)
            result = monitor_cli("--once", "--view", "tenants", *urls)
    assert result.returncode == 0, result.stderr
    assert set(status["tenants"]) == {"team-a", "team-b"}
    for name, admitted in (("team-a", 3), ("team-b", 1)):
        entry = status["tenants"][name]
        assert entry["admitted_per_min"] == admitted
        fields = line_with(result.stdout, name).split()
        at = fields.index(name)
        assert fields[at + 1 : at + 4] == [f"{entry['weight']:g}", "0", str(admitted)]
        share = entry["budgets_last_minute"]["mock/gpt-4o-mini"]["share"]
        assert f"{share * 100:.1f}%" in [line for line in result.stdout.splitlines() if name in line][1]


def test_the_tenants_view_appears_only_when_the_gateway_reports_tenants() -> None:
    for status in (gateway_status(), gateway_status(tenants={})):
        text = text_of(render(with_gateway(status), interval=1.0, keys=True), width=80)
        keys = line_with(text, "keys")
        assert "tenants" not in keys
        assert " b budgets" in keys and " q quit" in keys
        shown = text_of(render(with_gateway(status), view=View.TENANTS), width=80)
        assert "this gateway reports no tenants" in shown
    assert "tenants" in line_with(text_of(render(with_gateway(tenants_status()), keys=True)), "keys")


def test_the_help_line_shows_only_when_keys_work() -> None:
    text = text_of(render(with_gateway(gateway_status()), interval=1.0))
    assert "Ctrl-C quits" in text
    assert "keys" not in text


def several_budgets() -> dict[str, Any]:
    def budget(deployment: str, model: str, rpm: tuple[int, int]) -> dict[str, Any]:
        limits = {
            "rpm": {"limit": rpm[1], "used": rpm[0], "remaining": rpm[1] - rpm[0], "reset_s": 3},
            "tpm": {"limit": 100_000, "used": 12_000, "remaining": 88_000, "reset_s": 3},
        }
        return {"deployment": deployment, "model": model, "limits": limits, "paused_s": 0}

    return gateway_status(
        budgets=[
            budget("openai", "gpt-4o-mini", (30, 30)),
            budget("azure-east-production-2", "gpt-4o-mini-2024-07-18", (5, 60)),
        ],
        pools={"gpt-4o-mini": {"depth": 7, "oldest_wait_s": 12.5}, "gpt-4o-mini-2024-07-18": {"depth": 0}},
        deployments={
            "openai": {"state": "in"},
            "azure-east-production-2": {"state": "cooling", "reason": "HTTP 503"},
        },
    )


def test_the_budgets_view_shows_every_limit_of_every_budget() -> None:
    text = text_of(render(with_gateway(several_budgets()), view=View.BUDGETS), width=80)
    heading = line_with(text, "openai / gpt-4o-mini")
    assert "in  queue 7  oldest 12.5s" in heading
    azure = line_with(text, "azure-east-produc… / gpt-4o-mini-2024-…")  # cut, not wrapped
    assert "cooling (HTTP 503)  queue 0" in azure
    rpm_rows = [line for line in text.splitlines() if " RPM " in line]
    assert len(rpm_rows) == 2
    assert "30 / 30" in rpm_rows[0] and "100.0%" in rpm_rows[0]
    assert "5 / 60" in rpm_rows[1] and "8.3%" in rpm_rows[1]
    assert sum(" TPM " in line for line in text.splitlines()) == 2
    assert text.count("Used / Limit") == 1  # one header for all


def big_status() -> dict[str, Any]:
    """Figures as wide as a busy gateway's, to check nothing wraps at 80 columns."""
    status = gateway_status(
        per_min={"window_s": 60, "received": 123_456, "admitted": 99_999, "answered": 99_999},
        uptime_s=3 * 86400,
        paused_s=12.5,
    )
    status["totals"].update(
        received=12_345_678, admitted=12_000_000, requests=12_300_000, rate_limited=45_678, errors=1_234
    )
    status["totals"]["upstream_429"] = 12_345
    status["queue"].update(depth=12_345, in_flight=1_024, oldest_wait_s=299.9)
    status["queue"]["waits"] = {
        "window_s": 60,
        "answered": 99_999,
        "waiting": 12_345,
        "p50_s": 150.0,
        "p99_s": 299.0,
        "max_s": 299.9,
    }
    return status


@pytest.mark.parametrize("view", list(View))
@pytest.mark.parametrize("name", ["one budget", "several budgets", "tenants"])
def test_every_view_fits_80_columns_without_wrapping(view: View, name: str) -> None:
    status = {"one budget": big_status, "several budgets": several_budgets, "tenants": tenants_status}[name]()
    history = History()
    for t in range(60):
        history.sample(1000.0 + t, 99_999)
    snap = Snapshot(
        ServiceStatus("mock", "http://127.0.0.1:8000", status=gateway_status(service="llm-mock")),
        ServiceStatus("apim", "http://127.0.0.1:8001", status=status, latency_ms=3),
        taken_at=1059.0,
    )
    narrow = text_of(render(snap, history, interval=1.0, view=view, keys=True), width=80)
    wide = text_of(render(snap, history, interval=1.0, view=view, keys=True), width=200)
    assert all(len(line) <= 80 for line in narrow.splitlines())
    # The same lines at 80 as at 200 columns: nothing wrapped onto a line of its own.
    assert len(narrow.splitlines()) == len(wide.splitlines()), narrow
    if name == "one budget" and view is View.OVERVIEW:
        assert "queue wait p50 2m30s  p99 4m59s  of 99,999 answered in 60 s + 12,345 waiting" in narrow
        assert "waiting now 12,345  oldest 5m00s  in flight 1,024" in narrow
        assert "answered 429 45,678  answered 5xx 1,234  upstream 429s (requeued) 12,345" in narrow


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_keys_switch_views_and_q_quits_restoring_the_terminal() -> None:
    import termios  # noqa: PLC0415 - POSIX only

    term = TerminalMonitor(interval="5")
    try:
        term.wait_for(b"LLM mock")
        term.wait_for(b"quit")  # keys work on a terminal: the help line says which
        os.write(term.master, b"b")
        term.wait_for(b"Gateway budgets")  # redrawn at once, not at the next 5 s refresh
        mark = term.mark()
        os.write(term.master, b"o")
        term.wait_for(b"LLM mock", mark)
        os.write(term.master, b"q")
        assert term.proc.wait(15) == 0
        # The cursor Live hid is shown again, last.
        assert term.final_output().rstrip().endswith(b"\x1b[?25h")
        assert termios.tcgetattr(term.child) == term.modes_before, "cbreak mode undone"
    finally:
        term.close()


def test_once_prints_the_chosen_view() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = monitor_cli("--once", "--view", "budgets", "--mock-url", nowhere, "--apim-url", nowhere)
    assert result.returncode == 0, result.stderr
    assert "Gateway budgets" in result.stdout
    assert "LLM mock" not in result.stdout
    assert monitor_cli("--once", "--view", "nope").returncode == 2
