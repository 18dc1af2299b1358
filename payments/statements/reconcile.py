"""Crediting a statement in batches: set-based, with exactly the rules of ``payment_ingest``.

A bank statement holds tens of thousands of lines; taking each through ``payment_ingest``
costs about 30 queries a line. :func:`statement_lines_credit` stores a batch of parsed
lines and credits its credits with a fixed number of queries per batch:

* each entry is stored once per provider (its fingerprint): a line seen before, in this
  file or an earlier one, is a duplicate and changes nothing;
* each credit becomes a payment keyed by the bank's id (end-to-end id, bank reference,
  else the entry's fingerprint), checked as ``payment_ingest`` checks it; a known id with
  the same details is the same payment, with other details a conflict, never a second
  payment;
* a known id that an agent recorded from a customer's receipt is compared as
  ``payment_ingest`` compares a channel's record of it (amount, currency, and no other
  contract named): the same payment, confirmed if it was provisional (its held part is
  allocated with the batch's other credits and its phone decided at once), or a conflict
  flagged to finance;
* payments are matched by the rules of ``payment_find_match`` (reference = contract
  number, exact then normalised, or an IMEI), evaluated for the whole batch in three
  queries, allocated oldest installment first under the same row locks as one payment,
  and the lock decision runs once for every contract touched, so a phone unlocks in the
  same transaction;
* the trail gets one ``statement.credit`` event per batch listing every payment it
  created with its match (a per-payment event would cost more than the crediting
  itself); lock changes are audited per device as always.

The outcome is the one the per-line path gives (tests/test_statement_import.py imports
every sample both ways and compares). Anything unexpected (a concurrent import of the
same entries) raises and rolls the batch back; the caller then takes it line by line.

:func:`statement_lines_credit` runs the steps in order, each a function below; the contracts'
side (locks, allocation, paid off, the lock decision) is in ``payments.statements.allocation``, the
receipts' side in ``payments.statements.receipts``, the bulk writes in ``payments.statements.bulk``.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from payments.ledger.errors import PaymentConflict
from payments.ledger.matching import contracts_match_many
from payments.ledger.services import check_payment_input, payment_request_fields
from payments.models import (
    Contract,
    Payment,
    PaymentConfirmation,
    PaymentSource,
    PaymentStatus,
    StatementImport,
    StatementLine,
)
from payments.statements.allocation import (
    LockedContracts,
    allocations_write,
    contracts_decide_locks,
    contracts_lock_for_allocation,
    contracts_settle_paid_off,
)
from payments.statements.bulk import copy_rows, reserve_ids
from payments.statements.entries import (
    CHANNEL,
    NOT_CREDITED_DEBIT,
    Credit,
    Outcome,
    entry_external_id,
    entry_received_at,
    not_credited_note,
    statement_line_fields,
)
from payments.statements.parsers.types import StatementLine as ParsedLine
from payments.statements.receipts import (
    HeldReceipt,
    ReceiptRecords,
    flag_conflicts,
    independent_of_uploader,
    lock_receipts,
    receipt_contracts,
    receipt_differences,
    receipts_confirm,
)
from portal.audit import AuditEntry, audit_record, audit_record_many
from portal.models import Organisation
from portal.types import Actor
from portal.webhooks import webhook_events_emit


@dataclass
class BatchCounts:
    """What one batch did, in the import summary's terms."""

    credits: int = 0
    debits: int = 0
    returns: int = 0
    duplicates: int = 0
    matched: int = 0
    unmatched: int = 0
    not_credited: int = 0
    contracts: set[int] = field(default_factory=set)


