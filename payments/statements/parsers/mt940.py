"""SWIFT MT940 statements, in the dialects banks actually send.

The ``mt-940`` package reads the fields: the ``:61:`` statement line grammar
(dates with the year-boundary correction, debit/credit marks, funds code,
amount, type code, references), the balances, and the German ``:86:``
sub-fields (``?00`` posting text, ``?20``-``?29`` purpose with the SEPA
``EREF+``/``SVWZ+`` keywords, ``?31`` IBAN, ``?32``/``?33`` name).

The framing of the file is done here, because that is where the dialects
differ and where a whole-file parse would lose errors: the package raises on
the first malformed tag and so would sink a whole statement. Here the file is
cut into statements (at ``:20:``) and entries (a ``:61:`` with its ``:86:``
and ``:NS:`` lines) with their line numbers, and each entry goes through the
package on its own, so one bad entry becomes one :class:`LineError`.

Dialect notes (all in ``shared/samples/mt940``):

* SWIFT envelopes ``{1:...}{2:...}{4:`` ... ``-}`` (ASN, SNS, Zenith, Komercijalna,
  ING IBAN), bank header lines before ``:20:`` (ING, ABN AMRO, Van Lanschot,
  bunq, the Danske examples), a leading SOH byte (mBank), ``-XXX`` trailers.
* ``:61:`` without a type code (Zenith Bank, Penta's ``NONREF``), with the
  counterparty on a second line longer than the SWIFT 16x reference (ASN, SNS:
  retried with the package's ``StatementASNB`` grammar).
* ``:28C: /1`` (Zenith): the statement number is kept as text, never parsed.
* ``:86:`` free text (ABN, Danske, Zenith), German ``?``-sub-fields, Dutch and
  SWIFT ``/KEY/value`` structures (Rabobank, ING, Triodos, Van Lanschot, bunq),
  Penta's ``999TYPE:purpose:name:IBAN``, Komercijalna's ``/ORDP/`` lines.
* Several ``:86:`` per entry (old Rabobank), ``:86:`` at statement level before
  the first ``:61:`` (Danske) or after the closing balance (ING, HSBC, Zenith):
  the latter two are statement notes, not entry details.
"""

from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

import mt940
from stdnum import iso11649

from .types import (
    GVC_RETURN_CODES,
    Direction,
    LineError,
    ParsedStatement,
    StatementError,
    StatementLine,
    check_amount,
    check_currency,
    clean_text,
    fingerprint_lines,
    normalise_account,
    to_money,
)

# The package logs every failed regex at ERROR level with the whole value; a
# malformed entry is reported to the officer as a LineError instead.
logging.getLogger("mt940").setLevel(logging.CRITICAL)

# The package's opt-in fixes that matter for payments: never cut long :86:
# details (the contract number can be at the end), keep ?31 as the payer's
# IBAN instead of gluing it to the name, keep free-text :NS: lines, keep text
# before the first SEPA keyword, accept lowercase marks, and let a missing
# :86: sub-field never erase what :61: said.
_OPTIONS = mt940.Options(
    applicant_iban=True,
    merge_keeps_values=True,
    reversal_sign=True,
    case_insensitive_marks=True,
    unbounded_details=True,
    non_swift_free_text=True,
    gvc_leading_text=True,
)

_TAG_RE = re.compile(r"^:(?P<tag>\d{2}[A-Z]?|NS):")
_ENVELOPE_BLOCK_RE = re.compile(r"\{[1-35]:[^{}]*(?:\{[^{}]*\}[^{}]*)*\}")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MESSAGE_END_RE = re.compile(r"^-(\}.*|XXX|\s*)$")

_BALANCE_OPENING = ("60F", "60M", "60")
_BALANCE_CLOSING = ("62F", "62M", "62")
_ENTRY_DETAIL_TAGS = {"86", "NS"}

# Words that banks put in the posting text (German ?00, Dutch /TRTP/, the
# first word of free text) of returns and reversals. Only checked there, never
# in the payer's own remittance text.
_RETURN_WORDS_RE = re.compile(
    r"RETOURE|RUECKUEBERW|RÜCKÜBERW|RUECKLASTSCHR|RÜCKLASTSCHR|RUECKBUCHUNG|RÜCKBUCHUNG|STORNO|TERUGBOEKING|"
    r"TERUGGAAF|REVERSAL|RETURNED",
    re.IGNORECASE,
)

