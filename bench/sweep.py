"""Time the lock sweep over benchmark-scale contracts against one hand-written SQL aggregate.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/finlock_bench .venv/bin/python bench/sweep.py --contracts 1000000

Loads ``--contracts`` benchmark contracts with ``bench/seed.py`` when the database holds
fewer, runs one sweep to bring every contract's lock state up to date (its changes are
written with signed commands, like production's first run), then times, in the same run:

* **value**: a steady-state sweep (``payments.locks.services.lock_sweep``) over every live
  contract: the SQL pass per provider plus the writes of whatever changed;
* **baseline**: one hand-written SQL aggregate over the same tables, the least work any
  sweep must do (the oldest unpaid past-due installment per live contract).

Target: ratio = value / baseline ≤ 3. The last line printed is a JSON object
``{"metric", "value", "baseline", "ratio", ...}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 3.0

BASELINE_SQL = """
SELECT count(*), count(oldest)
FROM (
    SELECT c.id,
           min(i.due_date) FILTER (WHERE i.amount_paid < i.amount_due AND i.due_date < %(today)s) AS oldest
    FROM payments_contract c
    JOIN payments_installment i ON i.contract_id = c.id
    WHERE c.status IN ('active', 'defaulted')
    GROUP BY c.id
) per_contract
"""


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--contracts", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each side (median reported)")
    return parser.parse_args(argv)


def timed(fn, repeat: int) -> tuple[float, object]:
    runs, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), result


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.database_url or not args.database_url.startswith(("postgres://", "postgresql://")):
        print(
            "bench/sweep.py needs PostgreSQL: set DATABASE_URL=postgres://... or pass --database-url", file=sys.stderr
        )
        return 2
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from payments.locks.services import lock_sweep
    from payments.models import Contract

    call_command("migrate", verbosity=0)
    have = Contract.objects.filter(number__contains="-B").count()
    if have < args.contracts:
        print(f"seeding: {have} benchmark contracts present, {args.contracts} wanted", flush=True)
        from bench import seed

        code = seed.main(["--contracts", str(args.contracts), "--reset", "--database-url", args.database_url])
        if code:
            return code
    total = Contract.objects.count()
    live = Contract.objects.filter(status__in=["active", "defaulted"]).count()
    now = timezone.now()

    start = time.perf_counter()
    first = lock_sweep(now=now)
    first_seconds = time.perf_counter() - start
    print(
        f"first sweep: {first.evaluated:,} live contracts, {first.total_changed:,} changes written "
        f"{dict(first.changed)} in {first_seconds:.1f} s",
        flush=True,
    )

    later = now + dt.timedelta(minutes=5)
    value, steady = timed(lambda: lock_sweep(now=later), args.repeat)
    print(f"steady sweep: {steady.evaluated:,} contracts, {steady.total_changed} changes, median {value:.3f} s")

    def baseline_query():
        with connection.cursor() as cursor:
            cursor.execute(BASELINE_SQL, {"today": later.date()})
            return cursor.fetchone()

    baseline, counts = timed(baseline_query, args.repeat)
    print(f"hand-written aggregate: {counts[0]:,} live contracts, {counts[1]:,} with arrears, median {baseline:.3f} s")
    ratio = value / baseline if baseline else float("inf")
    verdict = "ok" if ratio <= TARGET_RATIO else f"over the {TARGET_RATIO}x target"
    print(f"ratio {ratio:.2f} ({verdict})")
    print(
        json.dumps(
            {
                "metric": "lock_sweep_seconds",
                "value": round(value, 4),
                "baseline": round(baseline, 4),
                "ratio": round(ratio, 3),
                "target_ratio": TARGET_RATIO,
                "contracts": total,
                "live_contracts": live,
                "first_sweep_seconds": round(first_seconds, 2),
                "first_sweep_changes": first.total_changed,
            }
        )
    )
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
