"""Payment proofs: checking an uploaded receipt by its content, storing it privately, and the
agent's "verify with the customer on the line" write that uses it.

A proof is accepted only when its first bytes say JPEG, PNG, WebP or PDF. The file name
and the browser's content type are never trusted: an executable renamed ``receipt.jpg``
or an SVG (which can carry script) is refused with a message the agent can read out.
Files go to the private ``MEDIA_ROOT`` (never under static) with their SHA-256, and are
only ever served as attachments (``payments.views.payment_proof_download``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import transaction

from payments.models import Payment, PaymentProof, PaymentStatus
from portal.services import audit_record

# What we accept: content type → file extension we store it under.
ACCEPTED = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "application/pdf": "pdf",
}
ACCEPTED_LABEL = "a photo or screenshot (JPEG, PNG or WebP) or a PDF"
_HEAD_BYTES = 512

# Signatures of things people upload by mistake (or on purpose), to say clearly what was refused.
_EXECUTABLES = (
    (b"MZ", "a Windows program"),
    (b"\x7fELF", "a Linux program"),
    (b"\xfe\xed\xfa\xce", "a macOS program"),
    (b"\xfe\xed\xfa\xcf", "a macOS program"),
    (b"\xce\xfa\xed\xfe", "a macOS program"),
    (b"\xcf\xfa\xed\xfe", "a macOS program"),
    (b"\xca\xfe\xba\xbe", "a Java or macOS program"),
    (b"dex\n", "an Android program"),
    (b"#!", "a script"),
)


def sniff_content_type(head: bytes) -> str | None:
    """The accepted content type the first bytes of a file announce, or ``None``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def _describe_refused(head: bytes) -> str:
    """Why a file that is none of the accepted types was refused, in words an agent can pass on."""
    for magic, what in _EXECUTABLES:
        if head.startswith(magic):
            return f"This file is {what}, not a receipt, whatever its name says. Ask the customer for {ACCEPTED_LABEL}."
    if head.startswith(b"PK\x03\x04"):
        return f"This file is an archive (ZIP or an Android package), not a receipt. Ask for {ACCEPTED_LABEL}."
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in head.lower() or (text.startswith(b"<?xml") and b"svg" in head.lower()):
        return f"SVG images are not accepted: they can carry scripts. Ask for {ACCEPTED_LABEL}."
    if text.startswith((b"<!doctype", b"<html", b"<script", b"<?xml", b"<")):
        return f"This file is a web page or markup, not a receipt. Ask for {ACCEPTED_LABEL}."
    return f"This file type is not accepted. Only {ACCEPTED_LABEL}, checked by its content."


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


@dataclass(frozen=True)
class CheckedProof:
    """An uploaded file that passed the checks, with what they found."""

    upload: object  # the UploadedFile
    content_type: str
    extension: str
    size: int
    sha256: str


def proof_check(upload) -> CheckedProof:
    """Check an uploaded proof by size and content; raise ``ValidationError`` with a clear message.

    Reads the file once (in chunks) for the SHA-256; nothing is stored.
    """
    if upload is None:
        raise ValidationError("Choose the receipt file.")
    limit = settings.PROOF_MAX_BYTES
    size = upload.size or 0
    if size == 0:
        raise ValidationError("The file is empty.")
    if size > limit:
        raise ValidationError(f"The file is {_megabytes(size)}; the limit is {_megabytes(limit)}.")
    upload.seek(0)
    head = upload.read(_HEAD_BYTES)
    content_type = sniff_content_type(head)
    if content_type is None:
        raise ValidationError(_describe_refused(head))
    upload.seek(0)
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    return CheckedProof(
        upload=upload, content_type=content_type, extension=ACCEPTED[content_type], size=size, sha256=digest.hexdigest()
    )


