"""A provider admin sets when owners are reminded and when a phone may lock; nobody else can."""

import pytest
from django.core.exceptions import ValidationError

from payments.locks.services import lock_policy_update
from payments.models import LockPolicy, LockScreenText, validate_lock_screen_text
from portal.models import AuditEvent

GOOD = {
    "grace_days": "5",
    "reminder_days_before": "3, 1",
    "reminder_days_after": "1",
    "lock_start_hour": "8",
    "lock_end_hour": "18",
    "lock_weekdays": ["0", "1", "2", "3", "4"],
    "max_temp_unlock_hours": "48",
    "unlock_alert_minutes": "10",
    "provisional_installments": "1",
    "provisional_max_amount": "",
    "provisional_confirm_days": "7",
}


def test_the_admin_saves_a_policy_and_the_change_is_audited(as_user, admin_a, provider_a):
    client = as_user(admin_a)
    assert client.get("/locks/policy/").status_code == 200
    response = client.post("/locks/policy/", GOOD)
    assert response.status_code == 302
    policy = LockPolicy.objects.get(provider=provider_a)
    assert (policy.grace_days, policy.reminder_days_before, policy.lock_weekdays) == (5, [3, 1], [0, 1, 2, 3, 4])
    assert policy.rules().reminder_days_before == 3
    event = AuditEvent.objects.get(action="lock_policy.change")
    assert event.actor == admin_a and event.after["grace_days"] == 5 and event.before["grace_days"] == 3


def test_a_window_that_ends_before_it_starts_is_refused_and_nothing_changes(as_user, admin_a, provider_a):
    client = as_user(admin_a)
    response = client.post("/locks/policy/", {**GOOD, "lock_start_hour": "18", "lock_end_hour": "8"})
    assert response.status_code == 200
    assert b"Must be later than the start hour" in response.content
    assert not LockPolicy.objects.filter(provider=provider_a).exists()
    assert not AuditEvent.objects.filter(action="lock_policy.change").exists()


def test_garbage_in_the_reminder_days_is_named(as_user, admin_a):
    response = as_user(admin_a).post("/locks/policy/", {**GOOD, "reminder_days_before": "three"})
    assert response.status_code == 200 and b"Whole numbers of days" in response.content


def test_agents_and_technicians_cannot_change_the_policy(as_user, agent_a, technician):
    assert as_user(agent_a).get("/locks/policy/").status_code == 403
    assert as_user(technician).post("/locks/policy/", GOOD).status_code == 403


def test_each_provider_edits_only_its_own_policy(admin_a, provider_a, provider_b):
    lock_policy_update(provider=provider_a, actor=admin_a, grace_days=9)
    assert LockPolicy.objects.get(provider=provider_a).grace_days == 9
    assert not LockPolicy.objects.filter(provider=provider_b).exists()


def test_an_unknown_setting_is_refused_by_name(admin_a, provider_a):
    with pytest.raises(ValidationError) as exc:
        lock_policy_update(provider=provider_a, actor=admin_a, wipe_phone=True)
    assert "wipe_phone" in exc.value.message_dict


def test_a_lock_screen_text_with_an_unknown_placeholder_is_rejected_with_the_allowed_list(provider_a):
    with pytest.raises(ValidationError) as exc:
        validate_lock_screen_text("Pay {amount} before {deadline}")
    message = " ".join(exc.value.messages)
    assert "{deadline}" in message and "{amount}" in message and "{hotline}" in message
    with pytest.raises(ValidationError):
        validate_lock_screen_text("Pay {amount")
    text = LockScreenText(
        provider=provider_a,
        language="en",
        title="Locked by {provider}",
        body="Owe {amount} since {overdue_since}; quote {contract}; IMEI {imei}; call {hotline}",
        reminder_title="Reminder",
        reminder_body="Pay {amount}",
        data_kept_notice="Data kept",
        factory_reset_warning="No reset",
        offline_unlock_hint="Call us",
    )
    text.full_clean()  # every documented placeholder is accepted


def test_the_offline_lock_is_off_until_the_admin_turns_it_on_and_its_warning_comes_before_it(admin_a, provider_a):
    policy = lock_policy_update(provider=provider_a, actor=admin_a, grace_days=4)
    assert (policy.offline_lock_days, policy.offline_warning_days) == (None, 3)
    assert policy.rules().offline_lock_days is None

    with pytest.raises(ValidationError) as exc:
        lock_policy_update(provider=provider_a, actor=admin_a, offline_lock_days=3, offline_warning_days=3)
    assert "fewer than the 3 offline days" in " ".join(exc.value.message_dict["offline_warning_days"])
    with pytest.raises(ValidationError) as exc:
        lock_policy_update(provider=provider_a, actor=admin_a, offline_lock_days=365)
    assert "offline_lock_days" in exc.value.message_dict
    assert LockPolicy.objects.get(provider=provider_a).offline_lock_days is None  # nothing changed

    policy = lock_policy_update(provider=provider_a, actor=admin_a, offline_lock_days=200, offline_warning_days=10)
    assert (policy.rules().offline_lock_days, policy.rules().offline_warning_days) == (200, 10)
    event = AuditEvent.objects.filter(action="lock_policy.change").latest("id")
    assert event.before["offline_lock_days"] is None and event.after["offline_warning_days"] == 10
