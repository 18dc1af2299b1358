"""Who is asking and where to send them: the client address and safe redirect targets.

Every place that needs the caller's address (the sign-in lockout, the self-service and
enrolment limits, the API throttles, every audit event's ``ip_address``) calls
:func:`client_ip`, and every view that takes a ``next`` parameter calls :func:`next_url`.
"""

from __future__ import annotations

import functools
import ipaddress

from django.conf import settings
from django.http import HttpRequest
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

# The longest X-Forwarded-For we read (a real chain has a handful of hops).
_MAX_FORWARDED_HOPS = 20

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=8)
def _networks(trusted: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in trusted)


def _address(text: str) -> _Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # ::ffff:10.0.0.1 is the IPv4 peer 10.0.0.1 (a dual-stack socket), so a trusted 10.0.0.0/8 covers it.
    return (address.ipv4_mapped or address) if isinstance(address, ipaddress.IPv6Address) else address


def _trusted(address: _Address, networks) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def client_ip(request: HttpRequest | None) -> str | None:
    """The client's address: the peer's, or, when the peer is one of ``TRUSTED_PROXIES``, from X-Forwarded-For.

    X-Forwarded-For is written by whoever sends the request, so it is read only when the
    peer is a proxy we trust, and then from the right: each trusted proxy appends the
    address it saw, so the first address from the right that is not a trusted proxy is the
    client (anything left of it may be forged by that client). A header that cannot be
    read (not addresses, too many hops) is ignored and the peer's address used: a client
    must never be able to choose its address by sending garbage. No request (the auth
    signals of a sign-in from a script): ``None``.
    """
    if request is None:
        return None
    peer = request.META.get("REMOTE_ADDR") or None
    trusted = tuple(settings.TRUSTED_PROXIES)
    if not trusted or peer is None:
        return peer
    networks = _networks(trusted)
    peer_address = _address(peer)
    if peer_address is None or not _trusted(peer_address, networks):
        return peer
    header = request.META.get("HTTP_X_FORWARDED_FOR", "")
    hops = [hop.strip() for hop in header.split(",")] if header.strip() else []
    if not hops or len(hops) > _MAX_FORWARDED_HOPS:
        return peer
    parsed = [_address(hop) for hop in hops]
    addresses = [address for address in parsed if address is not None]
    if len(addresses) != len(parsed):
        return peer
    for address in reversed(addresses):
        if not _trusted(address, networks):
            return str(address)
    # Every hop is one of our proxies: the request started at the leftmost of them.
    return str(addresses[0])


def next_url(request, default: str = "portal:home") -> str:
    """The ``next`` target of this request if it is a path on this site, else ``default`` (a URL name or path).

    Only a path ("/settings/") is followed: a full URL, a scheme-relative ``//host``, or a
    bare word (which ``redirect()`` would take for a view name and fail on) falls back to
    ``default``.
    """
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target.startswith("/") and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    if not default or default.startswith("/"):
        return default
    return reverse(default)
