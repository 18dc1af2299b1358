"""``Authorization: Bearer <key>`` authentication with a provider's API key."""

from __future__ import annotations

import hmac

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from portal.models import ApiKey
from portal.permissions import ApiClient


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Find the key by its public prefix, compare digests in constant time."""

    keyword = "Bearer"
    malformed = "Send the key as: Authorization: Bearer <key>."

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header:
            return None  # no credentials at all: the permission check answers 401
        # This is the API's only scheme: an Authorization header in any other form
        # (Token, Basic, a bare key) is a client mistake, so say what to send rather
        # than "credentials were not provided".
        if header[0].lower() != self.keyword.lower().encode() or len(header) != 2:
            raise exceptions.AuthenticationFailed(self.malformed)
        try:
            token = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
        return self.authenticate_key(token)

    def authenticate_key(self, token: str):
        """``(ApiClient, ApiKey)`` for a full key, however it was sent; ``AuthenticationFailed`` otherwise."""
        parts = token.split("_", 2)
        # The prefix is hex (ApiKey.generate); anything else cannot match a row, and
        # a NUL byte in it would make PostgreSQL raise instead of finding nothing.
        if len(parts) != 3 or parts[0] != "fl" or not parts[1].isalnum() or len(parts[1]) > 12:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        key = ApiKey.objects.select_related("provider").filter(prefix=parts[1]).first()
        if key is None or not hmac.compare_digest(key.digest, ApiKey.digest_of(token)):
            raise exceptions.AuthenticationFailed("Invalid API key.")
        if key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API key has been revoked.")
        now = timezone.now()
        if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
            # Touch at most once a minute so busy clients do not write on every call.
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return ApiClient(key), key

    def authenticate_header(self, request):
        return f'{self.keyword} realm="api"'


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A provider API key from `python manage.py create_api_key <provider-slug>`.",
        }
