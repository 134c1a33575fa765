"""The Redis URL forms both services take, and the one-line error for any other at start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ratelimit import redis_url
from serving.urls import redacted
from tests.processes import free_port


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1",
        "redis://user:secret@redis.internal:6380/2",
        "rediss://:secret@redis.internal:6380/0?ssl_ca_certs=ca.pem&ssl_check_hostname=false",
        "unix:///run/redis.sock?db=1",
        "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster",
        "redis+sentinel://app:pw@10.0.0.1:26379/mymaster/3?sentinel_password=spw",
        "rediss+sentinel://s1:26380/main?ssl_ca_certs=ca.pem",
    ],
)
def test_supported_forms_pass(url: str) -> None:
    assert redis_url.check(url) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:6379", "must be a Redis URL"),
        ("127.0.0.1:6379", "must be a Redis URL"),
        ("redis+cluster://127.0.0.1:7000", "must be a Redis URL"),
        ("redis://127.0.0.1:port/0", "bad port"),
        ("redis://127.0.0.1:99999", "bad port"),
        ("redis:///0", "no host"),
        ("redis://127.0.0.1/zero", "database number"),
        ("redis://127.0.0.1/0?socket_timeout=soon", "socket_timeout"),
        ("redis+sentinel:///mymaster", "no sentinel"),
        ("redis+sentinel://10.0.0.1:26379", "no service"),
        ("redis+sentinel://10.0.0.1:26379/mymaster/x", "/service_name[/db]"),
        ("redis+sentinel://10.0.0.1:abc/mymaster", "bad sentinel port"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        redis_url.check(url)
    assert says in str(caught.value)


def test_sentinel_url_parts() -> None:
    target = redis_url.sentinel(
        "redis+sentinel://app:p%40ss@s1:26379,s2/main/2?sentinel_password=spw&socket_keepalive=yes"
    )
    assert target.sentinels == [("s1", 26379), ("s2", 26379)]
    assert (target.service, target.db, target.tls) == ("main", 2, False)
    assert target.options["username"] == "app"
    assert target.options["password"] == "p@ss"
    assert target.options["socket_keepalive"] is True
    assert target.sentinel_options == {"password": "spw"}


@pytest.mark.parametrize(
    ("module", "variable", "prog"),
    [("apim_server", "APIM_REDIS_URL", "apim"), ("llm_mock_server", "MOCK_REDIS_URL", "llm-mock")],
)
@pytest.mark.parametrize("value", ["memcached://127.0.0.1:11211", "redis+sentinel://127.0.0.1:26379"])
def test_a_bad_redis_url_stops_either_service_with_one_line(
    module: str, variable: str, prog: str, value: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(free_port())],
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{prog}: invalid setting {variable}:")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        (
            "rediss://app:s3cret@host/0?ssl_ca_certs=/etc/ca.pem",
            "rediss://app:***@host/0?ssl_ca_certs=/etc/ca.pem",
        ),
        (
            "redis+sentinel://app:pw@s1:26379,s2:26379/main?sentinel_password=spw",
            "redis+sentinel://app:***@s1:26379,s2:26379/main?sentinel_password=***",
        ),
        ("redis://user@host/0", "redis://***@host/0"),
    ],
)
def test_logged_urls_hide_every_password(url: str, shown: str) -> None:
    assert redacted(url) == shown
