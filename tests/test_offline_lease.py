"""A provider turns on the offline lock: a phone that stops reaching finlock locks itself, never before its money would.

Stories:
* a provider admin sets "lock after 7 days offline, warn 3 days before" on the lock-policy page (audited);
* the next command of a phone whose next installment is weeks away carries a lease to that installment's
  lock moment (due date + grace, at the start of the lock window, in the provider's zone), and a phone
  overdue within grace carries now + 7 days; a locked phone's command has no lease; a dispute hold's lease
  ends in a reminder; without the setting (the default) no command has a lease;
* a check-in after the renew moment is answered a renewed lease (the same state, a new seq); one before it
  is answered the command in force, in two queries;
* staff see the phones not heard from for more than N days (the provider's warning days by default), with
  the last check-in in the provider's zone; another provider's list is a 404.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.keys import public_keys
from devices.models import Device, DeviceCommand
from devices.protocol import check_command, open_envelope
from devices.services.checkin import device_checkin
from devices.services.commands import wire_time
from payments.locks.decision import lock_eligible_at
from payments.locks.refresh import lock_leases_refresh_batch
from payments.locks.selectors import decide_contract, policy_rules
from payments.locks.services import contract_dispute_hold, contract_lock_evaluate, lock_sweep
from payments.models import Contract, LockPolicy, LockRefresh
from portal.models import AuditEvent
from tests.factories import DeviceFactory, make_contract

POLICY = {
    "grace_days": "3",
    "reminder_days_before": "3, 1",
    "reminder_days_after": "1, 2",
    "lock_start_hour": "8",
    "lock_end_hour": "18",
    "lock_weekdays": ["0", "1", "2", "3", "4", "5", "6"],
    "max_temp_unlock_hours": "72",
    "unlock_alert_minutes": "15",
    "provisional_installments": "1",
    "provisional_max_amount": "",
    "provisional_confirm_days": "7",
    "offline_lock_days": "7",
    "offline_warning_days": "3",
}


def payload(device_id: int) -> dict:
    """The phone's view of its newest command: verified and checked as the phone does."""
    command = DeviceCommand.objects.filter(device_id=device_id).order_by("-seq").first()
    return check_command(open_envelope(command.envelope, public_keys()))


def at(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


@pytest.fixture
def offline_on(as_user, admin_a, provider_a):
    """The provider admin turns the offline lock on: 7 days, a warning 3 days before, locks from 08:00 to 18:00."""
    response = as_user(admin_a).post("/locks/policy/", POLICY)
    assert response.status_code == 302
    return LockPolicy.objects.get(provider=provider_a)


@pytest.fixture
def morning(provider_a):
    """10:00 today in Colombo: inside the lock window."""
    return dt.datetime.combine(provider_a.today(), dt.time(10), tzinfo=provider_a.zone)


def overdue_contract(provider, *, days_late: int, number: str) -> Contract:
    return make_contract(provider, number=number, first_due_date=provider.today() - dt.timedelta(days=days_late))


# --- the policy page ---------------------------------------------------------------------------


def test_the_admin_turns_the_offline_lock_on_in_plain_words_and_the_change_is_audited(as_user, admin_a, offline_on):
    assert (offline_on.offline_lock_days, offline_on.offline_warning_days) == (7, 3)
    rules = offline_on.rules()
    assert (rules.offline_lock_days, rules.offline_warning_days) == (7, 3)
    event = AuditEvent.objects.get(action="lock_policy.change")
    assert event.before["offline_lock_days"] is None and event.after["offline_lock_days"] == 7
    page = as_user(admin_a).get("/locks/policy/").content.decode()
    assert "A phone that has not reached finlock for this many days locks itself" in page
    assert 'name="offline_lock_days"' in page and 'value="7"' in page


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"offline_lock_days": "2"}, "offline_lock_days", "At least 3 days"),
        ({"offline_lock_days": "201"}, "offline_lock_days", "At most 200 days"),
        ({"offline_warning_days": "0"}, "offline_warning_days", "At least 1 day"),
        ({"offline_warning_days": "11"}, "offline_warning_days", "At most 10 days"),
        ({"offline_lock_days": "5", "offline_warning_days": "5"}, "offline_warning_days", "fewer than the 5 offline"),
    ],
)
def test_an_offline_setting_out_of_bounds_is_named_and_nothing_changes(
    as_user, admin_a, provider_a, changes, field, message
):
    response = as_user(admin_a).post("/locks/policy/", {**POLICY, **changes})
    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    assert not LockPolicy.objects.filter(provider=provider_a).exists()
    assert not AuditEvent.objects.filter(action="lock_policy.change").exists()


