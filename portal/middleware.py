"""Two-factor enforcement for the staff portal, and the guard against input no page can use."""

from __future__ import annotations

from urllib.parse import urlencode

from django.http import Http404, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import redirect, render
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


_NUL = "\x00"
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class InputGuardMiddleware:
    """Refuses, before any view runs, input that no finlock page can use.

    * A NUL character in the path is 404 (no URL has one), and in a query parameter or a
      form field (name or value) 400 naming the field: PostgreSQL cannot store or compare
      text with a NUL, so a search box handed one would answer 500.
    * A form body that cannot be read (a broken multipart body) is 400, not the 500 the
      CSRF check would otherwise raise while reading it.

    The APIs' bodies are left to their parsers and serializers (which refuse NUL in every
    text field); their query strings are checked here like any other.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if _NUL in request.path_info:
            if request.path_info.startswith("/api/"):
                return JsonResponse({"detail": "Not found."}, status=404)  # DRF's NotFound, as the API answers it
            raise Http404("No such page.")
        field = self._nul_field(request.GET)
        if (
            field is None
            and request.method == "POST"
            and request.content_type in _FORM_TYPES
            and not request.path_info.startswith("/api/")
        ):
            try:
                form = request.POST
            except MultiPartParserError:
                return _bad_request(request, None, "The form data could not be read; send it again from the page.")
            field = self._nul_field(form)
        if field is not None:
            return _bad_request(request, field, "NUL characters (\\x00) are not allowed.")
        return self.get_response(request)

    @staticmethod
    def _nul_field(data) -> str | None:
        for name, values in data.lists():
            if _NUL in name or any(_NUL in value for value in values):
                return name.replace(_NUL, "\\x00")[:60]
        return None


def _bad_request(request, field: str | None, reason: str):
    """400 in the API's error shape for /api/ paths, else the portal's 400 page naming the field."""
    if request.path_info.startswith("/api/"):
        errors = {field or "non_field_errors": [reason]}
        return JsonResponse({"detail": "The request is invalid; nothing was changed.", "errors": errors}, status=400)
    return render(request, "400.html", {"field": field, "reason": reason}, status=400)
