"""Importing bank statements and mobile-money reports: every line once, credits become payments.

``statement_import_create`` stores the upload (nothing parsed yet, so the request returns at
once); ``statement_import_run`` (a Celery task in production, in-process without a broker)
parses it, keeps each entry once per provider by its fingerprint, turns credits into payments
with the rules of ``payment_ingest`` (matched and allocated, unlocking phones at once), in
set-based batches (``payments/reconcile.py``), and reports debits, returns and unreadable
lines with the reason. Importing the same statement again creates nothing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from payments.models import CsvColumnMapping, ImportStatus, PaymentStatus, StatementImport, StatementLine
from portal.models import Organisation
from portal.services import audit_record

log = logging.getLogger(__name__)

MAX_STATEMENT_BYTES = 50 * 1024 * 1024
# Lines credited per transaction (payments/reconcile.py): large enough that the fixed cost
# of a batch vanishes, small enough that the progress bar moves and locks are brief.
CREDIT_BATCH = 5000


def statement_import_create(
    *,
    provider: Organisation,
    filename: str,
    raw: bytes,
    actor,
    format: str | None = None,
    csv_mapping: str = "",
    ip_address: str | None = None,
) -> StatementImport:
    """Store an uploaded statement for import; refuses empty or oversized files with a clear message."""
    if not raw:
        raise ValidationError({"file": ["The file is empty."]})
    if len(raw) > MAX_STATEMENT_BYTES:
        raise ValidationError({"file": [f"The file is larger than {MAX_STATEMENT_BYTES // (1024 * 1024)} MB."]})
    if csv_mapping and not CsvColumnMapping.objects.filter(provider=provider, name=csv_mapping).exists():
        raise ValidationError({"csv_mapping": [f"No saved CSV mapping is called {csv_mapping!r}."]})
    name = (filename or "statement").replace("/", "_")[-200:]
    with transaction.atomic():
        record = StatementImport.objects.create(
            provider=provider,
            filename=name,
            sha256=hashlib.sha256(raw).hexdigest(),
            format=format or "",
            csv_mapping=csv_mapping,
            created_by=actor if getattr(actor, "pk", None) else None,
        )
        record.file.save(name, ContentFile(raw), save=True)
        audit_record(
            actor=actor,
            action="statement.upload",
            obj=record,
            after={"filename": name, "sha256": record.sha256, "bytes": len(raw)},
            ip_address=ip_address,
        )
    return record


def _mapping_for(record: StatementImport):
    if not record.csv_mapping:
        return None
    from payments.statements.csv_format import CsvMapping

    saved = CsvColumnMapping.objects.get(provider=record.provider, name=record.csv_mapping)
    return CsvMapping(**saved.mapping)


def _import_line(*, record: StatementImport, provider, line, summary: dict, actor) -> None:
    """Import one entry through ``payment_ingest`` (the path a batch falls back to)."""
    from payments.reconcile import (
        NOT_CREDITED_DEBIT,
        entry_external_id,
        entry_received_at,
        not_credited_note,
        statement_line_fields,
    )
    from payments.services import PaymentConflict, payment_conflict_flag, payment_ingest

    if line.direction == "credit" and not line.is_return:
        summary["credits"] += 1
    elif line.is_return:
        summary["returns"] += 1
    else:
        summary["debits"] += 1
    try:
        with transaction.atomic():
            stored = StatementLine.objects.create(
                statement_import=record,
                provider=provider,
                **statement_line_fields(line),
                note="" if line.direction == "credit" and not line.is_return else NOT_CREDITED_DEBIT,
            )
            if stored.note:
                return
            try:
                with transaction.atomic():
                    payment, _created = payment_ingest(
                        provider=provider,
                        channel="bank_transfer",
                        external_id=entry_external_id(line),
                        amount=line.amount,
                        currency=line.currency,
                        received_at=entry_received_at(line, provider.zone),
                        reference=(line.creditor_reference or line.reference)[:140],
                        payer_name=line.counterparty_name,
                        source="statement",
                        actor=actor,
                    )
            except ValidationError as exc:
                stored.note = not_credited_note(exc)
                stored.save(update_fields=["note"])
                summary["not_credited"] += 1
                if isinstance(exc, PaymentConflict):
                    # payment_ingest flagged it inside the savepoint just rolled back: again, to keep it.
                    payment_conflict_flag(conflict=exc, source="statement", actor=actor)
                return
            stored.payment = payment
            stored.save(update_fields=["payment"])
            summary["matched" if payment.status != PaymentStatus.UNMATCHED else "unmatched"] += 1
    except IntegrityError:
        # This entry was imported before (same statement again, or overlapping statements).
        summary["duplicates"] += 1


def statement_import_run(*, import_id: int, actor=None) -> StatementImport:
    """Parse and import one stored statement; idempotent (a finished import is returned as it is).

    Summary keys: rows, credits, debits, returns, duplicates, errors, matched, unmatched,
    not_credited (credits refused by payment rules, each with its reason on the line).
    """
    from payments.statements.detect import parse_statement
    from payments.statements.types import StatementError

    # Race: the task delivered twice (a retry after a lost ack). The conditional UPDATE lets
    # exactly one run start; the other returns the record as it stands.
    started = StatementImport.objects.filter(pk=import_id, status=ImportStatus.PENDING).update(
        status=ImportStatus.RUNNING
    )
    record = StatementImport.objects.select_related("provider").get(pk=import_id)
    if not started:
        return record
    provider = record.provider
    with record.file.open("rb") as handle:
        raw = handle.read()
    try:
        parsed = parse_statement(raw, record.filename, format=record.format or None, csv_mapping=_mapping_for(record))
    except StatementError as exc:
        record.status, record.error, record.finished_at = ImportStatus.FAILED, str(exc), timezone.now()
        record.summary = {"rows": 0, "errors": 1}
        record.save(update_fields=["status", "error", "finished_at", "summary"])
        audit_record(actor=actor, action="statement.failed", obj=record, after={"error": str(exc)})
        return record

    summary = {
        "format": parsed.format,
        "rows": len(parsed.lines) + len(parsed.errors),
        "credits": 0,
        "debits": 0,
        "returns": 0,
        "duplicates": 0,
        "errors": len(parsed.errors),
        "matched": 0,
        "unmatched": 0,
        "not_credited": 0,
        "error_lines": [asdict(e) for e in parsed.errors][:500],
    }
    record.format = parsed.format
    record.total_lines = len(parsed.lines)
    record.save(update_fields=["format", "total_lines"])

    from payments.reconcile import statement_lines_credit

    for start in range(0, len(parsed.lines), CREDIT_BATCH):
        batch = parsed.lines[start : start + CREDIT_BATCH]
        try:
            counts = statement_lines_credit(record=record, provider=provider, lines=batch, actor=actor)
        except IntegrityError:
            # Another import stored some of these entries meanwhile (overlapping statements
            # uploaded at once): nothing of the batch was kept; line by line, each entry
            # lands exactly once, whichever import wins it.
            log.info("statement %s: lines %s-%s imported one by one", record.pk, batch[0].line_no, batch[-1].line_no)
            for line in batch:
                _import_line(record=record, provider=provider, line=line, summary=summary, actor=actor)
        else:
            for key in ("credits", "debits", "returns", "duplicates", "matched", "unmatched", "not_credited"):
                summary[key] += getattr(counts, key)
        StatementImport.objects.filter(pk=record.pk).update(processed_lines=start + len(batch))

    record.processed_lines = len(parsed.lines)
    record.summary = summary
    record.status = ImportStatus.DONE
    record.finished_at = timezone.now()
    record.save(update_fields=["processed_lines", "summary", "status", "finished_at"])
    audit_record(
        actor=actor,
        action="statement.import",
        obj=record,
        after={k: v for k, v in summary.items() if k != "error_lines"},
    )
    return record
