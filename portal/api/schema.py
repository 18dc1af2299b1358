"""OpenAPI generation: every operation also documents the errors it can answer with.

drf-spectacular documents only the success response of a view. A client (and
schemathesis) then meets undocumented 400/401/404/429 answers whose shape it
cannot know. This schema class adds them, all in the one error shape of
``portal.api.exceptions``, without overriding anything a view declares itself.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    """The body of every 4xx answer."""

    detail = serializers.CharField(help_text="What went wrong, in a sentence.")
    errors = serializers.DictField(  # type: ignore[assignment]  # a field named like Serializer.errors
        required=False,
        help_text="On 400 only: the fields to fix, each with its messages "
        '(nested for nested input, e.g. {"customer": {"phone": [...]}}).',
    )


ERROR_RESPONSES = {
    "400": "The request is invalid; `errors` names each field to fix. Nothing was changed.",
    "401": "No credentials, a malformed Authorization header, or an unknown or revoked key.",
    "404": "No such object for this provider (another provider's objects do not exist for this key), "
    "or an invalid page cursor.",
    "429": "Too many requests for this API key; retry after the Retry-After header's seconds.",
}


class AutoSchema(SpectacularAutoSchema):
    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response" or not self.get_auth():
            return responses  # a public endpoint (the schema itself) answers none of these
        codes = ["401", "429"]
        is_list = self._is_list_view()
        if self.method != "GET" or (is_list and self._get_filter_parameters()):
            codes.append("400")
        if self.method == "GET" and (not is_list or self._get_paginator()):
            codes.append("404")
        for code in codes:
            if code not in responses:
                error = OpenApiResponse(ErrorSerializer, description=ERROR_RESPONSES[code])
                responses[code] = self._get_response_for_code(error, code, direction=direction)
        return responses