# Keys of the /KEY/value structure of Dutch and SWIFT-style :86: (Rabobank,
# ING, Triodos, Van Lanschot, bunq, HSBC's /OCMT/). Only these split the text,
# so a slash inside the remittance information stays text.
_STRUCTURED_KEYS = (
    "EREF|MARF|CSID|CNTP|REMI|TRTP|IBAN|BIC|NAME|ORDP|BENM|ADDR|ISDT|PURP|RTRN|ULTC|ULTD|ULTB|ULTP|OCMT|CHGS|"
    "EXCH|SVCL|IREF|PREF|KREF|TRCD|BUSP|CDTRREFTP|CDTRREF|CREF|OGB|OSDR|VA|SWOC|ORIG|PT|FT|PY|ABC|DEF"
)
_STRUCTURED_RE = re.compile(rf"/({_STRUCTURED_KEYS})/")
_PENTA_RE = re.compile(
    r"^999(?P<kind>[A-Z_]+):(?P<purpose>.*):(?P<name>[^:]*)"
    r":(?P<account>[A-Z]{2}\d{2}[A-Z0-9]{8,30})(?::(?P<extra>.*))?$",
    re.S,
)
_KBS_FIRST_RE = re.compile(r"^/(ORDP|BENM)/(?P<account>\S+)$")
_BETALINGSKENMERK_RE = re.compile(r"BETALINGSKENM\.?\s*:?\s*(\d{7,16})", re.IGNORECASE)
_RF_RE = re.compile(r"\bRF\d{2}[A-Z0-9]{1,21}\b")
# "EREF" in the :61: reference (Rabobank) means "see /EREF/ in :86:".
_NOT_PROVIDED = {"", "NONREF", "NOTPROVIDED", "NONE", "EREF"}
_IBAN_SHAPE_RE = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}")


@dataclass
class _Record:
    """One tag of the file with its continuation lines and where it starts."""

    tag: str
    line_no: int
    lines: list[str]

    @property
    def value(self) -> str:
        return "\n".join(self.lines).strip()

    @property
    def source(self) -> str:
        return f":{self.tag}:" + "\n".join(self.lines).rstrip()


@dataclass
class _Entry:
    statement_line: _Record
    details: list[_Record] = field(default_factory=list)

    @property
    def raw(self) -> str:
        return "\n".join(record.source for record in (self.statement_line, *self.details)).strip()


@dataclass
class _Statement:
    line_no: int
    header: dict[str, _Record] = field(default_factory=dict)
    entries: list[_Entry] = field(default_factory=list)

    def first(self, *tags: str) -> _Record | None:
        return next((self.header[tag] for tag in tags if tag in self.header), None)


# --- decoding and framing ----------------------------------------------------------------------


