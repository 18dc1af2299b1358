"""Every change of a phone's desired state becomes one signed command in the outbox.

Stories:
* each command takes its device's next sequence number, so a phone can tell a newer
  command from a replayed or late one;
* the command carries exactly the fields of docs/lock-pipeline.md and verifies with
  the keys the server announces;
* every change is on the audit trail with the state before and after;
* the sweep can apply thousands of changes at once: the number of queries does not
  grow with the number of devices;
* a value that would sign differently on another platform (a float) is refused
  before anything is written;
* a phone that never had a command still gets a signed one, for the state it is
  meant to be in (a phone meant to be locked is never sent an unlock); a phone whose
  newest command was signed under version 1 gets its state anew under version 2.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices import protocol
from devices.keys import public_keys
from devices.models import Device, DeviceCommand
from devices.services.commands import StateChange, device_current_envelope, device_states_apply
from portal.audit_verify import audit_verify_chain
from portal.models import AuditEvent
from tests.factories import DeviceFactory

#: Every member of a version 2 command (docs/lock-pipeline.md, "Command payload"): always present.
SPEC_FIELDS = {
    "kind",
    "device",
    "imeis",
    "seq",
    "state",
    "reason",
    "issued_at",
    "expires_at",
    "lease_until",
    "lease_expiry_state",
    "lease_warning_days",
    "paid_until",
    "offline_lock_days",
    "time_zone",
    "lock_window",
    "screen",
    "allowed_numbers",
}
SCREEN = {
    "language": "en",
    "title": "This device is locked",
    "amount_overdue": "12500.00",
    "currency": "LKR",
    "payment_channels": [{"name": "Dialog Finance", "kind": "bank", "account": "0012", "reference": "C-1"}],
}


def lock(device, **extra) -> StateChange:
    return StateChange(
        device_id=device.pk,
        state="locked",
        reason="Installment of 15 Jan 2026 overdue 12 days (grace 3 days)",
        screen=SCREEN,
        allowed_numbers=["+94777575727", "119", "112"],
        **extra,
    )


def test_each_command_takes_its_devices_next_sequence_number(provider_a):
    phone, other = DeviceFactory(provider=provider_a), DeviceFactory(provider=provider_a)

    first = device_states_apply(changes=[lock(phone), lock(other)])
    second = device_states_apply(changes=[StateChange(device_id=phone.pk, state="unlocked", reason="Arrears cleared")])

    assert [(c.device_id, c.seq) for c in first] == [(phone.pk, 1), (other.pk, 1)]
    assert [(c.device_id, c.seq) for c in second] == [(phone.pk, 2)]
    phone.refresh_from_db()
    assert phone.command_seq == 2
    assert phone.desired_state == "unlocked" and phone.desired_reason == "Arrears cleared"
    assert DeviceCommand.objects.filter(device=phone).count() == 2
    # Every command is pending in the outbox until a worker pushes it.
    assert all(c.next_attempt_at is not None and c.delivered_at is None for c in DeviceCommand.objects.all())


def test_several_changes_for_one_device_apply_in_order_each_with_its_own_seq(provider_a):
    phone = DeviceFactory(provider=provider_a)
    until = timezone.now() + dt.timedelta(hours=48)

    commands = device_states_apply(
        changes=[lock(phone), StateChange(device_id=phone.pk, state="temp_unlocked", expires_at=until)]
    )

    assert [(c.seq, c.state) for c in commands] == [(1, "locked"), (2, "temp_unlocked")]
    phone.refresh_from_db()
    assert phone.desired_state == "temp_unlocked" and phone.command_seq == 2


def test_the_signed_command_has_exactly_the_spec_fields_and_verifies(provider_a):
    phone = DeviceFactory(provider=provider_a)

    (command,) = device_states_apply(changes=[lock(phone)])

    payload = command.payload
    assert set(payload) == SPEC_FIELDS  # no "v", "imei" or "key_id": those are the envelope's or gone
    assert payload["kind"] == "command"
    assert payload["device"] == str(phone.uid)
    assert payload["imeis"] == [phone.imei]
    assert payload["seq"] == 1
    assert payload["state"] == "locked"
    assert payload["reason"].startswith("Installment of 15 Jan 2026")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", payload["issued_at"])
    assert payload["expires_at"] is None
    assert payload["screen"] == SCREEN
    assert payload["allowed_numbers"] == ["+94777575727", "119", "112"]
    # Without an offline policy there is no lease.
    assert (payload["lease_until"], payload["lease_expiry_state"], payload["offline_lock_days"]) == (None, None, None)

    stored = DeviceCommand.objects.get(pk=command.pk)
    envelope = stored.envelope
    assert set(envelope) == {"v", "payload", "key_id", "signature"}
    assert (envelope["v"], envelope["key_id"]) == (2, command.key_id)
    # The envelope carries exactly the stored bytes that were signed, and they verify.
    assert protocol.unb64(envelope["payload"]) == stored.body.encode("utf-8")
    assert protocol.check_command(protocol.open_envelope(envelope, public_keys())) == payload


def test_a_temporary_unlock_carries_its_end_in_utc(provider_a):
    phone = DeviceFactory(provider=provider_a)
    until = dt.datetime(2026, 11, 25, 14, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))

    (command,) = device_states_apply(
        changes=[StateChange(device_id=phone.pk, state="temp_unlocked", reason="Promise to pay", expires_at=until)]
    )

    assert command.payload["expires_at"] == "2026-11-25T09:00:15Z"
    assert protocol.open_envelope(command.envelope, public_keys())["state"] == "temp_unlocked"


def test_every_change_is_audited_with_the_state_before_and_after(provider_a, agent_a):
    phone = DeviceFactory(provider=provider_a)

    device_states_apply(changes=[lock(phone)], actor=agent_a)

    event = AuditEvent.objects.get(action="device.state", object_id=str(phone.pk))
    assert event.actor_label == "agent.a"
    assert event.organisation_id == provider_a.pk
    assert event.before["state"] == "unlocked"
    assert event.after["state"] == "locked" and event.after["seq"] == 1
    assert audit_verify_chain().ok


def test_the_number_of_queries_does_not_grow_with_the_number_of_devices(provider_a, django_assert_max_num_queries):
    one = [DeviceFactory(provider=provider_a)]
    fifty = [DeviceFactory(provider=provider_a) for _ in range(50)]

    with CaptureQueriesContext(connection) as for_one:
        device_states_apply(changes=[lock(d) for d in one])
    with django_assert_max_num_queries(len(for_one)):
        device_states_apply(changes=[lock(d) for d in fifty])

    assert DeviceCommand.objects.count() == 51


def test_values_that_would_sign_differently_elsewhere_are_refused_before_anything_is_written(provider_a):
    phone = DeviceFactory(provider=provider_a)

    with pytest.raises(ValueError, match=r"screen.amount_overdue is a float"):
        device_states_apply(
            changes=[StateChange(device_id=phone.pk, state="locked", screen={"amount_overdue": 12500.0})]
        )
    with pytest.raises(ValueError, match="expires_at is required for temp_unlocked"):
        device_states_apply(changes=[StateChange(device_id=phone.pk, state="temp_unlocked")])
    with pytest.raises(ValueError, match="unknown state 'wiped'"):
        device_states_apply(changes=[StateChange(device_id=phone.pk, state="wiped")])

    assert not DeviceCommand.objects.exists()
    phone.refresh_from_db()
    assert phone.command_seq == 0 and phone.desired_state == "unlocked"


def test_a_phone_without_a_command_gets_a_signed_one_for_its_current_state(provider_a):
    new_phone = DeviceFactory(provider=provider_a)
    # Desired state recorded before the pipeline issued anything (e.g. imported data).
    meant_locked = DeviceFactory(provider=provider_a, desired_state="locked", desired_reason="Overdue")

    envelope = device_current_envelope(new_phone)
    assert protocol.check_command(protocol.open_envelope(envelope, public_keys()))["state"] == "unlocked"
    assert protocol.payload_of(envelope)["screen"] == {}
    # Asking again answers the same command rather than issuing another.
    assert device_current_envelope(new_phone) == envelope
    assert DeviceCommand.objects.filter(device=new_phone).count() == 1

    assert protocol.payload_of(device_current_envelope(meant_locked))["state"] == "locked"
    assert Device.objects.get(pk=meant_locked.pk).desired_state == "locked"


def test_the_current_envelope_is_the_newest_command(provider_a):
    phone = DeviceFactory(provider=provider_a)
    device_states_apply(changes=[lock(phone)])
    device_states_apply(changes=[StateChange(device_id=phone.pk, state="released", reason="Paid off")])

    envelope = device_current_envelope(phone)

    newest = protocol.open_envelope(envelope, public_keys())
    assert newest["seq"] == 2 and newest["state"] == "released"


def test_a_command_signed_under_version_1_is_never_served_again_its_state_is_issued_anew(provider_a):
    """After the upgrade: the newest row of a phone holds a version 1 command (its v1 canonical text)."""
    phone = DeviceFactory(provider=provider_a, desired_state="locked", desired_reason="Overdue", command_seq=4)
    v1 = {
        "v": 1,
        "device": str(phone.uid),
        "imei": phone.imei,
        "seq": 4,
        "state": "locked",
        "reason": "Overdue",
        "issued_at": "2026-11-23T09:00:04Z",
        "expires_at": None,
        "key_id": "k2025",
        "screen": SCREEN,
        "allowed_numbers": ["119"],
    }
    DeviceCommand.objects.create(
        device=phone,
        seq=4,
        state="locked",
        reason="Overdue",
        body=json.dumps(v1, sort_keys=True, separators=(",", ":")),
        version=1,
        signature="A" * 86 + "==",
        key_id="k2025",
    )

    envelope = device_current_envelope(phone)

    command = protocol.check_command(protocol.open_envelope(envelope, public_keys()))
    assert (command["seq"], command["state"], command["reason"]) == (5, "locked", "Overdue")
    # The screen and the numbers the phone showed carry over into the version 2 command.
    assert (command["screen"], command["allowed_numbers"]) == (SCREEN, ["119"])
    assert device_current_envelope(phone) == envelope  # issued once, then served
    assert list(DeviceCommand.objects.filter(device=phone).values_list("seq", "version")) == [(5, 2), (4, 1)]
