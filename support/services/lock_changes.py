"""Where support changes a phone's lock: a manual release, and an approved temporary unlock.

These are the only places support writes the money side's rows (a contract's lock state, a
lock override) and asks the device side for a signed command. Each such write is one private
step, so it can be handed to the money side's lock API in one place:

* :func:`_release_contract_lock` — a contract's lock state becomes ``released`` and the signed
  ``released`` command is written;
* :func:`_device_release_without_contract` — the ``released`` command for a phone without a contract;
* :func:`_grant_temporary_unlock` — a ``temp_unlock`` override, then the contract decided at once
  (already through the lock API, ``payments.locks.services``, whose sweep nothing else may import).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from devices.models import Device, LockState
from devices.services.commands import StateChange, device_states_apply
from payments.locks.decision import Decision
from payments.locks.screen import ProviderScreenData, screen_build
from payments.locks.services import contract_override_add
from payments.models import Contract, LockOverride, OverrideKind
from portal.audit import audit_record
from portal.models import User
from portal.types import Actor
from support.services.common import required_text


def contract_release(
    *, contract: Contract, actor: Actor, reason: str, now: dt.datetime | None = None, ip_address: str | None = None
) -> Contract:
    """Remove a contract's lock for good, whatever its money says; audited as ``contract.release``.

    payments releases a contract only when it is paid off or cancelled. A manual release
    (proof that the phone was never financed, a lock in error the provider writes off)
    must not pretend the money was paid, so the contract's status is left to finance and
    only its lock state becomes ``released``, which the decision treats as final (the
    sweep skips released contracts, and ``decide`` answers ``released`` for them). The
    signed ``released`` command is written in this transaction, as payments does.
    """
    reason = required_text(reason, "reason", "Say why the phone is released.", limit=300)
    now = now or timezone.now()
    with transaction.atomic():
        locked, before = _release_contract_lock(contract, actor=actor, now=now)
        audit_record(
            actor=actor,
            action="contract.release",
            obj=locked,
            before=before,
            after={"lock_state": LockState.RELEASED, "reason": reason, "status": locked.status},
            ip_address=ip_address,
        )
    contract.lock_state = locked.lock_state
    return locked


def _release_contract_lock(contract: Contract, *, actor: Actor, now: dt.datetime) -> tuple[Contract, dict[str, Any]]:
    """The contract's lock state becomes ``released`` and its device gets the signed ``released`` command.

    Returns the contract as written (locked for the caller's transaction) and its lock state before.
    """
    # Lock order as payments: the contract, then (in device_states_apply) its device.
    locked = (
        Contract.objects.select_for_update(of=("self",))
        .select_related("provider", "customer", "device")
        .get(pk=contract.pk)
    )
    if locked.lock_state == LockState.RELEASED:
        raise ValidationError("This phone is already released for good.")
    before: dict[str, Any] = {"lock_state": locked.lock_state, "lock_reason": locked.lock_reason}
    decision = Decision(LockState.RELEASED, f"Released for good by {locked.provider.name}.")
    if locked.lock_state == LockState.LOCKED:
        # The "paid, still locked" watch starts from here: the phone must follow promptly.
        locked.arrears_cleared_at = now
    locked.lock_state = LockState.RELEASED
    locked.lock_reason = decision.reason
    locked.lock_changed_at = locked.updated_at = now
    Contract.objects.filter(pk=locked.pk).update(
        lock_state=locked.lock_state,
        lock_reason=locked.lock_reason,
        lock_changed_at=now,
        arrears_cleared_at=locked.arrears_cleared_at,
        updated_at=now,
    )
    screens = ProviderScreenData.load(locked.provider)
    device_states_apply(
        changes=[
            StateChange(
                device_id=locked.device_id,
                state=LockState.RELEASED,
                reason=decision.reason,
                screen=screen_build(data=screens, contract=locked, decision=decision),
                allowed_numbers=screens.allowed_numbers(),
            )
        ],
        actor=actor,
    )
    return locked, before


def _device_release_without_contract(*, device: Device, actor: Actor, reason: str) -> None:
    """Release a phone that has no contract (a retail unit locked by mistake): the signed command alone."""
    provider = device.provider
    screens = ProviderScreenData.load(provider)
    language, text = screens.text_for(provider.default_language)
    screen = {
        "language": language,
        "title": "",
        "body": "",
        "provider": {"name": provider.name},
        "amount_overdue": "0",
        "currency": provider.currency,
        "amount_overdue_display": "",
        "overdue_since": None,
        "contract_number": "",
        "imei": device.imei,
        "payment_channels": [],
        "hotline_numbers": list(provider.hotline_numbers),
        "support_email": provider.support_email,
        "website": provider.website,
        "service_centers": screens.service_centers,
        "fallback": screens.fallback,
        "data_kept_notice": text["data_kept_notice"],
        "factory_reset_warning": text["factory_reset_warning"],
        "offline_unlock_hint": text["offline_unlock_hint"],
        "labels": screens.labels_for(language),
    }
    device_states_apply(
        changes=[
            StateChange(
                device_id=device.pk,
                state=LockState.RELEASED,
                reason=f"Released for good by {provider.name}.",
                screen=screen,
                allowed_numbers=screens.allowed_numbers(),
            )
        ],
        actor=actor,
    )
    audit_record(actor=actor, action="device.release", obj=device, after={"reason": reason})


def _grant_temporary_unlock(
    contract: Contract, *, actor: User, ends_at: dt.datetime, reason: str, now: dt.datetime
) -> LockOverride:
    """A ``temp_unlock`` override of the contract from ``now`` until ``ends_at``, decided at once.

    Through the lock API (``payments.locks.services.contract_override_add``): the override is
    audited as ``lock_override.create`` and the signed command issued now; when the override ends
    the sweep decides again. ``contract.lock_state`` is read back afterwards.
    """
    return contract_override_add(
        contract=contract, kind=OverrideKind.TEMP_UNLOCK, actor=actor, reason=reason, ends_at=ends_at, now=now
    )
