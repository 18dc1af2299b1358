"""Four eyes means two people: an account someone set up cannot approve for them, nor they for it.

Stories (the security review's): a provider admin creates an agent, takes its set-password
link, signs in as it and asks for a release, then approves as admin — refused. The same
through a second admin (admin → admin 2 → agent), in both directions, and with one admin
setting up two accounts. A colleague set up independently approves. After the look-back
period the link no longer counts. The approver reads why.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from portal.four_eyes import four_eyes_check, four_eyes_refusal
from portal.services import staff_create, staff_password_link, staff_role_change, staff_set_active
from tests.factories import UserFactory


@pytest.fixture
def org(admin_a):
    return admin_a.organisation


def create(org, actor, username, role="agent"):
    user, _link = staff_create(organisation=org, username=username, role=role, actor=actor)
    return user


def test_an_account_the_approver_created_cannot_ask_them(org, admin_a):
    agent = create(org, admin_a, "a.puppet")
    reason = four_eyes_refusal(requester=agent, approver=admin_a)
    assert reason.startswith("You set up the account of a.puppet (you created a.puppet on ")
    with pytest.raises(PermissionDenied):
        four_eyes_check(requester=agent, approver=admin_a)


def test_an_account_the_requester_created_cannot_approve(org, admin_a):
    sidekick = create(org, admin_a, "a.sidekick", role="provider_admin")
    reason = four_eyes_refusal(requester=admin_a, approver=sidekick)
    assert reason.startswith("admin.a, who asked for this, set up your account (admin.a created you on ")


def test_a_chain_of_set_ups_links_both_ends_in_both_directions(org, admin_a):
    second = create(org, admin_a, "a.second", role="provider_admin")
    agent = create(org, second, "a.end")
    assert "a.second created a.end" in four_eyes_refusal(requester=agent, approver=admin_a)
    assert "admin.a created a.second" in four_eyes_refusal(requester=admin_a, approver=agent)


def test_one_person_setting_up_two_accounts_cannot_use_one_to_approve_the_other(org, admin_a):
    one = create(org, admin_a, "a.one")
    two = create(org, admin_a, "a.two")
    reason = four_eyes_refusal(requester=one, approver=two)
    assert reason.startswith("admin.a set up both your account")


@pytest.mark.parametrize("how", ["password_link", "activate", "promote"])
def test_a_reset_re_activation_or_promotion_links_like_a_creation(org, admin_a, how):
    other_admin = UserFactory(username="a.other", organisation=org, role="provider_admin")
    agent = UserFactory(username="a.agent", organisation=org, role="agent")
    assert four_eyes_refusal(requester=agent, approver=other_admin) is None
    if how == "password_link":
        staff_password_link(user=agent, actor=other_admin)
    elif how == "activate":
        staff_set_active(user=agent, active=False, actor=admin_a)
        staff_set_active(user=agent, active=True, actor=other_admin)
    else:
        staff_role_change(user=agent, role="finance", actor=other_admin)
    assert four_eyes_refusal(requester=agent, approver=other_admin)
    assert four_eyes_refusal(requester=other_admin, approver=agent)


def test_colleagues_set_up_independently_may_approve(org, admin_a, agent_a):
    colleague = UserFactory(username="a.colleague", organisation=org, role="provider_admin")
    create(org, admin_a, "a.newcomer")  # admin_a's other set-ups do not taint agent_a
    assert four_eyes_refusal(requester=agent_a, approver=colleague) is None
    assert four_eyes_refusal(requester=agent_a, approver=admin_a) is None


def test_after_the_look_back_period_a_set_up_no_longer_counts(org, admin_a, settings):
    agent = create(org, admin_a, "a.old")
    later = timezone.now() + dt.timedelta(days=settings.FOUR_EYES_LOOKBACK_DAYS, minutes=1)
    assert four_eyes_refusal(requester=agent, approver=admin_a, now=later) is None
    assert four_eyes_refusal(requester=agent, approver=admin_a) is not None


def test_nobody_approves_their_own_request(admin_a):
    assert "yourself" in four_eyes_refusal(requester=admin_a, approver=admin_a)


# --- the Django admin: a password set or an account re-activated there links like the portal's ------


@pytest.fixture
def admin_site_admin(org, admin_a):
    """admin.a, whom the platform gave Django-admin access (staff and superuser)."""
    admin_a.is_staff = admin_a.is_superuser = True
    admin_a.save(update_fields=["is_staff", "is_superuser"])
    return admin_a


def admin_set_password(client, user, password="a-new-passphrase-2026"):
    data = {"password1": password, "password2": password}
    if user.has_usable_password():
        data["usable_password"] = "true"
    response = client.post(f"/admin/portal/user/{user.pk}/password/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    return response


def admin_change_user(client, user, **changes):
    data = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "organisation": user.organisation_id,
        "role": user.role,
        "is_active": "on" if user.is_active else "",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "10:00:00",
    } | changes
    data = {k: v for k, v in data.items() if v != ""}
    response = client.post(f"/admin/portal/user/{user.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    return response


def test_a_password_set_in_the_django_admin_is_audited_and_links_both_ways(org, admin_site_admin, as_user):
    from portal.models import AuditEvent

    agent = UserFactory(username="a.puppet", organisation=org, role="agent")
    assert four_eyes_refusal(requester=agent, approver=admin_site_admin) is None
    admin_set_password(as_user(admin_site_admin), agent)

    event = AuditEvent.objects.get(action="user.password_change")
    assert event.actor == admin_site_admin and event.object_id == str(agent.pk)
    assert event.organisation_id == org.pk
    agent.refresh_from_db()
    assert agent.password not in str(event.after) and agent.password not in str(event.before)
    assert event.after == {"usable_password": True}
    assert "you set the password of (Django admin) a.puppet" in four_eyes_refusal(
        requester=agent, approver=admin_site_admin
    )
    assert four_eyes_refusal(requester=admin_site_admin, approver=agent) is not None


def test_a_wrong_password_form_in_the_django_admin_changes_and_records_nothing(org, admin_site_admin, as_user):
    from portal.models import AuditEvent

    agent = UserFactory(username="a.puppet", organisation=org, role="agent")
    before = agent.password
    response = as_user(admin_site_admin).post(
        f"/admin/portal/user/{agent.pk}/password/",
        {"usable_password": "true", "password1": "one-passphrase-2026", "password2": "another-one-2026"},
    )
    assert response.status_code == 200
    agent.refresh_from_db()
    assert agent.password == before and not AuditEvent.objects.filter(action="user.password_change").exists()


def test_a_re_activation_in_the_django_admin_links_like_a_creation(org, admin_site_admin, as_user):
    agent = UserFactory(username="a.dormant", organisation=org, role="agent", is_active=False)
    assert four_eyes_refusal(requester=agent, approver=admin_site_admin) is None
    admin_change_user(as_user(admin_site_admin), agent, is_active="on")
    agent.refresh_from_db()
    assert agent.is_active
    assert "you changed (Django admin) a.dormant" in four_eyes_refusal(requester=agent, approver=admin_site_admin)
    assert four_eyes_refusal(requester=admin_site_admin, approver=agent) is not None


def test_an_operator_who_set_both_passwords_in_the_admin_links_the_two_accounts(org, operator, as_user):
    operator.is_superuser = True
    operator.save(update_fields=["is_superuser"])
    agent = UserFactory(username="a.one", organisation=org, role="agent")
    approver = UserFactory(username="a.two", organisation=org, role="provider_admin")
    client = as_user(operator)
    admin_set_password(client, agent)
    admin_set_password(client, approver)
    reason = four_eyes_refusal(requester=agent, approver=approver)
    assert reason.startswith("operator set up both your account")
    assert four_eyes_refusal(requester=approver, approver=agent) is not None


# --- the offline-code path ------------------------------------------------------------------------


@pytest.fixture
def enrolled_phone(provider_a):
    from devices.services.tokens import enrollment_token_create
    from tests.factories import DeviceFactory, enrol_device

    device = DeviceFactory(provider=provider_a)
    _token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=None)
    enrol_device(device.imei, secret)
    device.refresh_from_db()
    return device


@pytest.mark.parametrize("direction", ["approver_made_requester", "requester_made_approver"])
def test_an_offline_code_is_refused_between_linked_accounts_and_nothing_is_issued(
    org, admin_a, enrolled_phone, direction
):
    from devices.models import Device, OfflineCode
    from devices.services.offline import offline_code_issue

    other = create(org, admin_a, "a.made", role="agent" if direction == "approver_made_requester" else "provider_admin")
    requester, approver = (other, admin_a) if direction == "approver_made_requester" else (admin_a, other)
    with pytest.raises(PermissionDenied) as exc:
        offline_code_issue(
            device=enrolled_phone,
            kind="release",
            requested_by=requester,
            approved_by=approver,
            reason="Owner paid at the branch",
        )
    assert "set up" in str(exc.value)
    assert not OfflineCode.objects.exists()
    assert Device.objects.get(pk=enrolled_phone.pk).offline_count == enrolled_phone.offline_count


def test_an_offline_code_through_an_unlock_request_is_refused_and_the_request_stays_pending(
    org, admin_a, enrolled_phone
):
    from devices.models import OfflineCode
    from support.services.unlocks import unlock_request_approve, unlock_request_create

    agent = create(org, admin_a, "a.puppet")
    request = unlock_request_create(
        device=enrolled_phone,
        kind="offline_code",
        offline_kind="release",
        requested_by=agent,
        reason="The phone has no signal at the owner's farm",
    )
    with pytest.raises(PermissionDenied):
        unlock_request_approve(unlock_request=request, approver=admin_a)
    request.refresh_from_db()
    assert request.status == "pending" and request.offline_code is None and not OfflineCode.objects.exists()


def test_approval_events_name_the_requester_by_id(org, admin_a, agent_a, enrolled_phone):
    """The auditor's same-browser list finds the requester of every approval by id."""
    from portal.models import AuditEvent
    from portal.selectors import APPROVAL_ACTIONS, APPROVAL_REQUESTER_KEY
    from support.services.unlocks import unlock_request_approve, unlock_request_create

    request = unlock_request_create(
        device=enrolled_phone,
        kind="offline_code",
        offline_kind="unlock_days",
        days=3,
        requested_by=agent_a,
        reason="No signal at the farm",
    )
    unlock_request_approve(unlock_request=request, approver=admin_a)
    events = AuditEvent.objects.filter(action__in=APPROVAL_ACTIONS)
    # payment.confirm (a receipt confirmed by a second person): tests/test_provisional_payments.py.
    assert {e.action for e in events} == set(APPROVAL_ACTIONS) - {"payment.confirm"}
    for event in events:
        assert event.actor == admin_a and event.after[APPROVAL_REQUESTER_KEY] == agent_a.pk


