"""Load benchmark-scale data into PostgreSQL with COPY.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/finlock_bench .venv/bin/python bench/seed.py --contracts 1000000

Creates (or reuses) the two demo providers, then loads ``--contracts`` devices,
customers and contracts with about six installments each, in every situation
the demo has (current, due soon, overdue, paid off, defaulted, cancelled),
from ``demo.generator.iter_bench_rows``. Rows go in with ``COPY ... FROM STDIN``
in batches, each batch one transaction across the four tables, so an
interrupted run leaves whole batches only. Progress lines show rows and rows/s
per table; the last line printed is a JSON object with the totals.

Benchmark contracts are numbered ``DLG-B…`` / ``JMI-B…``; ``--reset`` deletes
those contracts with their installments, devices and customers first, and
nothing else (demo data in the same database is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TABLES = ("devices", "customers", "contracts", "installments")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see the module docstring and bench/README.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--contracts", type=int, default=1_000_000, help="devices, customers and contracts (default 1000000)"
    )
    parser.add_argument("--database-url", help="PostgreSQL URL (default: the DATABASE_URL environment variable)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="contracts per COPY batch (default 10000)")
    parser.add_argument("--seed", type=int, default=None, help="generator seed (default: the demo's)")
    parser.add_argument("--reset", action="store_true", help="delete earlier benchmark rows first")
    args = parser.parse_args(argv)
    if args.contracts < 1 or args.batch_size < 1:
        parser.error("--contracts and --batch-size must be positive")
    return args


def setup_django(database_url: str) -> None:
    """Point Django at ``database_url`` and set it up, as manage.py would."""
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import django

    django.setup()


def say(message: str) -> None:
    """Print a progress line at once (output may be piped to a log)."""
    print(message, flush=True)


def reserve_ids(cursor, table: str, count: int) -> int:
    """Reserve ``count`` consecutive ids of ``table``'s identity sequence; returns the first.

    Foreign keys must be known before the rows are written, so ids are taken
    up front by moving the sequence past the block. Assumes nobody else
    inserts into the table meanwhile (a benchmark database).
    """
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
    sequence = cursor.fetchone()[0]
    cursor.execute("SELECT setval(%s, nextval(%s) + %s - 1)", [sequence, sequence, count])
    last = cursor.fetchone()[0]
    return last - count + 1


def bench_filter(specs, provider_ids) -> tuple[str, list]:
    """SQL condition (on payments_contract) selecting benchmark contracts, with its parameters."""
    from demo.generator import bench_prefix

    clauses, params = [], []
    for spec in specs:
        clauses.append("(provider_id = %s AND number LIKE %s)")
        params += [provider_ids[spec.slug], bench_prefix(spec) + "%"]
    return " OR ".join(clauses), params


def reset(connection, tables: dict[str, str], where: str, params: list) -> int:
    """Delete benchmark contracts, their installments, devices and customers; returns contracts deleted."""
    from django.db import transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMP TABLE bench_doomed ON COMMIT DROP AS "  # noqa: S608 (table names are ours)
            f"SELECT id, device_id, customer_id FROM {tables['contracts']} WHERE {where}",
            params,
        )
        cursor.execute("SELECT count(*) FROM bench_doomed")
        doomed = cursor.fetchone()[0]
        cursor.execute(f"DELETE FROM {tables['installments']} WHERE contract_id IN (SELECT id FROM bench_doomed)")
        cursor.execute(f"DELETE FROM {tables['contracts']} WHERE id IN (SELECT id FROM bench_doomed)")
        cursor.execute(f"DELETE FROM {tables['customers']} WHERE id IN (SELECT customer_id FROM bench_doomed)")
        cursor.execute(f"DELETE FROM {tables['devices']} WHERE id IN (SELECT device_id FROM bench_doomed)")
    if doomed:
        # Reclaim the dead rows so the load that follows measures the same as on a fresh database.
        with connection.cursor() as cursor:
            for table in tables.values():
                cursor.execute(f"VACUUM {table}")
    return doomed


class Filler:
    """The columns of a model the generator does not set, filled as ``Model.save`` would (field defaults).

    The models grow while the generator stays focused on what it knows; a new
    column with a default (a device's uid, a counter) is filled here, a new
    NOT NULL column without one stops the run with its name.
    """

    def __init__(self, model, columns: tuple[str, ...], connection):
        from django.db.models import NOT_PROVIDED

        given = set(columns)
        self.columns: list[str] = []
        constants: list = []
        self._per_row: list = []  # (position, field) of callable defaults, e.g. uuid4
        for f in model._meta.concrete_fields:
            if f.column in given or (f.primary_key and f.column not in given):
                continue
            if f.db_default is not NOT_PROVIDED:
                continue  # the database fills it
            if f.has_default():
                if callable(f.default):
                    self._per_row.append((len(self.columns), f))
                    constants.append(None)
                else:
                    constants.append(f.get_db_prep_save(f.get_default(), connection))
            elif f.null:
                continue
            elif f.empty_strings_allowed:
                constants.append("")
            else:
                raise SystemExit(
                    f"{model._meta.label}.{f.name} is NOT NULL without a default; teach demo/generator.py to fill it."
                )
            self.columns.append(f.column)
        self._constants = tuple(constants)
        self._connection = connection

    def rows(self, rows: list[tuple]):
        """``rows`` with the filled columns appended."""
        if not self.columns:
            return rows
        if not self._per_row:
            tail = self._constants
            return (row + tail for row in rows)
        return (row + self._tail() for row in rows)

    def _tail(self) -> tuple:
        values = list(self._constants)
        for position, f in self._per_row:
            values[position] = f.get_db_prep_save(f.get_default(), self._connection)
        return tuple(values)


def copy_rows(cursor, table: str, columns, rows) -> None:
    """COPY ``rows`` into ``table`` through psycopg 3's COPY protocol."""
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    with cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)


