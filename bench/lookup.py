"""Time the agent console's lookups at benchmark scale against a bare Django JSON view.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/finlock_bench .venv/bin/python bench/lookup.py --devices 1000000

Loads ``--devices`` benchmark devices (each with its customer and contract) with
``bench/seed.py`` when the database holds fewer, picks a locked phone of the Sri Lankan
benchmark provider (a customer whose phone number is on no other contract), gives it a
short story (a few payments and commands, so the page reads every table it reads in
production) and signs in an agent of that provider. Then, in-process with Django's test
``Client`` (the full middleware stack, session, templates; no network), it times round
robin, ``--repeat`` times each:

* **imei**: the console search for the phone's IMEI typed with spaces (``35 693803 564380 9``);
* **phone**: for the customer's number in local form (``077 123 4567``);
* **contract**: for the contract number typed lower case without leading zeros (``dlg b42``);
* **device**: the device's console page, where each of those searches redirects;
* **baseline**: ``GET /healthz``, a bare Django JSON view behind the same middleware.

A customer-name search (``name``, a case-insensitive "contains") is timed as well, fewer
times, and reported apart: it has no index to use until the trigram index exists.

Each case reports p50 / p95 in ms and its query count; every query of each case is run
through ``EXPLAIN`` and any sequential scan of a large table is named. Target: p95 of the
slowest case ≤ 50 ms. The last line printed is a JSON object
``{"metric": "console_lookup_ms", "value", "baseline", "ratio", "target_ms", "queries", ...}``.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_MS = 50.0
AGENT = "bench.console.agent"
PAYMENT_PREFIX = "BENCH-LOOKUP-"
#: Tables whose sequential scan would grow with the data (small ones may be scanned by choice).
BIG_TABLES = {
    "devices_device",
    "devices_devicecommand",
    "devices_deliveryattempt",
    "payments_contract",
    "payments_customer",
    "payments_installment",
    "payments_payment",
    "portal_auditevent",
}
#: Queries every signed-in page makes (session, user, two-factor, organisation) are not explained.
SHELL_TABLES = ("django_session", "portal_user", "otp_", "portal_organisation")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--devices", type=int, default=1_000_000, help="benchmark devices wanted (default 1000000)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--repeat", type=int, default=200, help="timed requests per case (default 200)")
    parser.add_argument("--name-repeat", type=int, default=20, help="timed name searches (default 20)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per case first (default 10)")
    parser.add_argument("--payments", type=int, default=12, help="payments given to the phone's contract (default 12)")
    parser.add_argument("--commands", type=int, default=6, help="commands issued to the phone (default 6)")
    return parser.parse_args(argv)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def say(message: str) -> None:
    print(message, flush=True)


def local_form(e164: str, country: str) -> str:
    """How a customer reads their number out: 077 123 4567 in Sri Lanka, 0712 345678 in Kenya."""
    import phonenumbers

    return phonenumbers.format_number(phonenumbers.parse(e164, country), phonenumbers.PhoneNumberFormat.NATIONAL)


def typed_number(number: str) -> str:
    """A contract number as a caller types it: ``DLG-B00000042`` → ``dlg b42`` (lower case, no leading zeros)."""
    import re

    return re.sub(r"(?<!\d)0+(?=\d)", "", number.lower().replace("-", " "))


def pick_phone(provider):
    """A locked benchmark phone whose customer's number is on no other contract (so each search finds one)."""
    from devices.models import Device
    from payments.models import Contract

    candidates = (
        Contract.objects.filter(provider=provider, number__contains="-B", device__desired_state="locked")
        .select_related("device", "customer")
        .order_by("id")
    )
    total = candidates.count()
    if not total:
        raise SystemExit("No locked benchmark phone of the Sri Lankan provider: seed with bench/seed.py first.")
    for offset in range(total // 2, min(total, total // 2 + 200)):
        contract = candidates[offset]
        phone_users = Contract.objects.filter(customer__phone=contract.customer.phone).count()
        imei_users = Device.objects.filter(imei=contract.device.imei).count()
        if phone_users == 1 and imei_users == 1:
            return contract
    raise SystemExit("No benchmark phone with a customer number of its own among 200 tried.")


def give_story(contract, *, payments: int, commands: int) -> None:
    """A few matched payments and signed commands, as a phone on the hotline has (once per database)."""
    import datetime as dt

    from django.utils import timezone

    from devices.models import DeviceCommand
    from devices.services.commands import StateChange, device_states_apply
    from payments.ledger.services import payment_ingest
    from payments.models import Payment

    have = Payment.objects.filter(provider=contract.provider, external_id__startswith=PAYMENT_PREFIX).count()
    for n in range(have, payments):
        payment_ingest(
            provider=contract.provider,
            channel="bank_transfer",
            external_id=f"{PAYMENT_PREFIX}{contract.pk}-{n}",
            amount=Decimal("1.00"),  # too little to clear the arrears: the phone stays locked
            currency=contract.currency,
            received_at=timezone.now() - dt.timedelta(days=n + 1),
            reference=contract.number,
        )
    have = DeviceCommand.objects.filter(device=contract.device).count()
    if have < commands:
        device_states_apply(
            changes=[
                StateChange(device_id=contract.device_id, state="locked", reason="benchmark: installment overdue")
                for _ in range(commands - have)
            ]
        )


def shell_query(sql: str) -> bool:
    """Whether ``sql`` reads one of the tables every signed-in page reads (its FROM table)."""
    table = sql.split(" FROM ", 1)[1].split()[0].strip('"') if " FROM " in sql else ""
    return table.startswith(SHELL_TABLES)


def forget_story() -> None:
    """Delete what ``give_story`` added (payments with their allocations, commands with their attempts)."""
    from devices.models import DeviceCommand
    from payments.models import Payment

    Payment.objects.filter(external_id__startswith=PAYMENT_PREFIX).delete()
    DeviceCommand.objects.filter(device__contracts__number__contains="-B").delete()


def explain(sql_list: list[str]) -> tuple[list[str], list[str]]:
    """Per query, its scans ("Index Scan on table using index"); and the sequential scans of big tables."""
    from django.db import connection

    per_query, seq = [], []

    def walk(node, scans):
        kind = node.get("Node Type", "")
        if "Scan" in kind and node.get("Relation Name"):
            index = f" using {node['Index Name']}" if node.get("Index Name") else ""
            scans.append(f"{kind} on {node['Relation Name']}{index}")
            if kind == "Seq Scan" and node["Relation Name"] in BIG_TABLES:
                seq.append(scans[-1])
        for child in node.get("Plans", []):
            walk(child, scans)

    with connection.cursor() as cursor:
        for sql in sql_list:
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql)
            plan = cursor.fetchone()[0]
            scans: list[str] = []
            walk((plan[0] if isinstance(plan, list) else json.loads(plan)[0])["Plan"], scans)
            per_query.append(", ".join(scans))
    return per_query, seq


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.database_url or not args.database_url.startswith(("postgres://", "postgresql://")):
        print("bench/lookup.py needs PostgreSQL: set DATABASE_URL=postgres://... or --database-url", file=sys.stderr)
        return 2
    scratch = tempfile.mkdtemp(prefix="finlock-lookup-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    # Production settings, in-process: DEBUG off (no query log, cached templates), a random key.
    os.environ.update(
        {
            "DATABASE_URL": args.database_url,
            "DEBUG": "0",
            "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(60),
            "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_SSL_REDIRECT": "0",
            "DEVICE_SIGNING_KEY": os.environ.get("DEVICE_SIGNING_KEY")
            or f"bench:{base64.b64encode(secrets.token_bytes(32)).decode()}",
            # A random audit key leaves a trail written by an earlier run unverifiable; pass
            # AUDIT_HMAC_KEY to keep the benchmark database's trail verifiable across runs.
            "AUDIT_HMAC_KEY": os.environ.get("AUDIT_HMAC_KEY")
            or f"bench:{base64.b64encode(secrets.token_bytes(32)).decode()}",
            "CELERY_BROKER_URL": "memory://",  # commands issued here are served by check-in; no worker
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
            # Static files as deployed (hashed manifest), collected into a scratch directory.
            "FINLOCK_VAR_DIR": scratch,
        }
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from demo.generator import ensure_organisations
    from devices.models import Device
    from payments.models import Contract
    from portal.models import User

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    have = Contract.objects.filter(number__contains="-B").count()
    if have < args.devices:
        say(f"seeding: {have:,} benchmark devices present, {args.devices:,} wanted")
        from bench import seed

        forget_story()  # seed.py --reset deletes devices and installments, not what refers to them

        code = seed.main(["--contracts", str(args.devices), "--reset", "--database-url", args.database_url])
        if code:
            return code
    devices = Device.objects.count()
    provider = ensure_organisations()["dialog"]
    contract = pick_phone(provider)
    give_story(contract, payments=args.payments, commands=args.commands)
    device, customer = contract.device, contract.customer
    agent, _ = User.objects.get_or_create(
        username=AGENT, defaults={"organisation": provider, "role": "agent", "email": "bench@example.com"}
    )
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(agent)

    search = reverse("console:search")
    device_url = reverse("console:device", args=[device.pk])
    imei = device.imei
    surname = customer.name.split()[-1]
    cases = {
        "imei": (search, {"q": f"{imei[:2]} {imei[2:8]} {imei[8:14]} {imei[14]}"}, 302),
        "phone": (search, {"q": local_form(str(customer.phone), provider.country)}, 302),
        "contract": (search, {"q": typed_number(contract.number)}, 302),
        "device": (device_url, {}, 200),
        "baseline": ("/healthz", {}, 200),
    }
    name_case = (search, {"q": surname.lower()}, 200)
    say(
        f"{devices:,} devices; phone {device.pk} ({device.get_desired_state_display().lower()}), "
        f"contract {contract.number}, customer {customer.name}"
    )

    def get(path, params, expected):
        response = client.get(path, params, secure=True)
        if response.status_code != expected:
            raise SystemExit(f"{path} {params} answered {response.status_code}, expected {expected}")
        if expected == 302 and response["Location"] != device_url:
            raise SystemExit(f"{params} led to {response['Location']}, not {device_url}")
        return response

    queries: dict[str, int] = {}
    plans: dict[str, list[str]] = {}
    seq_scans: dict[str, list[str]] = {}
    for name, case in [*cases.items(), ("name", name_case)]:
        for _ in range(args.warmup if name != "name" else 1):
            get(*case)
        with CaptureQueriesContext(connection) as captured:
            get(*case)
        queries[name] = len(captured)
        own = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT")]
        own = [sql for sql in own if not shell_query(sql)]
        plans[name], seq_scans[name] = explain(own)
        say(f"  {name:<9} {cases.get(name, name_case)[1] or ''}: {queries[name]} queries, of which its own:")
        for scans in plans[name]:
            say(f"      {scans}")

    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeat):
        for name, case in cases.items():  # round robin: every case sees the same noise
            start = time.perf_counter()
            get(*case)
            samples[name].append((time.perf_counter() - start) * 1000)
    name_samples = []
    for _ in range(args.name_repeat):
        start = time.perf_counter()
        get(*name_case)
        name_samples.append((time.perf_counter() - start) * 1000)

    say("")
    say(f"{'case':<9} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8}")
    results = {}
    for name, values in [*samples.items(), ("name", name_samples)]:
        results[name] = {
            "p50": round(percentile(values, 0.50), 2),
            "p95": round(percentile(values, 0.95), 2),
            "queries": queries[name],
        }
        note = "  (informational: not in the metric)" if name == "name" else ""
        say(f"{name:<9} {results[name]['p50']:>8.2f} {results[name]['p95']:>8.2f} {queries[name]:>8}{note}")
    lookups = [n for n in cases if n != "baseline"]
    slowest = max(lookups, key=lambda n: results[n]["p95"])
    value, baseline = results[slowest]["p95"], results["baseline"]["p95"]
    bad = {n: s for n, s in seq_scans.items() if s}
    for name, scans in bad.items():
        say(f"sequential scan of a large table in {name}: {'; '.join(scans)}")
    verdict = "ok" if value <= TARGET_MS else f"over the {TARGET_MS:.0f} ms target"
    say(f"slowest: {slowest} p95 {value:.2f} ms ({verdict}); /healthz p95 {baseline:.2f} ms")
    say(
        json.dumps(
            {
                "metric": "console_lookup_ms",
                "value": value,
                "baseline": baseline,
                "ratio": round(value / baseline, 2) if baseline else None,
                "target_ms": TARGET_MS,
                "queries": max(queries[n] for n in lookups),
                "slowest": slowest,
                "cases": results,
                "sequential_scans": bad,
                "devices": devices,
                "repeat": args.repeat,
            }
        )
    )
    return 0 if value <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
