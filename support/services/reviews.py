"""Proof-of-purchase reviews: a service center submits a receipt (and ID), the provider decides.

A review that finds the phone locked in error or not financed grants an unlock at once: the
technician's request (they asked by submitting the proof), approved by the reviewer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import cast

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from devices.models import Device
from portal.audit import audit_record
from portal.models import OrganisationKind, User
from portal.permissions import Right, require
from portal.uploads import CheckedProof
from support.models import ProofFile, ProofFileKind, ProofReview, ReviewOutcome, ReviewStatus, UnlockKind, UnlockRequest
from support.services.common import require_provider_in_scope, required_text, username_of
from support.services.unlocks import unlock_request_approve, unlock_request_create

MAX_PROOF_FILES = 10


def _check_submission(
    submitted_by: User, receipts: list[CheckedProof], id_documents: list[CheckedProof], note: str
) -> str:
    """The note, stripped, once the submitter, the files and the note pass; else 403 or ``ValidationError``."""
    if submitted_by.organisation.kind != OrganisationKind.SERVICE_CENTER:
        raise PermissionDenied("Proof of purchase is submitted by a service center.")
    if not receipts:
        raise ValidationError({"receipts": ["Add at least one photo or PDF of the receipt."]})
    if len(receipts) + len(id_documents) > MAX_PROOF_FILES:
        raise ValidationError({"receipts": [f"At most {MAX_PROOF_FILES} files per review."]})
    note = (note or "").strip()
    if len(note) > 500:
        raise ValidationError({"note": [f"At most 500 characters (this has {len(note)})."]})
    return note


def _store_file(
    review: ProofReview, kind: str, checked: CheckedProof, *, uploaded_by: User, stored: list[tuple[Storage, str]]
) -> ProofFile:
    """One checked file, stored privately under a name we choose (noted in ``stored`` for a clean-up)."""
    row = ProofFile(
        review=review,
        kind=kind,
        content_type=checked.content_type,
        size=checked.size,
        sha256=checked.sha256,
        uploaded_by=uploaded_by,
    )
    # portal.uploads.CheckedProof types the upload as ``object``; it is the request's UploadedFile.
    upload = cast(UploadedFile, checked.upload)
    upload.seek(0)
    # Our own name: never the uploader's (it could be a path or carry the owner's name).
    row.file.save(f"{checked.sha256[:20]}.{checked.extension}", ContentFile(upload.read()), False)
    stored.append((row.file.storage, row.file.name))
    row.save()
    return row


def proof_review_submit(
    *,
    device: Device,
    submitted_by: User,
    receipts: Sequence[CheckedProof],
    id_documents: Sequence[CheckedProof] = (),
    note: str = "",
    ip_address: str | None = None,
) -> ProofReview:
    """A service-center technician submits proof of purchase (and ID) for a device, for the provider to review.

    The files were checked by content and size (``portal.uploads.proof_check``); they are
    stored privately under names we choose. If anything fails, no row and no file remain.
    """
    require_provider_in_scope(submitted_by, device.provider_id)
    require(submitted_by, Right.UPLOAD_PROOF)
    receipts, id_documents = list(receipts), list(id_documents)
    note = _check_submission(submitted_by, receipts, id_documents, note)
    stored: list[tuple[Storage, str]] = []
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
                row = _store_file(review, kind, checked, uploaded_by=submitted_by, stored=stored)
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


def _check_decision(*, outcome: str, reason: str, explanation: str, unlock_kind: str) -> tuple[str, str]:
    """The (reason, explanation), stripped, once the decision is complete; else ``ValidationError``."""
    if outcome not in ReviewOutcome.values:
        raise ValidationError({"outcome": [f"One of {', '.join(ReviewOutcome.values)}."]})
    reason = required_text(reason, "reason", "Say why (for the provider's records).", limit=300)
    explanation = (explanation or "").strip()
    if outcome == ReviewOutcome.REJECTED and not explanation:
        raise ValidationError({"explanation": ["Write what the technician should tell the owner."]})
    if len(explanation) > 500:
        raise ValidationError({"explanation": [f"At most 500 characters (this has {len(explanation)})."]})
    if outcome == ReviewOutcome.LOCKED_IN_ERROR and unlock_kind not in (UnlockKind.TEMPORARY, UnlockKind.RELEASE):
        raise ValidationError({"unlock_kind": ["Choose a temporary unlock or a release."]})
    return reason, explanation


def _grant_unlock(
    review: ProofReview,
    *,
    reviewer: User,
    outcome: str,
    unlock_kind: str,
    hours: int | None,
    explanation: str,
    now: dt.datetime,
) -> UnlockRequest:
    """The technician's unlock request for an accepted proof, approved by the reviewer; noted on the review."""
    kind = unlock_kind if outcome == ReviewOutcome.LOCKED_IN_ERROR else UnlockKind.RELEASE
    label = "locked in error" if outcome == ReviewOutcome.LOCKED_IN_ERROR else "not financed"
    # The technician asked (by submitting the proof) and the reviewer approves: two people.
    unlock = unlock_request_create(
        device=review.device,
        kind=kind,
        requested_by=review.submitted_by,
        reason=f"Proof of purchase review #{review.pk}: {label}",
        hours=hours if kind == UnlockKind.TEMPORARY else None,
    )
    # The technician reads the approval note: the reviewer's own reason stays on the review.
    unlock = unlock_request_approve(
        unlock_request=unlock, approver=reviewer, note=f"Proof review #{review.pk} accepted.", now=now
    ).unlock_request
    if not explanation:
        explanation = (
            "The phone was unlocked for a while; the provider will contact the owner."
            if kind == UnlockKind.TEMPORARY
            else "The phone is released for good: it will unlock when it is next online."
        )
    ProofReview.objects.filter(pk=review.pk).update(unlock_request=unlock, explanation=explanation)
    return unlock


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
    require_provider_in_scope(reviewer, review.provider_id)
    require(reviewer, Right.APPROVE_UNLOCK)
    if reviewer.organisation_id != review.provider_id:
        raise PermissionDenied("Only the provider's own staff review its proofs of purchase.")
    reason, explanation = _check_decision(
        outcome=outcome, reason=reason, explanation=explanation, unlock_kind=unlock_kind
    )
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
            raise ValidationError(f"Already decided by {username_of(current.decided_by)}; nothing more to do.")
        current = ProofReview.objects.select_related("device__provider", "submitted_by").get(pk=review.pk)
        unlock = None
        if outcome != ReviewOutcome.REJECTED:
            unlock = _grant_unlock(
                current,
                reviewer=reviewer,
                outcome=outcome,
                unlock_kind=unlock_kind,
                hours=hours,
                explanation=explanation,
                now=now,
            )
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
