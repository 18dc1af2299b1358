"""Hotline cases: open, note, assign, verify the caller's identity, resolve.

Every write is atomic and audited; the case's row is locked for each change (two agents
working one case never write from a stale copy).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from devices.models import Device
from payments.models import Contract
from portal.audit import audit_record, snapshot
from portal.models import Organisation, User
from portal.permissions import ROLE_RIGHTS, Right, has_right, require
from support.models import (
    IDENTITY_CHECKS,
    Case,
    CaseCategory,
    CaseChannel,
    CaseEvent,
    CaseEventKind,
    CaseStatus,
    Resolution,
    sla_due_at,
)
from support.services.common import device_latest_contract, require_provider_in_scope, required_text, username_of


def _case_open_errors(
    *, provider: Organisation, category: str, channel: str, device: Device | None, contract: Contract | None
) -> dict[str, list[str]]:
    """What is wrong with the case's category, channel, phone and contract, per field (empty: nothing)."""
    errors: dict[str, list[str]] = {}
    if category not in CaseCategory.values:
        errors["category"] = [f"One of {', '.join(CaseCategory.values)}."]
    if channel not in CaseChannel.values:
        errors["channel"] = [f"One of {', '.join(CaseChannel.values)}."]
    if device is None and contract is None:
        errors["device"] = ["Choose the phone (IMEI) or the contract the call is about."]
    if device is not None and device.provider_id != provider.pk:
        errors["device"] = ["Not a device of this provider."]
    if contract is not None and contract.provider_id != provider.pk:
        errors["contract"] = ["Not a contract of this provider."]
    if device is not None and contract is not None and contract.device_id != device.pk:
        errors["contract"] = ["This contract is for another phone."]
    return errors


def case_open(
    *,
    provider: Organisation,
    category: str,
    opened_by: User,
    summary: str,
    device: Device | None = None,
    contract: Contract | None = None,
    channel: str = CaseChannel.HOTLINE,
    now: dt.datetime | None = None,
    ip_address: str | None = None,
) -> Case:
    """Open a case for a device and/or contract of ``provider``; its SLA due time follows from the category.

    Given only a device, the case is about the device's newest contract (if it has one),
    so the agent sees that contract's money once the caller is verified.
    """
    require_provider_in_scope(opened_by, provider.pk)
    require(opened_by, Right.MANAGE_CASES)
    errors = _case_open_errors(provider=provider, category=category, channel=channel, device=device, contract=contract)
    try:
        summary = required_text(summary, "summary", "Say in a sentence what the caller needs.", limit=300)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    if contract is not None and device is None:
        device = contract.device
    elif contract is None and device is not None:
        contract = device_latest_contract(device)
    now = now or timezone.now()
    with transaction.atomic():
        case = Case.objects.create(
            provider=provider,
            device=device,
            contract=contract,
            channel=channel,
            category=category,
            summary=summary,
            opened_by=opened_by,
            opened_at=now,
            sla_due_at=sla_due_at(category, now),
        )
        CaseEvent.objects.create(case=case, kind=CaseEventKind.OPENED, actor=opened_by, at=now, text=summary)
        audit_record(actor=opened_by, action="case.open", obj=case, after=snapshot(case), ip_address=ip_address)
    return case


def _lock_case(case: Case, actor: User, right: Right = Right.MANAGE_CASES) -> Case:
    """The case's row, locked for this transaction, after the scope and right checks."""
    require_provider_in_scope(actor, case.provider_id)
    require(actor, right)
    # Race: two agents changing one case at once (assign, verify, resolve) would each
    # write from a stale copy; the row lock serialises them and each sees the other's change.
    return Case.objects.select_for_update().get(pk=case.pk)


def case_note(*, case: Case, actor: User, text: str, ip_address: str | None = None) -> CaseEvent:
    """Add a note to the case's timeline (open or resolved)."""
    text = required_text(text, "text", "Write the note.", limit=2000)
    with transaction.atomic():
        locked = _lock_case(case, actor)
        event = CaseEvent.objects.create(case=locked, kind=CaseEventKind.NOTE, actor=actor, text=text)
        audit_record(
            actor=actor, action="case.note", obj=locked, after={"event": event.pk, "text": text}, ip_address=ip_address
        )
    return event


def assignable_staff(provider: Organisation) -> QuerySet[User]:
    """The provider's active staff who may work cases."""
    roles = [role for role, rights in ROLE_RIGHTS.items() if Right.MANAGE_CASES in rights]
    return User.objects.filter(organisation=provider, is_active=True, role__in=roles).order_by("username")


