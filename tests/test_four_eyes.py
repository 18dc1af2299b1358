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
