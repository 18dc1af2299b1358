"""Protocol v2 end to end: a contract's money moves a real phone agent through every state.

PostgreSQL, Redis, a Celery worker (both command queues) and Mosquitto are real; the phone is
the reference agent (devices/agent/) talking HTTP to a live server and listening on its MQTT
topic with the account from its enrolment. The server's clock is real time; as in
tests/test_lock_end_to_end.py the sweep is run at the moment a story needs. The phone's clocks
are moved by hand (``tests.test_agent.Clock``): leases run on its monotonic clock from the
command's ``issued_at``, and the wall clock, which the owner may set to anything, only stamps
its log.

Stories (docs/lock-pipeline.md, "The command", "Offline leases", "Offline codes"):

* a dual-SIM phone enrolled with its SECOND IMEI is reminded, then locked by the sweep over MQTT
  and acknowledges (the portal sees it); the owner pays the arrears and the unlock arrives over
  MQTT with a lease; near the lease's end the phone warns; the contract is paid off and
  ``released`` arrives over MQTT;
* offline, a phone under a 7-day policy warns 3 days before its lease ends, whatever its wall
  clock says; past the lease, outside the lock window, it reminds until the window opens, then
  locks; an offline code of 3 days issued with four eyes unlocks it for 3 days; the owner pays,
  the phone checks in and is answered ``unlocked`` with a new lease.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from devices.agent import Agent
from devices.agent.client import HttpTransport
from devices.agent.mqtt import MqttListener
from devices.agent.phone import parse_wire_time
from devices.models import Device
from devices.protocol import topic_for
from devices.services.offline import offline_code_issue
from devices.services.tokens import enrollment_token_create
from payments.ledger.services import payment_ingest
from payments.locks.services import lock_policy_update, lock_sweep
from payments.models import Contract, PaymentChannel
from tests.conftest import signed_in
from tests.factories import DeviceFactory, UserFactory, make_contract, make_imei
from tests.test_agent import START, Clock, FakeTransport, Provider, agent_at, reads, wire
from tests.test_lock_end_to_end import clear_retained, wait_for

DAY = dt.timedelta(days=1)
GRACE_DAYS = 3
LOCK_HOURS = (8, 18)


def local(day: dt.date, hour: int, zone, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=zone).astimezone(dt.UTC)


def shown_local(moment: dt.datetime, zone) -> str:
    """How the phone writes a moment on its screen: local time with the UTC offset."""
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M") + " (UTC+05:30)"


class Story:
    """One contract and its provider's policy, with the moments the story needs.

    The first installment fell due a week ago; the phone's lease after the owner pays it ends
    when the second becomes lockable (``paid_until``: its due date + grace + 1 day, 08:00 in
    Colombo). That weekday is left out of the lock window, so a lease lock must wait a day.
    """

    def __init__(self, provider, admin, number: str, device: Device):
        self.provider, self.zone = provider, provider.zone
        PaymentChannel.objects.get_or_create(
            provider=provider, kind="mobile_money", name="eZ Cash", account="#111#", reference="{contract}"
        )
        self.contract = make_contract(provider, number=number, device=device, first_due_date=provider.today() - 7 * DAY)
        self.installments = list(self.contract.installments.order_by("number"))
        self.lockable = [
            local(i.due_date + (GRACE_DAYS + 1) * DAY, LOCK_HOURS[0], self.zone) for i in self.installments
        ]
        self.weekdays = [d for d in range(7) if d != self.lockable[1].astimezone(self.zone).weekday()]
        self.policy = lock_policy_update(
            provider=provider,
            actor=admin,
            grace_days=GRACE_DAYS,
            lock_start_hour=LOCK_HOURS[0],
            lock_end_hour=LOCK_HOURS[1],
            lock_weekdays=self.weekdays,
            offline_lock_days=7,
            offline_warning_days=3,
        )
        self.paid = 0

    @property
    def device(self) -> Device:
        return Device.objects.get(pk=self.contract.device_id)

    def sweep_day(self, earliest: dt.date) -> dt.datetime:
        """10:00 in Colombo on the first day from ``earliest`` on which a lock may start."""
        day = earliest
        while day.weekday() not in self.weekdays:
            day += DAY
        return local(day, 10, self.zone)

    def pay(self, count: int, tag: str):
        """The owner pays the next ``count`` installments through the payments service (a mobile-money API)."""
        due = self.installments[self.paid : self.paid + count]
        amount = sum((i.amount_due for i in due), Decimal("0"))
        payment, created = payment_ingest(
            provider=self.provider,
            channel="mobile_money",
            external_id=f"{self.contract.number}-{tag}",
            amount=amount,
            currency=self.provider.currency,
            received_at=timezone.now() - dt.timedelta(minutes=1),
            reference=self.contract.number,
        )
        assert created and payment.status == "matched" and payment.contract_id == self.contract.pk
        self.paid += count
        return payment


def command_of(phone: Agent) -> dict:
    """The command in force on the phone, as it verified it."""
    command = phone.phone.command
    assert command is not None
    return command


def trusted_now(phone: Agent, clock: Clock) -> dt.datetime:
    return phone.phone.trusted_now(clock.mono)


def live_until(phone: Agent, clock: Clock, moment: dt.datetime) -> tuple[str, bool]:
    """Let the phone's monotonic clock run until its trusted time is ``moment``; (state, warning) shown."""
    clock.advance(seconds=(moment - trusted_now(phone, clock)).total_seconds())
    phone.tick()
    view = phone.view()
    return view.state, view.warning