def _decode(raw: bytes, encoding: str | None) -> str:
    """Bytes to text: UTF-8 unless told otherwise, else the likelier legacy code page.

    SWIFT allows only a Latin subset, but banks export umlauts and accents in
    their own code page. When the file is not UTF-8 the choice is between
    Windows-1252 (Western Europe) and CP852 (Central Europe; Raiffeisen
    Hungary): the one whose non-ASCII characters are letters wins, since in the
    wrong one they come out as box-drawing characters or symbols.
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    if b"\x00" in raw:
        offset = raw.index(b"\x00")
        raise StatementError(
            f"the file contains NUL bytes (first at byte {offset}): it is not a text MT940 file "
            "(UTF-16 without a byte-order mark, or a binary file)"
        )
    if encoding:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise StatementError(
                f"line {line}: byte 0x{raw[exc.start]:02X} is not valid {encoding}; the file uses another encoding"
            ) from None
        except LookupError:
            raise StatementError(f"unknown encoding {encoding!r}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass

    def letters(text: str) -> int:
        return sum(1 for char in text if ord(char) > 127 and char.isalpha())

    western, central = raw.decode("cp1252", errors="replace"), raw.decode("cp852")
    return central if letters(central) > letters(western) else western


def _records(text: str) -> list[_Record]:
    """Cut the text into tags with their continuation lines, dropping envelopes and bank headers."""
    records: list[_Record] = []
    current: _Record | None = None
    for line_no, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        line = _CONTROL_RE.sub("", line)
        if "{" in line:
            # SWIFT envelope: {1:..}{2:..}{3:..} blocks, then "{4:" opens the text block.
            stripped = _ENVELOPE_BLOCK_RE.sub("", line).replace("{4:", "").strip()
            if not stripped:
                current = None
                continue
            line = stripped
        candidate = line.lstrip()
        match = _TAG_RE.match(candidate)
        if match:
            current = _Record(match["tag"], line_no, [candidate[match.end() :]])
            records.append(current)
        elif _MESSAGE_END_RE.match(line.strip()) and line.strip():
            current = None  # "-", "-}" or "-XXX": the message ends, what follows is header text
        elif current is not None:
            current.lines.append(line)
        # Text outside any tag (bank header lines such as "940 00") carries no entry.
    return records


def _statements(records: list[_Record]) -> list[_Statement]:
    statements: list[_Statement] = []
    statement: _Statement | None = None
    entry: _Entry | None = None
    for record in records:
        if record.tag == "20" or statement is None:
            statement = _Statement(record.line_no)
            statements.append(statement)
            entry = None
        if record.tag == "61":
            entry = _Entry(record)
            statement.entries.append(entry)
        elif record.tag in _ENTRY_DETAIL_TAGS and entry is not None:
            entry.details.append(record)
        else:
            # Any other tag ends the entry: an :86: after the closing balance
            # is a note on the statement, not on its last entry.
            entry = None
            statement.header.setdefault(record.tag, record)
    return statements


# --- the mt-940 package, one piece at a time ---------------------------------------------------


def _library_parse(text: str, statement_tag: mt940.tags.Tag | None = None) -> mt940.models.Transactions:
    tags: dict[int | str, mt940.tags.Tag] | None = {61: statement_tag} if statement_tag else None
    transactions = mt940.models.Transactions(tags=tags, options=_OPTIONS)
    transactions.parse(text)
    return transactions


def _balance(record: _Record | None, what: str) -> tuple[Decimal | None, str]:
    """Signed balance amount and its currency, or a StatementError naming the line."""
    if record is None:
        return None, ""
    try:
        data = _library_parse(f":{record.tag}:{record.value}").data
    except Exception as exc:  # the package raises RuntimeError/ValueError/InvalidOperation
        raise StatementError(
            f"line {record.line_no}: the {what} balance :{record.tag}:{record.value} cannot be read ({exc})"
        ) from None
    balance = next((value for value in data.values() if isinstance(value, mt940.models.Balance)), None)
    if balance is None or not isinstance(balance.amount, mt940.models.Amount):
        raise StatementError(f"line {record.line_no}: the {what} balance :{record.tag}:{record.value} has no amount")
    return balance.amount.amount, (balance.amount.currency or "").upper()


def _parse_entry_fields(entry: _Entry) -> dict:
    """The package's reading of one entry; ValueError with the reason when it cannot."""
    text = "\n".join(record.source for record in (entry.statement_line, *entry.details))
    try:
        transactions = _library_parse(text)
    except RuntimeError:
        # ASN and SNS put the counterparty IBAN (up to 34x) where SWIFT allows
        # 16x and the name on a second line; the package has a grammar for it.
        try:
            transactions = _library_parse(text, mt940.tags.StatementASNB())
        except RuntimeError:
            raise ValueError(
                f":61:{entry.statement_line.value.splitlines()[0]} does not follow the SWIFT layout "
                "(value date YYMMDD, optional entry date MMDD, C/D/RC/RD mark, amount with decimal comma, type code)"
            ) from None
    if len(transactions) != 1:
        raise ValueError("the :61: statement line could not be read as one entry")
    return transactions[0].data


# --- :86: interpretation -----------------------------------------------------------------------


def _details_text(entry: _Entry, *, wrapped: bool) -> str:
    """The entry's :86: text. ``wrapped``: structured content, whose line breaks are not content."""
    parts = []
    for record in entry.details:
        if record.tag != "86":
            continue
        lines = [line.strip() if not wrapped else line.rstrip("\r") for line in record.lines]
        parts.append(("" if wrapped else " ").join(lines))
    return ("" if wrapped else " ").join(parts)


def _structured(text: str) -> dict[str, str]:
    """Split ``/KEY/value/KEY/value`` into a dict (first occurrence of a key wins)."""
    pieces = _STRUCTURED_RE.split(text)
    fields: dict[str, str] = {}
    for key, value in zip(pieces[1::2], pieces[2::2], strict=False):
        fields.setdefault(key, value.strip())
    return fields


