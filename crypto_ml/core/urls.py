"""Redis URLs as the settings and every client read them, without redis-py: a
``sentinel://`` list (:func:`parse`) and a URL shown with its passwords hidden
(:func:`safe_url`). :mod:`crypto_ml.core.sentinel` makes the clients."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlparse

from crypto_ml.core.errors import ConfigError

SCHEME = "sentinel://"
#: a password given in a URL's query (redis-py reads ``?password=``)
_QUERY_PASSWORD = re.compile(r"(?i)(password=)[^&#;]*")
DEFAULT_PORT = 26379


def safe_url(url: str) -> str:
    """``url`` (or a ``;`` list of them) to show: every password hidden, whatever else the
    URL gets wrong (kombu's sanitizer raised on a bad port, and hid a list's first only)."""
    return ";".join(_hidden(one) for one in url.split(";"))


def _hidden(url: str) -> str:
    """One URL with its password hidden: all between the user and the last ``@`` (a
    password may hold ``@`` or ``/``), and any ``password=`` of its query."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if sep and at >= 0 and ":" in rest[:at]:
        rest = rest[:at].split(":", 1)[0] + ":**" + rest[at:]
    return scheme + sep + _QUERY_PASSWORD.sub(r"\1**", rest)


def is_sentinel(url: str | None) -> bool:
    return bool(url) and str(url).startswith(SCHEME)


def parse(url: str) -> tuple[list[tuple[str, int]], str | None, int, str | None]:
    """``(sentinels, master password, db, master user)`` of a ``sentinel://`` URL list
    (``sentinel://USER:PASSWORD@host:26379/0;sentinel://host2:26379``)."""
    hosts: list[tuple[str, int]] = []
    password: str | None = None
    username: str | None = None
    db = 0
    for at, chunk in enumerate(url.split(";"), 1):
        parts = urlparse(chunk.strip())
        if parts.scheme != "sentinel" or not parts.hostname:  # its words may hold a password
            raise ConfigError(f"part {at} of the sentinel:// list is no sentinel://HOST:PORT "
                              "(a ';' in a password is written %3B)")
        hosts.append((parts.hostname, parts.port or DEFAULT_PORT))
        if parts.password and password is None:
            password = unquote(parts.password)
            username = unquote(parts.username) if parts.username else None
        if parts.path.strip("/") and not hosts[1:]:
            db = int(parts.path.strip("/"))
    return hosts, password, db, username
