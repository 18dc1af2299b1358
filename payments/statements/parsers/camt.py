"""ISO 20022 cash-management reports: camt.053 statements, camt.054 notifications, camt.052 reports.

Any version (001.02 to 001.08 and later) is read the same way: namespaces are
dropped after parsing and every path is relative, so ``Ntry/Amt`` means the
same in each. Where versions differ the code says so (``Dbtr/Nm`` in 02-07 is
``Dbtr/Pty/Nm`` in 08; ``TxDtls/Amt`` exists from 03 on; ``Sts`` became
``Sts/Cd`` in 08).

One :class:`StatementLine` per transaction (``TxDtls``); an entry (``Ntry``)
without transaction details is one line by itself. A batch entry with several
transactions (PostFinance ESR/QR credits, Finnish reference payments) becomes
one line per transaction, each with its own reference, so each can pay its
own contract.

Security: the bytes first go through ``defusedxml`` with ``forbid_dtd``, which
refuses any document type declaration before an entity could be defined, let
alone expanded or fetched (external entities, billion laughs). camt files never
carry a DTD. Only then does lxml parse them, with entity resolution, DTD
loading and network access off, for its XPath. ``defusedxml.lxml`` is not used:
it is deprecated (warns on import) and only inspects the tree after lxml has
already parsed the declarations.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as safe_et
from defusedxml import DefusedXmlException
from lxml import etree

from .types import (
    GVC_RETURN_CODES,
    Direction,
    FormatName,
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

# Message root element -> (format, element holding one account's report)
_MESSAGES: dict[str, tuple[FormatName, str]] = {
    "BkToCstmrStmt": ("camt053", "Stmt"),
    "BkToCstmrDbtCdtNtfctn": ("camt054", "Ntfctn"),
    "BkToCstmrAcctRpt": ("camt052", "Rpt"),
}
# Booked balances first; the available ones (OPAV/CLAV) only when a bank sends
# nothing else (Šiaulių bankas).
_OPENING_CODES = ("OPBD", "PRCD", "ITBD", "OPAV")
_CLOSING_CODES = ("CLBD", "ITBD", "CLAV")
# Bank transaction sub-family codes of returns and reversals: RRTN reversal due
# to a payment return, RPCR reversal due to a cancellation request, UPDD
# reversal of an unpaid direct debit, RVSL (proprietary use) reversal.
_RETURN_SUBFAMILIES = {"RRTN", "RPCR", "UPDD", "RVSL"}
# Booked is money on the account. PDNG/INFO entries (intraday camt.052,
# notifications of expected funds) may never arrive: never a payment.
_BOOKED = {"BOOK", ""}
_NOT_PROVIDED = {"", "NOTPROVIDED", "NONREF"}
_ESR_TECHNICAL = re.compile(r"\?REJECT\?\d")
_DECLARED_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?\bencoding\s*=\s*["']([^"']{0,40})""")

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)


# --- reading the document ----------------------------------------------------------------------


def _parse_xml(raw: bytes) -> etree._Element:
    """Parse ``raw`` safely, or raise StatementError saying why it cannot be read."""
    # XML end-of-line handling turns CR and CRLF into LF anyway; doing it first
    # keeps line numbers right for files with old Mac line ends (the Finnish sample).
    raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    try:
        safe_et.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise StatementError(
            "XML with entity declarations is refused: the file declares a DTD or entities "
            f"({exc.__class__.__name__}), which can read local files or expand into gigabytes; "
            "camt files from a bank never contain one"
        ) from None
    except ParseError as exc:
        line, column = exc.position
        raise StatementError(f"the XML is malformed or truncated at line {line}, column {column}: {exc}") from None
    except (LookupError, ValueError) as exc:
        # expat raises these, not a ParseError, for a declared encoding it cannot read:
        # multi-byte ones (UTF-7, UTF-32) and names Python does not know.
        raise StatementError(_encoding_refused(raw, exc)) from None
    try:
        root = etree.fromstring(raw, parser=_PARSER)
    except etree.XMLSyntaxError as exc:  # pragma: no cover - expat above is stricter
        raise StatementError(f"the XML cannot be read: {exc}") from None
    # Drop namespaces so one set of paths reads every camt version (and the
    # schema location, so the raw text of an entry carries no declarations).
    for name in [name for name in root.attrib if name.startswith("{")]:
        del root.attrib[name]
    for element in root.iter():
        if isinstance(element.tag, str):
            element.tag = etree.QName(element).localname
    etree.cleanup_namespaces(root)
    return root


def _encoding_refused(raw: bytes, exc: Exception) -> str:
    found = _DECLARED_ENCODING.match(raw)
    declared = found.group(1).decode("ascii", "replace") if found else "?"
    return (
        f"the XML declares the encoding {declared!r}, which cannot be read ({exc}); "
        "camt files are UTF-8: export the statement again as UTF-8"
    )


