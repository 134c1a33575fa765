"""URLs as logs, ``/status`` and metrics may show them: without their credentials."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redacted(url: str) -> str:
    """``url`` with any userinfo (a password, or a token used as the user name) replaced by ``***``.

    A user name alone can be a credential (``https://TOKEN@host``), so it goes too unless a
    password follows it, in which case it is kept as the name of the account.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = "***@" if parts.password is None else f"{parts.username or ''}:***@"
    return urlunsplit(parts._replace(netloc=user + host))