def _strip_slashes(value: str) -> str:
    return value.strip().strip("/").strip()


def _remittance(value: str) -> tuple[str, str]:
    """(reference, creditor reference) from a /REMI/ value: ``USTD//text/`` or ``STRD/CUR/ref/``."""
    value = value.strip()
    match = re.match(r"^STRD/+(?:CUR|ISO)?/+(?P<ref>[^/]*)", value)
    if match:
        return "", match["ref"].strip()
    value = re.sub(r"^USTD/+", "", value)
    return clean_text(_strip_slashes(value)), ""


@dataclass
class _Details:
    reference: str = ""
    end_to_end_id: str = ""
    creditor_reference: str = ""
    counterparty_name: str = ""
    counterparty_account: str = ""
    posting_text: str = ""
    is_return: bool = False
    # True when the :86: layout says where the payer's text is (German
    # sub-fields): an empty reference then means the payer wrote none.
    authoritative: bool = False


def _german(data: dict, joined: str) -> _Details:
    # Without an SVWZ+ keyword the package files all purpose text under the
    # preceding keyword (or drops it); the ?20-?29 sub-fields as sent are the
    # payer's text then.
    purpose = data.get("purpose") or "".join(
        value for key, value in re.findall(r"\?(\d{2})([^?]*)", joined) if key.startswith("2")
    )
    details = _Details(
        reference=clean_text(purpose),
        authoritative=True,
        end_to_end_id=clean_text(data.get("end_to_end_reference")),
        counterparty_name=clean_text(data.get("applicant_name")),
        counterparty_account=normalise_account(data.get("applicant_iban") or ""),
        posting_text=clean_text(data.get("posting_text")),
    )
    # ?34 (the package's "return_debit_notes") is the GVC extension, which
    # carries the reason on returns but other values elsewhere: not a signal.
    details.is_return = str(data.get("transaction_code") or "").strip() in GVC_RETURN_CODES
    return details


def _slash_structured(text: str) -> _Details:
    fields = _structured(text)
    details = _Details(end_to_end_id=_strip_slashes(fields.get("EREF", "")))
    reference, creditor_reference = _remittance(fields.get("REMI", ""))
    details.reference = reference
    details.creditor_reference = creditor_reference or _strip_slashes(fields.get("CDTRREF", ""))
    if "CNTP" in fields:
        # /CNTP/account/BIC/name/city/
        parts = [part.strip() for part in fields["CNTP"].split("/")]
        details.counterparty_account = normalise_account(parts[0] if parts else "")
        details.counterparty_name = clean_text(parts[2]) if len(parts) > 2 else ""
    details.counterparty_account = details.counterparty_account or normalise_account(
        _strip_slashes(fields.get("IBAN", ""))
    )
    details.counterparty_name = details.counterparty_name or clean_text(_strip_slashes(fields.get("NAME", "")))
    details.posting_text = clean_text(_strip_slashes(fields.get("TRTP", "")))
    details.is_return = "RTRN" in fields
    return details


def _interpret_details(entry: _Entry, data: dict) -> _Details:
    joined = _details_text(entry, wrapped=True)
    if "purpose" in data or "posting_text" in data or "applicant_name" in data:
        return _german(data, joined)
    kbs_lines = [line.strip() for record in entry.details if record.tag == "86" for line in record.lines]
    kbs_lines = [line for line in kbs_lines if line]
    first = _KBS_FIRST_RE.match(kbs_lines[0]) if kbs_lines else None
    if first and all(line.startswith("/") for line in kbs_lines):
        # Komercijalna Banka: /ORDP/account, /name, /references, /purpose, one per line.
        return _Details(
            counterparty_account=first["account"],
            counterparty_name=clean_text(kbs_lines[1][1:]) if len(kbs_lines) > 1 else "",
            reference=clean_text(kbs_lines[-1][1:]) if len(kbs_lines) > 2 else "",
        )
    if joined.lstrip().startswith("/") and _STRUCTURED_RE.search(joined):
        return _slash_structured(joined.strip())
    free = _details_text(entry, wrapped=False)
    penta = _PENTA_RE.match(free.strip())
    if penta:
        return _Details(
            reference=clean_text(penta["purpose"]),
            counterparty_name=clean_text(penta["name"]),
            counterparty_account=normalise_account(penta["account"]),
            posting_text=penta["kind"],
        )
    details = _Details(reference=clean_text(free))
    details.posting_text = details.reference.split(" ")[0] if details.reference else ""
    return details