def _text(element: etree._Element | None, path: str) -> str:
    if element is None:
        return ""
    found = element.find(path)
    return clean_text(found.text) if found is not None and found.text else ""


def _first_text(element: etree._Element | None, *paths: str) -> str:
    return next((value for path in paths if (value := _text(element, path))), "")


def _date(element: etree._Element | None, path: str) -> date | None:
    """``<X><Dt>`` or ``<X><DtTm>``; raise ValueError naming the element when it is not a date."""
    value = _first_text(element, f"{path}/Dt", f"{path}/DtTm")
    if not value:
        return None
    try:
        if "T" in value:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
        return date.fromisoformat(value[:10])
    except ValueError:
        raise ValueError(f"<{path}> {value!r} is not a date") from None


def _amount(element: etree._Element | None) -> tuple[Decimal, str] | None:
    """(amount, currency) of an ``<Amt Ccy="..">`` element; ValueError when it is not a number."""
    if element is None or not (element.text or "").strip():
        return None
    text = element.text.strip()
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"amount {text!r} is not a number") from None
    return amount, (element.get("Ccy") or "").strip()


def _balance(report: etree._Element, codes: tuple[str, ...]) -> Decimal | None:
    """First balance of the given type codes, signed (DBIT negative)."""
    for code in codes:
        for balance in report.findall("Bal"):
            if _first_text(balance, "Tp/CdOrPrtry/Cd", "Tp/CdOrPrtry/Prtry") != code:
                continue
            try:
                found = _amount(balance.find("Amt"))
            except ValueError as exc:
                raise StatementError(f"line {balance.sourceline}: balance {code}: {exc}") from None
            if found is None:
                continue
            return -found[0] if _text(balance, "CdtDbtInd") == "DBIT" else found[0]
    return None


def _account(report: etree._Element) -> str:
    return normalise_account(_first_text(report, "Acct/Id/IBAN", "Acct/Id/Othr/Id"))


def _raw(element: etree._Element) -> str:
    text = etree.tostring(element, encoding="unicode", with_tail=False)
    return re.sub(r"\n\s*\n", "\n", text).strip()


# --- one transaction ---------------------------------------------------------------------------


def _party(tx: etree._Element | None, role: str) -> tuple[str, str]:
    """(name, account) of ``Dbtr``/``Cdtr`` in any version, falling back to the ultimate party."""
    name = _first_text(
        tx,
        f"RltdPties/{role}/Nm",
        f"RltdPties/{role}/Pty/Nm",
        f"RltdPties/Ultmt{role}/Nm",
        f"RltdPties/Ultmt{role}/Pty/Nm",
    )
    account = _first_text(tx, f"RltdPties/{role}Acct/Id/IBAN", f"RltdPties/{role}Acct/Id/Othr/Id")
    return name, normalise_account(account)


def _is_return(entry: etree._Element, tx: etree._Element | None) -> bool:
    if _text(entry, "RvslInd").lower() == "true" or (tx is not None and tx.find("RtrInf") is not None):
        return True
    codes = {
        _text(entry, "BkTxCd/Domn/Fmly/SubFmlyCd"),
        _text(tx, "BkTxCd/Domn/Fmly/SubFmlyCd"),
    }
    if codes & _RETURN_SUBFAMILIES:
        return True
    # German banks also send their GVC as a proprietary code ("NMSC+159", issuer ZKA).
    proprietary = f"{_text(entry, 'BkTxCd/Prtry/Cd')} {_text(tx, 'BkTxCd/Prtry/Cd')}"
    return any(code in GVC_RETURN_CODES for code in re.findall(r"\+(\d{3})", proprietary))


def _tx_amount(entry: etree._Element, tx: etree._Element | None, batch_size: int) -> tuple[Decimal, str]:
    """The booked amount of one transaction.

    A lone transaction is the entry, so the entry's amount (what was booked,
    after any charges) counts. In a batch each transaction has its own amount:
    ``TxDtls/Amt`` from version 03, ``AmtDtls/TxAmt`` in 02, else the
    instructed amount.
    """
    candidates = [entry.find("Amt")] if batch_size <= 1 or tx is None else []
    if tx is not None:
        candidates += [tx.find("Amt"), tx.find("AmtDtls/TxAmt/Amt"), tx.find("AmtDtls/InstdAmt/Amt")]
    for element in candidates:
        found = _amount(element)
        if found is not None:
            return found
    raise ValueError("the transaction has no amount (neither TxDtls/Amt nor AmtDtls)")


