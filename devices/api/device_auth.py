"""How a phone authenticates to the device API (``Authorization: Device <credential>``) and its rate limits."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.permissions import BasePermission
from rest_framework.throttling import SimpleRateThrottle

from devices import checkin_cache
from devices.models import Device
from devices.services.credentials import device_by_credential
from portal.http import client_ip


@dataclass(frozen=True)
class DeviceClient:
    """The actor behind a device credential (``request.user`` in the device API); it holds no staff rights."""

    device: Device

    role = "device"
    is_authenticated = True
    is_active = True
    is_anonymous = False

    @property
    def pk(self):  # the audit trail links staff users only
        return None

    def __str__(self) -> str:
        return f"device {self.device.uid}"


class DeviceCredentialAuthentication(authentication.BaseAuthentication):
    """Find the enrolled device by the SHA-256 of its credential; anything else is 401."""

    keyword = "Device"
    malformed = "Send the device credential as: Authorization: Device <credential>."

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        # This is the device API's only scheme, so a missing header is as wrong as a bad one:
        # say what to send (a 401 with the challenge) rather than "not provided".
        if len(header) != 2 or header[0].lower() != self.keyword.lower().encode():
            raise exceptions.AuthenticationFailed(self.malformed)
        try:
            credential = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid device credential.") from None
        device = device_by_credential(credential)
        if device is None:
            # Enrolling again replaces the credential, so an old one lands here too.
            raise exceptions.AuthenticationFailed("Invalid device credential; enrol again.")
        return DeviceClient(device), device

    def authenticate_header(self, request):
        return f'{self.keyword} realm="device-api"'


class IsEnrolledDevice(BasePermission):
    def has_permission(self, request, view):
        return isinstance(request.user, DeviceClient)


class DeviceCredentialScheme(OpenApiAuthenticationExtension):
    target_class = DeviceCredentialAuthentication
    name = "DeviceCredential"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Device <credential>`, the credential the phone received from `enroll`.",
        }


class DeviceRateThrottle(SimpleRateThrottle):
    """Requests per device (``DEVICE_API_RATE``).

    Per device, not per address: phones on mobile data share carrier NAT addresses by
    the thousand, and an address limit would lock them out of their check-ins.
    """

    scope = "device"

    def get_rate(self):
        return settings.DEVICE_API_RATE  # read per request, so a changed setting applies at once

    def allow_request(self, request, view):
        if request.META.get("finlock.checkin_counted"):
            # devices.checkin_cache counted this check-in against the same limit already.
            return True
        device = request.auth if isinstance(request.auth, Device) else None
        if device is not None and checkin_cache.enabled():
            # One shared counter with the cached check-in path (Redis, per device and window).
            counted = checkin_cache.rate_count(device.pk)
            if counted is None:
                # Redis is unavailable: count through the cache, which then counts in this
                # process's memory (portal/cache.py) rather than not at all.
                return super().allow_request(request, view)
            count, limit, self._wait = counted
            return count <= limit
        return super().allow_request(request, view)

    def wait(self):
        return getattr(self, "_wait", None) or super().wait()

    def get_cache_key(self, request, view):
        device = request.auth if isinstance(request.auth, Device) else None
        ident = f"device-{device.pk}" if device is not None else f"ip-{client_ip(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class DeviceEnrollRateThrottle(SimpleRateThrottle):
    """Enrolments per client address (``DEVICE_ENROLL_RATE``).

    Keyed by the address the server saw, not X-Forwarded-For, which the client writes.
    """

    scope = "device_enroll"

    def get_rate(self):
        return settings.DEVICE_ENROLL_RATE

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": client_ip(request) or "unknown"}
