"""The one lock API (payments.locks.services): every lock change outside the sweep is decided, signed and audited.

A dispute hold keeps an overdue owner unlocked; a temporary unlock ends and the sweep locks again; a release is
final whatever the money says; a phone without a contract can be released; a release without a reason is refused.
"""

import datetime as dt

import pytest
from django.core.exceptions import ValidationError

from devices.keys import public_keys
from devices.models import Device, DeviceCommand, LockState
from devices.protocol import check_command, open_envelope
from payments.locks.services import (
    contract_dispute_hold,
    contract_release,
    contract_temp_unlock,
    device_release,
    lock_sweep,
)
from payments.models import Contract
from portal.models import AuditEvent
from tests.factories import DeviceFactory, make_contract

# 10:00 in Colombo on a Tuesday: the contract's 15 Jan installment is 33 days late.
TUESDAY_MORNING = dt.datetime(2026, 2, 17, 4, 30, tzinfo=dt.UTC)


@pytest.fixture
def overdue(provider_a):
    return make_contract(provider_a, number="DLG-300")


def _last_payload(device_id: int) -> dict:
    command = DeviceCommand.objects.filter(device_id=device_id).order_by("-seq").first()
    return check_command(open_envelope(command.envelope, public_keys()))


def test_a_dispute_hold_keeps_an_overdue_owner_unlocked_until_it_is_lifted(overdue, finance_a):
    hold = contract_dispute_hold(
        contract=overdue, actor=finance_a, reason="The owner disputes the January charge", now=TUESDAY_MORNING
    )
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(minutes=5)).changed == {}
    overdue.refresh_from_db()
    assert overdue.lock_state != LockState.LOCKED
    event = AuditEvent.objects.get(action="lock_override.create", object_id=str(hold.pk))
    assert event.actor_id == finance_a.pk and event.after["kind"] == "dispute_hold"


def test_a_temporary_unlock_is_signed_at_once_and_the_sweep_locks_again_when_it_ends(overdue, agent_a):
    lock_sweep(now=TUESDAY_MORNING)
    overdue.refresh_from_db()
    assert overdue.lock_state == LockState.LOCKED
    contract_temp_unlock(contract=overdue, actor=agent_a, hours=2, reason="At the shop for repair", now=TUESDAY_MORNING)
    assert overdue.lock_state == LockState.TEMP_UNLOCKED
    assert _last_payload(overdue.device_id)["state"] == LockState.TEMP_UNLOCKED
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(hours=3)).changed == {"locked": 1}


def test_a_release_is_final_whatever_the_money_says_and_names_its_reason(overdue, finance_a):
    lock_sweep(now=TUESDAY_MORNING)
    with pytest.raises(ValidationError) as refused:
        contract_release(contract=overdue, actor=finance_a, reason="  ", now=TUESDAY_MORNING)
    assert refused.value.message_dict == {"reason": ["Say why the phone is released."]}
    contract_release(contract=overdue, actor=finance_a, reason="Sold in error", now=TUESDAY_MORNING)
    overdue.refresh_from_db()
    assert overdue.lock_state == LockState.RELEASED and overdue.status == "active"  # the money is finance's
    assert _last_payload(overdue.device_id)["state"] == LockState.RELEASED
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(days=30)).changed == {}
    event = AuditEvent.objects.get(action="contract.release", object_id=str(overdue.pk))
    assert event.before["lock_state"] == LockState.LOCKED and event.after["reason"] == "Sold in error"
    with pytest.raises(ValidationError):
        contract_release(contract=Contract.objects.get(pk=overdue.pk), actor=finance_a, reason="Again")


def test_a_phone_without_a_contract_is_released_with_the_same_screen_shape(provider_a, finance_a, overdue):
    lock_sweep(now=TUESDAY_MORNING)
    device = DeviceFactory(provider=provider_a)
    device_release(device=device, actor=finance_a, reason="A retail unit locked by mistake")
    payload = _last_payload(device.pk)
    assert payload["state"] == LockState.RELEASED
    assert set(payload["screen"]) == set(_last_payload(overdue.device_id)["screen"])
    assert payload["screen"]["amount_overdue"] == "0" and payload["screen"]["contract_number"] == ""
    assert Device.objects.get(pk=device.pk).desired_state == LockState.RELEASED
    assert AuditEvent.objects.filter(action="device.release", object_id=str(device.pk)).exists()


def test_a_temporary_unlock_longer_than_the_policy_allows_is_refused_whoever_asks(overdue, agent_a):
    with pytest.raises(ValidationError) as refused:
        contract_temp_unlock(contract=overdue, actor=agent_a, hours=10_000, reason="Too long", now=TUESDAY_MORNING)
    assert "hours" in refused.value.message_dict
    assert not overdue.overrides.exists()
