"""From "payment accepted" to "signed unlock published on MQTT", with real Celery workers.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/finlock_bench REDIS_URL=redis://127.0.0.1:6379/7 \\
    MQTT_URL=mqtt://127.0.0.1:1883 .venv/bin/python bench/unlock_latency.py --payments 1000 [--backlog 100000]

Creates ``--payments`` locked contracts (a policy that lets a lock start at any hour, two
installments overdue), lets a real worker deliver their lock commands, then records one
payment per contract through ``payment_ingest`` — each clears the arrears — and times, per
phone, from the moment the payment's transaction committed to the moment its signed
``unlocked`` command arrives at an MQTT subscriber. The baseline is the broker's own round
trip for a message of the same size (publish → subscriber), measured in the same run.

Workers as production runs them: one on the "celery" queue (locks, reminders) and one on the
"unlocks" queue only. With ``--backlog N``, right before the payments a lock window opens for a
whole portfolio: N other phones get a lock command (issued set-based, 5,000 per transaction, as
the sweep does) and their delivery is queued; the payments are timed while those locks drain.

Targets: p50 ≤ 200 ms, p99 ≤ 1 s. The last line printed is a JSON object
``{"metric", "value", "baseline", "ratio", ...}`` (value = p50 in ms).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
P50_TARGET_MS, P99_TARGET_MS = 200.0, 1000.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Listener:
    """Subscribes to every device topic and notes when each phone's unlock arrives."""

    def __init__(self, url: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from devices.agent.mqtt import parse_mqtt_url

        host, port, _tls, user, password = parse_mqtt_url(url)
        self.arrived: dict[str, float] = {}
        self.watched: set[str] = set()  # the topics of the phones whose unlock is timed
        self.probe: dict[str, float] = {}
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}")
        if user:
            self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, *_a: (c.subscribe("finlock/v1/#", qos=1), self.ready.set())
        self.client.on_message = self._message
        self.client.connect(host, port)
        self.client.loop_start()
        self.ready.wait(10)

    def _message(self, _client, _userdata, message):
        now = time.perf_counter()
        if message.topic.startswith("finlock/v1/bench-probe/"):
            self.probe[message.topic] = now
            return
        if message.retain or message.topic not in self.watched:
            return  # a lock of the backlog, or an old retained message
        from devices.protocol import payload_of

        try:
            command = payload_of(json.loads(message.payload))
        except (ValueError, KeyError, TypeError):
            return
        if command.get("state") == "unlocked":
            self.arrived.setdefault(command["device"], now)

    def round_trip(self, payload: bytes, samples: int = 200) -> list[float]:
        """The broker's own publish → subscriber time, the floor under any delivery."""
        times = []
        for _ in range(samples):
            topic = f"finlock/v1/bench-probe/{uuid.uuid4().hex}"
            start = time.perf_counter()
            self.client.publish(topic, payload, qos=1).wait_for_publish(5)
            deadline = time.perf_counter() + 5
            while topic not in self.probe and time.perf_counter() < deadline:
                time.sleep(0.0005)
            times.append((self.probe.get(topic, deadline) - start) * 1000)
        return times

    def clear(self, topics):
        """Delete the retained messages the run left on the broker (the last publish is waited for)."""
        for i, topic in enumerate(topics, 1):
            info = self.client.publish(topic, b"", qos=1, retain=True)
            if i % 100 == 0:  # paho queues only so many unacknowledged messages
                info.wait_for_publish(30)
        time.sleep(1)
        self.client.loop_stop()
        self.client.disconnect()


