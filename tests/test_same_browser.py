"""Same browser, for the auditor: approvals where requester and approver signed in from one browser.

Nobody is refused for it — a call centre's agents share computers — but two accounts of one
person look exactly like this, so the auditor gets a list.

Stories:
* the sign-in page gives the browser a long-lived random cookie (HttpOnly, SameSite=Lax,
  Secure outside DEBUG); the ``login`` event records a keyed digest of it, never the value;
* two agents sign in one after the other on one computer, one asks for a release and the
  other approves it: the approval goes through, and the auditor's page lists it with both
  names and both sign-in times in the provider's zone; an approval from two browsers is not
  listed, nor one whose shared sign-ins are older than the look-back period;
* provider B's auditor sees none of provider A's approvals, and asking for provider A by name is
  404; the page runs the same queries for one listed approval as for four.
"""

from __future__ import annotations

import datetime as dt
import re
from unittest import mock

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from portal.browsers import BROWSER_COOKIE, browser_digest
from portal.models import AuditEvent
from support.services.unlocks import unlock_request_approve, unlock_request_create
from tests.factories import UserFactory, enrol_device, make_contract

PASSWORD = "correct-horse-battery"
URL = "/audit/same-browser/"


@pytest.fixture
def agent_a2(provider_a):
    return UserFactory(username="agent.a2", organisation=provider_a, role="agent")


@pytest.fixture
def auditor_b(provider_b):
    return UserFactory(username="auditor.b", organisation=provider_b, role="auditor")


@pytest.fixture
def platform_auditor(platform):
    return UserFactory(username="auditor.platform", organisation=platform, role="auditor")


def sign_in(client: Client, user) -> None:
    """Through the real sign-in page, as a person at that browser would."""
    client.post("/logout/")
    assert client.get("/login/").status_code == 200
    response = client.post("/login/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 302, response.content.decode()[:2000]


def release_approved(provider, requester, approver):
    contract = make_contract(provider, first_due_date=provider.today() - dt.timedelta(days=60))
    request = unlock_request_create(
        device=contract.device, kind="release", requested_by=requester, reason="Owner paid in cash at the branch"
    )
    return unlock_request_approve(unlock_request=request, approver=approver).unlock_request


def test_the_sign_in_page_sets_a_long_lived_random_browser_cookie(client, settings):
    first = client.get("/login/").cookies[BROWSER_COOKIE]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first.value)
    assert first["httponly"] and first["samesite"] == "Lax"
    assert 399 * 86400 <= int(first["max-age"]) <= 400 * 86400
    again = client.get("/login/").cookies[BROWSER_COOKIE]
    assert again.value == first.value  # the same browser keeps its id (and its 400 days start again)
    assert Client().get("/login/").cookies[BROWSER_COOKIE].value != first.value
    settings.DEBUG = False
    assert Client().get("/login/").cookies[BROWSER_COOKIE]["secure"]


def test_a_made_up_cookie_is_replaced(client):
    client.cookies[BROWSER_COOKIE] = "x' OR 1=1"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", client.get("/login/").cookies[BROWSER_COOKIE].value)


def test_the_login_event_records_a_keyed_digest_of_the_browser_never_its_value(client, agent_a, agent_a2):
    sign_in(client, agent_a)
    cookie = client.cookies[BROWSER_COOKIE].value
    sign_in(client, agent_a2)
    events = list(AuditEvent.objects.filter(action="login").order_by("id"))
    assert [e.actor for e in events] == [agent_a, agent_a2]
    digests = {e.after["browser"] for e in events}
    assert digests == {browser_digest(cookie)} and re.fullmatch(r"[0-9a-f]{16}", digests.pop())
    assert cookie not in str([(e.before, e.after, e.object_repr) for e in events])
    other = Client()
    sign_in(other, agent_a)
    assert AuditEvent.objects.filter(action="login").latest("id").after["browser"] != browser_digest(cookie)


