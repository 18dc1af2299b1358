def client_ip(request) -> str | None:
    """The caller's address as the server saw it (behind a proxy, REMOTE_ADDR is the proxy's)."""
    return request.META.get("REMOTE_ADDR") or None
