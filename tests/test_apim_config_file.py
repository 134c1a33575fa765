"""The configuration file: the shipped example, the shape of SPEC §8, one-line errors, budget keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apim_server.budget import Budget
from apim_server.config import Settings
from apim_server.config_file import ANY_MODEL, ConfigError, from_settings, load
from apim_server.gateway import Gateway
from apim_server.queue import Priority
from ratelimit.embedded import EmbeddedStore
from ratelimit.limits import Cost, Limits
from ratelimit.redis_store import RedisStore
from tests.test_apim_dispatcher import budget

ROOT = Path(__file__).resolve().parent.parent
ENV = {"OPENAI_API_KEY": "sk-openai", "AZURE_EAST_KEY": "az-key", "TEAM_A_KEY": "team-a-key"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "apim.yaml"
    path.write_text(text)
    return path


def test_the_shipped_example_is_valid_and_means_what_it_says() -> None:
    plan = load(ROOT / "apim.example.yaml", Settings(), ENV)
    openai, azure = plan.deployments
    assert (openai.name, openai.url, openai.api_key, openai.cost_rule) == (
        "openai",
        "https://api.openai.com/v1",
        "sk-openai",
        "max",
    )
    assert openai.models["gpt-4o"] == Limits(rpm=500, tpm=30000, margin_ms=500)
    assert azure.kind == "azure"
    assert azure.azure_names == {"gpt-4o-mini": "mini-prod", "text-embedding-3-small": "embed-prod"}
    assert azure.api_version == "2024-10-21"
    mini = azure.models["gpt-4o-mini"]
    assert (mini.rpm, mini.tpm, mini.short_window_s) == (2700, 450000, 10), "6 RPM per 1,000 TPM"
    assert plan.tenant_keys == ("team-a-key",)


def test_without_a_file_one_deployment_serves_every_model_with_one_budget() -> None:
    plan = from_settings(Settings(rpm_limit=7))
    (only,) = plan.deployments
    assert list(only.models) == [ANY_MODEL]
    assert only.models[ANY_MODEL].rpm == 7
    gw = Gateway(Settings(rpm_limit=7), store=EmbeddedStore())
    assert gw.router.route("gpt-4o") is gw.router.route("anything-at-all")
    assert len(gw.router.budgets) == 1


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("deployments: []", "deployments: List should have at least 1 item"),
        ("deployments:\n  - {name: a, url: ftp://x, models: {m: {}}}", "deployments[0].url: must be an http"),
        ("deployments:\n  - {name: a, url: http://x, models: {m: {rpm: -1}}}", "deployments[0].models.m.rpm"),
        ("deployments:\n  - {name: a, url: http://x, models: {m: {rpx: 1}}}", "deployments[0].models.m.rpx"),
        ("deployments:\n  - {name: a, url: http://x, models: {}}", "deployments[0].models"),
        ("deployments:\n  - {name: a, url: http://x, kind: gcp, models: {m: {}}}", "deployments[0].kind"),
        (
            "deployments:\n  - {name: a, url: http://x, daily_reset_tz: Mars/Base, models: {m: {}}}",
            "deployments[0].daily_reset_tz: unknown time zone",
        ),
        (
            "deployments:\n  - {name: a, url: http://x, models: {m: {}}}\n"
            "  - {name: a, url: http://y, models: {m: {}}}",
            "deployments: 'a' appears twice",
        ),
        (
            "deployments:\n  - {name: a, url: http://x, api_key: '${NOT_SET_ANYWHERE}', models: {m: {}}}",
            "deployments[0].api_key: environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            "deployments:\n  - {name: a, url: http://x, models: {m: {}}}\n"
            "tenants:\n  - {name: t, key: k, weight: 0}",
            "tenants[0].weight",
        ),
        ("deployments:\n  - {name: a, url: http://x, models: {m: {}}}\nextra: 1", "extra: Extra inputs"),
        ("deployments: [", "configuration file"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_field(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), Settings(), {})
    message = str(caught.value)
    assert named in message
    assert "\n" not in message


def test_a_secret_is_never_shown_in_an_error(tmp_path: Path) -> None:
    text = "deployments:\n  - {name: a, url: http://x, api_key: 12, models: {m: {}}}"
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), Settings(), {})
    assert "deployments[0].api_key" in str(caught.value)
    assert "12" not in str(caught.value).replace("deployments[0]", "")


def test_the_gateway_stops_at_start_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "deployments:\n  - {name: a, url: http://x, models: {m: {tpm: many}}}")
    done = subprocess.run(
        [sys.executable, "-m", "apim_server", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "deployments[0].models.m.tpm" in lines[0]


def _budget(name: str, limits: Limits, model: str = "gpt-4o") -> Budget:
    return budget(limits, name=name, model=model)


def test_a_budget_key_names_deployment_model_and_policy() -> None:
    base = _budget("east", Limits(rpm=5, rpd=5))
    assert base.key.startswith("deployment:east|gpt-4o|")
    assert base.key == _budget("east", Limits(rpm=5, rpd=5)).key, "same configuration: one record"
    others = [
        _budget("west", Limits(rpm=5, rpd=5)),
        _budget("east", Limits(rpm=5, rpd=5), model="gpt-4o-mini"),
        _budget("east", Limits(rpm=6, rpd=5)),
        _budget("east", Limits(rpm=5, rpd=5, daily_reset_tz="Asia/Seoul")),
        _budget("east", Limits(rpm=5, rpd=5, margin_ms=100)),
        _budget("east", Limits(rpm=60, rpd=5, short_window_s=1)),
    ]
    assert len({base.key, *(b.key for b in others)}) == len(others) + 1


async def test_an_unknown_model_has_no_pool(tmp_path: Path) -> None:
    path = write(tmp_path, "deployments:\n  - {name: a, url: http://x, models: {gpt-4o: {rpm: 5}}}")
    gw = Gateway(Settings(), store=EmbeddedStore(), plan=load(path, Settings(), {}))
    assert gw.router.route("gpt-4o") is not None
    assert gw.router.route("gpt-5") is None


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (
            "daily_reset_tz: UTC, models: {gpt-4o: {rpd: 5}}",
            "daily_reset_tz: Asia/Seoul, models: {gpt-4o: {rpd: 5}}",
        ),
        ("models: {gpt-4o: {rpm: 3}}", "models: {gpt-4o: {rpm: 5}}"),
    ],
    ids=["time zone", "limits"],
)
async def test_gateways_configured_differently_on_one_redis_never_share_a_record(
    tmp_path: Path, redis_url: str, redis_prefix: str, one: str, other: str
) -> None:
    """Before budget keys carried a policy fingerprint, two instances with different time zones
    on one key admitted 20 of 20 against an RPD of 5."""
    gateways = []
    for i, deployment in enumerate((one, other)):
        path = write(tmp_path, f"deployments:\n  - {{name: up, url: http://x, {deployment}}}\n")
        plan = load(path, Settings(), {})
        gateways.append(
            Gateway(Settings(), store=RedisStore.from_url(redis_url, prefix=redis_prefix), plan=plan)
        )
        assert i == len(gateways) - 1
    try:
        first, second = (gw.router.budgets[0] for gw in gateways)
        assert first.key != second.key
        admitted = [(await first.acquire(Cost(1, 0))).allowed for _ in range(3)]
        assert admitted == [True, True, True]
        assert (await second.peek()).state("requests/day").used == 0, "its own record"
        assert (await first.peek()).state("requests/day").used == 3
    finally:
        for gw in gateways:
            for deployment in gw.deployments.values():
                await deployment.upstream.close()
            await gw.store.close()


def test_a_tenant_asking_above_its_max_priority_is_lowered_to_it(tmp_path: Path) -> None:
    text = (
        "deployments:\n  - {name: a, url: http://x, models: {m: {}}}\n"
        "tenants:\n  - {name: t, key: capped, max_priority: normal}\n  - {name: u, key: free}\n"
    )
    gw = Gateway(Settings(), store=EmbeddedStore(), plan=load(write(tmp_path, text), Settings(), {}))
    tenants = gw.tenants
    capped = tenants.identify({"authorization": "Bearer capped"})
    free = tenants.identify({"api-key": "free"})
    assert capped is not None and capped.name == "t"
    assert free is not None and free.name == "u"
    assert tenants.identify({"authorization": "Bearer stranger"}) is None
    assert tenants.clamp(Priority.HIGH, capped) is Priority.NORMAL
    assert tenants.clamp(Priority.LOW, capped) is Priority.LOW
    assert tenants.clamp(Priority.HIGH, free) is Priority.HIGH
