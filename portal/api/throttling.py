"""Rate limit per API key (falls back to the client address)."""

from rest_framework.throttling import SimpleRateThrottle

from portal.http import client_ip


class ApiKeyRateThrottle(SimpleRateThrottle):
    scope = "api_key"

    def get_ident(self, request):
        # DRF's own get_ident believes any X-Forwarded-For; ours only a trusted proxy's.
        return client_ip(request) or "unknown"

    def get_cache_key(self, request, view):
        key = getattr(request, "auth", None)
        ident = f"key-{key.pk}" if key is not None and hasattr(key, "prefix") else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}
