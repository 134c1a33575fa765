"""The Redis URL forms both services accept, checked at start.

- ``redis://[user:password@]host[:port][/db][?option=value...]``, ``rediss://`` (TLS, e.g.
  ``?ssl_ca_certs=ca.pem``) and ``unix://path``: one Redis or Valkey, or any node of a Redis
  Cluster (detected when the store first connects: ``INFO cluster`` says ``cluster_enabled:1``).
- ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db][?option=value...]``
  and ``rediss+sentinel://`` (TLS to the sentinels and the master): the master Sentinel names
  for ``service_name``, followed across failovers. The user and password are the master's;
  ``sentinel_username`` / ``sentinel_password`` options authenticate to the sentinels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio.connection import parse_url

PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    tls: bool
    options: dict[str, Any] = field(default_factory=dict)
    """Connection options of the master (user, password, TLS files, timeouts)."""
    sentinel_options: dict[str, Any] = field(default_factory=dict)


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def check(url: str) -> str:
    """``url`` unchanged if it is a form above, else ValueError saying what is wrong."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in SENTINEL_SCHEMES:
        sentinel(url)
    elif scheme in PLAIN_SCHEMES:
        _plain(url)
    else:
        forms = ", ".join(f"{s}://" for s in (*PLAIN_SCHEMES, *SENTINEL_SCHEMES))
        raise ValueError(f"must be a Redis URL ({forms})")
    return url


def _plain(url: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"bad port in Redis URL: {exc}") from exc
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("Redis URL has no host")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError("unix:// Redis URL has no socket path")
    path = parts.path.strip("/")
    if parts.scheme != "unix" and path and not path.isdigit():
        raise ValueError(f"Redis URL path must be a database number (got /{path})")
    parse_url(url)  # the query options, cast as redis-py casts them


def sentinel(url: str) -> SentinelTarget:
    """The parts of a ``redis+sentinel://`` URL, or ValueError."""
    scheme, rest = url.split("://", 1)
    authority, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    userinfo, _, hosts = authority.rpartition("@")
    sentinels = [_address(part) for part in hosts.split(",") if part.strip()]
    if not sentinels:
        raise ValueError("redis+sentinel:// URL names no sentinel (host:port[,host:port...])")
    names = [p for p in path.split("/") if p]
    if not names:
        raise ValueError("redis+sentinel:// URL names no service (…/service_name[/db])")
    if len(names) > 2 or (len(names) == 2 and not names[1].isdigit()):
        raise ValueError("redis+sentinel:// URL path must be /service_name[/db]")
    db = int(names[1]) if len(names) == 2 else 0
    # The master's options parse as a plain URL with the same credentials and query would.
    tls = scheme.lower() == "rediss+sentinel"
    plain = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}placeholder/{db}"
    options = dict(parse_url(plain + (f"?{query}" if query else "")))
    for name in ("host", "port", "connection_class", "db"):
        options.pop(name, None)
    sentinel_options: dict[str, Any] = {}
    for name in SENTINEL_OPTIONS:
        if name in options:
            sentinel_options[name.removeprefix("sentinel_")] = options.pop(name)
    return SentinelTarget(sentinels, unquote(names[0]), db, tls, options, sentinel_options)


def _address(part: str) -> tuple[str, int]:
    host, sep, port = part.strip().rpartition(":")
    if not sep:
        host, port = port, str(DEFAULT_SENTINEL_PORT)
    host = host.strip("[]")
    if not host:
        raise ValueError(f"bad sentinel address {part.strip()!r} (host:port)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad sentinel port in {part.strip()!r}")
    return host, int(port)
