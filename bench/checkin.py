"""Load the device check-in endpoint under gunicorn against a bare Django JSON view on the same server.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/finlock_bench .venv/bin/python bench/checkin.py

Enrols ``--devices`` phones of the demo's two providers, each with a signed current command
whose lock screen the real screen builder (payments/locks/screen.py) wrote in the owner's
language (English, Sinhala, Tamil, Swahili, in turn), then prints the sizes at stake for a
million phones: bytes per command (median and largest signed body and envelope, and the
Sinhala ones), bytes per phone in Redis (``MEMORY USAGE`` of the check-in records, and of
everything a phone keeps there, divided by the phones; also what the records would take
uncompressed and compressed without the shared dictionary) and the cost of unpacking a
record on a check-in. Target: at most 2 KB per phone in Redis. Then it starts gunicorn with
production settings on a free port and drives, in the same run and with the same client, for
``--seconds`` each:

* **baseline**: ``GET /healthz``, a bare Django JSON view behind the full middleware stack;
* **value**: ``POST /api/device/v1/checkin`` as the phones do (credential, JSON body), each
  answer carrying the device's current signed command.

With Redis (``--redis-url``, default ``$REDIS_URL`` or db 5 on localhost) the check-in runs
as deployed: answered from memory for a phone this process answered within
``CHECKIN_LOCAL_SECONDS``, else from the Redis record (devices/checkin_cache.py). Unless
``--quick``, the same load is then run with the memory level off (Redis alone: what a phone
checking in every few minutes gets) and with both off (the database path), each against
its own baseline; those figures are printed and included under ``levels``.

Both are requests per second of 200 answers, measured with ``wrk`` when it is installed
(``apt-get install wrk``: a C client that leaves the CPU to the server) and otherwise with
Python client processes. Target: ratio = value / baseline ≥ 0.70.
The last line printed is a JSON object ``{"metric", "value", "baseline", "ratio", ..., "sizes"}``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 0.70


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/5"),
        help="Redis for the cached check-in path; 'none' measures the database path alone",
    )
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="skip the runs with a cache level switched off")
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per endpoint")
    parser.add_argument("--clients", type=int, default=4, help="client processes, one keep-alive connection each")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--sizes-only", action="store_true", help="print the sizes and stop (no load)")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _imei() -> str:
    from stdnum import luhn

    body = f"99{secrets.randbelow(10**12):012d}"  # 99: a reporting-body prefix no real phone uses
    return body + luhn.calc_check_digit(body)


#: The owners' languages, in turn, per provider: every screen language the demo has.
LANGUAGES = {"dialog": ("en", "si", "ta"), "jamii": ("sw", "en")}
RECORD_TARGET = 2048


def _demo_changes(devices) -> list:
    """Each phone's lock, with the screen the real builder writes for a demo owner in its language."""
    import datetime as dt
    from decimal import Decimal
    from types import SimpleNamespace

    from devices.services.commands import StateChange
    from payments.locks.screen import ProviderScreenData, screen_build

    data = {}
    changes = []
    for i, device in enumerate(devices):
        provider = device.provider
        if provider.pk not in data:
            data[provider.pk] = ProviderScreenData.load(provider)
        languages = LANGUAGES[provider.slug]
        # Stand-ins with just what screen_build reads: the benchmark needs screens, not contracts.
        contract = SimpleNamespace(
            customer=SimpleNamespace(preferred_language=languages[i // 2 % len(languages)]),
            currency=provider.currency,
            number=f"BENCH-{i:06d}",
            device=device,
        )
        decision = SimpleNamespace(
            amount_overdue=Decimal("12500.00"), overdue_since=dt.date(2026, 1, 15), state="locked"
        )
        changes.append(
            StateChange(
                device_id=device.pk,
                state="locked",
                reason="benchmark",
                screen=screen_build(data=data[provider.pk], contract=contract, decision=decision),
                allowed_numbers=data[provider.pk].allowed_numbers(),
                time_zone=provider.time_zone,
                lock_window={"start_hour": 8, "end_hour": 18, "weekdays": [0, 1, 2, 3, 4, 5]},
            )
        )
    return changes


def enrol_devices(count: int) -> tuple[list[int], list[str]]:
    """Benchmark devices with credentials and a current signed command; returns their ids and credentials."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from demo.generator import ensure_organisations
    from devices.models import Device
    from devices.protocol import b64, enrollment_message
    from devices.services.commands import device_states_apply
    from devices.services.enrolment import device_enroll, enrollment_challenge_issue
    from devices.services.tokens import enrollment_token_create

    orgs = ensure_organisations()
    secrets_of = {}
    for slug in LANGUAGES:
        _token, secrets_of[slug] = enrollment_token_create(provider=orgs[slug], name="bench", actor=None)
    devices = Device.objects.bulk_create(
        [Device(provider=orgs[("dialog", "jamii")[i % 2]], imei=_imei()) for i in range(count)]
    )
    device_states_apply(changes=_demo_changes(devices))
    credentials = []
    for device in devices:
        # As a phone enrols: a challenge signed with the device key it generates.
        key = Ed25519PrivateKey.generate()
        device_key = b64(key.public_key().public_bytes_raw())
        challenge = enrollment_challenge_issue()["challenge"]
        signature = b64(key.sign(enrollment_message(challenge=challenge, imei=device.imei, device_key=device_key)))
        enrollment = device_enroll(
            imei=device.imei,
            token_secret=secrets_of[device.provider.slug],
            device_key=device_key,
            challenge=challenge,
            signature=signature,
            app_version="bench",
        )
        credentials.append(enrollment.credential)
    return [d.pk for d in devices], credentials


def _median(values):
    import statistics

    return int(statistics.median(values)) if values else 0


def command_sizes(device_ids: list[int]) -> dict:
    """Median and largest signed body and envelope in bytes over the phones' current commands (and the Sinhala ones)."""
    from devices.delivery import envelope_bytes
    from devices.models import DeviceCommand

    rows = [
        (len(c.body.encode()), len(envelope_bytes(c)), c.payload["screen"].get("language"))
        for c in DeviceCommand.objects.filter(device_id__in=device_ids)
        .order_by("device_id", "-seq")
        .distinct("device_id")
    ]
    sinhala = [r for r in rows if r[2] == "si"]
    return {
        "commands": len(rows),
        "body_median": _median([r[0] for r in rows]),
        "body_max": max(r[0] for r in rows),
        "envelope_median": _median([r[1] for r in rows]),
        "envelope_max": max(r[1] for r in rows),
        "sinhala_body_median": _median([r[0] for r in sinhala]),
        "sinhala_envelope_max": max((r[1] for r in sinhala), default=0),
    }


def redis_sizes(device_ids: list[int]) -> dict:
    """Bytes per phone in Redis (``MEMORY USAGE``), as deployed and as it would be otherwise; the unpack cost."""
    import zlib

    from devices import checkin_cache, checkin_record
    from devices.checkin_record import render
    from devices.models import Device, DeviceCommand
    from devices.protocol import envelope_of

    client = checkin_cache.redis_client()
    for device_id in device_ids:
        checkin_cache.fill(device_id)
    phones = len(device_ids)

    def usage(keys) -> int:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return sum(size or 0 for size in pipe.execute())

    records = [f"{checkin_cache.RECORD}{i}" for i in device_ids]
    digests = dict(Device.objects.filter(pk__in=device_ids).values_list("pk", "credential_digest"))
    others = [f"{checkin_cache.PREFIX}cred:{digests[i]}" for i in device_ids]
    others += [f"{checkin_cache.PREFIX}gen:{i}" for i in device_ids]
    dictionaries = client.keys(f"{checkin_cache.DICTIONARY}*")
    record_bytes = usage(records)
    everything = record_bytes + usage(others) + usage(dictionaries)

    # The same records as the previous format stored them (the rendered envelope) and zlib without the dictionary,
    # under scratch keys, measured the same way and deleted.
    latest = DeviceCommand.objects.filter(device_id__in=device_ids).order_by("device_id", "-seq").distinct("device_id")
    plain, zlib_only = 0, 0
    for command in latest.iterator():
        head = b"1 %s %d %d " % (digests[command.device_id].encode(), command.seq, command.seq)
        envelope = render(envelope_of(command.body.encode(), key_id=command.key_id, signature=command.signature))
        signed = render([command.key_id, command.signature]) + b"\n" + command.body.encode()
        client.set("finlock:bench:plain", head + envelope)
        client.set("finlock:bench:zlib", head + b"- " + zlib.compress(signed, checkin_record.RECORD_COMPRESSION))
        plain += usage(["finlock:bench:plain"])
        zlib_only += usage(["finlock:bench:zlib"])
    client.delete("finlock:bench:plain", "finlock:bench:zlib")

    # What a check-in answered from the Redis record spends unpacking it (dictionary already in memory).
    timings = []
    for record in client.mget(records):
        _g, _d, _r, _c, name, command = record.split(b" ", 5)
        shared = checkin_record.dictionary_get(name.decode(), lambda n: client.get(checkin_cache.DICTIONARY + n))
        started = time.perf_counter()
        for _ in range(20):
            checkin_record.record_envelope(command, shared)
        timings.append((time.perf_counter() - started) / 20 * 1e6)
    return {
        "phones": phones,
        "record_bytes_per_phone": round(record_bytes / phones),
        "all_keys_bytes_per_phone": round(everything / phones),
        "dictionaries": len(dictionaries),
        "uncompressed_record_bytes_per_phone": round(plain / phones),
        "zlib_without_dictionary_bytes_per_phone": round(zlib_only / phones),
        "unpack_microseconds_median": round(sorted(timings)[len(timings) // 2], 1),
        "unpack_microseconds_max": round(max(timings), 1),
        "target_bytes_per_phone": RECORD_TARGET,
    }


def _client(port, kind, seconds, credentials, start_at, results):
    while time.time() < start_at:
        time.sleep(0.001)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    ok = bad = 0
    i = 0
    deadline = start_at + seconds
    while time.time() < deadline:
        if kind == "bare":
            conn.request("GET", "/healthz", headers={"Host": "127.0.0.1"})
        else:
            credential = credentials[i % len(credentials)]
            body = json.dumps({"state": "locked", "last_seq": 1, "app_version": "bench"})
            conn.request(
                "POST",
                "/api/device/v1/checkin",
                body=body,
                headers={
                    "Host": "127.0.0.1",
                    "Content-Type": "application/json",
                    "Authorization": f"Device {credential}",
                },
            )
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            ok += 1
        else:
            bad += 1
        i += 1
    conn.close()
    results.put((ok, bad))


WRK_SCRIPT = """
local credentials = {%s}
local i = 0
request = function()
  i = i + 1
  local headers = {["Content-Type"] = "application/json", ["Host"] = "127.0.0.1",
                   ["Authorization"] = "Device " .. credentials[(i %% #credentials) + 1]}
  return wrk.format("POST", "/api/device/v1/checkin", headers,
                    '{"state":"locked","last_seq":1,"app_version":"bench"}')
end
"""


def load_wrk(port: int, kind: str, seconds: float, clients: int, credentials: list[str]) -> tuple[float, int]:
    """Requests per second of 2xx answers with wrk (one thread, ``clients`` connections)."""
    import re
    import tempfile

    url = f"http://127.0.0.1:{port}" + ("/healthz" if kind == "bare" else "/api/device/v1/checkin")
    cmd = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, int(seconds))}s", url]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % ", ".join(f'"{c}"' for c in credentials))
    if kind != "bare":
        cmd[1:1] = ["-s", script.name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    total = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad_count = int(bad.group(1)) if bad else 0
    duration = float(re.search(r"requests in ([\d.]+)(ms|s|m)", out).group(1) or seconds)
    return total - bad_count / max(duration, 1e-9), bad_count


def load(port: int, kind: str, seconds: float, clients: int, credentials: list[str]) -> tuple[float, int]:
    """Requests per second of 200 answers, and the count of other answers."""
    import shutil

    if shutil.which("wrk"):
        return load_wrk(port, kind, seconds, clients, credentials)
    results = multiprocessing.Queue()
    start_at = time.time() + 0.5
    share = [credentials[i::clients] for i in range(clients)]
    procs = [
        multiprocessing.Process(target=_client, args=(port, kind, seconds, share[i] or credentials, start_at, results))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    totals = [results.get() for _ in procs]
    for p in procs:
        p.join()
    ok = sum(t[0] for t in totals)
    return ok / seconds, sum(t[1] for t in totals)


def measure(args, server_env: dict, credentials: list[str]) -> tuple[float, float, int, int]:
    """Start gunicorn with ``server_env``; (check-in req/s, bare req/s, non-200 of each)."""
    port = free_port()
    server = subprocess.Popen(
        [
            str(REPO / ".venv/bin/gunicorn"),
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(args.workers),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=server_env,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        load(port, "bare", 1.0, args.clients, credentials)  # warm both paths up
        load(port, "checkin", 1.0, args.clients, credentials)
        baseline, bad_base = load(port, "bare", args.seconds, args.clients, credentials)
        value, bad_value = load(port, "checkin", args.seconds, args.clients, credentials)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return value, baseline, bad_value, bad_base


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.database_url or not args.database_url.startswith(("postgres://", "postgresql://")):
        print("bench/checkin.py needs PostgreSQL: set DATABASE_URL=postgres://...", file=sys.stderr)
        return 2
    seed = base64.b64encode(secrets.token_bytes(32)).decode()
    server_env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(60),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "DEVICE_SIGNING_KEY": f"bench:{seed}",
        "AUDIT_HMAC_KEY": os.environ.get("AUDIT_HMAC_KEY")
        or f"bench:{base64.b64encode(secrets.token_bytes(32)).decode()}",
        "DEVICE_API_RATE": "100000000/min",
        "LOG_LEVEL": "WARNING",
        # Workers are not recycled during the run: a restart's imports would be billed to
        # whichever endpoint happened to be under load.
        "GUNICORN_MAX_REQUESTS": "0",
        # No worker runs here: the commands the benchmark issues are served by check-in.
        "CELERY_BROKER_URL": "memory://",
    }
    if args.redis_url != "none":
        server_env["REDIS_URL"] = args.redis_url
    else:
        server_env.pop("REDIS_URL", None)
    os.environ.update({k: v for k, v in server_env.items() if k != "DEBUG"})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    device_ids, credentials = enrol_devices(args.devices)
    print(f"enrolled {len(credentials)} benchmark phones", flush=True)
    sizes = {"command": command_sizes(device_ids)}
    c = sizes["command"]
    print(
        f"bytes per command: body median {c['body_median']:,}, max {c['body_max']:,}; envelope median "
        f"{c['envelope_median']:,}, max {c['envelope_max']:,} (Sinhala: body median {c['sinhala_body_median']:,}, "
        f"envelope max {c['sinhala_envelope_max']:,}; a phone refuses over 32,768)"
    )
    if args.redis_url != "none":
        sizes["redis"] = r = redis_sizes(device_ids)
        print(
            f"bytes per phone in Redis: record {r['record_bytes_per_phone']:,} (uncompressed "
            f"{r['uncompressed_record_bytes_per_phone']:,}, zlib without the dictionary "
            f"{r['zlib_without_dictionary_bytes_per_phone']:,}); all its keys {r['all_keys_bytes_per_phone']:,} "
            f"({r['dictionaries']} shared dictionaries); target {RECORD_TARGET:,}"
        )
        print(f"unpacking a record: {r['unpack_microseconds_median']} µs median, {r['unpack_microseconds_max']} µs max")
    if args.sizes_only:
        print(json.dumps({"metric": "checkin_sizes", "sizes": sizes}))
        return 0 if sizes.get("redis", {}).get("all_keys_bytes_per_phone", 0) <= RECORD_TARGET else 1

    value, baseline, bad_value, bad_base = measure(args, server_env, credentials)
    print(f"bare JSON view: {baseline:,.0f} req/s ({bad_base} non-200)")
    print(f"device check-in: {value:,.0f} req/s ({bad_value} non-200)")
    levels = {}
    if args.redis_url != "none" and not args.quick:
        # The same load with each cache level switched off, so the figures say what each buys:
        # Redis alone is what a phone checking in once every few minutes gets.
        for name, overrides in (
            ("redis_only", {"CHECKIN_LOCAL_SECONDS": "0"}),
            ("database_only", {"CHECKIN_CACHE_SECONDS": "0"}),
        ):
            v, b, _bad_v, _bad_b = measure(args, {**server_env, **overrides}, credentials)
            levels[name] = {"value": round(v, 1), "baseline": round(b, 1), "ratio": round(v / b, 3) if b else 0.0}
            print(f"  {name.replace('_', ' ')}: check-in {v:,.0f} req/s against {b:,.0f} ({levels[name]['ratio']:.2f})")
    ratio = value / baseline if baseline else 0.0
    print(f"ratio {ratio:.2f} ({'ok' if ratio >= TARGET_RATIO else f'under the {TARGET_RATIO:.0%} target'})")
    print(
        json.dumps(
            {
                "metric": "checkin_requests_per_second",
                "value": round(value, 1),
                "baseline": round(baseline, 1),
                "ratio": round(ratio, 3),
                "target_ratio": TARGET_RATIO,
                "non_200": bad_value,
                "gunicorn_workers": args.workers,
                "clients": args.clients,
                "client": "wrk" if __import__("shutil").which("wrk") else "python",
                "seconds": args.seconds,
                "levels": levels,
                "sizes": sizes,
            }
        )
    )
    return 0 if ratio >= TARGET_RATIO and not bad_value else 1


if __name__ == "__main__":
    sys.exit(main())