def reported(device_id: int) -> str:
    return Device.objects.get(pk=device_id).reported_state


def enrol(live_server, tmp_path, provider, clock: Clock, imei: str, imeis: list[str] | None = None) -> Agent:
    _token, secret = enrollment_token_create(provider=provider, name="shop", actor=None)
    phone = agent_at(tmp_path / "phone", clock, transport=HttpTransport(timeout=10))
    (phone.user_data_dir / "photos.txt").write_text("the owner's photos")
    outcome = phone.enroll(live_server.url, imei, secret, imeis=imeis)
    assert outcome.accepted and phone.view().state == "unlocked"
    return phone


@contextlib.contextmanager
def pipeline(phone: Agent) -> Iterator[MqttListener]:
    """A Celery worker on both command queues and the phone listening on its MQTT topic."""
    from celery.contrib.testing.worker import start_worker

    from config.celery import app

    listener = MqttListener(phone, settings.MQTT_URL).start()
    try:
        assert listener.wait_subscribed(10), "the phone could not subscribe to its topic"
        # Locks and reminders travel on "celery", unlocks and releases on "unlocks" (devices/delivery.py).
        with start_worker(app, queues=["celery", "unlocks"], perform_ping_check=False, pool="solo", loglevel="WARNING"):
            yield listener
    finally:
        listener.stop()


@pytest.fixture
def clock():
    """The phone's clocks: its wall clock starts at the real time, its monotonic clock at 1,000 s."""
    return Clock(now=timezone.now())


