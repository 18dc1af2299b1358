"""The one public lock API: policy changes, lock-screen wording, and every decision about one contract's lock.

Everything that changes whether a phone is locked goes through here (atomic, audited); ``apply_decisions``
of ``payments.locks.sweep`` is private to this package."""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from payments.locks.sweep import apply_decisions, run_sweep
from payments.models import (
    Contract,
    LockPolicy,
    LockScreenText,
)
from portal.audit import audit_record, snapshot
from portal.models import Organisation

LOCK_POLICY_FIELDS = (
    "grace_days",
    "reminder_days_before",
    "reminder_days_after",
    "lock_start_hour",
    "lock_end_hour",
    "lock_weekdays",
    "max_temp_unlock_hours",
    "unlock_alert_minutes",
    "provisional_installments",
    "provisional_max_amount",
    "provisional_confirm_days",
)


def lock_policy_update(*, provider: Organisation, actor, ip_address: str | None = None, **changes):
    """Create or change a provider's lock policy; every field validated, the change audited.

    Raises ``ValidationError`` (per field) and changes nothing on bad input.
    """

    unknown = sorted(set(changes) - set(LOCK_POLICY_FIELDS))
    if unknown:
        raise ValidationError({name: ["Not a lock policy setting."] for name in unknown})
    with transaction.atomic():
        policy, _created = LockPolicy.objects.select_for_update().get_or_create(provider=provider)
        before = snapshot(policy, LOCK_POLICY_FIELDS)
        for name, value in changes.items():
            setattr(policy, name, value)
        policy.full_clean()
        policy.save()
        audit_record(
            actor=actor,
            action="lock_policy.change",
            obj=policy,
            before=before,
            after=snapshot(policy, LOCK_POLICY_FIELDS),
            ip_address=ip_address,
        )
    return policy


def contract_lock_evaluate(*, contract: Contract, actor=None, now: dt.datetime | None = None) -> str:
    """Decide one contract's lock state now and, if it changed, write it with its signed command.

    Used wherever money or overrides change (a verified payment, an approved unlock) so the
    phone follows at once instead of waiting for the sweep. Returns the state after the call.
    """

    apply_decisions([contract.pk], now=now or timezone.now(), actor=actor)
    contract.refresh_from_db(fields=["lock_state", "lock_reason", "lock_changed_at", "arrears_cleared_at"])
    return contract.lock_state


def lock_sweep(*, now: dt.datetime | None = None, batch_size: int = 1000):
    """Evaluate every live contract of every provider and record only changes (the periodic job)."""

    return run_sweep(now=now, batch_size=batch_size)


LOCK_SCREEN_TEXT_FIELDS = (
    "title",
    "body",
    "reminder_title",
    "reminder_body",
    "data_kept_notice",
    "factory_reset_warning",
    "offline_unlock_hint",
)


def lock_screen_text_save(*, provider: Organisation, language: str, actor, ip_address: str | None = None, **fields):
    """Create or change a provider's lock-screen wording for one language; validated, audited.

    A text with an unknown placeholder is refused with the list of allowed ones; nothing changes.
    The next command for each of the provider's phones carries the new wording.
    """

    unknown = sorted(set(fields) - set(LOCK_SCREEN_TEXT_FIELDS))
    if unknown:
        raise ValidationError({name: ["Not a lock-screen text."] for name in unknown})
    if language not in {"en", *provider.languages}:
        raise ValidationError({"language": [f"{language!r} is not one of this provider's languages."]})
    with transaction.atomic():
        text = LockScreenText.objects.select_for_update().filter(provider=provider, language=language).first()
        before = snapshot(text, LOCK_SCREEN_TEXT_FIELDS) if text else None
        text = text or LockScreenText(provider=provider, language=language)
        for name, value in fields.items():
            setattr(text, name, (value or "").strip())
        text.full_clean()
        text.save()
        audit_record(
            actor=actor,
            action="lock_screen_text.change",
            obj=text,
            before=before,
            after=snapshot(text, LOCK_SCREEN_TEXT_FIELDS),
            ip_address=ip_address,
        )
    return text
