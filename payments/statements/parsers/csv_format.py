"""Bank CSV exports, read through a column mapping saved per source.

Every bank's online banking exports its own CSV: separator, decimal comma,
date format, encoding, lines before the header, one signed amount column or
separate debit/credit columns or an unsigned amount with an S/H mark. A
:class:`CsvMapping` says all of that for one source; :data:`KNOWN_MAPPINGS`
holds the ones of the sample banks, and :func:`detect_csv_mapping` picks one
by the header. A finance officer's own mapping for another bank is the same
dataclass (stored elsewhere) passed to :func:`parse_csv`.
"""

from __future__ import annotations

import calendar
import csv
import dataclasses
import functools
import io
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from portal.patterns import PatternError, compile_pattern

from .types import (
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
    parse_decimal,
    to_money,
)

_RF_RE = re.compile(r"\bRF\d{2}[A-Z0-9]{1,21}\b")
_NOT_PROVIDED = {"", "NOTPROVIDED", "NONREF"}


@dataclass(frozen=True)
class CsvMapping:
    """How to read one source's CSV export. Optional columns are ``None`` when absent.

    Direction comes from exactly one of: ``amount_column`` (signed: negative
    is a debit), ``debit_column`` + ``credit_column`` (each positive), or
    ``amount_column`` + ``direction_column`` (positive amount, a mark such as
    the German S/H in the other column).
    """

    name: str
    date_column: str
    # Columns that identify this layout in :func:`detect_csv_mapping`; ASCII
    # only, so a file in the wrong encoding is still recognised and then
    # refused with the precise reason instead of "unknown layout". Only needed
    # for detection; a mapping chosen by the officer may leave it empty.
    signature: tuple[str, ...] = ()
    amount_column: str | None = None
    debit_column: str | None = None
    credit_column: str | None = None
    direction_column: str | None = None
    debit_marks: tuple[str, ...] = ("S", "D", "DR", "DBIT", "SOLL")
    credit_marks: tuple[str, ...] = ("H", "C", "CR", "CRDT", "HABEN")
    delimiter: str = ";"
    decimal_comma: bool = True
    date_format: str = "%d.%m.%Y"
    encoding: str = "utf-8"
    preamble_rows: int = 0
    value_date_column: str | None = None
    currency_column: str | None = None
    default_currency: str = ""
    reference_columns: tuple[str, ...] = ()
    counterparty_name_column: str | None = None
    counterparty_account_column: str | None = None
    end_to_end_column: str | None = None
    bank_reference_column: str | None = None
    posting_text_column: str | None = None
    account_column: str | None = None
    # Regular expressions with one group, searched in the reference text when
    # the bank has no column for it (Commerzbank's "End-to-End-Referenz: …").
    end_to_end_pattern: str | None = None
    counterparty_account_pattern: str | None = None
    # Labels in the preamble whose next cell is the account ("BLZ:", "Konto:").
    preamble_account_labels: tuple[str, ...] = ()
    # Balance rows at the end (VR-Bank's "Anfangssaldo"/"Endsaldo"): the
    # column holding the label, and the labels.
    balance_label_column: str | None = None
    opening_balance_label: str | None = None
    closing_balance_label: str | None = None
    # VR-Bank wraps its purpose text at 27 characters (the old DTA field
    # width) and puts the posting text on the first line.
    wrapped_purpose_width: int = 0
    purpose_first_line_is_posting_text: bool = False
    # Posting texts of returns and reversals.
    return_pattern: str = r"RETOUR|R(?:Ü|UE)CK(?:LASTSCHRIFT|BUCHUNG|ÜBERWEISUNG|UEBERWEISUNG|GABE)|STORNO"

    def __post_init__(self) -> None:
        # A mapping saved as JSON comes back with lists; keep the dataclass
        # hashable and ``marks + marks`` working.
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, list):
                object.__setattr__(self, item.name, tuple(value))

    def required_columns(self) -> set[str]:
        columns = {
            self.date_column,
            self.amount_column,
            self.debit_column,
            self.credit_column,
            self.direction_column,
            self.value_date_column,
            self.currency_column,
            self.counterparty_name_column,
            self.counterparty_account_column,
            self.end_to_end_column,
            self.bank_reference_column,
            self.posting_text_column,
            self.account_column,
            self.balance_label_column,
            *self.reference_columns,
        }
        return {column for column in columns if column is not None}

    def check(self) -> None:
        """Raise StatementError when the mapping itself is inconsistent."""
        signed = self.amount_column is not None and self.direction_column is None
        split = self.debit_column is not None and self.credit_column is not None
        marked = self.amount_column is not None and self.direction_column is not None
        half_split = (self.debit_column is None) != (self.credit_column is None)
        if half_split or sum((signed, split, marked)) != 1 or (split and self.amount_column is not None):
            raise StatementError(
                f"CSV mapping {self.name!r}: give a signed amount column, or debit and credit columns, "
                "or an amount column with a debit/credit mark column"
            )
        if not self.currency_column and not self.default_currency:
            raise StatementError(f"CSV mapping {self.name!r}: no currency column and no default currency")


