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
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F, JSONField, Max
from django.utils import timezone
from psycopg.types.json import Jsonb

from devices.models import LockState
from payments.ledger.errors import PaymentConflict
from payments.ledger.matching import contracts_match_many
from payments.ledger.services import _check_payment_input, _payment_request_fields, conflict_reason
from payments.locks.services import contracts_lock_evaluate
from payments.models import (
    Contract,
    ContractStatus,
    Installment,
    Payment,
    PaymentAllocation,
    PaymentConfirmation,
    PaymentSource,
    PaymentStatus,
    StatementLine,
)
from payments.statements.receipts import (
    _Credit,
    _flag_conflicts,
    _independent_of_uploader,
    _lock_receipts,
    _receipt_contracts,
)
from portal.audit import AuditEntry, audit_record, audit_record_many
from portal.webhooks import webhook_events_emit

CHANNEL = "bank_transfer"


NOT_CREDITED_DEBIT = "Debit or return: shown, never credited."


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
    contracts: set = field(default_factory=set)


def entry_external_id(line) -> str:
    """The payment id of a statement entry: the bank's own id when it gives one, else the entry's fingerprint."""
    return (line.end_to_end_id or line.bank_reference or f"line:{line.fingerprint}")[:100]


def entry_received_at(line, zone) -> dt.datetime:
    """Midnight of the value (else booking) date in the provider's time zone."""
    return timezone.make_aware(dt.datetime.combine(line.value_date or line.booking_date, dt.time.min), zone)


def not_credited_note(error: ValidationError) -> str:
    reasons = "; ".join(f"{k}: {' '.join(v)}" for k, v in error.message_dict.items())
    return f"Not credited: {reasons}"[:300]


def statement_line_fields(line) -> dict:
    """A parsed entry's columns of ``StatementLine``, cut to their lengths (both import paths store these)."""
    return {
        "fingerprint": line.fingerprint,
        "line_no": line.line_no,
        "booking_date": line.booking_date,
        "value_date": line.value_date,
        "amount": line.amount,
        "currency": line.currency,
        "direction": line.direction,
        "is_return": line.is_return,
        "reference": line.reference[:500],
        "end_to_end_id": line.end_to_end_id[:100],
        "creditor_reference": line.creditor_reference[:100],
        "bank_reference": line.bank_reference[:100],
        "counterparty_name": line.counterparty_name[:200],
        "counterparty_account": line.counterparty_account[:100],
    }


def _set_columns(model, objects: list, columns: dict[str, str]) -> None:
    """Write ``columns`` (name: PostgreSQL type) of many rows from their objects in one UPDATE per 5,000.

    ``bulk_update`` builds a CASE per row and column, which costs more than the whole
    crediting; on PostgreSQL this joins an ``unnest`` of arrays instead. The callers hold
    the rows' locks, so the values computed from them are current.
    """
    if not objects:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_update(objects, [name.removesuffix("_id") for name in columns], batch_size=1000)
        return
    table = model._meta.db_table
    names = list(columns)
    assignments = ", ".join(f"{name} = v.{name}" for name in names)
    arrays = ", ".join(["%s::bigint[]", *(f"%s::{kind}[]" for kind in columns.values())])
    # Names come from the model and the caller's literals; every value goes as a parameter.
    sql = f"UPDATE {table} AS t SET {assignments} FROM unnest({arrays}) AS v(id, {', '.join(names)}) WHERE t.id = v.id"  # noqa: S608
    with connection.cursor() as cursor:
        for start in range(0, len(objects), 5000):
            chunk = objects[start : start + 5000]
            cursor.execute(sql, [[o.pk for o in chunk], *([getattr(o, n) for o in chunk] for n in names)])


def _reserve_ids(model, count: int) -> list[int]:
    """``count`` new ids of ``model``'s table, taken before the rows are written (rows point at each other).

    On PostgreSQL from the table's sequence, one ``nextval`` each, so concurrent writers
    never collide; on development databases the next ids after the highest (SQLite lets
    one transaction write at a time).
    """
    if not count:
        return []
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                [model._meta.db_table, count],
            )
            return [row[0] for row in cursor.fetchall()]
    top = model.objects.aggregate(top=Max("pk"))["top"] or 0
    return list(range(top + 1, top + 1 + count))


