"""Uploaded proofs (receipts, proofs of purchase): checked by content and size, served only as private downloads.

A proof is accepted only when its first bytes say JPEG, PNG, WebP or PDF. The file name
and the browser's content type are never trusted: an executable renamed ``receipt.jpg``
or an SVG (which can carry script) is refused with a message the agent can read out.
Files go to the private ``MEDIA_ROOT`` (never under static) with their SHA-256, and are
only ever served as attachments, through ``private_file_response``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, Http404

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


def private_file_response(stored: FieldFile, *, filename_stem: str, content_type: str) -> FileResponse:
    """A stored upload as a download that no browser renders: the one way proofs leave the server.

    Always an attachment, typed by what the content check found (anything else is
    ``application/octet-stream``), with ``nosniff``, a sandboxing CSP and no caching. A file
    missing from storage is a 404, never a 500.
    """
    try:
        handle = stored.open("rb")
    except (FileNotFoundError, ValueError):
        raise Http404("The file is missing.") from None
    extension = ACCEPTED.get(content_type, "bin")
    response = FileResponse(
        handle,
        as_attachment=True,
        filename=f"{filename_stem}.{extension}",
        content_type=content_type if content_type in ACCEPTED else "application/octet-stream",
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, no-store"
    return response
