"""Value types of the statement parsing layer.

Everything here is plain data: no Django, no database. A parser turns the bytes
of one bank file into a :class:`ParsedStatement`; the import service (elsewhere)
decides what to store. Amounts are :class:`~decimal.Decimal`, never float.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Literal, get_args

from babel.numbers import get_currency_name, get_currency_precision

Direction = Literal["credit", "debit"]
FormatName = Literal["mt940", "camt053", "camt054", "camt052", "csv"]
#: Every format finlock reads, for every list that offers a choice (the upload form, the API, the command).
FORMATS: tuple[FormatName, ...] = get_args(FormatName)
FORMAT_LABELS: dict[FormatName, str] = {
    "mt940": "MT940",
    "camt053": "camt.053",
    "camt054": "camt.054",
    "camt052": "camt.052",
    "csv": "CSV",
}
#: Far above any real daily or monthly statement; keeps a stray upload (a database dump, a video) from being
#: read into memory and parsed.
MAX_STATEMENT_BYTES = 50 * 1024 * 1024

# German GVC codes (Geschäftsvorfallcodes) of returns, in MT940 :86: and in
# camt proprietary bank transaction codes: 109 returned SEPA direct debit,
# 159 returned SEPA credit transfer.
GVC_RETURN_CODES = frozenset({"109", "159"})

# ISO 4217 reserves XXX ("no currency") and XTS ("for testing"); babel knows
# their names, so the name check alone would let them through.
_NOT_MONEY = {"XXX", "XTS"}


class StatementError(Exception):
    """The file as a whole cannot be read; nothing in it may be imported.

    The message says where (line or element) and why, in words a finance
    officer can act on: it is shown as is.
    """


@dataclass(frozen=True)
class LineError:
    """One entry of the file that could not be read, and why.

    ``line_no`` is the 1-based line of the file where the entry starts, so the
    officer can open the file and find it; ``raw`` is that entry's text.
    """

    line_no: int
    reason: str
    raw: str


@dataclass(frozen=True)
class StatementLine:
    """One booked movement on the account, as the bank reported it.

    ``amount`` is always positive; ``direction`` says which way the money went.
    ``is_return`` marks returns and reversals (a returned payment, a reversed
    direct debit): they are shown, never credited to a contract, whichever way
    the money went. ``reference`` is the remittance text as the payer typed it
    (the contract number is usually in there). ``fingerprint`` identifies the
    entry across re-imports of the same file; see :func:`fingerprint_lines`.
    """

    line_no: int
    booking_date: date | None
    value_date: date | None
    amount: Decimal
    currency: str
    direction: Direction
    is_return: bool
    reference: str
    end_to_end_id: str
    creditor_reference: str
    bank_reference: str
    counterparty_name: str
    counterparty_account: str
    raw: str
    fingerprint: str = ""
    # The account the entry was booked on. Usually the statement's account, but
    # one MT940 file may carry statements of several accounts.
    account: str = ""

    @property
    def is_candidate(self) -> bool:
        """True when this line may pay a contract: a credit that is not a return."""
        return self.direction == "credit" and not self.is_return


@dataclass(frozen=True)
class ParsedStatement:
    """Everything read from one file.

    ``account``/``currency``/balances describe the statement; when a file holds
    statements of several accounts or currencies, they are empty/None and each
    line carries its own. Balances are signed (a debit balance is negative).
    Every entry of the file ends up in exactly one of ``lines`` or ``errors``.
    """

    format: FormatName
    account: str
    currency: str
    opening_balance: Decimal | None
    closing_balance: Decimal | None
    statement_id: str
    lines: list[StatementLine] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    @property
    def credits(self) -> list[StatementLine]:
        """Payment candidates: money in that is not a return or reversal."""
        return [line for line in self.lines if line.is_candidate]

    @property
    def debits(self) -> list[StatementLine]:
        """Money out (fees, transfers, direct debits) that is not a return: shown only."""
        return [line for line in self.lines if line.direction == "debit" and not line.is_return]

    @property
    def returns(self) -> list[StatementLine]:
        """Returns and reversals, either direction: shown only, never credited."""
        return [line for line in self.lines if line.is_return]


# --- helpers shared by the parsers -------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def check_currency(code: str) -> str | None:
    """Return why ``code`` is not a usable ISO 4217 currency, or None when it is.

    Cached: a statement repeats one or two currencies on every line, and babel's lookup
    costs more than the rest of reading the line.
    """
    if not re.fullmatch(r"[A-Z]{3}", code or ""):
        return f"currency {code!r} is not a three-letter ISO 4217 code"
    if code in _NOT_MONEY or get_currency_name(code, locale="en") == code:
        return f"unknown currency {code!r} (not an ISO 4217 currency)"
    return None


def check_amount(amount: Decimal, currency: str) -> str | None:
    """Return why a booked ``amount`` (already made positive by the caller) is unusable, or None."""
    if not amount.is_finite():
        return f"amount {amount} is not a number"
    if amount == 0:
        return "amount is zero: nothing was booked (an information-only entry)"
    if amount < 0:
        return f"amount {amount} is negative where the format expects a positive amount"
    # A JPY amount with cents, or EUR with three decimals, is a corrupt field, not money.
    try:
        precision = get_currency_precision(currency)
        if amount != amount.quantize(Decimal(1).scaleb(-precision)):
            return f"amount {amount} has more decimals than {currency} allows ({precision})"
    except InvalidOperation:
        return f"amount {amount} is out of range"
    return None


def to_money(amount: Decimal, currency: str) -> Decimal:
    """``amount`` with the currency's number of decimals (``79.7`` CHF is ``79.70``); call after check_amount."""
    return amount.quantize(Decimal(1).scaleb(-get_currency_precision(currency)))