KNOWN_MAPPINGS: dict[str, CsvMapping] = {
    # Commerzbank online banking: UTF-8 with BOM, signed amount, the SEPA
    # references inside the Buchungstext.
    "commerzbank": CsvMapping(
        name="commerzbank",
        signature=("Buchungstag", "Wertstellung", "Umsatzart", "Buchungstext", "Betrag", "IBAN Auftraggeberkonto"),
        date_column="Buchungstag",
        value_date_column="Wertstellung",
        amount_column="Betrag",
        currency_column="Währung",
        reference_columns=("Buchungstext",),
        posting_text_column="Umsatzart",
        account_column="IBAN Auftraggeberkonto",
        end_to_end_pattern=(
            r"End-to-End-Referenz:\s*(.+?)(?:\s+(?:Kundenreferenz|Mandatsreferenz|ID des Auftraggebers):|$)"
        ),
    ),
    # 1822direkt: signed amount in "Soll/Haben", purpose in Vwz.0..Vwz.17.
    "1822direkt": CsvMapping(
        name="1822direkt",
        signature=("Kontonummer", "Buchungstag", "Wertstellung", "Soll/Haben", "Buchungsart", "Vwz.0"),
        date_column="Buchungstag",
        value_date_column="Wertstellung",
        amount_column="Soll/Haben",
        default_currency="EUR",
        reference_columns=tuple(f"Vwz.{index}" for index in range(18)),
        counterparty_name_column="Empfänger/Auftraggeber Name",
        counterparty_account_column="Empfänger/Auftraggeber IBAN",
        end_to_end_column="End-to-End-Identifikation",
        posting_text_column="Buchungsart",
        account_column="Kontonummer",
    ),
    # Genossenschaftsbank Unterallgäu (VR-Bank) "Umsatzanzeige": ISO-8859-1,
    # 12 preamble lines, unsigned amount with S/H mark, balances at the end.
    "vrbank_umsatzanzeige": CsvMapping(
        name="vrbank_umsatzanzeige",
        signature=("Buchungstag", "Valuta", "Vorgang/Verwendungszweck", "Kundenreferenz", "Umsatz"),
        encoding="iso-8859-1",
        preamble_rows=12,
        date_column="Buchungstag",
        value_date_column="Valuta",
        amount_column="Umsatz",
        direction_column="",  # the S/H column has a blank header
        currency_column="Währung",
        reference_columns=("Vorgang/Verwendungszweck",),
        counterparty_name_column="Empfänger/Zahlungspflichtiger",
        bank_reference_column="Kundenreferenz",
        end_to_end_pattern=r"EREF:\s*(\S+)",
        counterparty_account_pattern=r"IBAN:\s*([A-Z]{2}\d{2}[A-Z0-9]{10,30})",
        preamble_account_labels=("BLZ:", "Konto:"),
        balance_label_column="Kundenreferenz",
        opening_balance_label="Anfangssaldo",
        closing_balance_label="Endsaldo",
        wrapped_purpose_width=27,
        purpose_first_line_is_posting_text=True,
    ),
}


# --- reading ---------------------------------------------------------------------------------