def test_off_is_the_default_and_an_empty_field_turns_it_off(as_user, admin_a, provider_a, offline_on):
    assert LockPolicy(provider=provider_a).offline_lock_days is None
    assert as_user(admin_a).post("/locks/policy/", {**POLICY, "offline_lock_days": ""}).status_code == 302
    assert LockPolicy.objects.get(provider=provider_a).offline_lock_days is None


# --- the lease in the commands -----------------------------------------------------------------


def test_a_phone_whose_next_installment_is_weeks_away_may_stay_offline_until_that_installment_locks(
    provider_a, offline_on, morning
):
    contract = overdue_contract(provider_a, days_late=10, number="DLG-500")
    assert contract_lock_evaluate(contract=contract, now=morning) == "locked"
    # The owner pays the late installment; the next one is about 20 days away.
    first, second = contract.installments.order_by("number")[:2]
    first.amount_paid = first.amount_due
    first.save()
    assert 18 <= (second.due_date - provider_a.today()).days <= 22

    assert contract_lock_evaluate(contract=contract, now=morning) == "unlocked"

    command = payload(contract.device_id)
    lockable = dt.datetime.combine(second.due_date + dt.timedelta(days=4), dt.time(8), tzinfo=provider_a.zone)
    assert command["paid_until"] == wire_time(lockable)
    assert command["lease_until"] == command["paid_until"]  # the money's moment is later than 7 days from now
    assert at(command["lease_until"]) > at(command["issued_at"]) + dt.timedelta(days=7)
    assert command["lease_expiry_state"] == "locked" and command["lease_warning_days"] == 3
    assert command["offline_lock_days"] == 7 and command["time_zone"] == "Asia/Colombo"
    assert command["lock_window"] == {"start_hour": 8, "end_hour": 18, "weekdays": [0, 1, 2, 3, 4, 5, 6]}


def test_the_lease_never_ends_before_the_server_itself_would_lock(provider_a, offline_on):
    """paid_until is the first moment ``decide`` locks: a second earlier it still reminds."""
    contract = overdue_contract(provider_a, days_late=0, number="DLG-501")
    rules, zone = policy_rules(provider_a), provider_a.zone
    due = contract.installments.order_by("number").first().due_date
    lockable = lock_eligible_at(earliest_unpaid_due=due, rules=rules, zone=zone)
    assert lockable.tzinfo == dt.UTC and lockable.astimezone(zone).hour == 8
    contract.refresh_from_db()
    assert decide_contract(contract, rules=rules, now=lockable).state == "locked"
    assert decide_contract(contract, rules=rules, now=lockable - dt.timedelta(seconds=1)).state == "reminder"
    assert lock_eligible_at(earliest_unpaid_due=None, rules=rules, zone=zone) is None


def test_a_phone_overdue_within_grace_may_stay_offline_seven_days(provider_a, offline_on, morning):
    contract = overdue_contract(provider_a, days_late=1, number="DLG-502")

    assert lock_sweep(now=morning).changed == {"reminder": 1}

    command = payload(contract.device_id)
    assert command["state"] == "reminder"
    assert at(command["lease_until"]) == at(command["issued_at"]) + dt.timedelta(days=7)
    assert at(command["paid_until"]) < at(command["lease_until"])
    assert command["lease_expiry_state"] == "locked"
    device = Device.objects.get(pk=contract.device_id)
    assert device.lease_renew_at == at(command["lease_until"]) - dt.timedelta(days=3.5)


def test_a_locked_phone_has_no_lease(provider_a, offline_on, morning):
    contract = overdue_contract(provider_a, days_late=10, number="DLG-503")

    assert lock_sweep(now=morning).changed == {"locked": 1}

    command = payload(contract.device_id)
    assert command["state"] == "locked"
    assert command["lease_until"] is None and command["lease_expiry_state"] is None
    assert command["offline_lock_days"] == 7 and command["paid_until"] is not None  # the inputs, for the record


