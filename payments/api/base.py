"""What every payments API module shares: the caller as a typed API client, and the money field."""

from __future__ import annotations

from typing import Any, cast

from rest_framework import serializers
from rest_framework.request import Request

from portal.permissions import ApiClient


def api_client(request: Request) -> ApiClient:
    """The provider's system behind this request.

    Every payments API view runs behind ``portal.api.permissions.IsProviderClient``, which
    refuses any caller that is not an ``ApiClient`` before a view method runs.
    """
    return cast(ApiClient, request.user)


def money_field(**kwargs: Any) -> serializers.DecimalField:
    """An amount as this API sends every amount: a decimal string with two places, never a float."""
    return serializers.DecimalField(max_digits=14, decimal_places=2, coerce_to_string=True, **kwargs)
