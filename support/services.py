"""Writes of the people's side: hotline cases, unlock requests and proof-of-purchase reviews.

Every write is atomic and audited. Rights and tenant scope are checked here as well as
in the views (a service may be called from elsewhere): another tenant's object is
``Http404``, a missing right ``PermissionDenied``, bad input ``ValidationError``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.db import transaction
from django.http import Http404
from django.utils import timezone

from devices.models import Device, LockState, OfflineCodeKind
from payments.models import Contract, ContractStatus, LockOverride, LockPolicy, OverrideKind
from portal.audit import audit_record, snapshot
from portal.four_eyes import four_eyes_check
from portal.models import Organisation, OrganisationKind, User
from portal.permissions import ROLE_RIGHTS, Right, has_right, require, visible_provider_ids
from portal.templatetags.finlock import local
from portal.uploads import CheckedProof
from support.models import (
    IDENTITY_CHECKS,
    Case,
    CaseCategory,
    CaseChannel,
    CaseEvent,
    CaseEventKind,
    CaseStatus,
    ProofFile,
    ProofFileKind,
    ProofReview,
    Resolution,
    ReviewOutcome,
    ReviewStatus,
    UnlockKind,
    UnlockRequest,
    UnlockStatus,
    sla_due_at,
)

LIVE_CONTRACT_STATUSES = (ContractStatus.ACTIVE, ContractStatus.DEFAULTED)
MAX_PROOF_FILES = 10


def _require_provider_in_scope(actor, provider_id: int) -> None:
    """404 when the provider is outside the actor's tenant scope (the object does not exist for them)."""
    ids = visible_provider_ids(actor)
    if ids is not None and provider_id not in ids:
        raise Http404("No such object.")


def _text(value: str, field: str, message: str, *, limit: int) -> str:
    value = (value or "").strip()
    if not value:
        raise ValidationError({field: [message]})
    if len(value) > limit:
        raise ValidationError({field: [f"At most {limit} characters (this has {len(value)})."]})
    return value


def _username(user) -> str:
    return user.get_username() if user is not None else "someone"


# --- hotline cases ----------------------------------------------------------------------------


def device_latest_contract(device: Device) -> Contract | None:
    """The device's newest contract: the one a caller about this phone is talking about."""
    return Contract.objects.filter(device=device, provider_id=device.provider_id).order_by("-id").first()


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
    _require_provider_in_scope(opened_by, provider.pk)
    require(opened_by, Right.MANAGE_CASES)
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
    try:
        summary = _text(summary, "summary", "Say in a sentence what the caller needs.", limit=300)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    if contract is not None and device is None:
        device = contract.device
    elif contract is None:
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


def _lock_case(case: Case, actor, right: Right = Right.MANAGE_CASES) -> Case:
    """The case's row, locked for this transaction, after the scope and right checks."""
    _require_provider_in_scope(actor, case.provider_id)
    require(actor, right)
    # Race: two agents changing one case at once (assign, verify, resolve) would each
    # write from a stale copy; the row lock serialises them and each sees the other's change.
    return Case.objects.select_for_update().get(pk=case.pk)


def case_note(*, case: Case, actor: User, text: str, ip_address: str | None = None) -> CaseEvent:
    """Add a note to the case's timeline (open or resolved)."""
    text = _text(text, "text", "Write the note.", limit=2000)
    with transaction.atomic():
        locked = _lock_case(case, actor)
        event = CaseEvent.objects.create(case=locked, kind=CaseEventKind.NOTE, actor=actor, text=text)
        audit_record(
            actor=actor, action="case.note", obj=locked, after={"event": event.pk, "text": text}, ip_address=ip_address
        )
    return event


def assignable_staff(provider: Organisation):
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


