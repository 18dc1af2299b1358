"""Importing bank statements and mobile-money reports: every line once, credits become payments.

``statement_import_create`` stores the upload (nothing parsed yet, so the request returns at
once); ``statement_imports_enqueue`` hands it to the ``imports`` queue once the upload has
committed; ``statement_import_run`` (the Celery task in production, in-process without a
broker) parses it, keeps each entry once per provider by its fingerprint, turns credits into
payments with the rules of ``payment_ingest`` (matched and allocated, unlocking phones at
once), in set-based batches (``payments/statements/reconcile.py``), and reports debits, returns and
unreadable lines with the reason. Importing the same statement again creates nothing.

Every import ends ``done`` or ``failed`` with a reason: an unreadable file, a run that reaches
its time limit (``STATEMENT_IMPORT_TIME_LIMIT_SECONDS``) and any unexpected error alike. An
import whose task never reached the broker (down at upload), was lost with a restarted
Redis, or whose worker died mid-run is queued again by ``statement_imports_requeue`` (the
periodic job), like device commands; a conditional UPDATE lets exactly one run claim it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from payments.ledger.errors import PaymentConflict
from payments.ledger.services import channel_record_refusal, payment_conflict_flag, payment_ingest
from payments.models import CsvColumnMapping, ImportStatus, PaymentStatus, StatementImport, StatementLine
from payments.statements.entries import (
    CHANNEL,
    NOT_CREDITED_DEBIT,
    entry_external_id,
    entry_received_at,
    not_credited_note,
    statement_line_fields,
)
from payments.statements.parsers.csv_format import CsvMapping
from payments.statements.parsers.detect import parse_statement
from payments.statements.parsers.types import MAX_STATEMENT_BYTES, StatementError
from payments.statements.parsers.types import StatementLine as ParsedLine
from payments.statements.receipts import receipt_not_confirmed_note
from payments.statements.reconcile import statement_lines_credit
from portal.audit import AuditEntry, audit_record, audit_record_many
from portal.models import Organisation, User
from portal.permissions import ApiClient
from portal.queue import enqueue_each
from portal.types import Actor

log = logging.getLogger(__name__)

# Lines credited per transaction (payments/statements/reconcile.py): large enough that the fixed cost
# of a batch vanishes, small enough that the progress bar moves and locks are brief.
CREDIT_BATCH = 5000
# Runs that may claim one import. A run that was lost (worker killed, out of memory, hard
# time limit) is retried; a file that kills its run every time fails after this many.
MAX_ATTEMPTS = 3
# A queued import still waiting this long is queued again (its task may have been lost with a
# restarted Redis); a duplicate task is harmless, its claim simply fails.
REQUEUE_PENDING_AFTER = timedelta(minutes=5)
# A running import is known dead when its run started longer ago than the hard time limit
# (after which the worker kills it) plus this margin.
STALE_MARGIN = timedelta(seconds=60)
# The worker's soft time limit (a signal) stops a run at STATEMENT_IMPORT_TIME_LIMIT_SECONDS;
# a check between batches stops it this much later where no signal comes (a run in-process,
# a pool without time limits), well before the hard limit.
BACKSTOP_SECONDS = 10


def statement_import_create(
    *,
    provider: Organisation,
    filename: str,
    raw: bytes,
    actor: Actor,
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
            created_by=actor if isinstance(actor, User) and actor.pk else None,
            api_key=actor.key if isinstance(actor, ApiClient) else None,
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


def _mapping_for(record: StatementImport) -> CsvMapping | None:
    if not record.csv_mapping:
        return None

    saved = CsvColumnMapping.objects.get(provider=record.provider, name=record.csv_mapping)
    return CsvMapping(**saved.mapping)


def _import_line(
    *, record: StatementImport, provider: Organisation, line: ParsedLine, summary: dict[str, Any], actor: Actor
) -> None:
    """Import one entry through ``payment_ingest`` (the path a batch falls back to)."""

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
                        channel=CHANNEL,
                        external_id=entry_external_id(line),
                        amount=line.amount,
                        currency=line.currency,
                        received_at=entry_received_at(line, provider.zone),
                        reference=(line.creditor_reference or line.reference)[:140],
                        payer_name=line.counterparty_name,
                        source="statement",
                        actor=actor,
                        carried_by=record.carried_by,
                    )
            except ValidationError as exc:
                stored.note = not_credited_note(exc)
                stored.save(update_fields=["note"])
                summary["not_credited"] += 1
                if isinstance(exc, PaymentConflict):
                    # payment_ingest flagged it inside the savepoint just rolled back: again, to keep it.
                    payment_conflict_flag(conflict=exc, source="statement", actor=actor)
                return
            refused = payment.status == PaymentStatus.PROVISIONAL and channel_record_refusal(
                recorded_by=payment.recorded_by, carried_by=record.carried_by
            )
            if refused:
                # Not linked (as in a batch): an independent statement may still confirm the receipt.
                stored.note = receipt_not_confirmed_note(payment.pk)
            else:
                stored.payment = payment
            # Raises IntegrityError (a duplicate, counted below) when the payment has its line already.
            stored.save(update_fields=["payment", "note"])
            if refused:
                summary["not_credited"] += 1
            else:
                summary["matched" if payment.status != PaymentStatus.UNMATCHED else "unmatched"] += 1
    except IntegrityError:
        # This entry was imported before (same statement again, or overlapping statements).
        summary["duplicates"] += 1


class _OutOfTime(Exception):
    """The run went past its time limit (and the backstop) without the worker's soft limit signal."""


