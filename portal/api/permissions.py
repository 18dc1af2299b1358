"""DRF glue for the permission layer in ``portal.permissions``."""

from __future__ import annotations

from rest_framework.permissions import BasePermission

from portal.permissions import ApiClient, has_right


class IsProviderClient(BasePermission):
    """Authenticated with a provider API key; a view may also require ``required_right``."""

    def has_permission(self, request, view):
        if not isinstance(request.user, ApiClient):
            return False
        right = getattr(view, "required_rights", {}).get(request.method)
        return right is None or has_right(request.user, right)
