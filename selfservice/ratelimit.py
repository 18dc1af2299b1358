"""Tries of the self-service lookup, limited per client address (``RATE_LIMIT_TRIES`` per ``RATE_LIMIT_WINDOW``).

Counted in the cache (Redis in production), so every process shares one count.
"""

from __future__ import annotations

import ipaddress

from django.core.cache import cache
from django.http import HttpRequest

from portal.http import client_ip

RATE_LIMIT_TRIES = 10
RATE_LIMIT_WINDOW = 600  # seconds


def client_network(address: str | None) -> str:
    """The address counted for the rate limit: an IPv4 address, or an IPv6 address's /64.

    One IPv6 subscriber gets a whole /64 and can change addresses at will; counting per
    address would let them guess without limit.
    """
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return "unknown"
    if isinstance(parsed, ipaddress.IPv4Address):
        return str(parsed)
    if parsed.ipv4_mapped:  # ::ffff:198.51.100.7 is that IPv4 client
        return str(parsed.ipv4_mapped)
    return str(ipaddress.ip_network(f"{parsed}/64", strict=False))


def over_rate_limit(request: HttpRequest) -> bool:
    """Count one try for the client address; True past ``RATE_LIMIT_TRIES`` in the window."""
    key = f"selfservice:tries:{client_network(client_ip(request))}"
    cache.add(key, 0, timeout=RATE_LIMIT_WINDOW)  # the window starts at the first try
    try:
        tries = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=RATE_LIMIT_WINDOW)
        tries = 1
    return tries > RATE_LIMIT_TRIES
