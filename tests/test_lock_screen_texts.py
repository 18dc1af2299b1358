"""A provider admin writes what locked phones say, per language; the next command carries it."""

import datetime as dt

from devices.models import DeviceCommand
from payments.locks.services import lock_sweep
from payments.models import LockScreenText
from portal.models import AuditEvent
from tests.factories import CustomerFactory, make_contract

TUESDAY_MORNING = dt.datetime(2026, 2, 17, 4, 30, tzinfo=dt.UTC)

TEXT = {
    "title": "{provider} has locked this phone",
    "body": "Pay {amount} for contract {contract}. Hotline {hotline}.",
    "reminder_title": "Reminder",
    "reminder_body": "Please pay {amount}.",
    "data_kept_notice": "Your data is kept.",
    "factory_reset_warning": "A factory reset will not remove the lock.",
    "offline_unlock_hint": "Call us for a code.",
}


def test_the_admin_edits_the_english_text_and_the_next_lock_shows_it(as_user, admin_a, provider_a):
    client = as_user(admin_a)
    page = client.get("/locks/screen/en/")
    assert page.status_code == 200 and b"built-in wording" in page.content
    response = client.post("/locks/screen/en/", TEXT)
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="lock_screen_text.change", actor=admin_a).exists()
    preview = client.get("/locks/screen/en/").content.decode()
    assert "Dialog Finance has locked this phone" in preview  # the preview fills the placeholders

    contract = make_contract(provider_a, number="DLG-7", customer=CustomerFactory(provider=provider_a))
    lock_sweep(now=TUESDAY_MORNING)
    screen = DeviceCommand.objects.get(device=contract.device).payload["screen"]
    assert screen["language"] == "en"
    assert screen["title"] == "Dialog Finance has locked this phone"
    assert screen["body"] == "Pay LKR\xa016,666.66 for contract DLG-7. Hotline +94777575727."


def test_an_unknown_placeholder_is_refused_with_a_clear_message_and_nothing_is_saved(as_user, admin_a):
    response = as_user(admin_a).post("/locks/screen/en/", {**TEXT, "body": "Pay before {deadline}"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "Unknown placeholder {deadline}" in body and "{amount}" in body
    assert not LockScreenText.objects.exists()


def test_the_owner_reads_their_own_language_else_the_providers_default(provider_b, platform):
    swahili = make_contract(provider_b, customer=CustomerFactory(provider=provider_b, preferred_language="sw"))
    english = make_contract(provider_b, customer=CustomerFactory(provider=provider_b, preferred_language="fr"))
    lock_sweep(now=dt.datetime(2026, 2, 17, 7, 30, tzinfo=dt.UTC))  # 10:30 in Nairobi
    sw = DeviceCommand.objects.get(device=swahili.device).payload["screen"]
    fr = DeviceCommand.objects.get(device=english.device).payload["screen"]
    assert sw["language"] == "sw" and sw["title"].startswith("Simu hii imefungwa")
    assert fr["language"] == "sw"  # no French: the provider's default language


def test_only_the_providers_admin_edits_and_only_its_languages(as_user, agent_a, admin_a):
    assert as_user(agent_a).get("/locks/screen/").status_code == 403
    client = as_user(admin_a)
    assert client.get("/locks/screen/sw/").status_code == 404  # Swahili is not one of Dialog's languages
