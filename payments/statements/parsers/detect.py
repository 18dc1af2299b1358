"""Which format a statement file is in, and the one entry point to parse any of them."""

from __future__ import annotations

import re

from .camt import parse_camt
from .csv_format import CsvMapping, parse_csv
from .mt940 import parse_mt940
from .types import FORMATS, MAX_STATEMENT_BYTES, FormatName, ParsedStatement, StatementError

_CAMT_NAMESPACE_RE = re.compile(rb"camt\.05([234])\.001")
_CAMT_VERSIONS: dict[bytes, FormatName] = {b"2": "camt052", b"3": "camt053", b"4": "camt054"}
_CAMT_ROOTS: dict[bytes, FormatName] = {
    b"BkToCstmrStmt": "camt053",
    b"BkToCstmrDbtCdtNtfctn": "camt054",
    b"BkToCstmrAcctRpt": "camt052",
}
_MT940_TAG_RE = re.compile(rb"(?m)^\s*:(20|25|28C?|60[FM]|61):")


def detect_format(raw: bytes, filename: str) -> FormatName:
    """Tell the format from the content (the file name only breaks a tie for CSV).

    Raises StatementError for an empty file or one that is none of the formats.
    """
    head = raw[:65536].lstrip(b"\xef\xbb\xbf\x00\r\n\t \x01")
    if not head:
        raise StatementError("the file is empty")
    if head.startswith(b"<"):
        match = _CAMT_NAMESPACE_RE.search(head)
        if match:
            return _CAMT_VERSIONS[match.group(1)]
        for root, name in _CAMT_ROOTS.items():
            if b"<" + root in head or b":" + root in head:
                return name
        raise StatementError("the XML file is not an ISO 20022 camt.052, camt.053 or camt.054 document")
    if head.startswith((b"{1:", b"{4:")) or len(_MT940_TAG_RE.findall(head)) >= 2:
        return "mt940"
    if filename.lower().endswith((".csv", ".txt")) or re.search(rb"[;,\t]", head.split(b"\n", 1)[0]):
        return "csv"
    raise StatementError(f"{filename!r} is neither MT940, camt.05x XML nor CSV")


def parse_statement(
    raw: bytes,
    filename: str,
    *,
    format: str | None = None,  # noqa: A002 - the public name the callers use
    csv_mapping: CsvMapping | None = None,
) -> ParsedStatement:
    """Parse a statement file of any supported format.

    ``format`` forces one (else it is detected); ``csv_mapping`` is the saved
    mapping of the source for CSV files (else the known mappings are tried).
    Raises StatementError when the file as a whole cannot be read; otherwise
    every entry is in ``lines`` or, with the reason, in ``errors``.
    """
    if len(raw) > MAX_STATEMENT_BYTES:
        raise StatementError(
            f"the file is {len(raw) // (1024 * 1024)} MiB; statements over {MAX_STATEMENT_BYTES // (1024 * 1024)} MiB "
            "are refused"
        )
    if format is not None and format not in FORMATS:
        raise StatementError(f"unknown statement format {format!r} (one of {', '.join(FORMATS)})")
    found = format or detect_format(raw, filename)
    if found == "mt940":
        return parse_mt940(raw)
    if found == "csv":
        return parse_csv(raw, csv_mapping)
    parsed = parse_camt(raw)
    if format is not None and parsed.format != format:
        raise StatementError(f"the file is {parsed.format}, not {format}")
    return parsed
