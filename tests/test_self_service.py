"""The phone owner's public self-service page, /my-phone/: "is my phone locked, what do I owe, how do I pay?".

The owner proves they hold the contract with the IMEI or the contract number plus the phone
number on the contract. A wrong combination must not tell an IMEI or a contract that exists
from one that does not, tries are limited per address, and the page speaks English, Sinhala
and Swahili.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.models import Device
from payments.locks.screen import DEFAULT_TEXTS
from payments.models import Contract, Installment, PaymentChannel
from payments.money import format_money
from selfservice.ratelimit import RATE_LIMIT_TRIES
from tests.factories import CustomerFactory, DeviceFactory, local_mobile, make_contract, make_imei

URL = "/my-phone/"
NOT_FOUND = "We could not find a phone with these details"
CSRF_INPUT = re.compile(rb'<input type="hidden" name="csrfmiddlewaretoken" value="[^"]*">')


def _local(e164: str) -> str:
    """+94771234567 → "077 123 4567", as a Sri Lankan owner writes their own number."""
    national = "0" + e164.removeprefix("+94")
    return f"{national[:3]} {national[3:6]} {national[6:]}"


@pytest.fixture
def owner(provider_a, platform):
    """A Dialog customer whose first installment is 10 days overdue and whose phone is locked."""
    PaymentChannel.objects.create(
        provider=provider_a,
        kind="bank_transfer",
        name="Bank of Ceylon",
        account="0085 1234 5678",
        reference="{contract}",
        instructions="Any branch, or online banking.",
    )
    PaymentChannel.objects.create(
        provider=provider_a, kind="mobile_money", name="eZ Cash", account="#111#", reference="FIN {contract}"
    )
    PaymentChannel.objects.create(
        provider=provider_a, kind="card", name="Old card terminal", account="-", reference="x", active=False
    )
    platform.hotline_numbers = ["+94112000000"]
    platform.save()
    customer = CustomerFactory(
        provider=provider_a, name="Nimali Perera", phone=local_mobile("LK"), preferred_language="en"
    )
    device = DeviceFactory(provider=provider_a, maker="Samsung", model="Galaxy A15")
    today = provider_a.today()
    contract = make_contract(
        provider_a, number="DLG-000731", device=device, customer=customer, first_due_date=today - dt.timedelta(days=10)
    )
    Contract.objects.filter(pk=contract.pk).update(lock_state="locked")
    Device.objects.filter(pk=device.pk).update(desired_state="locked", reported_state="locked")
    contract.refresh_from_db()
    return contract


@pytest.fixture(autouse=True)
def _own_cache(settings):
    """Tries are counted in this process's memory: a shared Redis would mix parallel workers' counts."""
    from django.core.cache import cache

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "ss"}}
    cache.clear()


def _post(client, identifier, phone, **extra):
    return client.post(URL, {"identifier": identifier, "phone": phone, **extra})


def _without_csrf(response) -> bytes:
    return CSRF_INPUT.sub(b"", response.content)


# --- the owner finds their phone ------------------------------------------------------


def test_the_owner_enters_the_contract_number_and_a_local_phone_and_sees_what_to_do(client, owner):
    response = _post(client, "DLG-000731", _local(str(owner.customer.phone)), lang="en")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Your phone is locked" in page
    assert "Dialog Finance" in page
    first = Installment.objects.get(contract=owner, number=1)
    assert format_money(first.amount_due, "LKR") in page  # the amount overdue, with its currency
    assert format_money(owner.financed_amount, "LKR") in page  # nothing paid yet: all of it still to pay
    assert "Amount overdue" in page and "Total still to pay" in page and "Next payment" in page
    # every active way to pay, with the exact account and reference; never an inactive one
    assert "Bank of Ceylon" in page and "0085 1234 5678" in page
    assert "eZ Cash" in page and "FIN DLG-000731" in page
    assert "Old card terminal" not in page
    # whom to call: the hotline (callable), the support contacts, the platform's fallback
    assert 'href="tel:+94777575727"' in page
    assert "help@example.com" in page and "https://example.com" in page
    assert 'href="tel:+94112000000"' in page
    # the lock-screen promises: data kept, a reset does not help
    assert DEFAULT_TEXTS["en"]["data_kept_notice"] in page
    assert "factory reset will NOT remove this lock" in page
    assert NOT_FOUND not in page


def test_the_owner_can_use_the_imei_and_the_international_form_of_the_phone(client, owner):
    imei = owner.device.imei
    spaced = f"{imei[:2]} {imei[2:8]} {imei[8:14]} {imei[14]}"
    response = _post(client, spaced, str(owner.customer.phone), lang="en")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Your phone is locked" in page and "DLG-000731" in page
    assert f"•••• {imei[-4:]}" in page
    assert imei not in page and imei[:11] not in page  # the IMEI only masked


def test_a_mistyped_contract_number_still_finds_the_phone(client, owner):
    response = _post(client, "dlg 731", _local(str(owner.customer.phone)), lang="en")
    assert "Your phone is locked" in response.content.decode()


def test_the_page_never_shows_the_customers_name_or_phone(client, owner):
    phone = str(owner.customer.phone)
    page = _post(client, "DLG-000731", _local(phone), lang="en").content.decode()
    assert "Your phone is locked" in page
    assert "Nimali" not in page and "Perera" not in page
    assert phone not in page and phone[3:] not in page and _local(phone) not in page and phone[-7:] not in page


def test_a_paid_phone_that_still_shows_the_lock_gets_told_what_to_do(client, owner):
    Installment.objects.filter(contract=owner, number=1).update(
        amount_paid=Installment.objects.get(contract=owner, number=1).amount_due
    )
    Contract.objects.filter(pk=owner.pk).update(lock_state="unlocked")  # the device still reports "locked"
    page = _post(client, "DLG-000731", _local(str(owner.customer.phone)), lang="en").content.decode()
    assert "Your phone is not locked" in page
    assert "The unlock has been sent" in page


# --- a wrong combination reveals nothing -------------------------------------------------


def test_wrong_phone_unknown_contract_and_unknown_imei_get_the_very_same_answer(client, owner, provider_b):
    other = make_contract(provider_b, number="JMI-0001")  # a real contract of another provider
    stranger = local_mobile("LK")
    attempts = {
        "wrong phone": ("DLG-000731", _local(stranger)),
        "the phone of another contract": ("DLG-000731", str(other.customer.phone)),
        "known IMEI, wrong phone": (owner.device.imei, _local(stranger)),
        "unknown contract": ("DLG-999999", _local(stranger)),
        "unknown IMEI": (make_imei(), _local(stranger)),
        "unknown contract, the owner's phone": ("DLG-999999", _local(str(owner.customer.phone))),
    }
    responses = {name: _post(client, *values) for name, values in attempts.items()}
    bodies = {name: _without_csrf(r) for name, r in responses.items()}
    assert {r.status_code for r in responses.values()} == {200}
    assert len(set(bodies.values())) == 1, "a wrong combination must not tell what exists"
    assert NOT_FOUND in bodies["wrong phone"].decode()
    assert b"DLG-000731" not in bodies["wrong phone"]
    # the same headers too, apart from the CSRF cookie and the clock ("Expires: <now>" of never_cache)
    headers = {
        name: tuple(sorted((k, v) for k, v in r.headers.items() if k.lower() not in {"set-cookie", "expires"}))
        for name, r in responses.items()
    }
    assert len(set(headers.values())) == 1


def test_a_wrong_combination_runs_the_same_queries_as_the_right_one(client, owner):
    phone = _local(str(owner.customer.phone))
    _post(client, "DLG-000731", phone)  # warm caches (content types, sessions) once

    def queries(identifier, typed_phone):
        with CaptureQueriesContext(connection) as ctx:
            _post(client, identifier, typed_phone)
        return len(ctx.captured_queries)

    right = queries("DLG-000731", phone)
    assert queries("DLG-000731", _local(local_mobile("LK"))) == right
    assert queries("DLG-404404", phone) == right
    assert queries(make_imei(), phone) == right


# --- abuse ---------------------------------------------------------------------------------


def test_the_eleventh_try_within_ten_minutes_is_refused(client, owner):
    stranger = _local(local_mobile("LK"))
    for _ in range(RATE_LIMIT_TRIES):
        assert _post(client, "DLG-000731", stranger).status_code == 200
    refused = _post(client, "DLG-000731", _local(str(owner.customer.phone)))  # even the right one
    assert refused.status_code == 429
    page = refused.content.decode()
    assert "Too many tries" in page and "wait 10 minutes" in page
    assert "Your phone is locked" not in page
    # another address is not held back
    other = Client(REMOTE_ADDR="198.51.100.7")
    assert _post(other, "DLG-000731", _local(str(owner.customer.phone))).status_code == 200


def test_rotating_ipv6_addresses_within_one_64_counts_as_one_client(owner):
    stranger = _local(local_mobile("LK"))
    answers = [
        _post(Client(REMOTE_ADDR=f"2001:db8:7:1::{n:x}"), "DLG-000731", stranger).status_code
        for n in range(1, RATE_LIMIT_TRIES + 3)
    ]
    assert answers[:RATE_LIMIT_TRIES] == [200] * RATE_LIMIT_TRIES and set(answers[RATE_LIMIT_TRIES:]) == {429}
    neighbour = Client(REMOTE_ADDR="2001:db8:7:2::1")  # another /64: another subscriber
    assert _post(neighbour, "DLG-000731", stranger).status_code == 200


def test_the_window_ends_after_ten_minutes(client, owner, monkeypatch):
    import time
    import types

    from django.core.cache.backends import locmem

    stranger = _local(local_mobile("LK"))
    for _ in range(RATE_LIMIT_TRIES):
        _post(client, "DLG-000731", stranger)
    assert _post(client, "DLG-000731", stranger).status_code == 429
    later = time.time() + 10 * 60 + 1
    monkeypatch.setattr(locmem, "time", types.SimpleNamespace(time=lambda: later))
    assert _post(client, "DLG-000731", stranger).status_code == 200


def test_the_form_is_csrf_protected(owner):
    client = Client(enforce_csrf_checks=True)
    assert _post(client, "DLG-000731", _local(str(owner.customer.phone))).status_code == 403
    form = client.get(URL)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.content.decode()).group(1)
    response = _post(client, "DLG-000731", _local(str(owner.customer.phone)), csrfmiddlewaretoken=token)
    assert response.status_code == 200


def test_empty_fields_are_named_without_a_lookup(client, owner):
    response = client.post(URL, {"identifier": "", "phone": "abc"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "Enter the IMEI or the contract number." in page
    assert "Enter the phone number on your contract." in page


# --- languages -------------------------------------------------------------------------------


def test_the_form_in_sinhala(client, db):
    page = client.get(URL, {"lang": "si"}).content.decode()
    assert '<html lang="si">' in page
    assert "ඔබේ දුරකථනය පරීක්ෂා කරන්න" in page  # "Check your phone"
    assert "ගිවිසුම් අංකය" in page  # "contract number"
    assert 'name="lang" value="si"' in page  # the choice is kept when the form is sent


def test_the_owner_reads_the_answer_in_sinhala(client, owner):
    page = _post(client, "DLG-000731", _local(str(owner.customer.phone)), lang="si").content.decode()
    assert "ඔබේ දුරකථනය අගුළු දමා ඇත" in page  # "Your phone is locked"
    assert "ප්‍රමාද වූ මුදල" in page  # "Amount overdue"
    assert "ගෙවන ආකාරය" in page  # "How to pay"
    assert "ක්ෂණික ඇමතුම් අංකය" in page  # "Hotline"
    assert "කර්මාන්තශාලා" in page  # the factory-reset warning of the lock screen, translated
    assert "Your phone is locked" not in page and "How to pay" not in page
    assert format_money(Installment.objects.get(contract=owner, number=1).amount_due, "LKR") in page


def test_the_owner_reads_the_answer_in_swahili(client, owner):
    page = _post(client, "DLG-000731", _local(str(owner.customer.phone)), lang="sw").content.decode()
    assert '<html lang="sw">' in page
    assert "Simu yako imefungwa" in page  # "Your phone is locked"
    assert "Jinsi ya kulipa" in page  # "How to pay"
    assert "Kiasi kilichochelewa" in page  # "Amount overdue"
    assert "Kurejesha mipangilio ya kiwanda" in page  # the lock screen's factory-reset warning
    assert "How to pay" not in page


def test_not_found_in_swahili(client, owner):
    page = _post(client, "DLG-999999", "0771234567", lang="sw").content.decode()
    assert "Hatukuweza kupata simu yenye taarifa hizi" in page


def test_without_a_choice_the_answer_is_in_the_providers_language(client, owner):
    """Dialog's default language is Sinhala; before the provider is known, the browser's language counts."""
    form = client.get(URL, HTTP_ACCEPT_LANGUAGE="sw-KE,sw;q=0.9,en;q=0.5").content.decode()
    assert '<html lang="sw">' in form
    assert '<html lang="en">' in client.get(URL, HTTP_ACCEPT_LANGUAGE="fr-FR").content.decode()
    page = _post(client, "DLG-000731", _local(str(owner.customer.phone))).content.decode()
    assert '<html lang="si">' in page and "ඔබේ දුරකථනය අගුළු දමා ඇත" in page
    missed = client.post(URL, {"identifier": "DLG-999999", "phone": "0771234567"}, HTTP_ACCEPT_LANGUAGE="sw")
    missed = missed.content.decode()
    assert '<html lang="sw">' in missed  # a miss never reveals a provider's language


# --- the page itself ----------------------------------------------------------------------------


def test_the_page_is_for_owners_on_a_small_phone_not_for_staff(client, owner):
    for response in (client.get(URL), _post(client, "DLG-000731", _local(str(owner.customer.phone)))):
        page = response.content.decode()
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
        assert "portal/selfservice.css" in page and "portal/app.css" not in page
        assert 'aria-label="Main"' not in page and "Sign out" not in page and "/console/" not in page
        assert "style=" not in page and "<style" not in page and "<script" not in page
        assert response["Cache-Control"].startswith("max-age=0") or "no-store" in response["Cache-Control"]
        assert "Content-Security-Policy" in response


def test_a_settled_contract_says_the_phone_is_free(client, provider_a, platform):
    customer = CustomerFactory(provider=provider_a, phone=local_mobile("LK"))
    contract = make_contract(provider_a, number="DLG-5", customer=customer)
    Contract.objects.filter(pk=contract.pk).update(status="paid_off", lock_state="released")
    page = _post(client, "DLG-5", str(customer.phone), lang="en").content.decode()
    assert "the lock is removed for good" in page and "No further payments are due." in page
    assert "Total still to pay" not in page


def test_a_temporarily_unlocked_phone_shows_until_when(client, owner, agent_a):
    from payments.models import LockOverride

    LockOverride.objects.create(
        contract=owner,
        kind="temp_unlock",
        ends_at=timezone.now() + dt.timedelta(hours=5),
        reason="Owner paid at an agent; receipt checked",
        created_by=agent_a,
    )
    Contract.objects.filter(pk=owner.pk).update(lock_state="temp_unlocked")
    page = _post(client, "DLG-000731", _local(str(owner.customer.phone)), lang="en").content.decode()
    assert "Your phone is unlocked for now" in page and "It is unlocked until" in page


@pytest.mark.browser
def test_an_owner_on_a_360_px_phone_fills_the_form_and_reads_the_answer(browser, live_server, owner, request):
    """A real browser: the form posts (CSRF and Origin pass), nothing is wider than the screen, text ≥ 16 px."""
    from tests.conftest import shot

    page = browser.new_page(viewport={"width": 360, "height": 800})
    page.goto(f"{live_server.url}{URL}?lang=si")
    page.fill("input[name=identifier]", owner.device.imei)
    page.fill("input[name=phone]", _local(str(owner.customer.phone)))
    page.click("button[type=submit]")
    assert "ඔබේ දුරකථනය අගුළු දමා ඇත" in page.inner_text("h1")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    smallest = page.evaluate(
        "Math.min(...[...document.querySelectorAll('body *')].filter(e => e.innerText && e.innerText.trim())"
        ".map(e => parseFloat(getComputedStyle(e).fontSize)))"
    )
    assert smallest >= 16
    call = page.locator("a.ss-call").first.bounding_box()
    assert call["height"] >= 48  # the hotline is a large tap target
    shot(page, request, "answer-si")