# --- the approver reads why, before and after clicking -----------------------------------------


@pytest.fixture
def overdue(provider_a):
    from tests.factories import make_contract

    return make_contract(provider_a, number="DLG-4EYES", first_due_date=provider_a.today() - dt.timedelta(days=60))


def test_the_unlock_page_shows_the_refusal_instead_of_the_approve_button(org, admin_a, overdue, as_user):
    from django.urls import reverse

    from support.services.unlocks import unlock_request_create

    agent = create(org, admin_a, "a.puppet")
    request = unlock_request_create(device=overdue.device, kind="release", requested_by=agent, reason="Paid in cash")
    page = as_user(admin_a).get(reverse("support:unlock", args=[request.pk])).content.decode()
    assert "You cannot approve this request." in page
    assert "You set up the account of a.puppet (you created a.puppet on " in page
    assert "Approve and apply now" not in page
    assert "Reject" in page  # a rejection changes nothing on the phone: still possible


def test_an_approver_set_up_independently_sees_the_approve_button(org, admin_a, agent_a, overdue, as_user):
    from django.urls import reverse

    from support.services.unlocks import unlock_request_create

    request = unlock_request_create(device=overdue.device, kind="release", requested_by=agent_a, reason="Paid")
    page = as_user(admin_a).get(reverse("support:unlock", args=[request.pk])).content.decode()
    assert "Approve and apply now" in page and "You cannot approve" not in page


