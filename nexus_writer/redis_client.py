"""Redis connections from a URL: ``redis://``, ``rediss://`` (TLS) and ``unix://``.

.. important::
   A client (and its connection pool) may be shared by threads; each blocking read takes a
   connection of its own from the pool.

User and password go in the URL (``redis://user:password@host:6379/0``,
``unix://user:password@/path/redis.sock?db=0``); TLS options as query parameters
(``rediss://host:6380?ssl_ca_certs=/path/ca.pem``), as redis-py reads them.
"""

from __future__ import annotations

from typing import Any

import redis


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` that returns bytes, as the protocol's readers need.

    Raises:
        ValueError: the URL's scheme is not redis, rediss or unix.
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"Redis URL {url!r}: the scheme must be redis://, rediss:// or unix://")
    options.setdefault("health_check_interval", 30)
    if scheme != "unix":  # keep-alive is a TCP option
        options.setdefault("socket_keepalive", True)
    options["decode_responses"] = False
    return redis.Redis.from_url(url, **options)