def test_a_dispute_holds_lease_ends_in_a_reminder_never_a_lock(provider_a, offline_on, morning, finance_a):
    late = overdue_contract(provider_a, days_late=10, number="DLG-504")
    current = overdue_contract(provider_a, days_late=-20, number="DLG-505")
    lock_sweep(now=morning)

    contract_dispute_hold(contract=late, actor=finance_a, reason="Disputes the charge", now=morning)
    # Its state does not change (nothing is due), but its lease's end does: the command is issued again.
    contract_dispute_hold(contract=current, actor=finance_a, reason="Disputes the price", now=morning)

    for contract, state in ((late, "reminder"), (current, "unlocked")):
        command = payload(contract.device_id)
        assert command["state"] == state and command["lease_until"] is not None
        assert command["lease_expiry_state"] == "reminder"
    assert payload(current.device_id)["seq"] == 1


def test_without_the_setting_no_command_has_a_lease(provider_a, morning):
    contract = overdue_contract(provider_a, days_late=1, number="DLG-506")

    lock_sweep(now=morning)

    command = payload(contract.device_id)
    assert command["state"] == "reminder"
    assert command["lease_until"] is None and command["lease_expiry_state"] is None
    assert command["offline_lock_days"] is None and command["paid_until"] is not None
    assert command["lease_warning_days"] == 3 and command["time_zone"] == "Asia/Colombo"
    assert Device.objects.get(pk=contract.device_id).lease_renew_at is None


def test_the_sweep_costs_the_same_queries_for_2_or_12_leased_phones(provider_a, offline_on, morning):
    def sweep_of(n: int, tag: str) -> int:
        for i in range(n):
            overdue_contract(provider_a, days_late=1 + i % 2, number=f"DLG-{tag}{i}")
        with CaptureQueriesContext(connection) as ctx:
            assert sum(lock_sweep(now=morning).changed.values()) == n
        return len(ctx.captured_queries)

    assert sweep_of(2, "A") == sweep_of(12, "B")
    assert DeviceCommand.objects.filter(lease_until__isnull=False).count() == 14


# --- check-in renews -------------------------------------------------------------------------


def test_a_check_in_after_the_renew_moment_answers_a_renewed_lease_and_one_before_does_not(
    provider_a, offline_on, morning, django_assert_num_queries
):
    contract = overdue_contract(provider_a, days_late=1, number="DLG-507")
    lock_sweep(now=morning)
    device = Device.objects.get(pk=contract.device_id)
    device_checkin(device=device, state="reminder", last_seq=1)  # the phone reports what it applied
    device.refresh_from_db()

    with django_assert_num_queries(2):  # "seen now" and the command in force: nothing renewed yet
        answer = device_checkin(device=device, state="reminder", last_seq=1)
    assert DeviceCommand.objects.filter(device=device).count() == 1
    assert check_command(open_envelope(answer, public_keys()))["seq"] == 1

    # Three and a half days later (half the offline period): the renew moment has passed.
    past = timezone.now() - dt.timedelta(minutes=1)
    Device.objects.filter(pk=device.pk).update(lease_renew_at=past)
    DeviceCommand.objects.filter(device=device).update(lease_renew_at=past)
    device.refresh_from_db()
    before = payload(device.pk)

    renewed = check_command(open_envelope(device_checkin(device=device, state="reminder", last_seq=1), public_keys()))

    assert renewed["seq"] == 2 and renewed["state"] == "reminder"
    assert at(renewed["lease_until"]) >= at(before["lease_until"])
    assert at(renewed["lease_until"]) == at(renewed["issued_at"]) + dt.timedelta(days=7)
    assert renewed["lease_expiry_state"] == "locked" and renewed["offline_lock_days"] == 7
    assert Device.objects.get(pk=device.pk).lease_renew_at > timezone.now() + dt.timedelta(days=3)


# --- the "not heard from" list -----------------------------------------------------------------


@pytest.fixture
def silent_and_chatty(provider_a):
    now = timezone.now()
    silent = DeviceFactory(
        provider=provider_a,
        imei="351234560000011",
        enrolled_at=now - dt.timedelta(days=30),
        last_checkin_at=now - dt.timedelta(days=5),
    )
    chatty = DeviceFactory(
        provider=provider_a,
        imei="351234560000029",
        enrolled_at=now - dt.timedelta(days=30),
        last_checkin_at=now - dt.timedelta(hours=1),
    )
    return silent, chatty