def case_assign(*, case: Case, assignee: User | None, actor: User, ip_address: str | None = None) -> Case:
    """Give an open case to a staff member of its provider who works cases (``None``: back to the queue)."""
    with transaction.atomic():
        locked = _lock_case(case, actor)
        if locked.status != CaseStatus.OPEN:
            raise ValidationError({"assignee": ["This case is resolved; reopen it by opening a new case."]})
        if assignee is not None and (
            assignee.organisation_id != locked.provider_id
            or not assignee.is_active
            or not has_right(assignee, Right.MANAGE_CASES)
        ):
            raise ValidationError({"assignee": ["Choose a member of this provider's staff who works cases."]})
        before = {"assigned_to": locked.assigned_to_id}
        new_id = assignee.pk if assignee else None
        if before["assigned_to"] == new_id:
            return locked
        Case.objects.filter(pk=locked.pk).update(assigned_to=assignee)
        locked.assigned_to = assignee
        CaseEvent.objects.create(
            case=locked,
            kind=CaseEventKind.ASSIGNED,
            actor=actor,
            text=f"Assigned to {assignee.get_username()}" if assignee else "Back to the unassigned queue",
            data={"assigned_to": new_id},
        )
        audit_record(
            actor=actor,
            action="case.assign",
            obj=locked,
            before=before,
            after={"assigned_to": new_id},
            ip_address=ip_address,
        )
    return locked


def _record_identity_failed(
    locked: Case, *, actor: User, passed: list[str], missing: list[str], now: dt.datetime, ip_address: str | None
) -> None:
    """A failed identity check, on the timeline and in the audit trail: repeated failures show social engineering."""
    CaseEvent.objects.create(
        case=locked,
        kind=CaseEventKind.IDENTITY_FAILED,
        actor=actor,
        at=now,
        text="Not confirmed: " + ", ".join(str(IDENTITY_CHECKS[c]) for c in missing),
        data={"passed": passed, "missing": missing},
    )
    audit_record(
        actor=actor,
        action="case.identity_failed",
        obj=locked,
        after={"passed": passed, "missing": missing},
        ip_address=ip_address,
    )


def case_verify_identity(*, case: Case, actor: User, checks: Iterable[str], ip_address: str | None = None) -> bool:
    """Record which identity checks the caller passed; all of them verify the caller.

    Returns whether the caller is now verified. A failed attempt is recorded too (on the
    timeline and in the audit trail): repeated failures are how social engineering shows.
    """
    checks = list(dict.fromkeys(checks))
    unknown = [c for c in checks if c not in IDENTITY_CHECKS]
    if unknown:
        raise ValidationError({"checks": [f"Unknown check(s): {', '.join(unknown)}."]})
    passed = [c for c in IDENTITY_CHECKS if c in checks]
    missing = [c for c in IDENTITY_CHECKS if c not in checks]
    now = timezone.now()
    with transaction.atomic():
        locked = _lock_case(case, actor)
        if locked.status != CaseStatus.OPEN:
            raise ValidationError({"checks": ["This case is resolved; open a new case for a new call."]})
        if locked.identity_verified:
            return True
        if missing:
            _record_identity_failed(locked, actor=actor, passed=passed, missing=missing, now=now, ip_address=ip_address)
            return False
        Case.objects.filter(pk=locked.pk).update(
            identity_checks=passed, identity_verified_by=actor, identity_verified_at=now
        )
        locked.identity_checks, locked.identity_verified_by, locked.identity_verified_at = passed, actor, now
        CaseEvent.objects.create(
            case=locked, kind=CaseEventKind.IDENTITY_VERIFIED, actor=actor, at=now, data={"passed": passed}
        )
        audit_record(
            actor=actor,
            action="case.identity_verified",
            obj=locked,
            after={"passed": passed, "verified_by": actor.get_username()},
            ip_address=ip_address,
        )
    return True


def case_resolve(
    *,
    case: Case,
    actor: User,
    resolution: str,
    note: str,
    now: dt.datetime | None = None,
    ip_address: str | None = None,
) -> Case:
    """Close an open case with a resolution code and a note saying what was done (at ``now``, default: now)."""
    if resolution not in Resolution.values:
        raise ValidationError({"resolution": [f"One of {', '.join(Resolution.values)}."]})
    note = required_text(note, "note", "Say what was done for the caller.", limit=2000)
    now = now or timezone.now()
    with transaction.atomic():
        locked = _lock_case(case, actor)
        # Conditional UPDATE: of two agents resolving at once, the second is told it is done.
        done = Case.objects.filter(pk=locked.pk, status=CaseStatus.OPEN).update(
            status=CaseStatus.RESOLVED, resolution=resolution, resolution_note=note, resolved_by=actor, resolved_at=now
        )
        if not done:
            raise ValidationError(
                {"resolution": [f"Already resolved by {username_of(locked.resolved_by)}; nothing more to do."]}
            )
        locked.refresh_from_db()
        CaseEvent.objects.create(
            case=locked,
            kind=CaseEventKind.RESOLVED,
            actor=actor,
            at=now,
            text=note,
            data={"resolution": resolution},
        )
        audit_record(
            actor=actor,
            action="case.resolve",
            obj=locked,
            before={"status": CaseStatus.OPEN},
            after={"status": CaseStatus.RESOLVED, "resolution": resolution, "note": note},
            ip_address=ip_address,
        )
    return locked
