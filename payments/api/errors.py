"""A service's ``django.core.exceptions.ValidationError`` as the API's field errors.

Services refuse input with Django's ``ValidationError``; a view that calls more than one
service, or must name the request's fields rather than the service's arguments, turns it
into DRF's ``ValidationError`` here (``portal.api.exceptions`` then wraps it in the API's
one error shape).
"""

from __future__ import annotations

from collections.abc import Mapping

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework.exceptions import ValidationError


def field_errors(exc: DjangoValidationError) -> dict[str, list[str]]:
    """The messages by field, or all of them under ``non_field_errors`` when the error names no field."""
    if hasattr(exc, "error_dict"):
        return exc.message_dict
    return {"non_field_errors": exc.messages}


def api_validation_error(
    exc: DjangoValidationError, *, renamed: Mapping[str, str] | None = None, nested_under: str | None = None
) -> ValidationError:
    """DRF's ``ValidationError`` for a service's refusal, in the request's own field names.

    ``renamed`` maps a service's argument names to the request's fields (``device`` →
    ``device_imei``); ``nested_under`` reports every message under that request field (a
    nested object such as ``customer``).
    """
    errors = field_errors(exc)
    if renamed:
        errors = {renamed.get(field, field): messages for field, messages in errors.items()}
    if nested_under is not None:
        return ValidationError({nested_under: errors})
    return ValidationError(errors)
