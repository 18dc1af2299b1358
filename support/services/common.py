"""What every support service checks the same way: the tenant scope, required text, a person's name."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import Http404

from devices.models import Device
from payments.models import Contract
from portal.models import User
from portal.permissions import visible_provider_ids
from portal.types import Actor


def require_provider_in_scope(actor: Actor, provider_id: int) -> None:
    """404 when the provider is outside the actor's tenant scope (the object does not exist for them)."""
    ids = visible_provider_ids(actor)
    if ids is not None and provider_id not in ids:
        raise Http404("No such object.")


def required_text(value: str, field: str, message: str, *, limit: int) -> str:
    """``value`` stripped; ``ValidationError`` on ``field`` when it is empty (``message``) or too long."""
    value = (value or "").strip()
    if not value:
        raise ValidationError({field: [message]})
    if len(value) > limit:
        raise ValidationError({field: [f"At most {limit} characters (this has {len(value)})."]})
    return value


def username_of(user: User | None) -> str:
    return user.get_username() if user is not None else "someone"


def device_latest_contract(device: Device) -> Contract | None:
    """The device's newest contract: the one a caller about this phone is talking about."""
    return Contract.objects.filter(device=device, provider_id=device.provider_id).order_by("-id").first()