def normalise_account(value: str) -> str:
    """Account identifiers compare without spaces and case (``de12 3456`` is ``DE123456``)."""
    return re.sub(r"\s+", "", value or "").upper()


def clean_text(value: str | None) -> str:
    """Collapse runs of whitespace (line breaks of fixed-width formats) into single spaces."""
    return re.sub(r"\s+", " ", value or "").strip()


def _fingerprint_key(line: StatementLine) -> tuple[str, ...]:
    return (
        normalise_account(line.account),
        line.booking_date.isoformat() if line.booking_date else "",
        format(line.amount.normalize(), "f"),
        line.currency,
        line.direction,
        line.bank_reference or line.end_to_end_id,
        line.reference,
    )


def fingerprint_lines(lines: list[StatementLine]) -> list[StatementLine]:
    """Give every line a stable SHA-256 fingerprint, for exactly-once import.

    The fingerprint covers the account, booking date, amount, currency,
    direction, bank reference (or end-to-end id when the bank gave none), the
    reference text, and the entry's ordinal among identical entries of this
    file. The ordinal keeps two genuinely separate but identical payments (same
    payer, same day, same amount, same text) apart, while re-reading the same
    file yields the same fingerprints in the same order. Nothing position-based
    (line numbers) goes in, so a re-export with other header lines still matches.
    """
    seen: Counter[tuple[str, ...]] = Counter()
    result = []
    for line in lines:
        key = _fingerprint_key(line)
        ordinal = seen[key]
        seen[key] += 1
        payload = "\x1f".join((*key, str(ordinal))).encode()
        result.append(dataclasses.replace(line, fingerprint=hashlib.sha256(payload).hexdigest()))
    return result


def parse_decimal(text: str, *, decimal_comma: bool) -> Decimal:
    """Read a bank amount as Decimal; raise ValueError with the reason when it is not one.

    With ``decimal_comma`` ``1.234,56`` is 1234.56; without, ``1,234.56`` is.
    A leading or trailing sign is kept (German exports write ``6,90-``).
    """
    value = (text or "").strip().replace("\u00a0", "").replace(" ", "")
    if not value:
        raise ValueError("amount is empty")
    sign = ""
    if value[0] in "+-":
        sign, value = value[0], value[1:]
    elif value[-1] in "+-":
        sign, value = value[-1], value[:-1]
    thousands, point = (".", ",") if decimal_comma else (",", ".")
    grouped = rf"\d{{1,3}}(\{thousands}\d{{3}})+"
    if not re.fullmatch(rf"(\d+|{grouped})(\{point}\d*)?|\{point}\d+", value):
        raise ValueError(f"amount {text.strip()!r} is not a number")
    value = value.replace(thousands, "").replace(point, ".")
    return Decimal(sign.replace("+", "") + value)