def main(argv: list[str] | None = None) -> int:
    """Load the benchmark data; returns the exit status (0 done, 1 refused, 2 not PostgreSQL)."""
    args = parse_args(argv)
    url = args.database_url or os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        print(
            "bench/seed.py needs PostgreSQL: pass --database-url or set "
            "DATABASE_URL=postgres://user@host:5432/dbname (got "
            f"{url.split('@')[-1] if url else 'nothing'}).",
            file=sys.stderr,
        )
        return 2
    setup_django(url)

    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from demo import generator
    from devices.models import Device
    from payments.models import Contract, Customer, Installment

    if connection.vendor != "postgresql":
        print(f"bench/seed.py needs PostgreSQL, not {connection.vendor}.", file=sys.stderr)
        return 2

    started = time.perf_counter()
    say(f"finlock bench seed: {args.contracts:,} contracts into {connection.settings_dict['NAME']}")
    call_command("migrate", interactive=False, verbosity=0)
    orgs = generator.ensure_organisations()
    provider_ids = {spec.slug: orgs[spec.slug].pk for spec in generator.PROVIDERS}
    tables = {
        "devices": Device._meta.db_table,
        "customers": Customer._meta.db_table,
        "contracts": Contract._meta.db_table,
        "installments": Installment._meta.db_table,
    }
    columns = {
        "devices": generator.DEVICE_COLUMNS,
        "customers": generator.CUSTOMER_COLUMNS,
        "contracts": generator.CONTRACT_COLUMNS,
        "installments": generator.INSTALLMENT_COLUMNS,
    }
    models = {"devices": Device, "customers": Customer, "contracts": Contract, "installments": Installment}
    fillers = {name: Filler(models[name], columns[name], connection) for name in TABLES}
    for name, filler in fillers.items():
        if filler.columns:
            say(f"{tables[name]}: filling {', '.join(filler.columns)} with the model defaults")
    where, params = bench_filter(generator.PROVIDERS, provider_ids)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {tables['contracts']} WHERE {where}", params)  # noqa: S608
        existing = cursor.fetchone()[0]
    if existing and not args.reset:
        print(
            f"The database already holds {existing:,} benchmark contracts. Run again with --reset to delete "
            "them (and their installments, devices and customers) first, or use a fresh database.",
            file=sys.stderr,
        )
        return 1
    if existing:
        t = time.perf_counter()
        deleted = reset(connection, tables, where, params)
        say(f"reset: deleted {deleted:,} benchmark contracts with their rows in {time.perf_counter() - t:.1f} s")

    with connection.cursor() as cursor:
        # Losing the last commits in a crash costs a benchmark nothing; waiting for each flush costs time.
        cursor.execute("SET synchronous_commit TO off")
        first_ids = {
            "device": reserve_ids(cursor, tables["devices"], args.contracts),
            "customer": reserve_ids(cursor, tables["customers"], args.contracts),
            "contract": reserve_ids(cursor, tables["contracts"], args.contracts),
        }
        cursor.execute("SHOW server_version")
        server_version = cursor.fetchone()[0]

    split = generator.bench_split(args.contracts)
    say("providers: " + ", ".join(f"{orgs[slug].name} {n:,}" for slug, n in split.items()))
    rows = dict.fromkeys(TABLES, 0)
    copy_seconds = dict.fromkeys(TABLES, 0.0)
    generate_seconds = commit_seconds = 0.0
    load_started = time.perf_counter()
    batches = generator.iter_bench_rows(
        provider_ids=provider_ids,
        contracts=args.contracts,
        first_ids=first_ids,
        batch_size=args.batch_size,
        now=timezone.now(),
        **({"seed": args.seed} if args.seed is not None else {}),
    )
    while True:
        t = time.perf_counter()
        batch = next(batches, None)
        generate_seconds += time.perf_counter() - t
        if batch is None:
            break
        with transaction.atomic():
            with connection.cursor() as cursor:
                raw = cursor.cursor  # the psycopg 3 cursor under Django's wrapper
                for name in TABLES:
                    t = time.perf_counter()
                    filler = fillers[name]
                    copy_rows(raw, tables[name], (*columns[name], *filler.columns), filler.rows(getattr(batch, name)))
                    copy_seconds[name] += time.perf_counter() - t
                    rows[name] += len(getattr(batch, name))
            t = time.perf_counter()
        # Django's foreign keys are DEFERRABLE INITIALLY DEFERRED: their checks run at COMMIT.
        commit_seconds += time.perf_counter() - t
        elapsed = time.perf_counter() - load_started
        total = sum(rows.values())
        per_table = "  ".join(
            f"{name} {rows[name]:,} ({rows[name] / max(copy_seconds[name], 1e-9):,.0f}/s)" for name in TABLES
        )
        say(
            f"{rows['contracts']:>11,}/{args.contracts:,} contracts  {elapsed:7.1f} s  "
            f"{total / elapsed:,.0f} rows/s  |  {per_table}"
        )
    load_seconds = time.perf_counter() - load_started

    # Fresh statistics, so queries benchmarked next get the plans they would in production.
    t = time.perf_counter()
    with connection.cursor() as cursor:
        for table in tables.values():
            cursor.execute(f"ANALYZE {table}")
    analyze_seconds = time.perf_counter() - t

    total = sum(rows.values())
    say("")
    for name in TABLES:
        say(
            f"{tables[name]:<22} {rows[name]:>11,} rows  COPY {copy_seconds[name]:7.1f} s  "
            f"{rows[name] / max(copy_seconds[name], 1e-9):>10,.0f} rows/s"
        )
    say(f"{'generating rows':<22} {'':>16}  {generate_seconds:12.1f} s")
    say(f"{'commits (FK checks)':<22} {'':>16}  {commit_seconds:12.1f} s")
    say(f"{'total':<22} {total:>11,} rows  {load_seconds:12.1f} s  {total / load_seconds:>10,.0f} rows/s")
    say(
        json.dumps(
            {
                "benchmark": "seed",
                "contracts": args.contracts,
                "rows": {tables[name]: rows[name] for name in TABLES},
                "total_rows": total,
                "installments_per_contract": round(rows["installments"] / max(rows["contracts"], 1), 3),
                "seconds": round(load_seconds, 2),
                "rows_per_second": round(total / load_seconds),
                "contracts_per_second": round(rows["contracts"] / load_seconds),
                "generate_seconds": round(generate_seconds, 2),
                "copy_seconds": {tables[name]: round(copy_seconds[name], 2) for name in TABLES},
                "commit_seconds": round(commit_seconds, 2),
                "analyze_seconds": round(analyze_seconds, 2),
                "wall_seconds": round(time.perf_counter() - started, 2),
                "batch_size": args.batch_size,
                "postgresql": server_version,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
