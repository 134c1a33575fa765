"""URLs as logs, ``/status`` and metrics may show them: without their credentials."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def redacted(url: str) -> str:
    """``url`` with any userinfo (a password, or a token used as the user name) and any
    ``*password`` query option (Sentinel's ``sentinel_password``) replaced by ``***``.

    A user name alone can be a credential (``https://TOKEN@host``), so it goes too unless a
    password follows it, in which case it is kept as the name of the account.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        host = netloc.rsplit("@", 1)[1]
        netloc = ("***@" if parts.password is None else f"{parts.username or ''}:***@") + host
    query = parts.query
    if "password" in query:
        query = urlencode(
            [
                (k, "***" if k.endswith("password") else v)
                for k, v in parse_qsl(query, keep_blank_values=True)
            ],
            safe="*/",
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
