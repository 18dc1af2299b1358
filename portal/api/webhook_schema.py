"""The OpenAPI 3.1 ``webhooks`` of the provider document: what finlock POSTs to a provider's systems.

Each app describes the bodies of its own events (``payments.api.webhooks``,
``devices.api.webhooks``) with the helpers here, and ``SPECTACULAR_SETTINGS["WEBHOOKS"]``
lists them. The signing headers are the same for every webhook (``portal.outbound``), so
one postprocessing hook adds them to each, instead of every app repeating them.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, OpenApiWebhook, extend_schema, extend_schema_field
from rest_framework import serializers

from portal.models import WebhookEventName

#: Shown on every webhook: how to verify it and what an answer means.
_VERIFY = (
    "Signed the Standard Webhooks way (https://www.standardwebhooks.com): verify `webhook-signature` "
    "with any Standard Webhooks library, e.g. Python's `standardwebhooks`: "
    "`Webhook(secret).verify(body, headers)`, which also refuses a timestamp more than 5 minutes "
    "from your clock (a replay). Deduplicate on `webhook-id`: delivery is at least once, and a retry "
    "keeps the id and the body but is signed afresh."
)

_ANSWERS = {
    200: OpenApiResponse(
        description="Any 2xx: the event is delivered and not sent again. Any other answer, a redirect "
        "included, or none within the timeout, is retried with growing pauses, then parked as dead "
        "on the portal's Webhooks page."
    )
}


def event_name_field(name: str) -> serializers.CharField:
    """The ``event`` field of one event's body: always ``name`` (a JSON Schema ``const``)."""

    @extend_schema_field({"type": "string", "const": name})
    class EventName(serializers.CharField):
        pass

    return EventName(help_text=f"Always `{name}`; also in the `X-Finlock-Event` header.")


class WebhookEventSerializer(serializers.Serializer):
    """The fields every provider event's body has (``portal.webhooks.webhook_event_body``);
    each event adds ``event`` and ``data``."""

    id = serializers.IntegerField(
        min_value=1, help_text="The event's number for this endpoint; the `webhook-id` header is `evt_<id>`."
    )
    created_at = serializers.DateTimeField(help_text="When the change happened (UTC, ISO 8601).")


def webhook(name: str, *, body: type[serializers.Serializer], summary: str, description: str) -> OpenApiWebhook:
    """An ``OpenApiWebhook`` for the POST of ``body`` under ``name``, with finlock's answers and verification."""
    return OpenApiWebhook(
        name=name,
        decorator=extend_schema(
            summary=summary, description=f"{description}\n\n{_VERIFY}", request=body, responses=_ANSWERS
        ),
    )


# --- the signing headers (postprocessing hook) -----------------------------------------

_SIGNING_HEADERS = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "The message id: `evt_<event id>` for a provider event, `cmd_<command id>` for a "
        "device command. The same on every retry of one message: deduplicate on it.",
        "schema": {"type": "string", "pattern": "^(evt|cmd)_[1-9][0-9]*$"},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "When this attempt was signed, in Unix seconds. Refuse one more than 5 minutes from your clock.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": '`v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, keyed with '
        "the base64-decoded part of the `whsec_` secret after the prefix. Space-separated, one per "
        "secret, while a rotated secret is still honoured: accept if any matches.",
        "schema": {"type": "string", "pattern": "^v1,[A-Za-z0-9+/]+={0,2}( v1,[A-Za-z0-9+/]+={0,2})*$"},
    },
]


def add_signing_headers(result, generator, request, public):
    """Postprocessing hook: document the Standard Webhooks headers (and ``X-Finlock-Event``) on every webhook."""
    for name, item in (result.get("webhooks") or {}).items():
        for operation in item.values():
            parameters = [dict(header) for header in _SIGNING_HEADERS]
            if name in WebhookEventName.values:
                parameters.append(
                    {
                        "name": "X-Finlock-Event",
                        "in": "header",
                        "required": True,
                        "description": "The event's name, as in the body's `event`.",
                        "schema": {"type": "string", "const": name},
                    }
                )
            operation["parameters"] = parameters
    return result
