"""Template helpers for the staff portal shell: local times, phone numbers and state badges.

Money formatting lives with the money, in ``payments.templatetags.money``."""

from __future__ import annotations

import datetime as dt

import phonenumbers
from django import template
from django.utils import timezone
from django.utils.html import format_html

register = template.Library()

# Badge colours by lock state / installment status; the text always names the state,
# colour only reinforces it (colour-blind staff read the word).
_BADGE = {
    "unlocked": "ok",
    "released": "ok",
    "paid": "ok",
    "paid_off": "ok",
    "active": "info",
    "reminder": "warn",
    "due": "info",
    "partial": "warn",
    "temp_unlocked": "warn",
    "locked": "bad",
    "overdue": "bad",
    "defaulted": "bad",
    "cancelled": "muted",
    # Delivery of a device command (devices.delivery.delivery_status).
    "acknowledged": "ok",
    "delivered": "info",
    "pending": "warn",
    "dead": "bad",
    "superseded": "muted",
    "": "muted",
}


@register.filter
def local(value: dt.datetime | None, org) -> str:
    """An aware datetime shown in the organisation's time zone, with the zone's name."""
    if value is None:
        return "—"
    zone = getattr(org, "zone", None) or timezone.get_current_timezone()
    local_value = value.astimezone(zone)
    return f"{local_value:%d %b %Y %H:%M} {local_value.tzname()}"


@register.filter
def phone(value) -> str:
    """An E.164 number in international format with spaces, easy to read out on a call."""
    try:
        return phonenumbers.format_number(
            phonenumbers.parse(str(value), None), phonenumbers.PhoneNumberFormat.INTERNATIONAL
        )
    except phonenumbers.NumberParseException:
        return str(value)


@register.simple_tag
def badge(value, label=None):
    """A coloured badge that also spells out the state."""
    value = str(value or "")
    text = label if label is not None else value.replace("_", " ").capitalize() or "Unknown"
    return format_html('<span class="badge badge-{}">{}</span>', _BADGE.get(value, "muted"), text)
