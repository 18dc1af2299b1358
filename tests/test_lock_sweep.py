"""The sweep locks an owner overdue past grace, unlocks at once when the arrears are cleared, and says why."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.models import Device, DeviceCommand
from devices.protocol import check_command, open_envelope
from payments.contracts.services import contract_set_status
from payments.locks.screen import DEFAULT_TEXTS
from payments.locks.services import contract_lock_evaluate, lock_screen_text_save, lock_sweep
from payments.models import Contract, LockOverride, LockScreenText, PaymentChannel
from portal.models import AuditEvent
from tests.factories import CustomerFactory, make_contract

# Tuesday 17 Feb 2026, 10:00 in Colombo: the 15 Jan installment is 33 days late.
TUESDAY_MORNING = dt.datetime(2026, 2, 17, 4, 30, tzinfo=dt.UTC)
TUESDAY_NIGHT = dt.datetime(2026, 2, 17, 18, 30, tzinfo=dt.UTC)  # 00:00 in Colombo


@pytest.fixture
def overdue(provider_a, platform):
    platform.hotline_numbers = ["+442079460000"]
    platform.save()
    PaymentChannel.objects.create(
        provider=provider_a, kind="mobile_money", name="eZ Cash", account="#111#", reference="{contract}"
    )
    return make_contract(provider_a, number="DLG-100")


def _pay_arrears(contract, today):
    for installment in contract.installments.filter(due_date__lt=today):
        installment.amount_paid = installment.amount_due
        installment.save()


def test_an_owner_overdue_past_grace_is_locked_with_a_screen_that_says_how_to_get_out(overdue, provider_a):
    report = lock_sweep(now=TUESDAY_MORNING)
    assert report.changed == {"locked": 1}
    overdue.refresh_from_db()
    assert overdue.lock_state == "locked" and "33 days overdue (grace 3 days)" in overdue.lock_reason
    device = Device.objects.get(pk=overdue.device_id)
    assert device.desired_state == "locked"
    command = DeviceCommand.objects.get(device=device)
    from devices.keys import public_keys

    payload = check_command(open_envelope(command.envelope, public_keys()))
    screen = payload["screen"]
    assert payload["state"] == "locked" and payload["seq"] == 1
    assert screen["provider"]["name"] == "Dialog Finance"
    # Two monthly installments (15 Jan, 15 Feb) of 50,000 / 6 are unpaid.
    assert screen["amount_overdue"] == "16666.66" and screen["currency"] == "LKR"
    assert screen["amount_overdue_display"] == "LKR\xa016,666.66"
    assert screen["overdue_since"] == "2026-01-15" and screen["contract_number"] == "DLG-100"
    assert screen["payment_channels"][0] == {
        "name": "eZ Cash",
        "kind": "mobile_money",
        "account": "#111#",
        "reference": "DLG-100",
        "instructions": "",
    }
    assert "+94777575727" in screen["hotline_numbers"] and "+94777575727" in payload["allowed_numbers"]
    assert "119" in payload["allowed_numbers"]  # Sri Lanka's emergency number, callable while locked
    assert screen["fallback"]["hotline_numbers"] == ["+442079460000"]
    assert "factory reset" in screen["factory_reset_warning"].lower()
    assert AuditEvent.objects.filter(action="device.state", object_id=str(device.pk)).exists()


def test_a_second_sweep_records_nothing_new(overdue):
    lock_sweep(now=TUESDAY_MORNING)
    again = lock_sweep(now=TUESDAY_MORNING + dt.timedelta(minutes=5))
    assert again.total_changed == 0 and again.evaluated == 1
    assert DeviceCommand.objects.count() == 1


def test_no_phone_goes_dark_at_midnight(overdue):
    report = lock_sweep(now=TUESDAY_NIGHT)
    assert report.changed == {"reminder": 1}
    overdue.refresh_from_db()
    assert "waits for the hours a lock may start" in overdue.lock_reason


def test_clearing_the_arrears_unlocks_at_once_and_an_unacknowledged_unlock_is_flagged(
    overdue, as_user, agent_a, agent_b
):
    lock_sweep(now=TUESDAY_MORNING)
    device = Device.objects.get(pk=overdue.device_id)
    Device.objects.filter(pk=device.pk).update(reported_state="locked", reported_seq=1)
    _pay_arrears(overdue, dt.date(2026, 2, 17))
    assert contract_lock_evaluate(contract=overdue, now=TUESDAY_MORNING + dt.timedelta(minutes=1)) == "unlocked"
    overdue.refresh_from_db()
    assert overdue.arrears_cleared_at == TUESDAY_MORNING + dt.timedelta(minutes=1)
    assert Device.objects.get(pk=device.pk).desired_state == "unlocked"  # next due 15 Mar: nothing to remind
    assert DeviceCommand.objects.filter(device=device).count() == 2

    # The phone never confirmed: after the alert time the contract is on the agent's list.
    page = as_user(agent_a).get("/locks/paid-still-locked/")
    assert b"DLG-100" in page.content
    assert b"DLG-100" not in as_user(agent_b).get("/locks/paid-still-locked/").content


def test_a_temporary_unlock_is_honoured_by_the_sweep(overdue, agent_a):
    lock_sweep(now=TUESDAY_MORNING)
    LockOverride.objects.create(
        contract=overdue,
        kind="temp_unlock",
        starts_at=TUESDAY_MORNING,
        ends_at=TUESDAY_MORNING + dt.timedelta(hours=24),
        reason="owner at the service centre",
        created_by=agent_a,
    )
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(hours=1)).changed == {"temp_unlocked": 1}
    command = DeviceCommand.objects.filter(device_id=overdue.device_id).first()
    assert command.payload["expires_at"] == "2026-02-18T04:30:00Z"
    # When it expires the phone locks again (in working hours).
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(hours=25)).changed == {"locked": 1}


def test_a_paid_off_contract_is_released_for_good(overdue, admin_a):
    lock_sweep(now=TUESDAY_MORNING)
    overdue.installments.update(amount_paid=Decimal("0"))
    for installment in overdue.installments.all():
        installment.amount_paid = installment.amount_due
        installment.save()
    contract_set_status(contract=overdue, status="paid_off", actor=admin_a)
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(hours=1)).changed == {"released": 1}
    assert Contract.objects.get(pk=overdue.pk).lock_state == "released"
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(days=40)).total_changed == 0


# --- one phone whose command cannot be issued never stops the sweep ---------------------------

# A lock-screen text pasted in by mistake: about 40 KB of Sinhala, saved before the bound was checked.
ESSAY = "ගෙවීම් උපදෙස් " * 1500


def oversized_contract(provider, number: str) -> Contract:
    """An overdue contract whose Tamil-speaking owner's lock screen would not fit in a command."""
    LockScreenText.objects.get_or_create(
        provider=provider, language="ta", defaults=DEFAULT_TEXTS["en"] | {"body": ESSAY}
    )
    return make_contract(provider, number=number, customer=CustomerFactory(provider=provider, preferred_language="ta"))