@dataclass
class _Batch:
    """One batch on its way through the steps: where it goes, and what became of each line so far."""

    record: StatementImport
    provider: Organisation
    actor: Actor
    now: dt.datetime
    counts: BatchCounts = field(default_factory=BatchCounts)
    # Lines to store; fingerprint -> (note, payment id). Keyed by fingerprint, unique once
    # duplicates are out: line numbers repeat (every entry of a one-line camt file is line 1).
    fresh: list[ParsedLine] = field(default_factory=list)
    stored: dict[str, Outcome] = field(default_factory=dict)

    def not_credited(self, line: ParsedLine, note: str) -> None:
        """The line is stored with the reason it was not credited."""
        self.stored[line.fingerprint] = (note, None)
        self.counts.not_credited += 1

    def duplicate(self, line: ParsedLine) -> None:
        """The line is a payment's statement line again: counted, not stored."""
        self.counts.duplicates += 1
        self.fresh.remove(line)

    def link(self, line: ParsedLine, payment: Payment, linked: set[int | None]) -> None:
        """The line becomes the statement line of a payment recorded before it."""
        linked.add(payment.pk)
        self.stored[line.fingerprint] = ("", payment.pk)
        self.counts.matched += payment.status != PaymentStatus.UNMATCHED
        self.counts.unmatched += payment.status == PaymentStatus.UNMATCHED


@dataclass
class _Known:
    """What step 3 knows of the batch's transaction ids."""

    existing: dict[str, Payment]  # transaction id -> the payment recorded with it before
    linked: set[int | None]  # payments that have their statement line
    receipt_contract: dict[int, tuple[int, str] | None]  # id(credit) -> the contract it names, for receipts
    first_of: dict[str, Credit] = field(default_factory=dict)  # a new transaction id's first credit


def statement_lines_credit(
    *, record: StatementImport, provider: Organisation, lines: list[ParsedLine], actor: Actor = None
) -> BatchCounts:
    """Store a batch of parsed statement lines once each and credit its credits (see the module docstring).

    One transaction. Raises ``IntegrityError`` if another import stored the same entries
    meanwhile; nothing of the batch is then kept and the caller imports it line by line.
    """

    batch = _Batch(record=record, provider=provider, actor=actor, now=timezone.now())
    with transaction.atomic():
        # 1. Each entry once per provider: in this batch, and against every earlier import.
        _keep_fresh(batch, lines)
        # 2. Credits checked as payment_ingest checks them.
        credits = _checked_credits(batch)
        # 3. A known transaction id: the same payment, or a conflict.
        new, receipts = _sort_by_transaction_id(batch, credits)
        # 4. Match the new payments, all at once; never across currencies.
        creatable = _matched(batch, new)
        # 5. Allocate, oldest installment first, under the locks one payment takes: the
        # contracts, then their open installments (the sweep's order, so never a deadlock).
        # Race: a person confirming, or a finance officer reversing, a receipt this batch
        # confirms. Its payment row is locked first (their order: payment, contract,
        # installments) and re-read: whoever comes second finds it no longer provisional.
        held = _receipts_to_confirm(batch, receipts)
        locked = _lock_contracts(batch, held, creatable)
        _allocate(batch, locked, held, creatable)
        _write_payments(batch, locked, held, creatable, receipts)
        # 6. The lines, each with its payment or the reason it was not credited.
        _write_lines(batch)
        # 7. Contracts paid in full, the provider's webhooks, the trail, and the lock decision.
        paid_off = contracts_settle_paid_off(locked, actor=actor)
        _emit_matched(batch, locked, held, creatable)
        _audit_confirmed_receipts(batch, locked, held)
        _audit_credit(batch, locked, creatable, lines)
        contracts_decide_locks(locked, paid_off, now=batch.now, actor=actor)
    return batch.counts


# --- 1. Each entry once --------------------------------------------------------------------------


def _keep_fresh(batch: _Batch, lines: list[ParsedLine]) -> None:
    """Count the lines by kind and keep each entry not stored before, in this batch or any earlier import."""
    known = set(
        StatementLine.objects.filter(
            provider=batch.provider, fingerprint__in=[line.fingerprint for line in lines]
        ).values_list("fingerprint", flat=True)
    )
    counts = batch.counts
    for line in lines:
        if line.direction == "credit" and not line.is_return:
            counts.credits += 1
        elif line.is_return:
            counts.returns += 1
        else:
            counts.debits += 1
        if line.fingerprint in known:
            counts.duplicates += 1
            continue
        known.add(line.fingerprint)
        batch.fresh.append(line)


# --- 2. Credits checked --------------------------------------------------------------------------


def _checked_credits(batch: _Batch) -> list[Credit]:
    """The fresh lines that may become payments; debits, returns and refused credits get their note."""
    credits: list[Credit] = []
    for line in batch.fresh:
        if line.direction != "credit" or line.is_return:
            batch.stored[line.fingerprint] = (NOT_CREDITED_DEBIT, None)
            continue
        credit = _checked_credit(batch, line)
        if credit is not None:
            credits.append(credit)
    return credits