def _stale_before(now: datetime) -> datetime:
    return now - timedelta(seconds=settings.STATEMENT_IMPORT_HARD_LIMIT_SECONDS) - STALE_MARGIN


def _lost(now: datetime) -> Q:
    """Running imports whose run is certainly over: started longer ago than the hard time limit allows.

    Imports claimed before runs recorded their start (``started_at`` empty; a camt file in
    UTF-7 left them "running" for good) count from their upload.
    """
    stale = _stale_before(now)
    return Q(status=ImportStatus.RUNNING) & (Q(started_at__lt=stale) | Q(started_at__isnull=True, created_at__lt=stale))


def _claimable(now: datetime) -> Q:
    """Imports a run may start: waiting ones, and lost ones that may be tried again."""
    return (Q(status=ImportStatus.PENDING) | _lost(now)) & Q(attempts__lt=MAX_ATTEMPTS)


def statement_import_run(*, import_id: int, actor: Actor = None) -> StatementImport:
    """Parse and import one stored statement; idempotent (a started or finished import is returned as it is).

    Always ends the import ``done`` or ``failed`` with a readable reason, whatever goes wrong,
    and never raises for it. Summary keys: rows, credits, debits, returns, duplicates,
    errors, matched, unmatched, not_credited (credits refused by payment rules, each with its
    reason on the line); a failed import's summary says how many entries it stored.
    """
    now = timezone.now()
    # Race: the same import queued more than once (the upload's task and the periodic
    # re-queue, or a task redelivered after a lost ack) and taken by two workers at once.
    # The conditional UPDATE lets exactly one run start; the others return the record as it
    # stands. A running import is taken over only when its run is past the hard time limit.
    started = StatementImport.objects.filter(_claimable(now), pk=import_id).update(
        status=ImportStatus.RUNNING, started_at=now, attempts=F("attempts") + 1
    )
    record = StatementImport.objects.select_related("provider").get(pk=import_id)
    if not started:
        return record
    deadline = time.monotonic() + settings.STATEMENT_IMPORT_TIME_LIMIT_SECONDS + BACKSTOP_SECONDS
    try:
        return _run(record, actor=actor, deadline=deadline)
    except (SoftTimeLimitExceeded, _OutOfTime):
        # Any batch in flight was rolled back with its transaction; the batches before it stay.
        limit = settings.STATEMENT_IMPORT_TIME_LIMIT_SECONDS
        return _fail(
            record,
            actor=actor,
            reason=f"The import took longer than its time limit of {limit} s "
            "(STATEMENT_IMPORT_TIME_LIMIT_SECONDS) and was stopped.",
            advice="Split a very large file, or ask the operators to raise the limit.",
        )
    except Exception as exc:
        log.exception("statement import %s failed unexpectedly", import_id)
        return _fail(
            record,
            actor=actor,
            reason=f"The import stopped on an unexpected error ({exc.__class__.__name__}).",
            advice=f"The operators have the details in the log (statement import {import_id}).",
        )