def test_staff_see_the_phone_not_heard_from_and_not_the_chatty_one(as_user, agent_a, silent_and_chatty, offline_on):
    silent, chatty = silent_and_chatty

    response = as_user(agent_a).get("/devices/?silent=")

    assert response.context["silent"] == 3  # the provider's warning days
    html = response.content.decode()
    assert silent.imei in html and chatty.imei not in html
    local = silent.last_checkin_at.astimezone(silent.provider.zone)
    assert f"{local:%d %b %Y %H:%M} +0530" in html  # the provider's zone, with its offset
    assert "not heard from for more than 3 days" in html

    longer = as_user(agent_a).get("/devices/?silent=6").content.decode()
    assert silent.imei not in longer and "checked in within 6 days" in longer
    assert 'href="/devices/?silent="' in as_user(agent_a).get("/devices/").content.decode()  # the list's link


def test_the_default_is_three_days_without_a_policy_and_garbage_falls_back_to_it(as_user, agent_a, silent_and_chatty):
    assert as_user(agent_a).get("/devices/?silent=").context["silent"] == 3
    assert as_user(agent_a).get("/devices/?silent=soon").context["silent"] == 3
    assert as_user(agent_a).get("/devices/?silent=99999").context["silent"] == 3


def test_another_providers_silent_list_is_a_404(as_user, agent_b, admin_a, provider_a, provider_b, silent_and_chatty):
    assert as_user(agent_b).get(f"/devices/?silent=&provider={provider_a.pk}").status_code == 404
    assert as_user(agent_b).get("/devices/?silent=&provider=nonsense").status_code == 404
    own = as_user(agent_b).get(f"/devices/?silent=&provider={provider_b.pk}")
    assert own.status_code == 200 and silent_and_chatty[0].imei not in own.content.decode()
    assert as_user(admin_a).get(f"/devices/?silent=&provider={provider_a.pk}").status_code == 200


def test_the_service_centre_sees_silent_phones_but_no_money_or_identity(as_user, technician, provider_a, offline_on):
    contract = overdue_contract(provider_a, days_late=1, number="DLG-508")
    Device.objects.filter(pk=contract.device_id).update(
        enrolled_at=timezone.now() - dt.timedelta(days=20), last_checkin_at=timezone.now() - dt.timedelta(days=9)
    )

    response = as_user(technician).get(f"/devices/?silent=&provider={provider_a.pk}")

    html = response.content.decode()
    assert response.status_code == 200 and contract.device.imei in html
    assert response.context["silent"] == 3
    assert "DLG-508" not in html and contract.customer.name not in html and str(contract.customer.phone) not in html


def test_the_silent_list_costs_the_same_queries_for_2_or_12_phones(as_user, agent_a, provider_a, offline_on):
    client = as_user(agent_a)

    def silent_phones(n: int) -> int:
        for _ in range(n):
            DeviceFactory(provider=provider_a, enrolled_at=timezone.now() - dt.timedelta(days=9))
        client.get("/devices/?silent=")
        with CaptureQueriesContext(connection) as ctx:
            response = client.get("/devices/?silent=")
        assert len(response.context["page"].object_list) == len(
            Device.objects.filter(provider=provider_a).exclude(enrolled_at=None)
        )
        return len(ctx.captured_queries)

    assert silent_phones(2) == silent_phones(10)


# --- a policy change reaches the phones whose state stays ----------------------------------------


@pytest.fixture
def in_process():
    """The demo's in-process mode: every queued task runs at once (even where CI sets a broker)."""
    from config.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def unlocked_after_paying(provider, *, number: str, now: dt.datetime) -> Contract:
    """A phone locked ten days late whose owner paid: unlocked, with its command, the next installment weeks away."""
    contract = overdue_contract(provider, days_late=10, number=number)
    assert contract_lock_evaluate(contract=contract, now=now) == "locked"
    first = contract.installments.order_by("number").first()
    first.amount_paid = first.amount_due
    first.save()
    assert contract_lock_evaluate(contract=contract, now=now) == "unlocked"
    return contract


