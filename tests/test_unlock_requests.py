"""Manual unlocks, under four eyes: requested by one person, approved by another, applied at once.

Stories:
* an owner at a service centre is locked although the provider agrees to a grace: an agent
  asks for a temporary unlock, the admin approves, and the signed ``temp_unlocked`` command
  is issued in the same transaction; when it ends the sweep locks the phone again;
* a lock in error is released for good, without pretending the contract was paid;
* a phone that cannot reach the internet gets an offline code, shown once to the approver;
* a phone that lost its offline-code key gets a new one only when a second person approves;
* nobody approves their own request; of two approvers clicking at once one wins and the
  other is told it is done; provider B's staff never see provider A's requests (404);
* every step is in the audit trail, and the list page's query count does not grow.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from devices.keys import public_keys
from devices.models import Device, DeviceCommand
from devices.protocol import check_command, open_envelope
from devices.services.tokens import enrollment_token_create
from payments.locks.services import lock_policy_update, lock_sweep
from payments.models import Contract, LockOverride
from portal.models import AuditEvent
from support.models import UnlockRequest
from support.services.unlocks import (
    UnlockAlreadyDecided,
    unlock_request_approve,
    unlock_request_create,
    unlock_request_reject,
)
from tests.conftest import signed_in
from tests.factories import DeviceFactory, UserFactory, enrol_device, make_contract

# Tuesday 17 Feb 2026, 10:00 in Colombo: the 15 Jan installment is 33 days late.
TUESDAY_MORNING = dt.datetime(2026, 2, 17, 4, 30, tzinfo=dt.UTC)


@pytest.fixture
def locked(provider_a):
    """A contract locked by the sweep on Tuesday morning (33 days overdue)."""
    contract = make_contract(provider_a, number="DLG-100")
    assert lock_sweep(now=TUESDAY_MORNING).changed == {"locked": 1}
    contract.refresh_from_db()
    return contract


@pytest.fixture
def overdue_now(provider_a):
    """A contract past grace at the real clock, for the pages (which use the real time)."""
    return make_contract(provider_a, number="DLG-200", first_due_date=provider_a.today() - dt.timedelta(days=60))


def newest_command(device_id) -> DeviceCommand:
    return DeviceCommand.objects.filter(device_id=device_id).order_by("-seq").first()


def ask(device, user, kind="temporary", **fields):
    fields.setdefault("reason", "Owner showed the bank slip; payment on its way")
    if kind == "temporary":
        fields.setdefault("hours", 24)
    return unlock_request_create(device=device, kind=kind, requested_by=user, **fields)


# --- temporary unlock -------------------------------------------------------------------------


def test_an_approved_temporary_unlock_issues_the_signed_command_at_once(locked, agent_a, admin_a):
    request = ask(locked.device, agent_a, hours=24)
    assert request.status == "pending" and request.contract_id == locked.pk
    assert newest_command(locked.device_id).state == "locked"  # nothing happens before approval

    result = unlock_request_approve(
        unlock_request=request, approver=admin_a, note="ok", now=TUESDAY_MORNING + dt.timedelta(hours=1)
    )

    request.refresh_from_db()
    assert request.status == "approved" and request.decided_by == admin_a and result.offline_token is None
    override = LockOverride.objects.get(contract=locked)
    assert override.kind == "temp_unlock" and override.created_by == admin_a
    assert override.ends_at == TUESDAY_MORNING + dt.timedelta(hours=25)
    assert (
        request.override == override and "Temporarily unlocked until 18 Feb 2026 11:00 +0530" in request.outcome
    )  # Colombo time
    command = newest_command(locked.device_id)
    assert command.state == "temp_unlocked"
    payload = check_command(open_envelope(command.envelope, public_keys()))  # signed: the phone will accept it
    assert payload["state"] == "temp_unlocked" and payload["expires_at"] == "2026-02-18T05:30:00Z"
    assert Contract.objects.get(pk=locked.pk).lock_state == "temp_unlocked"
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"unlock_request.create", "unlock_request.approve", "lock_override.create", "device.state"} <= actions


def test_when_the_temporary_unlock_ends_the_sweep_locks_the_phone_again(locked, agent_a, admin_a):
    request = ask(locked.device, agent_a, hours=24)
    unlock_request_approve(unlock_request=request, approver=admin_a, now=TUESDAY_MORNING)
    # While it lasts the sweep leaves it alone...
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(hours=23)).total_changed == 0
    # ...and once it has ended (Wednesday, 10:30 in Colombo: inside lock hours) it locks again.
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(hours=24, minutes=30)).changed == {"locked": 1}
    assert newest_command(locked.device_id).state == "locked"
    assert Device.objects.get(pk=locked.device_id).desired_state == "locked"


def test_a_temporary_unlock_is_capped_by_the_lock_policy(locked, agent_a, admin_a):
    lock_policy_update(provider=locked.provider, actor=admin_a, max_temp_unlock_hours=12)
    with pytest.raises(ValidationError) as exc:
        ask(locked.device, agent_a, hours=13)
    assert "from 1 to 12" in str(exc.value)
    assert not UnlockRequest.objects.exists()
    assert ask(locked.device, agent_a, hours=12).hours == 12


def test_a_temporary_unlock_needs_a_contract(provider_a, agent_a):
    retail = DeviceFactory(provider=provider_a)
    with pytest.raises(ValidationError) as exc:
        ask(retail, agent_a)
    assert "needs an active contract" in str(exc.value)


# --- four eyes and races ----------------------------------------------------------------------


def test_nobody_approves_their_own_request(locked, admin_a):
    request = ask(locked.device, admin_a)
    with pytest.raises(PermissionDenied) as exc:
        unlock_request_approve(unlock_request=request, approver=admin_a, now=TUESDAY_MORNING)
    assert "someone else" in str(exc.value)
    with pytest.raises(PermissionDenied):
        unlock_request_reject(unlock_request=request, approver=admin_a, note="never mind")
    request.refresh_from_db()
    assert request.status == "pending" and not LockOverride.objects.exists()
    assert newest_command(locked.device_id).state == "locked"


def test_an_account_the_requester_set_up_cannot_approve_their_request(locked, admin_a, finance_a):
    """Four eyes means two people: a second account of the requester's making is not a second person."""
    from portal.services import staff_create

    sidekick, _link = staff_create(
        organisation=admin_a.organisation, username="a.sidekick", role="provider_admin", actor=admin_a
    )
    request = ask(locked.device, admin_a)

    with pytest.raises(PermissionDenied) as exc:
        unlock_request_approve(unlock_request=request, approver=sidekick, now=TUESDAY_MORNING)
    assert "set up your account" in str(exc.value)
    request.refresh_from_db()
    assert request.status == "pending"
    colleague = UserFactory(username="a.colleague", organisation=admin_a.organisation, role="provider_admin")
    assert unlock_request_approve(unlock_request=request, approver=colleague, now=TUESDAY_MORNING).unlock_request


