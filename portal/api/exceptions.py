"""One error shape for the API: ``{"detail": ..., "errors": {field: [messages]}}``."""

from __future__ import annotations

from collections.abc import Mapping

from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def validation_errors(exc: DjangoValidationError) -> dict[str, list[str]]:
    """A service's refusal as the API's field errors (Django's ``__all__`` named ``non_field_errors``)."""
    if hasattr(exc, "error_dict"):
        return {
            # Django's "__all__" is the same thing DRF calls non_field_errors: one name for clients.
            ("non_field_errors" if field == NON_FIELD_ERRORS else field): [str(m) for e in errs for m in e.messages]
            for field, errs in exc.error_dict.items()
        }
    return {"non_field_errors": exc.messages}


def api_validation_error(
    exc: DjangoValidationError, *, renamed: Mapping[str, str] | None = None, nested_under: str | None = None
) -> exceptions.ValidationError:
    """DRF's ``ValidationError`` for a service's refusal, in the request's own field names.

    For a view that calls more than one service or whose fields are not the service's arguments:
    ``renamed`` maps a service's argument names to the request's fields (``device`` → ``device_imei``);
    ``nested_under`` reports every message under that request field (a nested object such as ``customer``).
    """
    errors = validation_errors(exc)
    if renamed:
        errors = {renamed.get(field, field): messages for field, messages in errors.items()}
    if nested_under is not None:
        return exceptions.ValidationError({nested_under: errors})
    return exceptions.ValidationError(errors)


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        return Response(
            {"detail": "The request is invalid; nothing was changed.", "errors": validation_errors(exc)},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, exceptions.NotAuthenticated):
        # DRF's default ("credentials were not provided") does not say which credentials.
        # Keep the exception itself: DRF set its WWW-Authenticate challenge on it.
        exc.detail = exceptions.ErrorDetail(
            "No API key: send it as Authorization: Bearer <key>.", code="not_authenticated"
        )
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.ValidationError):
        data = response.data
        if not isinstance(data, dict):  # ValidationError("...") without a field
            data = {"non_field_errors": data}
        response.data = {"detail": "The request is invalid; nothing was changed.", "errors": data}
    return response