def _decode(raw: bytes, mapping: CsvMapping, *, strict: bool = True) -> str:
    encoding = "utf-8-sig" if mapping.encoding.lower().replace("_", "-") in ("utf-8", "utf8") else mapping.encoding
    try:
        return raw.decode(encoding, errors="strict" if strict else "replace")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise StatementError(
            f"line {line}, column {column}: byte 0x{raw[exc.start]:02X} is not valid {mapping.encoding}; "
            f"the mapping {mapping.name!r} expects {mapping.encoding} — was the file exported in another encoding?"
        ) from None
    except LookupError:
        raise StatementError(f"CSV mapping {mapping.name!r}: unknown encoding {mapping.encoding!r}") from None


def _records(text: str, mapping: CsvMapping):
    """Yield (first line, last line, cells) per CSV record; StatementError on broken quoting."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=mapping.delimiter, strict=True)
    last = 0
    try:
        for cells in reader:
            yield last + 1, reader.line_num, cells
            last = reader.line_num
    except csv.Error as exc:
        raise StatementError(
            f"line {last + 1}: the CSV cannot be read ({exc}); the file looks truncated or uses another separator"
        ) from None


def _header_matches(cells: list[str], mapping: CsvMapping) -> bool:
    names = {cell.strip() for cell in cells}
    return all(column in names for column in mapping.signature)


def detect_csv_mapping(raw: bytes) -> CsvMapping:
    """Pick the known mapping whose header is in the file, or raise StatementError."""
    for mapping in KNOWN_MAPPINGS.values():
        text = _decode(raw, mapping, strict=False)
        try:
            for index, (_first, _last, cells) in enumerate(_records(text, mapping)):
                if index == mapping.preamble_rows:
                    if _header_matches(cells, mapping):
                        return mapping
                    break
        except StatementError:
            continue
    known = ", ".join(KNOWN_MAPPINGS)
    raise StatementError(
        f"no saved column mapping matches this CSV's header (known: {known}); set up a mapping for this bank"
    )


@functools.lru_cache(maxsize=4096)
def _strptime_date(value: str, date_format: str) -> date:
    """``strptime`` remembered: a statement's lines share a handful of dates, and strptime is slow."""
    return datetime.strptime(value, date_format).date()


def _parse_date(value: str, mapping: CsvMapping, what: str, *, month_end_fix: bool = False) -> date:
    value = value.strip()
    if not value:
        raise ValueError(f"{what} is empty")
    try:
        return _strptime_date(value, mapping.date_format)
    except ValueError:
        pass
    if month_end_fix:
        # German banks value-date interest on "30.02." (a 30-day-month
        # convention); it means the last day of February, as mt-940 reads it too.
        parsed = _february_overflow(value, mapping.date_format)
        if parsed:
            return parsed
    raise ValueError(f"{what} {value!r} is not a date in the format {mapping.date_format}")


def _february_overflow(value: str, date_format: str) -> date | None:
    probe = value.replace("30.02.", "28.02.").replace("29.02.", "28.02.").replace("31.02.", "28.02.")
    if probe == value:
        return None
    try:
        parsed = datetime.strptime(probe, date_format).date()
    except ValueError:
        return None
    return parsed.replace(day=calendar.monthrange(parsed.year, 2)[1])


def _unwrap(text: str, width: int) -> str:
    """Join lines that were cut at ``width`` characters without a space, others with one."""
    lines = [line.rstrip() for line in text.splitlines()]
    out = ""
    for index, line in enumerate(lines):
        if index and len(lines[index - 1]) < width:
            out += " "
        out += line
    return out


def _search(pattern, text: str) -> str:
    """Group 1 of a compiled mapping pattern's first match in ``text``, or ''."""
    if pattern is None:
        return ""
    match = pattern.search(text)
    return clean_text(match.group(1)) if match else ""


# The mapping's user-supplied patterns, and whether each runs without regard to case.
_PATTERN_FIELDS = (("end_to_end_pattern", False), ("counterparty_account_pattern", False), ("return_pattern", True))