def _checked_credit(batch: _Batch, line: ParsedLine) -> Credit | None:
    """A credit line checked as ``payment_ingest`` checks its input; None, with the reason on the line, if refused."""
    provider = batch.provider
    received_at = entry_received_at(line, provider.zone)
    errors: dict[str, list[str]] = {}
    external_id, money = check_payment_input(
        provider=provider,
        channel=CHANNEL,
        external_id=entry_external_id(line),
        amount=line.amount,
        currency=line.currency,
        received_at=received_at,
        errors=errors,
    )
    if errors or money is None:  # no amount without an error about it
        batch.not_credited(line, not_credited_note(ValidationError(errors)))
        return None
    reference = (line.creditor_reference or line.reference)[:140].strip()[:140]
    fields = payment_request_fields(
        channel=CHANNEL,
        amount=money,
        currency=line.currency,
        received_at=received_at.astimezone(dt.UTC).isoformat(),
        reference=reference,
        payer_phone="",
        contract_number="",
    )
    return Credit(line, external_id, money, reference, received_at, fields)


# --- 3. Known transaction ids --------------------------------------------------------------------


def _sort_by_transaction_id(batch: _Batch, credits: list[Credit]) -> tuple[list[Credit], ReceiptRecords]:
    """The credits that are new payments, and what the lines say of receipts.

    A credit whose transaction id is known is the same payment again (linked to its line, or a
    duplicate line) or a conflict; so is a second credit with a new id of this batch.
    """
    known = _known_payments(batch.provider, credits)
    receipts = ReceiptRecords()
    new: list[Credit] = []
    for credit in credits:
        earlier = known.existing.get(credit.external_id)
        if earlier is not None and earlier.source == PaymentSource.AGENT:
            _receipt_seen_again(batch, credit, earlier, known, receipts)
        elif _is_new(batch, credit, earlier, known):
            new.append(credit)
    return new, receipts


def _known_payments(provider: Organisation, credits: list[Credit]) -> _Known:
    """The payments recorded before with the credits' transaction ids, and which of them have their line."""
    existing = {
        p.external_id: p
        for p in Payment.objects.filter(
            provider=provider, channel=CHANNEL, external_id__in={c.external_id for c in credits}
        ).select_related("contract")
    }
    linked: set[int | None] = set(
        StatementLine.objects.filter(payment__in=list(existing.values())).values_list("payment_id", flat=True)
    )
    # The bank's record of payments agents recorded from receipts (rare: no query without them).
    of_receipts = [c for c in credits if getattr(existing.get(c.external_id), "source", "") == PaymentSource.AGENT]
    return _Known(existing=existing, linked=linked, receipt_contract=receipt_contracts(provider, of_receipts))


def _receipt_seen_again(
    batch: _Batch, credit: Credit, receipt: Payment, known: _Known, receipts: ReceiptRecords
) -> None:
    """A line with the transaction id of a receipt: payment_ingest's rules for a channel's record of it."""
    differences = receipt_differences(credit, receipt, known.receipt_contract.get(id(credit)))
    if differences:
        batch.not_credited(credit.line, not_credited_note(PaymentConflict(receipt, differences)))
        if receipt.status != PaymentStatus.REVERSED:
            receipts.conflicting[receipt.pk] = (receipt, differences)
    elif receipt.pk in known.linked:
        batch.duplicate(credit.line)
    else:
        batch.link(credit.line, receipt, known.linked)
        # As line by line: a conflict seen first (an earlier line, or flagged before) blocks it.
        if receipt.status == PaymentStatus.PROVISIONAL and receipt.pk not in receipts.conflicting:
            receipts.confirming.append(receipt)
            receipts.confirming_line[receipt.pk] = credit.line.fingerprint