@pytest.fixture
def retained_cleared():
    """Each delivery leaves a retained command on the phone's topic: cleared after the story."""
    devices: list[Device] = []
    yield devices
    if settings.MQTT_URL:
        for device in devices:
            clear_retained(topic_for(str(device.uid)))


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.mqtt
@pytest.mark.django_db(transaction=True)
def test_a_dual_sim_phone_enrolled_with_its_second_imei_is_reminded_locked_unlocked_warned_and_released(
    live_server, tmp_path, provider_a, admin_a, agent_a, client, clock, retained_cleared
):
    first_imei, second_imei = make_imei(), make_imei()
    story = Story(
        provider_a, admin_a, "DLG-V2-1", DeviceFactory(provider=provider_a, imei=first_imei, imei2=second_imei)
    )
    device_id = story.contract.device_id
    retained_cleared.append(story.device)
    phone = enrol(live_server, tmp_path, provider_a, clock, second_imei, imeis=[first_imei])
    assert phone.state.enrolment.imei == second_imei

    with pipeline(phone):
        # Two days late, within grace: a reminder, leased for the 7 offline days.
        assert lock_sweep(now=local(story.installments[0].due_date + 2 * DAY, 10, story.zone)).changed == {
            "reminder": 1
        }
        wait_for(lambda: phone.view().state == "reminder", what="the reminder on the phone")
        wait_for(lambda: reported(device_id) == "reminder", what="the reminder's acknowledgement")
        reminder = command_of(phone)
        assert sorted(reminder["imeis"]) == sorted([first_imei, second_imei])
        assert parse_wire_time(reminder["lease_until"]) == parse_wire_time(reminder["issued_at"]) + 7 * DAY

        # Past grace, inside the lock window: the sweep locks it.
        lock_at = story.sweep_day(story.installments[0].due_date + (GRACE_DAYS + 1) * DAY)
        assert lock_sweep(now=lock_at).changed == {"locked": 1}
        wait_for(lambda: phone.view().state == "locked", what="the lock on the phone")
        wait_for(lambda: reported(device_id) == "locked", what="the lock's acknowledgement")
        locked = command_of(phone)
        assert locked["state"] == "locked" and locked["lease_until"] is None  # a lock has no lease
        assert phone.log[-1]["source"] == "mqtt"
        screen = reads(phone)
        for expected in ("8,333.33", "DLG-V2-1", "+94777575727", "#111#", "Dialog Finance"):
            assert expected in screen, expected
        page = signed_in(client, agent_a).get(f"/devices/{device_id}/").content.decode()
        assert "Phone reports" in page and page.count("badge-bad") >= 2  # should be locked, reports locked

        # The owner pays the arrears: the unlock arrives over MQTT, leased until the next installment locks.
        story.pay(1, "arrears")
        wait_for(lambda: phone.view().state == "unlocked", what="the unlock on the phone")
        wait_for(lambda: reported(device_id) == "unlocked", what="the unlock's acknowledgement")
        unlocked = command_of(phone)
        assert phone.log[-1]["source"] == "mqtt" and unlocked["seq"] == locked["seq"] + 1
        lease = parse_wire_time(unlocked["lease_until"])
        assert lease == parse_wire_time(unlocked["paid_until"]) == story.lockable[1]
        assert (unlocked["lease_expiry_state"], unlocked["lease_warning_days"]) == ("locked", 3)
        assert unlocked["lock_window"] == {"start_hour": 8, "end_hour": 18, "weekdays": story.weekdays}

        # The phone hears commands but never checks in: three days before its lease ends it warns.
        assert live_until(phone, clock, lease - 3 * DAY - dt.timedelta(hours=1)) == ("unlocked", False)
        assert live_until(phone, clock, lease - 3 * DAY + dt.timedelta(minutes=1)) == ("unlocked", True)
        # The lease ends on a day no lock may start: the lock would wait for the next day's window.
        assert f"This phone will be locked from {shown_local(lease + DAY, story.zone)}" in reads(phone)
        assert phone.log[-1]["event"] == "lease_warning"

        # The owner pays everything that is left: released for good, over MQTT.
        story.pay(len(story.installments) - 1, "rest")
        wait_for(lambda: phone.view().state == "released", what="the release on the phone")
        wait_for(lambda: reported(device_id) == "released", what="the release's acknowledgement")

    assert Contract.objects.get(pk=story.contract.pk).status == "paid_off"
    released = command_of(phone)
    assert released["state"] == "released" and released["lease_until"] is None
    assert not phone.view().warning and phone.log[-1]["source"] == "mqtt"
    assert live_until(phone, clock, trusted_now(phone, clock) + 365 * DAY) == ("released", False)
    assert (phone.user_data_dir / "photos.txt").read_text() == "the owner's photos"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.mqtt
