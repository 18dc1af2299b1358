"""The one public lock API: policy changes, lock-screen wording, and every decision about one contract's lock.

Everything that changes whether a phone is locked goes through here (atomic, audited); ``apply_decisions``
of ``payments.locks.sweep`` is private to this package."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from devices.models import Device, LockState
from devices.services.commands import StateChange, device_states_apply
from payments.locks.bounds import lock_screen_text_problem
from payments.locks.decision import Decision, lease_terms
from payments.locks.refresh import lock_leases_refresh, lock_screens_refresh
from payments.locks.screen import ProviderScreenData, screen_build, screen_without_contract
from payments.locks.selectors import contract_lease_terms, policy_rules, temp_unlock_hours_checked
from payments.locks.sweep import SweepReport, apply_decisions, run_sweep
from payments.models import Contract, LockOverride, LockPolicy, LockScreenText, OverrideKind
from portal.audit import audit_record, audited_update, snapshot
from portal.models import Organisation, User
from portal.types import Actor

#: What the policy form and the API may change: the model's audited fields but its provider and timestamp.
LOCK_POLICY_FIELDS = tuple(name for name in LockPolicy.audit_fields if name not in ("provider", "updated_at"))
#: What a command's offline lease is made of (``payments.locks.decision.lease_terms``).
LEASE_POLICY_FIELDS = (
    "offline_lock_days",
    "offline_warning_days",
    "grace_days",
    "lock_start_hour",
    "lock_end_hour",
    "lock_weekdays",
)


def lock_policy_update(
    *, provider: Organisation, actor: Actor, ip_address: str | None = None, **changes: Any
) -> LockPolicy:
    """Create or change a provider's lock policy; every field validated, the change audited.

    Raises ``ValidationError`` (per field) and changes nothing on bad input. A change of what a
    phone's offline lease is made of (the offline policy turned on, changed or off, the lock hours,
    days or grace) reaches the phones whose state stays: their commands are issued again with the
    new lease inputs, in throttled batches after commit (``payments.locks.refresh``, kind ``lease``).
    """
    unknown = sorted(set(changes) - set(LOCK_POLICY_FIELDS))
    if unknown:
        raise ValidationError({name: ["Not a lock policy setting."] for name in unknown})
    with transaction.atomic():
        policy, _created = LockPolicy.objects.select_for_update().get_or_create(provider=provider)
        before = {name: getattr(policy, name) for name in LEASE_POLICY_FIELDS}
        audited_update(
            policy,
            actor=actor,
            action="lock_policy.change",
            changes=changes,
            fields=LOCK_POLICY_FIELDS,
            ip_address=ip_address,
        )
        changed = [name for name in LEASE_POLICY_FIELDS if getattr(policy, name) != before[name]]
        # Without an offline policy before or after, no command carries a lease: nothing to re-issue.
        if changed and (before["offline_lock_days"] is not None or policy.offline_lock_days is not None):
            lock_leases_refresh(
                provider=provider,
                changed=[f"lock_policy.{name}" for name in changed],
                actor=actor,
                ip_address=ip_address,
            )
    return policy


def contract_lock_evaluate(*, contract: Contract, actor: Actor = None, now: dt.datetime | None = None) -> str:
    """Decide one contract's lock state now and, if it changed, write it with its signed command.

    Used wherever money or overrides change (a verified payment, an approved unlock) so the
    phone follows at once instead of waiting for the sweep. Returns the state after the call.
    """
    apply_decisions([contract.pk], now=now or timezone.now(), actor=actor)
    contract.refresh_from_db(fields=["lock_state", "lock_reason", "lock_changed_at", "arrears_cleared_at"])
    return contract.lock_state


def contracts_lock_evaluate(*, contract_ids: Iterable[int], actor: Actor = None, now: dt.datetime) -> dict[str, int]:
    """``contract_lock_evaluate`` for a batch (a statement's credited contracts); returns ``{new_state: count}``."""
    return apply_decisions(contract_ids, now=now, actor=actor)


def lock_sweep(*, now: dt.datetime | None = None, batch_size: int = 1000) -> SweepReport:
    """Evaluate every live contract of every provider and record only changes (the periodic job)."""
    return run_sweep(now=now, batch_size=batch_size)


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": ["Say why the phone is released."]})
    if len(reason) > 300:
        raise ValidationError({"reason": [f"At most 300 characters (this has {len(reason)})."]})
    return reason


def contract_release(
    *, contract: Contract, actor: Actor, reason: str, now: dt.datetime | None = None, ip_address: str | None = None
) -> Contract:
    """Remove a contract's lock for good, whatever its money says; audited as ``contract.release``.

    payments releases a contract by itself only when it is paid off or cancelled. A manual release
    (proof that the phone was never financed, a lock in error the provider writes off) must not
    pretend the money was paid, so the contract's status is left to finance and only its lock
    state becomes ``released``, which the decision treats as final (the sweep skips released
    contracts, and ``decide`` answers ``released`` for them). The signed ``released`` command is
    written in this transaction. Four eyes are the caller's (an approved unlock request).
    """
    reason = _reason(reason)
    now = now or timezone.now()
    with transaction.atomic():
        # Lock order as the sweep: the contract, then (in device_states_apply) its device.
        locked = (
            Contract.objects.select_for_update(of=("self",))
            .select_related("provider", "customer", "device")
            .prefetch_related("installments", "overrides")
            .get(pk=contract.pk)
        )
        if locked.lock_state == LockState.RELEASED:
            raise ValidationError("This phone is already released for good.")
        before = {"lock_state": locked.lock_state, "lock_reason": locked.lock_reason}
        decision = Decision(LockState.RELEASED, f"Released for good by {locked.provider.name}.")
        _write_release(locked, decision=decision, now=now)
        screens = ProviderScreenData.load(locked.provider)
        change = StateChange(
            device_id=locked.device_id,
            state=LockState.RELEASED,
            reason=decision.reason,
            screen=screen_build(data=screens, contract=locked, decision=decision),
            allowed_numbers=screens.allowed_numbers(),
            **contract_lease_terms(locked, rules=policy_rules(locked.provider), now=now),
        )
        device_states_apply(changes=[change], actor=actor)
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


def _write_release(contract: Contract, *, decision: Decision, now: dt.datetime) -> None:
    if contract.lock_state == LockState.LOCKED:
        # The "paid, still locked" watch starts from here: the phone must follow promptly.
        contract.arrears_cleared_at = now
    contract.lock_state = LockState.RELEASED
    contract.lock_reason = decision.reason
    contract.lock_changed_at = contract.updated_at = now
    Contract.objects.filter(pk=contract.pk).update(
        lock_state=contract.lock_state,
        lock_reason=contract.lock_reason,
        lock_changed_at=now,
        arrears_cleared_at=contract.arrears_cleared_at,
        updated_at=now,
    )


def device_release(*, device: Device, actor: Actor, reason: str, ip_address: str | None = None) -> None:
    """Release for good a phone that has no contract (a retail unit locked by mistake): the signed command alone.

    Audited as ``device.release``; four eyes are the caller's (an approved unlock request).
    """
    reason = _reason(reason)
    provider = device.provider
    screens = ProviderScreenData.load(provider)
    with transaction.atomic():
        change = StateChange(
            device_id=device.pk,
            state=LockState.RELEASED,
            reason=f"Released for good by {provider.name}.",
            screen=screen_without_contract(data=screens, device=device),
            allowed_numbers=screens.allowed_numbers(),
            **lease_terms(
                earliest_unpaid_due=None, rules=policy_rules(provider), zone=provider.zone, dispute_hold=False
            ),
        )
        device_states_apply(changes=[change], actor=actor)
        audit_record(actor=actor, action="device.release", obj=device, after={"reason": reason}, ip_address=ip_address)


def contract_override_add(
    *,
    contract: Contract,
    kind: str,
    actor: Actor,
    reason: str,
    ends_at: dt.datetime | None,
    now: dt.datetime | None = None,
    ip_address: str | None = None,
) -> LockOverride:
    """Put a temporary unlock (until ``ends_at``) or a dispute hold on a contract, and decide it at once.

    The override is audited as ``lock_override.create``; the contract is decided in the same
    transaction, so the signed command (if the state changes) is issued now. When a temporary
    unlock ends, the sweep decides again and re-locks (in lock hours). Four eyes are the caller's.
    """
    if kind not in OverrideKind.values:
        raise ValidationError({"kind": [f"One of {', '.join(OverrideKind.values)}."]})
    if kind == OverrideKind.TEMP_UNLOCK and ends_at is None:
        raise ValidationError({"ends_at": ["A temporary unlock needs its end."]})
    now = now or timezone.now()
    with transaction.atomic():
        override = LockOverride.objects.create(
            contract=contract,
            kind=kind,
            starts_at=now,
            ends_at=ends_at,
            reason=reason[:300],
            created_by=actor if isinstance(actor, User) else None,
        )
        audit_record(
            actor=actor,
            action="lock_override.create",
            obj=override,
            organisation=contract.provider,
            after=snapshot(override),
            ip_address=ip_address,
        )
        # A dispute hold changes how the phone's lease ends even when its state stays: issue it again.
        apply_decisions([contract.pk], now=now, actor=actor, reissue=kind == OverrideKind.DISPUTE_HOLD)
        contract.refresh_from_db(fields=["lock_state", "lock_reason", "lock_changed_at", "arrears_cleared_at"])
    return override


def contract_temp_unlock(
    *,
    contract: Contract,
    actor: Actor,
    hours: int,
    reason: str,
    now: dt.datetime | None = None,
    ip_address: str | None = None,
) -> LockOverride:
    """Unlock a contract's phone for ``hours`` (a temporary-unlock override), decided at once.

    ``hours`` is at most the provider's ``max_temp_unlock_hours`` whoever asks (``ValidationError``
    otherwise). See ``contract_override_add``.
    """
    hours = temp_unlock_hours_checked(contract.provider, hours)
    now = now or timezone.now()
    return contract_override_add(
        contract=contract,
        kind=OverrideKind.TEMP_UNLOCK,
        actor=actor,
        reason=reason,
        ends_at=now + dt.timedelta(hours=hours),
        now=now,
        ip_address=ip_address,
    )


def contract_dispute_hold(
    *,
    contract: Contract,
    actor: Actor,
    reason: str,
    ends_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
    ip_address: str | None = None,
) -> LockOverride:
    """Hold a contract's lock while a dispute is open (until ``ends_at``, or until lifted); decided at once."""
    return contract_override_add(
        contract=contract,
        kind=OverrideKind.DISPUTE_HOLD,
        actor=actor,
        reason=reason,
        ends_at=ends_at,
        now=now,
        ip_address=ip_address,
    )


LOCK_SCREEN_TEXT_FIELDS = (
    "title",
    "body",
    "reminder_title",
    "reminder_body",
    "data_kept_notice",
    "factory_reset_warning",
    "offline_unlock_hint",
)


def lock_screen_text_save(
    *, provider: Organisation, language: str, actor: Actor, ip_address: str | None = None, **fields: str
) -> LockScreenText:
    """Create or change a provider's lock-screen wording for one language; validated, audited.

    A text with an unknown placeholder is refused with the list of allowed ones, and one that would
    make the provider's longest command exceed what a phone accepts is refused naming the field
    (``payments.locks.bounds``); nothing changes.
    The next command for each of the provider's phones carries the new wording.
    """
    unknown = sorted(set(fields) - set(LOCK_SCREEN_TEXT_FIELDS))
    if unknown:
        raise ValidationError({name: ["Not a lock-screen text."] for name in unknown})
    if language not in {"en", *provider.languages}:
        raise ValidationError({"language": [f"{language!r} is not one of this provider's languages."]})
    values = {name: (value or "").strip() for name, value in fields.items()}
    with transaction.atomic():
        text = LockScreenText.objects.select_for_update().filter(provider=provider, language=language).first()
        current = {name: getattr(text, name) for name in LOCK_SCREEN_TEXT_FIELDS} if text is not None else {}
        # Refused here, not when the sweep meets it: a command over the bound is never issued.
        too_long = lock_screen_text_problem(provider=provider, language=language, texts=current | values)
        if too_long:
            raise ValidationError(too_long)
        if text is not None:
            changed = sorted(name for name, value in values.items() if getattr(text, name) != value)
            if audited_update(
                text,
                actor=actor,
                action="lock_screen_text.change",
                changes=values,
                fields=LOCK_SCREEN_TEXT_FIELDS,
                ip_address=ip_address,
            ):
                _refresh_screens(provider, changed, actor, ip_address)
            return text
        text = LockScreenText(provider=provider, language=language, **values)
        text.full_clean()
        text.save()
        audit_record(
            actor=actor,
            action="lock_screen_text.change",
            obj=text,
            after=snapshot(text, LOCK_SCREEN_TEXT_FIELDS),
            ip_address=ip_address,
        )
        _refresh_screens(provider, sorted(values), actor, ip_address)
    return text


def _refresh_screens(provider: Organisation, fields: list[str], actor: Actor, ip_address: str | None) -> None:
    """Phones now showing a reminder or a lock get the new wording (``payments.locks.refresh``)."""
    lock_screens_refresh(
        provider_ids=[provider.pk],
        changed=[f"lock_screen_text.{name}" for name in fields],
        actor=actor,
        ip_address=ip_address,
    )
