"""A phone that cannot reach the server is unlocked with an offline code, under four eyes.

Stories:
* an owner who paid but whose phone is offline calls the hotline; an agent requests a
  code, a second person approves it, and the code typed on the phone unlocks it for
  the approved number of days — and cannot be typed a second time;
* a paid-off phone that stays offline gets a release code;
* nobody approves their own request; a technician may request but not approve; a
  technician of a service center that does not serve the provider, or staff of
  another provider, do not see the device at all (404);
* every code is audited with who asked, who approved and why (never the code itself);
* codes issued one after the other use increasing counters, and a later code makes
  an earlier one that was never typed useless.
"""

from __future__ import annotations

import openpaygo
import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from openpaygo import TokenType

from devices.models import Device, OfflineCode
from devices.services.offline import offline_code_issue
from devices.services.tokens import enrollment_token_create
from portal.models import AuditEvent
from tests.factories import DeviceFactory, enrol_device


@pytest.fixture
def phone(provider_a):
    """An enrolled phone: it holds the offline secret and starting code from its enrolment."""
    device = DeviceFactory(provider=provider_a)
    _token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=None)
    enrol_device(device.imei, secret)
    device.refresh_from_db()
    return device


class SimulatedPhone:
    """The phone's side of OpenPAYGO: what the agent stores after enrolment and after each code."""

    def __init__(self, device):
        self.secret, self.starting_code = device.offline_secret, device.offline_starting_code
        self.last_count, self.used_counts = device.offline_count, []

    def type_code(self, token: str):
        value, token_type, count, used = openpaygo.decode_token(
            token=token,
            secret_key=self.secret,
            count=self.last_count,
            used_counts=list(self.used_counts),
            starting_code=self.starting_code,
        )
        if count is not None:
            # openpaygo answers None for a first code; the phone then remembers that count itself.
            self.used_counts = used or [count]
            self.last_count = max(self.last_count, count)
        return value, token_type


def test_an_approved_code_unlocks_the_phone_for_the_days_and_cannot_be_typed_twice(phone, agent_a, admin_a):
    handset = SimulatedPhone(phone)

    code = offline_code_issue(
        device=phone,
        kind="unlock_days",
        days=7,
        requested_by=agent_a,
        approved_by=admin_a,
        reason="Paid 12,500 LKR at the Kandy branch; phone has no signal at the estate",
    )

    assert len(code.token) == 9 and code.token.isdigit()
    assert handset.type_code(code.token) == (7, TokenType.SET_TIME)
    value, token_type = handset.type_code(code.token)  # typed again
    assert (value, token_type) == (None, TokenType.ALREADY_USED)
    assert Device.objects.get(pk=phone.pk).offline_count == code.count


def test_a_release_code_removes_the_lock_for_good(phone, agent_a, admin_a):
    handset = SimulatedPhone(phone)

    code = offline_code_issue(
        device=phone, kind="release", requested_by=agent_a, approved_by=admin_a, reason="Contract paid off"
    )

    value, token_type = handset.type_code(code.token)
    assert (value, token_type) == (998, TokenType.DISABLE_PAYG)


def test_codes_use_increasing_counters_and_a_later_code_voids_an_untyped_earlier_one(phone, agent_a, admin_a):
    handset = SimulatedPhone(phone)
    args = {"device": phone, "requested_by": agent_a, "approved_by": admin_a, "reason": "Offline, paid"}

    first = offline_code_issue(kind="unlock_days", days=3, **args)
    second = offline_code_issue(kind="unlock_days", days=5, **args)

    assert second.count > first.count
    assert handset.type_code(second.token) == (5, TokenType.SET_TIME)
    assert handset.type_code(first.token)[1] == TokenType.ALREADY_USED


def test_nobody_approves_their_own_request(phone, agent_a):
    with pytest.raises(PermissionDenied, match="second person"):
        offline_code_issue(
            device=phone, kind="unlock_days", days=7, requested_by=agent_a, approved_by=agent_a, reason="Paid"
        )
    assert not OfflineCode.objects.exists()


def test_a_technician_of_a_serving_center_may_request_but_not_approve(phone, technician, agent_a):
    code = offline_code_issue(
        device=phone,
        kind="unlock_days",
        days=2,
        requested_by=technician,
        approved_by=agent_a,
        reason="Owner at the counter with the payment receipt",
    )
    assert code.requested_by == technician

    with pytest.raises(PermissionDenied, match="approver"):
        offline_code_issue(
            device=phone, kind="unlock_days", days=2, requested_by=agent_a, approved_by=technician, reason="Paid"
        )


def test_staff_who_do_not_serve_the_provider_do_not_see_the_device(phone, outsider, agent_a, agent_b):
    with pytest.raises(Http404):
        offline_code_issue(
            device=phone, kind="unlock_days", days=7, requested_by=outsider, approved_by=agent_a, reason="Paid"
        )
    with pytest.raises(Http404):
        offline_code_issue(
            device=phone, kind="unlock_days", days=7, requested_by=agent_a, approved_by=agent_b, reason="Paid"
        )
    assert not OfflineCode.objects.exists()
    assert Device.objects.get(pk=phone.pk).offline_count == 0


@pytest.mark.parametrize(
    ("kind", "days", "reason", "field"),
    [
        ("unlock_days", 7, "   ", "reason"),
        ("unlock_days", None, "Paid", "days"),
        ("unlock_days", 0, "Paid", "days"),
        ("unlock_days", 996, "Paid", "days"),
        ("release", 7, "Paid", "days"),
        ("wipe", None, "Paid", "kind"),
    ],
)
def test_a_code_needs_a_reason_and_a_sensible_kind_and_days(phone, agent_a, admin_a, kind, days, reason, field):
    with pytest.raises(ValidationError) as refused:
        offline_code_issue(device=phone, kind=kind, days=days, requested_by=agent_a, approved_by=admin_a, reason=reason)
    assert field in refused.value.message_dict


def test_a_phone_that_never_enrolled_has_no_offline_codes(provider_a, agent_a, admin_a):
    never_enrolled = DeviceFactory(provider=provider_a)

    with pytest.raises(ValidationError, match="not enrolled"):
        offline_code_issue(
            device=never_enrolled, kind="release", requested_by=agent_a, approved_by=admin_a, reason="Paid off"
        )


def test_every_code_is_audited_with_both_people_and_the_reason_but_not_the_code(phone, agent_a, admin_a):
    code = offline_code_issue(
        device=phone, kind="unlock_days", days=7, requested_by=agent_a, approved_by=admin_a, reason="Paid at branch"
    )

    event = AuditEvent.objects.get(action="device.offline_code")
    assert event.actor_label == "admin.a"
    assert event.organisation_id == phone.provider_id
    assert event.after["requested_by"] == "agent.a" and event.after["approved_by"] == "admin.a"
    assert event.after["reason"] == "Paid at branch" and event.after["days"] == 7
    assert code.token not in str(event.after)