def post_policy(client, capture, **changes) -> None:
    with capture(execute=True):
        assert client.post("/locks/policy/", {**POLICY, **changes}).status_code == 302


def test_turning_the_offline_lock_on_reaches_unlocked_and_reminded_phones_in_their_state_and_screen(
    as_user, admin_a, provider_a, morning, in_process, django_capture_on_commit_callbacks
):
    admin = as_user(admin_a)
    post_policy(admin, django_capture_on_commit_callbacks, offline_lock_days="")  # locks any day 08:00 to 18:00
    unlocked = unlocked_after_paying(provider_a, number="DLG-601", now=morning)
    reminded = overdue_contract(provider_a, days_late=1, number="DLG-602")
    locked = overdue_contract(provider_a, days_late=10, number="DLG-603")
    assert lock_sweep(now=morning).changed == {"reminder": 1, "locked": 1}
    before = {c.pk: payload(c.device_id) for c in (unlocked, reminded, locked)}
    assert all(before[c.pk]["lease_until"] is None for c in (unlocked, reminded))
    assert not AuditEvent.objects.filter(action="lock_lease.refresh").exists()  # no lease before or after

    post_policy(admin, django_capture_on_commit_callbacks)  # on: 7 days, warn 3 before

    for contract, state in ((unlocked, "unlocked"), (reminded, "reminder")):
        command, old = payload(contract.device_id), before[contract.pk]
        assert command["seq"] == old["seq"] + 1 and command["state"] == state
        assert command["screen"] == old["screen"] and command["reason"] == old["reason"]
        assert command["offline_lock_days"] == 7 and command["lease_warning_days"] == 3
        assert command["lease_expiry_state"] == "locked" and command["lease_until"] is not None
        assert command["lock_window"] == {"start_hour": 8, "end_hour": 18, "weekdays": [0, 1, 2, 3, 4, 5, 6]}
        assert Device.objects.get(pk=contract.device_id).lease_renew_at is not None
    assert payload(locked.device_id)["seq"] == before[locked.pk]["seq"]  # a locked phone has no lease
    event = AuditEvent.objects.get(action="lock_lease.refresh")
    assert event.actor == admin_a and event.organisation_id == provider_a.pk and event.after["devices"] == 2
    assert "lock_policy.offline_lock_days" in event.after["changed"]

    # The same policy saved again re-issues nothing; the warning days changed, the two phones once more.
    post_policy(admin, django_capture_on_commit_callbacks)
    assert payload(reminded.device_id)["seq"] == before[reminded.pk]["seq"] + 1
    post_policy(admin, django_capture_on_commit_callbacks, offline_warning_days="2")
    assert [payload(c.device_id)["lease_warning_days"] for c in (unlocked, reminded)] == [2, 2]
    assert payload(reminded.device_id)["seq"] == before[reminded.pk]["seq"] + 2

    # Turned off: no phone keeps a lease that would lock it.
    post_policy(admin, django_capture_on_commit_callbacks, offline_lock_days="")
    for contract in (unlocked, reminded):
        command = payload(contract.device_id)
        assert command["lease_until"] is None and command["offline_lock_days"] is None
    assert AuditEvent.objects.filter(action="lock_lease.refresh").count() == 3  # one per request that changed it
    assert not LockRefresh.objects.filter(done_at__isnull=True).exists()


def test_a_lease_refresh_batch_costs_the_same_queries_for_2_or_6_phones(provider_a, offline_on, morning):
    def batch_of(n: int, tag: str) -> int:
        contracts = [overdue_contract(provider_a, days_late=1, number=f"DLG-{tag}{i}") for i in range(n)]
        assert lock_sweep(now=morning).changed == {"reminder": n}
        LockPolicy.objects.filter(provider=provider_a).update(offline_warning_days=2 if tag == "A" else 4)
        first = min(c.pk for c in contracts) - 1
        with CaptureQueriesContext(connection) as captured:
            batch = lock_leases_refresh_batch(provider_id=provider_a.pk, after_id=first, batch_size=10)
        assert (batch.refreshed, batch.unchanged, batch.next_after) == (n, 0, None)
        assert all(payload(c.device_id)["lease_warning_days"] == (2 if tag == "A" else 4) for c in contracts)
        return len(captured)

    assert batch_of(2, "A") == batch_of(6, "B")