def _is_iban_or_bban(value: str) -> bool:
    """IBAN-shaped (test files anonymise IBANs, breaking the checksum) or a 9-10 digit Dutch account."""
    value = normalise_account(value)
    return bool(_IBAN_SHAPE_RE.fullmatch(value) or re.fullmatch(r"\d{9,10}", value))


def _creditor_reference(text: str) -> str:
    for candidate in _RF_RE.findall(text.upper()):
        if iso11649.is_valid(candidate):
            return candidate
    match = _BETALINGSKENMERK_RE.search(text)
    return match.group(1) if match else ""


# --- entry to StatementLine --------------------------------------------------------------------


def _line(entry: _Entry, data: dict, currency: str, account: str) -> StatementLine:
    mark = str(data.get("status") or "").upper()
    amount = abs(data["amount"].amount)
    if reason := check_amount(amount, currency):
        raise ValueError(reason)
    amount = to_money(amount, currency)
    type_code = str(data.get("id") or "")
    customer_reference = str(data.get("customer_reference") or "").strip()
    if type_code == "NONR" and customer_reference.startswith("EF"):
        # No type code at all (Penta): the package took "NONR" of NONREF for one.
        type_code, customer_reference = "", "NONREF" + customer_reference[2:]
    bank_reference = str(data.get("bank_reference") or "").strip()
    extra = clean_text(data.get("extra_details"))

    details = _interpret_details(entry, data)
    if not any(record.tag == "86" for record in entry.details):
        # No :86: at all: a :NS: text (Sberbank), else the :61: reference and
        # supplementary details are all there is.
        details.reference = clean_text(data.get("non_swift_text")) or clean_text(
            " ".join(v for v in (customer_reference, extra) if v.upper() != "NONREF")
        )
    if not details.counterparty_account:
        if _IBAN_SHAPE_RE.fullmatch(normalise_account(customer_reference)) or (
            extra and re.fullmatch(r"\d{9,10}", customer_reference)
        ):
            # ASN/SNS (IBAN) and old Rabobank (account number, then the name)
            # put the counterparty where SWIFT has the customer reference.
            details.counterparty_account = normalise_account(customer_reference)
            details.counterparty_name = details.counterparty_name or extra
        elif _is_iban_or_bban(extra):
            details.counterparty_account = normalise_account(extra)  # Rabobank structured, 2nd line
    if not details.reference and not details.authoritative:
        # A :86: without remittance text. When it is all /KEY/ fields (ING tax
        # payments), the payment reference is the :61: one; when it also has
        # free lines (HSBC, Citi), those are the text.
        lines_86 = [line.strip() for record in entry.details if record.tag == "86" for line in record.lines]
        only_keyed = all(line.startswith("/") for line in lines_86 if line)
        own = customer_reference if customer_reference.upper() not in _NOT_PROVIDED else ""
        details.reference = (own if only_keyed else "") or clean_text(_details_text(entry, wrapped=False))
    elif details.counterparty_account and details.reference.startswith(details.counterparty_account):
        # ASN and SNS repeat the counterparty IBAN and name in front of the purpose.
        rest = details.reference[len(details.counterparty_account) :].strip()
        if details.counterparty_name and rest.startswith(details.counterparty_name):
            rest = rest[len(details.counterparty_name) :].strip()
        details.reference = rest or details.reference
    if not details.creditor_reference:
        details.creditor_reference = _creditor_reference(details.reference)

    is_return = (
        mark.startswith("R")
        or type_code[1:] == "RTI"
        or details.is_return
        or bool(_RETURN_WORDS_RE.search(details.posting_text))
    )
    # RC reverses a credit (money leaves), RD reverses a debit (money comes back).
    direction: Direction = "credit" if mark in ("C", "RD") else "debit"
    value_date = data.get("date")
    entry_date = data.get("entry_date")
    if bank_reference.upper() in _NOT_PROVIDED:
        bank_reference = ""
    if not bank_reference and customer_reference.upper() not in _NOT_PROVIDED:
        bank_reference = customer_reference
    end_to_end = details.end_to_end_id if details.end_to_end_id.upper() not in _NOT_PROVIDED else ""
    return StatementLine(
        line_no=entry.statement_line.line_no,
        booking_date=_plain_date(entry_date or value_date),
        value_date=_plain_date(value_date),
        amount=amount,
        currency=currency,
        direction=direction,
        is_return=is_return,
        reference=details.reference,
        end_to_end_id=end_to_end,
        creditor_reference=details.creditor_reference,
        bank_reference=bank_reference,
        counterparty_name=details.counterparty_name,
        counterparty_account=details.counterparty_account,
        raw=entry.raw,
        account=account,
    )