def test_the_requester_is_told_on_the_page_that_someone_else_must_approve(overdue_now, admin_a, as_user):
    request = ask(overdue_now.device, admin_a)
    client = as_user(admin_a)
    page = client.get(reverse("support:unlock", args=[request.pk])).content.decode()
    assert "Another person of Dialog Finance must approve or reject it" in page
    response = client.post(reverse("support:unlock_approve", args=[request.pk]), follow=True)
    assert "someone else of the provider must approve" in response.content.decode()
    assert UnlockRequest.objects.get(pk=request.pk).status == "pending"


def test_of_two_approvers_at_once_one_wins_and_the_other_is_told_it_is_done(locked, finance_a, agent_a, admin_a):
    request = ask(locked.device, agent_a)
    # Both approvers loaded the request while it was pending (the same stale object).
    unlock_request_approve(unlock_request=request, approver=admin_a, now=TUESDAY_MORNING)
    with pytest.raises(UnlockAlreadyDecided) as exc:
        unlock_request_approve(unlock_request=request, approver=admin_a, now=TUESDAY_MORNING)
    assert "Already approved by admin.a; nothing more to do." in exc.value.messages
    assert LockOverride.objects.count() == 1
    assert DeviceCommand.objects.filter(device_id=locked.device_id, state="temp_unlocked").count() == 1
    with pytest.raises(UnlockAlreadyDecided):
        unlock_request_reject(unlock_request=request, approver=admin_a, note="too late")
    assert AuditEvent.objects.filter(action="unlock_request.approve").count() == 1


