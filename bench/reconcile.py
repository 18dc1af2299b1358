"""Import and match a generated bank statement; lines per second against parsing alone.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/finlock_bench .venv/bin/python bench/reconcile.py --lines 100000

Creates a euro provider with ``--contracts`` active contracts, generates a CSV statement in
the 1822direkt export format with ``--lines`` entries (about 80 % credits quoting a contract
number as payers do — exact, lower case, spaced, with leading zeros dropped — or quoting
nothing, 20 % debits), then imports it with ``payments.statements.imports`` (parse, store every line
once, credit payments, match and allocate) and reports lines per second. The baseline is
parsing the same bytes alone (``payments.statements.parse_statement``), the floor of any
import. Target: ≥ 5,000 lines/s. The last line printed is a JSON object
``{"metric", "value", "baseline", "ratio", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_LINES_PER_SECOND = 5000

HEADER = (
    "Kontonummer;Datum/Zeit;Buchungstag;Wertstellung;Soll/Haben;Buchungsschlüssel;Buchungsart;"
    "Empfänger/Auftraggeber Name;Empfänger/Auftraggeber IBAN;Empfänger/Auftraggeber BIC;Glaeubiger-ID;"
    "Mandatsreferenz;Mandatsdatum;" + ";".join(f"Vwz.{i}" for i in range(18)) + ";End-to-End-Identifikation"
)


def statement(numbers: list[str], lines: int, day, seed: int) -> bytes:
    """A 1822direkt-style CSV export with ``lines`` entries."""
    rng = random.Random(seed)
    d = day.strftime("%d.%m.%Y")
    rows = [HEADER]
    for n in range(lines):
        if rng.random() < 0.8:
            number = rng.choice(numbers)
            purpose = rng.choice([number, number.lower(), number.replace("-", " "), f"Rate {number}", "Danke"])
            amount = f"{rng.randint(5, 400)},{rng.randint(0, 99):02d}"
            kind = "Gutschrift"
        else:
            purpose, amount, kind = "Kartenzahlung", f"-{rng.randint(1, 90)},00", "Lastschrift"
        empty = ";" * 17
        rows.append(f"1234567890;{d} 09:00;{d};{d};{amount};166;{kind};Max Muster;DE1;BIC;;;;{purpose}{empty};E{n:08d}")
    return "\n".join(rows).encode("utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--contracts", type=int, default=500)
    args = parser.parse_args(argv)
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        print("bench/reconcile.py needs PostgreSQL: set DATABASE_URL=postgres://...", file=sys.stderr)
        return 2
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    from bench.checkin import _imei
    from devices.models import Device
    from payments.contracts.services import contract_create, customer_create
    from payments.statements.imports import statement_import_create, statement_import_run
    from payments.statements.parsers.detect import parse_statement
    from portal.models import Organisation

    call_command("migrate", verbosity=0)
    run = uuid.uuid4().hex[:6]
    provider = Organisation.objects.create(
        kind="provider",
        name=f"Reconcile bench {run}",
        slug=f"reconcile-{run}",
        country="DE",
        currency="EUR",
        time_zone="Europe/Berlin",
        languages=["en"],
    )
    print(f"creating {args.contracts} contracts", flush=True)
    numbers = []
    for i in range(args.contracts):
        device = Device.objects.create(provider=provider, imei=_imei())
        customer = customer_create(provider=provider, actor=None, name=f"Kunde {i}", phone=f"+49151{i:08d}")
        contract = contract_create(
            provider=provider,
            actor=None,
            number=f"RB-{i:05d}",
            device=device,
            customer=customer,
            cash_price=Decimal("900"),
            down_payment=Decimal("100"),
            installment_count=12,
            frequency="monthly",
            first_due_date=provider.today(),
        )
        numbers.append(contract.number)
    raw = statement(numbers, args.lines, provider.today(), seed=20261123)

    start = time.perf_counter()
    parsed = parse_statement(raw, "bench.csv")
    parse_seconds = time.perf_counter() - start
    baseline = len(parsed.lines) / parse_seconds

    start = time.perf_counter()
    record = statement_import_create(provider=provider, filename="bench.csv", raw=raw, actor=None)
    record = statement_import_run(import_id=record.pk)
    import_seconds = time.perf_counter() - start
    value = args.lines / import_seconds
    summary = {k: v for k, v in record.summary.items() if k != "error_lines"}
    print(f"parsed {len(parsed.lines):,} lines in {parse_seconds:.2f} s ({baseline:,.0f} lines/s)")
    print(f"imported and matched in {import_seconds:.1f} s ({value:,.0f} lines/s): {summary}")
    verdict = "ok" if value >= TARGET_LINES_PER_SECOND else f"under the {TARGET_LINES_PER_SECOND:,} lines/s target"
    print(verdict)
    print(
        json.dumps(
            {
                "metric": "statement_lines_per_second",
                "value": round(value, 1),
                "baseline": round(baseline, 1),
                "ratio": round(value / baseline, 4),
                "target": TARGET_LINES_PER_SECOND,
                "lines": args.lines,
                "matched": summary.get("matched"),
                "unmatched": summary.get("unmatched"),
                "seconds": round(import_seconds, 1),
            }
        )
    )
    return 0 if value >= TARGET_LINES_PER_SECOND else 1


if __name__ == "__main__":
    sys.exit(main())