def _is_new(batch: _Batch, credit: Credit, earlier: Payment | None, known: _Known) -> bool:
    """True for a transaction id seen first; else the line is the known payment's, a duplicate, or a conflict."""
    earlier_fields = earlier.request_fields if earlier is not None else None
    if earlier is None and credit.external_id in known.first_of:
        earlier_fields = known.first_of[credit.external_id].fields
    if earlier_fields is None:
        known.first_of[credit.external_id] = credit
        return True
    differences = {
        name: (earlier_fields.get(name, ""), value)
        for name, value in credit.fields.items()
        if earlier_fields.get(name, "") != value
    }
    if differences:
        batch.not_credited(credit.line, not_credited_note(PaymentConflict(earlier, differences)))
    elif earlier is None or earlier.pk in known.linked:
        # The payment already has its statement line: this entry is that one again.
        batch.duplicate(credit.line)
    else:
        batch.link(credit.line, earlier, known.linked)
    return False


# --- 4. Matching ---------------------------------------------------------------------------------


def _matched(batch: _Batch, new: list[Credit]) -> list[Credit]:
    """The new payments to create, each with its match (or None); never one across currencies."""
    matches = contracts_match_many(provider=batch.provider, references=[c.reference for c in new])
    contracts = Contract.objects.in_bulk({m[0] for m in matches if m})
    creatable = []
    for credit, found in zip(new, matches, strict=True):
        if found and contracts[found[0]].currency != batch.provider.currency:
            message = f"The contract is in {contracts[found[0]].currency}; payments are never converted."
            batch.not_credited(credit.line, not_credited_note(ValidationError({"currency": [message]})))
            continue
        credit.match = found
        creatable.append(credit)
    return creatable


# --- 5. Locks, allocation and the payments -------------------------------------------------------


def _receipts_to_confirm(batch: _Batch, receipts: ReceiptRecords) -> list[HeldReceipt]:
    """Lock the receipts' payments (first: the order of a person confirming one); the ones this batch confirms."""
    held = lock_receipts(receipts.confirming, receipts.conflicting)
    held, refused = independent_of_uploader(
        held, record=batch.record, stored=batch.stored, confirming_line=receipts.confirming_line
    )
    batch.counts.matched -= refused
    batch.counts.not_credited += refused
    return held


def _lock_contracts(batch: _Batch, held: list[HeldReceipt], creatable: list[Credit]) -> LockedContracts:
    """Count the new payments, matched or not, and lock every contract paid into."""
    counts = batch.counts
    matched = [c.match[0] for c in creatable if c.match]
    counts.unmatched += len(creatable) - len(matched)
    counts.matched += len(matched)
    contract_ids = sorted(set(matched) | {row["contract_id"] for row in held})
    counts.contracts = set(contract_ids)
    return contracts_lock_for_allocation(contract_ids)


def _allocate(batch: _Batch, locked: LockedContracts, held: list[HeldReceipt], creatable: list[Credit]) -> None:
    """Give the new payments their ids, then allocate the confirmed receipts and the matched payments."""
    # Ids first: allocations and lines point at the payments, all written by COPY.
    ids = reserve_ids(Payment, len(creatable))
    for credit, pk in zip(creatable, ids, strict=True):
        credit.payment_id = pk
        batch.stored[credit.line.fingerprint] = ("", pk)
    # The confirmed receipts first: they were paid before this statement's new credits.
    for row in held:
        locked.allocate(row["pk"], row["contract_id"], row["held_amount"])
    for credit, pk in zip(creatable, ids, strict=True):
        if credit.match:
            locked.allocate(pk, credit.match[0], credit.amount)


def _write_payments(
    batch: _Batch, locked: LockedContracts, held: list[HeldReceipt], creatable: list[Credit], receipts: ReceiptRecords
) -> None:
    """Write the new payments and the allocations, the installments' paid amounts, and the receipts' outcome."""
    copy_rows(Payment, [_payment_row(batch, credit) for credit in creatable])
    allocations_write(locked)
    receipts_confirm(held, now=batch.now)
    flag_conflicts(batch.provider, receipts.conflicting, now=batch.now, actor=batch.actor)