def _copy(model, rows: list[dict]) -> None:
    """Insert ``rows`` (column attname: value, ``id`` included): COPY on PostgreSQL, ``bulk_create`` elsewhere.

    ``bulk_create`` spends most of a statement import building model instances and
    compiling INSERTs; COPY takes the values as they are. Columns a row leaves out get
    the field's default. Constraint violations surface as Django's ``IntegrityError``.
    """
    if not rows:
        return
    fields = model._meta.concrete_fields
    defaults = {f.attname: f.get_default() for f in fields if f.attname not in rows[0]}
    if connection.vendor != "postgresql":
        model.objects.bulk_create([model(**defaults, **row) for row in rows], batch_size=2000)
        return

    names = [f.attname for f in fields]
    wrap = {f.attname for f in fields if isinstance(f, JSONField)}
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    with (
        connection.cursor() as cursor,
        connection.wrap_database_errors,
        cursor.cursor.copy(f"COPY {connection.ops.quote_name(model._meta.db_table)} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            values = [row[n] if n in row else defaults[n] for n in names]
            copy.write_row([Jsonb(v) if n in wrap else v for n, v in zip(names, values, strict=True)])


def statement_lines_credit(*, record, provider, lines: list, actor=None) -> BatchCounts:
    """Store a batch of parsed statement lines once each and credit its credits (see the module docstring).

    One transaction. Raises ``IntegrityError`` if another import stored the same entries
    meanwhile; nothing of the batch is then kept and the caller imports it line by line.
    """

    counts = BatchCounts()
    now = timezone.now()
    with transaction.atomic():
        # 1. Each entry once per provider: in this batch, and against every earlier import.
        known = set(
            StatementLine.objects.filter(
                provider=provider, fingerprint__in=[line.fingerprint for line in lines]
            ).values_list("fingerprint", flat=True)
        )
        # Lines to store; fingerprint -> (note, payment id). Keyed by fingerprint, unique once
        # duplicates are out: line numbers repeat (every entry of a one-line camt file is line 1).
        fresh, stored = [], {}
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
            fresh.append(line)

        # 2. Credits checked as payment_ingest checks them.
        credits: list[_Credit] = []
        for line in fresh:
            if line.direction != "credit" or line.is_return:
                stored[line.fingerprint] = (NOT_CREDITED_DEBIT, None)
                continue
            received_at = entry_received_at(line, provider.zone)
            errors: dict = {}
            external_id, money = _check_payment_input(
                provider=provider,
                channel=CHANNEL,
                external_id=entry_external_id(line),
                amount=line.amount,
                currency=line.currency,
                received_at=received_at,
                errors=errors,
            )
            if errors:
                stored[line.fingerprint] = (not_credited_note(ValidationError(errors)), None)
                counts.not_credited += 1
                continue
            reference = (line.creditor_reference or line.reference)[:140].strip()[:140]
            fields = _payment_request_fields(
                channel=CHANNEL,
                amount=money,
                currency=line.currency,
                received_at=received_at.astimezone(dt.UTC).isoformat(),
                reference=reference,
                payer_phone="",
                contract_number="",
            )
            credits.append(_Credit(line, external_id, money, reference, received_at, fields))

        # 3. A known transaction id: the same payment, or a conflict.
        existing = {
            p.external_id: p
            for p in Payment.objects.filter(
                provider=provider, channel=CHANNEL, external_id__in={c.external_id for c in credits}
            ).select_related("contract")
        }
        linked = set(
            StatementLine.objects.filter(payment__in=list(existing.values())).values_list("payment_id", flat=True)
        )
        # The bank's record of payments agents recorded from receipts (rare: no query without them).
        of_receipts = [c for c in credits if getattr(existing.get(c.external_id), "source", "") == PaymentSource.AGENT]
        receipt_contract = _receipt_contracts(provider, of_receipts)
        confirming: list[Payment] = []  # provisional payments this batch's lines confirm (step 5)
        confirming_line: dict[int, str] = {}  # their lines' fingerprints
        conflicting: dict[int, tuple[Payment, dict]] = {}  # receipts whose bank record differs (flagged)
        new: list[_Credit] = []
        first_of: dict[str, _Credit] = {}
        for credit in credits:
            earlier = existing.get(credit.external_id)
            if earlier is not None and earlier.source == PaymentSource.AGENT:
                # payment_ingest's rules for a channel's record of a receipt (_channel_record_arrived).
                differences = {}
                if credit.amount != earlier.amount:
                    differences["amount"] = (str(earlier.amount), str(credit.amount))
                if credit.line.currency != earlier.currency:
                    differences["currency"] = (earlier.currency, credit.line.currency)
                named = receipt_contract.get(id(credit))
                if not differences and earlier.contract_id and named and named[0] != earlier.contract_id:
                    differences["contract_number"] = (earlier.contract.number, named[1])
                if differences:
                    stored[credit.line.fingerprint] = (not_credited_note(PaymentConflict(earlier, differences)), None)
                    counts.not_credited += 1
                    if earlier.status != PaymentStatus.REVERSED:
                        conflicting[earlier.pk] = (earlier, differences)
                elif earlier.pk in linked:
                    counts.duplicates += 1
                    fresh.remove(credit.line)
                else:
                    linked.add(earlier.pk)
                    stored[credit.line.fingerprint] = ("", earlier.pk)
                    counts.matched += earlier.status != PaymentStatus.UNMATCHED
                    counts.unmatched += earlier.status == PaymentStatus.UNMATCHED
                    # As line by line: a conflict seen first (an earlier line, or flagged before) blocks it.
                    if earlier.status == PaymentStatus.PROVISIONAL and earlier.pk not in conflicting:
                        confirming.append(earlier)
                        confirming_line[earlier.pk] = credit.line.fingerprint
                continue
            earlier_fields = earlier.request_fields if earlier is not None else None
            if earlier is None and credit.external_id in first_of:
                earlier_fields = first_of[credit.external_id].fields
            if earlier_fields is None:
                first_of[credit.external_id] = credit
                new.append(credit)
                continue
            differences = {
                name: (earlier_fields.get(name, ""), value)
                for name, value in credit.fields.items()
                if earlier_fields.get(name, "") != value
            }
            if differences:
                stored[credit.line.fingerprint] = (not_credited_note(PaymentConflict(earlier, differences)), None)
                counts.not_credited += 1
            elif earlier is None or earlier.pk in linked:
                # The payment already has its statement line: this entry is that one again.
                counts.duplicates += 1
                fresh.remove(credit.line)
            else:
                linked.add(earlier.pk)
                stored[credit.line.fingerprint] = ("", earlier.pk)
                counts.matched += earlier.status != PaymentStatus.UNMATCHED
                counts.unmatched += earlier.status == PaymentStatus.UNMATCHED

        # 4. Match the new payments, all at once; never across currencies.
        matches = contracts_match_many(provider=provider, references=[c.reference for c in new])
        contracts = Contract.objects.in_bulk({m[0] for m in matches if m})
        creatable = []
        for credit, found in zip(new, matches, strict=True):
            if found and contracts[found[0]].currency != provider.currency:
                message = f"The contract is in {contracts[found[0]].currency}; payments are never converted."
                stored[credit.line.fingerprint] = (not_credited_note(ValidationError({"currency": [message]})), None)
                counts.not_credited += 1
                continue
            credit.match = found
            creatable.append(credit)
        # 5. Allocate, oldest installment first, under the locks one payment takes: the
        # contracts, then their open installments (the sweep's order, so never a deadlock).
        # Race: a person confirming, or a finance officer reversing, a receipt this batch
        # confirms. Its payment row is locked first (their order: payment, contract,
        # installments) and re-read: whoever comes second finds it no longer provisional.
        held = _lock_receipts(confirming, conflicting)
        held, refused = _independent_of_uploader(held, record=record, stored=stored, confirming_line=confirming_line)
        counts.matched -= refused
        counts.not_credited += refused
        matched = [c for c in creatable if c.match]
        counts.unmatched += len(creatable) - len(matched)
        counts.matched += len(matched)
        contract_ids = sorted({c.match[0] for c in matched} | {row["contract_id"] for row in held})
        counts.contracts = set(contract_ids)
        locked = {c.pk: c for c in Contract.objects.select_for_update().filter(pk__in=contract_ids).order_by("pk")}
        open_by_contract: dict[int, list[Installment]] = defaultdict(list)
        for installment in (
            Installment.objects.select_for_update()
            .filter(contract_id__in=contract_ids, amount_paid__lt=F("amount_due"))
            .order_by("contract_id", "due_date", "number")
        ):
            open_by_contract[installment.contract_id].append(installment)
        # Ids first: allocations and lines point at the payments, all written by COPY.
        for credit, pk in zip(creatable, _reserve_ids(Payment, len(creatable)), strict=True):
            credit.payment_id = pk
            stored[credit.line.fingerprint] = ("", pk)
        allocations, touched = [], {}

        def allocate(payment_id: int, contract_id: int, amount: Decimal) -> None:
            remaining = amount
            for installment in open_by_contract[contract_id]:
                if remaining <= 0:
                    break
                open_amount = installment.amount_due - installment.amount_paid
                if open_amount <= 0:
                    continue
                take = min(remaining, open_amount)
                installment.amount_paid += take
                touched[installment.pk] = installment
                allocations.append((payment_id, contract_id, installment.pk, take))
                remaining -= take
            if remaining > 0:  # beyond the whole schedule: held as credit, never lost
                allocations.append((payment_id, contract_id, None, remaining))

        # The confirmed receipts first: they were paid before this statement's new credits.
        for row in held:
            allocate(row["pk"], row["contract_id"], row["held_amount"])
        for credit in matched:
            allocate(credit.payment_id, credit.match[0], credit.amount)
        _copy(
            Payment,
            [
                {
                    "id": c.payment_id,
                    "provider_id": provider.pk,
                    "channel": CHANNEL,
                    "external_id": c.external_id,
                    "amount": c.amount,
                    "currency": provider.currency,
                    "reference": c.reference,
                    "payer_name": (c.line.counterparty_name or "")[:150],
                    "received_at": c.received_at,
                    "source": PaymentSource.STATEMENT,
                    "status": PaymentStatus.MATCHED if c.match else PaymentStatus.UNMATCHED,
                    "contract_id": c.match[0] if c.match else None,
                    "match_rule": c.match[1] if c.match else "",
                    "match_confidence": c.match[2] if c.match else 0,
                    "request_fields": c.fields,
                    "created_at": now,
                }
                for c in creatable
            ],
        )
        _copy(
            PaymentAllocation,
            [
                {
                    "id": pk,
                    "payment_id": payment_id,
                    "contract_id": contract_id,
                    "installment_id": inst,
                    "amount": amount,
                }
                for pk, (payment_id, contract_id, inst, amount) in zip(
                    _reserve_ids(PaymentAllocation, len(allocations)), allocations, strict=True
                )
            ],
        )
        _set_columns(Installment, list(touched.values()), {"amount_paid": "numeric"})
        if held:
            # Under the row locks of step 5: these are still provisional and not in conflict.
            Payment.objects.filter(pk__in=[row["pk"] for row in held]).update(
                status=PaymentStatus.VERIFIED,
                held_amount=Decimal("0"),
                confirmed_via=PaymentConfirmation.STATEMENT,
                confirmed_at=now,
                confirmed_by=None,
                verified_by=F("recorded_by"),
                verified_at=now,
                flag="",  # a conflict was excluded; a "not confirmed in time" flag is answered
                flag_reason="",
                flagged_at=None,
            )
        _flag_conflicts(provider, conflicting, now=now, actor=actor, reason=conflict_reason)

        # 6. The lines, each with its payment or the reason it was not credited.
        _copy(
            StatementLine,
            [
                {
                    "id": pk,
                    "statement_import_id": record.pk,
                    "provider_id": provider.pk,
                    **statement_line_fields(line),
                    "note": stored[line.fingerprint][0],
                    "payment_id": stored[line.fingerprint][1],
                }
                for pk, line in zip(_reserve_ids(StatementLine, len(fresh)), fresh, strict=True)
            ],
        )

        # 7. Contracts paid in full, the provider's webhooks, the trail, and the lock decision.
        paid_off = [
            locked[pk]
            for pk in contract_ids
            if locked[pk].status == ContractStatus.ACTIVE
            and all(i.amount_paid >= i.amount_due for i in open_by_contract[pk])
        ]
        if paid_off:
            # Money from a receipt nobody confirmed never settles a contract (paid off is released for good).
            pending = set(
                PaymentAllocation.objects.filter(
                    contract_id__in=[c.pk for c in paid_off],
                    payment__status=PaymentStatus.PROVISIONAL,
                    reversed_at__isnull=True,
                ).values_list("contract_id", flat=True)
            )
            paid_off = [c for c in paid_off if c.pk not in pending]
        if paid_off:
            # The rows are locked (step 5): no concurrent status change can be overwritten.
            Contract.objects.filter(pk__in=[c.pk for c in paid_off]).update(status=ContractStatus.PAID_OFF)
            audit_record_many(
                actor=actor,
                entries=[
                    AuditEntry(
                        action="contract.status",
                        obj=contract,
                        before={"status": contract.status},
                        after={"status": ContractStatus.PAID_OFF},
                    )
                    for contract in paid_off
                ],
            )
        webhook_events_emit(
            provider=provider.pk,
            event="payment.matched",
            payloads=[
                {
                    "payment": c.payment_id,
                    "external_id": c.external_id,
                    "channel": CHANNEL,
                    "amount": str(c.amount),
                    "currency": provider.currency,
                    "contract": locked[c.match[0]].number,
                    "rule": c.match[1],
                    "received_at": c.received_at,
                }
                for c in matched
            ]
            + [
                {
                    "payment": row["pk"],
                    "external_id": row["external_id"],
                    "channel": CHANNEL,
                    "amount": str(row["amount"]),
                    "currency": row["currency"],
                    "contract": locked[row["contract_id"]].number,
                    "rule": row["match_rule"],
                    "received_at": row["received_at"],
                }
                for row in held
            ],
        )
        by_payment = defaultdict(list)
        for payment_id, _contract_id, installment_id, amount in allocations:
            by_payment[payment_id].append({"installment": installment_id, "amount": str(amount)})
        audit_record_many(
            actor=actor,
            entries=[
                AuditEntry(
                    action="payment.channel_confirm",
                    organisation=provider,
                    object_type=Payment._meta.label,
                    object_id=str(row["pk"]),
                    object_repr=f"{CHANNEL} {row['external_id']}",
                    before={"status": PaymentStatus.PROVISIONAL, "held": str(row["held_amount"]), "flag": row["flag"]},
                    after={
                        "status": PaymentStatus.VERIFIED,
                        "via": PaymentConfirmation.STATEMENT,
                        "requested_by_id": row["recorded_by_id"],
                        "requested_by": row["recorded_by__username"],
                        "contract": locked[row["contract_id"]].number,
                        "allocations": by_payment[row["pk"]],
                        "flag": "",
                        "statement": record.pk,
                    },
                )
                for row in held
            ],
        )
        if creatable:
            audit_record(
                actor=actor,
                action="statement.credit",
                obj=record,
                after={
                    "lines": [lines[0].line_no, lines[-1].line_no],
                    # [payment id, transaction id, amount, contract number or null, rule or null]
                    "payments": [
                        [
                            c.payment_id,
                            c.external_id,
                            str(c.amount),
                            locked[c.match[0]].number if c.match else None,
                            c.match[1] if c.match else None,
                        ]
                        for c in creatable
                    ],
                },
            )
        # Unlock at once: decided on the rows as they are now, commands signed in this
        # transaction. Money only ever moves a contract towards unlocked, so a contract
        # already unlocked and still running has nothing to decide (its next due date is
        # the sweep's); deciding the thousands of those a statement touches would cost
        # more than crediting them.
        paid_off_ids = {c.pk for c in paid_off}
        # A released contract is final.
        settled = (LockState.UNLOCKED, LockState.RELEASED)
        to_decide = [pk for pk in contract_ids if locked[pk].lock_state not in settled or pk in paid_off_ids]
        if to_decide:
            contracts_lock_evaluate(contract_ids=to_decide, now=now, actor=actor)
    return counts