def test_a_phone_whose_command_is_too_large_keeps_its_state_and_the_rest_of_the_sweep_goes_on(
    provider_a, provider_b, as_user, admin_a, agent_b
):
    bad = oversized_contract(provider_a, "DLG-TA1")
    good = [make_contract(provider_a, number=f"DLG-20{i}") for i in range(3)]
    later = make_contract(provider_b, number="JPC-1")  # a later provider in the same sweep

    report = lock_sweep(now=TUESDAY_MORNING)

    assert report.changed["locked"] == 3 and report.total_changed == 4  # Nairobi's 07:30: B is reminded
    assert {Contract.objects.get(pk=c.pk).lock_state for c in good} == {"locked"}
    assert Contract.objects.get(pk=later.pk).lock_state == "reminder"
    bad.refresh_from_db()
    assert bad.lock_state == "unlocked" and bad.lock_changed_at is None
    assert not DeviceCommand.objects.filter(device_id=bad.device_id).exists()
    assert Device.objects.get(pk=bad.device_id).command_seq == 0
    event = AuditEvent.objects.get(action="device.command_refused")
    assert (event.object_id, event.organisation_id) == (str(bad.device_id), provider_a.pk)
    assert "over the 32768 a phone accepts" in event.after["reason"]

    # Every sweep meets it again: still skipped, audited at most once an hour; a payment never fails on it.
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(minutes=5)).total_changed == 0
    assert contract_lock_evaluate(contract=bad, now=TUESDAY_MORNING + dt.timedelta(minutes=6)) == "unlocked"
    assert AuditEvent.objects.filter(action="device.command_refused").count() == 1

    # The provider sees it where delivery problems show; another provider's staff do not.
    page = as_user(admin_a).get("/devices/dead-letters/").content.decode()
    assert "Commands that could not be issued" in page and bad.device.imei in page and "32768" in page
    assert bad.device.imei not in as_user(agent_b).get("/devices/dead-letters/").content.decode()

    # The wording fixed, the next sweep locks it.
    lock_screen_text_save(provider=provider_a, language="ta", actor=admin_a, **DEFAULT_TEXTS["en"])
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(minutes=10)).changed == {"locked": 1}


def test_a_sweep_with_a_refused_phone_costs_the_same_queries_for_2_or_8_good_ones(provider_a):
    def sweep_of(n: int, tag: str) -> int:
        oversized_contract(provider_a, f"DLG-{tag}X")
        for i in range(n):
            make_contract(provider_a, number=f"DLG-{tag}{i}")
        with CaptureQueriesContext(connection) as captured:
            assert lock_sweep(now=TUESDAY_MORNING).changed == {"locked": n}
        return len(captured)

    assert sweep_of(2, "A") == sweep_of(8, "B")
    assert AuditEvent.objects.filter(action="device.command_refused").count() == 2  # one per phone


def test_wording_that_would_make_a_command_too_large_is_refused_naming_the_field(provider_a, admin_a):
    texts = dict(DEFAULT_TEXTS["en"])
    for field in ("body", "reminder_body"):
        with pytest.raises(ValidationError) as refused:
            lock_screen_text_save(provider=provider_a, language="si", actor=admin_a, **(texts | {field: ESSAY}))
        assert list(refused.value.message_dict) == [field]
        assert "over the 32768 bytes a phone accepts" in refused.value.message_dict[field][0]
    assert not LockScreenText.objects.filter(provider=provider_a).exists()

    # A long text that fits is saved; changing it to one that does not changes nothing.
    long_enough = "ගෙවීම් උපදෙස් " * 100  # 1,400 characters of Sinhala
    saved = lock_screen_text_save(provider=provider_a, language="si", actor=admin_a, **(texts | {"body": long_enough}))
    with pytest.raises(ValidationError) as refused:
        lock_screen_text_save(provider=provider_a, language="si", actor=admin_a, reminder_body=ESSAY)
    assert list(refused.value.message_dict) == ["reminder_body"]
    saved.refresh_from_db()
    assert saved.body == long_enough.strip() and saved.reminder_body == texts["reminder_body"]
    assert AuditEvent.objects.filter(action="lock_screen_text.change").count() == 1