def _line(entry: etree._Element, tx: etree._Element | None, batch_size: int, account: str) -> StatementLine:
    entry_mark = _text(entry, "CdtDbtInd")
    if entry_mark not in ("CRDT", "DBIT"):
        raise ValueError(f"<CdtDbtInd> {entry_mark!r} is neither CRDT nor DBIT")
    # The entry says which way the money moved on the account. A transaction
    # is a credit only when both agree: a DBIT entry is never credited, even
    # when a detail claims CRDT (PostFinance's test platform sends that).
    tx_mark = _text(tx, "CdtDbtInd") or entry_mark
    direction: Direction = "credit" if entry_mark == "CRDT" and tx_mark == "CRDT" else "debit"
    status = _first_text(entry, "Sts/Cd", "Sts/Prtry", "Sts")
    if status.upper() not in _BOOKED:
        raise ValueError(f"entry status {status} (not booked): the money is not on the account yet")

    amount, currency = _tx_amount(entry, tx, batch_size)
    currency = currency.upper()
    if reason := check_currency(currency):
        raise ValueError(reason)
    if reason := check_amount(amount, currency):
        raise ValueError(reason)

    payer, payer_account = _party(tx, "Dbtr")
    payee, payee_account = _party(tx, "Cdtr")
    name, counterparty_account = (payer, payer_account) if direction == "credit" else (payee, payee_account)
    unstructured = " ".join(_text(element, ".") for element in (tx.findall("RmtInf/Ustrd") if tx is not None else []))
    creditor_reference = _first_text(tx, "RmtInf/Strd/CdtrRefInf/Ref", "RmtInf/Strd/CdtrRefInf/CdtrRef")
    additional = _first_text(tx, "RmtInf/Strd/AddtlRmtInf")
    if _ESR_TECHNICAL.fullmatch(additional):
        additional = ""  # PostFinance's ESR processing flag, not text from the payer
    additional = additional or _first_text(tx, "AddtlTxInf")
    reference = clean_text(unstructured) or clean_text(additional)
    if not reference and not creditor_reference:
        # Nothing from the payer: the bank's description of the entry.
        reference = _text(entry, "AddtlNtryInf")
    end_to_end = _text(tx, "Refs/EndToEndId")
    bank_reference = _first_text(tx, "Refs/AcctSvcrRef") or _first_text(entry, "AcctSvcrRef", "NtryRef")
    element = tx if tx is not None and batch_size > 1 else entry
    return StatementLine(
        line_no=element.sourceline or 0,
        booking_date=_date(entry, "BookgDt"),
        value_date=_date(entry, "ValDt"),
        amount=to_money(amount, currency),
        currency=currency,
        direction=direction,
        is_return=_is_return(entry, tx),
        reference=reference,
        end_to_end_id="" if end_to_end.upper() in _NOT_PROVIDED else end_to_end,
        creditor_reference=creditor_reference,
        bank_reference="" if bank_reference.upper() in _NOT_PROVIDED else bank_reference,
        counterparty_name=name,
        counterparty_account=counterparty_account,
        raw=_raw(element),
        account=account,
    )


# --- public ------------------------------------------------------------------------------------


def parse_camt(raw: bytes) -> ParsedStatement:
    """Read a camt.052/053/054 document of any version into a :class:`ParsedStatement`."""
    root = _parse_xml(raw)
    if root.tag != "Document" or len(root) == 0:
        raise StatementError(f"the XML root is <{root.tag}>, not an ISO 20022 <Document>")
    message = root[0]
    if message.tag not in _MESSAGES:
        raise StatementError(
            f"<{message.tag}> is not a camt.052/053/054 message (expected one of {', '.join(_MESSAGES)})"
        )
    format_name, report_tag = _MESSAGES[message.tag]
    reports = message.findall(report_tag)
    if not reports:
        raise StatementError(f"<{message.tag}> has no <{report_tag}>: the file is empty or truncated")

    lines: list[StatementLine] = []
    errors: list[LineError] = []
    accounts, currencies, ids = [], [], []
    for report in reports:
        account = _account(report)
        accounts.append(account)
        currencies.append(_text(report, "Acct/Ccy").upper())
        ids.append(_first_text(report, "Id", "ElctrncSeqNb"))
        for entry in report.findall("Ntry"):
            transactions = entry.findall("NtryDtls/TxDtls")
            for tx in transactions or [None]:
                try:
                    lines.append(_line(entry, tx, len(transactions), account))
                except ValueError as exc:
                    element = tx if tx is not None and len(transactions) > 1 else entry
                    errors.append(LineError(element.sourceline or 0, str(exc), _raw(element)))

    single = len(reports) == 1
    # PostFinance sends no <Acct><Ccy>; then the entries' currency, when they agree.
    currency = currencies[0] if len(set(currencies)) == 1 else ""
    if not currency and len({line.currency for line in lines}) == 1:
        currency = lines[0].currency
    return ParsedStatement(
        format=format_name,
        account=accounts[0] if len(set(accounts)) == 1 else "",
        currency=currency,
        opening_balance=_balance(reports[0], _OPENING_CODES) if single else None,
        closing_balance=_balance(reports[0], _CLOSING_CODES) if single else None,
        statement_id=", ".join(filter(None, ids)) or _text(message, "GrpHdr/MsgId"),
        lines=fingerprint_lines(lines),
        errors=errors,
    )
