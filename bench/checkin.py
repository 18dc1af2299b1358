"""Load the device check-in endpoint under gunicorn against a bare Django JSON view on the same server.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/finlock_bench .venv/bin/python bench/checkin.py

Enrols ``--devices`` phones of a benchmark provider (each with a signed current command),
starts gunicorn with production settings on a free port, then drives, in the same run and
with the same client, for ``--seconds`` each:

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
The last line printed is a JSON object ``{"metric", "value", "baseline", "ratio", ...}``.
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
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _imei() -> str:
    from stdnum import luhn

    body = f"99{secrets.randbelow(10**12):012d}"  # 99: a reporting-body prefix no real phone uses
    return body + luhn.calc_check_digit(body)


def enrol_devices(count: int) -> list[str]:
    """Benchmark devices with credentials and a current signed command; returns credentials."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from demo.generator import ensure_organisations
    from devices.models import Device
    from devices.protocol import b64, enrollment_message
    from devices.services.commands import StateChange, device_states_apply
    from devices.services.enrolment import device_enroll, enrollment_challenge_issue
    from devices.services.tokens import enrollment_token_create

    provider = ensure_organisations()["dialog"]
    _token, secret = enrollment_token_create(provider=provider, name="bench", actor=None)
    devices = Device.objects.bulk_create([Device(provider=provider, imei=_imei()) for _ in range(count)])
    device_states_apply(
        changes=[
            StateChange(
                device_id=d.pk,
                state="locked",
                reason="benchmark",
                screen={"title": "Locked", "amount_overdue": "12500.00", "currency": "LKR"},
                allowed_numbers=["+94117100100", "119"],
            )
            for d in devices
        ]
    )
    credentials = []
    for device in devices:
        # As a phone enrols: a challenge signed with the device key it generates.
        key = Ed25519PrivateKey.generate()
        device_key = b64(key.public_key().public_bytes_raw())
        challenge = enrollment_challenge_issue()["challenge"]
        signature = b64(key.sign(enrollment_message(challenge=challenge, imei=device.imei, device_key=device_key)))
        enrollment = device_enroll(
            imei=device.imei,
            token_secret=secret,
            device_key=device_key,
            challenge=challenge,
            signature=signature,
            app_version="bench",
        )
        credentials.append(enrollment.credential)
    return credentials


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
    credentials = enrol_devices(args.devices)
    print(f"enrolled {len(credentials)} benchmark phones", flush=True)

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
            }
        )
    )
    return 0 if ratio >= TARGET_RATIO and not bad_value else 1


if __name__ == "__main__":
    sys.exit(main())
