"""The statement parsing layer against every public sample file, and against bad input.

Pure parsing: no database. Expected values were read from the sample files
themselves (``shared/samples``; SOURCES.md there says where each comes from);
each spot check also asserts that the cited source line really contains the
amount as the bank wrote it, so a wrong line number cannot pass unnoticed.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from payments.statements.parsers.csv_format import KNOWN_MAPPINGS, CsvMapping, detect_csv_mapping, parse_csv
from payments.statements.parsers.detect import detect_format, parse_statement
from payments.statements.parsers.types import StatementError
from tests.samples import SAMPLES  # noqa: E402  (kept beside the other imports' users)

pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"sample files not found at {SAMPLES}")


def _read(relative: str) -> bytes:
    return (SAMPLES / relative).read_bytes()


def _parse(relative: str):
    return parse_statement(_read(relative), Path(relative).name)


# file -> (format, lines, credits, debits, returns, errors). Every entry of a
# file is in exactly one of credits/debits/returns/errors; for MT940 the sum is
# the number of :61: lines in the file.
COUNTS = {
    "mt940/ch_postfinance.sta": ("mt940", 4, 3, 1, 0, 0),
    "mt940/de_cmxl_sample.sta": ("mt940", 16, 7, 9, 0, 0),
    "mt940/de_commerzbank.txt": ("mt940", 1, 0, 0, 1, 0),
    "mt940/de_deutsche_bank_zilverline.txt": ("mt940", 2, 2, 0, 0, 0),
    "mt940/de_deutschebank_jejik.txt": ("mt940", 1, 0, 0, 1, 0),
    "mt940/de_kontist.txt": ("mt940", 6, 4, 2, 0, 0),
    "mt940/de_lbbw.txt": ("mt940", 2, 1, 1, 0, 0),
    "mt940/de_oldenburgische_landesbank.txt": ("mt940", 1, 1, 0, 0, 0),
    "mt940/de_penta.txt": ("mt940", 29, 3, 26, 0, 1),
    # 41 C, 2 RC, 54 D; 17 of the C are GVC 159 RETOURE / 109 returns
    "mt940/de_sepa_mt9401_betterplace.sta": ("mt940", 97, 24, 54, 19, 0),
    "mt940/de_sparkasse_buxtehude.sta": ("mt940", 3, 0, 3, 0, 0),
    "mt940/de_sparkasse_phpmt940.txt": ("mt940", 10, 9, 1, 0, 0),
    "mt940/de_volksbanken_raiffeisenbanken.txt": ("mt940", 12, 12, 0, 0, 0),
    "mt940/dk_danskebank.sta": ("mt940", 89, 8, 81, 0, 0),
    "mt940/fi_danskebank.sta": ("mt940", 6, 1, 5, 0, 0),
    "mt940/hk_hsbc.txt": ("mt940", 1, 0, 1, 0, 0),
    "mt940/hu_raiffeisen_cmi.sta": ("mt940", 7, 1, 6, 0, 0),
    "mt940/hu_sberbank.sta": ("mt940", 3, 0, 3, 0, 0),
    "mt940/mk_komercijalna_banka.txt": ("mt940", 3, 1, 2, 0, 0),
    "mt940/ng_zenith_bank.txt": ("mt940", 8, 1, 7, 0, 0),
    "mt940/nl_abnamro.sta": ("mt940", 10, 0, 10, 0, 0),
    "mt940/nl_asn_bank.txt": ("mt940", 8, 3, 5, 0, 0),
    "mt940/nl_bunq.txt": ("mt940", 111, 26, 85, 0, 0),
    "mt940/nl_ing.sta": ("mt940", 7, 2, 5, 0, 0),
    "mt940/nl_ing_iban.txt": ("mt940", 21, 3, 18, 0, 0),
    "mt940/nl_knab.sta": ("mt940", 3, 2, 1, 0, 0),
    "mt940/nl_rabobank.sta": ("mt940", 5, 0, 4, 1, 0),
    "mt940/nl_rabobank_structured.txt": ("mt940", 9, 5, 4, 0, 0),
    "mt940/nl_sns.txt": ("mt940", 4, 4, 0, 0, 0),
    "mt940/nl_triodos_iban.txt": ("mt940", 4, 2, 2, 0, 0),
    "mt940/nl_van_lanschot.txt": ("mt940", 4, 1, 3, 0, 0),
    "mt940/no_danskebank.sta": ("mt940", 24, 10, 14, 0, 0),
    "mt940/pl_mbank.sta": ("mt940", 3, 3, 0, 0, 0),
    "mt940/se_danskebank.sta": ("mt940", 103, 17, 86, 0, 0),
    "mt940/us_citi.txt": ("mt940", 3, 0, 3, 0, 2),
    "camt/ch_postfinance_camt052_v04.xml": ("camt052", 2, 0, 2, 0, 0),
    "camt/ch_postfinance_camt053_v04.xml": ("camt053", 5, 4, 1, 0, 0),
    "camt/ch_postfinance_camt053_v04_large.xml": ("camt053", 32, 21, 6, 5, 0),
    "camt/ch_postfinance_camt054_credit_v04.xml": ("camt054", 1, 1, 0, 0, 0),
    "camt/ch_postfinance_camt054_direct_debit_v04.xml": ("camt054", 5, 3, 0, 2, 0),
    "camt/ch_postfinance_camt054_esr_v04.xml": ("camt054", 6, 5, 1, 0, 0),
    "camt/ch_postfinance_camt054_returns_v04.xml": ("camt054", 1, 0, 0, 1, 0),
    "camt/ch_ubs_camt053_v08.xml": ("camt053", 3, 2, 1, 0, 0),
    "camt/de_vrbank_rottal_inn_camt053_v02.xml": ("camt053", 5, 1, 4, 0, 0),
    "camt/fi_finance_finland_camt053_v02.xml": ("camt053", 13, 6, 7, 0, 0),
    # 13 TxDtls: 11 booked, 2 with <Sts>INFO</Sts> (not booked) reported as errors
    "camt/fi_finance_finland_camt054_v02.xml": ("camt054", 11, 6, 5, 0, 2),
    "camt/lt_siauliu_bankas_camt053_v02.xml": ("camt053", 4, 0, 4, 0, 0),
    # 18 rows: a closing note without booking date and a 0,00 row are errors
    "csv/de_commerzbank_export.csv": ("csv", 16, 1, 15, 0, 2),
    "csv/de_vrbank_genobank_unterallgaeu_export.csv": ("csv", 5, 1, 4, 0, 0),
    "csv/de_1822direkt_export.csv": ("csv", 2, 1, 1, 0, 0),
}

# file -> [(line_no, snippet on that source line, expected fields)]
SPOT_CHECKS = {
    "mt940/ch_postfinance.sta": [
        (5, "C79,7F", {"amount": "79.70", "currency": "CHF", "direction": "credit", "reference~": "JANE DOE"}),
        (19, "D79,9F", {"amount": "79.90", "direction": "debit"}),
    ],
    "mt940/de_cmxl_sample.sta": [
        (5, "D6800,", {"amount": "6800.00", "currency": "DEM", "reference~": "SCHECK-NR. 0000016703074"}),
        (36, "DR800,", {"amount": "800.00", "currency": "EUR", "reference": "Miete November", "name": "MUELLER"}),
    ],
    "mt940/de_commerzbank.txt": [
        (
            5,
            "D12,35",
            {
                "amount": "12.35",
                "direction": "debit",
                "is_return": True,
                "end_to_end_id": "A1.200080779.400143254.4961336",
                "counterparty_account": "DE50712345600200691329",
                "bank_reference": "2016021783252833",
            },
        ),
    ],
    "mt940/de_deutsche_bank_zilverline.txt": [
        (5, "C3,99", {"amount": "3.99", "name": "PETRA TESTER", "counterparty_account": "DE422938944551657098369"}),
        (9, "C0,01", {"amount": "0.01", "bank_reference": "96550046549608644", "name": "PETER TESTER"}),
    ],
    "mt940/de_deutschebank_jejik.txt": [
        (5, "D12,35", {"amount": "12.35", "is_return": True, "bank_reference": "2016021783252833"}),
    ],
    "mt940/de_kontist.txt": [
        (
            10,
            "C95,95",
            {
                "amount": "95.95",
                "reference": "Rechnung-Nr.: INV-00002 v. 13.02.21",
                "name": "DM PUTZ + STUCK UG HAFTUNGSBESCHRANKT",
            },
        ),
        (14, "C250,00", {"amount": "250.00", "name": "WCM UG HAFTUNGSBESCHRÄNKT", "reference": "INV-00003"}),
    ],
    "mt940/de_lbbw.txt": [
        (
            9,
            "C0,01",
            {
                "amount": "0.01",
                "name": "NIC RICHTER",
                "counterparty_account": "DE59600501010007907986",
                "reference~": "E-MOBILITY ABRECHNUNG",
            },
        ),
    ],
    "mt940/de_oldenburgische_landesbank.txt": [
        (
            5,
            "C104,50",
            {
                "amount": "104.50",
                "name": "WOHNBAU DIEPHOLZ GMBH",
                "counterparty_account": "DE99123456771234567888",
                "reference~": "RG.-NR. 1234567890",
            },
        ),
    ],
    "mt940/de_penta.txt": [
        (10, "C11,25", {"amount": "11.25", "name": "HOPPA Inc", "counterparty_account": "GB29DEUT40333124517700"}),
        (6, "D20,00", {"amount": "20.00", "reference~": "Unkostenbeitrag Starterkitchen"}),
    ],
    "mt940/de_sepa_mt9401_betterplace.sta": [
        (5, "CR300,", {"amount": "300.00", "direction": "credit", "is_return": True}),
        (19, "RCR204,88", {"amount": "204.88", "direction": "debit", "is_return": True}),
        (
            30,
            "CR15000,05",
            {
                "amount": "15000.05",
                "is_return": False,
                "end_to_end_id": "EndToEndIdTFNR2000400001",
                "counterparty_account": "DE42100100100043921105",
            },
        ),
    ],
    "mt940/de_sparkasse_buxtehude.sta": [
        (6, "DR119,35", {"amount": "119.35", "reference~": "basically some information here"}),
    ],
    "mt940/de_sparkasse_phpmt940.txt": [
        (
            5,
            "C80,",
            {
                "amount": "80.00",
                "booking_date": date(2010, 2, 4),
                "value_date": date(2010, 2, 17),
                "reference~": "SOME DESCRIPTION",
            },
        ),
        (20, "D16,68", {"amount": "16.68", "direction": "debit", "name": "DEUTSCHE TELEKOM AG"}),
    ],
    "mt940/de_volksbanken_raiffeisenbanken.txt": [
        (5, "C65,00", {"amount": "65.00", "name": "Olivia Dorn", "reference~": "einfach so fuer euch"}),
        (30, "C55,00", {"amount": "55.00", "end_to_end_id": "ZV0100284190949300000002", "name": "Thomas Schulz"}),
    ],
    "mt940/dk_danskebank.sta": [
        (14, "DK829419,78", {"amount": "829419.78", "currency": "DKK", "direction": "debit", "reference": "Dansken"}),
        (22, "CK2000,00", {"amount": "2000.00", "direction": "credit", "reference~": "DB faktura 1234567"}),
    ],
    "mt940/fi_danskebank.sta": [
        (10, "CR0,23", {"amount": "0.23", "currency": "EUR", "direction": "credit"}),
        (15, "DR583,92", {"amount": "583.92", "direction": "debit"}),
    ],
    "mt940/hk_hsbc.txt": [
        (
            5,
            "DD20000,00",
            {
                "amount": "20000.00",
                "currency": "HKD",
                "bank_reference": "6128522200250001",
                "reference~": "PAYMENT OF INVOICES",
            },
        ),
    ],
    "mt940/hu_raiffeisen_cmi.sta": [
        # CP852 text: the accents only come out right in that code page
        (6, "CF2066637,00", {"amount": "2066637.00", "currency": "HUF", "reference~": "összevont utánvét"}),
    ],
    "mt940/hu_sberbank.sta": [
        (12, "DF2402,00", {"amount": "2402.00", "currency": "HUF", "direction": "debit"}),
    ],
    "mt940/mk_komercijalna_banka.txt": [
        (
            16,
            "CD2250,",
            {
                "amount": "2250.00",
                "currency": "MKD",
                "name": "IVOTEHNA DOOEL SKOPJE",
                "counterparty_account": "300000000460495",
                "reference": "Uplata po faktura 747",
                "bank_reference": "25577226",
            },
        ),
    ],
    "mt940/ng_zenith_bank.txt": [
        (
            6,
            "CN220000,00",
            {
                "amount": "220000.00",
                "currency": "NGN",
                "direction": "credit",
                "bank_reference": "19239782213",
                "reference~": "SALARY (PAYROLL)",
                "booking_date": date(2020, 11, 30),
            },
        ),
        (20, "DN240,23", {"amount": "240.23", "direction": "debit", "reference": "Acct Maint. Fee + VAT"}),
    ],
    "mt940/nl_abnamro.sta": [
        (8, "D9,N192", {"amount": "9.00", "reference~": "KPN - DIGITENNE"}),
    ],
    "mt940/nl_asn_bank.txt": [
        (
            42,
            "C1000,00",
            {
                "amount": "1000.00",
                "counterparty_account": "NL56ASNB9999999999",
                "name": "paulissen g j l m",
                "reference": "INTERNE OVERBOEKING VIA MOBIEL",
            },
        ),
    ],
    "mt940/nl_bunq.txt": [
        (
            14,
            "C75,",
            {
                "amount": "75.00",
                "name": "SRMF WILLEMS",
                "counterparty_account": "NL97ABNA0479445079",
                "reference": "Proficiat",
            },
        ),
    ],
    "mt940/nl_ing.sta": [
        (20, "C3,68", {"amount": "3.68", "direction": "credit", "reference~": "EJ46GREENP100610T1456"}),
    ],
    "mt940/nl_ing_iban.txt": [
        (
            83,
            "C14520,00",
            {"amount": "14520.00", "reference": "Mijn fee", "counterparty_account": "NL50RABO0222222222"},
        ),
        (40, "D73,62", {"amount": "73.62", "end_to_end_id": "02164810730000043", "name": "KPN - MOBIEL"}),
    ],
    "mt940/nl_knab.sta": [
        (5, "C500,", {"amount": "500.00", "bank_reference": "B4E07XM00J000023"}),
        (17, "C500NTRF", {"amount": "500.00", "bank_reference": "B4G29PGDCK1QFV3E"}),
    ],
    "mt940/nl_rabobank.sta": [
        (
            6,
            "D000000001213,28",
            {"amount": "1213.28", "is_return": True, "name": "W.P. Jansen", "counterparty_account": "0121470966"},
        ),
        (23, "D000000000044,95", {"amount": "44.95", "creditor_reference": "123456789"}),
    ],
    "mt940/nl_rabobank_structured.txt": [
        (
            39,
            "C000000001923,90",
            {
                "amount": "1923.90",
                "end_to_end_id": "1134027115",
                "name": "BEDRIJF NV",
                "counterparty_account": "NL82RBOS0602069890",
                "reference": "Ref: 201302-080",
            },
        ),
    ],
    "mt940/nl_sns.txt": [
        (
            34,
            "C15000,00",
            {"amount": "15000.00", "counterparty_account": "NL11RABO0987654321", "name": "f. spark bedrijf n.v."},
        ),
    ],
    "mt940/nl_triodos_iban.txt": [
        (
            5,
            "C4383,23",
            {
                "amount": "4383.23",
                "end_to_end_id": "7293-201801001",
                "reference": "201801001",
                "name": "G-AAAAA N.V.",
                "counterparty_account": "NL21RABO0999999999",
            },
        ),
    ],
    "mt940/nl_van_lanschot.txt": [
        (
            8,
            "C2716,76",
            {
                "amount": "2716.76",
                "end_to_end_id": "333333333",
                "reference": "201400-001",
                "counterparty_account": "NL81RABO0444444444",
            },
        ),
    ],
    "mt940/no_danskebank.sta": [
        (30, "CK104104,00", {"amount": "104104.00", "currency": "NOK", "direction": "credit"}),
    ],
    "mt940/pl_mbank.sta": [
        (
            6,
            "CN0,01",
            {"amount": "0.01", "currency": "PLN", "bank_reference": "MB170119012058", "reference~": "XX000000000001"},
        ),
    ],
    "mt940/se_danskebank.sta": [
        (45, "CK1987,00", {"amount": "1987.00", "currency": "SEK", "direction": "credit"}),
    ],
    "mt940/us_citi.txt": [
        (5, "DD212,39", {"amount": "212.39", "currency": "USD", "direction": "debit"}),
    ],
    "camt/ch_postfinance_camt052_v04.xml": [
        (53, "<Ntry>", {"amount": "103.00", "direction": "debit", "end_to_end_id": "20190423001255000100005"}),
    ],
    "camt/ch_postfinance_camt053_v04.xml": [
        (142, "<Ntry>", {"amount": "1500.00", "direction": "credit", "bank_reference": "07582000303F0C7U"}),
        # DBIT entry whose transaction detail says CRDT: the entry wins, never credited
        (110, "<Ntry>", {"amount": "77.70", "direction": "debit"}),
    ],
    "camt/ch_postfinance_camt053_v04_large.xml": [
        (1550, "<TxDtls>", {"amount": "20.00", "is_return": True, "name": "Max Mustermann"}),
        (1008, "<TxDtls>", {"amount": "50.00", "reference": "MUSTER MITTEILUNG", "name": "Rutschmann Pia"}),
        (368, "<TxDtls>", {"amount": "50.00", "creditor_reference": "000000000002016030002820804"}),
    ],
    "camt/ch_postfinance_camt054_credit_v04.xml": [
        (31, "<Ntry>", {"amount": "1500.00", "direction": "credit", "bank_reference": "074820002ZZ9J42U"}),
    ],
    "camt/ch_postfinance_camt054_direct_debit_v04.xml": [
        (
            54,
            "<TxDtls>",
            {"amount": "15.00", "end_to_end_id": "EndToEnd-CRDBRActSame-1B9C-CHDDBB2", "reference": "Mitteilung 132"},
        ),
        (208, "<Ntry>", {"amount": "6.00", "direction": "debit", "is_return": True}),
    ],
    "camt/ch_postfinance_camt054_esr_v04.xml": [
        (
            57,
            "<TxDtls>",
            {
                "amount": "250.00",
                "end_to_end_id": "EndToEndId-001-02-02",
                "creditor_reference": "120000000000234478943216899",
                "name": "Bernasconi Maria",
            },
        ),
    ],
    "camt/ch_postfinance_camt054_returns_v04.xml": [
        (
            31,
            "<Ntry>",
            {
                "amount": "500.00",
                "direction": "credit",
                "is_return": True,
                "end_to_end_id": "EndToEndId-001-03-04",
                "name": "Robert Schneider SA",
            },
        ),
    ],
    "camt/ch_ubs_camt053_v08.xml": [
        (
            84,
            "<Ntry>",
            {
                "amount": "474.40",
                "reference": "INVOICE R77561",
                "end_to_end_id": "80000004540000100095",
                "name": "Jon Doe",
            },
        ),
        (169, "<Ntry>", {"amount": "88.85", "creditor_reference": "RF38000000000000000000552", "name": "Finanz AG"}),
    ],
    "camt/de_vrbank_rottal_inn_camt053_v02.xml": [
        (60, "<Ntry>", {"amount": "2.00", "direction": "debit", "end_to_end_id": "EndToEndReference"}),
        (219, "<Ntry>", {"amount": "1.00", "direction": "credit", "name": "Testkonto Nummer 2"}),
    ],
    "camt/fi_finance_finland_camt053_v02.xml": [
        (688, "<Ntry>", {"amount": "5455.00", "creditor_reference": "RF98123456789012", "name": "PAYERS NAME2"}),
        (592, "<Ntry>", {"amount": "2120.00", "reference": "INVOICE US20291092"}),
    ],
    "camt/fi_finance_finland_camt054_v02.xml": [
        (
            400,
            "<TxDtls>",
            {"amount": "2500.00", "creditor_reference": "RF7812345", "end_to_end_id": "EndToEndIdAT-41-001"},
        ),
    ],
    "camt/lt_siauliu_bankas_camt053_v02.xml": [
        (229, "<Ntry>", {"amount": "30.16", "direction": "debit", "name": "Antstolis Vardenis Pavardenis"}),
    ],
    "csv/de_commerzbank_export.csv": [
        (14, "13,20", {"amount": "13.20", "direction": "credit", "value_date": date(2015, 3, 11)}),
        (12, "-41,59", {"amount": "41.59", "direction": "debit", "end_to_end_id": "11305-16"}),
        # "30.02.2015" value date: the German 30-day-month convention, read as the end of February
        (19, "-4,50", {"amount": "4.50", "value_date": date(2015, 2, 28)}),
    ],
    "csv/de_vrbank_genobank_unterallgaeu_export.csv": [
        (
            42,
            "Bundesagentur",
            {
                "amount": "388.00",
                "direction": "credit",
                "end_to_end_id": "02034825373",
                "counterparty_account": "DE07760000000076001615",
                "name": "Bundesagentur fuer Arbeit -Familienkasse",
            },
        ),
        (14, "GAA-AUSZAHLUNG", {"amount": "60.00", "direction": "debit"}),
    ],
    "csv/de_1822direkt_export.csv": [
        (
            3,
            "25,99",
            {"amount": "25.99", "direction": "credit", "name": "Moinsen GmbH", "reference~": "Gutschrift 456"},
        ),
        (2, "-25,99", {"amount": "25.99", "direction": "debit", "counterparty_account": "DE12345678901234567890"}),
    ],
}

_FIELDS = {"name": "counterparty_name"}


def _source_line(relative: str, line_no: int) -> str:
    raw = _read(relative)
    encoding = "iso-8859-1" if "vrbank_genobank" in relative or "raiffeisen" in relative else "utf-8"
    text = raw.decode(encoding, errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")[line_no - 1]


def test_every_sample_file_has_expectations():
    files = {
        f"{path.parent.name}/{path.name}"
        for folder in ("mt940", "camt", "csv")
        for path in (SAMPLES / folder).iterdir()
    }
    assert files == set(COUNTS)
    assert set(SPOT_CHECKS) == set(COUNTS)


def test_zenith_bank_sample_is_present():
    # The issue names it; it has ":28C: /1" and :61: lines without a type code.
    text = _read("mt940/ng_zenith_bank.txt").decode()
    assert ":28C: /1" in text and "ZEIBNGLA" in text


@pytest.mark.parametrize("relative", sorted(COUNTS))
def test_sample(relative):
    parsed = _parse(relative)
    fmt, lines, credits, debits, returns, errors = COUNTS[relative]
    assert parsed.format == fmt
    assert len(parsed.lines) == lines
    assert (len(parsed.credits), len(parsed.debits), len(parsed.returns), len(parsed.errors)) == (
        credits,
        debits,
        returns,
        errors,
    )
    assert len(parsed.credits) + len(parsed.debits) + len(parsed.returns) == len(parsed.lines)
    for line in parsed.lines:
        assert isinstance(line.amount, Decimal) and line.amount > 0
        assert line.direction in ("credit", "debit")
        assert len(line.currency) == 3 and line.raw and len(line.fingerprint) == 64
    for error in parsed.errors:
        assert error.reason and error.raw and error.line_no > 0
    # exactly-once import: fingerprints are unique within the file ...
    assert len({line.fingerprint for line in parsed.lines}) == len(parsed.lines)

    by_line = {line.line_no: line for line in parsed.lines}
    for line_no, snippet, expected in SPOT_CHECKS[relative]:
        assert snippet in _source_line(relative, line_no), f"line {line_no} of {relative} does not hold {snippet!r}"
        line = by_line[line_no]
        for key, value in expected.items():
            if key.endswith("~"):
                assert value in getattr(line, _FIELDS.get(key[:-1], key[:-1])), (line_no, key)
            elif key == "amount":
                assert line.amount == Decimal(value) and str(line.amount) == value, line_no
            else:
                assert getattr(line, _FIELDS.get(key, key)) == value, (line_no, key)


@pytest.mark.parametrize("relative", sorted(COUNTS))
def test_reparsing_gives_identical_fingerprints(relative):
    first, second = _parse(relative), _parse(relative)
    assert [line.fingerprint for line in first.lines] == [line.fingerprint for line in second.lines]
    assert first == second


def test_statement_level_values():
    zenith = _parse("mt940/ng_zenith_bank.txt")
    assert (zenith.account, zenith.currency, zenith.statement_id) == ("1014365930", "NGN", "202012182126594/1")
    assert (zenith.opening_balance, zenith.closing_balance) == (Decimal("6213.05"), Decimal("2469.14"))
    bunq = _parse("mt940/nl_bunq.txt")
    assert bunq.account == "NL10BUNQ2290325473"  # ":25:NL10BUNQ2290325473 EUR", currency dropped
    vr = _parse("csv/de_vrbank_genobank_unterallgaeu_export.csv")
    assert (vr.account, vr.opening_balance, vr.closing_balance) == (
        "73160000/12345678",
        Decimal("8.93"),
        Decimal("179.51"),
    )
    betterplace = _parse("mt940/de_sepa_mt9401_betterplace.sta")
    assert betterplace.account == ""  # statements of two accounts: each line carries its own
    assert {line.account for line in betterplace.lines} >= {"50880050/0194774600888", "50880050/0194777100888"}
    ubs = _parse("camt/ch_ubs_camt053_v08.xml")
    assert (ubs.account, ubs.opening_balance, ubs.closing_balance) == (
        "CH1111111111111111111",
        Decimal("82721.95"),
        Decimal("84515.25"),
    )


def test_explained_errors_in_samples():
    citi = _parse("mt940/us_citi.txt")
    assert [(e.line_no, e.reason) for e in citi.errors] == [
        (13, "amount is zero: nothing was booked (an information-only entry)"),
        (15, "amount is zero: nothing was booked (an information-only entry)"),
    ]
    finnish = _parse("camt/fi_finance_finland_camt054_v02.xml")
    assert all("status INFO (not booked)" in e.reason for e in finnish.errors)
    commerzbank = _parse("csv/de_commerzbank_export.csv")
    assert [(e.line_no, e.reason) for e in commerzbank.errors] == [
        (2, "booking date is empty"),
        (3, "amount is zero: nothing was booked (an information-only entry)"),
    ]


def test_identical_entries_get_distinct_fingerprints():
    # Two 100.00 EUR debits with the same date and bank reference (091029ARCH09001).
    finnish = _parse("camt/fi_finance_finland_camt053_v02.xml")
    twins = [line for line in finnish.lines if line.bank_reference == "091029ARCH09001"]
    assert len(twins) == 2 and twins[0].fingerprint != twins[1].fingerprint


def test_fingerprints_do_not_depend_on_position():
    raw = _read("mt940/ng_zenith_bank.txt")
    shifted = b"bank export header\n\n" + raw
    assert [line.fingerprint for line in parse_statement(raw, "a.txt").lines] == [
        line.fingerprint for line in parse_statement(shifted, "a.txt").lines
    ]


# --- detection ---------------------------------------------------------------------------------


def test_detect_format():
    assert detect_format(_read("mt940/ng_zenith_bank.txt"), "x.txt") == "mt940"
    assert detect_format(_read("mt940/pl_mbank.sta"), "x.sta") == "mt940"  # starts with SOH
    assert detect_format(_read("camt/ch_postfinance_camt052_v04.xml"), "x.xml") == "camt052"
    assert detect_format(_read("camt/ch_ubs_camt053_v08.xml"), "x.xml") == "camt053"
    assert detect_format(_read("camt/fi_finance_finland_camt054_v02.xml"), "x.xml") == "camt054"
    assert detect_format(_read("csv/de_commerzbank_export.csv"), "x.csv") == "csv"
    with pytest.raises(StatementError, match="empty"):
        detect_format(b"", "x.csv")
    with pytest.raises(StatementError, match="not an ISO 20022 camt"):
        detect_format(b"<html><body/></html>", "x.xml")


def test_detect_csv_mapping():
    assert detect_csv_mapping(_read("csv/de_commerzbank_export.csv")).name == "commerzbank"
    assert detect_csv_mapping(_read("csv/de_1822direkt_export.csv")).name == "1822direkt"
    assert detect_csv_mapping(_read("csv/de_vrbank_genobank_unterallgaeu_export.csv")).name == "vrbank_umsatzanzeige"
    with pytest.raises(StatementError, match="no saved column mapping matches"):
        detect_csv_mapping(b"Date,Amount,Text\n2024-01-01,5.00,x\n")


def test_format_forced_that_does_not_fit():
    with pytest.raises(StatementError, match="camt053, not camt054"):
        parse_statement(_read("camt/ch_ubs_camt053_v08.xml"), "x.xml", format="camt054")
    with pytest.raises(StatementError, match="unknown statement format"):
        parse_statement(b"x", "x", format="pdf")


# --- bad input: MT940 --------------------------------------------------------------------------

MT940_OK = (
    b":20:REF1\n:25:DE12345678901234567890\n:28C:1/1\n:60F:C240101EUR100,00\n"
    b":61:2401020102C25,00NTRFNONREF//B1\n:86:166?00GUTSCHRIFT?20CONTRACT 4711\n"
    b":62F:C240102EUR125,00\n-\n"
)


def test_mt940_minimal_ok():
    parsed = parse_statement(MT940_OK, "x.sta")
    assert [(line.amount, line.reference, line.bank_reference) for line in parsed.credits] == [
        (Decimal("25.00"), "CONTRACT 4711", "B1")
    ]


def test_truncated_mt940_is_refused():
    raw = _read("mt940/ng_zenith_bank.txt")
    cut = raw[: raw.index(b":61:2011301130DN38926,67") + 20]
    with pytest.raises(StatementError, match=r"no closing balance .* truncated"):
        parse_statement(cut, "zenith.txt")


def test_mt940_unreadable_entry_is_a_line_error():
    raw = MT940_OK.replace(b":62F:", b":61:XX0102C1,00NTRF\n:62F:")
    parsed = parse_statement(raw, "x.sta")
    assert len(parsed.lines) == 1
    (error,) = parsed.errors
    assert error.line_no == 7 and "does not follow the SWIFT layout" in error.reason and error.raw.startswith(":61:XX")


def test_mt940_zero_amount_and_impossible_date():
    raw = MT940_OK.replace(b":62F:", b":61:2401020102C0,00NTRFNONREF\n:61:2413450102C5,00NTRFNONREF\n:62F:")
    parsed = parse_statement(raw, "x.sta")
    reasons = {error.line_no: error.reason for error in parsed.errors}
    assert reasons[7].startswith("amount is zero")
    assert "not a real date" in reasons[8]


def test_mt940_unknown_currency():
    raw = MT940_OK.replace(b"EUR", b"XXZ")
    parsed = parse_statement(raw, "x.sta")
    assert parsed.lines == []
    (error,) = parsed.errors
    assert error.line_no == 5 and "unknown currency 'XXZ'" in error.reason


def test_mt940_wrong_encoding():
    with pytest.raises(StatementError, match="NUL bytes"):
        parse_statement(MT940_OK.decode().encode("utf-16-le"), "x.sta", format="mt940")


def test_mt940_nothing_in_it():
    with pytest.raises(StatementError, match="no MT940 statement"):
        parse_statement(b"hello\nworld\n", "x.sta", format="mt940")


# --- bad input: XML ----------------------------------------------------------------------------

CAMT_OK = """<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"><BkToCstmrStmt>
<GrpHdr><MsgId>M1</MsgId></GrpHdr>
<Stmt><Id>S1</Id><Acct><Id><IBAN>DE12345678901234567890</IBAN></Id><Ccy>EUR</Ccy></Acct>
<Ntry><Amt Ccy="{ccy}">{amount}</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts>
<BookgDt><Dt>2024-01-02</Dt></BookgDt><NtryDtls><TxDtls><Refs><EndToEndId>E2E-1</EndToEndId></Refs>
<RmtInf><Ustrd>CONTRACT 4711</Ustrd></RmtInf></TxDtls></NtryDtls></Ntry>
</Stmt></BkToCstmrStmt></Document>
"""


def _camt(amount="25.00", ccy="EUR") -> bytes:
    return CAMT_OK.format(amount=amount, ccy=ccy).encode()


def test_camt_minimal_ok():
    (line,) = parse_statement(_camt(), "x.xml").credits
    assert (line.amount, line.end_to_end_id, line.reference, line.line_no) == (
        Decimal("25.00"),
        "E2E-1",
        "CONTRACT 4711",
        5,
    )


def test_truncated_xml_is_refused():
    raw = _camt()
    with pytest.raises(StatementError, match="malformed or truncated at line"):
        parse_statement(raw[: len(raw) // 2], "x.xml")


def test_xml_external_entity_is_refused():
    raw = (
        _camt()
        .replace(
            b'<?xml version="1.0" encoding="UTF-8"?>',
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
        )
        .replace(b"CONTRACT 4711", b"&e;")
    )
    with pytest.raises(StatementError, match="XML with entity declarations is refused"):
        parse_statement(raw, "x.xml", format="camt053")


def test_billion_laughs_is_refused():
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    bomb = f'<?xml version="1.0"?><!DOCTYPE Document [<!ENTITY l0 "lol">{entities}]><Document>&l9;</Document>'
    with pytest.raises(StatementError, match="XML with entity declarations is refused"):
        parse_statement(bomb.encode(), "x.xml", format="camt053")


def test_camt_zero_negative_and_unknown_currency_are_line_errors():
    for amount, ccy, reason in (
        ("0.00", "EUR", "amount is zero"),
        ("-5.00", "EUR", "negative"),
        ("25.00", "XXZ", "unknown currency 'XXZ'"),
        ("25.001", "EUR", "more decimals than EUR allows"),
        ("abc", "EUR", "is not a number"),
    ):
        parsed = parse_statement(_camt(amount, ccy), "x.xml")
        assert parsed.lines == []
        (error,) = parsed.errors
        assert reason in error.reason and error.line_no == 5 and "<Ntry>" in error.raw


def test_camt_other_xml_is_refused():
    with pytest.raises(StatementError, match="not a camt.052/053/054 message"):
        parse_statement(
            b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"><CstmrCdtTrfInitn/></Document>',
            "x.xml",
            format="camt053",
        )


# --- bad input: CSV ----------------------------------------------------------------------------


def test_csv_in_the_wrong_encoding_is_refused():
    latin1 = _read("csv/de_commerzbank_export.csv").decode("utf-8-sig").encode("iso-8859-1")
    with pytest.raises(StatementError, match=r"line 1, column \d+: byte 0xE4 is not valid utf-8"):
        parse_statement(latin1, "export.csv")


SIMPLE = CsvMapping(
    name="simple",
    signature=("Date", "Debit", "Credit"),
    date_column="Date",
    debit_column="Debit",
    credit_column="Credit",
    currency_column="Currency",
    reference_columns=("Text",),
    delimiter=",",
    decimal_comma=False,
    date_format="%Y-%m-%d",
)


def test_csv_zero_negative_currency_and_date_errors():
    raw = (
        b"Date,Debit,Credit,Currency,Text\n"
        b"2024-01-02,,25.00,KES,CONTRACT 4711\n"
        b"2024-01-02,,0.00,KES,zero\n"
        b"2024-01-02,,-5.00,KES,negative credit\n"
        b"2024-01-02,,5.00,XXZ,odd currency\n"
        b"2024-02-30,,5.00,KES,bad date\n"
        b"2024-01-02,,1.2.3,KES,bad amount\n"
        b"2024-01-02,7.50,,KES,fee\n"
    )
    parsed = parse_statement(raw, "x.csv", csv_mapping=SIMPLE)
    assert [(line.line_no, line.direction, line.amount) for line in parsed.lines] == [
        (2, "credit", Decimal("25.00")),
        (8, "debit", Decimal("7.50")),
    ]
    reasons = {error.line_no: error.reason for error in parsed.errors}
    assert reasons[3].startswith("amount is zero")
    assert "negative where the format expects a positive amount" in reasons[4]
    assert "unknown currency 'XXZ'" in reasons[5]
    assert reasons[6] == "booking date '2024-02-30' is not a date in the format %Y-%m-%d"
    assert reasons[7] == "amount '1.2.3' is not a number"


def test_csv_truncated_quote_and_missing_columns():
    with pytest.raises(StatementError, match="truncated"):
        parse_csv(b'Date,Debit,Credit,Currency,Text\n2024-01-02,,25.00,KES,"CONTRACT', SIMPLE)
    with pytest.raises(StatementError, match="lacks the column"):
        parse_csv(b"Date,Debit,Credit\n2024-01-02,,25.00\n", SIMPLE)


def test_csv_mapping_must_name_one_amount_layout():
    broken = dataclasses.replace(KNOWN_MAPPINGS["1822direkt"], debit_column="Soll")
    with pytest.raises(StatementError, match="signed amount column"):
        parse_csv(_read("csv/de_1822direkt_export.csv"), broken)


def test_oversized_file_is_refused(monkeypatch):
    monkeypatch.setattr("payments.statements.parsers.detect.MAX_STATEMENT_BYTES", 10)
    with pytest.raises(StatementError, match="are refused"):
        parse_statement(MT940_OK, "x.sta")


def test_csv_mapping_saved_as_json_round_trips():
    # payments.statements.imports stores a mapping as JSON and rebuilds it with CsvMapping(**saved).
    saved = json.loads(json.dumps(dataclasses.asdict(KNOWN_MAPPINGS["vrbank_umsatzanzeige"])))
    mapping = CsvMapping(**saved)
    assert mapping == KNOWN_MAPPINGS["vrbank_umsatzanzeige"] and hash(mapping)
    parsed = parse_statement(_read("csv/de_vrbank_genobank_unterallgaeu_export.csv"), "x.csv", csv_mapping=mapping)
    assert len(parsed.lines) == 5


def test_every_format_the_parsers_read_can_be_chosen_on_the_page_in_the_api_and_the_command():
    from payments.api.statements import StatementUploadSerializer
    from payments.management.commands.import_statement import Command
    from payments.statements.forms import StatementUploadForm
    from payments.statements.parsers.types import FORMATS

    assert set(FORMATS) == {"mt940", "camt052", "camt053", "camt054", "csv"}
    page = {value for value, _label in StatementUploadForm.base_fields["format"].choices} - {""}
    api = set(StatementUploadSerializer().fields["format"].choices) - {""}
    command = next(a for a in Command().create_parser("manage.py", "import_statement")._actions if a.dest == "format")
    assert page == api == set(command.choices) == set(FORMATS)