@pytest.mark.django_db(transaction=True)
def test_offline_the_phone_warns_reminds_then_locks_a_code_buys_days_and_a_payment_renews_its_lease(
    live_server, tmp_path, provider_a, admin_a, technician, clock, retained_cleared
):
    story = Story(provider_a, admin_a, "DLG-V2-2", DeviceFactory(provider=provider_a))
    device_id = story.contract.device_id
    retained_cleared.append(story.device)
    phone = enrol(live_server, tmp_path, provider_a, clock, story.device.imei)

    with pipeline(phone) as listener:
        assert lock_sweep(now=story.sweep_day(story.installments[0].due_date + (GRACE_DAYS + 1) * DAY)).changed == {
            "locked": 1
        }
        wait_for(lambda: phone.view().state == "locked", what="the lock on the phone")
        story.pay(1, "arrears")
        wait_for(lambda: phone.view().state == "unlocked", what="the unlock on the phone")
        wait_for(lambda: reported(device_id) == "unlocked", what="the unlock's acknowledgement")

        # The unlock carries the lease and everything the phone needs to keep it alone.
        unlocked = command_of(phone)
        lease = parse_wire_time(unlocked["lease_until"])
        assert lease == story.lockable[1] and unlocked["lease_expiry_state"] == "locked"
        assert (unlocked["offline_lock_days"], unlocked["lease_warning_days"]) == (7, 3)
        assert unlocked["time_zone"] == "Asia/Colombo"
        assert unlocked["lock_window"] == {"start_hour": 8, "end_hour": 18, "weekdays": story.weekdays}
        assert lease.astimezone(story.zone).weekday() not in story.weekdays

        # SIM out: the phone hears nothing more and cannot check in.
        listener.stop()
        assert live_until(phone, clock, lease - 3 * DAY - dt.timedelta(minutes=1)) == ("unlocked", False)
        assert live_until(phone, clock, lease - 3 * DAY + dt.timedelta(minutes=1)) == ("unlocked", True)
        warning = reads(phone)
        assert f"This phone will be locked from {shown_local(lease + DAY, story.zone)}" in warning
        assert "connect to the internet" in warning and "+94777575727" in warning

        # The owner sets the date a year ahead, then a year back: the lease neither ends early nor later.
        clock.set_wall_clock(timezone.now() + 365 * DAY)
        assert live_until(phone, clock, lease - dt.timedelta(minutes=1)) == ("unlocked", True)
        clock.set_wall_clock(timezone.now() - 365 * DAY)

        # Past the lease, on a day no lock may start: a reminder that says when the lock comes.
        assert live_until(phone, clock, lease + dt.timedelta(minutes=1)) == ("reminder", True)
        assert "has not heard from the server since" in reads(phone)
        assert f"locked from {shown_local(lease + DAY, story.zone)}" in reads(phone)
        assert phone.log[-1]["event"] == "lease_expired"
        # The window opens at 08:00 the next day: locked.
        assert live_until(phone, clock, lease + DAY - dt.timedelta(minutes=1)) == ("reminder", True)
        assert live_until(phone, clock, lease + DAY + dt.timedelta(minutes=1)) == ("locked", False)
        assert live_until(phone, clock, lease + DAY + dt.timedelta(hours=11)) == ("locked", False)  # 19:00: stays

        # The owner calls the hotline: a technician asks for a 3-day code, an admin approves it.
        approver = UserFactory(username="admin.approver", organisation=provider_a, role="provider_admin")
        code = offline_code_issue(
            device=story.device,
            kind="unlock_days",
            days=3,
            requested_by=technician,
            approved_by=approver,
            reason="owner abroad without data; promises to pay",
        )
        entered_at = trusted_now(phone, clock)
        result = phone.enter_code(code.token)
        assert result.ok and result.days == 3
        view = phone.view()
        assert (view.state, view.offline_unlock, view.expires_at) == ("temp_unlocked", True, entered_at + 3 * DAY)
        assert not phone.enter_code(code.token).ok  # a code works once
        assert live_until(phone, clock, entered_at + 3 * DAY - dt.timedelta(minutes=1))[0] == "temp_unlocked"
        # The code was typed at 19:00, so its days end at 19:00, when no lock may start: a reminder
        # (the lease now ends with the code's days), then locked when the window opens next morning.
        ended = entered_at + 3 * DAY
        assert live_until(phone, clock, ended + dt.timedelta(minutes=1)) == ("reminder", True)
        back_at = local(ended.astimezone(story.zone).date() + DAY, LOCK_HOURS[0], story.zone, minute=1)
        assert live_until(phone, clock, back_at) == ("locked", False)

        # Meanwhile the server's own sweep (run at the phone's moment) locked it too; the phone heard nothing.
        assert lock_sweep(now=back_at).changed == {"locked": 1}
        assert phone.view().state == "locked" and reported(device_id) == "unlocked"

        # The owner pays; the phone gets a signal back and checks in.
        story.pay(1, "second")
        outcome = phone.checkin()

    assert outcome.accepted and outcome.state == "unlocked"
    renewed = command_of(phone)
    assert renewed["state"] == "unlocked" and renewed["seq"] == unlocked["seq"] + 2
    assert parse_wire_time(renewed["lease_until"]) == story.lockable[2] > lease
    assert parse_wire_time(renewed["issued_at"]) >= parse_wire_time(unlocked["issued_at"])  # to the second
    view = phone.view()
    # Usable, no warning: trusted time stays where it was (past the code's days), so the screen says
    # "unlocked" (test_a_command_delivered_late_never_turns_trusted_time_back).
    assert view.state == "unlocked" and not view.warning
    assert reported(device_id) == "unlocked"
    assert Device.objects.get(pk=device_id).last_checkin_at is not None
    assert (phone.user_data_dir / "photos.txt").read_text() == "the owner's photos"


def test_a_command_delivered_late_never_turns_trusted_time_back(tmp_path):
    """The owner holds back an unlock (a proxy in front of the phone) and feeds it after the lease ran out.

    Applying it must not give back the days it was held: trusted time only moves forward, so the
    phone stays past that command's lease.
    """
    clock = Clock(now=START)
    provider = Provider(clock=clock)
    phone = agent_at(tmp_path / "phone", clock, transport=FakeTransport())
    provider.enrol(phone)
    lease = {"lease_expiry_state": "locked", "lease_warning_days": 3, "offline_lock_days": 10}
    assert phone.handle_envelope(provider.envelope("unlocked", lease_until=wire(START + 10 * DAY), **lease)).accepted
    clock.advance(days=1)
    held_back = provider.envelope("unlocked", lease_until=wire(START + 11 * DAY), **lease)  # signed on day 1

    clock.advance(days=11)  # day 12: past both leases
    assert live_until(phone, clock, START + 12 * DAY) == ("locked", False)
    assert phone.handle_envelope(held_back).accepted  # newer, so applied

    assert trusted_now(phone, clock) == START + 12 * DAY
    assert phone.view().state == "locked"