def test_a_second_approver_on_the_page_is_told_it_is_done(overdue_now, agent_a, admin_a, provider_a, as_user):
    from tests.factories import UserFactory

    other_admin = UserFactory(username="admin.a2", organisation=provider_a, role="provider_admin")
    request = ask(overdue_now.device, agent_a)
    url = reverse("support:unlock_approve", args=[request.pk])
    first = as_user(admin_a).post(url, {"note": "go"})
    assert first.status_code == 302
    second = as_user(other_admin).post(url, {"note": "go"}, follow=True)
    assert "Already approved by admin.a; nothing more to do." in second.content.decode()
    assert LockOverride.objects.count() == 1
    assert newest_command(overdue_now.device_id).state == "temp_unlocked"


def test_a_failed_effect_leaves_the_request_pending(locked, agent_a, admin_a):
    request = ask(locked.device, agent_a, hours=48)
    lock_policy_update(provider=locked.provider, actor=admin_a, max_temp_unlock_hours=24)  # tightened meanwhile
    with pytest.raises(ValidationError):
        unlock_request_approve(unlock_request=request, approver=admin_a, now=TUESDAY_MORNING)
    request.refresh_from_db()
    assert request.status == "pending" and request.decided_by is None and not LockOverride.objects.exists()


# --- release and offline codes ----------------------------------------------------------------


def test_a_release_removes_the_lock_for_good_without_touching_the_money(locked, agent_a, admin_a):
    request = ask(locked.device, agent_a, kind="release", reason="Locked in error: cash sale")
    unlock_request_approve(unlock_request=request, approver=admin_a, now=TUESDAY_MORNING)
    contract = Contract.objects.get(pk=locked.pk)
    assert contract.lock_state == "released" and contract.status == "active"
    command = newest_command(locked.device_id)
    assert (
        command.state == "released"
        and check_command(open_envelope(command.envelope, public_keys()))["state"] == "released"
    )
    assert AuditEvent.objects.filter(action="contract.release", object_id=str(locked.pk)).exists()
    # Weeks later, still overdue on paper: the sweep never locks it again.
    assert lock_sweep(now=TUESDAY_MORNING + dt.timedelta(days=30)).total_changed == 0
    with pytest.raises(ValidationError):
        ask(locked.device, agent_a, kind="release")


def test_a_retail_unit_without_a_contract_can_be_released(provider_a, agent_a, admin_a):
    retail = DeviceFactory(provider=provider_a)
    request = ask(retail, agent_a, kind="release", reason="Retail unit, never financed")
    unlock_request_approve(unlock_request=request, approver=admin_a)
    assert newest_command(retail.pk).state == "released"
    assert Device.objects.get(pk=retail.pk).desired_state == "released"


@pytest.fixture
def enrolled(overdue_now, provider_a):
    _token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=None)
    enrol_device(overdue_now.device.imei, secret)
    overdue_now.device.refresh_from_db()
    return overdue_now.device