def _payment_row(batch: _Batch, credit: Credit) -> dict[str, Any]:
    """A new payment's columns, for COPY."""
    match = credit.match
    return {
        "id": credit.payment_id,
        "provider_id": batch.provider.pk,
        "channel": CHANNEL,
        "external_id": credit.external_id,
        "amount": credit.amount,
        "currency": batch.provider.currency,
        "reference": credit.reference,
        "payer_name": (credit.line.counterparty_name or "")[:150],
        "received_at": credit.received_at,
        "source": PaymentSource.STATEMENT,
        "status": PaymentStatus.MATCHED if match else PaymentStatus.UNMATCHED,
        "contract_id": match[0] if match else None,
        "match_rule": match[1] if match else "",
        "match_confidence": match[2] if match else 0,
        "request_fields": credit.fields,
        "created_at": batch.now,
    }


# --- 6. The lines --------------------------------------------------------------------------------


def _write_lines(batch: _Batch) -> None:
    """Store the fresh lines, each with its payment or the reason it was not credited."""
    copy_rows(
        StatementLine,
        [
            {
                "id": pk,
                "statement_import_id": batch.record.pk,
                "provider_id": batch.provider.pk,
                **statement_line_fields(line),
                "note": batch.stored[line.fingerprint][0],
                "payment_id": batch.stored[line.fingerprint][1],
            }
            for pk, line in zip(reserve_ids(StatementLine, len(batch.fresh)), batch.fresh, strict=True)
        ],
    )


# --- 7. The webhooks and the trail -----------------------------------------


def _emit_matched(batch: _Batch, locked: LockedContracts, held: list[HeldReceipt], creatable: list[Credit]) -> None:
    """The provider's ``payment.matched`` webhooks: the matched new payments, then the confirmed receipts."""
    webhook_events_emit(
        provider=batch.provider.pk,
        event="payment.matched",
        payloads=[
            {
                "payment": c.payment_id,
                "external_id": c.external_id,
                "channel": CHANNEL,
                "amount": str(c.amount),
                "currency": batch.provider.currency,
                "contract": locked.contracts[c.match[0]].number,
                "rule": c.match[1],
                "received_at": c.received_at,
            }
            for c in creatable
            if c.match
        ]
        + [
            {
                "payment": row["pk"],
                "external_id": row["external_id"],
                "channel": CHANNEL,
                "amount": str(row["amount"]),
                "currency": row["currency"],
                "contract": locked.contracts[row["contract_id"]].number,
                "rule": row["match_rule"],
                "received_at": row["received_at"],
            }
            for row in held
        ],
    )


def _audit_confirmed_receipts(batch: _Batch, locked: LockedContracts, held: list[HeldReceipt]) -> None:
    """One ``payment.channel_confirm`` event per receipt confirmed, with its allocations."""
    by_payment: dict[int, list[dict[str, str | int | None]]] = defaultdict(list)
    for payment_id, _contract_id, installment_id, amount in locked.allocations:
        by_payment[payment_id].append({"installment": installment_id, "amount": str(amount)})
    audit_record_many(
        actor=batch.actor,
        entries=[
            AuditEntry(
                action="payment.channel_confirm",
                organisation=batch.provider,
                object_type=Payment._meta.label,
                object_id=str(row["pk"]),
                object_repr=f"{CHANNEL} {row['external_id']}",
                before={"status": PaymentStatus.PROVISIONAL, "held": str(row["held_amount"]), "flag": row["flag"]},
                after={
                    "status": PaymentStatus.VERIFIED,
                    "via": PaymentConfirmation.STATEMENT,
                    "requested_by_id": row["recorded_by_id"],
                    "requested_by": row["recorded_by__username"],
                    "contract": locked.contracts[row["contract_id"]].number,
                    "allocations": by_payment[row["pk"]],
                    "flag": "",
                    "statement": batch.record.pk,
                },
            )
            for row in held
        ],
    )


def _audit_credit(batch: _Batch, locked: LockedContracts, creatable: list[Credit], lines: list[ParsedLine]) -> None:
    """One ``statement.credit`` event for the batch, listing every payment it created with its match."""
    if creatable:
        audit_record(
            actor=batch.actor,
            action="statement.credit",
            obj=batch.record,
            after={
                "lines": [lines[0].line_no, lines[-1].line_no],
                # [payment id, transaction id, amount, contract number or null, rule or null]
                "payments": [
                    [
                        c.payment_id,
                        c.external_id,
                        str(c.amount),
                        locked.contracts[c.match[0]].number if c.match else None,
                        c.match[1] if c.match else None,
                    ]
                    for c in creatable
                ],
            },
        )