def test_approvals_from_one_browser_go_through_and_the_auditor_sees_them(
    client, provider_a, agent_a, agent_a2, auditor_a, as_user
):
    shared = Client()
    sign_in(shared, agent_a)
    sign_in(shared, agent_a2)
    same = release_approved(provider_a, agent_a, agent_a2)  # not refused: only listed
    assert same.status == "approved"
    elsewhere = Client()
    colleague = UserFactory(username="agent.a3", organisation=provider_a, role="agent")
    sign_in(elsewhere, colleague)
    different = release_approved(provider_a, agent_a, colleague)

    page = as_user(auditor_a).get(URL)
    assert page.status_code == 200
    body = page.content.decode()
    assert f"#{same.pk} " in body and f"#{different.pk} " not in body
    assert "agent.a2" in body and "agent.a:" in body
    approval = AuditEvent.objects.get(action="unlock_request.approve", object_id=str(same.pk))
    local = approval.created_at.astimezone(provider_a.zone)
    assert f"{local:%d %b %Y %H:%M} +0530" in body  # Colombo time, with its offset
    assert browser_digest(shared.cookies[BROWSER_COOKIE].value) in body
    audit_page = as_user(auditor_a).get("/audit/").content.decode()
    assert reverse("portal:audit_same_browser") in audit_page


def test_the_offline_code_approval_is_listed_too(provider_a, agent_a, agent_a2, auditor_a, as_user):
    from devices.services.offline import offline_code_issue
    from devices.services.tokens import enrollment_token_create

    shared = Client()
    sign_in(shared, agent_a)
    sign_in(shared, agent_a2)
    contract = make_contract(provider_a)
    _token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=None)
    enrol_device(contract.device.imei, secret)
    contract.device.refresh_from_db()
    offline_code_issue(
        device=contract.device, kind="release", requested_by=agent_a, approved_by=agent_a2, reason="No signal"
    )
    body = as_user(auditor_a).get(URL).content.decode()
    assert "Offline code issued" in body and "agent.a2" in body


def test_sign_ins_older_than_the_look_back_period_do_not_count(provider_a, agent_a, agent_a2, auditor_a, as_user):
    shared = Client()
    sign_in(shared, agent_a)
    sign_in(shared, agent_a2)
    later = timezone.now() + dt.timedelta(days=31)
    with mock.patch("django.utils.timezone.now", return_value=later):
        release_approved(provider_a, agent_a, agent_a2)
    assert "No approval where both signed in from one browser." in as_user(auditor_a).get(URL).content.decode()


def test_another_provider_sees_none_of_it_and_naming_it_is_404(
    provider_a, agent_a, agent_a2, auditor_b, platform_auditor, as_user, client
):
    shared = Client()
    sign_in(shared, agent_a)
    sign_in(shared, agent_a2)
    approved = release_approved(provider_a, agent_a, agent_a2)
    as_user(auditor_b)
    assert f"#{approved.pk} " not in client.get(URL).content.decode()
    assert client.get(URL, {"provider": "dialog"}).status_code == 404
    assert client.get(URL, {"provider": "jamii"}).status_code == 200
    as_user(platform_auditor)
    body = client.get(URL, {"provider": "dialog"}).content.decode()
    assert f"#{approved.pk} " in body and "Dialog Finance" in body
    assert client.get(URL, {"provider": "no-such"}).status_code == 404


def test_roles_without_the_audit_right_are_refused(agent_a, as_user):
    assert as_user(agent_a).get(URL).status_code == 403


def test_the_page_runs_the_same_queries_for_one_or_four_approvals(
    provider_a, agent_a, agent_a2, auditor_a, as_user, django_assert_max_num_queries
):
    shared = Client()
    sign_in(shared, agent_a)
    sign_in(shared, agent_a2)
    release_approved(provider_a, agent_a, agent_a2)
    client = as_user(auditor_a)
    client.get(URL)  # warm the session
    with CaptureQueriesContext(connection) as one:
        assert client.get(URL).content.decode().count("Unlock request approved") == 1
    queries_for_one = len(one)
    for _ in range(3):
        release_approved(provider_a, agent_a, agent_a2)
    with django_assert_max_num_queries(queries_for_one):
        assert client.get(URL).content.decode().count("Unlock request approved") == 4