def test_an_offline_code_is_shown_once_to_the_approver(enrolled, agent_a, admin_a, as_user):
    request = ask(enrolled, agent_a, kind="offline_code", offline_kind="unlock_days", days=3)
    client = as_user(admin_a)
    response = client.post(reverse("support:unlock_approve", args=[request.pk]), {"note": "phone offline"})
    request.refresh_from_db()
    token = request.offline_code.token
    assert response.status_code == 200 and token in response.content.decode()
    assert response["Cache-Control"] == "no-store"
    assert "shows it once" in response.content.decode()
    # Never again: not on the page, not in the audit trail.
    assert token not in client.get(reverse("support:unlock", args=[request.pk])).content.decode()
    assert token not in as_user(agent_a).get(reverse("support:unlock", args=[request.pk])).content.decode()
    for event in AuditEvent.objects.all():
        assert token not in str(event.after) and token not in str(event.before)
    assert request.offline_code.approved_by == admin_a and request.offline_code.requested_by == agent_a


def test_a_new_offline_code_key_is_asked_for_and_approved_on_the_pages_by_two_people(
    enrolled, agent_a, admin_a, client
):
    old_secret = enrolled.offline_secret
    asker = signed_in(client, agent_a)
    page = asker.get(reverse("devices:detail", args=[enrolled.pk])).content.decode()
    assert "Ask for a new offline-code key" in page
    asker.post(
        reverse("support:unlock_new") + f"?device={enrolled.pk}",
        {"kind": "rekey", "reason": "Storage replaced at the service centre"},
    )
    request = UnlockRequest.objects.get(kind="rekey")
    assert request.kind_label == "New offline-code key" and request.status == "pending"
    # The requester cannot approve it, on the page either.
    asker.post(reverse("support:unlock_approve", args=[request.pk]), {"note": "mine"})
    assert UnlockRequest.objects.get(pk=request.pk).status == "pending"
    assert Device.objects.get(pk=enrolled.pk).offline_secret == old_secret
    client.logout()

    done = signed_in(client, admin_a).post(reverse("support:unlock_approve", args=[request.pk]), {"note": "ok"})

    assert done.status_code == 302
    request.refresh_from_db()
    assert request.status == "approved" and "receives it when it next enrols" in request.outcome
    rekeyed = Device.objects.get(pk=enrolled.pk)
    assert rekeyed.offline_secret != old_secret and rekeyed.offline_sent_at is None
    page = client.get(reverse("devices:detail", args=[enrolled.pk])).content.decode()
    assert "waiting for the phone" in page and rekeyed.offline_secret not in page


def test_an_offline_code_needs_an_enrolled_phone(overdue_now, agent_a):
    with pytest.raises(ValidationError) as exc:
        ask(overdue_now.device, agent_a, kind="offline_code", offline_kind="release")
    assert "has not enrolled" in str(exc.value)


# --- rejection, tenants, technicians, pages ---------------------------------------------------


def test_a_rejection_needs_a_reason_and_changes_nothing_on_the_phone(locked, agent_a, admin_a):
    request = ask(locked.device, agent_a)
    with pytest.raises(ValidationError):
        unlock_request_reject(unlock_request=request, approver=admin_a, note=" ")
    unlock_request_reject(unlock_request=request, approver=admin_a, note="Payment not received yet")
    request.refresh_from_db()
    assert request.status == "rejected" and request.decision_note == "Payment not received yet"
    assert newest_command(locked.device_id).state == "locked" and not LockOverride.objects.exists()
    assert AuditEvent.objects.filter(action="unlock_request.reject", object_id=str(request.pk)).exists()