def _plain_date(value: date | None) -> date | None:
    """mt-940's ``Date`` subclass as a plain ``datetime.date``, which compares and pickles everywhere."""
    return None if value is None else date(value.year, value.month, value.day)


# --- public ------------------------------------------------------------------------------------


def parse_mt940(raw: bytes, *, encoding: str | None = None) -> ParsedStatement:
    """Read an MT940 file into a :class:`ParsedStatement`.

    Raises :class:`StatementError` when the file cannot be trusted as a whole:
    not text, no statement in it, a balance that cannot be read, or a
    statement without closing balance (a truncated file). Entries that cannot
    be read (bad ``:61:``, zero amount, unknown currency) become LineErrors.
    """
    text = _decode(raw, encoding)
    statements = [st for st in _statements(_records(text)) if st.header or st.entries]
    if not any("20" in st.header or st.entries for st in statements):
        raise StatementError("no MT940 statement found: the file has no ':20:' or ':61:' tag")

    lines: list[StatementLine] = []
    errors: list[LineError] = []
    accounts, currencies, ids = [], [], []
    first_opening: Decimal | None = None
    last_closing: Decimal | None = None
    for index, statement in enumerate(statements):
        reference = statement.header["20"].value if "20" in statement.header else "(no :20:)"
        closing_record = statement.first(*_BALANCE_CLOSING)
        if closing_record is None:
            raise StatementError(
                f"line {statement.line_no}: statement {reference!r} has no closing balance (:62F:/:62M:); "
                "the file looks truncated"
            )
        opening, opening_currency = _balance(statement.first(*_BALANCE_OPENING), "opening")
        closing, closing_currency = _balance(closing_record, "closing")
        currency = opening_currency or closing_currency
        account = normalise_account(statement.header["25"].value) if "25" in statement.header else ""
        if currency:
            # bunq, ING, Rabobank and Raiffeisen append the currency to the account (":25:NL10BUNQ… EUR").
            account = re.sub(rf"(?<=\d)/?{re.escape(currency)}$", "", account)
        number = statement.header["28C"].value if "28C" in statement.header else ""
        number = number or (statement.header["28"].value if "28" in statement.header else "")
        accounts.append(account)
        currencies.append(currency)
        number = number.strip().lstrip("/")  # Zenith writes ":28C: /1"
        ids.append(f"{reference}/{number}" if number else reference)
        if index == 0:
            first_opening = opening
        last_closing = closing

        currency_problem = check_currency(currency) if currency else "the statement has no currency in its balances"
        for entry in statement.entries:
            line_no = entry.statement_line.line_no
            if currency_problem:
                errors.append(LineError(line_no, f"{currency_problem} (statement {reference!r})", entry.raw))
                continue
            try:
                data = _parse_entry_fields(entry)
                lines.append(_line(entry, data, currency, account))
            except Exception as exc:  # one unreadable entry must not sink the file
                errors.append(LineError(line_no, _entry_reason(exc), entry.raw))

    single = len(set(accounts)) == 1 and len(set(currencies)) == 1
    statement_id = ids[0] if len(ids) == 1 else f"{ids[0]} … {ids[-1]} ({len(ids)} statements)"
    return ParsedStatement(
        format="mt940",
        account=accounts[0] if single else "",
        currency=currencies[0] if single else "",
        opening_balance=first_opening if single else None,
        closing_balance=last_closing if single else None,
        statement_id=statement_id,
        lines=fingerprint_lines(lines),
        errors=errors,
    )


def _entry_reason(exc: Exception) -> str:
    message = str(exc.args[0]) if exc.args else exc.__class__.__name__
    if isinstance(exc, ValueError) and ("day is out of range" in message or "month must be" in message):
        return f"the :61: date is not a real date ({message})"
    if exc.__class__.__name__ in ("InvalidOperation", "ConversionSyntax"):
        return "the :61: amount is not a number"
    return message