def case_resolve(*, case: Case, actor: User, resolution: str, note: str, ip_address: str | None = None) -> Case:
    """Close an open case with a resolution code and a note saying what was done."""
    if resolution not in Resolution.values:
        raise ValidationError({"resolution": [f"One of {', '.join(Resolution.values)}."]})
    note = _text(note, "note", "Say what was done for the caller.", limit=2000)
    now = timezone.now()
    with transaction.atomic():
        locked = _lock_case(case, actor)
        # Conditional UPDATE: of two agents resolving at once, the second is told it is done.
        done = Case.objects.filter(pk=locked.pk, status=CaseStatus.OPEN).update(
            status=CaseStatus.RESOLVED, resolution=resolution, resolution_note=note, resolved_by=actor, resolved_at=now
        )
        if not done:
            raise ValidationError(
                {"resolution": [f"Already resolved by {_username(locked.resolved_by)}; nothing more to do."]}
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


# --- manual release ---------------------------------------------------------------------------


def contract_release(
    *, contract: Contract, actor, reason: str, now: dt.datetime | None = None, ip_address: str | None = None
) -> Contract:
    """Remove a contract's lock for good, whatever its money says; audited as ``contract.release``.

    payments releases a contract only when it is paid off or cancelled. A manual release
    (proof that the phone was never financed, a lock in error the provider writes off)
    must not pretend the money was paid, so the contract's status is left to finance and
    only its lock state becomes ``released``, which the decision treats as final (the
    sweep skips released contracts, and ``decide`` answers ``released`` for them). The
    signed ``released`` command is written in this transaction, as payments does.
    """
    from devices.services import StateChange, device_states_apply
    from payments.decision import Decision
    from payments.lockscreen import ProviderScreenData, screen_build

    reason = _text(reason, "reason", "Say why the phone is released.", limit=300)
    now = now or timezone.now()
    with transaction.atomic():
        # Lock order as payments: the contract, then (in device_states_apply) its device.
        locked = (
            Contract.objects.select_for_update(of=("self",))
            .select_related("provider", "customer", "device")
            .get(pk=contract.pk)
        )
        if locked.lock_state == LockState.RELEASED:
            raise ValidationError("This phone is already released for good.")
        before = {"lock_state": locked.lock_state, "lock_reason": locked.lock_reason}
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


def _device_release_without_contract(*, device: Device, actor, reason: str) -> None:
    """Release a phone that has no contract (a retail unit locked by mistake): the signed command alone."""
    from devices.services import StateChange, device_states_apply
    from payments.lockscreen import ProviderScreenData

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


# --- unlock requests --------------------------------------------------------------------------


class UnlockAlreadyDecided(ValidationError):
    """Someone else approved or rejected the request first; nothing more to do."""


@dataclass(frozen=True)
class ApprovalResult:
    """What approving did. ``offline_token`` is the code to read out, shown once and never stored here."""

    unlock_request: UnlockRequest
    offline_token: str | None = None


def max_temp_unlock_hours(provider: Organisation) -> int:
    """The provider's longest temporary unlock (the policy default until the admin saves one)."""
    hours = LockPolicy.objects.filter(provider=provider).values_list("max_temp_unlock_hours", flat=True).first()
    return hours if hours is not None else LockPolicy._meta.get_field("max_temp_unlock_hours").default


def _check_temporary(device: Device, contract: Contract | None, hours) -> None:
    cap = max_temp_unlock_hours(device.provider)
    if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= cap:
        raise ValidationError({"hours": [f"A whole number of hours from 1 to {cap} (the provider's lock policy)."]})
    if contract is None or contract.status not in LIVE_CONTRACT_STATUSES:
        raise ValidationError(
            {"kind": ["A temporary unlock needs an active contract on this phone; ask for a release instead."]}
        )
    if contract.lock_state == LockState.RELEASED:
        raise ValidationError({"kind": ["This phone is already released for good."]})


def unlock_request_create(
    *,
    device: Device,
    kind: str,
    requested_by: User,
    reason: str,
    hours: int | None = None,
    offline_kind: str = "",
    days: int | None = None,
    case: Case | None = None,
    ip_address: str | None = None,
) -> UnlockRequest:
    """Ask for a temporary unlock (``hours``), a permanent release, an offline code (``offline_kind``, ``days``),
    or a new offline-code key (``rekey``) for a phone that lost its own.

    The request waits for another person of the provider to approve it. Checked now as
    far as it can be (the approval checks again, as things may change meanwhile).
    """
    _require_provider_in_scope(requested_by, device.provider_id)
    require(requested_by, Right.REQUEST_UNLOCK)
    reason = _text(reason, "reason", "Say why the phone should be unlocked.", limit=300)
    contract = device_latest_contract(device)
    if kind == UnlockKind.TEMPORARY:
        _check_temporary(device, contract, hours)
        offline_kind, days = "", None
    elif kind == UnlockKind.RELEASE:
        released = (contract.lock_state if contract else device.desired_state) == LockState.RELEASED
        if released:
            raise ValidationError({"kind": ["This phone is already released for good."]})
        hours, offline_kind, days = None, "", None
    elif kind == UnlockKind.OFFLINE_CODE:
        from devices.services import MAX_OFFLINE_DAYS

        hours = None
        if offline_kind == OfflineCodeKind.UNLOCK_DAYS:
            if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_OFFLINE_DAYS:
                raise ValidationError({"days": [f"A whole number of days from 1 to {MAX_OFFLINE_DAYS}."]})
        elif offline_kind == OfflineCodeKind.RELEASE:
            days = None
        else:
            raise ValidationError({"offline_kind": ["Choose a code for a number of days or a release code."]})
        if not device.offline_secret:
            raise ValidationError({"kind": ["This phone has not enrolled yet, so it cannot take an offline code."]})
        if device.offline_sent_at is None:
            raise ValidationError(
                {
                    "kind": [
                        "This phone has not received its new offline-code key yet (it gets it when it next enrols "
                        "with its device key or a re-enrolment code), so a code would not work on it."
                    ]
                }
            )
    elif kind == UnlockKind.REKEY:
        hours, offline_kind, days = None, "", None
        if device.enrolled_at is None:
            raise ValidationError({"kind": ["This phone has not enrolled yet: it gets a key at its first enrolment."]})
    else:
        raise ValidationError({"kind": [f"One of {', '.join(UnlockKind.values)}."]})
    if case is not None and case.provider_id != device.provider_id:
        raise ValidationError({"case": ["Not a case of this phone's provider."]})
    case_device_id = case and (case.device_id or (case.contract.device_id if case.contract_id else None))
    if case_device_id and case_device_id != device.pk:
        # The approver reads the case as the justification: it must be about this very phone.
        raise ValidationError({"case": ["This case is about another phone."]})
    with transaction.atomic():
        unlock = UnlockRequest.objects.create(
            provider_id=device.provider_id,
            device=device,
            contract=contract,
            case=case,
            kind=kind,
            hours=hours,
            offline_kind=offline_kind,
            days=days,
            reason=reason,
            requested_by=requested_by,
            requester_organisation_id=requested_by.organisation_id,
        )
        if case is not None:
            CaseEvent.objects.create(
                case=case,
                kind=CaseEventKind.UNLOCK_REQUESTED,
                actor=requested_by,
                text=f"{unlock.kind_label} requested: {reason}",
                data={"unlock_request": unlock.pk},
            )
        audit_record(
            actor=requested_by,
            action="unlock_request.create",
            obj=unlock,
            after=snapshot(unlock),
            ip_address=ip_address,
        )
    return unlock


def _check_approver(unlock: UnlockRequest, approver: User) -> None:
    _require_provider_in_scope(approver, unlock.provider_id)
    require(approver, Right.APPROVE_UNLOCK)
    if approver.organisation_id != unlock.provider_id:
        raise PermissionDenied("Only the provider's own staff decide on its unlock requests.")
    if approver.pk == unlock.requested_by_id:
        raise PermissionDenied(
            "You asked for this unlock, so someone else of the provider must approve or reject it (four eyes)."
        )


def _claim(unlock: UnlockRequest, approver: User, status: str, note: str, now: dt.datetime) -> None:
    """Move the request out of pending, or tell the caller who did first."""
    # Race: two approvers clicking at once. The conditional UPDATE lets exactly one
    # through (the second blocks on the row until the first commits, then matches nothing).
    done = UnlockRequest.objects.filter(pk=unlock.pk, status=UnlockStatus.PENDING).update(
        status=status, decided_by=approver, decided_at=now, decision_note=note
    )
    if not done:
        current = UnlockRequest.objects.select_related("decided_by").get(pk=unlock.pk)
        raise UnlockAlreadyDecided(
            f"Already {current.get_status_display().lower()} by {_username(current.decided_by)}; nothing more to do."
        )


def unlock_request_approve(
    *,
    unlock_request: UnlockRequest,
    approver: User,
    note: str = "",
    now: dt.datetime | None = None,
    ip_address: str | None = None,
) -> ApprovalResult:
    """Approve a pending request and apply it in the same transaction; all or nothing.

    * temporary: a ``temp_unlock`` override until now + hours, then the contract is
      decided at once (``payments.sweep.apply_decisions``) so the signed command is issued
      now; when the override ends the sweep decides again and re-locks (in lock hours);
    * release: ``contract_release`` (or the device alone when it has no contract);
    * offline code: ``devices.services.offline_code_issue``; the code is returned once;
    * new offline-code key: ``devices.services.device_offline_rekey`` (new secret, new
      starting code, counter reset; the phone receives it at its next proven enrolment).

    Raises ``PermissionDenied`` for the requester themself, ``UnlockAlreadyDecided`` when
    another approver was first, ``ValidationError`` when the effect is no longer possible
    (the request then stays pending).
    """
    from devices.services import device_offline_rekey, offline_code_issue
    from payments.sweep import apply_decisions

    _check_approver(unlock_request, approver)
    # Two accounts of one person are not two people; a rejection changes nothing, so only approval is checked.
    four_eyes_check(requester=unlock_request.requested_by, approver=approver)
    note = (note or "").strip()[:300]
    now = now or timezone.now()
    token = None
    with transaction.atomic():
        _claim(unlock_request, approver, UnlockStatus.APPROVED, note, now)
        unlock = UnlockRequest.objects.select_related("device__provider", "contract", "requested_by").get(
            pk=unlock_request.pk
        )
        device = unlock.device
        contract = unlock.contract
        override = code = None
        why = f"Unlock request #{unlock.pk} by {unlock.requested_by.get_username()}: {unlock.reason}"[:300]
        if unlock.kind == UnlockKind.TEMPORARY:
            if contract is not None:
                contract.refresh_from_db()
            _check_temporary(device, contract, unlock.hours)
            ends_at = now + dt.timedelta(hours=unlock.hours)
            override = LockOverride.objects.create(
                contract=contract,
                kind=OverrideKind.TEMP_UNLOCK,
                starts_at=now,
                ends_at=ends_at,
                reason=why,
                created_by=approver,
            )
            audit_record(
                actor=approver,
                action="lock_override.create",
                obj=override,
                organisation=device.provider,
                after=snapshot(override),
            )
            apply_decisions([contract.pk], now=now, actor=approver)
            contract.refresh_from_db(fields=["lock_state"])
            # The approver reads the end in the provider's zone, as every page shows a time.
            until = local(ends_at, device.provider)
            if contract.lock_state == LockState.TEMP_UNLOCKED:
                outcome = f"Temporarily unlocked until {until}; then the lock policy applies again."
            else:
                outcome = (
                    f"Override in place until {until}; the contract does not lock the phone now "
                    f"({contract.get_lock_state_display().lower()}), so no command was needed."
                )
        elif unlock.kind == UnlockKind.RELEASE:
            if contract is not None:
                contract_release(contract=contract, actor=approver, reason=why, now=now)
            else:
                _device_release_without_contract(device=device, actor=approver, reason=why)
            outcome = "Released for good: no command can lock this phone again for this contract."
        elif unlock.kind == UnlockKind.REKEY:
            device_offline_rekey(
                device=device,
                requested_by=unlock.requested_by,
                approved_by=approver,
                reason=why,
                ip_address=ip_address,
            )
            outcome = (
                "New offline-code key made: the phone receives it when it next enrols with its device key or a "
                "re-enrolment code; codes made with the old key no longer work."
            )
        else:
            code = offline_code_issue(
                device=device,
                kind=unlock.offline_kind,
                days=unlock.days,
                requested_by=unlock.requested_by,
                approved_by=approver,
                reason=why,
            )
            token = code.token
            outcome = f"{unlock.kind_label} issued (counter {code.count}); it was shown once to the approver."
        UnlockRequest.objects.filter(pk=unlock.pk).update(override=override, offline_code=code, outcome=outcome)
        unlock.refresh_from_db()
        audit_record(
            actor=approver,
            action="unlock_request.approve",
            obj=unlock,
            before={"status": UnlockStatus.PENDING},
            after={
                "status": UnlockStatus.APPROVED,
                "kind": unlock.kind,
                "requested_by": unlock.requested_by.get_username(),
                # The requester's id: the auditor's same-browser list (portal.selectors.APPROVAL_ACTIONS).
                "requested_by_id": unlock.requested_by_id,
                "note": note,
                "outcome": outcome,
                "override": override.pk if override else None,
                "offline_code": code.pk if code else None,
            },
            ip_address=ip_address,
        )
        if unlock.case_id:
            CaseEvent.objects.create(
                case_id=unlock.case_id,
                kind=CaseEventKind.NOTE,
                actor=approver,
                at=now,
                text=f"Unlock request #{unlock.pk} approved: {outcome}",
                data={"unlock_request": unlock.pk},
            )
    return ApprovalResult(unlock_request=unlock, offline_token=token)


def unlock_request_reject(
    *, unlock_request: UnlockRequest, approver: User, note: str, ip_address: str | None = None
) -> UnlockRequest:
    """Refuse a pending request with a reason the requester reads; nothing changes on the phone."""
    _check_approver(unlock_request, approver)
    note = _text(note, "note", "Say why the unlock is refused.", limit=300)
    now = timezone.now()
    with transaction.atomic():
        _claim(unlock_request, approver, UnlockStatus.REJECTED, note, now)
        unlock = UnlockRequest.objects.get(pk=unlock_request.pk)
        audit_record(
            actor=approver,
            action="unlock_request.reject",
            obj=unlock,
            before={"status": UnlockStatus.PENDING},
            after={"status": UnlockStatus.REJECTED, "note": note},
            ip_address=ip_address,
        )
        if unlock.case_id:
            CaseEvent.objects.create(
                case_id=unlock.case_id,
                kind=CaseEventKind.NOTE,
                actor=approver,
                at=now,
                text=f"Unlock request #{unlock.pk} rejected: {note}",
                data={"unlock_request": unlock.pk},
            )
    return unlock


# --- proof-of-purchase reviews ----------------------------------------------------------------


def proof_review_submit(
    *,
    device: Device,
    submitted_by: User,
    receipts: list[CheckedProof],
    id_documents: list[CheckedProof] = (),
    note: str = "",
    ip_address: str | None = None,
) -> ProofReview:
    """A service-center technician submits proof of purchase (and ID) for a device, for the provider to review.

    The files were checked by content and size (``portal.uploads.proof_check``); they are
    stored privately under names we choose. If anything fails, no row and no file remain.
    """
    _require_provider_in_scope(submitted_by, device.provider_id)
    require(submitted_by, Right.UPLOAD_PROOF)
    if submitted_by.organisation.kind != OrganisationKind.SERVICE_CENTER:
        raise PermissionDenied("Proof of purchase is submitted by a service center.")
    receipts, id_documents = list(receipts), list(id_documents)
    if not receipts:
        raise ValidationError({"receipts": ["Add at least one photo or PDF of the receipt."]})
    if len(receipts) + len(id_documents) > MAX_PROOF_FILES:
        raise ValidationError({"receipts": [f"At most {MAX_PROOF_FILES} files per review."]})
    note = (note or "").strip()
    if len(note) > 500:
        raise ValidationError({"note": [f"At most 500 characters (this has {len(note)})."]})
    stored: list[tuple] = []
    try:
        with transaction.atomic():
            review = ProofReview.objects.create(
                provider_id=device.provider_id,
                device=device,
                service_center_id=submitted_by.organisation_id,
                submitted_by=submitted_by,
                note=note,
            )
            files = []
            for kind, checked in [(ProofFileKind.RECEIPT, c) for c in receipts] + [
                (ProofFileKind.ID_DOCUMENT, c) for c in id_documents
            ]:
                row = ProofFile(
                    review=review,
                    kind=kind,
                    content_type=checked.content_type,
                    size=checked.size,
                    sha256=checked.sha256,
                    uploaded_by=submitted_by,
                )
                checked.upload.seek(0)
                # Our own name: never the uploader's (it could be a path or carry the owner's name).
                row.file.save(f"{checked.sha256[:20]}.{checked.extension}", ContentFile(checked.upload.read()), False)
                stored.append((row.file.storage, row.file.name))
                row.save()
                files.append({"kind": kind, "content_type": row.content_type, "size": row.size, "sha256": row.sha256})
            audit_record(
                actor=submitted_by,
                action="proof_review.submit",
                obj=review,
                after={"device": device.pk, "note": note, "files": files},
                ip_address=ip_address,
            )
    except Exception:
        # No row, no file.
        for storage, name in stored:
            storage.delete(name)
        raise
    return review


def proof_review_decide(
    *,
    review: ProofReview,
    reviewer: User,
    outcome: str,
    reason: str,
    explanation: str = "",
    unlock_kind: str = UnlockKind.TEMPORARY,
    hours: int | None = None,
    now: dt.datetime | None = None,
    ip_address: str | None = None,
) -> ProofReview:
    """The provider's reviewer decides on a proof of purchase; an unlock it grants is applied at once.

    * ``locked_in_error``: an unlock request (``unlock_kind`` temporary with ``hours``, or
      release) from the technician, approved by the reviewer in this transaction;
    * ``not_financed``: the phone is a retail unit: released the same way;
    * ``rejected``: ``explanation`` (required) is what the technician tells the owner.

    ``reason`` is the reviewer's note for the provider; the technician never sees it.
    """
    _require_provider_in_scope(reviewer, review.provider_id)
    require(reviewer, Right.APPROVE_UNLOCK)
    if reviewer.organisation_id != review.provider_id:
        raise PermissionDenied("Only the provider's own staff review its proofs of purchase.")
    if outcome not in ReviewOutcome.values:
        raise ValidationError({"outcome": [f"One of {', '.join(ReviewOutcome.values)}."]})
    reason = _text(reason, "reason", "Say why (for the provider's records).", limit=300)
    explanation = (explanation or "").strip()
    if outcome == ReviewOutcome.REJECTED and not explanation:
        raise ValidationError({"explanation": ["Write what the technician should tell the owner."]})
    if len(explanation) > 500:
        raise ValidationError({"explanation": [f"At most 500 characters (this has {len(explanation)})."]})
    if outcome == ReviewOutcome.LOCKED_IN_ERROR and unlock_kind not in (UnlockKind.TEMPORARY, UnlockKind.RELEASE):
        raise ValidationError({"unlock_kind": ["Choose a temporary unlock or a release."]})
    now = now or timezone.now()
    with transaction.atomic():
        # Race: two reviewers deciding at once; the conditional UPDATE lets one through.
        done = ProofReview.objects.filter(pk=review.pk, status=ReviewStatus.PENDING).update(
            status=ReviewStatus.DECIDED,
            outcome=outcome,
            reason=reason,
            explanation=explanation,
            decided_by=reviewer,
            decided_at=now,
        )
        if not done:
            current = ProofReview.objects.select_related("decided_by").get(pk=review.pk)
            raise ValidationError(f"Already decided by {_username(current.decided_by)}; nothing more to do.")
        current = ProofReview.objects.select_related("device__provider", "submitted_by").get(pk=review.pk)
        unlock = None
        if outcome != ReviewOutcome.REJECTED:
            kind = unlock_kind if outcome == ReviewOutcome.LOCKED_IN_ERROR else UnlockKind.RELEASE
            label = "locked in error" if outcome == ReviewOutcome.LOCKED_IN_ERROR else "not financed"
            # The technician asked (by submitting the proof) and the reviewer approves: two people.
            unlock = unlock_request_create(
                device=current.device,
                kind=kind,
                requested_by=current.submitted_by,
                reason=f"Proof of purchase review #{current.pk}: {label}",
                hours=hours if kind == UnlockKind.TEMPORARY else None,
            )
            # The technician reads the approval note: the reviewer's own reason stays on the review.
            unlock = unlock_request_approve(
                unlock_request=unlock, approver=reviewer, note=f"Proof review #{current.pk} accepted.", now=now
            ).unlock_request
            if not explanation:
                explanation = (
                    "The phone was unlocked for a while; the provider will contact the owner."
                    if kind == UnlockKind.TEMPORARY
                    else "The phone is released for good: it will unlock when it is next online."
                )
            ProofReview.objects.filter(pk=current.pk).update(unlock_request=unlock, explanation=explanation)
        current.refresh_from_db()
        audit_record(
            actor=reviewer,
            action="proof_review.decide",
            obj=current,
            before={"status": ReviewStatus.PENDING},
            after={
                "status": ReviewStatus.DECIDED,
                "outcome": outcome,
                "reason": reason,
                "explanation": current.explanation,
                "unlock_request": unlock.pk if unlock else None,
            },
            ip_address=ip_address,
        )
    return current