def test_provider_b_staff_never_see_provider_a_requests(overdue_now, agent_a, agent_b, as_user):
    request = ask(overdue_now.device, agent_a)
    client = as_user(agent_b)
    assert client.get(reverse("support:unlock", args=[request.pk])).status_code == 404
    assert client.post(reverse("support:unlock_approve", args=[request.pk])).status_code == 404
    assert client.post(reverse("support:unlock_reject", args=[request.pk]), {"note": "x"}).status_code == 404
    assert overdue_now.device.imei not in client.get(reverse("support:unlocks"), {"status": "all"}).content.decode()
    assert client.get(reverse("support:unlock_new"), {"device": overdue_now.device_id}).status_code == 404
    with pytest.raises(Exception) as exc:
        unlock_request_approve(unlock_request=request, approver=agent_b)
    assert exc.type.__name__ == "Http404"
    assert UnlockRequest.objects.get(pk=request.pk).status == "pending"


def test_a_technician_asks_and_the_provider_approves(overdue_now, technician, admin_a, as_user):
    client = as_user(technician)
    response = client.post(
        reverse("support:unlock_new"),
        {"imei": overdue_now.device.imei, "kind": "temporary", "hours": "6", "reason": "Owner at the counter"},
    )
    request = UnlockRequest.objects.get()
    assert response.status_code == 302 and request.requester_organisation == technician.organisation
    page = client.get(reverse("support:unlock", args=[request.pk])).content.decode()
    assert "DLG-200" not in page and overdue_now.customer.name not in page  # no contract, no customer
    assert client.post(reverse("support:unlock_approve", args=[request.pk])).status_code == 403
    as_user(admin_a).post(reverse("support:unlock_approve", args=[request.pk]))
    assert UnlockRequest.objects.get(pk=request.pk).status == "approved"
    assert newest_command(overdue_now.device_id).state == "temp_unlocked"


def test_the_request_form_and_the_approvers_list(overdue_now, agent_a, admin_a, as_user):
    client = as_user(agent_a)
    form = client.get(reverse("support:unlock_new"), {"device": overdue_now.device_id})
    assert form.status_code == 200 and "1 to 72" in form.content.decode()
    too_long = client.post(
        reverse("support:unlock_new") + f"?device={overdue_now.device_id}",
        {"kind": "temporary", "hours": "100", "reason": "x"},
    )
    assert too_long.status_code == 200 and not UnlockRequest.objects.exists()
    done = client.post(
        reverse("support:unlock_new") + f"?device={overdue_now.device_id}",
        {"kind": "temporary", "hours": "24", "reason": "Owner paid at the bank"},
    )
    request = UnlockRequest.objects.get()
    assert done.url == reverse("support:unlock", args=[request.pk])
    listing = as_user(admin_a).get(reverse("support:unlocks")).content.decode()
    assert f"#{request.pk}" in listing and "Temporary unlock for 24 h" in listing


def test_the_list_runs_the_same_queries_for_3_or_10_requests(
    provider_a, agent_a, admin_a, as_user, django_assert_max_num_queries
):
    devices = [make_contract(provider_a).device for _ in range(10)]
    for device in devices[:3]:
        ask(device, agent_a, kind="release")
    client = as_user(admin_a)
    url = reverse("support:unlocks")
    client.get(url)  # warm the session
    with CaptureQueriesContext(connection) as three:
        assert client.get(url).content.decode().count("Permanent release") == 3
    queries_for_three = len(three)  # read now: the next request clears the query log
    for device in devices[3:]:
        ask(device, agent_a, kind="release")
    with django_assert_max_num_queries(queries_for_three):
        assert client.get(url).content.decode().count("Permanent release") == 10


def test_an_unlock_cannot_borrow_the_justification_of_a_case_about_another_phone(provider_a, agent_a):
    from support.services.cases import case_open
    from support.services.unlocks import unlock_request_create

    first, second = make_contract(provider_a), make_contract(provider_a)
    case = case_open(provider=provider_a, category="dispute", opened_by=agent_a, summary="Wrong amount", contract=first)
    with pytest.raises(ValidationError) as refused:
        unlock_request_create(
            device=second.device, kind="release", requested_by=agent_a, reason="See the case", case=case
        )
    assert "another phone" in str(refused.value)