def _fail(record: StatementImport, *, actor: Actor, reason: str, advice: str) -> StatementImport:
    """End a claimed import ``failed``, saying why, what it kept and what to do; audited."""
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                stored = StatementLine.objects.filter(statement_import=record).count()
                kept = (
                    f"{stored} entries read before it stopped were recorded and stay; importing the same file "
                    "again skips them and continues."
                    if stored
                    else "Nothing was recorded."
                )
                message = f"{reason} {kept} {advice}"
                record.status, record.error, record.finished_at = ImportStatus.FAILED, message, timezone.now()
                record.summary = {"rows": record.total_lines, "stored": stored, "errors": 1}
                record.save(update_fields=["status", "error", "finished_at", "summary"])
                audit_record(actor=actor, action="statement.failed", obj=record, after={"error": message})
            return record
        except DatabaseError:
            # An interruption (the soft time limit) can leave the connection unusable; a new
            # one records the outcome. Inside a caller's transaction there is nothing to redo.
            if attempt == 2 or connection.in_atomic_block:
                raise
            connection.close()
    return record  # pragma: no cover - the loop returns or raises


def _run(record: StatementImport, *, actor: Actor, deadline: float) -> StatementImport:

    provider = record.provider
    with record.file.open("rb") as handle:
        raw = handle.read()
    try:
        parsed = parse_statement(raw, record.filename, format=record.format or None, csv_mapping=_mapping_for(record))
    except StatementError as exc:
        with transaction.atomic():  # the outcome and its audit event together, or neither
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

    for start in range(0, len(parsed.lines), CREDIT_BATCH):
        if time.monotonic() > deadline:
            raise _OutOfTime  # the backstop: no soft time limit signal came
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
        record.processed_lines = start + len(batch)
        StatementImport.objects.filter(pk=record.pk).update(processed_lines=record.processed_lines)

    with transaction.atomic():  # interrupted here, the import ends failed with nothing half-written
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


# --- queueing --------------------------------------------------------------------------------


def statement_imports_enqueue(import_ids: Iterable[int]) -> int:
    """Queue the import task of each stored import (for ``transaction.on_commit``); return how many were queued.

    Never raises: the uploads are stored rows, so a broker outage only delays them until
    ``statement_imports_requeue`` runs with the broker back. The first broker error ends the
    batch (each further try would wait for the same dead broker). Without a broker (eager
    mode) the import runs right here and ends done or failed.
    """
    queued = enqueue_each("payments.import_statement", import_ids, what="import")
    if queued:
        StatementImport.objects.filter(pk__in=queued, status=ImportStatus.PENDING).update(queued_at=timezone.now())
    return len(queued)


def statement_imports_requeue(*, now: datetime | None = None, limit: int = 100) -> int:
    """The periodic job: queue again every import that waits or was lost; return how many were queued.

    Waiting imports never queued (the broker was down at upload) or queued long ago (the task
    may be gone with a restarted Redis), and running imports whose run is past its hard time
    limit (the worker died or killed it). A lost run counts as an attempt: an import whose
    runs were lost ``MAX_ATTEMPTS`` times ends failed with the reason instead of looping.
    Duplicates are harmless: the run's conditional claim lets only one start.
    """
    now = now or timezone.now()
    _fail_exhausted(_lost(now) & Q(attempts__gte=MAX_ATTEMPTS), now=now)
    # Waiting ones only when their task may be gone; lost ones always.
    not_queued = Q(queued_at__isnull=True) | Q(queued_at__lt=now - REQUEUE_PENDING_AFTER)
    ids = list(
        StatementImport.objects.filter(_claimable(now) & (~Q(status=ImportStatus.PENDING) | not_queued))
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    if not ids:
        return 0
    queued = statement_imports_enqueue(ids)
    log.info("statements: %s of %s waiting or lost import(s) queued again", queued, len(ids))
    return queued


def _fail_exhausted(condition: Q, *, now: datetime) -> None:
    """Fail, in one UPDATE, the lost imports that may not be tried again; audited."""
    reason = (
        f"The import was interrupted {MAX_ATTEMPTS} times without finishing (the worker stopped, ran out of memory "
        "or reached the time limit); it is not tried again. Lines recorded before stay; importing the same "
        "file again skips them. If it happens again, split the file or tell the operators."
    )
    with transaction.atomic():
        ids = list(StatementImport.objects.select_for_update().filter(condition).values_list("pk", flat=True))
        if not ids:
            return
        # The condition again in the UPDATE: a run that finished meanwhile keeps its outcome.
        StatementImport.objects.filter(condition, pk__in=ids).update(
            status=ImportStatus.FAILED, error=reason, finished_at=now
        )
        failed = list(StatementImport.objects.filter(pk__in=ids, status=ImportStatus.FAILED, finished_at=now))
        audit_record_many(
            actor=None,
            entries=[AuditEntry(action="statement.failed", obj=record, after={"error": reason}) for record in failed],
        )
