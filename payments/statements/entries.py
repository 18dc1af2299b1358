"""A statement entry in payment terms, as both import paths (a batch, and line by line) see it.

Its transaction id and time, its columns of ``StatementLine``, the note of an entry that was
not credited, and :class:`Credit`, a credit line on its way to becoming (or joining) a payment.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

from payments.statements.parsers.types import StatementLine as ParsedLine

CHANNEL = "bank_transfer"


NOT_CREDITED_DEBIT = "Debit or return: shown, never credited."

#: What a stored line says: its note (empty when credited) and its payment's id, if any.
Outcome = tuple[str, int | None]

#: A field whose two records differ: (what was recorded, what this record says).
Differences = dict[str, tuple[str, str]]

#: How a credit matched a contract: (contract id, rule, confidence).
Match = tuple[int, str, int]


@dataclass
class Credit:
    """A credit line on its way to becoming (or joining) a payment."""

    line: ParsedLine
    external_id: str
    amount: Decimal
    reference: str
    received_at: dt.datetime
    fields: dict[str, str]
    payment_id: int | None = None
    match: Match | None = None


def entry_external_id(line: ParsedLine) -> str:
    """The payment id of a statement entry: the bank's own id when it gives one, else the entry's fingerprint."""
    return (line.end_to_end_id or line.bank_reference or f"line:{line.fingerprint}")[:100]


def entry_received_at(line: ParsedLine, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """Midnight of the value (else booking) date in the provider's time zone."""
    day = line.value_date or line.booking_date
    if day is None:  # every parser gives a booking date; datetime.combine would raise this too
        raise TypeError("A statement entry without a booking date has no time.")
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min), zone)


def not_credited_note(error: ValidationError) -> str:
    """A stored line's note when its credit was refused: every reason, per field."""
    reasons = "; ".join(f"{k}: {' '.join(v)}" for k, v in error.message_dict.items())
    return f"Not credited: {reasons}"[:300]


def statement_line_fields(line: ParsedLine) -> dict[str, Any]:
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
