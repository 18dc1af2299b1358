"""Two-factor enforcement for the staff portal."""

from __future__ import annotations

from urllib.parse import urlencode

from django.shortcuts import redirect
from django.urls import reverse
from django_otp import user_has_device

# Paths a signed-in but not yet verified user may reach.
_OPEN_PREFIXES = ("/static/", "/api/", "/favicon")


class TwoFactorMiddleware:
    """A user with a TOTP device must enter a code after the password; provider
    admins and platform operators without one must enrol before going further."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and not user.is_verified()
            and not request.path.startswith(_OPEN_PREFIXES)
            and request.path
            not in {reverse("portal:otp_verify"), reverse("portal:otp_setup"), reverse("portal:logout")}
        ):
            if user_has_device(user, confirmed=True):
                return redirect(f"{reverse('portal:otp_verify')}?{urlencode({'next': request.get_full_path()})}")
            if user.requires_2fa:
                return redirect("portal:otp_setup")
        return self.get_response(request)