def _compiled_patterns(mapping: CsvMapping) -> dict:
    """The mapping's patterns compiled by ``portal.patterns`` (RE2: linear time); StatementError if one cannot run.

    A mapping saved before a pattern rule existed can hold one that is refused now; the
    import then fails with the field and the reason instead of running it.
    """
    compiled = {}
    for field, ignore_case in _PATTERN_FIELDS:
        pattern = getattr(mapping, field)
        try:
            compiled[field] = compile_pattern(pattern, ignore_case=ignore_case) if pattern else None
        except PatternError as exc:
            what = field.replace("_", " ")
            raise StatementError(f"CSV mapping {mapping.name!r}: the {what} cannot be used: {exc}") from None
    return compiled


@dataclass
class _Context:
    mapping: CsvMapping
    index: dict[str, int]
    account: str
    width: int
    patterns: dict


def _cell(row: list[str], context: _Context, column: str | None) -> str:
    if column is None:
        return ""
    position = context.index[column]
    return row[position] if position < len(row) else ""


def _amount_and_direction(row: list[str], context: _Context) -> tuple[Decimal, Direction]:
    mapping = context.mapping
    comma = mapping.decimal_comma
    if mapping.debit_column is not None:
        debit_text, credit_text = _cell(row, context, mapping.debit_column), _cell(row, context, mapping.credit_column)
        if debit_text.strip() and credit_text.strip():
            raise ValueError("both the debit and the credit column have an amount")
        if credit_text.strip():
            return parse_decimal(credit_text, decimal_comma=comma), "credit"
        if debit_text.strip():
            return parse_decimal(debit_text, decimal_comma=comma), "debit"
        raise ValueError("neither the debit nor the credit column has an amount")
    amount = parse_decimal(_cell(row, context, mapping.amount_column), decimal_comma=comma)
    if mapping.direction_column is not None:
        mark = _cell(row, context, mapping.direction_column).strip().upper()
        if mark in mapping.credit_marks:
            return amount, "credit"
        if mark in mapping.debit_marks:
            return amount, "debit"
        raise ValueError(f"debit/credit mark {mark!r} is none of {mapping.debit_marks + mapping.credit_marks}")
    # Signed column: the sign is the direction; the amount itself must then be positive.
    return abs(amount), ("debit" if amount < 0 else "credit")


def _row(row: list[str], context: _Context, line_no: int, raw: str) -> StatementLine:
    mapping = context.mapping
    if len(row) != context.width:
        # Fewer or more fields than the header: a separator inside an unquoted
        # text or a cut line; every column after it would be misread.
        raise ValueError(f"the row has {len(row)} fields, the header {context.width}")
    booking_date = _parse_date(_cell(row, context, mapping.date_column), mapping, "booking date")
    value_text = _cell(row, context, mapping.value_date_column)
    value_date = (
        _parse_date(value_text, mapping, "value date", month_end_fix=True) if value_text.strip() else booking_date
    )
    amount, direction = _amount_and_direction(row, context)
    currency = (_cell(row, context, mapping.currency_column).strip() or mapping.default_currency).upper()
    if reason := check_currency(currency):
        raise ValueError(reason)
    if reason := check_amount(amount, currency):
        raise ValueError(reason)

    purpose = "\n".join(
        _cell(row, context, column) for column in mapping.reference_columns if _cell(row, context, column)
    )
    posting_text = clean_text(_cell(row, context, mapping.posting_text_column))
    if mapping.purpose_first_line_is_posting_text and purpose:
        first, _, purpose = purpose.partition("\n")
        posting_text = posting_text or clean_text(first)
    if mapping.wrapped_purpose_width:
        purpose = _unwrap(purpose, mapping.wrapped_purpose_width)
    reference = clean_text(purpose)

    end_to_end = clean_text(_cell(row, context, mapping.end_to_end_column)) or _search(
        context.patterns["end_to_end_pattern"], reference
    )
    counterparty_account = normalise_account(_cell(row, context, mapping.counterparty_account_column)) or (
        normalise_account(_search(context.patterns["counterparty_account_pattern"], reference))
    )
    creditor_reference = next((ref for ref in _RF_RE.findall(reference.upper())), "")
    bank_reference = clean_text(_cell(row, context, mapping.bank_reference_column))
    account = normalise_account(_cell(row, context, mapping.account_column)) or context.account
    return StatementLine(
        line_no=line_no,
        booking_date=booking_date,
        value_date=value_date,
        amount=to_money(amount, currency),
        currency=currency,
        direction=direction,
        is_return=bool(context.patterns["return_pattern"] and context.patterns["return_pattern"].search(posting_text)),
        reference=reference,
        end_to_end_id="" if end_to_end.upper() in _NOT_PROVIDED else end_to_end,
        creditor_reference=creditor_reference,
        bank_reference=bank_reference,
        counterparty_name=clean_text(_cell(row, context, mapping.counterparty_name_column)),
        counterparty_account=counterparty_account,
        raw=raw,
        account=account,
    )