def queue_lock_backlog(provider, n: int, run: str, *, chunk: int = 5000) -> tuple[list[str], list[int]]:
    """``n`` new phones of ``provider`` get a lock command, issued set-based and queued on commit.

    Returns the phones' uids and the commands' ids.

    What the sweep does when a lock window opens for a whole portfolio: devices created with
    bulk_create, then one ``device_states_apply`` (one transaction, a fixed number of queries)
    per ``chunk`` phones, each queueing its deliveries once it commits.
    """
    from bench.checkin import _imei
    from devices.models import Device
    from devices.services.commands import StateChange, device_states_apply
    from payments.locks.screen import ProviderScreenData, screen_without_contract

    data = ProviderScreenData.load(provider)
    allowed = data.allowed_numbers()
    uids: list[str] = []
    command_ids: list[int] = []
    for start in range(0, n, chunk):
        devices = Device.objects.bulk_create(
            [
                Device(provider=provider, imei=_imei(), serial_number=f"BACKLOG-{run}-{i}")
                for i in range(start, min(n, start + chunk))
            ]
        )
        if devices[0].pk is None:
            devices = list(Device.objects.filter(serial_number__startswith=f"BACKLOG-{run}-", command_seq=0))
        changes = [
            StateChange(
                device_id=device.pk,
                state="locked",
                reason="Installment overdue (benchmark backlog).",
                screen=screen_without_contract(data=data, device=device),
                allowed_numbers=allowed,
            )
            for device in devices
        ]
        commands = device_states_apply(changes=changes)  # the deliveries are queued as it commits
        command_ids.extend(command.pk for command in commands)
        uids.extend(str(device.uid) for device in devices)
    return uids, command_ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help='processes of the "celery" worker (locks)')
    parser.add_argument("--unlock-workers", type=int, default=1, help='processes of the "unlocks" worker')
    parser.add_argument("--backlog", type=int, default=0, help="lock commands queued for other phones first")
    args = parser.parse_args(argv)
    for name in ("DATABASE_URL", "MQTT_URL"):
        if not os.environ.get(name):
            print(f"bench/unlock_latency.py needs {name} (PostgreSQL, Redis and Mosquitto)", file=sys.stderr)
            return 2
    if not (os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL")):
        print("bench/unlock_latency.py needs REDIS_URL (the Celery broker)", file=sys.stderr)
        return 2
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    from demo.generator import ensure_organisations
    from devices.models import Device
    from devices.protocol import topic_for
    from payments.contracts.services import customer_create
    from payments.ledger.services import payment_ingest
    from payments.locks.services import lock_sweep
    from payments.models import Contract, LockPolicy

    call_command("migrate", verbosity=0)
    provider = ensure_organisations()["dialog"]
    LockPolicy.objects.update_or_create(
        provider=provider, defaults={"lock_start_hour": 0, "lock_end_hour": 24, "lock_weekdays": list(range(7))}
    )
    run = uuid.uuid4().hex[:6].upper()
    print(f"creating {args.payments} locked contracts (run {run})", flush=True)
    from bench.checkin import _imei
    from payments.contracts.services import contract_create

    first_due = provider.today() - dt.timedelta(days=40)
    contracts = []
    for i in range(args.payments):
        device = Device.objects.create(provider=provider, imei=_imei())
        customer = customer_create(provider=provider, actor=None, name=f"Bench {i}", phone=f"+9477{i:07d}")
        contracts.append(
            contract_create(
                provider=provider,
                actor=None,
                number=f"LAT-{run}-{i}",
                device=device,
                customer=customer,
                cash_price=Decimal("60000"),
                down_payment=Decimal("10000"),
                installment_count=6,
                frequency="monthly",
                first_due_date=first_due,
            )
        )

    listener = Listener(os.environ["MQTT_URL"])
    env = dict(os.environ)
    # The workers as production runs them: locks and reminders on "celery", unlocks on their own queue.
    workers = [
        subprocess.Popen(
            [str(REPO / ".venv/bin/celery"), "-A", "config", "worker", "-Q", queue, "--concurrency", str(n)]
            + ["--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
            + ["--hostname", f"bench-{queue}-{run}@%h"],
            cwd=REPO,
            env=env,
        )
        for queue, n in (("celery", args.workers), ("unlocks", args.unlock_workers))
    ]
    backlog_uids: list[str] = []
    backlog_ids: list[int] = []
    backlog_seconds = drained_during = 0.0
    try:
        lock_sweep()  # the locks, delivered by the worker before the timed part
        uids = {c.pk: str(Device.objects.get(pk=c.device_id).uid) for c in contracts}
        assert Contract.objects.filter(pk__in=uids, lock_state="locked").count() == len(contracts), "not all locked"
        # Steady state first: the worker has pushed every lock before the first payment, so
        # the timed unlocks do not queue behind a backlog of lock deliveries.
        from devices.models import DeviceCommand

        pending = DeviceCommand.objects.filter(device__contracts__pk__in=uids, delivered_at__isnull=True)
        deadline = time.perf_counter() + 300
        while pending.exists() and time.perf_counter() < deadline:
            time.sleep(0.5)
        baseline_samples = listener.round_trip(b"x" * 2000)
        listener.watched = {topic_for(uid) for uid in uids.values()}

        if args.backlog:
            started = time.perf_counter()
            backlog_uids, backlog_ids = queue_lock_backlog(provider, args.backlog, run)
            backlog_seconds = time.perf_counter() - started
            print(f"backlog: {args.backlog} lock commands issued and queued in {backlog_seconds:.1f} s", flush=True)

        accepted: dict[str, float] = {}
        received_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        for contract in contracts:
            payment_ingest(
                provider=provider,
                channel="mobile_money",
                external_id=f"{contract.number}-PAY",
                amount=Decimal("16666.66"),
                currency=provider.currency,
                received_at=received_at,
                reference=contract.number,
            )
            accepted[uids[contract.pk]] = time.perf_counter()  # committed: payment_ingest is atomic
        deadline = time.perf_counter() + 120
        while len(set(accepted) & set(listener.arrived)) < len(accepted) and time.perf_counter() < deadline:
            time.sleep(0.05)
        if backlog_ids:
            # How far the backlog had drained when the last unlock arrived: the unlocks did not wait for it.
            waiting = sum(
                DeviceCommand.objects.filter(pk__in=backlog_ids[i : i + 10000], delivered_at__isnull=True).count()
                for i in range(0, len(backlog_ids), 10000)
            )
            drained_during = 1 - waiting / len(backlog_ids)
            print(f"backlog: {waiting} of {len(backlog_ids)} locks still queued after the last unlock", flush=True)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
        if backlog_ids:
            from config.celery import app

            app.control.purge()  # what the backlog left queued must not reach the next run's workers
    latencies = [(listener.arrived[uid] - t) * 1000 for uid, t in accepted.items() if uid in listener.arrived]
    listener.clear(topic_for(uid) for uid in [*uids.values(), *backlog_uids])
    missing = len(accepted) - len(latencies)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    base = statistics.median(baseline_samples)
    print(f"unlock published: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms, missing {missing}")
    print(f"broker round trip (baseline): median {base:.2f} ms")
    ok = p50 <= P50_TARGET_MS and p99 <= P99_TARGET_MS and not missing
    print(f"targets p50 <= {P50_TARGET_MS:.0f} ms, p99 <= {P99_TARGET_MS:.0f} ms: {'ok' if ok else 'missed'}")
    print(
        json.dumps(
            {
                "metric": "unlock_latency_p50_ms",
                "value": round(p50, 1),
                "baseline": round(base, 2),
                "ratio": round(p50 / base, 1) if base else None,
                "p99_ms": round(p99, 1),
                "max_ms": round(max(latencies), 1),
                "payments": len(accepted),
                "missing": missing,
                "workers": args.workers,
                "unlock_workers": args.unlock_workers,
                "backlog": args.backlog,
                "backlog_setup_s": round(backlog_seconds, 1),
                "backlog_drained_during": round(drained_during, 3),
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