def proof_save(*, payment: Payment, checked: CheckedProof, actor, transaction_id: str = "", ip_address=None):
    """Store a checked proof privately for ``payment`` under a name we choose; audited as ``payment.proof``.

    Runs in the caller's transaction, as its last write: if saving the row fails, the file is removed.
    """
    proof = PaymentProof(
        payment=payment,
        content_type=checked.content_type,
        size=checked.size,
        sha256=checked.sha256,
        transaction_id=(transaction_id or payment.external_id)[:100],
        uploaded_by=actor,
    )
    checked.upload.seek(0)
    proof.file.save(f"{checked.sha256[:20]}.{checked.extension}", ContentFile(checked.upload.read()), save=False)
    stored = proof.file.name
    try:
        proof.save()
        audit_record(
            actor=actor,
            action="payment.proof",
            obj=payment,
            after={"proof": proof.pk, "content_type": proof.content_type, "size": proof.size, "sha256": proof.sha256},
            ip_address=ip_address,
        )
    except Exception:
        # No row, no file. Callers save the proof last in their transaction, so this is the only
        # failure after the file is written (short of the commit itself).
        proof.file.storage.delete(stored)
        raise
    return proof


# --- verification with the customer on the line --------------------------------------------------


class WrongContract(ValidationError):
    """The transaction exists but is credited to another contract."""


def payments_with_transaction_id(*, provider_id: int, transaction_id: str) -> list[Payment]:
    """The provider's payments with this transaction id, as a customer reads it out (case-insensitive form)."""
    raw = (transaction_id or "").strip()
    if not raw:
        return []
    variants = {raw, raw.upper()}
    return list(
        Payment.objects.filter(provider_id=provider_id, external_id__in=variants)
        .select_related("contract", "verified_by")
        .order_by("-received_at")[:5]
    )


def payment_verify_existing(*, payment: Payment, contract, actor, checked: CheckedProof | None = None, ip_address=None):
    """Verify a payment the customer named: matched to ``contract`` first if it was unmatched.

    Raises ``PaymentAlreadyVerified`` (another agent was first), ``WrongContract`` (credited to
    another contract) or ``ValidationError`` (e.g. reversed). All or nothing.
    """
    from payments.services import payment_match_manual, payment_verify

    with transaction.atomic():
        if payment.status == PaymentStatus.UNMATCHED:
            payment = payment_match_manual(payment=payment, contract=contract, actor=actor, ip_address=ip_address)
        elif payment.contract_id and payment.contract_id != contract.pk and payment.status != PaymentStatus.VERIFIED:
            raise WrongContract(
                f"Transaction {payment.external_id} is credited to contract {payment.contract.number}, not this one. "
                "A finance officer can reverse it if it was credited wrongly."
            )
        payment = payment_verify(
            payment=payment, actor=actor, proof=f"transaction id read out: {payment.external_id}", ip_address=ip_address
        )
        if checked is not None:
            proof_save(payment=payment, checked=checked, actor=actor, ip_address=ip_address)
    return payment


def payment_record_from_proof(
    *, contract, actor, channel: str, amount, received_at, transaction_id: str, checked: CheckedProof, ip_address=None
) -> Payment:
    """Record a payment from the customer's receipt (source ``agent``), credit ``contract``, verify it, keep the proof.

    All or nothing: a refused amount or date creates no payment and stores no file.
    """
    from payments.services import payment_ingest, payment_verify

    with transaction.atomic():
        payment, _created = payment_ingest(
            provider=contract.provider,
            channel=channel,
            external_id=transaction_id,
            amount=amount,
            currency=contract.currency,
            received_at=received_at,
            reference=contract.number,
            contract_number=contract.number,
            source="agent",
            actor=actor,
            ip_address=ip_address,
        )
        if payment.contract_id != contract.pk:
            raise WrongContract(f"Transaction {payment.external_id} is already credited to another contract.")
        payment = payment_verify(
            payment=payment, actor=actor, proof=f"receipt {checked.sha256[:12]}", ip_address=ip_address
        )
        proof_save(payment=payment, checked=checked, actor=actor, transaction_id=transaction_id, ip_address=ip_address)
    return payment