def _statement_id(mapping: CsvMapping, lines: list[StatementLine]) -> str:
    """CSV exports carry no statement number: the mapping and the booking period stand in."""
    dates = [line.booking_date for line in lines if line.booking_date]
    return f"{mapping.name} {min(dates).isoformat()}..{max(dates).isoformat()}" if dates else mapping.name


def parse_csv(raw: bytes, mapping: CsvMapping | None = None) -> ParsedStatement:
    """Read a CSV export with ``mapping`` (detected from the header when None)."""
    mapping = mapping or detect_csv_mapping(raw)
    mapping.check()
    patterns = _compiled_patterns(mapping)
    text = _decode(raw, mapping)
    physical = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    records = _records(text, mapping)

    account_parts = []
    header: list[str] | None = None
    header_line = 0
    for _ in range(mapping.preamble_rows + 1):
        try:
            first, _last, cells = next(records)
        except StopIteration:
            raise StatementError(
                f"the file ends before line {mapping.preamble_rows + 1}, "
                f"where the mapping {mapping.name!r} expects the header"
            ) from None
        for label in mapping.preamble_account_labels:
            if label in cells and cells.index(label) + 1 < len(cells):
                account_parts.append(cells[cells.index(label) + 1].strip())
        header, header_line = cells, first
    if header is None:  # no line was read: a negative preamble_rows (csv_mapping_problems refuses it)
        raise TypeError("preamble_rows is negative")
    names = [cell.strip() for cell in header]
    missing = sorted(mapping.required_columns() - set(names))
    if missing:
        raise StatementError(
            f"line {header_line}: the header lacks the column(s) {', '.join(map(repr, missing))} "
            f"that the mapping {mapping.name!r} reads; the header is {', '.join(map(repr, names))}"
        )
    context = _Context(
        mapping,
        {name: names.index(name) for name in names},
        normalise_account("/".join(account_parts)),
        len(names),
        patterns,
    )

    lines: list[StatementLine] = []
    errors: list[LineError] = []
    opening: Decimal | None = None
    closing: Decimal | None = None
    for first, last, cells in records:
        if not any(cell.strip() for cell in cells):
            continue  # a blank line separates blocks; it is no row
        raw_text = "\n".join(physical[first - 1 : last]).strip()
        label = _cell(cells, context, mapping.balance_label_column).strip() if mapping.balance_label_column else ""
        if label and label in (mapping.opening_balance_label, mapping.closing_balance_label):
            try:
                amount, direction = _amount_and_direction(cells, context)
            except ValueError as exc:
                errors.append(LineError(first, f"{label}: {exc}", raw_text))
                continue
            signed = amount if direction == "credit" else -amount
            if label == mapping.opening_balance_label:
                opening = signed
            else:
                closing = signed
            continue
        try:
            lines.append(_row(cells, context, first, raw_text))
        except ValueError as exc:
            errors.append(LineError(first, str(exc), raw_text))

    accounts = {line.account for line in lines}
    currencies = {line.currency for line in lines}
    return ParsedStatement(
        format="csv",
        account=accounts.pop() if len(accounts) == 1 else ("" if accounts else context.account),
        currency=currencies.pop() if len(currencies) == 1 else "",
        opening_balance=opening,
        closing_balance=closing,
        statement_id=_statement_id(mapping, lines),
        lines=fingerprint_lines(lines),
        errors=errors,
    )
