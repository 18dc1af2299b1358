"""Writes of payment channels (how owners pay, as the lock screen lists them): create, change, order, activate."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max

from payments.locks.refresh import lock_screens_refresh
from payments.models import (
    ChannelKind,
    PaymentChannel,
)
from portal.audit import audit_record, snapshot
from portal.models import Organisation
from portal.types import Actor

PAYMENT_CHANNEL_FIELDS = ("kind", "name", "account", "reference", "instructions", "short_code", "position", "active")


def payment_channel_save(
    *,
    provider: Organisation,
    actor: Actor,
    channel: PaymentChannel | None = None,
    ip_address: str | None = None,
    **fields: Any,
) -> PaymentChannel:
    """Create a payment channel of ``provider`` (last in the order) or change ``channel``; audited.

    Validated like the model (placeholders in the reference, a 5-7 digit short code); a
    short code belongs to a mobile-money channel only. Refused changes change nothing.
    Active channels appear on the next lock command of every phone of the provider.
    """

    unknown = sorted(set(fields) - {"kind", "name", "account", "reference", "instructions", "short_code"})
    if unknown:
        raise ValidationError({name: ["Not a payment channel field."] for name in unknown})
    with transaction.atomic():
        if channel is None:
            last = PaymentChannel.objects.filter(provider=provider).aggregate(last=Max("position"))["last"]
            channel = PaymentChannel(provider=provider, position=0 if last is None else last + 1)
            before = None
        else:
            channel = PaymentChannel.objects.select_for_update().get(pk=channel.pk, provider=provider)
            before = snapshot(channel, PAYMENT_CHANNEL_FIELDS)
        for name, value in fields.items():
            setattr(channel, name, (value or "").strip())
        if channel.short_code and channel.kind != ChannelKind.MOBILE_MONEY:
            raise ValidationError({"short_code": ["Only a mobile-money (M-Pesa) channel has a short code."]})
        channel.full_clean()
        channel.save()
        audit_record(
            actor=actor,
            action="payment_channel.create" if before is None else "payment_channel.change",
            obj=channel,
            before=before,
            after=snapshot(channel, PAYMENT_CHANNEL_FIELDS),
            ip_address=ip_address,
        )
        _refresh_screens(channel, actor, ip_address)
    return channel


def _refresh_screens(channel: PaymentChannel, actor: Actor, ip_address: str | None) -> None:
    """The provider's phones now showing a reminder or a lock list the channels anew (``payments.locks.refresh``)."""
    lock_screens_refresh(
        provider_ids=[channel.provider_id], changed=["payment_channels"], actor=actor, ip_address=ip_address
    )


def payment_channel_set_active(
    *, channel: PaymentChannel, active: bool, actor: Actor, ip_address: str | None = None
) -> PaymentChannel:
    """Deactivate a channel (gone from the next lock screens, kept for the record) or reactivate it; audited."""

    with transaction.atomic():
        channel = PaymentChannel.objects.select_for_update().get(pk=channel.pk)
        if channel.active != active:
            channel.active = active
            channel.save(update_fields=["active"])
            audit_record(
                actor=actor,
                action="payment_channel.activate" if active else "payment_channel.deactivate",
                obj=channel,
                before={"active": not active},
                after={"active": active},
                ip_address=ip_address,
            )
            _refresh_screens(channel, actor, ip_address)
    return channel


def payment_channel_move(*, channel: PaymentChannel, up: bool, actor: Actor, ip_address: str | None = None) -> bool:
    """Move a channel one place up or down the provider's order (positions renumbered 0..n-1); audited.

    Returns False when it is already first (or last). The provider's channels are locked
    while renumbering, so two admins reordering at once cannot interleave.
    """

    with transaction.atomic():
        rows = list(
            PaymentChannel.objects.select_for_update()
            .filter(provider_id=channel.provider_id)
            .order_by("position", "id")
        )
        ids = [row.pk for row in rows]
        at = ids.index(channel.pk)
        to = at - 1 if up else at + 1
        if not 0 <= to < len(ids):
            return False
        order = list(ids)
        order[at], order[to] = order[to], order[at]
        by_id = {row.pk: row for row in rows}
        for position, pk in enumerate(order):
            by_id[pk].position = position
        PaymentChannel.objects.bulk_update(rows, ["position"])
        audit_record(
            actor=actor,
            action="payment_channel.reorder",
            obj=by_id[channel.pk],
            before={"order": ids},
            after={"order": order},
            ip_address=ip_address,
        )
        _refresh_screens(channel, actor, ip_address)
    return True