def test_approving_anyway_shows_the_reason_and_changes_nothing(org, admin_a, overdue, as_user):
    from django.urls import reverse

    from devices.models import DeviceCommand
    from payments.models import Contract
    from portal.models import AuditEvent
    from support.models import UnlockRequest
    from support.services.unlocks import unlock_request_create

    agent = create(org, admin_a, "a.puppet")
    request = unlock_request_create(device=overdue.device, kind="release", requested_by=agent, reason="Paid in cash")
    client = as_user(admin_a)
    events, commands = AuditEvent.objects.count(), DeviceCommand.objects.count()
    response = client.post(reverse("support:unlock_approve", args=[request.pk]), {"note": "ok"})
    assert response.status_code == 403
    body = response.content.decode()
    assert "You set up the account of a.puppet" in body and "Approve and apply now" not in body
    assert UnlockRequest.objects.get(pk=request.pk).status == "pending"
    assert Contract.objects.get(pk=overdue.pk).lock_state != "released"
    assert DeviceCommand.objects.count() == commands and AuditEvent.objects.count() == events


def test_a_reviewer_linked_to_the_technician_reads_why_and_granting_changes_nothing(
    provider_a, service_center, admin_site_admin, overdue, as_user
):
    """A proof review that grants an unlock approves the technician's request: four eyes applies."""
    from django.urls import reverse

    from payments.models import Contract
    from support.models import ProofReview, ReviewStatus, UnlockRequest

    admin_a = admin_site_admin
    technician = UserFactory(username="tech.linked", organisation=service_center, role="technician")
    client = as_user(admin_a)
    # admin.a once edited the technician's account in the Django admin: a set-up link.
    admin_change_user(client, technician, first_name="Nimal")
    review = ProofReview.objects.create(
        provider=provider_a, device=overdue.device, service_center=service_center, submitted_by=technician
    )
    page = client.get(reverse("support:review", args=[review.pk])).content.decode()
    assert "You cannot grant an unlock for this review." in page and "tech.linked" in page
    response = client.post(
        reverse("support:review_decide", args=[review.pk]),
        {"outcome": "not_financed", "reason": "Receipt from our own shop"},
    )
    assert response.status_code == 403 and "you changed (Django admin) tech.linked" in response.content.decode()
    assert ProofReview.objects.get(pk=review.pk).status == ReviewStatus.PENDING
    assert not UnlockRequest.objects.exists()
    assert Contract.objects.get(pk=overdue.pk).lock_state != "released"


def test_whoever_chooses_a_password_with_anothers_link_is_linked_to_that_account(org, admin_a, as_user):
    """Review: a signed-in colleague who used an agent's set-password link left no link in the trail."""
    from django.urls import reverse

    agent = create(org, admin_a, "a.linked")
    colleague = UserFactory(username="admin.colleague", organisation=org, role="provider_admin")
    assert four_eyes_refusal(requester=agent, approver=colleague) is None  # set up independently so far
    uid, token = staff_password_link(user=agent, actor=admin_a)
    client = as_user(colleague)
    form = client.get(reverse("portal:set_password", kwargs={"uidb64": uid, "token": token}), follow=True)
    client.post(
        form.redirect_chain[-1][0], {"new_password1": "river-otter-2026!", "new_password2": "river-otter-2026!"}
    )

    agent.refresh_from_db()
    assert agent.check_password("river-otter-2026!")
    reason = four_eyes_refusal(requester=agent, approver=colleague)
    assert "you chose the password (with the link) of a.linked" in reason
